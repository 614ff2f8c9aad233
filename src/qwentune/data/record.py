"""The canonical record every format converts into, and the reject that explains a dropped one.

    {"id": "...", "source": "alpaca_gpt4_data", "lang": "en",
     "tools": [{"type": "function", "function": {"name", "description", "parameters"}}],   (only when defined)
     "messages": [{"role": "system|user|assistant|tool", "content": "..."}],
     "meta": {}}

An assistant message may also hold `reasoning_content` (its think block, text) and `tool_calls`
([{"name", "arguments": {...}, "id"?}]); a tool message may hold `tool_call_id` and `name`.
Tool data is kept structured (see qwentune.data.toolcalls), never pre-rendered: the model's
own chat template renders it at tokenizing time.

A preference record keeps the shared prompt in `messages` and adds the two assistant replies,
`"chosen"` and `"rejected"` (each {"role": "assistant", "content": ...}); a KTO record adds one
reply as `"completion"` with a boolean `"label"` (true: desirable). See data/formats/preference.py.

A raw record may pin its split with a top-level "split" key; it is kept in meta["split"].
Each record also carries its `origin` (file, line, raw record) through the pipeline so that a
record dropped late (a duplicate, over a cap) still lands in rejects.jsonl with where it came
from; the origin is never written into the processed splits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from qwentune.data.lang import detect_lang, normalize_lang
from qwentune.data.toolcalls import ToolCallError, check_calls, normalise_call, normalise_tools

ROLES = ("system", "user", "assistant", "tool")
SPLITS = ("train", "validation", "test")
LANGS = ("zh", "en")

# Names people give the held-out splits; a pinned split is stored under our name.
SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}


class InvalidRecord(ValueError):
    """A raw record that cannot become a canonical record; `reason` is the rejects.jsonl key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Origin:
    """Where a record came from: file relative to the input folder, 1-based line (or row), raw record."""

    file: str
    line: int | None
    raw: Any


@dataclass(slots=True)
class Record:
    id: str
    source: str
    lang: str
    messages: list[dict]
    meta: dict = field(default_factory=dict)
    origin: Origin | None = None
    tools: list[dict] = field(default_factory=list)
    # Preference records only (see the module docstring).
    chosen: dict | None = None
    rejected: dict | None = None
    completion: dict | None = None
    label: bool | None = None

    @property
    def pinned_split(self) -> str | None:
        return self.meta.get("split")

    @property
    def kind(self) -> str:
        """"sft", "pair" (chosen/rejected) or "kto" (one labelled completion)."""
        return "pair" if self.chosen is not None else "kto" if self.completion is not None else "sft"

    def conversations(self) -> list[list[dict]]:
        """Every full conversation the record holds: what the rules, the length filter and dedup look at."""
        if self.kind == "pair":
            return [[*self.messages, self.chosen], [*self.messages, self.rejected]]
        if self.kind == "kto":
            return [[*self.messages, self.completion]]
        return [self.messages]

    def to_dict(self) -> dict:
        data = {"id": self.id, "source": self.source, "lang": self.lang}
        if self.tools:
            data["tools"] = self.tools
        data["messages"] = self.messages
        if self.kind == "pair":
            data.update(chosen=self.chosen, rejected=self.rejected)
        elif self.kind == "kto":
            data.update(completion=self.completion, label=self.label)
        data["meta"] = self.meta
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=str)


@dataclass(slots=True)
class Reject:
    """A record that ends in rejects.jsonl instead of a split."""

    source: str
    file: str
    line: int | None
    reason: str
    detail: str
    original: Any

    @classmethod
    def of(cls, record: Record, reason: str, detail: str) -> Reject:
        origin = record.origin or Origin(file="", line=None, raw=record.to_dict())
        return cls(record.source, origin.file, origin.line, reason, detail, origin.raw)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "source": self.source,
            "reason": self.reason,
            "detail": self.detail,
            "original": self.original,
        }


def conversation_text(messages: list[dict]) -> str:
    """The user and assistant text of a conversation: what its language is judged on."""
    return "\n".join(m["content"] for m in messages if m["role"] in ("user", "assistant"))


def stable_id(source: str, messages: list[dict]) -> str:
    """Content id for records whose source gives none: same source and messages, same id."""
    digest = hashlib.blake2b(source.encode("utf-8"), digest_size=8)
    for message in messages:
        # Separators that cannot occur in a role keep ("ab", "c") and ("a", "bc") apart.
        digest.update(b"\x00" + message["role"].encode() + b"\x1f" + message["content"].encode("utf-8"))
        # Only when present, so ids of plain records stay what they were.
        for key in ("reasoning_content", "tool_calls"):
            if message.get(key):
                digest.update(b"\x1d" + key.encode() + json.dumps(message[key], sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def normalise_split(value: Any) -> str:
    split = SPLIT_ALIASES.get(str(value).strip().lower()) if isinstance(value, str) else None
    if split is None:
        raise InvalidRecord("invalid_split", f"split must be one of {', '.join(SPLITS)}; got {value!r}")
    return split


def _check_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRecord("empty_conversation", "the record has no messages")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRecord("wrong_type", f"message {index} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidRecord(
                "unknown_role", f"message {index} has role {role!r}; expected one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise InvalidRecord("wrong_type", f"message {index} ({role}) content is {type(content).__name__}, not text")
        if role == "system" and index != 0:
            # Chat templates place the system prompt first; anywhere else it would be silently moved or lost.
            raise InvalidRecord("misplaced_system", f"system message at position {index}; only the first may be system")
        checked.append(_checked_extras(index, role, content, message))
    return checked


def _checked_extras(index: int, role: str, content: str, message: dict) -> dict:
    """The message with the structured fields its role may carry (reasoning, tool calls, call id)."""
    checked = {"role": role, "content": content}
    if role == "assistant":
        reasoning = message.get("reasoning_content")
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise InvalidRecord("wrong_type", f"message {index} reasoning_content is not text")
            checked["reasoning_content"] = reasoning
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise InvalidRecord("wrong_type", f"message {index} tool_calls is not a list")
            try:
                checked["tool_calls"] = [
                    normalise_call(call, f"message {index} tool call {number}") for number, call in enumerate(calls)
                ]
            except ToolCallError as exc:
                raise InvalidRecord(exc.reason, exc.detail) from None
    elif role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(message.get(key), str) and message[key]:
                checked[key] = message[key]
    return checked


def make_record(
    messages: Any,
    *,
    source: str,
    id: Any = None,
    meta: dict | None = None,
    split: Any = None,
    lang: str | None = None,
    origin: Origin | None = None,
    tools: Any = None,
) -> Record:
    """Validate `messages` (and `tools`, the definitions its calls must name) and build a record;
    raises InvalidRecord with a reason and a sentence.

    `id` is kept when the source has one (as text); otherwise a content hash.
    `lang` is detected from the user and assistant text unless a valid one is given.
    """
    checked = _check_messages(messages)
    try:
        definitions = normalise_tools(tools)
        check_calls(checked, definitions)
    except ToolCallError as exc:
        raise InvalidRecord(exc.reason, exc.detail) from None
    meta = dict(meta or {})
    split = split if split is not None else meta.get("split")
    if split is not None:
        meta["split"] = normalise_split(split)
    record_id = str(id) if id is not None and str(id) != "" else stable_id(source, checked)
    lang = normalize_lang(lang, conversation_text(checked))
    if lang not in LANGS:  # the splitter knows Chinese and English: another language counts as detected
        lang = detect_lang(conversation_text(checked))
    return Record(
        id=record_id, source=source, lang=lang, messages=checked, meta=meta, origin=origin, tools=definitions
    )


def _check_reply(reply: Any, side: str) -> dict:
    """One assistant reply, from text or a message; an empty one is a reject (a pair needs both sides)."""
    if isinstance(reply, dict):
        if reply.get("role", "assistant") != "assistant":
            raise InvalidRecord("unknown_role", f"the {side} reply has role {reply.get('role')!r}, not assistant")
        reply = reply.get("content")
    if not isinstance(reply, str):
        raise InvalidRecord("wrong_type", f"the {side} reply is a {type(reply).__name__}, not text")
    if not reply.strip():
        raise InvalidRecord("empty_reply", f"the {side} reply is empty")
    return {"role": "assistant", "content": reply}


def make_preference_record(
    prompt: Any,
    *,
    source: str,
    chosen: Any = None,
    rejected: Any = None,
    completion: Any = None,
    label: Any = None,
    id: Any = None,
    meta: dict | None = None,
    split: Any = None,
    lang: str | None = None,
    origin: Origin | None = None,
) -> Record:
    """A pair (`chosen` and `rejected`) or a KTO example (`completion` and a boolean `label`) after
    `prompt` messages that end with a user turn; raises InvalidRecord like make_record."""
    checked = _check_messages(prompt)
    if checked[-1]["role"] != "user":
        raise InvalidRecord("bad_prompt", f"the prompt ends with a {checked[-1]['role']} turn, not a user turn")
    replies: dict[str, Any] = {}
    if completion is None:
        replies["chosen"] = _check_reply(chosen, "chosen")
        replies["rejected"] = _check_reply(rejected, "rejected")
        identity = [*checked, replies["chosen"], {"role": "rejected", "content": replies["rejected"]["content"]}]
    else:
        if not isinstance(label, bool):
            raise InvalidRecord("wrong_type", f"'label' must be true or false (desirable or not); got {label!r}")
        replies["completion"] = _check_reply(completion, "completion")
        replies["label"] = label
        identity = [*checked, replies["completion"], {"role": "label", "content": str(label)}]
    record = make_record(identity[:-1], source=source, id=id, meta=meta, split=split, lang=lang, origin=origin)
    if id is None or str(id) == "":
        record.id = stable_id(source, identity)  # the rejected side / label count in the content id
    record.messages = checked
    for key, value in replies.items():
        setattr(record, key, value)
    return record
