"""A huge record is rejected at a cost bounded by the length limit, not by its size."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from qwentune.config.preprocess import PreprocessConfig
from qwentune.data import clean
from qwentune.data.preprocess import run_preprocess
from qwentune.data.readers import DataFile, RawRecord, ReadFailure

BIG = 30 << 20  # characters of the huge record's text


def alpaca(instruction: str, output: str) -> str:
    return json.dumps({"instruction": instruction, "output": output}, ensure_ascii=False)


def read_with_peak(path: Path, cap: int) -> tuple[list, int]:
    tracemalloc.start()
    try:
        records = list(DataFile(path, max_record_chars=cap).records())
        return records, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_json_lines_reader_skips_a_huge_line_holding_one_chunk(tmp_path):
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        handle.write(alpaca("first question", "first answer") + "\n")
        handle.write('{"instruction": "huge", "output": "' + "x" * BIG + '"}\n')
        handle.write(alpaca("last question", "last answer") + "\n")
    records, peak = read_with_peak(path, cap=1 << 20)
    assert [type(r).__name__ for r in records] == ["RawRecord", "ReadFailure", "RawRecord"]
    failure = records[1]
    assert (failure.line, failure.reason, failure.fatal) == (2, "too_long", False)
    assert "max_record_chars (1,048,576" in failure.detail
    assert failure.text.startswith('{"instruction": "huge"') and len(failure.text) <= 1001
    assert records[2].line == 3 and records[2].data["output"] == "last answer"
    assert peak < 12 << 20, peak  # a few 1 Mi chunks, never the 30 Mi line


def test_a_huge_first_line_and_a_huge_array_element_are_skipped_too(tmp_path):
    # A first line too long to sniff reads as a stream of JSON values; an array element likewise.
    tricky = 'a "quoted" ] } [ { \\\\ \\" ' * (BIG // 24)
    huge = json.dumps({"instruction": "huge", "output": tricky})
    lines_file = tmp_path / "first.jsonl"
    lines_file.write_text(huge + "\n" + alpaca("q", "a") + "\n", encoding="utf-8")
    array_file = tmp_path / "array.json"
    array_file.write_text(
        "[\n" + alpaca("q1", "a1") + ",\n" + huge + ",\n" + alpaca("q2", "a2") + "\n]\n", encoding="utf-8"
    )
    for path, lines in ((lines_file, (1, 2)), (array_file, (3, 4))):
        records, peak = read_with_peak(path, cap=1 << 20)
        failures = [r for r in records if isinstance(r, ReadFailure)]
        kept = [r for r in records if isinstance(r, RawRecord)]
        assert [(f.line, f.reason, f.fatal) for f in failures] == [(lines[0], "too_long", False)], path.name
        assert kept[-1].line == lines[1] and kept[-1].data["instruction"] in ("q", "q2"), path.name
        assert peak < 12 << 20, (path.name, peak)


@pytest.fixture(scope="module")
def tokenizer():
    from qwentune.data.tokenize import DEFAULT_TOKENIZER, load_tokenizer

    try:
        return load_tokenizer(DEFAULT_TOKENIZER)
    except Exception as exc:
        pytest.skip(f"the embedded Qwen tokenizer is not available: {exc}")


def test_a_parquet_row_over_the_limit_is_too_long_as_in_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "huge", "output": "y" * 5000}, {"instruction": "q2", "output": "a2"}]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    records = list(DataFile(path, max_record_chars=1000).records())
    assert [type(r).__name__ for r in records] == ["RawRecord", "ReadFailure", "RawRecord"]
    assert (records[1].line, records[1].reason) == (2, "too_long") and "max_record_chars (1,000" in records[1].detail
    assert records[1].text.startswith('{"instruction": "huge"') and records[2].data == rows[2]
    assert [r.data for r in DataFile(path).records()] == rows  # no limit: every row


def test_count_tokens_bounds_a_long_text_without_tokenizing_it(tokenizer):
    cap = clean.char_cap(tokenizer, 64)
    assert clean.max_token_chars(tokenizer) >= 100  # Qwen has 128-space tokens: the bound must allow them
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    long = [{"role": "user", "content": "word " * cap}, {"role": "assistant", "content": "ok"}]
    exact, bounded = clean.count_tokens(tokenizer, [short, long], max_chars=cap)
    assert exact == clean.count_tokens(tokenizer, [short])[0] and not isinstance(exact, clean.AtLeast)
    assert isinstance(bounded, clean.AtLeast) and 64 < bounded <= clean.count_tokens(tokenizer, [long])[0]
    # Just under the cap the text is tokenized and counted exactly.
    edge = [{"role": "user", "content": " " * (cap - 100)}, {"role": "assistant", "content": "ok"}]
    [count] = clean.count_tokens(tokenizer, [edge], max_chars=cap)
    assert not isinstance(count, clean.AtLeast)


def test_preprocess_rejects_huge_records_as_too_long_and_adds_up(tmp_path, tokenizer):
    raw = tmp_path / "raw"
    raw.mkdir()
    normal = [alpaca(f"Question number {i}: what is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(8)]
    with (raw / "chats.jsonl").open("w", encoding="utf-8") as handle:
        handle.write("\n".join(normal[:4]) + "\n")
        handle.write(alpaca("huge", "y " * (BIG // 2)) + "\n")  # over max_record_chars: not parsed
        handle.write(alpaca("long", "word " * 200_000) + "\n")  # parsed, over the char cap: not tokenized
        handle.write("\n".join(normal[4:]) + "\n")
    out = tmp_path / "out"
    config = PreprocessConfig(
        input_dir=raw, output_dir=out, max_length=256, num_workers=0, show_example=False, min_length=1
    )
    report = run_preprocess(config)
    assert report.exit_code == 0, report.problems
    entry = report.stats["sources"]["chats"]
    assert (entry["read"], entry["in"], entry["kept"], entry["rejected"]) == (10, 10, 8, 2)
    assert entry["reasons"] == {"too_long": 2}
    rejects = {r["line"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert "max_record_chars (4,194,304" in rejects[5]["detail"] and len(rejects[5]["original"]) <= 1001
    assert "not tokenized" in rejects[6]["detail"] and rejects[6]["original"]["instruction"] == "long"
    assert report.stats["tokens"]["counted"] == 8
