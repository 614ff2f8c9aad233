"""Thinking in the interactive chat: /think and /no_think, reasoning shown dimmed and kept out of the history."""

from __future__ import annotations

import os
import re
import sys

import pytest
from conftest import REPO

from qwentune.infer.settings import GenerationSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pexpect = pytest.importorskip("pexpect")

DIM = "\x1b[2m"
# A chat whose tiny Qwen3 writes scripted replies: reasoning when the prompt lets it think.
CHAT = """
import sys
sys.path[:0] = [sys.argv[2]]
import torch
torch.set_num_threads(1)
from scripted_replies import script_replies
from qwentune.infer.engine import QwenInference
from qwentune.infer.interactive import chat_loop
from qwentune.infer.settings import GenerationSettings

def choose(prompt):
    if prompt.endswith("</think>\\n\\n"):
        return "Plainly: 391."
    return "<think>\\nMultiply 23 by 17.\\n</think>\\n\\nThe product is 391."

engine = QwenInference(sys.argv[1])
script_replies(engine, choose)
sys.exit(chat_loop(engine, GenerationSettings(max_new_tokens=40)))
"""


def test_think_and_no_think_in_a_terminal(tiny_qwen3):
    # A colour terminal whatever the machine's: the dim style is what is checked.
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200", PYTHONPATH=str(REPO / "src"), TERM="xterm-256color")
    command = ["-c", CHAT, str(tiny_qwen3), str(REPO / "tests")]
    child = pexpect.spawn(sys.executable, command, env=env, encoding="utf-8", timeout=120, dimensions=(50, 200))
    try:
        child.expect("thinking off \\(/think, /no_think\\)")  # the model was trained without reasoning
        child.expect("You:")
        child.sendline("23 * 17?")
        child.expect("You:")
        assert "Plainly: 391." in child.before and "Multiply" not in child.before

        child.sendline("/think")
        child.expect("thinking on")
        child.expect("You:")
        child.sendline("23 * 17?")
        child.expect("You:")
        shown = child.before
        # The reasoning is written dimmed, and the answer on its own line after it.
        assert "".join(re.findall(re.escape(DIM) + r"(.*?)\x1b\[0m", shown)) == "Multiply 23 by 17.", repr(shown)
        assert "Multiply" not in shown.split("\n")[-2] and shown.split("\n")[-2].strip() == "The product is 391."

        child.sendline("/no_think 23 * 17?")  # switch and ask at once
        child.expect("thinking off")
        child.expect("You:")
        assert "Plainly: 391." in child.before and DIM not in child.before
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_the_history_keeps_the_answer_without_its_reasoning(tiny_qwen3, capsys):
    from scripted_replies import script_replies

    from qwentune.infer.engine import QwenInference
    from qwentune.infer.interactive import _answer

    engine = QwenInference(str(tiny_qwen3), enable_thinking=True)
    script_replies(engine, lambda prompt: "<think>\nMultiply 23 by 17.\n</think>\n\nThe product is 391.")
    history = [{"role": "user", "content": "23 * 17?"}]
    _answer(engine, history, GenerationSettings(max_new_tokens=40))
    assert history[-1] == {"role": "assistant", "content": "The product is 391."}
    shown = capsys.readouterr().out
    assert shown.index("Multiply 23 by 17.") < shown.index("\nThe product is 391.")
