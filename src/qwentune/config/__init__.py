"""Typed schemas of qwentune's YAML files, with loading, dotted overrides and clear errors."""

from qwentune.config.base import ConfigError, StrictModel, apply_overrides, load_config

__all__ = ["ConfigError", "StrictModel", "apply_overrides", "load_config"]
