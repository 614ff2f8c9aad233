"""The training view: processed canonical records -> token ids and labels (batches: `qwentune.data.pack`)."""

from __future__ import annotations

import json
import math
import multiprocessing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from rich.progress import track

from qwentune.data.tokenize import EncodedExample, encode_conversation
from qwentune.errors import RunFailed, UsageError


def read_canonical(path: str | Path, limit: int | None = None) -> list[dict]:
    """Records of a processed JSONL split (written by preprocessing, so every line should be valid:
    a line that is not is an error naming the file and line, as is a missing file)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"data file not found: {path}",
            advice="run preprocessing first: python data/preprocess.py --input_dir ./data/raw --output_dir ./data/processed",
        )
    records = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                records.append(_canonical_line(path, number, line))
                if limit is not None and len(records) >= limit:
                    break
    return records


def _canonical_line(path: Path, number: int, line: bytes) -> dict:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text (byte {exc.start} of the line)"
    except json.JSONDecodeError as exc:
        problem = f"is not JSON ({exc.msg})"
    else:
        if isinstance(record, dict) and isinstance(record.get("messages"), list):
            return record
        problem = "is not a record with a 'messages' list"
    raise RunFailed(
        f"{path} line {number} {problem}",
        advice="processed files are written by preprocessing: run it again, or fix or remove that line",
    )


@dataclass
class EncodedSplit:
    examples: list[EncodedExample]
    truncated: int
    # Dropped: nothing left to train after truncation (record ids, or line numbers when a record has none).
    without_targets: list[str]
    # Processes that tokenized the split (data.preprocessing_num_workers, fewer for a small split).
    workers: int = 1

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


# At most one worker process per this many records: a small file is not split among processes that cost
# more to start than they save (not tuned on an idle machine; see docs/training.md).
MIN_RECORDS_PER_WORKER = 256
_worker_tokenizer = None


def encode_records(
    records: list[dict],
    tokenizer,
    *,
    max_length: int,
    train_on_prompt: bool = False,
    last_turn_only: bool = False,
    system_prompt: str | None = None,
    thinking: str = "auto",
    num_workers: int = 1,
    description: str = "Tokenizing",
) -> EncodedSplit:
    """Token ids and loss masks of `records`, tokenized by up to `num_workers` processes
    (`data.preprocessing_num_workers`; 1: this process). The result is the same whatever the number."""
    encoded, workers = encode_conversations(
        records,
        tokenizer,
        num_workers=num_workers,
        description=description,
        max_length=max_length,
        train_on_prompt=train_on_prompt,
        last_turn_only=last_turn_only,
        system_prompt=system_prompt,
        thinking=thinking,
    )
    kept, truncated, without_targets = trained_only(records, [(example,) for example in encoded])
    return EncodedSplit([example for _, (example,) in kept], truncated, without_targets, workers)


def trained_only(
    records: list[dict], groups: list[tuple[EncodedExample, ...]], unit: str = "line"
) -> tuple[list[tuple[dict, tuple[EncodedExample, ...]]], int, list[str]]:
    """(the (record, encoded group) whose every member has tokens to train, how many groups were truncated,
    the ids of the others): a pair is kept or dropped whole."""
    kept, truncated, without_targets = [], 0, []
    for number, (record, group) in enumerate(zip(records, groups, strict=True), start=1):
        truncated += any(example.truncated for example in group)
        if any(example.num_trained_tokens == 0 for example in group):
            without_targets.append(str(record.get("id") or f"{unit} {number}"))
            continue
        kept.append((record, group))
    return kept, truncated, without_targets


def encode_conversations(
    records: list[dict], tokenizer, *, num_workers: int = 1, description: str = "Tokenizing", **options
) -> tuple[list[EncodedExample], int]:
    """(one EncodedExample per record, in order, none dropped; the processes used): each record's
    `messages` (and `tools`) through encode_conversation with `options` and `system_prompt`."""
    workers = tokenizing_workers(len(records), num_workers)
    size = math.ceil(len(records) / (workers * 8)) if workers > 1 else len(records) or 1
    chunks = [records[start : start + size] for start in range(0, len(records), size)]
    if workers > 1:
        # fork where the platform has it: the workers inherit the loaded tokenizer instead of loading it again.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers, initializer=_set_worker_tokenizer, initargs=(tokenizer,)) as pool:
            pieces = pool.imap(partial(_encode_in_worker, **options), chunks)
            encoded = list(track(pieces, total=len(chunks), description=description, transient=True))
    else:
        encoded = [_encode_chunk(tokenizer, chunk, **options) for chunk in track(chunks, description=description, transient=True)]
    return [example for chunk in encoded for example in chunk], workers


def tokenizing_workers(records: int, num_workers: int) -> int:
    """Processes worth starting for `records` records, at most `num_workers`."""
    return max(1, min(num_workers, records // MIN_RECORDS_PER_WORKER))


def _set_worker_tokenizer(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(records: list[dict], **options) -> list[EncodedExample]:
    return _encode_chunk(_worker_tokenizer, records, **options)


def _encode_chunk(tokenizer, records: list[dict], *, system_prompt: str | None = None, **options) -> list[EncodedExample]:
    return [
        encode_conversation(tokenizer, with_system_prompt(record["messages"], system_prompt), tools=record.get("tools"), **options)
        for record in records
    ]


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[EncodedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}
