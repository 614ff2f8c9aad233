"""Make a tiny model write a chosen reply, through the real generation path.

A tiny random model never writes `<think>` or `<tool_call>` by itself. `script_replies` wraps the
model's `_get_logits_processor` (transformers', not ours; both `generate` and the server's
continuous batching build their processors with it) so that one more logits processor forces,
token by token, the reply a `choose(prompt_text)` function picks for each row. Everything of
ours still runs for real: prompt rendering, batching and left padding, rows joining and leaving
the server's batch, the row monitor with its stop ids, incremental decoding, reply parsing,
streaming and the server protocol.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class ScriptedReplies(LogitsProcessor):
    """Forces each row's scripted reply, then its end-of-turn token (repeated, should the row go on)."""

    def __init__(self, tokenizer, choose: Callable[[str], str]):
        self.tokenizer, self.choose = tokenizer, choose
        self.end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.prompt_length: int | None = None
        self.scripts: dict[int, list[int]] = {}

    def _script(self, row: int, prompt_ids: torch.Tensor) -> list[int]:
        if row not in self.scripts:
            prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False).replace(self.tokenizer.pad_token, "")
            reply = self.choose(prompt)
            self.scripts[row] = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.end_of_turn]
        return self.scripts[row]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            script = self._script(row, input_ids[row, : self.prompt_length])
            forced[row, script[min(step, len(script) - 1)]] = 0.0
        return forced


# Two tools the scripted tests offer (the OpenAI request shape).
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def script_replies(engine, choose: Callable[[str], str]) -> Callable[[], None]:
    """Make `engine`'s model write `choose(prompt)` for every prompt; returns the function that undoes it."""
    model = engine.model
    original = model._get_logits_processor

    @functools.wraps(original)
    def get_logits_processor(*args, **kwargs) -> LogitsProcessorList:
        return LogitsProcessorList([*original(*args, **kwargs), ScriptedReplies(engine.tokenizer, choose)])

    model._get_logits_processor = get_logits_processor

    def undo() -> None:
        del model._get_logits_processor

    return undo


def last_turn(prompt: str) -> str:
    """The text of the last turn before the generation prompt."""
    turns = prompt.split("<|im_start|>")
    return turns[-2] if len(turns) > 1 else prompt
