"""Preference formats: pairs of replies to one prompt (DPO, SimPO, ORPO) and labelled replies (KTO).

Each converts to the canonical preference record (data/record.py): the shared prompt as
`messages` (ending with a user turn), then `chosen` and `rejected` assistant replies, or one
`completion` with a boolean `label`. Where a source repeats the prompt on each side (HH-RLHF
transcripts, UltraFeedback message lists) the two copies must agree: a pair whose prompt differs
between its sides is rejected as `prompt_mismatch`, since it compares answers to different questions.

    pairwise            {"instruction", "input"?, "chosen", "rejected", "system"?, "history"?}
                        (Alpaca style) or {"prompt" | "question", "chosen", "rejected"} as text
                        (the Chinese pairwise sets, Intel/orca_dpo_pairs)
    sharegpt_pairwise   {"conversations": [...], "chosen": {"from": "gpt", "value"}, "rejected": {...}}
                        (LLaMA-Factory's pairwise layout, e.g. DPO-En-Zh-20k)
    messages_pairwise   {"prompt" | "messages", "chosen": [messages], "rejected": [messages]}
                        (UltraFeedback-binarized; also our own canonical preference records)
    hh_rlhf             {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}
                        (Anthropic HH-RLHF: split at the last assistant turn)
    kto                 {"messages": [..., assistant], "label": bool}, or {"prompt", "completion", "label"}
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from qwentune.data.formats.base import (
    ConversionError,
    Converter,
    register,
    sharegpt_messages,
    system_messages,
    text_field,
)
from qwentune.data.formats.chat import OPENAI_ROLES
from qwentune.data.formats.instruction import AlpacaConverter
from qwentune.data.readers import RawRecord
from qwentune.data.record import InvalidRecord, Origin, Record, Reject, make_preference_record

# Tried before the SFT formats in detection: each needs "chosen"/"rejected" (or "label"), which no SFT format has.
PREFERENCE_FORMATS = ("kto", "hh_rlhf", "sharegpt_pairwise", "messages_pairwise", "pairwise")


class PreferenceConverter(Converter):
    """A raw record -> one preference record; `example` returns make_preference_record's arguments."""

    def example(self, data: dict) -> dict:
        raise NotImplementedError

    def feed(self, raw: RawRecord) -> Iterator[Record | Reject]:
        data = raw.data
        if not isinstance(data, dict):
            yield self.reject(raw.line, data, "not_an_object", f"a {type(data).__name__}, not a JSON object")
            return
        try:
            fields = self.example(data)
            meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
            yield make_preference_record(
                source=self.source,
                id=data.get("id", data.get("prompt_id")),
                meta=meta,
                split=data.get("split"),
                lang=data.get("lang"),
                origin=Origin(self.file, raw.line, data),
                **fields,
            )
        except (ConversionError, InvalidRecord) as exc:
            yield self.reject(raw.line, data, exc.reason, exc.detail)


def _has_pair(data: dict) -> bool:
    return "chosen" in data and "rejected" in data


def split_last_reply(messages: list[dict], side: str) -> tuple[list[dict], dict]:
    """(the turns before the last assistant turn, that turn): a side given as a whole conversation."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ConversionError("bad_reply", f"the {side} conversation does not end with an assistant turn")
    return messages[:-1], messages[-1]


def same_prompt(chosen_prompt: list[dict], rejected_prompt: list[dict]) -> list[dict]:
    if chosen_prompt != rejected_prompt:
        turn = next(
            (i for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt, strict=False)) if a != b),
            min(len(chosen_prompt), len(rejected_prompt)),
        )
        raise ConversionError("prompt_mismatch", f"the chosen and rejected sides differ in prompt turn {turn}")
    return chosen_prompt


@register
class PairwiseConverter(PreferenceConverter):
    """Prompt and both replies as text; the prompt from instruction + input (Alpaca), prompt or question."""

    name = "pairwise"

    @staticmethod
    def recognizes(data: dict) -> bool:
        has_prompt = any(isinstance(data.get(key), str) for key in ("instruction", "input", "prompt", "question"))
        return _has_pair(data) and has_prompt and isinstance(data["chosen"], str)

    def example(self, data: dict) -> dict:
        if "instruction" in data or "input" in data:
            parts = (text_field(data, "instruction", required=False), text_field(data, "input", required=False))
            prompt = "\n".join(part for part in parts if part)
        else:
            prompt = text_field(data, "prompt" if "prompt" in data else "question")
        messages = system_messages(data) + AlpacaConverter.history(data.get("history"))
        messages.append({"role": "user", "content": prompt})
        return {"prompt": messages, "chosen": data["chosen"], "rejected": data["rejected"]}


@register
class ShareGPTPairwiseConverter(PreferenceConverter):
    """LLaMA-Factory's pairwise ShareGPT: the conversation up to the last user turn, then one turn per side."""

    name = "sharegpt_pairwise"

    @staticmethod
    def recognizes(data: dict) -> bool:
        return _has_pair(data) and isinstance(data.get("conversations"), list)

    def example(self, data: dict) -> dict:
        prompt = system_messages(data) + sharegpt_messages(data["conversations"])
        return {"prompt": prompt, "chosen": self.turn(data["chosen"], "chosen"), "rejected": self.turn(data["rejected"], "rejected")}

    @staticmethod
    def turn(value: Any, side: str) -> Any:
        if isinstance(value, dict):
            tag = value.get("from", value.get("role"))
            if tag not in ("gpt", "assistant"):
                raise ConversionError("unknown_role", f"the {side} turn is from {tag!r}, not gpt/assistant")
            return value.get("value", value.get("content"))
        return value


def _messages(value: Any, key: str) -> list[dict]:
    if not isinstance(value, list):
        raise ConversionError("wrong_type", f"'{key}' is not a list of messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise ConversionError("wrong_type", f"'{key}' message {index} is not an object")
        role = OPENAI_ROLES.get(message.get("role"), message.get("role"))
        messages.append({"role": role, "content": message.get("content")})
    return messages


@register
class MessagesPairwiseConverter(PreferenceConverter):
    """Each side a message list (the whole conversation, as UltraFeedback-binarized, or only the reply)
    or one message; the prompt from `messages`, `prompt` (text or messages), or the sides themselves."""

    name = "messages_pairwise"

    @staticmethod
    def recognizes(data: dict) -> bool:
        return _has_pair(data) and isinstance(data["chosen"], (list, dict)) and "conversations" not in data

    def example(self, data: dict) -> dict:
        given = None
        for key in ("messages", "prompt"):
            if key in data:
                value = data[key]
                given = [{"role": "user", "content": value}] if isinstance(value, str) else _messages(value, key)
                break
        sides = {}
        for side in ("chosen", "rejected"):
            value = data[side]
            messages = _messages(value, side) if isinstance(value, list) else [value]
            sides[side] = split_last_reply(messages, side)
        prompts = [sides[side][0] for side in ("chosen", "rejected")]
        if any(prompts):  # the sides repeat the prompt: both copies (and the given one) must agree
            prompt = same_prompt(*prompts)
            if given is not None:
                same_prompt(given, prompt)
        elif given is None:
            raise ConversionError("missing_field", "no 'prompt' or 'messages', and the sides hold only replies")
        else:
            prompt = given
        return {"prompt": prompt, "chosen": sides["chosen"][1], "rejected": sides["rejected"][1]}


_HH_TAG = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_transcript(text: Any, side: str) -> list[dict]:
    if not isinstance(text, str):
        raise ConversionError("wrong_type", f"'{side}' is a {type(text).__name__}, not a transcript")
    parts = _HH_TAG.split("\n\n" + text.lstrip("\n"))  # ["", "Human", text, "Assistant", text, ...]
    if len(parts) < 3 or parts[0].strip():
        raise ConversionError("bad_dialogue", f"the {side} transcript does not start with 'Human:'")
    return [{"role": _HH_ROLES[tag], "content": content.strip()} for tag, content in zip(parts[1::2], parts[2::2], strict=True)]


@register
class HHRLHFConverter(PreferenceConverter):
    """Anthropic HH-RLHF: two transcripts sharing every turn but the last assistant one."""

    name = "hh_rlhf"

    @staticmethod
    def recognizes(data: dict) -> bool:
        chosen = data.get("chosen")
        return _has_pair(data) and isinstance(chosen, str) and chosen.lstrip("\n").startswith("Human:")

    def example(self, data: dict) -> dict:
        chosen_prompt, chosen = split_last_reply(hh_transcript(data["chosen"], "chosen"), "chosen")
        rejected_prompt, rejected = split_last_reply(hh_transcript(data["rejected"], "rejected"), "rejected")
        return {"prompt": same_prompt(chosen_prompt, rejected_prompt), "chosen": chosen, "rejected": rejected}


@register
class KTOConverter(PreferenceConverter):
    """One reply with a desirable (true) / undesirable (false) label."""

    name = "kto"

    @staticmethod
    def recognizes(data: dict) -> bool:
        return "label" in data and ("messages" in data or "completion" in data)

    def example(self, data: dict) -> dict:
        if "completion" in data:
            completion = data["completion"]
            if isinstance(completion, list):
                completion = split_last_reply(_messages(completion, "completion"), "completion")[1]
            source = data.get("messages", data.get("prompt"))
            prompt = [{"role": "user", "content": source}] if isinstance(source, str) else _messages(source, "prompt")
        else:
            prompt, completion = split_last_reply(_messages(data["messages"], "messages"), "completion")
        return {"prompt": prompt, "completion": completion, "label": data["label"]}
