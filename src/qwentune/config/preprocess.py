"""Schema of the preprocess config (`--config FILE`); the command-line flags set the same keys.

input_dir: data/raw            # scanned recursively for .json/.jsonl/.parquet (+ .gz)
output_dir: data/processed
tokenizer: Qwen/Qwen2.5-7B-Instruct   # default: the embedded Qwen tokenizer
max_length: 2048               # tokens of the rendered conversation (chat template included)
min_length: 10
ratios: {train: 0.9, validation: 0.05, test: 0.05}
seed: 42
datasets:                      # per dataset (= folder under input_dir, or file stem)
  belle: {format: belle, weight: 0.5, max_records: 100000}
  my_chats: {path: /data/chats.jsonl, format: sharegpt}
cleaning: {placeholder_output: false}   # every rule is on by default
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from qwentune import paths
from qwentune.config.base import StrictModel


class SplitRatios(StrictModel):
    train: float = Field(0.9, ge=0, le=1)
    validation: float = Field(0.05, ge=0, le=1)
    test: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(
                f"split ratios must add up to 1 (train {self.train} + validation {self.validation} "
                f"+ test {self.test} = {total:g})"
            )
        return self

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


class DatasetOptions(StrictModel):
    # A file or folder for this dataset; default: what input_dir holds under the dataset's name.
    path: Path | None = None
    # alpaca | sharegpt | openai | oasst | belle | firefly | canonical; default: detected per file.
    format: str | None = None
    # Train mix: each train record is written `weight` times on average (0.5 keeps half, 2 doubles).
    weight: float = Field(1.0, gt=0)
    # Keep at most this many records of the dataset (chosen by the seeded hash, not file order).
    max_records: int | None = Field(None, ge=1)


class CleaningConfig(StrictModel):
    """One switch per rule; the name is also the reason counted in stats.json and rejects.jsonl."""

    strip_whitespace: bool = True  # trim each turn (a normalisation, never a reject)
    broken_encoding: bool = True  # U+FFFD or mis-decoded UTF-8 (mojibake)
    control_characters: bool = True  # control characters other than tab and newlines
    no_user_turn: bool = True
    not_ending_with_assistant: bool = True
    empty_input: bool = True  # an empty user turn
    empty_output: bool = True  # an empty assistant turn
    placeholder_output: bool = True  # "<nooutput> ...", "N/A"
    unfilled_template: bool = True  # "{{name}}" left in the text (see template_values)
    identical_pair: bool = True  # a preference pair whose chosen and rejected replies are the same
    too_short: bool = True  # fewer tokens than min_length
    too_long: bool = True  # more tokens than max_length
    duplicate: bool = True  # exact duplicates after whitespace normalisation

    def enabled_rules(self) -> list[str]:
        return [name for name, on in self.model_dump().items() if on]


class PreprocessConfig(StrictModel):
    input_dir: Path = paths.RAW_DATA_DIR
    output_dir: Path = paths.PROCESSED_DATA_DIR
    # Hub id, local folder or embedded asset name; None: the embedded Qwen tokenizer.
    tokenizer: str | None = None
    max_length: int = Field(2048, ge=1)
    min_length: int = Field(10, ge=0)
    # A raw record whose JSON text is longer than this many characters is rejected as too_long while
    # it is read, never parsed (a 500 MB line costs one chunk of memory); None: record_char_cap().
    max_record_chars: int | None = Field(None, ge=1)
    ratios: SplitRatios = SplitRatios()
    seed: int = 42
    # Tokenizer processes for the length filter beside the main one; 0 counts in the main process;
    # None: one per CPU (at most 8). The output is the same whatever the number.
    num_workers: int | None = Field(None, ge=0)
    # Records per batch sent to a tokenizer process.
    batch_size: int = Field(256, ge=1)
    # Read at most this many records of each dataset (for a quick trial run).
    max_samples: int | None = Field(None, ge=1)
    # Check everything and print the report, but write no file.
    validate_only: bool = False
    datasets: dict[str, DatasetOptions] = {}
    # Glob patterns (relative to input_dir) of files to leave out.
    exclude: list[str] = []
    cleaning: CleaningConfig = CleaningConfig()
    # Values for {{key}} placeholders, e.g. LLaMA-Factory's identity data: {name: ..., author: ...}.
    template_values: dict[str, str] = {}
    # OASST trees: one conversation per tree along the best-ranked replies (false), or every thread (true).
    oasst_all_paths: bool = False
    # Print one rendered training example with its label mask at the end.
    show_example: bool = True

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, datasets: dict) -> dict:
        for name in datasets:
            if not name or any(c in name for c in "\t\n\r/"):
                raise ValueError(f"dataset name {name!r} must be non-empty without tabs, newlines or '/'")
        return datasets

    def record_char_cap(self) -> int:
        """max_record_chars, else 1024 characters per token of max_length (at least 4 Mi): no real
        conversation of max_length tokens comes near that, JSON escapes and extra fields included."""
        if self.max_record_chars is not None:
            return self.max_record_chars
        return max(4 << 20, 1024 * self.max_length)

    def worker_count(self) -> int:
        return self.num_workers if self.num_workers is not None else min(8, os.cpu_count() or 1)

    @model_validator(mode="after")
    def _lengths_agree(self):
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) is greater than max_length ({self.max_length})")
        return self
