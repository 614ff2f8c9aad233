"""The training view: processed canonical records -> token ids and labels (batches: `qwentune.data.pack`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import track

from qwentune.data.tokenize import EncodedExample, encode_conversation


def read_canonical(path: str | Path, limit: int | None = None) -> list[dict]:
    """Records of a processed JSONL split (written by preprocessing, so every line is valid)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file not found: {path}. Run preprocessing first: "
            "python data/preprocess.py --input_dir ./data/raw --output_dir ./data/processed"
        )
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                records.append(json.loads(line))
                if limit is not None and len(records) >= limit:
                    break
    return records


@dataclass
class EncodedSplit:
    examples: list[EncodedExample]
    truncated: int
    # Dropped: nothing left to train after truncation (record ids, or line numbers when a record has none).
    without_targets: list[str]

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    @property
    def trained_tokens(self) -> int:
        return sum(e.num_trained_tokens for e in self.examples)


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """`messages` with `system_prompt` in front when they have no system message of their own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def encode_records(
    records: list[dict],
    tokenizer,
    *,
    max_length: int,
    train_on_prompt: bool = False,
    last_turn_only: bool = False,
    system_prompt: str | None = None,
    thinking: str = "auto",
    description: str = "Tokenizing",
) -> EncodedSplit:
    examples, truncated, without_targets = [], 0, []
    for number, record in enumerate(track(records, description=description, transient=True), start=1):
        example = encode_conversation(
            tokenizer,
            with_system_prompt(record["messages"], system_prompt),
            train_on_prompt=train_on_prompt,
            last_turn_only=last_turn_only,
            max_length=max_length,
            tools=record.get("tools"),
            thinking=thinking,
        )
        truncated += example.truncated
        if example.num_trained_tokens == 0:
            without_targets.append(str(record.get("id") or f"line {number}"))
            continue
        examples.append(example)
    return EncodedSplit(examples, truncated, without_targets)


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[EncodedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}
