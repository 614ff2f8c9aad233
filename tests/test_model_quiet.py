"""Library chatter stays out of logs: the "Loading weights" bar and tokenizer length warnings."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import sys
    from transformers import AutoTokenizer
    from qwentune.model import loader

    def load_and_tokenize():
        loader.load_causal_lm(sys.argv[1])
        tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])  # a fresh one: it warns once per instance
        tokenizer.model_max_length = 8
        print("ids", len(tokenizer("one two three four five six seven eight nine ten eleven")["input_ids"]))

    load_and_tokenize()
    print("=== quiet from here ===", file=sys.stderr, flush=True)
    loader.quiet_library_noise()
    load_and_tokenize()
    """
)


def test_loading_bar_and_length_warning_stay_out_of_non_terminal_output(tiny_qwen2):
    # stdout and stderr are pipes here, as in a log file or CI.
    result = subprocess.run([sys.executable, "-c", CHILD, str(tiny_qwen2)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ids", "11", "ids", "11"]
    loud, quiet = result.stderr.split("=== quiet from here ===")
    # Before quiet_library_noise both appear (so the check below can fail); after it, neither.
    assert "Loading weights" in loud and "Token indices sequence length" in loud, loud
    assert "Loading weights" not in quiet and "Token indices sequence length" not in quiet, quiet
