"""The supported range of each dependency, as the package declares it, against what is installed.

The ranges are written once, in pyproject.toml: a source checkout reads them there (the installed
metadata of an editable install lags until the next `pip install -e .`), an installed wheel reads
its own metadata. The floors are the releases `bash tests/run_tests.sh --min-deps` runs the suite on.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@dataclass(frozen=True)
class DependencyVersion:
    name: str
    supported: str  # the specifier, e.g. ">=5.0,<6"; "" for any version
    installed: str | None  # None: not installed
    extra: str | None  # the optional extra that brings it (quant, deepspeed, ...), None for a core dependency

    @property
    def in_range(self) -> bool | None:
        """None when it is not installed."""
        if self.installed is None:
            return None
        try:
            return Requirement(f"{self.name}{self.supported}").specifier.contains(Version(self.installed), prereleases=True)
        except InvalidVersion:
            return False


def declared_requirements() -> list[str]:
    """Requirement strings of the project, optional extras marked `; extra == "..."` as in metadata."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: only the installed metadata
        tomllib = None
    if tomllib is not None and PYPROJECT.is_file():
        project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
        extras = project.get("optional-dependencies", {})
        return [*project["dependencies"], *(f'{r}; extra == "{e}"' for e, rs in extras.items() for r in rs)]
    return importlib.metadata.requires("qwentune") or []


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def dependency_versions(skip_extras: tuple[str, ...] = ("dev", "bench")) -> list[DependencyVersion]:
    """Every declared dependency (test and benchmark tools left out), its supported range and installed version."""
    rows = []
    for line in declared_requirements():
        requirement = Requirement(line)
        named = re.search(r"extra\s*==\s*[\"']([^\"']+)", str(requirement.marker or ""))
        extra = named.group(1) if named else None
        if extra in skip_extras:
            continue
        # Lower bound first (">=5.0,<6"), as people write it.
        supported = ",".join(sorted(map(str, requirement.specifier), key=lambda spec: spec.startswith("<")))
        rows.append(DependencyVersion(requirement.name, supported, _installed(requirement.name), extra))
    return rows

