"""Converters from each public data format to canonical records, in a registry keyed by format name.

A converter is made per file. `feed` takes one raw record and yields what it became: canonical
records, or a Reject with a reason (never an exception that stops the run). Formats whose
records only make sense together (flat OASST message rows) collect in `feed` and yield in
`finish`. Each yielded record or reject is one item of the "in" count of stats.json.

Role names of the sources map onto system / user / assistant / tool. A tool call made by the
assistant (ShareGPT `function_call`, OpenAI `tool_calls`) becomes an assistant turn holding
`<tool_call>\\n{json}\\n</tool_call>`, the form Qwen's chat template gives tool calls; tool
results become `tool` turns; tool definitions are kept in meta["tools"].
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
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


# ---------------------------------------------------------------------------- shared helpers


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


def tools_meta(data: dict) -> dict:
    """Tool definitions, decoded when the source stores them as a JSON string (glaive, LLaMA-Factory)."""
    tools = data.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            pass
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


# ---------------------------------------------------------------------------- formats


@register
class CanonicalConverter(Converter):
    """Our own JSONL (a processed split read back in): validated; id, lang and meta kept.

    Like every record, it takes the name of the dataset it is read from as its source (stats,
    caps and weights are per dataset); a different source it carried is kept in meta.
    """

    name = "canonical"

    @staticmethod
    def recognizes(data: dict) -> bool:
        return isinstance(data.get("messages"), list) and "lang" in data and "source" in data

    def conversations(self, data: dict) -> list[Conversation]:
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise ConversionError("wrong_type", "'meta' is not an object")
        meta = dict(meta)
        if data.get("source") not in (None, "", self.source):
            meta.setdefault("original_source", data["source"])
        return [Conversation(data["messages"], id=data.get("id"), meta=meta, lang=data.get("lang"))]


OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


@register
class OpenAIConverter(Converter):
    """{"messages": [{"role", "content"}]}: content may be text parts; assistant tool_calls kept as text."""

    name = "openai"

    @staticmethod
    def recognizes(data: dict) -> bool:
        first = first_turn(data, "messages")
        return first is not None and "role" in first

    def conversations(self, data: dict) -> list[Conversation]:
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise ConversionError("wrong_type", "'messages' is not a list")
        converted = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise ConversionError("wrong_type", f"message {index} is not an object")
            role = OPENAI_ROLES.get(message.get("role"))
            if role is None:
                raise ConversionError("unknown_role", f"message {index} has role {message.get('role')!r}")
            converted.append({"role": role, "content": self.content(message, index)})
        meta = tools_meta(data)
        if data.get("images"):
            meta["images"] = data["images"]
        return [Conversation(converted, id=data.get("id"), meta=meta)]

    @staticmethod
    def content(message: dict, index: int) -> str:
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(text, str) for text in texts):
                raise ConversionError("unsupported", f"message {index} has non-text content parts")
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise ConversionError("wrong_type", f"message {index} content is a {type(content).__name__}")
        calls = []
        for call in message.get("tool_calls") or []:
            function = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(function, dict) or "name" not in function:
                raise ConversionError("wrong_type", f"message {index} has a tool call without a function name")
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass
            calls.append(tool_call_text({"name": function["name"], "arguments": arguments}))
        return "\n".join(part for part in (content, *calls) if part)


@register
class ShareGPTConverter(Converter):
    """{"conversations": [{"from": "human|gpt|system|function_call|observation", "value"}], "tools"?, "system"?}"""

    name = "sharegpt"

    @staticmethod
    def recognizes(data: dict) -> bool:
        first = first_turn(data, "conversations")
        return first is not None and ("from" in first or "role" in first)

    def conversations(self, data: dict) -> list[Conversation]:
        messages = system_messages(data) + sharegpt_messages(data.get("conversations"))
        return [Conversation(messages, id=data.get("id"), meta=tools_meta(data))]


@register
class AlpacaConverter(Converter):
    """{"instruction", "input", "output", "system"?, "history"?: [[q, a], ...]}.

    The user turn is the instruction and the input joined by a newline (LLaMA-Factory's way).
    Also reads Chinese-Vicuna's chat variant: "input" and "output" as parallel lists of turns.
    """

    name = "alpaca"

    @staticmethod
    def recognizes(data: dict) -> bool:
        if isinstance(data.get("input"), list) and isinstance(data.get("output"), list):
            return True
        return "output" in data and ("instruction" in data or "input" in data) and not is_dialogue(data)

    def conversations(self, data: dict) -> list[Conversation]:
        if isinstance(data.get("input"), list) and isinstance(data.get("output"), list):
            return [Conversation(self.parallel_turns(data["input"], data["output"]), id=data.get("id"))]
        prompt = "\n".join(
            part
            for part in (text_field(data, "instruction", required=False), text_field(data, "input", required=False))
            if part
        )
        messages = system_messages(data) + self.history(data.get("history"))
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text_field(data, "output")}]
        return [Conversation(messages, id=data.get("id"))]

    @staticmethod
    def history(history: Any) -> list[dict]:
        if not history:
            return []
        if not isinstance(history, list):
            raise ConversionError("wrong_type", "'history' must be a list of [question, answer] pairs")
        messages = []
        for index, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise ConversionError("wrong_type", f"history item {index} is not a [question, answer] pair of texts")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        return messages

    @staticmethod
    def parallel_turns(questions: list, answers: list) -> list[dict]:
        if len(questions) != len(answers):
            raise ConversionError("bad_dialogue", f"{len(questions)} inputs but {len(answers)} outputs")
        return AlpacaConverter.history(list(zip(questions, answers, strict=True)))


_DIALOGUE_TAG = re.compile(r"(?:^|\n)[ \t]*(Human|Assistant)[ \t]*[:：]")
_DIALOGUE_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_dialogue(data: dict) -> bool:
    """BELLE multi-turn: the whole dialogue is inside "instruction" as Human:/Assistant: lines."""
    instruction = data.get("instruction")
    return isinstance(instruction, str) and bool(_DIALOGUE_TAG.match(instruction.lstrip()))


@register
class BelleConverter(AlpacaConverter):
    """BELLE: the instruction format (as Alpaca), the multi-turn dialogue inside "instruction",
    and train_3.5M_CN's {"id", "conversations": [{"from": "human|assistant", "value"}]}."""

    name = "belle"

    @staticmethod
    def recognizes(data: dict) -> bool:
        return (
            (is_dialogue(data) and "output" in data)
            or ShareGPTConverter.recognizes(data)
            or (AlpacaConverter.recognizes(data))
        )

    def conversations(self, data: dict) -> list[Conversation]:
        if "conversations" in data:
            return [Conversation(sharegpt_messages(data["conversations"]), id=data.get("id"))]
        if is_dialogue(data):
            return [
                Conversation(
                    self.dialogue(text_field(data, "instruction"), text_field(data, "output")), id=data.get("id")
                )
            ]
        return super().conversations(data)

    @staticmethod
    def dialogue(text: str, output: str) -> list[dict]:
        parts = _DIALOGUE_TAG.split(text.lstrip())  # ["", "Human", text, "Assistant", text, ...]
        turns = [[_DIALOGUE_ROLES[tag], content] for tag, content in zip(parts[1::2], parts[2::2], strict=True)]
        if turns[-1][0] == "user":
            turns.append(["assistant", output])
        elif not turns[-1][1].strip():
            turns[-1][1] = output  # the dialogue ends with an open "Assistant:"; the output is its reply
        elif output.strip():
            raise ConversionError("bad_dialogue", "the dialogue already ends with a reply and there is an output too")
        return [{"role": role, "content": content.strip()} for role, content in turns]


@register
class FireflyConverter(Converter):
    """{"kind", "input", "target"}: one user turn and one reply; the task kind goes to meta."""

    name = "firefly"

    @staticmethod
    def recognizes(data: dict) -> bool:
        return "input" in data and "target" in data

    def conversations(self, data: dict) -> list[Conversation]:
        messages = [
            {"role": "user", "content": text_field(data, "input")},
            {"role": "assistant", "content": text_field(data, "target")},
        ]
        kind = data.get("kind")
        return [Conversation(messages, id=data.get("id"), meta={"kind": kind} if kind else {})]


OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _rank_key(message: dict) -> tuple:
    """Best reply first: rank 0, 1, ...; unranked (null or missing) last; ties go to the earlier
    message (created_date, then message_id), so the choice never depends on file order."""
    rank = message.get("rank")
    return (
        rank is None,
        rank if rank is not None else 0,
        str(message.get("created_date") or ""),
        str(message.get("message_id") or ""),
    )


def _thread_order(message: dict) -> tuple:
    return (str(message.get("created_date") or ""), str(message.get("message_id") or ""))


@register
class OasstConverter(Converter):
    """OpenAssistant: export trees ({"message_tree_id", "prompt": message}), nested messages
    (a root message with "replies"), or flat message rows (rebuilt from message_id/parent_id
    across the whole file). Deleted messages and everything under them are skipped.

    One conversation per tree follows the best-ranked reply at each step; with
    `oasst_all_paths`, one per assistant message that has no assistant reply below it. A
    thread that stops at a prompter message ends at the assistant turn before it. The id is
    the message_id of the thread's last message.
    """

    name = "oasst"

    def __init__(self, source: str, file: str, options: ConversionOptions = ConversionOptions()):
        super().__init__(source, file, options)
        self.rows: dict[str, tuple[int, dict]] = {}  # flat rows: message_id -> (line, row)

    @staticmethod
    def recognizes(data: dict) -> bool:
        if isinstance(data.get("prompt"), dict):
            return "message_tree_id" in data or "replies" in data["prompt"]
        return "message_id" in data and "text" in data and "role" in data

    def feed(self, raw: RawRecord) -> Iterator[Record | Reject]:
        data = raw.data
        if isinstance(data, dict) and "message_id" in data and "replies" not in data and "prompt" not in data:
            if data["message_id"] in self.rows:
                yield self.reject(raw.line, data, "duplicate_message", f"message_id {data['message_id']} seen before")
            else:
                self.rows[data["message_id"]] = (raw.line, data)
            return
        yield from super().feed(raw)

    def conversations(self, data: dict) -> list[Conversation]:
        root = data["prompt"] if isinstance(data.get("prompt"), dict) else data
        tree_id = data.get("message_tree_id", root.get("message_tree_id", root.get("message_id")))
        return self.threads(root, lambda message: message.get("replies") or [], tree_id)

    def finish(self) -> Iterator[Record | Reject]:
        children: dict[str, list[dict]] = defaultdict(list)
        roots = []
        for _, row in self.rows.values():
            parent = row.get("parent_id")
            if parent is None:
                roots.append(row)
            else:
                children[parent].append(row)
        for replies in children.values():
            replies.sort(key=_thread_order)  # rows may come in any order; replies come oldest first
        reached = set()
        for root in roots:
            line, _ = self.rows[root["message_id"]]
            stack = [root]
            while stack:  # mark the whole tree, deleted branches included: they are part of this record
                message = stack.pop()
                reached.add(message["message_id"])
                stack.extend(children.get(message["message_id"], ()))
            try:
                conversations = self.threads(
                    root, lambda m: children.get(m["message_id"], ()), root.get("message_tree_id", root["message_id"])
                )
            except ConversionError as exc:
                yield self.reject(line, root, exc.reason, exc.detail)
                continue
            yield from self.build(conversations, line, root)
        for message_id, (line, row) in self.rows.items():
            if message_id not in reached:
                yield self.reject(
                    line, row, "orphan_message", f"parent {row.get('parent_id')} is not in this file (or a cycle)"
                )
        self.rows.clear()

    def threads(self, root: dict, replies_of, tree_id) -> list[Conversation]:
        if root.get("deleted"):
            raise ConversionError("deleted", "the tree's first message is deleted")
        if root.get("role") != "prompter":
            raise ConversionError("bad_tree", f"the tree starts with a {root.get('role')!r} message, not a prompter")

        def live_replies(message: dict) -> list[dict]:
            return [m for m in replies_of(message) if isinstance(m, dict) and not m.get("deleted")]

        if self.options.oasst_all_paths:
            paths = self.all_paths(root, live_replies)
        else:
            paths = [self.best_path(root, live_replies)]
        meta = {"message_tree_id": tree_id}
        if root.get("lang"):
            meta["oasst_lang"] = root["lang"]
        return [
            Conversation([self.message(m) for m in path], id=path[-1].get("message_id"), meta=dict(meta))
            for path in paths
        ]

    @staticmethod
    def best_path(root: dict, live_replies) -> list[dict]:
        path = [root]
        while replies := live_replies(path[-1]):
            path.append(min(replies, key=_rank_key))
        return _trim_to_assistant(path)

    @staticmethod
    def all_paths(root: dict, live_replies) -> list[dict]:
        leaves, stack = [], [[root]]
        while stack:
            path = stack.pop()
            replies = live_replies(path[-1])
            if not replies:
                leaves.append(_trim_to_assistant(path))
            # Reversed so that threads come out in reply order.
            stack.extend(path + [reply] for reply in reversed(replies))
        inner = {id(message) for path in leaves for message in path[:-1]}
        kept, seen = [], set()
        for path in leaves:
            last = id(path[-1])
            if last not in inner and last not in seen:
                seen.add(last)
                kept.append(path)
        return kept

    @staticmethod
    def message(message: dict) -> dict:
        role = OASST_ROLES.get(message.get("role"))
        if role is None:
            raise ConversionError(
                "unknown_role", f"message {message.get('message_id')} has role {message.get('role')!r}"
            )
        text = message.get("text")
        if not isinstance(text, str):
            raise ConversionError("wrong_type", f"message {message.get('message_id')} text is not text")
        return {"role": role, "content": text}


def _trim_to_assistant(path: list[dict]) -> list[dict]:
    """Drop trailing prompter messages (a question nobody answered); keep the root at least."""
    end = len(path)
    while end > 1 and path[end - 1].get("role") != "assistant":
        end -= 1
    return path[:end]


# Detection: a file's format is the one that can convert most of its first records; ties go
# to the earlier, more specific format (canonical records are also valid OpenAI records; BELLE
# converts Alpaca records too, but only BELLE reads its dialogue-in-instruction records).
DETECTION_PREFERENCE = ("canonical", "openai", "oasst", "firefly", "sharegpt", "alpaca", "belle")
DETECTION_SAMPLE = 64


@dataclass
class Detection:
    format: str | None
    recognized: int  # of the sampled records, how many the chosen format can convert
    sampled: int


def detect_format(samples: list[Any]) -> Detection:
    objects = [sample for sample in samples if isinstance(sample, dict)]
    best, best_count = None, 0
    for name in DETECTION_PREFERENCE:
        count = sum(1 for sample in objects if FORMATS[name].recognizes(sample))
        if count > best_count:
            best, best_count = name, count
    return Detection(best, best_count, len(samples))
