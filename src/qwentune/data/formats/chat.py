"""Conversation formats: our own canonical JSONL, OpenAI `messages`, ShareGPT `conversations`."""

from __future__ import annotations

from qwentune.data.formats.base import (
    Conversation,
    ConversionError,
    Converter,
    decoded_json,
    first_turn,
    register,
    sharegpt_messages,
    system_messages,
    tool_call_text,
    tools_meta,
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
            arguments = decoded_json(function.get("arguments"))
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
