"""The protocol: the part of the OpenAI API the server speaks, as typed request models and its error.

No routes and no generation here: `server` holds the routes, `serving` turns a request into
prompts, generation and a response (`openai_responses` holds the response models). Unknown request fields are ignored (clients send many);
fields this server cannot honour are refused with a 400 rather than silently ignored (see
`UNSUPPORTED`). Every number must be finite (NaN and Infinity are valid in Python's JSON).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from qwentune.infer.settings import MIN_REPETITION_PENALTY, GenerationSettings

MAX_STOP_STRINGS = 4  # as OpenAI


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        if self.status == 401:
            return "authentication_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- requests

# Fields with the values that mean "not used"; any other value is refused.
UNSUPPORTED: dict[str, tuple] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "suffix": ("",),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "seed": (),
    "functions": ([],),  # the deprecated form of `tools`
    "function_call": ("none", "auto"),
    "response_format": ({"type": "text"},),
}


def _means_unused(value: Any, unused: tuple) -> bool:
    # A bool is not a number here: True == 1 in Python, but "n": true is not a count.
    return any(value == u and isinstance(value, bool) == isinstance(u, bool) for u in unused)


def _unpaired_surrogate(data: Any) -> str | None:
    """Where `data` holds text that is not valid Unicode (JSON's "\\ud800" escape decodes to a lone
    surrogate, which no tokenizer takes): "messages.0.content", or None."""
    stack: list[tuple[tuple, Any]] = [((), data)]  # not recursive: nesting depth is the client's choice
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return ".".join(map(str, path)) or None
        elif isinstance(value, dict):
            stack += [((*path, key), item) for key, item in value.items()]
        elif isinstance(value, list):
            stack += [((*path, index), item) for index, item in enumerate(value)]
    return None


def _accepted(unused: tuple) -> str:
    return f"leave it out or send {' or '.join(json.dumps(u) for u in unused)}" if unused else "leave it out"


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, unused in UNSUPPORTED.items():
                value = data.get(name)
                if value is not None and not _means_unused(value, unused):
                    raise PydanticCustomError(
                        "unsupported",
                        "'{param}' is not supported by this server (got {value}; {accepted})",
                        {"param": name, "value": repr(value), "accepted": _accepted(unused)},
                    )
        return data


class StreamOptions(OpenAIRequest):
    include_usage: bool = Field(False, strict=True)


StopString = Annotated[str, Field(min_length=1)]


def _finite(**limits) -> Any:
    """A float field that refuses NaN and ±Infinity with "must be a finite number"."""
    return Field(None, allow_inf_nan=False, strict=True, **limits)


class SamplingRequest(OpenAIRequest):
    """Numbers and flags are strict, as OpenAI's: "temperature": "1" or true is refused, not converted."""

    model: str
    max_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: float | None = _finite(ge=0, le=2)
    top_p: float | None = _finite(gt=0, le=1)
    top_k: int | None = Field(None, ge=0, strict=True)  # not OpenAI's; vLLM and others accept it
    repetition_penalty: float | None = _finite(ge=MIN_REPETITION_PENALTY)  # likewise
    stop: StopString | list[StopString] | None = Field(None)
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if (where := _unpaired_surrogate(data)) is not None:
            raise PydanticCustomError(
                "invalid_unicode", "text with an unpaired UTF-16 surrogate (such as \\ud800) is not valid Unicode",
                {"param": where},
            )  # fmt: skip
        return data

    @model_validator(mode="after")
    def _few_stop_strings(self):
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_STRINGS:
            raise PydanticCustomError(
                "too_many", "'stop' takes at most {limit} strings", {"param": "stop", "limit": MAX_STOP_STRINGS}
            )
        return self

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def tokens_field(self) -> str:
        """The field `requested_tokens` comes from."""
        return "max_tokens"

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def settings(self, max_new_tokens: int) -> GenerationSettings:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return GenerationSettings(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=stop,
        )


class TextPart(OpenAIRequest):
    type: Literal["text"]
    text: str


class FunctionCall(OpenAIRequest):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(OpenAIRequest):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(OpenAIRequest):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema, shown to the model (not enforced on its arguments)


class ToolDefinition(OpenAIRequest):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(OpenAIRequest):
    name: str


class NamedToolChoice(OpenAIRequest):
    type: Literal["function"]
    function: NamedFunction


class ChatTemplateKwargs(BaseModel):
    """vLLM's `chat_template_kwargs`: the variable our templates read is Qwen3's thinking switch."""

    enable_thinking: bool | None = Field(None, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and (unknown := sorted(set(data) - set(cls.model_fields))):
            raise PydanticCustomError(
                "unsupported", "'chat_template_kwargs' takes only 'enable_thinking' on this server (got {keys})",
                {"keys": ", ".join(map(repr, unknown))},
            )  # fmt: skip
        return data


class ChatMessage(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: the call they answer
    reasoning_content: str | None = None  # an assistant turn's reasoning (Qwen3 renders it after the last user turn)

    @model_validator(mode="after")
    def _complete(self):
        if self.role == "tool" and not self.tool_call_id:
            raise PydanticCustomError("missing", "a 'tool' message needs 'tool_call_id'", {"param": "tool_call_id"})
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise PydanticCustomError(
                "missing", "'content' is required (null only in an assistant message with 'tool_calls')",
                {"param": "content"},
            )  # fmt: skip
        return self

    def as_message(self) -> dict:
        """The engine's message shape: "developer" is OpenAI's newer name for system; tool calls stay structured."""
        content = self.content if not isinstance(self.content, list) else "".join(part.text for part in self.content)
        message = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump(exclude_none=True) for call in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.reasoning_content and self.role == "assistant":
            message["reasoning_content"] = self.reasoning_content
        return message


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None  # vLLM's convention: {"enable_thinking": false}
    enable_thinking: bool | None = Field(None, strict=True)  # Alibaba Cloud's (DashScope) convention for Qwen3
    parallel_tool_calls: bool = Field(True, strict=True)  # false: at most one call per reply
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)  # OpenAI's newer name for max_tokens

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def conversation(self) -> list[dict]:
        return [message.as_message() for message in self.messages]

    @model_validator(mode="after")
    def _tools_agree(self):
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) < len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise PydanticCustomError("duplicate", "'tools' defines {names} more than once", {"param": "tools", "names": ", ".join(twice)})
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise PydanticCustomError(
                "unknown_tool", "'tool_choice' names the function '{name}', which 'tools' does not define (defined: {names})",
                {"param": "tool_choice", "name": choice.function.name, "names": ", ".join(names) or "none"},
            )  # fmt: skip
        if choice == "required" and not names:
            raise PydanticCustomError("needs_tools", "'tool_choice' \"required\" needs 'tools'", {"param": "tool_choice"})
        switches = {s for s in (self.enable_thinking, self.chat_template_kwargs and self.chat_template_kwargs.enable_thinking) if s is not None}
        if len(switches) > 1:
            raise PydanticCustomError(
                "conflict", "'enable_thinking' and 'chat_template_kwargs.enable_thinking' disagree", {"param": "enable_thinking"}
            )  # fmt: skip
        return self

    def prompt_options(self) -> dict:
        """The engine's prompt options (QwenInference.prepare): tools, tool_choice and the thinking switch."""
        thinking = self.chat_template_kwargs.enable_thinking if self.chat_template_kwargs else None
        choice = self.tool_choice or "auto"
        return {
            "tools": [tool.model_dump(exclude_none=True) for tool in self.tools or []],
            "tool_choice": choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
            "enable_thinking": thinking if thinking is not None else self.enable_thinking,
            "parallel_tool_calls": self.parallel_tool_calls,
        }


class CompletionRequest(SamplingRequest):
    prompt: (
        Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    )

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


_FIELDS = {
    name
    for schema in (ChatCompletionRequest, CompletionRequest, ChatMessage, TextPart, StreamOptions, ToolCall,
                   FunctionCall, ToolDefinition, FunctionDefinition, NamedToolChoice, ChatTemplateKwargs)  # fmt: skip
    for name in schema.model_fields
}


def field_path(location: tuple) -> str | None:
    """'messages.0.content' from a pydantic error location, without the member types of unions it names."""
    parts = [str(part) for part in location if isinstance(part, int) or part in _FIELDS]
    return ".".join(parts) or None
