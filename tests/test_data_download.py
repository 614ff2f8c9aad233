"""The download stage against a local server that answers the way the Hugging Face hub does.

Hub downloads run the guide's door (`python data/download_data.py ...`) in a subprocess: HF_HOME
is read by huggingface_hub at import, so a fresh process is how a user's own settings reach it.
Everything that never touches the hub runs in-process through run_cli.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import constants as hf_constants

from qwentune.cli import main
from qwentune.data import download
from qwentune.data.registry import DEMO_DATASET, load_registry
from qwentune.paths import DEMO_DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
DOOR = ROOT / "data" / "download_data.py"
COMMIT = "4f3c2b1a0f9e8d7c6b5a4f3c2b1a0f9e8d7c6b5a"
ALPACA_FILE = "data/train-00000-of-00001-6ef3991c06080e14.parquet"
BELLE_FILE = "Belle_open_source_0.5M.json"
ZH_FILE = "alpaca_gpt4_data_zh.json"


class FakeHub:
    """Serves dataset repos like the hub: repo info, file tree, and /resolve with Range support.

    A path in `drop_once` is cut off halfway the first time it is fetched, as a broken network would.
    """

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.plain: dict[str, bytes] = {}  # /files/<name>: an ordinary web server's file
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        return Handler

    def _answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append((request.command, path, request.headers.get("Range")))
        if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/revision/[^/]+", path):
            return self._json(request, match[1], {"id": match[1], "sha": COMMIT}, body)
        if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/[^/]+", path):
            files = self.repos.get(match[1], {})
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": _sha1(data)} for name, data in files.items()
            ]
            return self._json(request, match[1], tree, body)
        if match := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            data = self.repos.get(match[1], {}).get(match[2])
            if data is None:
                return self._error(request, 404, "EntryNotFound")
            return self._file(request, path, data, body, {"X-Repo-Commit": COMMIT, "ETag": f'"{_sha256(data)}"'})
        if path.startswith("/files/") and path[len("/files/"):] in self.plain:
            return self._file(request, path, self.plain[path[len("/files/"):]], body, {})
        return self._error(request, 404, "RepoNotFound")

    def _json(self, request, repo: str, payload, body: bool) -> None:
        if repo not in self.repos:
            return self._error(request, 404, "RepoNotFound")
        data = json.dumps(payload).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)

    def _error(self, request, status: int, code: str) -> None:
        request.send_response(status)
        request.send_header("X-Error-Code", code)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def _file(self, request, path: str, data: bytes, body: bool, headers: dict) -> None:
        start = 0
        if body and (wanted := re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range") or "")):
            start = int(wanted[1])
        request.send_response(206 if start else 200)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Accept-Ranges", "bytes")
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.send_header("Content-Length", str(len(data) - start))
        request.end_headers()
        if not body:
            return
        if path in self.drop_once:
            self.drop_once.discard(path)
            request.wfile.write(data[: len(data) // 2])
            request.wfile.flush()
            request.connection.shutdown(socket.SHUT_RDWR)  # the rest never comes
            request.close_connection = True
            return
        request.wfile.write(data[start:])

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _alpaca_rows(count: int, lang: str = "en") -> list[dict]:
    word = "问题" if lang == "zh" else "question"
    return [{"instruction": f"{word} {i}", "input": "", "output": f"answer {i}"} for i in range(count)]


def _belle_lines(count: int, padding: int = 0) -> bytes:
    """JSON lines under a .json name, as BELLE ships them."""
    lines = (
        json.dumps({"instruction": f"说明 {i} " + "内容" * padding, "input": "", "output": f"回答 {i}"},
                   ensure_ascii=False)
        for i in range(count)
    )
    return "".join(line + "\n" for line in lines).encode()


@pytest.fixture
def hub():
    with FakeHub() as server:
        server.repos["vicgalle/alpaca-gpt4"] = {ALPACA_FILE: _parquet(_alpaca_rows(30)), "README.md": b"# card\n"}
        server.repos["shibing624/alpaca-zh"] = {
            ZH_FILE: json.dumps(_alpaca_rows(12, "zh"), ensure_ascii=False, indent=2).encode()
        }
        server.repos["BelleGroup/train_0.5M_CN"] = {BELLE_FILE: _belle_lines(20)}
        server.repos["someone/mixed"] = {"train.jsonl": b'{"a": 1}\n{"a": 2}\n', "notes.txt": b"not data\n"}
        yield server


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run_door(tmp_path: Path, endpoint: str, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf_home"),
        QWENTUNE_CACHE=str(tmp_path / "qwentune_cache"),
        COLUMNS="200",
    )
    return subprocess.run(
        [sys.executable, str(DOOR), "--output_dir", str(tmp_path / "raw"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def run_in_process(*argv: str) -> int:
    return main(["download", *argv])


def _source_json(folder: Path) -> dict:
    return json.loads((folder / "source.json").read_text(encoding="utf-8"))


def _require_demo_data():
    files = [spec.path for spec in load_registry().entries[DEMO_DATASET].source.files]
    missing = [name for name in files if not (DEMO_DATA_DIR / name).is_file()]
    if missing:
        pytest.fail(f"the package's demo data is missing {missing} in {DEMO_DATA_DIR}")
    return files


# --- hub downloads ----------------------------------------------------------------------------------


def test_downloads_registered_and_hub_id_datasets_with_source_json(tmp_path, hub):
    done = run_door(tmp_path, hub.url, "--datasets", "alpaca_gpt4_data", "chinese_alpaca", "someone/mixed")
    assert done.returncode == 0, done.stdout + done.stderr

    alpaca = tmp_path / "raw" / "alpaca_gpt4_data"
    placed = alpaca / Path(ALPACA_FILE).name
    assert placed.read_bytes() == hub.repos["vicgalle/alpaca-gpt4"][ALPACA_FILE]
    assert placed.stat().st_nlink == 2  # a hard link to the Hugging Face cache's copy, not a second copy
    assert not (alpaca / "README.md").exists()  # only the files the registry names
    record = _source_json(alpaca)
    assert record["format"] == "alpaca" and record["rows"] == 30 and record["max_samples"] is None
    assert record["source"] == {"hub": "vicgalle/alpaca-gpt4", "files": [{"path": ALPACA_FILE}]}
    (file_record,) = record["files"]
    assert file_record["sha256"] == _sha256(placed.read_bytes())
    assert file_record["origin"] == f"{hub.url}/datasets/vicgalle/alpaca-gpt4/blob/{COMMIT}/{ALPACA_FILE}"

    assert _source_json(tmp_path / "raw" / "chinese_alpaca")["rows"] == 12
    # A hub id that is not registered: every data file of the repo, in a folder named after it.
    mixed = tmp_path / "raw" / "someone__mixed"
    assert sorted(path.name for path in mixed.iterdir()) == ["source.json", "train.jsonl"]
    assert _source_json(mixed)["format"] is None  # preprocessing detects it


def test_max_samples_writes_a_slice_of_each_kind_of_file(tmp_path, hub):
    names = ["alpaca_gpt4_data", "chinese_alpaca", "belle"]
    done = run_door(tmp_path, hub.url, "--datasets", *names, "--max_samples", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    raw = tmp_path / "raw"
    assert pq.read_table(raw / "alpaca_gpt4_data" / Path(ALPACA_FILE).name).num_rows == 5
    assert json.loads((raw / "chinese_alpaca" / ZH_FILE).read_text(encoding="utf-8")) == _alpaca_rows(5, "zh")
    belle_lines = (raw / "belle" / BELLE_FILE).read_bytes().splitlines(keepends=True)
    assert belle_lines == hub.repos["BelleGroup/train_0.5M_CN"][BELLE_FILE].splitlines(keepends=True)[:5]
    for name in ("alpaca_gpt4_data", "chinese_alpaca", "belle"):
        record = _source_json(raw / name)
        assert record["max_samples"] == 5 and record["rows"] == 5


def test_an_interrupted_transfer_resumes_with_a_range_request(tmp_path, hub):
    # huggingface_hub keeps what it received in 10 MiB blocks, so the file must outgrow one
    # block before the cut for the retry to ask for the rest rather than start over.
    original = _belle_lines(60_000, padding=100)
    assert len(original) // 2 > hf_constants.DOWNLOAD_CHUNK_SIZE
    hub.repos["BelleGroup/train_0.5M_CN"] = {BELLE_FILE: original}
    resolve_path = f"/datasets/BelleGroup/train_0.5M_CN/resolve/{COMMIT}/{BELLE_FILE}"
    hub.drop_once.add(resolve_path)

    done = run_door(tmp_path, hub.url, "--datasets", "belle")
    assert done.returncode == 0, done.stdout + done.stderr
    ranges = [range_ for method, path, range_ in hub.requests if method == "GET" and path == resolve_path]
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[1])[1])
    assert 0 < resumed_at <= len(original) // 2
    assert (tmp_path / "raw" / "belle" / BELLE_FILE).read_bytes() == original
    assert _source_json(tmp_path / "raw" / "belle")["rows"] == 60_000


def test_no_network_gives_one_clear_message_and_fails(tmp_path):
    done = run_door(tmp_path, _closed_port_url(), "--datasets", "alpaca_gpt4_data", "oasst1")
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "Traceback" not in output
    assert "Could not download alpaca_gpt4_data, oasst1" in output
    assert "could not be reached" in output
    assert "HF_ENDPOINT=https://hf-mirror.com" in output
    assert "--offline" in output
    assert "vicgalle/alpaca-gpt4" in output  # where to get the files by hand
    assert not (tmp_path / "raw" / "alpaca_gpt4_data" / "source.json").exists()


def test_fallback_to_demo_when_the_network_brings_nothing(tmp_path):
    demo_files = _require_demo_data()
    done = run_door(tmp_path, _closed_port_url(), "--datasets", "alpaca_gpt4_data", "--fallback_to_demo")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "demo data" in output
    placed = sorted(path.name for path in (tmp_path / "raw" / DEMO_DATASET).iterdir())
    assert placed == sorted([*demo_files, "source.json"])


# --- everything that stays local ------------------------------------------------------------------------


def test_offline_copies_the_demo_data(tmp_path, capsys):
    demo_files = _require_demo_data()
    assert run_in_process("--offline", "--output_dir", str(tmp_path)) == 0
    output = capsys.readouterr().out
    assert "demo data" in output
    for name in demo_files:
        assert (tmp_path / DEMO_DATASET / name).read_bytes() == (DEMO_DATA_DIR / name).read_bytes()
    record = _source_json(tmp_path / DEMO_DATASET)
    assert {item["path"]: item["format"] for item in record["files"]} == {
        "identity.json": "alpaca", "instructions_alpaca.json": "alpaca", "instructions_conversations.json": "sharegpt"
    }


@pytest.fixture
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich reads it per print: the table's cells stay whole


def test_list_shows_every_builtin_dataset(capsys, wide_terminal):
    assert run_in_process("--list") == 0
    output = capsys.readouterr().out
    for name in ("alpaca_gpt4_data", "oasst1", "chinese_alpaca", "belle", "firefly", "demo"):
        assert name in output
    assert "vicgalle/alpaca-gpt4" in output


def test_list_in_a_narrow_terminal_keeps_each_fact_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert run_in_process("--list") == 0
    lines = capsys.readouterr().out.splitlines()
    firefly = lines.index(next(line for line in lines if line.startswith("firefly ")))
    assert lines[firefly + 1].strip() == "firefly, zh, 1.65M rows, licence: not stated"
    assert lines[firefly + 2].strip() == "source: hub:YeungNLP/firefly-train-1.1M"


def test_builtin_demo_entry_points_at_the_package_demo_data():
    assert load_registry().entries[DEMO_DATASET].source.local == DEMO_DATA_DIR.resolve()
    assert DEMO_DATASET not in load_registry().all_names()


def test_a_user_registry_adds_a_local_file(tmp_path, capsys, wide_terminal):
    (tmp_path / "mine.jsonl").write_text('{"instruction": "hi", "input": "", "output": "hello"}\n' * 3)
    registry = tmp_path / "my_datasets.yaml"
    registry.write_text("mine:\n  description: my own data\n  format: alpaca\n  source: {local: mine.jsonl}\n")
    assert run_in_process("--registry", str(registry), "--list") == 0
    assert "my own data" in capsys.readouterr().out

    out = tmp_path / "raw"
    assert run_in_process("--registry", str(registry), "--datasets", "mine", "--output_dir", str(out)) == 0
    placed = out / "mine" / "mine.jsonl"
    assert placed.read_bytes() == (tmp_path / "mine.jsonl").read_bytes()
    assert not placed.samefile(tmp_path / "mine.jsonl")  # a copy: editing data/raw leaves the user's file alone
    record = _source_json(out / "mine")
    assert record["format"] == "alpaca" and record["rows"] == 3
    assert record["source"] == {"local": str((tmp_path / "mine.jsonl").resolve())}


def test_a_bad_registry_entry_is_named_with_what_to_fix(tmp_path, capsys):
    registry = tmp_path / "bad.yaml"
    registry.write_text(
        "good:\n  source: {url: https://example.com/a.jsonl}\n"
        "broken:\n  licnese: MIT\n  source: {hub: nope}\n"
    )
    assert run_in_process("--registry", str(registry), "--list") == 2
    output = capsys.readouterr().err
    assert "entry 'broken'" in output and "good" not in output
    assert "did you mean 'licence'" in output
    assert "'source.hub' must be a dataset id like 'owner/name'" in output


def test_an_unknown_name_suggests_the_close_one(tmp_path, capsys):
    assert run_in_process("--datasets", "alpaca_gpt4", "--output_dir", str(tmp_path)) == 2
    assert "Did you mean: alpaca_gpt4_data" in capsys.readouterr().err


def test_url_entry_resumes_a_partial_file_then_serves_it_from_the_cache(tmp_path, monkeypatch, hub):
    data = b'{"messages": [{"role": "user", "content": "hi"}]}\n' * 4
    hub.plain["extra.jsonl"] = data
    url = f"{hub.url}/files/extra.jsonl"
    monkeypatch.setenv("QWENTUNE_CACHE", str(tmp_path / "cache"))
    # What an interrupted earlier run leaves behind.
    partial = download.url_cache_path(url).with_name("extra.jsonl.part")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:70])
    registry = tmp_path / "urls.json"
    registry.write_text(json.dumps({"web": {"format": "openai", "source": {"url": url}}}))
    out = tmp_path / "raw"

    assert run_in_process("--registry", str(registry), "--datasets", "web", "--output_dir", str(out)) == 0
    assert ("GET", "/files/extra.jsonl", "bytes=70-") in hub.requests
    assert (out / "web" / "extra.jsonl").read_bytes() == data

    hub.requests.clear()
    assert run_in_process("--registry", str(registry), "--datasets", "web", "--offline",
                          "--output_dir", str(out)) == 0
    assert hub.requests == []
    assert _source_json(out / "web")["rows"] == 4


def test_a_registry_file_that_is_not_utf8_is_named(tmp_path, capsys):
    registry = tmp_path / "mine.yaml"
    registry.write_bytes("mine:\n  description: caf\xe9\n  source: {local: x.jsonl}\n".encode("latin-1"))
    assert run_in_process("--registry", str(registry), "--list") == 2
    assert f"registry file {registry} is not UTF-8 text" in capsys.readouterr().err
