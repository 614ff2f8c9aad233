"""Finding the input files of a preprocess run and reading them into canonical records.

plan_inputs() lists the files (the configured datasets' paths, then every data file under
input_dir, each file once) with the dataset each belongs to and its format when known (the
config, else the download stage's source.json, else detected from its first records).
Intake reads them in turn and yields, per raw record, the records its converter makes or
the reject that explains why it made none; per-file counts and problems are kept for the report.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qwentune.config.base import ConfigError
from qwentune.config.preprocess import PreprocessConfig
from qwentune.data.formats import DETECTION_SAMPLE, FORMATS, ConversionOptions, detect_format
from qwentune.data.readers import MANIFEST_NAME, DataFile, RawRecord, ReadFailure, UnreadableFile, find_data_files
from qwentune.data.record import Record, Reject

# The files a run writes: never read back as inputs when the output folder lies under input_dir.
OUTPUT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "chinese_test.jsonl", "rejects.jsonl", "stats.json")


@dataclass
class Problem:
    level: str  # "error" | "warning"
    message: str
    file: str | None = None

    def to_dict(self) -> dict:
        return {"level": self.level, "file": self.file, "message": self.message}


@dataclass
class InputFile:
    path: Path
    name: str  # shown and written to rejects.jsonl: relative to input_dir where it lies there
    source: str
    format: str | None  # None: detect
    format_from: str = "detected"  # detected | config | manifest
    read: int = 0
    items: int = 0

    def to_dict(self) -> dict:
        return {
            "file": self.name,
            "source": self.source,
            "format": self.format,
            "format_from": self.format_from,
            "read": self.read,
            "in": self.items,
        }


def source_name(path: Path, root: Path) -> str:
    """The dataset a file belongs to: its first folder under the input folder, or its file stem."""
    relative = path.relative_to(root)
    if len(relative.parts) > 1:
        name = relative.parts[0]
    else:
        name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
        name = name.rsplit(".", 1)[0]
    # Tabs and newlines would break the spool's line format (and any table).
    return "".join("_" if c in "\t\n\r" else c for c in name)


def manifest_format(path: Path, root: Path) -> str | None:
    """The format the download stage recorded for `path` in the nearest source.json between the
    file's folder and `root`: {"format": f} for all its files, or {"files": [{"path": p, "format": f}]}
    with paths relative to the manifest's folder."""
    folder = path.parent
    while True:
        manifest = folder / MANIFEST_NAME
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            if not isinstance(data, dict):
                return None
            relative = path.relative_to(folder).as_posix()
            for entry in data.get("files") or []:
                if isinstance(entry, dict) and entry.get("path") == relative:  # a null format there: detect
                    return entry["format"] if isinstance(entry.get("format"), str) else None
            return data["format"] if isinstance(data.get("format"), str) else None
        if folder == root or folder.parent == folder:
            return None
        folder = folder.parent


def plan_inputs(config: PreprocessConfig) -> tuple[list[InputFile], list[Problem]]:
    for name, options in config.datasets.items():
        if options.format is not None and options.format not in FORMATS:
            raise ConfigError(
                f"datasets.{name}.format: unknown format '{options.format}'; known: {', '.join(sorted(FORMATS))}"
            )
    problems: list[Problem] = []
    files: list[InputFile] = []
    claimed: set[Path] = set()
    output_dir = config.output_dir.resolve()

    def is_output(resolved: Path, root: Path) -> bool:
        """Our own outputs are not inputs when output_dir lies in (or is) a folder being scanned."""
        if resolved.parent == output_dir and resolved.name in OUTPUT_FILES:
            return True
        return output_dir != root and output_dir.is_relative_to(root) and resolved.is_relative_to(output_dir)

    def add(path: Path, root: Path, source: str, name: str) -> None:
        resolved = path.resolve()
        if resolved in claimed or is_output(resolved, root.resolve()):
            return
        claimed.add(resolved)
        format_name, format_from = manifest_format(path, root), "manifest"
        if format_name is None:
            format_from = "detected"
        elif format_name not in FORMATS:
            problems.append(
                Problem("warning", f"{MANIFEST_NAME} names unknown format '{format_name}'; detecting instead", name)
            )
            format_name, format_from = None, "detected"
        options = config.datasets.get(source)
        if options is not None and options.format is not None:
            format_name, format_from = options.format, "config"
        files.append(InputFile(path=path, name=name, source=source, format=format_name, format_from=format_from))

    for name, options in config.datasets.items():
        if options.path is None:
            continue
        if not options.path.exists():
            problems.append(Problem("error", f"datasets.{name}.path does not exist: {options.path}"))
            continue
        root = options.path if options.path.is_dir() else options.path.parent
        for path in find_data_files(options.path, config.exclude):
            add(path, root, name, path.as_posix())
    if config.input_dir.is_dir():
        for path in find_data_files(config.input_dir, config.exclude):
            name = path.relative_to(config.input_dir).as_posix()
            add(path, config.input_dir, source_name(path, config.input_dir), name)
    elif not any(options.path for options in config.datasets.values()):
        problems.append(
            Problem(
                "error",
                f"input folder not found: {config.input_dir} "
                "(download data first: python data/download_data.py --datasets ...)",
            )
        )
    sources = {file.source for file in files}
    for name in config.datasets:
        if name not in sources:
            problems.append(Problem("error", f"dataset '{name}' is configured but no data file belongs to it"))
    if not files and not any(p.level == "error" for p in problems):
        problems.append(
            Problem("error", f"no data files (.json, .jsonl, .parquet, optionally .gz) under {config.input_dir}")
        )
    return files, problems


# ---------------------------------------------------------------------------- reading and converting


class Intake:
    """Reads every input file and converts its records, keeping per-file counts and problems."""

    def __init__(self, files: list[InputFile], config: PreprocessConfig, problems: list[Problem]):
        self.files = files
        self.config = config
        self.problems = problems
        self.options = ConversionOptions(oasst_all_paths=config.oasst_all_paths)
        self.read_per_source: Counter = Counter()
        self.current: DataFile | None = None
        self.done_bytes = 0

    @property
    def bytes_read(self) -> int:
        return self.done_bytes + (self.current.bytes_read if self.current else 0)

    def items(self) -> Iterator[Record | Reject]:
        for file in self.files:
            self.current = DataFile(file.path, self.config.record_char_cap())
            for item in self._file_items(file, self.current):
                file.items += 1
                yield item
            self.done_bytes += self.current.size
            self.current = None

    def _raw_records(self, file: InputFile, data_file: DataFile) -> Iterator[RawRecord | ReadFailure]:
        """The file's raw records; a file that breaks off ends here (reported), and what was read still counts."""
        limit = self.config.max_samples
        try:
            for raw in data_file.records():
                if limit is not None and self.read_per_source[file.source] >= limit:
                    return
                self.read_per_source[file.source] += 1
                file.read += 1
                yield raw
        except UnreadableFile as exc:
            where = f" after {file.read} records" if file.read else ""
            self.problems.append(Problem("error", f"cannot read the file{where}: {exc}", file.name))

    def _file_items(self, file: InputFile, data_file: DataFile) -> Iterator[Record | Reject]:
        raw_records = self._raw_records(file, data_file)
        # Detection looks at the first records; they are kept and converted like the rest.
        head = []
        for raw in raw_records:
            head.append(raw)
            if len(head) >= DETECTION_SAMPLE:
                break
        if not head:
            self.problems.append(Problem("warning", "the file holds no records", file.name))
            return
        if file.format is None:
            detection = detect_format([raw.data for raw in head if isinstance(raw, RawRecord)])
            file.format = detection.format
            if detection.format is None:
                self.problems.append(
                    Problem(
                        "error",
                        "format not detected: no known format fits its first "
                        f"records (set datasets.{file.source}.format)",
                        file.name,
                    )
                )
            elif detection.recognized * 2 < detection.sampled:
                self.problems.append(
                    Problem(
                        "warning",
                        f"detected as {detection.format}, but only "
                        f"{detection.recognized} of the first {detection.sampled} "
                        "records fit it",
                        file.name,
                    )
                )
        converter = FORMATS[file.format](file.source, file.name, self.options) if file.format else None
        for raw in itertools.chain(head, raw_records):
            if isinstance(raw, ReadFailure):
                if raw.fatal:
                    self.problems.append(Problem("error", f"line {raw.line}: {raw.detail}", file.name))
                yield Reject(file.source, file.name, raw.line, raw.reason, raw.detail, raw.text)
            elif converter is None:
                yield Reject(
                    file.source, file.name, raw.line, "unknown_format", "the file's format was not detected", raw.data
                )
            else:
                yield from converter.feed(raw)
        if converter is not None:
            yield from converter.finish()
