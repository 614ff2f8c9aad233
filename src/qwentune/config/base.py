"""Shared machinery of every config schema: strict models, YAML loading, overrides, errors.

A config problem must stop the run before any work starts and say which key is wrong and
what is allowed. pydantic finds the problems; this module turns its errors into sentences
with the dotted key path and, for a typo, the nearest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from qwentune.errors import UsageError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(UsageError, ValueError):
    """A config file or override that cannot be used; the message says what to change (exit 2)."""


class StrictModel(BaseModel):
    """Base of every schema: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _model_at(schema: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    """The nested schema that owns the key at `path` (to list its valid keys)."""
    current: Any = schema
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        # Optional[Model] / Model | None
        for arg in getattr(current, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
                break
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe(error: dict, schema: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(schema, loc[:-1])
        valid = sorted(owner.model_fields) if owner else []
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        message = f"unknown key '{key}'"
        if hint:
            message += f" (did you mean '{'.'.join([*map(str, loc[:-1]), hint[0]])}'?)"
        if valid:
            message += f"; valid keys here: {', '.join(valid)}"
        return message
    if kind == "missing":
        return f"missing required key '{key}'"
    if kind == "value_error":
        # Our own cross-key checks: their message already names the keys.
        message = error["msg"].removeprefix("Value error, ")
        return f"'{key}': {message}" if key and not isinstance(error.get("input"), dict) else message
    given = error.get("input")
    shown = repr(given) if not isinstance(given, dict) else "a mapping"
    return f"'{key}': {error['msg']} (got {shown})"


def format_validation_error(exc: ValidationError, schema: type[BaseModel], source: str) -> ConfigError:
    lines = [_describe(e, schema) for e in exc.errors()]
    return ConfigError(f"invalid config {source}:\n  - " + "\n  - ".join(lines))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.learning_rate=1e-4' -> (['training', 'learning_rate'], 1e-4).

    The value is parsed as YAML so numbers, booleans, lists and null work as in the file.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML 1.1 reads '1e-4' as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return parts, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Set each dotted key in `data` (a plain dict, before validation)."""
    for text in overrides or []:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    """The mapping in a config file; every way the file can be unusable is a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass the YAML file inside it")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text: byte {exc.start} (line {line}) is {exc.object[exc.start:exc.start + 1]!r}",
            advice="save the file as UTF-8",
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        # An empty file is more likely a mistake (a truncated copy, the wrong file) than a wish for every default.
        raise ConfigError(
            f"config file {path} is empty (no keys)", advice="write the settings in it, or write '{}' to take every default"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections at the top level")
    return data


def validate(schema: type[ModelT], data: dict, source: str = "") -> ModelT:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, schema, source) from None


def load_config(schema: type[ModelT], path: str | Path | None, overrides: list[str] | None = None) -> ModelT:
    """Read `path` (or start empty), apply dotted overrides, validate against `schema`."""
    data = read_yaml(path) if path else {}
    apply_overrides(data, overrides)
    return validate(schema, data, str(path) if path else "(defaults)")
