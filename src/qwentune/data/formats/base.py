"""What every converter shares: the base class, the registry, the error a rule raises, and
small field helpers used by several formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qwentune.data.readers import RawRecord
from qwentune.data.reasoning import split_reasoning
from qwentune.data.record import InvalidRecord, Origin, Record, Reject, make_record


class ConversionError(Exception):
    """A raw record this format cannot convert; `reason` is the rejects.jsonl key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Conversation:
    """What a format rule extracts from one raw record, before validation."""

    messages: list[dict]
    id: Any = None
    meta: dict = field(default_factory=dict)
    lang: str | None = None
    tools: Any = None  # definitions as the source gives them; validated and normalised by make_record


@dataclass(frozen=True)
class ConversionOptions:
    # OASST: one conversation per tree along the best-ranked replies (False), or one per
    # assistant reply that ends a thread (True).
    oasst_all_paths: bool = False


FORMATS: dict[str, type[Converter]] = {}


def register(cls: type[Converter]) -> type[Converter]:
    FORMATS[cls.name] = cls
    return cls


class Converter:
    name: ClassVar[str]

    def __init__(self, source: str, file: str, options: ConversionOptions = ConversionOptions()):
        self.source = source
        self.file = file
        self.options = options

    @staticmethod
    def recognizes(data: dict) -> bool:
        """Whether this format can convert `data` (used to detect a file's format)."""
        raise NotImplementedError

    def conversations(self, data: dict) -> list[Conversation]:
        raise NotImplementedError

    def feed(self, raw: RawRecord) -> Iterator[Record | Reject]:
        if not isinstance(raw.data, dict):
            yield self.reject(raw.line, raw.data, "not_an_object", f"a {type(raw.data).__name__}, not a JSON object")
            return
        try:
            conversations = self.conversations(raw.data)
        except ConversionError as exc:
            yield self.reject(raw.line, raw.data, exc.reason, exc.detail)
            return
        yield from self.build(conversations, raw.line, raw.data)

    def finish(self) -> Iterator[Record | Reject]:
        return iter(())

    def build(self, conversations: list[Conversation], line: int | None, data: dict) -> Iterator[Record | Reject]:
        origin = Origin(self.file, line, data)
        for conversation in conversations:
            try:
                yield make_record(
                    conversation.messages,
                    source=self.source,
                    id=conversation.id,
                    meta=conversation.meta,
                    split=data.get("split"),
                    lang=conversation.lang,
                    origin=origin,
                    tools=conversation.tools,
                )
            except InvalidRecord as exc:
                yield self.reject(line, data, exc.reason, exc.detail)

    def reject(self, line: int | None, data: Any, reason: str, detail: str) -> Reject:
        return Reject(self.source, self.file, line, reason, detail, data)


# ---------------------------------------------------------------------------- field helpers


def text_field(data: dict, key: str, *, required: bool = True) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise ConversionError("missing_field", f"no '{key}'")
        return ""
    if not isinstance(value, str):
        raise ConversionError("wrong_type", f"'{key}' is a {type(value).__name__}, not text")
    return value


def system_messages(data: dict) -> list[dict]:
    system = text_field(data, "system", required=False)
    return [{"role": "system", "content": system}] if system.strip() else []


def decoded_json(value: Any) -> Any:
    """`value` decoded when it is JSON text (sources store tool definitions and call arguments
    either way); other text, and anything not text, as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


# Fields Alpaca-style and chat records use for a reply's reasoning, apart from its text.
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking", "think")


def assistant_message(content: str, where: str, reasoning: Any = None, tool_calls: Any = None) -> dict:
    """An assistant message with its reasoning apart: from a separate field, or from a
    `<think>…</think>` block that starts the content (R1-distilled sets)."""
    inline = split_reasoning(content)
    if inline.reasoning is not None:
        if not inline.closed:
            raise ConversionError("bad_reasoning", f"{where} opens <think> and never closes it")
        if reasoning is not None:
            raise ConversionError("bad_reasoning", f"{where} has both a reasoning field and a <think> block")
        reasoning, content = inline.reasoning, inline.answer
    if reasoning is not None and not isinstance(reasoning, str):
        raise ConversionError("wrong_type", f"{where} reasoning is a {type(reasoning).__name__}, not text")
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def reasoning_field(data: dict) -> Any:
    return next((data[key] for key in REASONING_KEYS if data.get(key) is not None), None)


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


def sharegpt_messages(turns: Any) -> list[dict]:
    """ShareGPT turns; a `function_call` turn (a call, or a list of parallel calls, as JSON) joins
    the assistant text right before it or stands as an assistant turn of its own."""
    if not isinstance(turns, list):
        raise ConversionError("wrong_type", "'conversations' is not a list")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ConversionError("wrong_type", f"turn {index} is not an object")
        tag = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(tag.lower()) if isinstance(tag, str) else None
        if role is None:
            raise ConversionError("unknown_role", f"turn {index} is from {tag!r}")
        if not isinstance(value, str):
            raise ConversionError("wrong_type", f"turn {index} value is a {type(value).__name__}, not text")
        if tag.lower() == "function_call":
            calls = decoded_json(value)
            calls = calls if isinstance(calls, list) else [value]
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and not previous.get("tool_calls"):
                previous["tool_calls"] = calls
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif role == "assistant":
            messages.append(assistant_message(value, f"turn {index}", reasoning_field(turn)))
        else:
            messages.append({"role": role, "content": value})
    return messages


def first_turn(data: dict, key: str) -> dict | None:
    turns = data.get(key)
    return turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else None
