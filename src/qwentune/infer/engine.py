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

Thinking and tools (Qwen3-style templates; see docs/tools_and_reasoning.md):

    bot.generate("23 * 17?", enable_thinking=True)      # the answer only; the think block is left out
    reply = bot.respond(messages, tools=[weather_tool])  # a Reply: content, reasoning_content, tool_calls
    for delta in bot.stream_reply(messages, enable_thinking=True): ...   # Delta pieces as they come

`enable_thinking` unset: the model's default (`QwenInference(enable_thinking=...)`, else as it was
trained). `tool_choice`: "auto" (the default), "none" (no tools offered), "required" (the reply
starts with a call) or a function name / {"type": "function", "function": {"name": ...}} (a call
to that function). The string methods keep a call's `<tool_call>` text in the answer; `respond`
and `stream_reply` parse calls into `ToolCall`s.
"""

from __future__ import annotations

import contextlib
import copy
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import StoppingCriteriaList

from qwentune.data.dataset import with_system_prompt
from qwentune.data.reasoning import THINK_OPEN
from qwentune.data.tokenize import render, template_kwargs
from qwentune.data.toolcalls import normalise_call, normalise_tools, tool_names
from qwentune.errors import RunFailed
from qwentune.infer.continuous import DecodingBatch
from qwentune.infer.decoding import Completion, GenerationRequest, RowMonitor
from qwentune.infer.reply import CALL_OPEN, Delta, Reply, ReplyParser, assemble
from qwentune.infer.settings import GenerationSettings, Sampling
from qwentune.paths import CHECKPOINTS_DIR

Messages = list[dict]


class PromptTooLongError(RunFailed, ValueError):
    """A prompt that leaves no room for an answer in the model's context (exit 1)."""


ToolChoice = str | dict


def as_messages(prompt: str | Messages, system_prompt: str | None = None) -> Messages:
    """A message list, led by `system_prompt` when it has no system message (as in training).

    Assistant tool calls may come in OpenAI's shape (arguments as JSON text) or ours; they become
    ours (qwentune.data.toolcalls), and an assistant turn with calls only gets empty content.
    Raises ToolCallError (a ValueError) for a call that is not valid.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    messages = [_template_message(m, i) for i, m in enumerate(messages)]
    return with_system_prompt(messages, system_prompt)


def _template_message(message: dict, index: int) -> dict:
    if message.get("role") != "assistant" or not (message.get("tool_calls") or message.get("content") is None):
        return message
    calls = [normalise_call(c, f"message {index}'s tool call {n}") for n, c in enumerate(message.get("tool_calls") or [])]
    shaped = {**message, "content": message.get("content") or ""}
    return {**shaped, "tool_calls": calls} if calls else {k: v for k, v in shaped.items() if k != "tool_calls"}


def forced_call(tool_choice: ToolChoice, names: list[str]) -> str | None:
    """The function a reply must call: a name, "" for any (required), None when the model chooses.

    Raises ValueError naming the allowed values when `tool_choice` is not one of them.
    """
    if tool_choice in ("auto", "none"):
        return None
    if not names:
        raise ValueError(f"tool_choice {tool_choice!r} needs tools; without tools it can only be 'auto' or 'none'")
    if tool_choice == "required":
        return ""
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else tool_choice
    if not isinstance(name, str) or name not in names:
        raise ValueError(
            f"tool_choice {tool_choice!r} is not 'auto', 'none', 'required' or a defined function "
            f"(defined: {', '.join(names)})"
        )
    return name


def call_head(name: str) -> str:
    """How a call to `name` ("": to any function) starts, in Qwen's format."""
    return f'{CALL_OPEN}\n{{"name": ' + (f"{json.dumps(name, ensure_ascii=False)}, \"arguments\": " if name else '"')


@dataclass(frozen=True)
class Prompt:
    """A prompt ready for generation, and what reading its reply needs."""

    ids: list[int]
    prefill: str = ""  # the start of the reply, written into the prompt (a forced call's head)
    thinking_open: bool = False  # the prompt ends inside a think block: the reply starts with reasoning
    tool_names: frozenset[str] | None = None  # functions the reply may call; None: calls are not parsed
    max_calls: int | None = None  # 1 when parallel calls are not wanted

    def parser(self, parse_calls: bool = True) -> ReplyParser:
        names = self.tool_names if parse_calls else None
        return ReplyParser(thinking_open=self.thinking_open, tool_names=names, max_calls=self.max_calls)

    def reply(self, completion: Completion, parse_calls: bool = True) -> Reply:
        parser = self.parser(parse_calls)
        text = self.prefill + completion.text
        return assemble(
            parser.feed(text) + parser.close(),
            text=text,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
        )


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
        enable_thinking: bool | None = None,
    ):
        """`system_prompt` replaces the one the model was trained with (used when a conversation has none);
        `enable_thinking` replaces the model's thinking default (calls may still say otherwise)."""
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
        self.enable_thinking = enable_thinking if enable_thinking is not None else bool(self.info.get("enable_thinking"))
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
    def has_thinking_switch(self) -> bool:
        """Whether the chat template has Qwen3's enable_thinking switch."""
        return bool(template_kwargs(self.tokenizer))

    @property
    def stop_ids(self) -> set[int]:
        """End-of-sequence ids saved with the model (they include the end-of-turn token)."""
        eos = self.model.generation_config.eos_token_id
        return set(eos) if isinstance(eos, list) else {eos}

    def prompt_ids(self, prompt: str | Messages, **options) -> list[int]:
        """Token ids of a prompt (a string or a message list) in the chat template, with the system prompt."""
        return self.prepare(prompt, **options).ids

    def prepare(
        self,
        prompt: str | Messages,
        *,
        tools: list[dict] | None = None,
        tool_choice: ToolChoice = "auto",
        enable_thinking: bool | None = None,
        parallel_tool_calls: bool = True,
    ) -> Prompt:
        """The prompt in the chat template with its tools and thinking switch (see the module docstring).

        `parallel_tool_calls=False`: only the reply's first call is read as a call (later ones stay text).

        Raises ValueError (ToolCallError for malformed tools or calls) naming what is wrong.
        """
        if enable_thinking not in (None, True, False):
            raise ValueError(f"enable_thinking must be True, False or None (the model's default); got {enable_thinking!r}")
        definitions = normalise_tools(tools)
        names = tool_names(definitions)
        forced = forced_call(tool_choice, names)
        thinking = self.enable_thinking if enable_thinking is None else enable_thinking
        if forced is not None:
            thinking = False  # the reply starts with the call at once
        offered = [] if tool_choice == "none" else definitions
        text = render(
            self.tokenizer,
            as_messages(prompt, self.system_prompt),
            add_generation_prompt=True,
            tools=offered,
            enable_thinking=thinking,
        )
        prefill = call_head(forced) if forced is not None else ""
        return Prompt(
            ids=self.tokenizer(text + prefill, add_special_tokens=False)["input_ids"],
            prefill=prefill,
            thinking_open=not prefill and text.rstrip().endswith(THINK_OPEN),
            tool_names=frozenset(names) if offered else None,
            max_calls=None if parallel_tool_calls else 1,
        )

    def request(self, prompt_ids: list[int], settings: GenerationSettings, **listeners) -> GenerationRequest:
        """A generation request whose token limit also keeps prompt and answer within the context."""
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context holds {self.context_length}"
            )
        return GenerationRequest(prompt_ids, min(settings.max_new_tokens, room), list(settings.stop), **listeners)

    # ---------------------------------------------------------------- the public API

    def generate(self, text: str | Messages, **options) -> str:
        """The answer to one prompt (a string or a message list), without the think block."""
        return self.batch_generate([text], batch_size=1, **options)[0]

    def chat(self, messages: Messages, **options) -> str:
        """The next assistant turn of a multi-turn conversation."""
        return self.generate(messages, **options)

    def batch_generate(
        self,
        prompts: list[str | Messages],
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
        **options,
    ) -> list[str]:
        """Answers in input order; each batch is left-padded and decoded in one call.

        `progress`, when given, is called with the number of prompts finished after each batch.
        """
        replies = self._replies(prompts, batch_size, progress, parse_calls=False, **options)
        return [reply.content.strip() for reply in replies]

    def respond(self, prompt: str | Messages, **options) -> Reply:
        """The reply to one prompt, split: content, reasoning_content, tool_calls, finish_reason, token counts."""
        return self.batch_respond([prompt], batch_size=1, **options)[0]

    def batch_respond(
        self,
        prompts: list[str | Messages],
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
        **options,
    ) -> list[Reply]:
        """Replies in input order, generated as `batch_generate` does."""
        return self._replies(prompts, batch_size, progress, parse_calls=True, **options)

    def _replies(self, prompts, batch_size, progress, *, parse_calls: bool, **options) -> list[Reply]:
        prompt_options, parsed = self._split_options(options)
        replies: list[Reply] = []
        for start in range(0, len(prompts), batch_size):
            chunk = [self.prepare(p, **prompt_options) for p in prompts[start : start + batch_size]]
            completions = self.run_batch([self.request(p.ids, parsed) for p in chunk], parsed.sampling)
            replies += [p.reply(c, parse_calls) for p, c in zip(chunk, completions)]
            if progress is not None:
                progress(len(chunk))
        return replies

    @staticmethod
    def _split_options(options: dict) -> tuple[dict, GenerationSettings]:
        """Prompt options (tools, tool_choice, enable_thinking) apart from generation settings (checked now)."""
        names = ("tools", "tool_choice", "enable_thinking", "parallel_tool_calls")
        prompt_options = {k: options.pop(k) for k in names if k in options}
        return prompt_options, GenerationSettings(**options)

    def stream(self, prompt: str | Messages, stop_event: threading.Event | None = None, **options) -> Iterator[str]:
        """Text pieces of the answer as they are generated (without the think block).

        Setting `stop_event`, or leaving the loop (break, Ctrl-C), ends the generation early.
        """
        deltas = self._stream_deltas(prompt, stop_event, parse_calls=False, **options)
        return (delta.text for delta in deltas if delta.kind == "content")

    def stream_reply(
        self, prompt: str | Messages, stop_event: threading.Event | None = None, **options
    ) -> Iterator[Delta]:
        """The reply's pieces as they are generated: reasoning and content text, and each tool call once complete."""
        return self._stream_deltas(prompt, stop_event, parse_calls=True, **options)

    def _stream_deltas(self, prompt, stop_event, *, parse_calls: bool, **options) -> Iterator[Delta]:
        prompt_options, parsed = self._split_options(options)  # checked now, not at the first piece
        prepared = self.prepare(prompt, **prompt_options)
        pieces: queue.Queue = queue.Queue()
        request = self.request(prepared.ids, parsed, on_text=pieces.put)
        if stop_event is not None:
            request.cancel = stop_event
        return self._parsed(prepared.parser(parse_calls), prepared.prefill, self._stream(request, parsed.sampling, pieces))

    @staticmethod
    def _parsed(parser: ReplyParser, prefill: str, pieces: Iterator[str]) -> Iterator[Delta]:
        with contextlib.closing(pieces):  # leaving early stops the generation at once
            yield from parser.feed(prefill)
            for piece in pieces:
                yield from parser.feed(piece)
        yield from parser.close()

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

    continuous_batching = True  # the server's worker uses decoding_batch (rows join and leave between steps)

    def decoding_batch(self) -> DecodingBatch:
        """An empty batch that requests join and leave between decoding steps (qwentune.infer.continuous)."""
        return DecodingBatch(self.model, self.tokenizer, self.stop_ids, self._lock)

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
