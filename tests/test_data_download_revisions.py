"""Hub revisions: the resolved commit is recorded, a revision can be pinned, and a re-download of the
same commit must reproduce the recorded sha256 (a fake hub whose repo has several commits)."""

from __future__ import annotations

import json
import re
import shutil
from urllib.parse import unquote, urlsplit

import pytest
from test_data_download import FakeHub, _sha256, _source_json, run_door

REPO = "someone/versioned"
MAIN_1, MAIN_2, V1 = "1" * 40, "2" * 40, "a" * 40


class VersionedHub(FakeHub):
    """One repo whose revisions (a branch, a tag, or a commit id) resolve to commits with their own files."""

    def __init__(self):
        super().__init__()
        self.repos[REPO] = {}
        self.refs = {"main": MAIN_1, "v1": V1}
        self.commits = {MAIN_1: {"train.jsonl": b'{"q": "main 1"}\n'}, V1: {"train.jsonl": b'{"q": "tag v1"}\n'}}

    def _commit(self, revision: str) -> str | None:
        return self.refs.get(revision, revision if revision in self.commits else None)

    def _answer(self, request, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        match = re.fullmatch(rf"/api/datasets/{REPO}/(revision|tree)/([^/]+)(?:/.*)?", path) or re.fullmatch(
            rf"/datasets/{REPO}/(resolve)/([^/]+)/(.+)", path
        )
        if not match:
            return super()._answer(request, body)
        self.requests.append((request.command, path, request.headers.get("Range")))
        commit = self._commit(match[2])
        if commit is None:
            return self._error(request, 404, "RevisionNotFound")
        files = self.commits[commit]
        if match[1] == "revision":
            return self._json(request, REPO, {"id": REPO, "sha": commit}, body)
        if match[1] == "tree":
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": _sha256(data)[:40]}
                for name, data in files.items()
            ]
            return self._json(request, REPO, tree, body)
        data = files[match[3]]
        return self._file(request, path, data, body, {"X-Repo-Commit": commit, "ETag": f'"{_sha256(data)}"'})


@pytest.fixture
def hub():
    with VersionedHub() as server:
        yield server


def test_a_pinned_revision_is_fetched_and_the_commit_recorded(tmp_path, hub):
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"pinned:\n  format: alpaca\n  source:\n    hub: {REPO}\n    revision: v1\n", encoding="utf-8")
    done = run_door(tmp_path, hub.url, "--registry", str(registry), "--datasets", "pinned", f"{REPO}@{V1}", REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    pinned = _source_json(tmp_path / "raw" / "pinned")
    assert pinned["revision"] == V1 and pinned["source"] == {"hub": REPO, "revision": "v1"}
    assert (tmp_path / "raw" / "pinned" / "train.jsonl").read_bytes() == b'{"q": "tag v1"}\n'
    by_commit = _source_json(tmp_path / "raw" / "someone__versioned")
    # The last of the two runs into someone__versioned: the unpinned one, at main's commit.
    assert by_commit["revision"] == MAIN_1 and by_commit["files"][0]["origin"].endswith(f"/blob/{MAIN_1}/train.jsonl")


def test_a_redownload_that_differs_for_the_same_commit_is_refused(tmp_path, hub):
    assert run_door(tmp_path, hub.url, "--datasets", REPO).returncode == 0
    folder = tmp_path / "raw" / "someone__versioned"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    hub.commits[MAIN_1]["train.jsonl"] = b'{"q": "tampered"}\n'  # same commit, other bytes
    shutil.rmtree(tmp_path / "hf_home")  # no cached copy: the file really comes again
    done = run_door(tmp_path, hub.url, "--datasets", REPO)
    assert done.returncode == 1
    message = " ".join((done.stdout + done.stderr).split())
    assert "train.jsonl: the new download has sha256" in message and "the file was not replaced" in message
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_a_branch_that_moved_is_a_new_version_and_says_so(tmp_path, hub):
    assert run_door(tmp_path, hub.url, "--datasets", REPO).returncode == 0
    hub.commits[MAIN_2] = {"train.jsonl": b'{"q": "main 2"}\n'}
    hub.refs["main"] = MAIN_2
    done = run_door(tmp_path, hub.url, "--datasets", REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"is now at commit {MAIN_2[:12]} (was {MAIN_1[:12]})" in " ".join(done.stdout.split())
    folder = tmp_path / "raw" / "someone__versioned"
    assert (folder / "train.jsonl").read_bytes() == b'{"q": "main 2"}\n'
    record = json.loads((folder / "source.json").read_text())
    assert record["revision"] == MAIN_2 and record["files"][0]["sha256"] == _sha256(b'{"q": "main 2"}\n')


def test_a_url_that_now_serves_other_bytes_is_refused(tmp_path, hub):
    hub.plain["data.jsonl"] = b'{"instruction": "q", "output": "a"}\n'
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"web:\n  source:\n    url: {hub.url}/files/data.jsonl\n", encoding="utf-8")
    assert run_door(tmp_path, hub.url, "--registry", str(registry), "--datasets", "web").returncode == 0
    placed = tmp_path / "raw" / "web" / "data.jsonl"
    hub.plain["data.jsonl"] = b'{"instruction": "q", "output": "changed"}\n'
    shutil.rmtree(tmp_path / "qwentune_cache")  # no cached copy: fetched again
    done = run_door(tmp_path, hub.url, "--registry", str(registry), "--datasets", "web")
    assert done.returncode == 1
    assert "for the same URL; the file was not replaced" in " ".join((done.stdout + done.stderr).split())
    assert placed.read_bytes() == b'{"instruction": "q", "output": "a"}\n'
    # --max_samples changes what is placed, so it is a different download: no check, no error.
    assert (
        run_door(tmp_path, hub.url, "--registry", str(registry), "--datasets", "web", "--max_samples", "1").returncode
        == 0
    )
