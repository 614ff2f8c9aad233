"""The OpenAI API's response shapes, as the server sends them (requests: `openai_api`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, model_serializer

from qwentune.infer.openai_api import ToolCall


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )  # fmt: skip


class SparseModel(BaseModel):
    """A model whose unset (None) fields are left out of its JSON."""

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None or key in self._always}

    _always: ClassVar[frozenset[str]] = frozenset()


class AssistantMessage(SparseModel):
    """`reasoning_content` (the think block, as vLLM and DeepSeek name it) and `tool_calls` only when there are some."""

    _always: ClassVar[frozenset[str]] = frozenset({"content"})  # null when the reply is only tool calls
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionDelta(SparseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(SparseModel):
    """A streamed tool call: its first delta has the id and name, the next ones pieces of its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChatDelta(SparseModel):
    """The new part of a streamed message: only the fields it sets are sent."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class TextCompletion(BaseModel):
    """A /v1/completions answer, and (with finish_reason None and usage None) each of its streamed chunks."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwentune"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
