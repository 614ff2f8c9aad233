"""Loading by hub id when the hub cannot be reached: a cached copy loads without asking again,
and an uncached one fails at once with what to do (instead of transformers' minute of retries)."""

import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from qwentune import hub
from qwentune.cli import main as cli_main

# Nothing listens on port 1: a connection there is refused at once.
UNREACHABLE = "http://127.0.0.1:1"
REPO_ID = "qwentune-test/tiny-qwen2"


@pytest.fixture(autouse=True)
def fresh_probe():
    hub._probe_once.cache_clear()
    yield
    hub._probe_once.cache_clear()


@pytest.fixture
def answering_server():
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fill_hub_cache(cache: Path, repo_id: str, files_from: Path) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, repo / "snapshots" / commit)


def test_local_folders_and_embedded_names_are_not_hub_ids(tiny_qwen2):
    assert not hub.is_hub_id(str(tiny_qwen2))
    assert not hub.is_hub_id("./results/checkpoints")
    assert not hub.is_hub_id("embedded:demo-model")
    assert hub.is_hub_id("Qwen/Qwen2.5-7B-Instruct") and hub.is_hub_id("gpt2")
    assert hub.from_pretrained_kwargs(str(tiny_qwen2)) == {}


def test_an_answering_endpoint_changes_nothing(monkeypatch, answering_server):
    monkeypatch.setenv("HF_ENDPOINT", answering_server)
    assert hub.from_pretrained_kwargs("nobody/uncached-model") == {}


def test_unreachable_and_uncached_fails_at_once_saying_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    started = time.monotonic()
    with pytest.raises(hub.ModelUnavailable) as caught:
        hub.from_pretrained_kwargs("nobody/uncached-model", "tokenizer")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "tokenizer 'nobody/uncached-model'" in message and UNREACHABLE in message
    for advice in ("HF_ENDPOINT", "hf download nobody/uncached-model", "embedded:demo-model"):
        assert advice in message


def test_unreachable_but_cached_loads_from_the_cache(tmp_path, tiny_qwen2):
    """A fresh process (the libraries read HF_HUB_CACHE at import) loads model and tokenizer by hub id."""
    cache = tmp_path / "hub-cache"
    fill_hub_cache(cache, REPO_ID, tiny_qwen2)
    script = (
        "from qwentune.data.tokenize import load_tokenizer\n"
        "from qwentune.model.loader import load_causal_lm\n"
        f"tokenizer = load_tokenizer({REPO_ID!r})\n"
        f"model = load_causal_lm({REPO_ID!r})\n"
        "print('LOADED', len(tokenizer), model.config.num_hidden_layers)\n"
    )
    environment = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": UNREACHABLE}
    environment.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED 151669 2" in result.stdout
    # One notice per load, and none of the hub client's retry lines.
    output = result.stdout + result.stderr
    assert output.count("cannot be reached") == 2 and "Retrying" not in output
    assert time.monotonic() - started < 60


def test_train_command_with_an_unreachable_model_exits_1_with_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"model_name_or_path": "nobody/uncached-model"},
                "data": {"train_file": str(tmp_path / "train.jsonl"), "validation_file": None},
                "training": {"output_dir": str(tmp_path / "out")},
            }
        )
    )
    (tmp_path / "train.jsonl").write_text("")
    # A model that cannot load exits 1 in every stage (as `infer` and `evaluate` do).
    assert cli_main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "nobody/uncached-model" in err and "HF_ENDPOINT" in err and "Traceback" not in err
