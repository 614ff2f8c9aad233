"""Interactive chat through a real pseudo-terminal, and its history trimming."""

from __future__ import annotations

import os
import re
import sys

import pytest
from conftest import REPO

from qwentune.infer.interactive import trim_history

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pexpect = pytest.importorskip("pexpect")

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
MAX_LENGTH = 300  # long enough to press Ctrl-C while an answer is being written


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


@pytest.fixture(scope="module")
def expected_answer(varied_model) -> str:
    from qwentune.infer.engine import QwenInference

    engine = QwenInference(str(varied_model))
    return engine.generate([{"role": "user", "content": "What is 2 + 2?"}], max_new_tokens=MAX_LENGTH)


def test_a_chat_session_in_a_terminal(varied_model, expected_answer):
    command = [
        str(REPO / "scripts" / "inference.py"),
        "--model_path",
        str(varied_model),
        "--interactive",
        "--max_length",
        str(MAX_LENGTH),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": ""}
    child = pexpect.spawn(
        sys.executable, command, cwd=str(REPO), env=env, encoding="utf-8", timeout=120, dimensions=(50, 200)
    )
    try:
        child.expect("You:")
        child.sendline("/help")
        child.expect("/system TEXT")
        child.expect("You:")

        # Ctrl-C stops the answer being written and keeps the session.
        child.sendline("Tell me a long story.")
        child.expect("Assistant:")
        child.expect(r"\S")  # the first piece has arrived
        child.sendintr()
        child.expect(r"\(answer stopped\)")
        child.expect("You:")

        # A question after /clear gets the same answer as the engine gives it alone.
        child.sendline("/clear")
        child.expect("conversation cleared")
        child.expect("You:")
        child.sendline("What is 2 + 2?")
        child.expect("Assistant:")
        child.expect("You:")
        assert " ".join(expected_answer.split()) in " ".join(plain(child.before).split())

        child.sendline("/system You are Nova.")
        child.expect("system prompt set")
        child.expect("You:")
        child.sendline("/system")
        child.expect("system prompt: You are Nova.")
        child.expect("You:")
        child.sendline("/nonsense")
        child.expect("unknown command /nonsense")
        child.expect("You:")

        child.sendeof()  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


class FakeEngine:
    """Counts one token per character, in a context of 100 tokens."""

    context_length = 100

    def prompt_ids(self, messages):
        return [0] * sum(len(m["content"]) for m in messages)


def test_the_oldest_exchanges_are_dropped_to_fit_the_context():
    history = [
        {"role": "user", "content": "a" * 30},
        {"role": "assistant", "content": "b" * 30},
        {"role": "user", "content": "c" * 10},
        {"role": "assistant", "content": "d" * 10},
        {"role": "user", "content": "e" * 10},
    ]
    assert trim_history(FakeEngine(), history, reserve=50) == 2
    assert [m["content"][0] for m in history] == ["c", "d", "e"]
    # The newest message is always kept, even when nothing else fits.
    assert trim_history(FakeEngine(), history, reserve=95) == 2
    assert [m["content"][0] for m in history] == ["e"]
