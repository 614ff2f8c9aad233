"""What every converter shares: the base class, the registry, the error a rule raises, and
small field helpers used by several formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qwentune.data.readers import RawRecord
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


def tool_call_text(call: Any) -> str:
    body = call if isinstance(call, str) else json.dumps(call, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


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


def tools_meta(data: dict) -> dict:
    """Tool definitions (glaive and LLaMA-Factory store them as a JSON string)."""
    tools = decoded_json(data.get("tools"))
    return {"tools": tools} if tools not in (None, "", []) else {}


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
        messages.append({"role": role, "content": tool_call_text(value) if tag == "function_call" else value})
    return messages


def first_turn(data: dict, key: str) -> dict | None:
    turns = data.get(key)
    return turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else None
