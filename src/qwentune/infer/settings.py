"""Generation settings of one call: how many tokens, how to sample, where to stop.

Every door (Python API, CLI, interactive chat, server) validates its settings here, so the
allowed ranges are written once.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import Field

from qwentune.config.base import StrictModel

DEFAULT_MAX_NEW_TOKENS = 512
# The server's limits on one request (qwentune serve --max_body_mb, --max_prompts): a full
# 128k-token context of JSON-escaped Chinese is about 1.5 MB.
DEFAULT_MAX_BODY_MB = 4.0
DEFAULT_MAX_PROMPTS = 32
# Below it a temperature is greedy decoding, as in vLLM: dividing logits by 1e-300 gives inf/nan.
GREEDY_BELOW_TEMPERATURE = 1e-5
# Below it the penalised logits can overflow (1e-308 gave inf/nan); 0.01 already multiplies them by 100.
MIN_REPETITION_PENALTY = 0.01


class Sampling(NamedTuple):
    """How the next token is chosen. Hashable: the server batches requests that share it."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature is None or self.temperature < GREEDY_BELOW_TEMPERATURE

    def generate_kwargs(self) -> dict:
        """transformers GenerationConfig fields; unset ones keep the model's saved values."""
        if self.greedy:
            # Clear the saved sampling values too, or transformers warns that they are unused.
            kwargs = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs = dict(do_sample=True, temperature=self.temperature)
            kwargs.update({k: v for k, v in (("top_p", self.top_p), ("top_k", self.top_k)) if v is not None})
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


class GenerationSettings(StrictModel):
    """No temperature (or one below 1e-5) means greedy decoding: the same prompt always gets the same answer."""

    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, ge=MIN_REPETITION_PENALTY, allow_inf_nan=False)
    # Strings that end the answer; the answer stops before the first one and does not include it.
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    @property
    def sampling(self) -> Sampling:
        if Sampling(self.temperature).greedy:
            # top_p / top_k mean nothing to greedy decoding: leave them out so such requests batch together.
            return Sampling(repetition_penalty=self.repetition_penalty)
        return Sampling(self.temperature, self.top_p, self.top_k, self.repetition_penalty)
