"""Stream raw records out of data files without loading a whole file into memory.

Supported: JSON (an array, one object, or objects written one after another), JSON lines,
Parquet, and each of those gzip-compressed (`.gz`). The layout of a text file is sniffed from
its content, not trusted from its name: a `.json` file that is really JSON lines reads fine.

Each record comes out as a RawRecord (1-based line of the text file where the record starts,
or 1-based row of a Parquet file) or as a ReadFailure (a line that is not JSON). A failure that
stops the rest of the file from being read is marked `fatal`; a file that cannot be opened at
all raises UnreadableFile.

A record longer than `max_record_chars` characters (of JSON text) is not parsed: it becomes a
`too_long` ReadFailure holding its first characters, and the reader skips to its end holding
at most about that many characters in memory, whatever the size of the record.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import io
import json
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
# Written by the download stage beside the data it fetched (which commit, which format): not data.
MANIFEST_NAME = "source.json"

_CHUNK_CHARS = 1 << 20
# A JSON error this far before the end of the buffer cannot be explained by the buffer ending
# mid-value (those errors sit at the very end, at most a truncated literal like "fals" away).
_TRUNCATION_MARGIN = 16
_SNIFF_LINES = 6
_SNIFF_CHARS = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
# Of a record over max_record_chars, this much is kept (in rejects.jsonl) to show which one it was.
_KEPT_CHARS = 1000
# What skipping an oversized JSON value reads past: anything but brackets and quotes outside a
# string; anything but a quote (escapes included) inside one.
_OUTSIDE_STRING = re.compile(r'[^"{}\[\]]*+')
_STRING_BODY = re.compile(r'(?:[^"\\]++|\\.)*+', re.DOTALL)
_PARQUET_MAGIC = b"PAR1"


class UnreadableFile(Exception):
    """A whole file cannot be read; the message says why."""


@dataclass(slots=True)
class RawRecord:
    line: int
    data: Any


@dataclass(slots=True)
class ReadFailure:
    line: int
    reason: str
    detail: str
    text: str
    fatal: bool = False  # nothing after this point of the file could be read


def is_data_file(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(DATA_SUFFIXES)


def find_data_files(root: Path, exclude: list[str] = ()) -> list[Path]:
    """Data files under `root` (or `root` itself), sorted, skipping hidden paths and manifests.

    `exclude` holds glob patterns matched against the path relative to `root`.
    """
    if root.is_file():
        return [root] if is_data_file(root) else []
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith((".", "_")) for part in relative.parts):
            continue
        if not path.is_file() or not is_data_file(path) or path.name == MANIFEST_NAME:
            continue
        if any(fnmatch.fnmatch(relative.as_posix(), pattern) for pattern in exclude):
            continue
        found.append(path)
    return sorted(found)


class DataFile:
    """One data file; iterate `records()` once. `bytes_read` follows progress on disk.

    `max_record_chars`: a JSON record longer than this is skipped unparsed (see the module doc).
    """

    def __init__(self, path: Path, max_record_chars: int | None = None):
        self.path = Path(path)
        self.max_record_chars = max_record_chars
        self.size = self.path.stat().st_size
        self._disk = None

    @property
    def bytes_read(self) -> int:
        try:
            return self._disk.tell() if self._disk and not self._disk.closed else self.size
        except (OSError, ValueError):
            return 0

    def records(self) -> Iterator[RawRecord | ReadFailure]:
        try:
            self._disk = self.path.open("rb")
        except OSError as exc:
            raise UnreadableFile(f"cannot open: {exc}") from exc
        with self._disk:
            compressed = self._disk.read(2) == _GZIP_MAGIC
            self._disk.seek(0)
            binary = gzip.GzipFile(fileobj=self._disk, mode="rb") if compressed else self._disk
            try:
                if binary.read(4) == _PARQUET_MAGIC:
                    yield from _parquet_records(binary, compressed, self._disk, self.max_record_chars)
                    return
                binary.seek(0)
                # errors="replace": undecodable bytes become U+FFFD, which cleaning counts per record
                # (broken_encoding) instead of one bad byte failing the whole file.
                text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")
                yield from _text_records(text, self.max_record_chars)
            except (OSError, EOFError, zlib.error) as exc:
                raise UnreadableFile(f"read failed: {exc}") from exc


def _parquet_records(binary, compressed: bool, disk, cap: int | None = None) -> Iterator[RawRecord | ReadFailure]:
    """Each row as a record; a row whose JSON text is over `cap` characters is a too_long failure, as in
    a JSON file (Arrow has read it into memory by then: the cap keeps the rules the same, not the memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryFile() if compressed else contextlib.nullcontext(disk) as source:
        if compressed:
            # Parquet needs random access; a gzip stream has none, so it is unpacked to disk first.
            binary.seek(0)
            shutil.copyfileobj(binary, source)
        source.seek(0)
        try:
            parquet = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            raise UnreadableFile(f"not a readable Parquet file: {exc}") from exc
        row = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for data in batch.to_pylist():
                row += 1
                if cap is not None and len(text := json.dumps(data, ensure_ascii=False, default=str)) > cap:
                    yield _too_long(row, text[:_KEPT_CHARS], cap)
                    continue
                yield RawRecord(line=row, data=data)


def _text_records(text: io.TextIOWrapper, cap: int | None = None) -> Iterator[RawRecord | ReadFailure]:
    head = text.read(_CHUNK_CHARS)
    # Enough of the first lines to tell JSON lines from one JSON value (bounded: minified JSON has no lines).
    while head.count("\n") < _SNIFF_LINES and len(head) < _SNIFF_CHARS and (more := text.read(_CHUNK_CHARS)):
        head += more
    stripped = head.lstrip()
    if not stripped:
        return
    if stripped[0] not in "[{":
        raise UnreadableFile(f"not JSON: the file starts with {stripped[:20]!r}")
    if stripped[0] == "{" and _looks_like_json_lines(stripped):
        yield from _json_lines(head, text, cap)
    else:
        yield from _JsonValueStream(head, text, cap)


def _looks_like_json_lines(head: str) -> bool:
    """True when one of the first lines is a whole object written from the start of the line.

    Pretty-printed JSON opens its objects with a lone "{"; its inner lines are indented. A
    broken first line alone does not turn a JSON-lines file into one unreadable value.
    """
    lines = [line for line in head.split("\n", _SNIFF_LINES)[:_SNIFF_LINES] if line.strip()]
    for line in lines[: _SNIFF_LINES - 1]:
        if line.startswith("{"):
            try:
                if isinstance(json.loads(line), dict):
                    return True
            except ValueError:
                continue
    return False


def _json_lines(head: str, rest: io.TextIOWrapper, cap: int | None = None) -> Iterator[RawRecord | ReadFailure]:
    """JSON lines: one value a line; a broken line is one failure and reading goes on.

    A line over `cap` characters is a `too_long` failure: only its first characters are kept,
    the rest is read past chunk by chunk without being held.
    """
    pending = ""
    oversized = None  # the first characters of a line over the cap whose end is still ahead
    number = 0
    chunk = head
    while chunk:
        if oversized is not None:
            end = chunk.find("\n")
            if end < 0:
                chunk = rest.read(_CHUNK_CHARS)
                continue
            number += 1
            yield _too_long(number, oversized, cap)
            oversized, chunk = None, chunk[end + 1 :]
        lines = (pending + chunk).split("\n")
        pending = lines.pop()
        for line in lines:
            number += 1
            if cap is not None and len(line) > cap:
                yield _too_long(number, line[:_KEPT_CHARS], cap)
            else:
                yield from _json_line(number, line)
        if cap is not None and len(pending) > cap:
            oversized, pending = pending[:_KEPT_CHARS], ""
        chunk = rest.read(_CHUNK_CHARS)
    if oversized is not None:
        yield _too_long(number + 1, oversized, cap)
    elif pending:
        yield from _json_line(number + 1, pending)


def _too_long(line: int, start: str, cap: int) -> ReadFailure:
    return ReadFailure(
        line=line,
        reason="too_long",
        detail=f"the record is over max_record_chars ({cap:,} characters of JSON); it was not parsed",
        text=start + "…",
    )


def _json_line(number: int, line: str) -> Iterator[RawRecord | ReadFailure]:
    if not line.strip():
        return
    try:
        yield RawRecord(line=number, data=json.loads(line))
    except ValueError as exc:
        yield ReadFailure(line=number, reason="invalid_json", detail=str(exc), text=line)


class _JsonValueStream:
    """Elements of a top-level array, or top-level values written one after another.

    The buffer holds about one chunk plus the value being decoded. A value is only taken when
    text follows it, so a value cut off at the end of the buffer (a number split in two) is
    never mistaken for a whole one. Line numbers are counted incrementally from `mark`.
    A value that grows past `cap` characters is skipped by `skip_value` without being decoded.
    """

    def __init__(self, head: str, rest: io.TextIOWrapper, cap: int | None = None):
        self.rest = rest
        self.cap = cap
        self.buffer = head
        self.position = 0
        self.mark, self.mark_line = 0, 1  # buffer[mark] is on line mark_line
        self.at_end = False

    def line_at(self, index: int) -> int:
        self.mark_line += self.buffer.count("\n", self.mark, index)
        self.mark = index
        return self.mark_line

    def refill(self) -> bool:
        """Append the next chunk, dropping the text already consumed; False at the end of the file."""
        if self.at_end:
            return False
        chunk = self.rest.read(_CHUNK_CHARS)
        if not chunk:
            self.at_end = True
            return False
        self.line_at(self.position)
        self.buffer = self.buffer[self.position :] + chunk
        self.position = self.mark = 0
        return True

    def skip_blank(self) -> bool:
        """Move to the next non-blank character; False when the file ends first."""
        while True:
            while self.position < len(self.buffer) and self.buffer[self.position] in " \t\r\n":
                self.position += 1
            if self.position < len(self.buffer):
                return True
            if not self.refill():
                return False

    def skip_value(self) -> ReadFailure | None:
        """Read past the object, array or string at `position` (brackets and quotes counted, escapes
        honoured) holding one chunk at a time; the too_long failure, or None when it is none of those."""
        start = self.buffer[self.position]
        if start not in '{["':
            return None
        line = self.line_at(self.position)
        kept = self.buffer[self.position : self.position + _KEPT_CHARS]
        depth, in_string, index = 0, False, self.position
        while True:
            # Runs of ordinary characters (and, in a string, escapes) are skipped by the regex engine.
            match = (_STRING_BODY if in_string else _OUTSIDE_STRING).match(self.buffer, index)
            index = match.end()
            if index >= len(self.buffer) or (in_string and self.buffer[index] == "\\"):
                # Need more text: keep only the unscanned tail (a backslash whose escape is cut off).
                self.position = index
                if not self.refill():
                    return _too_long(line, kept, self.cap)  # the file ends inside it: the reader stops there
                index = self.position
                continue
            token = self.buffer[index]
            index += 1
            if token == '"':
                in_string = not in_string
                if in_string:
                    continue
            else:
                depth += 1 if token in "{[" else -1
            if depth == 0:
                self.position = index
                return _too_long(line, kept, self.cap)

    def fatal(self, detail: str) -> ReadFailure:
        text = self.buffer[self.position : self.position + 200]
        return ReadFailure(
            line=self.line_at(self.position),
            reason="invalid_json",
            detail=f"{detail}; the rest of the file was not read",
            text=text,
            fatal=True,
        )

    def __iter__(self) -> Iterator[RawRecord | ReadFailure]:
        decoder = json.JSONDecoder()
        self.skip_blank()
        in_array = self.buffer[self.position] == "["
        if in_array:
            self.position += 1
        need_separator = False
        while True:
            if not self.skip_blank():
                if in_array:
                    yield self.fatal("the JSON array is not closed")
                return
            if in_array and self.buffer[self.position] == "]":
                return
            if in_array and need_separator:
                if self.buffer[self.position] != ",":
                    yield self.fatal("expected ',' between array elements")
                    return
                self.position += 1
                need_separator = False
                continue
            try:
                value, end = decoder.raw_decode(self.buffer, self.position)
            except json.JSONDecodeError as exc:
                cut_off = exc.pos >= len(self.buffer) - _TRUNCATION_MARGIN or exc.msg.startswith("Unterminated")
                if cut_off and self.cap is not None and len(self.buffer) - self.position > self.cap:
                    if (failure := self.skip_value()) is not None:
                        yield failure
                        need_separator = in_array
                        continue
                if cut_off and self.refill():
                    continue
                error_line = self.line_at(self.position) + self.buffer.count("\n", self.position, exc.pos)
                yield self.fatal(f"invalid JSON ({exc.msg}) near line {error_line}")
                return
            if end == len(self.buffer) and self.refill():
                continue
            yield RawRecord(line=self.line_at(self.position), data=value)
            self.position = end
            need_separator = in_array
