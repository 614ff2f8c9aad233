"""The preprocess output set: all or nothing, through errors and SIGKILLs of real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwentune.config.preprocess import PreprocessConfig
from qwentune.data.inputs import OUTPUT_FILES
from qwentune.data.preprocess import run_preprocess
from qwentune.fsutil import FAULT_ENV

FIXTURES = Path(__file__).parent / "fixtures" / "data"
LIGHT = ["--num_workers", "0", "--set", "show_example=false", "--set", "cleaning.too_short=false"]
LIGHT += ["--set", "cleaning.too_long=false"]


def make_inputs(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes((FIXTURES / name).read_bytes())
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def output_set(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUT_FILES}


def preprocess(raw: Path, out: Path, fault: str | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    command = [sys.executable, "-m", "qwentune.cli", "preprocess", "--input_dir", str(raw), "--output_dir", str(out)]
    return subprocess.Popen(
        command + LIGHT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def stage_folders(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.qwentune-stage-*"))


def test_a_failing_run_leaves_the_previous_set_byte_for_byte(tmp_path):
    raw = make_inputs(tmp_path / "raw", ["alpaca.json", "sharegpt.json"])
    out = tmp_path / "processed"
    config = dict(input_dir=raw, output_dir=out, show_example=False, num_workers=0)
    config["cleaning"] = {"too_short": False, "too_long": False}
    assert run_preprocess(PreprocessConfig(**config)).exit_code == 0
    (out / "notes.txt").write_text("mine\n")
    before = snapshot(out)
    assert before["train.jsonl"].count(b"\n") >= 3

    # A file that breaks off: an error, so nothing is published.
    (raw / "truncated.json").write_bytes((FIXTURES / "broken" / "truncated.json").read_bytes())
    report = run_preprocess(PreprocessConfig(**config))
    assert report.exit_code == 1 and report.written == []
    assert snapshot(out) == before

    # "no record was kept": every record rejected.
    (raw / "truncated.json").unlink()
    for path in raw.iterdir():
        path.write_text("".join(json.dumps({"instruction": f"q{i}", "output": ""}) + "\n" for i in range(5)))
    report = run_preprocess(PreprocessConfig(**config))
    assert [p.message for p in report.errors] == ["no record was kept"]
    assert snapshot(out) == before
    assert stage_folders(out) == [] and sorted(os.listdir(out)) == sorted([*OUTPUT_FILES, "notes.txt"])


def test_the_set_is_swapped_in_whole_and_keeps_other_files(tmp_path):
    raw = make_inputs(tmp_path / "raw", ["alpaca.json"])
    out = tmp_path / "processed"
    config = PreprocessConfig(
        input_dir=raw, output_dir=out, show_example=False, num_workers=0, cleaning={"too_short": False}
    )
    run_preprocess(config)
    (out / "notes.txt").write_text("mine\n")
    (out / "mine").mkdir()
    (out / "mine" / "kept.txt").write_text("deep\n")
    os.symlink("notes.txt", out / "link")
    inode = (out / "notes.txt").stat().st_ino
    make_inputs(tmp_path / "more", ["sharegpt.json"])
    (raw / "sharegpt.json").write_bytes((tmp_path / "more" / "sharegpt.json").read_bytes())
    report = run_preprocess(config)
    assert report.exit_code == 0 and report.atomic
    assert json.loads((out / "stats.json").read_text())["sources"].keys() == {"alpaca", "sharegpt"}
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "notes.txt").stat().st_ino == inode
    assert (out / "mine" / "kept.txt").read_text() == "deep\n"
    assert os.readlink(out / "link") == "notes.txt"
    assert stage_folders(out) == []


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ("preprocess:spooled", "old"),  # records spooled, outputs half written
        ("preprocess:staged", "old"),  # the whole new set staged, not yet swapped
        ("preprocess:linked", "old"),  # the user's file hard-linked into the staging folder too
        ("preprocess:swapped", "new"),  # swapped, the old set not yet removed
    ],
)
def test_sigkill_at_any_point_leaves_one_complete_set(tmp_path, point, expected):
    old_raw = make_inputs(tmp_path / "old", ["alpaca.json"])
    new_raw = make_inputs(tmp_path / "new", ["alpaca.json", "sharegpt.json", "openai.jsonl"])
    out = tmp_path / "processed"
    sets = {}
    for name, raw in (("new", new_raw), ("old", old_raw)):  # the folder ends holding the old set
        code, printed = finish(preprocess(raw, out))
        assert code == 0, printed
        sets[name] = output_set(out)
    assert sets["old"] != sets["new"]
    (out / "notes.txt").write_text("mine\n")

    code, _ = finish(preprocess(new_raw, out, fault=f"{point}=kill"))
    assert code == -signal.SIGKILL
    assert output_set(out) == sets[expected]
    assert (out / "notes.txt").read_text() == "mine\n"
    [leftover] = stage_folders(out)  # the killed run's working folder, spool included
    assert (point != "preprocess:spooled") or any(leftover.glob(".qwentune-spool-*/*"))

    # The next run proves the folder dead (its lock died with the process) and removes it.
    code, printed = finish(preprocess(new_raw, out))
    assert code == 0, printed
    assert "left by a preprocess run that was killed" in printed
    assert stage_folders(out) == [] and output_set(out) == sets["new"]
    assert sorted(os.listdir(out)) == sorted([*OUTPUT_FILES, "notes.txt"])
    assert (out / "notes.txt").read_text() == "mine\n"  # removing a dead staging folder only drops links


def test_a_live_runs_working_folder_is_never_removed(tmp_path):
    raw = make_inputs(tmp_path / "raw", ["alpaca.json", "sharegpt.json"])
    out = tmp_path / "processed"
    marker = tmp_path / "paused"
    paused = preprocess(raw, out, fault=f"preprocess:spooled=pause:{marker}")
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert paused.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        [live] = stage_folders(out)
        code, printed = finish(preprocess(raw, out))  # a second run beside the paused one
        assert code == 0, printed
        assert live.is_dir() and "left by a preprocess run" not in printed
    finally:
        paused.kill()
        paused.wait()
    code, printed = finish(preprocess(raw, out))
    assert code == 0 and f"removed {live}" in printed.replace("\n", "")
    assert stage_folders(out) == []


def test_sigkill_from_outside_at_random_moments_leaves_one_complete_set(tmp_path):
    """Kills a real run at seeded random moments spread over its length, the swap included."""
    import random

    old_raw = make_inputs(tmp_path / "old", ["alpaca.json"])
    new_raw = tmp_path / "new"
    new_raw.mkdir()
    with (new_raw / "many.jsonl").open("w", encoding="utf-8") as handle:
        for index in range(20_000):
            handle.write(json.dumps({"instruction": f"question {index}", "output": f"answer {index}"}) + "\n")
    out = tmp_path / "processed"
    sets = {}
    for name, raw in (("new", new_raw), ("old", old_raw)):
        started = time.monotonic()
        code, printed = finish(preprocess(raw, out))
        assert code == 0, printed
        sets[name], duration = output_set(out), time.monotonic() - started
    rng = random.Random(10)
    outcomes = []
    for _ in range(5):
        process = preprocess(new_raw, out)
        time.sleep(rng.uniform(0.2, 1.2) * duration)
        process.send_signal(signal.SIGKILL)
        killed = process.wait() == -signal.SIGKILL
        current = output_set(out)
        assert current in (sets["old"], sets["new"])
        outcomes.append(("killed" if killed else "finished", "new" if current == sets["new"] else "old"))
        if current == sets["new"]:  # back to the old set for the next try
            assert finish(preprocess(old_raw, out))[0] == 0
    assert any(kind == "killed" for kind, _ in outcomes), outcomes
    code, printed = finish(preprocess(new_raw, out))
    assert code == 0 and output_set(out) == sets["new"] and stage_folders(out) == []


def test_too_many_other_entries_fall_back_to_file_by_file(tmp_path, monkeypatch):
    from qwentune.data import outputs

    monkeypatch.setattr(outputs, "MAX_FOREIGN_ENTRIES", 2)
    raw = make_inputs(tmp_path / "raw", ["alpaca.json"])
    out = tmp_path / "processed"
    config = PreprocessConfig(input_dir=raw, output_dir=out, show_example=False, num_workers=0)
    assert run_preprocess(config).atomic
    for index in range(3):
        (out / f"mine{index}.txt").write_text(str(index))
    report = run_preprocess(config)
    assert report.exit_code == 0 and not report.atomic
    assert sorted(os.listdir(out)) == sorted([*OUTPUT_FILES, "mine0.txt", "mine1.txt", "mine2.txt"])
    assert stage_folders(out) == [] and (out / "mine2.txt").read_text() == "2"


def test_an_output_dir_that_is_a_file_is_a_usage_error(tmp_path):
    from qwentune.errors import UsageError

    raw = make_inputs(tmp_path / "raw", ["alpaca.json"])
    (tmp_path / "notes").write_text("mine\n")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        run_preprocess(PreprocessConfig(input_dir=raw, output_dir=tmp_path / "notes", show_example=False))
    assert (tmp_path / "notes").read_text() == "mine\n"


def test_the_working_directory_is_never_swapped_away(tmp_path, monkeypatch):
    raw = make_inputs(tmp_path / "raw", ["alpaca.json"])
    out = tmp_path / "work"
    out.mkdir()
    monkeypatch.chdir(out)
    config = PreprocessConfig(input_dir=raw, output_dir=Path("."), show_example=False, num_workers=0)
    report = run_preprocess(config)
    assert report.exit_code == 0 and not report.atomic
    assert Path.cwd() == out and Path("train.jsonl").is_file() and sorted(os.listdir(out)) == sorted(OUTPUT_FILES)
