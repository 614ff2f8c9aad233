"""Fetch raw datasets into data/raw/<name>/, each with a source.json that preprocessing reads.

Per dataset: resolve its registry entry -> fetch its files into a cache (the Hugging Face cache
for hub repos, qwentune's download cache for URLs; local files are read where they are) ->
place them in data/raw/<name>/ (hard link or copy; the first N rows with max_samples) ->
write source.json:

    {"name", "description", "language", "licence", "format", "source", "revision", "max_samples",
     "files": [{"path", "format", "origin", "bytes", "sha256", "rows"}], "rows", "downloaded_at"}

`files[].format` is the file's format when the registry knows it (null: detect it). `revision` is
the commit a hub download resolved to (the registry's `source.revision` pins a branch, tag or
commit; a hub id on the command line takes `owner/name@revision`).

A re-download of the same thing (the same hub commit, or the same URL, with the same max_samples)
must reproduce the sha256 that source.json recorded: a file that differs is an error naming it,
and the placed files stay as they were. A hub branch that moved to another commit is a new
version: its files replace the old ones, and the run says so.
Hub access goes through huggingface_hub, so HF_ENDPOINT (mirrors), HF_HOME, HF_TOKEN and
HF_HUB_OFFLINE work as they do everywhere else, and an interrupted transfer resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import filter_repo_objects

from qwentune import __version__, hub
from qwentune.console import console, notice
from qwentune.data.registry import DEMO_DATASET, DatasetEntry, FileSpec, Registry, load_registry, registry_listing
from qwentune.errors import RunFailed, UsageError
from qwentune.fsutil import atomic_write
from qwentune.paths import RAW_DATA_DIR, cache_dir, writable_folder


class DownloadError(RunFailed, RuntimeError):
    """A dataset that could not be fetched; the message says what failed (exit 1)."""


class NetworkUnavailable(DownloadError):
    """The server holding a dataset could not be reached, or --offline forbade trying."""


@dataclass
class DownloadResult:
    name: str
    ok: bool
    output_dir: Path | None = None
    files: list[dict] = field(default_factory=list)
    rows: int | None = None
    error: str | None = None
    network_error: bool = False
    fallback: bool = False  # the demo data, taken because the network brought none of the requested datasets
    entry: DatasetEntry | None = None


@dataclass
class FetchedFile:
    local_path: Path
    name: str  # file name in data/raw/<dataset>/
    origin: str
    format: str | None
    in_cache: bool  # a download cache's copy (may be hard-linked); else the user's own file (copied)
    commit: str | None = None  # the hub commit it comes from


# --- files with rows: count them, or keep the first N -------------------------------------------


class JsonLinesFile:
    def count(self, path: Path) -> int:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())

    def head(self, source: Path, target: Path, limit: int) -> None:
        kept = 0
        with source.open("rb") as reader, target.open("wb") as writer:
            for line in reader:
                if kept == limit:
                    break
                if line.strip():
                    writer.write(line if line.endswith(b"\n") else line + b"\n")
                    kept += 1


class JsonFile:
    """A JSON array (Alpaca style) or, despite the suffix, JSON lines (BELLE's .json files are)."""

    lines = JsonLinesFile()

    def _is_array(self, path: Path) -> bool:
        with path.open("rb") as handle:
            return handle.read(4096).lstrip()[:1] == b"["

    def count(self, path: Path) -> int:
        if not self._is_array(path):
            return self.lines.count(path)
        with path.open(encoding="utf-8") as handle:
            return len(json.load(handle))

    def head(self, source: Path, target: Path, limit: int) -> None:
        if not self._is_array(source):
            return self.lines.head(source, target, limit)
        with source.open(encoding="utf-8") as handle:
            records = json.load(handle)[:limit]
        target.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


class ParquetFile:
    def count(self, path: Path) -> int:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows

    def head(self, source: Path, target: Path, limit: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(source)
        batches, kept = [], 0
        for batch in parquet.iter_batches(batch_size=limit):  # a batch may stop at a row group's end
            batches.append(batch.slice(0, limit - kept))
            kept += batches[-1].num_rows
            if kept == limit:
                break
        pq.write_table(pa.Table.from_batches(batches, schema=parquet.schema_arrow), target)


# Data files by suffix; also what "every data file" of a repo or folder means.
ROW_FILES = {".json": JsonFile(), ".jsonl": JsonLinesFile(), ".parquet": ParquetFile()}
EVERY_DATA_FILE = [FileSpec(path=f"*{suffix}") for suffix in ROW_FILES]


# --- fetching: each source kind brings its files into a cache or finds them on disk ---------------


class Network:
    """What this run may reach: --offline forbids it all; each server is probed at most once."""

    def __init__(self, offline: bool):
        self.offline = offline
        self._unreachable: dict[str, str | None] = {}

    def require(self, url: str) -> None:
        server = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        if self.offline:
            raise NetworkUnavailable(f"--offline, and {url} was not downloaded before")
        if server not in self._unreachable:
            self._unreachable[server] = hub.probe(server)
        if self._unreachable[server]:
            raise NetworkUnavailable(f"{server} could not be reached ({self._unreachable[server]})")


def _select(available: list[str], specs: list[FileSpec] | None, where: str) -> list[tuple[str, FileSpec]]:
    """Files matching the entry's specs (exact names or globs, matched as snapshot_download does).

    Each listed spec must match a file; with no list, every data file is taken, and there must be one.
    """
    chosen: dict[str, FileSpec] = {}
    for spec in specs or EVERY_DATA_FILE:
        matches = sorted(filter_repo_objects(available, allow_patterns=[spec.path]))
        if specs and not matches:
            raise DownloadError(f"no file in {where} matches '{spec.path}'")
        for match in matches:
            chosen.setdefault(match, spec)
    if not chosen:
        raise DownloadError(f"no data file ({', '.join(ROW_FILES)}) in {where}")
    return list(chosen.items())


def _files_under(folder: Path) -> list[str]:
    return [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]


def fetch_hub(entry: DatasetEntry, network: Network) -> list[FetchedFile]:
    source = entry.source
    endpoint = hub.hub_endpoint()
    try:
        # Offline, snapshot_download answers from the cache alone; online it checks the repo, then
        # downloads what is missing (resuming a dropped transfer) with a progress bar.
        snapshot = Path(
            snapshot_download(
                source.hub,
                repo_type="dataset",
                revision=source.revision,
                allow_patterns=[spec.path for spec in source.files or EVERY_DATA_FILE],
                endpoint=endpoint,
                local_files_only=network.offline,
            )
        )
    except LocalEntryNotFoundError as exc:
        if network.offline:
            raise NetworkUnavailable("--offline, and it is not in the Hugging Face cache") from None
        cause = exc.__cause__ or exc
        raise NetworkUnavailable(f"{endpoint} could not be reached ({type(cause).__name__}: {cause})") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"dataset repo '{source.hub}' not found on {endpoint} (misspelt? private?)") from None
    commit = snapshot.name  # snapshot folders are named by the commit they hold
    try:
        chosen = _select(_files_under(snapshot), source.files, f"{source.hub} (commit {commit})")
    except DownloadError as exc:
        if network.offline:  # the cache holds only part of the dataset
            raise NetworkUnavailable(f"--offline, and the Hugging Face cache lacks part of it ({exc})") from None
        raise
    return [
        FetchedFile(
            local_path=snapshot / relative,
            name=Path(relative).name,
            origin=f"{endpoint}/datasets/{source.hub}/blob/{commit}/{relative}",
            format=entry.file_format(spec),
            in_cache=True,
            commit=commit,
        )
        for relative, spec in chosen
    ]


def download_cache() -> Path:
    """Where URL downloads are kept, so a second run (or --offline) finds them."""
    return cache_dir() / "downloads"


def url_cache_path(url: str) -> Path:
    """Where the file at `url` is kept once downloaded (and its `.part` while downloading)."""
    file_name = Path(urlsplit(url).path).name or "data"
    return download_cache() / hashlib.sha256(url.encode()).hexdigest()[:16] / file_name


def fetch_url(entry: DatasetEntry, network: Network) -> list[FetchedFile]:
    url = entry.source.url
    target = url_cache_path(url)
    if not target.is_file():
        network.require(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        # Append mode: a .part left by an interrupted run is resumed with a Range request.
        with partial.open("ab") as handle:
            http_get(url, handle, resume_size=handle.tell(), displayed_filename=target.name)
        partial.replace(target)
    return [FetchedFile(local_path=target, name=target.name, origin=url, format=entry.format, in_cache=True)]


def fetch_local(entry: DatasetEntry, network: Network) -> list[FetchedFile]:
    root = entry.source.local
    if root.is_file():
        return [FetchedFile(local_path=root, name=root.name, origin=str(root), format=entry.format, in_cache=False)]
    if not root.is_dir():
        raise DownloadError(f"local source {root} does not exist")
    chosen = _select(_files_under(root), entry.source.files, str(root))
    return [
        FetchedFile(local_path=root / relative, name=Path(relative).name, origin=str(root / relative),
                    format=entry.file_format(spec), in_cache=False)
        for relative, spec in chosen
    ]


FETCHERS = {"hub": fetch_hub, "url": fetch_url, "local": fetch_local}


# --- placing files in data/raw/<name>/ and describing them ------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link to the cache's copy costs no space (firefly is 1.2 GB); the cache only ever
    # replaces files by rename, never in place. Another filesystem needs a copy.
    try:
        os.link(os.path.realpath(source), target)
    except OSError:
        shutil.copyfile(source, target)


def recorded_hashes(folder: Path, entry: DatasetEntry, fetched: list[FetchedFile], max_samples: int | None) -> dict:
    """{file name: sha256} a re-download must reproduce: the earlier source.json's, when it fetched the
    same thing (the same hub repo and commit, or the same URL) with the same max_samples; else {}."""
    try:
        previous = json.loads((folder / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(previous, dict) or previous.get("max_samples") != max_samples:
        return {}
    source, earlier = entry.source, previous.get("source") or {}
    if source.kind == "hub":
        if earlier.get("hub") != source.hub or previous_commit(previous) != fetched[0].commit:
            return {}
    elif source.kind != "url" or earlier.get("url") != source.url:
        return {}  # a local source is the user's own file: it may change at will
    files = previous.get("files") or []
    return {item["path"]: item["sha256"] for item in files if isinstance(item, dict) and "path" in item and "sha256" in item}


def previous_commit(record: dict) -> str | None:
    """The hub commit an earlier source.json records (older ones only name it in each file's origin)."""
    if record.get("revision"):
        return record["revision"]
    for item in record.get("files") or []:
        if isinstance(item, dict) and (match := re.search(r"/blob/([0-9a-f]{40})/", str(item.get("origin")))):
            return match[1]
    return None


def place(fetched: FetchedFile, folder: Path, max_samples: int | None, expected_sha256: str | None = None) -> dict:
    """Put one fetched file in `folder`; with `expected_sha256`, only when its content hashes to that."""
    target = folder / fetched.name
    handler = ROW_FILES.get(target.suffix)
    digest = None
    if fetched.local_path.resolve() != target.resolve():  # else: a local source that is already in place
        staging = target.with_name(target.name + ".tmp")
        staging.unlink(missing_ok=True)
        if max_samples is not None and handler is not None:
            handler.head(fetched.local_path, staging, max_samples)
        elif fetched.in_cache:
            _link_or_copy(fetched.local_path, staging)
        else:  # a user's file (or the package's demo data) is copied: editing data/raw must not change it
            shutil.copyfile(fetched.local_path, staging)
        digest = _sha256(staging)
        if expected_sha256 is not None and digest != expected_sha256:
            staging.unlink()
            raise DownloadError(
                f"{target}: the new download has sha256 {digest}, but source.json records {expected_sha256} "
                f"for the same {'commit' if fetched.commit else 'URL'}; the file was not replaced (a corrupt "
                "transfer or a changed upstream file: delete the Hugging Face / qwentune cache copy and retry, "
                f"or delete {folder / 'source.json'} to accept the new content)"
            )
        os.replace(staging, target)
    return {
        "path": fetched.name,
        "format": fetched.format,
        "origin": fetched.origin,
        "bytes": target.stat().st_size,
        "sha256": digest or _sha256(target),
        "rows": handler.count(target) if handler is not None else None,
    }


def _download_one(name: str, entry: DatasetEntry, raw_dir: Path, network: Network,
                  max_samples: int | None) -> DownloadResult:
    console.print(f"[bold]{name}[/bold]: {entry.source.describe()}")
    try:
        fetched = FETCHERS[entry.source.kind](entry, network)
        names = [item.name for item in fetched]
        if len(set(names)) != len(names):
            raise DownloadError(f"two files share a name in {names}; list the files to take in the registry entry")
        folder = raw_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        expected = recorded_hashes(folder, entry, fetched, max_samples)
        _say_if_moved(folder, entry, fetched)
        files = [place(item, folder, max_samples, expected.get(item.name)) for item in fetched]
    except NetworkUnavailable as exc:
        console.print("  [red]failed[/red]: network")
        return DownloadResult(name, ok=False, error=str(exc), network_error=True, entry=entry)
    except Exception as exc:  # one dataset's failure must not stop the others; the message names it
        console.print("  [red]failed[/red]")
        return DownloadResult(name, ok=False, error=f"{type(exc).__name__}: {exc}", entry=entry)
    rows = [item["rows"] for item in files]
    total = sum(rows) if None not in rows else None
    record = {
        "name": name,
        "description": entry.description,
        "language": entry.language,
        "licence": entry.licence,
        "format": entry.format,
        "source": entry.source.model_dump(mode="json", exclude_none=True),
        "revision": fetched[0].commit if fetched else None,
        "max_samples": max_samples,
        "files": files,
        "rows": total,
        "downloaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "qwentune_version": __version__,
    }
    atomic_write(folder / "source.json", json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    shown_rows = f"{total:,} rows" if total is not None else "rows unknown"
    console.print(f"  [green]ok[/green] {folder}/  ({len(files)} file{'s' if len(files) != 1 else ''}, {shown_rows})")
    return DownloadResult(name, ok=True, output_dir=folder, files=files, rows=total, entry=entry)


def _say_if_moved(folder: Path, entry: DatasetEntry, fetched: list[FetchedFile]) -> None:
    """A hub revision that now resolves to another commit than last time: a new version, said aloud."""
    try:
        previous = json.loads((folder / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    old, new = previous_commit(previous) if isinstance(previous, dict) else None, fetched[0].commit if fetched else None
    if entry.source.kind == "hub" and old and new and old != new:
        console.print(f"  {entry.source.hub} is now at commit {new[:12]} (was {old[:12]}): its files are replaced")


def download_datasets(
    names: list[str],
    raw_dir: str | Path = RAW_DATA_DIR,
    *,
    max_samples: int | None = None,
    offline: bool = False,
    registry: Registry | None = None,
    fallback_to_demo: bool = False,
) -> list[DownloadResult]:
    """Fetch each dataset (a registered name, a local path or a hub id) into raw_dir/<name>/.

    Failures come back as results with ok=False rather than exceptions, so one bad dataset does
    not cost the others; an unknown name raises RegistryError before anything is fetched.
    offline: touch no network (caches and local files only); with no names, the demo data.
    fallback_to_demo: when the network brought none of the datasets, place the demo data instead.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1 (got {max_samples})")
    registry = registry or load_registry()
    names = list(names) or ([DEMO_DATASET] if offline else [])
    if not names:
        raise UsageError("no dataset named: give --datasets NAME [NAME ...], --all, or --list to see them")
    targets = [registry.resolve(name) for name in names]
    raw_dir, network = Path(raw_dir), Network(offline)
    results = [_download_one(name, entry, raw_dir, network, max_samples) for name, entry in targets]
    if fallback_to_demo and all(result.network_error for result in results):
        demo = _download_one(DEMO_DATASET, registry.entries[DEMO_DATASET], raw_dir, network, max_samples)
        demo.fallback = True
        results.append(demo)
    if any(result.name == DEMO_DATASET and result.ok for result in results):
        notice(
            f"using qwentune's built-in demo data ({raw_dir / DEMO_DATASET}/): a small sample to try the "
            "pipeline end to end offline, not a real training set"
        )
    return results


# --- the command -------------------------------------------------------------------------------------


def explain_failures(failures: list[DownloadResult], raw_dir: Path, *, offline: bool = False,
                     fell_back: bool = False) -> str:
    """One message for everything that failed: what, why, and what to do about it."""
    lines = []
    unreachable = [result for result in failures if result.network_error]
    if unreachable:
        reasons = sorted({result.error for result in unreachable})
        lines.append(f"Could not download {', '.join(r.name for r in unreachable)}: {'; '.join(reasons)}.")
        lines.append("To get the real data instead, either:" if fell_back else "To go on, either:")
        if offline:
            lines.append("  - run again without --offline")
        elif any(result.entry.source.kind == "hub" for result in unreachable):
            lines.append(f"  - use a Hugging Face mirror: export HF_ENDPOINT={hub.MIRROR_EXAMPLE}, then run it again")
        lines.append(f"  - or put the files in {raw_dir}/<name>/ yourself:")
        for result in unreachable:
            lines.append(f"      {result.name}: {_where_to_get(result.entry)}")
        if not (offline or fell_back):
            lines.append("  - or run with --offline to use the built-in demo data")
    for result in failures:
        if not result.network_error:
            lines.append(f"Could not download {result.name}: {result.error}")
    return "\n".join(lines)


def _where_to_get(entry: DatasetEntry) -> str:
    source = entry.source
    if source.kind == "hub":
        files = ", ".join(spec.path for spec in source.files or EVERY_DATA_FILE)
        return f"{files} from https://huggingface.co/datasets/{source.hub}"
    return str(source.url or source.local)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--datasets", nargs="+", metavar="NAME",
                       help="registered names (see --list), local files or folders, or hub ids owner/name[@revision]")
    which.add_argument("--all", action="store_true", help="every registered dataset (not the demo data)")
    which.add_argument("--list", action="store_true", help="show the registered datasets and exit")
    parser.add_argument("--output_dir", type=Path, default=RAW_DATA_DIR, help="where data/raw/<name>/ folders go")
    parser.add_argument("--max_samples", type=_positive_int, default=None, metavar="N",
                        help="keep only the first N rows of each file")
    parser.add_argument("--offline", action="store_true",
                        help="no network: use cached downloads and local files; alone, copy the built-in demo data")
    parser.add_argument("--fallback_to_demo", action="store_true",
                        help="if the network brings none of the datasets, use the built-in demo data instead")
    parser.add_argument("--registry", type=Path, default=None,
                        help="extra dataset registry (YAML or JSON); data/datasets.yaml is read when present")


def run_cli(args: argparse.Namespace) -> int:
    registry = load_registry(*([args.registry] if args.registry else []))
    if not args.list:
        writable_folder(args.output_dir, "--output_dir")
    if args.list:
        console.print(registry_listing(registry, console.width))
        return 0
    names = registry.all_names() if args.all else args.datasets or []
    if not names and not args.offline:
        console.print(registry_listing(registry, console.width))
        raise UsageError("say which datasets to fetch: --datasets NAME [NAME ...], or --all (the registered ones are listed above)")
    results = download_datasets(
        names,
        args.output_dir,
        max_samples=args.max_samples,
        offline=args.offline,
        registry=registry,
        fallback_to_demo=args.fallback_to_demo or args.offline,
    )
    failures = [result for result in results if not result.ok]
    fell_back = any(result.fallback and result.ok for result in results)
    if failures:
        explanation = explain_failures(failures, args.output_dir, offline=args.offline, fell_back=fell_back)
        if not fell_back:
            raise RunFailed(explanation)
        console.print(explanation, style="yellow", soft_wrap=True)
    return 0
