"""Reasoning (a "think" block) apart from the answer: in data and in generated text.

Records keep reasoning in the assistant message's `reasoning_content` (the name OpenAI-compatible
servers, DeepSeek and Qwen3's chat template use). R1-distilled sets and Qwen3's output put it
inline instead, as `<think>…</think>` before the answer; `split_reasoning` separates the two.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Reasoned:
    reasoning: str | None  # None: the text has no think block
    answer: str
    closed: bool = True  # False: the think block never ends (generation stopped inside it)


def split_reasoning(text: str, *, opened: bool = False) -> Reasoned:
    """The think block at the start of `text` and the answer after it, both stripped.

    opened: the prompt already opened the block (templates that end the generation prompt
    with `<think>`), so `text` starts inside it and only `</think>` marks its end.
    A `<think>` that is not at the start is answer text, as Qwen3's own template reads it.
    """
    body = text.lstrip()
    if not opened:
        if not body.startswith(THINK_OPEN):
            return Reasoned(None, text.strip())
        body = body[len(THINK_OPEN) :]
    end = body.find(THINK_CLOSE)
    if end < 0:
        return Reasoned(body.strip(), "", closed=False)
    return Reasoned(body[:end].strip(), body[end + len(THINK_CLOSE) :].strip())
