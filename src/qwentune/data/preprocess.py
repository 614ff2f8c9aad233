"""The preprocess stage: raw data files -> canonical, cleaned, split JSONL.

    find files, read, detect format, convert (inputs: readers, formats) -> clean (clean)
      -> count tokens (clean.TokenCounter) -> spool, decide, write (split.SplitWriter)

Outputs in output_dir: train.jsonl, validation.jsonl, test.jsonl, chinese_test.jsonl (the
Chinese records of test), rejects.jsonl (one line per dropped record: file, line, source,
reason, detail, original) and stats.json. They are published as one set or not at all
(data/outputs.py): a run with an error, or one that is killed, leaves the previous set as it was.

Accounting. Every raw record read (a line, an array element, a Parquet row) becomes items:
one per conversation a converter makes of it, or one reject. That is one item per record,
except OASST, whose items are conversations (flat message rows are first grouped into
trees). Per dataset, stats.json has `read` (raw records) and `in` (items), and always
    in == train + validation + test + rejected.

Problems. An *error* is something that makes the output incomplete or the run meaningless:
no data files, a file that cannot be read (or read to its end), a file whose format cannot be
detected, a configured dataset with no files, no record kept at all. A *warning* is
worth reading but expected in real data: an empty file, a file with more than half its
records rejected, an empty validation or test split. Rejected records themselves are
counted, not problems. With validate_only nothing is written; either way the exit code is
1 when there is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from qwentune.config.base import ConfigError, apply_overrides, read_yaml, validate
from qwentune.config.preprocess import PreprocessConfig
from qwentune.console import console
from qwentune.data import clean
from qwentune.data.inputs import OUTPUT_FILES, InputFile, Intake, Problem, plan_inputs
from qwentune.data.outputs import OutputSet
from qwentune.data.record import SPLITS, Reject
from qwentune.data.split import CHINESE_TEST, Mixing, SourceCounts, SplitWriter
from qwentune.fsutil import fault_point

_SPLIT_FILES = {
    "train": "train.jsonl",
    "validation": "validation.jsonl",
    "test": "test.jsonl",
    CHINESE_TEST: "chinese_test.jsonl",
}


@dataclass
class PreprocessReport:
    stats: dict
    problems: list[Problem]
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    cleaned: list[Path] = field(default_factory=list)  # working folders of killed runs, removed
    atomic: bool = True  # the outputs were published in one step (see data/outputs.py)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


# ---------------------------------------------------------------------------- outputs


class RejectLog:
    """Counts rejects per dataset and reason, and writes each to rejects.jsonl."""

    def __init__(self, outputs: OutputSet):
        self.outputs = outputs
        self.by_source: dict[str, Counter] = defaultdict(Counter)

    def __call__(self, reject: Reject) -> None:
        self.by_source[reject.source][reject.reason] += 1
        self.outputs.write("rejects.jsonl", json.dumps(reject.to_dict(), ensure_ascii=False, default=str))


class TokenStats:
    def __init__(self):
        self.count, self.total, self.smallest, self.largest = 0, 0, None, None

    def __call__(self, tokens: int) -> None:
        self.count += 1
        self.total += tokens
        self.smallest = tokens if self.smallest is None else min(self.smallest, tokens)
        self.largest = tokens if self.largest is None else max(self.largest, tokens)

    def to_dict(self) -> dict:
        mean = round(self.total / self.count, 1) if self.count else None
        return {"counted": self.count, "min": self.smallest, "mean": mean, "max": self.largest}


# ---------------------------------------------------------------------------- the run


def run_preprocess(config: PreprocessConfig) -> PreprocessReport:
    """Convert, clean, filter and split; write the outputs (unless validate_only) and return the report."""
    started = time.perf_counter()
    files, problems = plan_inputs(config)
    cleaning = config.cleaning
    count_lengths = cleaning.too_short or cleaning.too_long
    tokenizer, tokenizer_path = None, None
    if files and (count_lengths or config.show_example):
        tokenizer, tokenizer_path = _load_tokenizer(config.tokenizer or _default_tokenizer())

    # With no input file there is nothing to write: earlier outputs stay as they are.
    write_dir = None if config.validate_only or not files else config.output_dir
    outputs = OutputSet(write_dir)
    rejects = RejectLog(outputs)
    tokens = TokenStats()
    intake = Intake(files, config, problems)
    try:
        with tempfile.TemporaryDirectory(prefix=".qwentune-spool-", dir=outputs.spool_parent) as spool:
            splitter = SplitWriter(
                Path(spool),
                seed=config.seed,
                ratios=config.ratios.as_dict(),
                mixing={name: Mixing(o.weight, o.max_records) for name, o in config.datasets.items()},
                deduplicate=cleaning.duplicate,
            )
            items = clean.apply_rules(
                intake.items(),
                cleaning.enabled_rules(),
                strip_whitespace=cleaning.strip_whitespace,
                template_values=config.template_values,
            )
            counter = None
            if count_lengths and tokenizer is not None:
                counter = clean.TokenCounter(
                    tokenizer, tokenizer_path, config.worker_count(), config.batch_size, max_length=config.max_length
                )
            with counter or contextlib.nullcontext(), _progress(intake) as advance:
                if counter is not None:
                    items = clean.length_filter(
                        counter.stream(items),
                        min_length=config.min_length,
                        max_length=config.max_length,
                        check_short=cleaning.too_short,
                        check_long=cleaning.too_long,
                        on_length=tokens,
                    )
                for item in items:
                    if isinstance(item, Reject):
                        rejects(item)
                    else:
                        splitter.add(item)
                    advance()
                fault_point("preprocess:spooled")
            kept = splitter.finish(lambda split, line: outputs.write(_SPLIT_FILES[split], line), rejects)
        stats = build_stats(config, files, kept, rejects, tokens, outputs, problems)
        # A run with an error publishes nothing: the previous outputs stay exactly as they were.
        written = [] if any(p.level == "error" for p in problems) else outputs.commit(stats)
    finally:
        outputs.discard()
    report = PreprocessReport(
        stats=stats,
        problems=problems,
        written=written,
        seconds=time.perf_counter() - started,
        cleaned=outputs.cleaned,
        atomic=outputs.atomic,
    )
    print_report(report, config)
    if config.show_example and tokenizer is not None:
        print_example(tokenizer, outputs.first_line.get("train.jsonl"))
    return report


def _default_tokenizer() -> str:
    from qwentune.data.tokenize import DEFAULT_TOKENIZER

    return DEFAULT_TOKENIZER


def _load_tokenizer(name: str):
    """The tokenizer, and a local path worker processes can load it from without fetching again."""
    from qwentune.assets import AssetError, resolve_model_name
    from qwentune.data.tokenize import load_tokenizer

    try:
        path = resolve_model_name(name)
        return load_tokenizer(path), path
    except (OSError, AssetError) as exc:
        raise ConfigError(f"tokenizer: {exc}") from exc


class _progress:
    """A progress bar over the bytes of the input files, with a record count; updated every 1000 records."""

    def __init__(self, intake: Intake):
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        self.intake = intake
        self.records = 0
        self.progress = Progress(
            TextColumn("[bold]Preprocessing"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[records]:,} records"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        total = sum(file.path.stat().st_size for file in intake.files)
        self.task = self.progress.add_task("preprocess", total=total or None, records=0)

    def __enter__(self):
        self.progress.start()
        return self.advance

    def advance(self) -> None:
        self.records += 1
        if self.records % 1000 == 0:
            self.progress.update(self.task, completed=self.intake.bytes_read, records=self.records)

    def __exit__(self, *exc):
        self.progress.stop()
        return False


def build_stats(
    config: PreprocessConfig,
    files: list[InputFile],
    kept: dict[str, SourceCounts],
    rejects: RejectLog,
    tokens: TokenStats,
    outputs: OutputSet,
    problems: list[Problem],
) -> dict:
    """The stats.json document; also adds the problems only the totals reveal."""
    sources: dict[str, dict] = {}
    for file in files:
        entry = sources.setdefault(file.source, {"formats": [], "read": 0, "in": 0})
        entry["read"] += file.read
        entry["in"] += file.items
        if file.format and file.format not in entry["formats"]:
            entry["formats"].append(file.format)
    totals = Counter()
    for name, entry in sources.items():
        counts = kept.get(name)
        split_counts = {split: counts.kept[split] if counts else 0 for split in SPLITS}
        reasons = dict(sorted(rejects.by_source.get(name, Counter()).items()))
        entry.update(split_counts)
        entry["kept"] = sum(split_counts.values())
        entry["rejected"] = sum(reasons.values())
        entry["extra_train_copies"] = counts.extra_train_copies if counts else 0
        entry["lang"] = dict(sorted(counts.langs.items())) if counts else {}
        entry["reasons"] = reasons
        if entry["in"] != entry["kept"] + entry["rejected"]:
            problems.append(
                Problem(
                    "error",
                    f"internal: dataset '{name}' does not add up: in {entry['in']} != "
                    f"kept {entry['kept']} + rejected {entry['rejected']}",
                )
            )
        if entry["in"] and entry["rejected"] * 2 > entry["in"]:
            problems.append(
                Problem(
                    "warning",
                    f"dataset '{name}': {entry['rejected']} of {entry['in']} records rejected (see rejects.jsonl)",
                )
            )
        for key in ("read", "in", "kept", "rejected", *SPLITS):
            totals[key] += entry[key]
    all_reasons = Counter()
    for reasons in rejects.by_source.values():
        all_reasons.update(reasons)
    for split in ("validation", "test"):
        if getattr(config.ratios, split) > 0 and totals[split] == 0 and totals["kept"]:
            problems.append(Problem("warning", f"the {split} split is empty (too few records for its ratio)"))
    if files and not totals["kept"]:
        problems.append(Problem("error", "no record was kept"))
    return {
        "config": config.model_dump(mode="json"),
        "files": [file.to_dict() for file in files],
        "sources": sources,
        "reasons": dict(sorted(all_reasons.items(), key=lambda item: (-item[1], item[0]))),
        "totals": {
            **{key: totals[key] for key in ("read", "in", "kept", "rejected", *SPLITS)},
            CHINESE_TEST: outputs.lines["chinese_test.jsonl"],
        },
        "outputs": {name: outputs.lines[name] for name in OUTPUT_FILES[:-1]},
        "tokens": tokens.to_dict(),
        "problems": [problem.to_dict() for problem in problems],
    }


# ---------------------------------------------------------------------------- console report


def print_report(report: PreprocessReport, config: PreprocessConfig) -> None:
    from rich.table import Table

    for folder in report.cleaned:
        console.print(f"removed {folder} (left by a preprocess run that was killed)", soft_wrap=True)

    stats = report.stats
    table = Table(title="Preprocessing: records by dataset", title_justify="left")
    for column in ("dataset", "format", "read", "in", "train", "validation", "test", "rejected"):
        table.add_column(column, justify="left" if column in ("dataset", "format") else "right", overflow="fold")
    for name, entry in sorted(stats["sources"].items()):
        table.add_row(
            name,
            ", ".join(entry["formats"]) or "?",
            *(f"{entry[key]:,}" for key in ("read", "in", "train", "validation", "test", "rejected")),
        )
    totals = stats["totals"]
    table.add_section()
    table.add_row(
        "total",
        "",
        *(f"{totals[key]:,}" for key in ("read", "in", "train", "validation", "test", "rejected")),
        style="bold",
    )
    console.print(table)
    if stats["reasons"]:
        reasons = Table(title="Rejected, by reason", title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("records", justify="right")
        reasons.add_column("datasets")
        for reason, count in stats["reasons"].items():
            where = sorted(name for name, entry in stats["sources"].items() if reason in entry["reasons"])
            reasons.add_row(reason, f"{count:,}", ", ".join(where))
        console.print(reasons)
    for problem in report.problems:
        colour = "red" if problem.level == "error" else "yellow"
        where = f"{problem.file}: " if problem.file else ""
        console.print(f"[{colour}]{problem.level}:[/{colour}] {where}{problem.message}", soft_wrap=True)
    rate = totals["in"] / report.seconds if report.seconds else 0
    timing = f"{report.seconds:.1f} s, {rate:,.0f} records/s"
    if config.validate_only:
        verdict = "[red]errors found[/red]" if report.errors else "[green]no errors[/green]"
        console.print(f"validate only: nothing written; {verdict} ({timing})")
    elif not report.written:
        why = "the run had errors" if report.errors else "no input files"
        console.print(f"nothing written to {config.output_dir} ({why}); earlier outputs there are unchanged")
    else:
        copies = stats["outputs"]["train.jsonl"] - totals["train"]
        copies_note = f" (+{copies:,} weighted copies)" if copies else ""
        console.print(
            f"wrote {config.output_dir}: train {totals['train']:,}{copies_note}, validation "
            f"{totals['validation']:,}, test {totals['test']:,} (Chinese {totals[CHINESE_TEST]:,}), "
            f"rejects {totals['rejected']:,}, stats.json ({timing})"
        )
        if not report.atomic:
            console.print(
                "[yellow]note:[/yellow] the files were replaced one by one (the folder could not be swapped "
                "in one step: a mount point, a read-only parent or a filesystem without RENAME_EXCHANGE)",
                soft_wrap=True,
            )


def print_example(tokenizer, line: str | None) -> None:
    """One training example as the trainer will see it, with the trained tokens marked."""
    from qwentune.data.tokenize import describe_example, encode_conversation

    if line is None:
        return
    record = json.loads(line)
    # A preference record is shown with its chosen reply (or its KTO completion).
    reply = record.get("chosen") or record.get("completion")
    example = encode_conversation(
        tokenizer, record["messages"] + ([reply] if reply else []), tools=record.get("tools")
    )
    console.rule(f"example training record {record['id']} ({record['source']})")
    console.print(describe_example(tokenizer, example), markup=False, highlight=False)
    console.rule()


# ---------------------------------------------------------------------------- command line

# flag -> config key; flags default to None so that only the ones given override the config file.
_FLAG_KEYS = {
    "input_dir": "input_dir",
    "output_dir": "output_dir",
    "tokenizer": "tokenizer",
    "max_length": "max_length",
    "min_length": "min_length",
    "train_ratio": "ratios.train",
    "val_ratio": "ratios.validation",
    "test_ratio": "ratios.test",
    "seed": "seed",
    "num_workers": "num_workers",
    "max_samples": "max_samples",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preprocess config (datasets, cleaning switches, weights, caps)")
    parser.add_argument("--input_dir", help="folder of raw data files, scanned recursively (default: data/raw)")
    parser.add_argument("--output_dir", help="where the splits go (default: data/processed)")
    parser.add_argument("--tokenizer", help="tokenizer for the length filter (default: the embedded Qwen tokenizer)")
    parser.add_argument("--max_length", type=int, help="drop conversations longer than this many tokens (2048)")
    parser.add_argument("--min_length", type=int, help="drop conversations shorter than this many tokens (10)")
    parser.add_argument("--train_ratio", type=float, help="share of records for train (0.9)")
    parser.add_argument("--val_ratio", type=float, help="share for validation (0.05)")
    parser.add_argument("--test_ratio", type=float, help="share for test (0.05)")
    parser.add_argument("--seed", type=int, help="seed of the split and of sampling (42)")
    parser.add_argument(
        "--num_workers",
        type=int,
        help="tokenizer processes beside the main one (default: one per CPU, at most 8; 0: none)",
    )
    parser.add_argument("--max_samples", type=int, help="read at most this many records per dataset")
    parser.add_argument(
        "--validate_only",
        action="store_true",
        help="check everything and print the report; write nothing; exit 1 on errors",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key, e.g. --set cleaning.duplicate=false (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """Defaults < the config file < the flags given < --set overrides."""
    data = read_yaml(args.config) if args.config else {}
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            *sections, last = key.split(".")
            node = data
            for section in sections:
                node = node.setdefault(section, {})
            node[last] = value
    if args.validate_only:
        data["validate_only"] = True
    apply_overrides(data, args.overrides)
    return validate(PreprocessConfig, data, args.config or "(command line)")


def run_cli(args: argparse.Namespace) -> int:
    return run_preprocess(config_from_args(args)).exit_code
