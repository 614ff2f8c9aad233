"""Seeded, order-independent splits; ratio validation; caps, weights and pinned splits."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from qwentune.config.base import ConfigError, validate
from qwentune.config.preprocess import PreprocessConfig, SplitRatios
from qwentune.data.record import Origin, make_record
from qwentune.data.split import Mixing, SplitWriter, assign_split, split_keys

RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def records(count: int, source: str = "s", start: int = 0, **extra):
    return [
        make_record(
            [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}],
            source=source,
            origin=Origin("f.jsonl", i + 1, {"n": i}),
            **extra,
        )
        for i in range(start, start + count)
    ]


def run(items, tmp_path, *, seed=42, ratios=RATIOS, mixing=None, deduplicate=True):
    spool = tmp_path / f"spool-{random.random()}"
    spool.mkdir()
    writer = SplitWriter(spool, seed=seed, ratios=ratios, mixing=mixing or {}, deduplicate=deduplicate)
    for item in items:
        writer.add(item)
    files, rejects = {}, []
    counts = writer.finish(lambda split, line: files.setdefault(split, []).append(line), rejects.append)
    return files, rejects, counts


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ({"train": 0.9, "validation": 0.2, "test": 0.05}, "must add up to 1"),
        ({"train": 1.2, "validation": -0.1, "test": -0.1}, "less than or equal to 1"),
        ({"train": 0.5, "validation": 0.5, "test": 0.1}, "= 1.1"),
    ],
)
def test_ratio_validation(ratios, message):
    with pytest.raises(ConfigError, match="ratios") as error:
        validate(PreprocessConfig, {"ratios": ratios})
    assert message in str(error.value)


def test_valid_ratios_and_lengths():
    assert SplitRatios(train=1.0, validation=0.0, test=0.0).as_dict()["train"] == 1.0
    with pytest.raises(ConfigError, match="min_length"):
        validate(PreprocessConfig, {"min_length": 100, "max_length": 10})


def test_assign_split_follows_the_ratios():
    points = [split_keys(7, "s", str(i)).split_point for i in range(20000)]
    shares = Counter(assign_split(point, RATIOS) for point in points)
    assert abs(shares["train"] / 20000 - 0.8) < 0.02 and abs(shares["test"] / 20000 - 0.1) < 0.01
    assert assign_split(0.9999999999, {"train": 0.9, "validation": 0.1, "test": 0.0}) == "validation"


def test_keys_depend_on_seed_source_and_id_only():
    assert split_keys(1, "a", "x") == split_keys(1, "a", "x")
    assert split_keys(1, "a", "x") != split_keys(2, "a", "x") != split_keys(1, "b", "x")


def test_byte_identical_across_runs_and_input_order(tmp_path):
    items = records(300)
    first, _, _ = run(items, tmp_path)
    again, _, _ = run(records(300), tmp_path)
    shuffled_items = records(300)
    random.Random(3).shuffle(shuffled_items)
    shuffled, _, _ = run(shuffled_items, tmp_path)
    assert first == again == shuffled
    assert sum(len(lines) for lines in first.values()) == 300
    other_seed, _, _ = run(records(300), tmp_path, seed=43)
    assert other_seed["train"] != first["train"]


def test_duplicate_winner_is_independent_of_order(tmp_path):
    def with_dupes():
        items = records(20)
        # Same conversation, other ids (as two sources' copies would have): one must go.
        copy = make_record(
            [{"role": "user", "content": "question 3 "}, {"role": "assistant", "content": "answer  3"}],
            source="s",
            id="explicit",
            origin=Origin("g.jsonl", 9, {}),
        )
        return items + [copy]

    forward, rejects, _ = run(with_dupes(), tmp_path)
    backward, rejects_back, _ = run(list(reversed(with_dupes())), tmp_path)
    assert forward == backward
    assert [r.reason for r in rejects] == ["duplicate"] and rejects[0].line == rejects_back[0].line


def test_a_pinned_duplicate_wins(tmp_path):
    for pinned_first in (True, False):
        unpinned = make_record(
            [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A bot."}],
            source="a",
            origin=Origin("a.json", 1, {}),
        )
        pinned = make_record(
            [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A bot."}],
            source="b",
            split="test",
            origin=Origin("b.json", 1, {}),
        )
        files, rejects, _ = run([pinned, unpinned] if pinned_first else [unpinned, pinned], tmp_path)
        assert list(files) == ["test"] and [r.file for r in rejects] == ["a.json"]


def test_pinned_split_is_honoured_and_exempt_from_caps(tmp_path):
    pinned = records(5, start=100, split="test")
    files, rejects, counts = run(records(50) + pinned, tmp_path, mixing={"s": Mixing(max_records=10)})
    written = [line for lines in files.values() for line in lines]
    assert all(any(f'question {i}"' in line for line in files["test"]) for i in range(100, 105))
    assert len(written) == 10 + 5
    assert Counter(r.reason for r in rejects) == {"over_cap": 40}
    assert sum(counts["s"].kept.values()) == 15


def test_cap_keeps_the_same_records_whatever_the_order(tmp_path):
    items = records(100)
    capped, _, _ = run(items, tmp_path, mixing={"s": Mixing(max_records=30)})
    capped_shuffled, _, _ = run(list(reversed(records(100))), tmp_path, mixing={"s": Mixing(max_records=30)})
    assert capped == capped_shuffled
    assert sum(len(v) for v in capped.values()) == 30


def test_weights_scale_the_train_split_only(tmp_path):
    items = records(400, source="small") + records(400, source="big", start=1000)
    files, rejects, counts = run(items, tmp_path, mixing={"small": Mixing(weight=2.0), "big": Mixing(weight=0.5)})
    small, big = counts["small"], counts["big"]
    assert small.extra_train_copies == small.kept["train"]  # each written twice
    assert 0.35 < big.kept["train"] / 360 < 0.65  # about half of big's ~360 train records drawn
    assert {r.reason for r in rejects} == {"sampled_out"}
    assert big.kept["validation"] + big.kept["test"] > 0.15 * 400  # held-out splits untouched
    train_lines = files["train"]
    assert len(train_lines) == 2 * small.kept["train"] + big.kept["train"]
    assert Mixing(weight=2.5).train_copies(0.2) == 3 and Mixing(weight=2.5).train_copies(0.7) == 2


def test_chinese_test_holds_the_chinese_test_records(tmp_path):
    zh = [
        make_record(
            [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"回答{i}"}],
            source="s",
            split="test",
        )
        for i in range(5)
    ]
    files, _, _ = run(records(5, split="test") + zh, tmp_path)
    assert len(files["test"]) == 10
    assert files["chinese_test"] == [line for line in files["test"] if '"lang": "zh"' in line]
    assert len(files["chinese_test"]) == 5
