"""Conversation formats: our own canonical JSONL, OpenAI `messages`, ShareGPT `conversations`."""

from __future__ import annotations

from qwentune.data.formats.base import (
    Conversation,
    ConversionError,
    Converter,
    assistant_message,
    first_turn,
    reasoning_field,
    register,
    sharegpt_messages,
    system_messages,
)


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
        # Files written before tools became a record field kept them in meta.
        tools = data["tools"] if "tools" in data else meta.pop("tools", None)
        return [Conversation(data["messages"], id=data.get("id"), meta=meta, lang=data.get("lang"), tools=tools)]


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
    """{"messages": [{"role", "content"}], "tools"?}: content may be text parts; assistant `tool_calls` and
    `reasoning_content` (or `reasoning`) kept structured; tool results with their `tool_call_id`."""

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
            converted.append(self.message(role, message, index))
        meta = {"images": data["images"]} if data.get("images") else {}
        return [Conversation(converted, id=data.get("id"), meta=meta, tools=data.get("tools"))]

    @classmethod
    def message(cls, role: str, message: dict, index: int) -> dict:
        content = cls.content(message, index)
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise ConversionError("wrong_type", f"message {index} tool_calls is not a list")
            if message.get("function_call"):  # the legacy single-call field
                calls = [*calls, message["function_call"]]
            return assistant_message(content, f"message {index}", reasoning_field(message), calls)
        converted = {"role": role, "content": content}
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if message.get(key):
                    converted[key] = message[key]
        return converted

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
        return content


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
        return [Conversation(messages, id=data.get("id"), tools=data.get("tools"))]
