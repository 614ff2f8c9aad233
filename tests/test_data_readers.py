"""Streaming readers: every layout, compression, line numbers, bad lines, and bounded memory."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qwentune.data import readers
from qwentune.data.readers import DataFile, RawRecord, ReadFailure, UnreadableFile, find_data_files

FIXTURES = Path(__file__).parent / "fixtures" / "data"
TEXT_FIXTURES = sorted(p for p in FIXTURES.glob("*.json*"))


def read(path: Path) -> list:
    return list(DataFile(path).records())


def reference(path: Path) -> list:
    """What a whole-file parse gives, for comparison."""
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
        return value if isinstance(value, list) else [value]
    except ValueError:
        decoder, values, position = json.JSONDecoder(), [], 0
        while position < len(text):
            while position < len(text) and text[position].isspace():
                position += 1
            if position == len(text):
                break
            try:
                value, position = decoder.raw_decode(text, position)
                values.append(value)
            except ValueError:  # a broken line: skip it, as the JSON-lines reader does
                position = text.find("\n", position) + 1 or len(text)
        return values


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
@pytest.mark.parametrize("path", TEXT_FIXTURES, ids=lambda p: p.name)
def test_stream_matches_whole_file_parse_at_any_chunk_size(path, chunk, monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK_CHARS", chunk)
    records = [item.data for item in read(path) if isinstance(item, RawRecord)]
    assert records == reference(path)


def test_json_array_line_numbers():
    lines = [item.line for item in read(FIXTURES / "alpaca.json")]
    assert lines[:3] == [2, 7, 14]


def test_json_lines_bad_line_is_one_failure_and_reading_goes_on():
    items = read(FIXTURES / "openai.jsonl")
    assert [item.line for item in items] == [1, 2, 3, 4, 5, 6]
    failure = items[3]
    assert isinstance(failure, ReadFailure) and failure.reason == "invalid_json" and not failure.fatal
    assert failure.text.startswith('{"messages": [{"role": "user", "content": "unterminated')


def test_concatenated_objects_and_single_object():
    assert [item.line for item in read(FIXTURES / "firefly_concatenated.json")] == [1, 1]
    [item] = read(FIXTURES / "sharegpt_single_object.json")
    assert item.line == 1 and len(item.data["conversations"]) == 2


def test_gzip_and_parquet_give_the_same_records(tmp_path):
    source = FIXTURES / "openai.jsonl"
    gz = tmp_path / "openai.jsonl.gz"
    gz.write_bytes(gzip.compress(source.read_bytes()))
    assert read(gz) == read(source)

    rows = [item.data for item in read(FIXTURES / "firefly.jsonl")]
    table = pa.Table.from_pylist(rows)
    parquet = tmp_path / "firefly.parquet"
    pq.write_table(table, parquet, row_group_size=2)
    parquet_gz = tmp_path / "firefly.parquet.gz"
    parquet_gz.write_bytes(gzip.compress(parquet.read_bytes()))
    for path in (parquet, parquet_gz):
        items = read(path)
        assert [item.data for item in items] == rows
        assert [item.line for item in items] == [1, 2, 3]


def test_broken_files(tmp_path):
    items = read(FIXTURES / "broken" / "truncated.json")
    assert [type(item) for item in items] == [RawRecord, RawRecord, ReadFailure]
    assert items[-1].fatal and items[-1].line == 4
    with pytest.raises(UnreadableFile, match="not JSON"):
        read(FIXTURES / "broken" / "not_json.json")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(UnreadableFile, match="Parquet"):
        read(corrupt)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress((FIXTURES / "openai.jsonl").read_bytes())[:-20])
    with pytest.raises(UnreadableFile, match="read failed"):
        read(cut)


def test_invalid_utf8_becomes_replacement_characters(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"instruction": "caf\u00e9", "output": "ok"}\n'.encode("latin-1"))
    [item] = read(path)
    assert item.data["instruction"] == "caf\ufffd"  # counted by cleaning as broken_encoding


def test_find_data_files_skips_hidden_manifests_and_excluded(tmp_path):
    for name in (
        "a/train.json",
        "a/source.json",
        "a/.cache/x.json",
        "b.jsonl.gz",
        "c.parquet",
        "notes.txt",
        "skip/me.json",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("[]")
    found = [p.relative_to(tmp_path).as_posix() for p in find_data_files(tmp_path, ["skip/*"])]
    assert found == ["a/train.json", "b.jsonl.gz", "c.parquet"]


def test_large_array_streams_with_a_bounded_buffer(tmp_path, monkeypatch):
    """A JSON array much larger than the chunk is read with a buffer near one chunk."""
    monkeypatch.setattr(readers, "_CHUNK_CHARS", 4096)
    path = tmp_path / "big.json"
    record = {"instruction": "x" * 100, "input": "", "output": "y" * 200}
    path.write_text("[\n" + ",\n".join(json.dumps(record) for _ in range(3000)) + "\n]")
    largest = 0
    original_refill = readers._JsonValueStream.refill

    def watched(self):
        nonlocal largest
        largest = max(largest, len(self.buffer))
        return original_refill(self)

    monkeypatch.setattr(readers._JsonValueStream, "refill", watched)
    items = read(path)
    assert len(items) == 3000 and items[-1].line == 3001
    assert path.stat().st_size > 200 * 4096 and largest < 3 * 4096
