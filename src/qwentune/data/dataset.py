"""The training view: processed canonical records -> token ids and labels, and batches of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import track

from qwentune.data.tokenize import IGNORE_INDEX, EncodedExample, encode_conversation


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
    without_targets: int  # dropped: nothing left to train after truncation


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
    description: str = "Tokenizing",
) -> EncodedSplit:
    examples, truncated, without_targets = [], 0, 0
    for record in track(records, description=description, transient=True):
        example = encode_conversation(
            tokenizer,
            with_system_prompt(record["messages"], system_prompt),
            train_on_prompt=train_on_prompt,
            last_turn_only=last_turn_only,
            max_length=max_length,
        )
        truncated += example.truncated
        if example.num_trained_tokens == 0:
            without_targets += 1
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


@dataclass
class PaddingCollator:
    """Right-pads a batch to its longest example; padding is masked out of attention and loss."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        input_ids, labels, attention_mask = [], [], []
        for feature in features:
            padding = longest - len(feature["input_ids"])
            input_ids.append(feature["input_ids"] + [self.pad_token_id] * padding)
            labels.append(feature["labels"] + [IGNORE_INDEX] * padding)
            attention_mask.append([1] * len(feature["input_ids"]) + [0] * padding)
        return {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(attention_mask),
        }
