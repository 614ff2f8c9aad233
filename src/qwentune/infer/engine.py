"""QwenInference: one engine for every way of asking a trained model (API, CLI, chat, server, evaluation).

    from scripts.inference import QwenInference       # or: from qwentune.infer.engine import QwenInference
    bot = QwenInference("./results/checkpoints")
    bot.generate("你好，请介绍一下自己")
    bot.chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Who made you?"}])
    for piece in bot.stream("Tell me a joke"): print(piece, end="")
    bot.batch_generate(["1+1=?", "Name a colour."], batch_size=8, max_new_tokens=64)

Settings per call (see `GenerationSettings`): max_new_tokens, temperature (none or 0: greedy),
top_p, top_k, repetition_penalty, stop.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterator

import torch
from transformers import StoppingCriteriaList

from qwentune.data.dataset import with_system_prompt
from qwentune.data.tokenize import encode_prompt
from qwentune.infer.decoding import Completion, GenerationRequest, RowMonitor
from qwentune.infer.settings import GenerationSettings, Sampling
from qwentune.paths import CHECKPOINTS_DIR

Messages = list[dict]


class PromptTooLongError(ValueError):
    """A prompt that leaves no room for an answer in the model's context."""


def as_messages(prompt: str | Messages, system_prompt: str | None = None) -> Messages:
    """A message list, led by `system_prompt` when it has no system message (as in training)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return with_system_prompt(messages, system_prompt)


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
        """`system_prompt` replaces the one the model was trained with (used when a conversation has none)."""
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
        # One generation at a time: callers on other threads (a web server, a streaming worker) wait their turn.
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        """Most tokens (prompt and answer together) the model was built for."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 32768)

    @property
    def stop_ids(self) -> set[int]:
        """End-of-sequence ids saved with the model (they include the end-of-turn token)."""
        eos = self.model.generation_config.eos_token_id
        return set(eos) if isinstance(eos, list) else {eos}

    def prompt_ids(self, prompt: str | Messages) -> list[int]:
        """Token ids of a prompt (a string or a message list) in the chat template, with the system prompt."""
        return encode_prompt(self.tokenizer, as_messages(prompt, self.system_prompt))

    def request(self, prompt_ids: list[int], settings: GenerationSettings, **listeners) -> GenerationRequest:
        """A generation request whose token limit also keeps prompt and answer within the context."""
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context holds {self.context_length}"
            )
        return GenerationRequest(prompt_ids, min(settings.max_new_tokens, room), list(settings.stop), **listeners)

    # ---------------------------------------------------------------- the public API

    def generate(self, text: str | Messages, **settings) -> str:
        """The answer to one prompt (a string or a message list)."""
        return self.batch_generate([text], batch_size=1, **settings)[0]

    def chat(self, messages: Messages, **settings) -> str:
        """The next assistant turn of a multi-turn conversation."""
        return self.generate(messages, **settings)

    def batch_generate(
        self,
        prompts: list[str | Messages],
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
        **settings,
    ) -> list[str]:
        """Answers in input order; each batch is left-padded and decoded in one call.

        `progress`, when given, is called with the number of prompts finished after each batch.
        """
        parsed = GenerationSettings(**settings)
        answers: list[str] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            requests = [self.request(self.prompt_ids(p), parsed) for p in chunk]
            answers += [completion.text.strip() for completion in self.run_batch(requests, parsed.sampling)]
            if progress is not None:
                progress(len(chunk))
        return answers

    def stream(self, prompt: str | Messages, stop_event: threading.Event | None = None, **settings) -> Iterator[str]:
        """Text pieces of the answer as they are generated.

        Setting `stop_event`, or leaving the loop (break, Ctrl-C), ends the generation early.
        """
        parsed = GenerationSettings(**settings)  # checked now, not at the first piece
        pieces: queue.Queue = queue.Queue()
        request = self.request(self.prompt_ids(prompt), parsed, on_text=pieces.put)
        if stop_event is not None:
            request.cancel = stop_event
        return self._stream(request, parsed.sampling, pieces)

    def _stream(self, request: GenerationRequest, sampling: Sampling, pieces: queue.Queue) -> Iterator[str]:
        finished = object()

        def work() -> None:
            try:
                self.run_batch([request], sampling)
            except Exception as exc:  # handed over to the consumer's thread and raised there
                pieces.put(exc)
            finally:
                pieces.put(finished)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        complete = False
        try:
            while (item := pieces.get()) is not finished:
                if isinstance(item, Exception):
                    raise item
                yield item
            complete = True
        finally:
            if not complete:  # the consumer left early (break, Ctrl-C, an error): stop generating
                request.cancel.set()
            worker.join()

    # ---------------------------------------------------------------- generation

    @torch.inference_mode()
    def run_batch(self, requests: list[GenerationRequest], sampling: Sampling) -> list[Completion]:
        """Generate every request in one left-padded batch; each row ends on its own (see RowMonitor)."""
        with self._lock:
            input_ids, attention_mask = self._left_pad([r.prompt_ids for r in requests])
            config = copy.deepcopy(self.model.generation_config)
            config.update(max_new_tokens=max(r.max_new_tokens for r in requests), **sampling.generate_kwargs())
            monitor = RowMonitor(self.tokenizer, requests, self.stop_ids)
            self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([monitor]),
            )
            return monitor.completions()

    def _left_pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = [[pad] * (longest - len(ids)) + ids for ids in batch]
        attention_mask = [[0] * (longest - len(ids)) + [1] * len(ids) for ids in batch]
        return (
            torch.tensor(input_ids, device=self.device),
            torch.tensor(attention_mask, device=self.device),
        )
