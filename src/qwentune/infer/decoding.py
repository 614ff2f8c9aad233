"""Follow each row of a generating batch: its text as it grows, and when it is done.

transformers calls a stopping criterion after every new token with the whole batch, so one
criterion (`RowMonitor`) can decode each row's newest token, hand the new text to that row's
listener (a streaming client, the terminal), and end the row on its own terms: its end-of-turn
token, a stop string, its own token limit, or its caller going away. Rows of one batch thus
behave as if generated alone, and streamed and non-streamed answers are the same text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or stop string), "length" (token limit) or "cancelled"


@dataclass
class GenerationRequest:
    """One row of a batch. `on_text` receives text pieces as they become final; `on_finish` the result."""

    prompt_ids: list[int]
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    on_text: Callable[[str], None] | None = None
    on_finish: Callable[[Completion], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    generated: int = 0  # tokens so far, kept up to date while it generates
    abandoned_at: int | None = None  # `generated` when its caller went away (see abandon)

    def abandon(self) -> None:
        """Stop at the next token because the caller went away; remembers how far it had got."""
        if not self.cancel.is_set():
            self.abandoned_at = self.generated
            self.cancel.set()


class IncrementalDecoder:
    """Text of a growing token sequence, one piece per token, without decoding it all each time.

    Decodes a short window (the previous piece's tokens plus the new ones) and keeps back text
    ending in U+FFFD: a character whose bytes are split over tokens is emitted once complete.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._new_text(final=False)

    def flush(self) -> str:
        """What is still held back (an incomplete character at the very end stays as U+FFFD)."""
        return self._new_text(final=True)

    def _new_text(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) > len(before) and (final or not now.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before) :]
        return ""


class RowState:
    def __init__(self, request: GenerationRequest, tokenizer, stop_ids: set[int]):
        self.request = request
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop_ids = stop_ids
        self.text = ""  # decoded so far, cut at a stop string once one appears
        self.emitted = 0  # characters of `text` handed to on_text
        self.tokens = 0
        self.completion: Completion | None = None

    def step(self, token_id: int) -> None:
        self.tokens += 1
        self.request.generated = self.tokens
        if token_id in self.stop_ids:
            self.finish("stop")
            return
        self.text += self.decoder.push(token_id)
        if self._cut_at_stop_string():
            self._end("stop")
        elif self.tokens >= self.request.max_new_tokens:
            self.finish("length")
        elif self.request.cancel.is_set():
            self.finish("cancelled")
        else:
            self._emit(len(self.text) - self._held_back())

    def finish(self, reason: str) -> None:
        """End the row for `reason`, after the text still held back by the decoder."""
        self.text += self.decoder.flush()
        self._end("stop" if self._cut_at_stop_string() else reason)

    def _end(self, reason: str) -> None:
        self._emit(len(self.text))
        self.completion = Completion(self.text, len(self.request.prompt_ids), self.tokens, reason)
        if self.request.on_finish is not None:
            self.request.on_finish(self.completion)

    def _cut_at_stop_string(self) -> bool:
        # Search only where a stop string can newly end: it may begin in text already held back.
        start = max(0, self.emitted - max((len(s) for s in self.request.stop), default=0))
        found = [i for i in (self.text.find(s, start) for s in self.request.stop) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
        return bool(found)

    def _held_back(self) -> int:
        """Length of the text's tail that could be the start of a stop string (not streamed yet)."""
        for size in range(min(len(self.text), max((len(s) for s in self.request.stop), default=1) - 1), 0, -1):
            if any(s.startswith(self.text[-size:]) for s in self.request.stop):
                return size
        return 0

    def _emit(self, upto: int) -> None:
        if upto > self.emitted:
            if self.request.on_text is not None:
                self.request.on_text(self.text[self.emitted : upto])
            self.emitted = upto

    @property
    def finished(self) -> bool:
        return self.completion is not None


class RowMonitor(StoppingCriteria):
    """A stopping criterion that follows every row of the batch (see the module docstring)."""

    def __init__(self, tokenizer, requests: list[GenerationRequest], stop_ids: set[int]):
        self.rows = [RowState(request, tokenizer, stop_ids) for request in requests]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        for row, token_id in zip(self.rows, input_ids[:, -1].tolist()):
            # A finished row keeps receiving padding until the whole batch is done: ignore it.
            if not row.finished:
                row.step(token_id)
        return torch.tensor([row.finished for row in self.rows], device=input_ids.device)

    def completions(self) -> list[Completion]:
        for row in self.rows:
            if not row.finished:  # generation ended for the whole batch first (its overall length limit)
                row.finish("length")
        return [row.completion for row in self.rows]
