"""A generated reply split into its parts: reasoning, the answer, and tool calls.

Qwen-family models write their reasoning as a `<think>…</think>` block at the start of the
reply (Qwen3, R1-distilled models) and call tools with
`<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` blocks, the format their own chat
templates ask for. `ReplyParser` reads a reply as it streams and hands out typed pieces
(`Delta`): reasoning text, answer text, and each tool call once its block is complete. Text that
could still become a tag is held back until it is decided, so the pieces of a stream, put
together, are always what parsing the whole reply at once gives (streamed and non-streamed
answers agree).

A call block that does not parse (not JSON, no name, arguments that are not an object, a
function the request did not define) is kept in the answer as the text the model wrote.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Literal

from qwentune.data.reasoning import THINK_CLOSE, THINK_OPEN
from qwentune.data.toolcalls import ToolCallError, normalise_call

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of an object, as the OpenAI API carries it
    id: str = field(default_factory=new_call_id)

    @property
    def parsed_arguments(self) -> dict:
        return json.loads(self.arguments)

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Delta:
    """One piece of a streamed reply."""

    kind: Literal["reasoning", "content", "tool_call"]
    text: str = ""
    tool_call: ToolCall | None = None


@dataclass
class Reply:
    """A finished reply. `content` is the answer without reasoning or parsed calls; `text` is what the model wrote."""

    content: str
    reasoning_content: str | None
    tool_calls: list[ToolCall]
    finish_reason: str  # "stop", "length", "cancelled", or "tool_calls" when the model called tools and stopped
    prompt_tokens: int
    completion_tokens: int
    text: str


def parse_call(body: str, tool_names: frozenset[str] | None = None) -> ToolCall | None:
    """The call in the text between `<tool_call>` and `</tool_call>`, or None when it is not a valid call."""
    try:
        call = normalise_call(body.strip(), "the tool call")
    except ToolCallError:
        return None
    if tool_names is not None and call["name"] not in tool_names:
        return None
    return ToolCall(call["name"], json.dumps(call["arguments"], ensure_ascii=False))


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is the start of `tag` (it may still become the tag)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReplyParser:
    """Splits a reply into reasoning, answer and tool calls as its text arrives (see the module docstring).

    `thinking_open`: the prompt already opened the think block, so the reply starts with reasoning.
    `tool_names`: the functions the reply may call; None leaves call blocks in the answer unparsed.
    `max_calls`: the most calls read (OpenAI's parallel_tool_calls=false: one); later blocks stay text.
    """

    def __init__(
        self, *, thinking_open: bool = False, tool_names: frozenset[str] | None = None, max_calls: int | None = None
    ):
        self.mode = "reasoning" if thinking_open else "start"
        self.tool_names = tool_names
        self.max_calls = max_calls
        self.pending = ""  # received, not yet handed out
        self.reasoning_begun = False
        self.calls = 0

    def feed(self, text: str) -> list[Delta]:
        self.pending += text
        return self._advance(final=False)

    def close(self) -> list[Delta]:
        """The pieces still held back, once the reply is complete."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> list[Delta]:
        out: list[Delta] = []
        going = True
        while going:
            pieces, going = getattr(self, f"_{self.mode}")(final)
            out += pieces
        return [d for d in out if d.text or d.tool_call]

    # Each mode consumes what it can of `pending` and returns the pieces it hands out, and True when
    # it changed mode (the next mode goes on with the rest).

    def _start(self, final: bool) -> tuple[list[Delta], bool]:
        head = self.pending.lstrip()
        if head.startswith(THINK_OPEN):
            self.pending, self.mode = head[len(THINK_OPEN) :], "reasoning"
            return [], True
        if not final and THINK_OPEN.startswith(head):  # blank so far, or a tag still arriving
            return [], False
        self.mode = "content"
        return [], True

    def _reasoning(self, final: bool) -> tuple[list[Delta], bool]:
        if not self.reasoning_begun:  # the template writes "<think>\n" before the reasoning
            self.pending = self.pending.lstrip("\n")
            self.reasoning_begun = bool(self.pending)
        end = self.pending.find(THINK_CLOSE)
        if end >= 0:
            reasoning = self.pending[:end].rstrip("\n")
            self.pending, self.mode = self.pending[end + len(THINK_CLOSE) :], "answer_start"
            return [Delta("reasoning", reasoning)], True
        if final:  # the reply ended while thinking (its token limit): all of it was reasoning
            reasoning, self.pending = self.pending.rstrip("\n"), ""
            return [Delta("reasoning", reasoning)], False
        # Keep back a tag still arriving and newlines that may be the ones before "</think>".
        cut = len(self.pending) - _partial_tag(self.pending, THINK_CLOSE)
        cut = len(self.pending[:cut].rstrip("\n"))
        reasoning, self.pending = self.pending[:cut], self.pending[cut:]
        return [Delta("reasoning", reasoning)], False

    def _answer_start(self, final: bool) -> tuple[list[Delta], bool]:
        self.pending = self.pending.lstrip("\n")  # the template's blank line between reasoning and answer
        if not self.pending and not final:
            return [], False
        self.mode = "content"
        return [], True

    def _content(self, final: bool) -> tuple[list[Delta], bool]:
        start = self.pending.find(CALL_OPEN) if self.tool_names is not None else -1
        if start >= 0:
            # Blank lines before a call are layout, not answer (held back until now, so never streamed).
            before = self.pending[:start].rstrip()
            self.pending, self.mode = self.pending[start + len(CALL_OPEN) :], "call"
            return [Delta("content", before)], True
        if final:
            text, self.pending = self.pending, ""
            return ([Delta("content", text)] if text.strip() or not self.calls else []), False
        keep = _partial_tag(self.pending, CALL_OPEN) if self.tool_names is not None else 0
        # Trailing whitespace waits for what follows: more answer, a call, or the end.
        upto = len(self.pending[: len(self.pending) - keep].rstrip())
        text, self.pending = self.pending[:upto], self.pending[upto:]
        return [Delta("content", text)], False

    def _call(self, final: bool) -> tuple[list[Delta], bool]:
        end = self.pending.find(CALL_CLOSE)
        if end < 0:
            if final:  # never closed (cut by the token limit): the model's text, as written
                text, self.pending = CALL_OPEN + self.pending, ""
                return [Delta("content", text)], False
            return [], False
        body, self.pending = self.pending[:end], self.pending[end + len(CALL_CLOSE) :]
        self.mode = "content"
        call = parse_call(body, self.tool_names) if self.max_calls is None or self.calls < self.max_calls else None
        if call is None:
            return [Delta("content", CALL_OPEN + body + CALL_CLOSE)], True
        self.calls += 1
        return [Delta("tool_call", tool_call=call)], True


def final_reason(finish_reason: str, called: bool) -> str:
    """OpenAI's finish reason: "tool_calls" when the model called tools and stopped by itself."""
    return "tool_calls" if called and finish_reason == "stop" else finish_reason


def assemble(deltas: list[Delta], *, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> Reply:
    """The finished reply from all its pieces."""
    reasoning = [d.text for d in deltas if d.kind == "reasoning"]
    calls = [d.tool_call for d in deltas if d.kind == "tool_call"]
    content = "".join(d.text for d in deltas if d.kind == "content")
    return Reply(
        content=content,
        reasoning_content="".join(reasoning) if reasoning else None,
        tool_calls=calls,
        finish_reason=final_reason(finish_reason, bool(calls)),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        text=text,
    )
