"""Dataset registry: the datasets `download` knows by name, where each comes from, its format.

Entries are read, in order, from the built-in `datasets.yaml` beside this module, the project's
`data/datasets.yaml` when it exists, then any `--registry FILE` (YAML or JSON). An entry in a
later file replaces the one of the same name whole, so a user can add datasets or re-point
`alpaca_gpt4_data` at a local copy without touching code. See `datasets.yaml` for the keys.

A name that is not registered may still be a local file or folder, or a Hugging Face dataset
id (`owner/name`); `Registry.resolve` turns those into entries on the fly.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, model_validator
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from qwentune.config.base import ConfigError, StrictModel, format_validation_error
from qwentune.paths import RAW_DATA_DIR

BUILTIN_REGISTRY = Path(__file__).with_name("datasets.yaml")
# Read when present, relative to the project folder (the working directory), like data/raw.
PROJECT_REGISTRY = RAW_DATA_DIR.parent / "datasets.yaml"
DEMO_DATASET = "demo"

DatasetFormat = Literal[
    "alpaca", "sharegpt", "openai", "oasst", "belle", "firefly", "canonical",
    # preference data (data/formats/preference.py)
    "pairwise", "sharegpt_pairwise", "messages_pairwise", "hh_rlhf", "kto",
]
SOURCE_KINDS = ("hub", "url", "local")

# Names become folder names under data/raw, so keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class RegistryError(ConfigError):
    """A registry file or dataset name that cannot be used; the message says what to change."""


class FileSpec(StrictModel):
    """One file of a dataset: an exact path or a glob pattern, optionally with its own format."""

    path: str = Field(min_length=1)
    format: DatasetFormat | None = None


def _short_file_spec(value: object) -> object:
    # `- data.json` is short for `- {path: data.json}`.
    return {"path": value} if isinstance(value, str) else value


class Source(StrictModel):
    """Where a dataset's files come from: exactly one of `hub`, `url`, `local`."""

    hub: str | None = None
    url: str | None = None
    local: Path | None = None
    revision: str | None = None
    # None: every data file the repo or folder holds.
    files: list[Annotated[FileSpec, BeforeValidator(_short_file_spec)]] | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> Source:
        given = [kind for kind in SOURCE_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"'source' needs exactly one of 'hub', 'url', 'local' (got {given or 'none'})")
        if self.revision is not None and self.hub is None:
            raise ValueError("'source.revision' only applies to a 'hub' source")
        if self.hub is not None and not _HUB_ID.fullmatch(self.hub):
            raise ValueError(f"'source.hub' must be a dataset id like 'owner/name' (got {self.hub!r})")
        if self.url is not None:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"'source.url' must start with http:// or https:// (got {self.url!r})")
            if self.files is not None:
                raise ValueError("a 'source.url' is one file: give each URL its own entry instead of 'files'")
        if self.files is not None and not self.files:
            raise ValueError("'source.files' is empty: list files, or leave it out to take every data file")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in SOURCE_KINDS if getattr(self, kind) is not None)

    def describe(self) -> str:
        if self.kind == "hub":
            revision = f"@{self.revision}" if self.revision else ""
            return f"hub:{self.hub}{revision}"
        if self.local is not None:
            # Shown relative to the project when inside it: the table stays narrow.
            local = self.local.resolve()
            return f"local:{local.relative_to(Path.cwd()) if local.is_relative_to(Path.cwd()) else local}"
        return f"url:{self.url}"


class DatasetEntry(StrictModel):
    description: str = ""
    size: int | None = Field(default=None, ge=0)  # rows
    language: str = ""
    licence: str = Field(default="unknown", validation_alias=AliasChoices("licence", "license"))
    # None: preprocessing detects the format of each file.
    format: DatasetFormat | None = None
    source: Source
    include_in_all: bool = True

    def file_format(self, spec: FileSpec) -> str | None:
        return spec.format or self.format


@dataclass(frozen=True)
class Registry:
    entries: dict[str, DatasetEntry]

    def all_names(self) -> list[str]:
        """What `--all` fetches: every entry that does not opt out (the demo data does)."""
        return [name for name, entry in self.entries.items() if entry.include_in_all]

    def resolve(self, name: str) -> tuple[str, DatasetEntry]:
        """(folder name, entry) for a registered name, a local path, or a hub dataset id."""
        if name in self.entries:
            return name, self.entries[name]
        path = Path(name).expanduser()
        if path.exists():
            folder = re.sub(r"[^\w.-]", "_", path.name.split(".")[0]) or "local"
            return folder, DatasetEntry(description=f"local {path}", source=Source(local=path.resolve()))
        # owner/name, or owner/name@revision (a branch, tag or commit) to pin one.
        hub_id, _, revision = name.partition("@")
        if _HUB_ID.fullmatch(hub_id) and (revision or not name.endswith("@")):
            source = Source(hub=hub_id, revision=revision or None)
            return hub_id.replace("/", "__"), DatasetEntry(description=f"hub dataset {name}", source=source)
        close = difflib.get_close_matches(name, list(self.entries), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise RegistryError(
            f"unknown dataset '{name}'.{hint} Known: {', '.join(self.entries)}. "
            "A local file or folder, or a Hugging Face dataset id (owner/name), also works; "
            "see --list, or add an entry with --registry FILE."
        )


def _read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise RegistryError(f"registry file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"registry file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RegistryError(f"registry file {path} cannot be parsed: {exc}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise RegistryError(f"registry file {path} must map dataset names to entries at the top level")
    return data


def _anchor_local_path(entry: DatasetEntry, registry_file: Path) -> DatasetEntry:
    """Relative `local:` paths start at the registry file's folder, wherever the command runs."""
    local = entry.source.local
    if local is None:
        return entry
    local = local.expanduser()
    if not local.is_absolute():
        local = (registry_file.parent / local).resolve()
    return entry.model_copy(update={"source": entry.source.model_copy(update={"local": local})})


def read_registry_file(path: str | Path) -> dict[str, DatasetEntry]:
    """Validate every entry of one file; all problems are reported together, each under its name."""
    path = Path(path)
    entries: dict[str, DatasetEntry] = {}
    problems: list[str] = []
    for name, data in _read_mapping(path).items():
        name = str(name)
        if not _NAME.fullmatch(name):
            problems.append(f"dataset name '{name}' in {path}: it names a folder, so use letters, digits, _ - .")
            continue
        if not isinstance(data, dict):
            problems.append(f"dataset '{name}' in {path}: expected a mapping with at least 'source'")
            continue
        try:
            entries[name] = _anchor_local_path(DatasetEntry.model_validate(data), path)
        except ValidationError as exc:
            where = f"in dataset registry {path}, entry '{name}'"
            problems.append(str(format_validation_error(exc, DatasetEntry, where)))
    if problems:
        raise RegistryError("\n".join(problems))
    return entries


def load_registry(*extra_files: str | Path) -> Registry:
    files = [BUILTIN_REGISTRY]
    if PROJECT_REGISTRY.is_file():
        files.append(PROJECT_REGISTRY)
    files.extend(Path(file) for file in extra_files)
    entries: dict[str, DatasetEntry] = {}
    for file in files:
        entries.update(read_registry_file(file))
    return Registry(entries)


def _count(rows: int | None) -> str:
    if rows is None:
        return "-"
    for limit, suffix in ((1_000_000, "M"), (1_000, "K")):
        if rows >= limit:
            return f"{rows / limit:.3g}{suffix}"
    return str(rows)


def _formats(entry: DatasetEntry) -> str:
    per_file = {spec.format for spec in entry.source.files or [] if spec.format}
    found = sorted(per_file | ({entry.format} if entry.format else set()))
    return ", ".join(found) or "auto"


LISTING_TITLE = "Datasets (python data/download_data.py --datasets NAME ...)"
# Below this many columns the seven-column table wraps every cell into slivers: list instead.
TABLE_MIN_WIDTH = 120


def registry_listing(registry: Registry, width: int) -> RenderableType:
    """--list: a table in a wide terminal, else one block per dataset (readable at any width, and in logs)."""
    if width >= TABLE_MIN_WIDTH:
        return registry_table(registry)
    blocks: list[RenderableType] = [Text(LISTING_TITLE, style="italic")]
    for name, entry in registry.entries.items():
        size = f"{_count(entry.size)} rows" if entry.size is not None else "size not listed"
        facts = f"{_formats(entry)}, {entry.language}, {size}, licence: {entry.licence}"
        blocks.append(Text.assemble("\n", (name, "bold"), f"  {entry.description}"))
        blocks.append(Text(f"  {facts}\n  source: {entry.source.describe()}"))
    return Group(*blocks)


def registry_table(registry: Registry) -> Table:
    table = Table(title=LISTING_TITLE, box=box.SIMPLE_HEAD)
    # Names are what users type and the short columns are single words: never cut those;
    # in a narrow terminal the long columns wrap instead.
    table.add_column("name", no_wrap=True, min_width=max(map(len, registry.entries), default=4))
    table.add_column("description", overflow="fold", ratio=3)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("language", no_wrap=True)
    table.add_column("licence", overflow="fold", ratio=2)
    table.add_column("source", overflow="fold", ratio=2)
    table.add_column("format", overflow="fold")
    for name, entry in registry.entries.items():
        table.add_row(
            name,
            entry.description,
            _count(entry.size),
            entry.language,
            entry.licence,
            entry.source.describe(),
            _formats(entry),
        )
    return table
