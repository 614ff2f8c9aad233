"""The part of the OpenAI API the server speaks: request shapes, their checks, and the error shape.

Unknown request fields are ignored (clients send many); fields this server cannot honour are
refused with a 400 rather than silently ignored (see `UNSUPPORTED`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qwentune.infer.settings import GenerationSettings

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
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),
    "response_format": ({"type": "text"},),
}


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, unused in UNSUPPORTED.items():
                value = data.get(name)
                if value is not None and value not in unused:
                    raise ValueError(f"'{name}' is not supported by this server (got {value!r})")
        return data


class StreamOptions(OpenAIRequest):
    include_usage: bool = False


StopString = Annotated[str, Field(min_length=1)]


class SamplingRequest(OpenAIRequest):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's; vLLM and others accept it
    repetition_penalty: float | None = Field(None, gt=0)  # likewise
    stop: StopString | list[StopString] | None = Field(None)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _few_stop_strings(self):
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"'stop' takes at most {MAX_STOP_STRINGS} strings")
        return self

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens

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


class ChatMessage(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_message(self) -> dict:
        """Our message shape; "developer" is OpenAI's newer name for the system role."""
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: (
        Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    )

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


_FIELDS = {
    name
    for schema in (ChatCompletionRequest, CompletionRequest, ChatMessage, TextPart, StreamOptions)
    for name in schema.model_fields
}


def field_path(location: tuple) -> str | None:
    """'messages.0.content' from a pydantic error location, without the member types of unions it names."""
    parts = [str(part) for part in location if isinstance(part, int) or part in _FIELDS]
    return ".".join(parts) or None
