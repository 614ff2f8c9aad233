"""Instruction formats: Alpaca (with system and history), BELLE (also dialogue inside
`instruction` as "Human:/Assistant:"), Firefly (kind/input/target)."""

from __future__ import annotations

import re
from typing import Any

from qwentune.data.formats.base import (
    Conversation,
    ConversionError,
    Converter,
    assistant_message,
    reasoning_field,
    register,
    sharegpt_messages,
    system_messages,
    text_field,
)
from qwentune.data.formats.chat import ShareGPTConverter


@register
class AlpacaConverter(Converter):
    """{"instruction", "input", "output", "system"?, "history"?: [[q, a], ...]}.

    The user turn is the instruction and the input joined by a newline (LLaMA-Factory's way).
    Reasoning: a separate field (`reasoning_content`, `reasoning`, `thinking` or `think`) or a
    `<think>…</think>` block that starts the output.
    Also reads Chinese-Vicuna's chat variant: "input" and "output" as parallel lists of turns.
    """

    name = "alpaca"

    @staticmethod
    def recognizes(data: dict) -> bool:
        if isinstance(data.get("input"), list) and isinstance(data.get("output"), list):
            return True
        return "output" in data and ("instruction" in data or "input" in data) and not is_dialogue(data)

    def conversations(self, data: dict) -> list[Conversation]:
        if isinstance(data.get("input"), list) and isinstance(data.get("output"), list):
            return [Conversation(self.parallel_turns(data["input"], data["output"]), id=data.get("id"))]
        prompt = "\n".join(
            part
            for part in (text_field(data, "instruction", required=False), text_field(data, "input", required=False))
            if part
        )
        messages = system_messages(data) + self.history(data.get("history"))
        reply = assistant_message(text_field(data, "output"), "'output'", reasoning_field(data))
        messages += [{"role": "user", "content": prompt}, reply]
        return [Conversation(messages, id=data.get("id"))]

    @staticmethod
    def history(history: Any) -> list[dict]:
        if not history:
            return []
        if not isinstance(history, list):
            raise ConversionError("wrong_type", "'history' must be a list of [question, answer] pairs")
        messages = []
        for index, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise ConversionError("wrong_type", f"history item {index} is not a [question, answer] pair of texts")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        return messages

    @staticmethod
    def parallel_turns(questions: list, answers: list) -> list[dict]:
        if len(questions) != len(answers):
            raise ConversionError("bad_dialogue", f"{len(questions)} inputs but {len(answers)} outputs")
        return AlpacaConverter.history(list(zip(questions, answers, strict=True)))


_DIALOGUE_TAG = re.compile(r"(?:^|\n)[ \t]*(Human|Assistant)[ \t]*[:：]")
_DIALOGUE_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_dialogue(data: dict) -> bool:
    """BELLE multi-turn: the whole dialogue is inside "instruction" as Human:/Assistant: lines."""
    instruction = data.get("instruction")
    return isinstance(instruction, str) and bool(_DIALOGUE_TAG.match(instruction.lstrip()))


@register
class BelleConverter(AlpacaConverter):
    """BELLE: the instruction format (as Alpaca), the multi-turn dialogue inside "instruction",
    and train_3.5M_CN's {"id", "conversations": [{"from": "human|assistant", "value"}]}."""

    name = "belle"

    @staticmethod
    def recognizes(data: dict) -> bool:
        return (
            (is_dialogue(data) and "output" in data)
            or ShareGPTConverter.recognizes(data)
            or (AlpacaConverter.recognizes(data))
        )

    def conversations(self, data: dict) -> list[Conversation]:
        if "conversations" in data:
            return [Conversation(sharegpt_messages(data["conversations"]), id=data.get("id"))]
        if is_dialogue(data):
            return [
                Conversation(
                    self.dialogue(text_field(data, "instruction"), text_field(data, "output")), id=data.get("id")
                )
            ]
        return super().conversations(data)

    @staticmethod
    def dialogue(text: str, output: str) -> list[dict]:
        parts = _DIALOGUE_TAG.split(text.lstrip())  # ["", "Human", text, "Assistant", text, ...]
        turns = [[_DIALOGUE_ROLES[tag], content] for tag, content in zip(parts[1::2], parts[2::2], strict=True)]
        if turns[-1][0] == "user":
            turns.append(["assistant", output])
        elif not turns[-1][1].strip():
            turns[-1][1] = output  # the dialogue ends with an open "Assistant:"; the output is its reply
        elif output.strip():
            raise ConversionError("bad_dialogue", "the dialogue already ends with a reply and there is an output too")
        return [{"role": role, "content": content.strip()} for role, content in turns]


@register
class FireflyConverter(Converter):
    """{"kind", "input", "target"}: one user turn and one reply; the task kind goes to meta."""

    name = "firefly"

    @staticmethod
    def recognizes(data: dict) -> bool:
        return "input" in data and "target" in data

    def conversations(self, data: dict) -> list[Conversation]:
        messages = [
            {"role": "user", "content": text_field(data, "input")},
            {"role": "assistant", "content": text_field(data, "target")},
        ]
        kind = data.get("kind")
        return [Conversation(messages, id=data.get("id"), meta={"kind": kind} if kind else {})]
