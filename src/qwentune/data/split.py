"""Seeded, stable splits and dataset mixing.

Every record gets three numbers from a hash of (seed, source, id): an order key, a split
point and a sample point. The split point picks train / validation / test by the ratios
(a split pinned in meta["split"] wins); the order key fixes where the record is written.
Nothing depends on the order records arrive in, so the same records, seed and ratios give
byte-identical files however the input is ordered.

To write splits in key order without holding them in memory, records are spooled to
bucket files by the top bits of their key; at the end each bucket is sorted on its own
and appended (the buckets are key ranges, so the files come out globally sorted). The
decisions that need every record are taken then, in key order:
  - duplicates: of each set of exact duplicates the record with the lowest key is kept
    (a pinned one first);
  - caps (`max_records` per dataset): the lowest keys of the dataset are kept;
  - weights: a train record of a dataset with weight w is written floor(w) times, plus
    once more with probability frac(w) (so 0.5 keeps about half, 2 doubles). Validation and
    test are not reweighted: they measure the model, not the mix.
Pinned records are exempt from caps and weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qwentune.data.clean import Deduplicator, content_key
from qwentune.data.record import SPLITS, Record, Reject

CHINESE_TEST = "chinese_test"
_BUCKET_BITS = 8
_BUCKET_SHIFT = 64 - _BUCKET_BITS  # a key's bucket: its top _BUCKET_BITS bits
_UNIT = float(1 << 64)


@dataclass(frozen=True)
class SplitKeys:
    order: int  # 64-bit: the write order, and the winner among duplicates / under a cap
    split_point: float  # [0, 1): which split
    sample_point: float  # [0, 1): the fractional part of a weight


def split_keys(seed: int, source: str, record_id: str) -> SplitKeys:
    digest = hashlib.blake2b(f"{seed}\x00{source}\x00{record_id}".encode(), digest_size=24).digest()
    order, split, sample = (int.from_bytes(digest[i : i + 8], "big") for i in (0, 8, 16))
    return SplitKeys(order, split / _UNIT, sample / _UNIT)


def assign_split(point: float, ratios: dict[str, float]) -> str:
    """The split whose share of [0, 1) holds `point`; ratios are in SPLITS order and sum to 1."""
    edge = 0.0
    for name in SPLITS:
        edge += ratios[name]
        if point < edge:
            return name
    # Rounding can leave the last edge a hair below 1: the point belongs to the last non-empty split.
    return next(name for name in reversed(SPLITS) if ratios[name] > 0)


@dataclass(frozen=True)
class Mixing:
    weight: float = 1.0
    max_records: int | None = None

    def train_copies(self, sample_point: float) -> int:
        whole = math.floor(self.weight)
        return whole + (sample_point < self.weight - whole)


@dataclass
class SourceCounts:
    kept: Counter = field(default_factory=Counter)  # split -> distinct records
    extra_train_copies: int = 0  # rows written beyond one per record (weight > 1)
    langs: Counter = field(default_factory=Counter)


class SplitWriter:
    """Spools records (add), then decides and writes the splits (finish)."""

    def __init__(
        self, work_dir: Path, *, seed: int, ratios: dict[str, float], mixing: dict[str, Mixing], deduplicate: bool
    ):
        self.work_dir = Path(work_dir)
        self.seed = seed
        self.ratios = ratios
        self.mixing = mixing
        self.dedup = Deduplicator() if deduplicate else None
        self.buckets: dict[int, object] = {}

    def _bucket(self, index: int):
        handle = self.buckets.get(index)
        if handle is None:
            handle = (self.work_dir / f"bucket-{index:03d}.tsv").open("w", encoding="utf-8")
            self.buckets[index] = handle
        return handle

    def add(self, record: Record) -> None:
        keys = split_keys(self.seed, record.source, record.id)
        content = content_key(record)
        pinned = record.pinned_split
        if self.dedup is not None:
            # A pinned record wins among duplicates: a held-out question must not lose to a copy
            # that would then land in train.
            self.dedup.offer(content, keys.order, pinned=bool(pinned))
        split = pinned or assign_split(keys.split_point, self.ratios)
        if pinned or split != "train":
            copies = 1
        else:
            copies = self.mixing.get(record.source, Mixing()).train_copies(keys.sample_point)
        origin = record.origin
        # default=str: a Parquet row may hold values JSON has no type for (timestamps, bytes).
        provenance = json.dumps(
            [origin.file, origin.line, origin.raw] if origin else ["", None, None], ensure_ascii=False, default=str
        )
        # Fixed-width hex keys first: sorting the lines sorts by key; the full line breaks ties.
        fields = (
            f"{keys.order:016x}",
            f"{content:016x}",
            split,
            "p" if pinned else "-",
            str(copies),
            record.lang,
            record.source,
            record.to_json(),
            provenance,
        )
        self._bucket(keys.order >> _BUCKET_SHIFT).write("\t".join(fields) + "\n")

    def finish(self, write: Callable[[str, str], None], reject: Callable[[Reject], None]) -> dict[str, SourceCounts]:
        """Write kept records with write(split_name, json_line) in key order; report the others."""
        for handle in self.buckets.values():
            handle.close()
        counts: dict[str, SourceCounts] = defaultdict(SourceCounts)
        taken: Counter = Counter()  # per source, records counted against its cap
        if self.dedup is not None:
            self.dedup.decide()
        for index in sorted(self.buckets):
            path = self.work_dir / f"bucket-{index:03d}.tsv"
            with path.open(encoding="utf-8") as handle:
                lines = sorted(handle)
            path.unlink()
            # (order, content) of the records to keep in this bucket's key range, and of those already written.
            winners = self.dedup.winners_between(index << _BUCKET_SHIFT, (index + 1) << _BUCKET_SHIFT) if self.dedup else None
            written_here: set[tuple[int, int]] = set()
            for line in lines:
                order_hex, content_hex, split, pinned, copies, lang, source, record_json, provenance = line.rstrip(
                    "\n"
                ).split("\t")
                verdict = self._verdict(
                    (int(order_hex, 16), int(content_hex, 16)),
                    pinned == "p",
                    int(copies),
                    source,
                    taken,
                    winners,
                    written_here,
                )
                if verdict is not None:
                    file, line_number, raw = json.loads(provenance)
                    reject(Reject(source, file, line_number, *verdict, raw))
                    continue
                source_counts = counts[source]
                source_counts.kept[split] += 1
                source_counts.langs[lang] += 1
                source_counts.extra_train_copies += int(copies) - 1
                for _ in range(int(copies)):
                    write(split, record_json)
                if split == "test" and lang == "zh":
                    write(CHINESE_TEST, record_json)
        self.buckets.clear()
        return counts

    def _verdict(
        self,
        pair: tuple[int, int],
        pinned: bool,
        copies: int,
        source: str,
        taken: Counter,
        winners: set | None,
        written_here: set,
    ) -> tuple[str, str] | None:
        """(reason, detail) when the record is not written, else None (and the record is counted).

        `pair` is the record's (order key, content key); the same pair twice is the same record read twice.
        """
        if winners is not None:
            if pair not in winners or pair in written_here:
                return "duplicate", "the same conversation (whitespace aside) is kept from another record"
            written_here.add(pair)
        if pinned:
            return None
        mixing = self.mixing.get(source, Mixing())
        if mixing.max_records is not None:
            if taken[source] >= mixing.max_records:
                return "over_cap", f"dataset '{source}' is capped at {mixing.max_records} records"
            taken[source] += 1
        if copies == 0:
            return "sampled_out", f"dataset '{source}' has weight {mixing.weight}; this train record was not drawn"
        return None
