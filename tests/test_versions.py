"""Supported dependency ranges: one place (pyproject.toml), the floor set that tests them, the status report."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from qwentune.quickstart import _dependency_lines
from qwentune.versions import DependencyVersion, dependency_versions

CONSTRAINTS_MIN = Path(__file__).parent / "constraints-min.txt"


def floor_pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS_MIN.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = Version(version)
    return pins


def extras_under_test() -> set[str]:
    """The extras the test command installs (run_tests.sh: `-e ".[dev,quant,deepspeed]"`)."""
    script = (Path(__file__).parent / "run_tests.sh").read_text(encoding="utf-8")
    return set(re.search(r'-e "\.\[([a-z,]+)\]"', script).group(1).split(","))


def test_the_floor_set_pins_exactly_each_declared_lower_bound():
    pins = floor_pins()
    floors = {}
    for row in dependency_versions():  # test tools (dev) are not pinned
        lower = [Version(s.version) for s in Requirement(row.name + row.supported).specifier if s.operator == ">="]
        # torch: the one tested CPU wheel, pinned by run_tests.sh; extras the suite does not install are untested.
        if lower and row.name != "torch" and (row.extra is None or row.extra in extras_under_test()):
            floors[canonicalize_name(row.name)] = lower[0]
    assert {"bitsandbytes", "deepspeed"} <= floors.keys()
    assert pins == floors  # a floor raised in pyproject.toml but not tested (or the reverse) fails here


def test_in_range_follows_the_declared_specifier():
    assert DependencyVersion("transformers", ">=5.2,<6", "5.6.0", None).in_range is True
    assert DependencyVersion("transformers", ">=5.2,<6", "5.1.0", None).in_range is False
    assert DependencyVersion("transformers", ">=5.2,<6", "6.0.0", None).in_range is False
    assert DependencyVersion("deepspeed", ">=0.15", None, "deepspeed").in_range is None
    assert DependencyVersion("safetensors", "", "0.8.0", None).in_range is True


def test_every_declared_runtime_dependency_is_reported_with_its_installed_version():
    rows = {row.name: row for row in dependency_versions()}
    assert "pytest" not in rows  # test tools (the dev extra) are not runtime dependencies
    assert rows["bitsandbytes"].extra == "quant" and rows["transformers"].extra is None
    assert rows["transformers"].installed == importlib.metadata.version("transformers")
    assert rows["transformers"].in_range  # the suite runs on a supported release


def test_status_lines_show_version_range_and_the_logits_feature():
    lines = dict(_dependency_lines())
    transformers = lines["transformers"]
    assert transformers.startswith(importlib.metadata.version("transformers"))
    assert "supported >=" in transformers and "logits" in transformers
    assert set(lines) == {row.name for row in dependency_versions()}
