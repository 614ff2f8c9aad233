"""QwenInference: one engine for every way of asking a trained model (API, CLI, chat, server, evaluation).

    from scripts.inference import QwenInference       # or: from qwentune.infer.engine import QwenInference
    bot = QwenInference("./results/checkpoints")
    bot.generate("你好，请介绍一下自己")
    bot.chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Who made you?"}])
    for piece in bot.stream("Tell me a joke"): print(piece, end="")
    bot.batch_generate(["1+1=?", "Name a colour."], batch_size=8)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from threading import Thread

import torch

from qwentune.data.dataset import with_system_prompt
from qwentune.data.tokenize import encode_prompt
from qwentune.paths import CHECKPOINTS_DIR

Messages = list[dict]


def as_messages(prompt: str | Messages, system_prompt: str | None = None) -> Messages:
    """A message list, led by `system_prompt` when it has no system message (as in training)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return with_system_prompt(messages, system_prompt)


def sampling_settings(
    max_new_tokens: int = 512,
    temperature: float | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    **extra,
) -> dict:
    """transformers generate() arguments. No temperature (or 0) means greedy decoding."""
    settings = {"max_new_tokens": max_new_tokens, **extra}
    if temperature:
        settings.update(do_sample=True, temperature=temperature, top_p=top_p if top_p is not None else 1.0)
    else:
        settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if repetition_penalty is not None:
        settings["repetition_penalty"] = repetition_penalty
    return settings


class QwenInference:
    def __init__(
        self,
        model_path: str = str(CHECKPOINTS_DIR),
        *,
        base_model: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        quantization_bit: int | None = None,
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
    ):
        from qwentune.model.loader import load_for_inference

        self.model, self.tokenizer, self.info = load_for_inference(
            model_path,
            base_model=base_model,
            device=device,
            dtype=dtype,
            quantization_bit=quantization_bit,
            trust_remote_code=trust_remote_code,
        )
        self.system_prompt = system_prompt if system_prompt is not None else self.info.get("system_prompt")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 32768)

    def generation_config(self, **settings):
        """The saved generation config (stop ids, pad id) with this call's sampling settings."""
        config = copy.deepcopy(self.model.generation_config)
        unknown = config.update(**sampling_settings(**settings))
        if unknown:
            raise TypeError(f"unknown generation settings: {', '.join(sorted(unknown))}")
        return config

    def prompt_ids(self, prompt: str | Messages) -> list[int]:
        return encode_prompt(self.tokenizer, as_messages(prompt, self.system_prompt))

    def generate(self, text: str | Messages, **settings) -> str:
        """The answer to one prompt (a string or a message list)."""
        return self.batch_generate([text], batch_size=1, **settings)[0]

    def chat(self, messages: Messages, **settings) -> str:
        """The next assistant turn of a multi-turn conversation."""
        return self.generate(messages, **settings)

    @torch.inference_mode()
    def batch_generate(self, prompts: list[str | Messages], batch_size: int = 8, progress=None, **settings) -> list[str]:
        """Answers in input order; prompts are left-padded so each batch decodes in one call.

        `progress`, when given, is called with the number of prompts finished after each batch.
        """
        answers: list[str] = []
        for start in range(0, len(prompts), batch_size):
            batch = [self.prompt_ids(p) for p in prompts[start : start + batch_size]]
            input_ids, attention_mask = self._left_pad(batch)
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=self.generation_config(**settings)
            )
            for row in output[:, input_ids.shape[1] :]:
                answers.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
            if progress is not None:
                progress(len(batch))
        return answers

    def stream(self, prompt: str | Messages, stop_event=None, **settings) -> Iterator[str]:
        """Text pieces of the answer as they are generated. Setting `stop_event` ends it early."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class StopOnEvent(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return bool(stop_event is not None and stop_event.is_set())

        input_ids, attention_mask = self._left_pad([self.prompt_ids(prompt)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self.generation_config(**settings),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopOnEvent()]),
        )
        worker = Thread(target=self._generate_quietly, kwargs=kwargs, daemon=True)
        worker.start()
        yield from streamer
        worker.join()

    @torch.inference_mode()
    def _generate_quietly(self, **kwargs) -> None:
        self.model.generate(**kwargs)

    def _left_pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = [[pad] * (longest - len(ids)) + ids for ids in batch]
        attention_mask = [[0] * (longest - len(ids)) + [1] * len(ids) for ids in batch]
        return (
            torch.tensor(input_ids, device=self.device),
            torch.tensor(attention_mask, device=self.device),
        )
