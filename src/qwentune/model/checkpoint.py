"""What a training output holds for inference, and how to find and load it again.

A training output folder carries the weights (adapter or full), the tokenizer with its chat
template, a generation config whose end-of-sequence ids include the end-of-turn token (so
the tuned model stops), and `qwentune_meta.json` (base model, method, data, config).
Checkpoints are `checkpoint-N` folders; one is complete once `COMPLETE_MARKER` is written,
after everything else, so a checkpoint cut short by a killed process is never picked.
"""

from __future__ import annotations

import json
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from transformers import GenerationConfig

from qwentune import __version__
from qwentune.data.tokenize import end_of_turn_token
from qwentune.errors import RunFailed, UsageError
from qwentune.fsutil import atomic_write

META_FILE = "qwentune_meta.json"
COMPLETE_MARKER = "qwentune_complete"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


class NoModelError(UsageError, FileNotFoundError):
    """The path the user named holds neither a model, an adapter nor a complete checkpoint (exit 2)."""


def holds_model(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders that finished saving, oldest first."""
    found = []
    for child in output_dir.glob("checkpoint-*") if output_dir.is_dir() else []:
        match = _CHECKPOINT_NAME.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = complete_checkpoints(Path(output_dir))
    return checkpoints[-1] if checkpoints else None


class DamagedCheckpoint(RunFailed):
    """A checkpoint marked complete whose files cannot be read back (exit 1); the advice lists the others."""


def unreadable_file(folder: Path) -> tuple[Path, str] | None:
    """The first file of a checkpoint folder that cannot be read back, and why; None when all can.

    torch files (.pt, .pth, .bin: zip archives with a CRC per member) are read once through
    testzip, which catches a changed byte that torch.load would load silently; safetensors
    files get their header and length checked, JSON files are parsed.
    """
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        reason = _unreadable(path)
        if reason:
            return path, reason
    return None


def _unreadable(path: Path) -> str | None:
    try:
        if path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path) as archive:
                member = archive.testzip()
            return f"its part '{member}' fails its CRC check" if member else None
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, "pt") as handle:
                handle.keys()
    except Exception as exc:  # OSError, BadZipFile, JSON/UTF-8 ValueErrors, SafetensorError (no narrower common base)
        return f"{type(exc).__name__}: {exc}"
    return None


def check_checkpoint(folder: Path) -> None:
    """Raise DamagedCheckpoint naming the file that cannot be read and the checkpoints to resume from instead."""
    found = unreadable_file(folder)
    if found is None:
        return
    path, reason = found
    others = [c for c in complete_checkpoints(folder.parent) if c.resolve() != folder.resolve()]
    if others:
        advice = (
            f"resume from an earlier checkpoint instead: --resume_from_checkpoint {others[-1]} "
            f"(complete checkpoints in {folder.parent}: {', '.join(c.name for c in others)})"
        )
    else:
        advice = f"there is no other complete checkpoint in {folder.parent}: train again without --resume_from_checkpoint"
    raise DamagedCheckpoint(
        f"checkpoint {folder} is damaged: {path.relative_to(folder)} cannot be read ({reason})", advice=advice
    )


def resolve_model_dir(path: str | Path) -> Path | str:
    """A training output folder -> its final model, else its latest complete checkpoint.

    A path that is not a folder is returned unchanged (a hub id or an embedded name).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        if folder.exists():
            raise NoModelError(f"model path '{path}' is a file; pass the folder that holds the model")
        # Hub ids ("Qwen/Qwen2.5-0.5B-Instruct") may contain dots too: only these prefixes surely mean a folder.
        if str(path).startswith((".", "/", "~")):
            raise NoModelError(f"model path '{path}' does not exist")
        return str(path)
    if holds_model(folder):
        return folder
    latest = latest_checkpoint(folder)
    if latest is not None:
        return latest
    raise NoModelError(
        f"'{folder}' holds no model: no weights (model.safetensors / adapter_model.safetensors) and no complete "
        "checkpoint-N folder. Train first (python scripts/train.py --config config/training_config.yaml) "
        "or point --model_path at a model folder, hub id or embedded:demo-model."
    )


def read_meta(folder: Path) -> dict:
    """qwentune_meta.json of a model folder or of the training output above a checkpoint."""
    for candidate in (folder / META_FILE, folder.parent / META_FILE):
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    return {}


def thinking_default(meta: dict) -> bool:
    """Whether the model thinks unless told otherwise: as it was trained (`data.thinking: on`), else not.

    Data without reasoning (and mixed data under `auto`) trains Qwen3's non-thinking form, so such
    a model answers without a think block by default; `enable_thinking` per call still switches it.
    An explicit `enable_thinking` in the metadata wins (an export keeps the value it was given).
    """
    if isinstance(meta.get("enable_thinking"), bool):
        return meta["enable_thinking"]
    data = (meta.get("config") or {}).get("data") or {}
    return data.get("thinking") == "on"


def base_model_of(folder: Path) -> str | None:
    """The base model an adapter folder was trained from (our metadata first: it keeps embedded names)."""
    meta = read_meta(folder)
    if meta.get("base_model"):
        return meta["base_model"]
    adapter_config = folder / ADAPTER_CONFIG
    if adapter_config.is_file():
        return json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return None


def chat_generation_config(model, tokenizer) -> GenerationConfig:
    """The model's generation config with end-of-turn among the stop ids and a pad id set."""
    config = GenerationConfig.from_model_config(model.config) if model.generation_config is None else model.generation_config
    config = GenerationConfig.from_dict(config.to_dict())
    stop_ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    for token in (end_of_turn_token(tokenizer), tokenizer.eos_token):
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is not None and token_id not in stop_ids:
            stop_ids.append(token_id)
    config.eos_token_id = [i for i in stop_ids if i is not None]
    config.pad_token_id = tokenizer.pad_token_id
    return config


def save_inference_files(folder: Path, model, tokenizer, meta: dict) -> None:
    """Everything inference needs beside the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    chat_generation_config(model, tokenizer).save_pretrained(folder)
    record = {
        "qwentune_version": __version__,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    atomic_write(folder / META_FILE, json.dumps(record, ensure_ascii=False, indent=2))


def mark_complete(folder: Path) -> None:
    atomic_write(folder / COMPLETE_MARKER, "ok\n")
