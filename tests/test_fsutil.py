"""qwentune.fsutil: whole-file replacement that survives a kill, directory exchange, proven-dead work folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from qwentune.fsutil import TEMP_PREFIX, WorkDir, atomic_open, atomic_write, exchange, remove_stale_temporaries


def test_atomic_write_replaces_whole_and_keeps_the_usual_mode(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old\n")
    atomic_write(target, '{"new": true}\n')
    assert target.read_text() == '{"new": true}\n'
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    atomic_write(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "predictions.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("the run failed while writing")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["predictions.jsonl"]


def test_a_sigkill_mid_write_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "loss_history.json"
    target.write_text("[1, 2, 3]\n")
    child = textwrap.dedent(
        f"""
        import os, signal
        from qwentune.fsutil import atomic_open
        with atomic_open({str(target)!r}) as handle:
            handle.write("[4, 5" * 100000)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert target.read_text() == "[1, 2, 3]\n"
    [leftover] = [name for name in os.listdir(tmp_path) if name != target.name]
    assert leftover.startswith(TEMP_PREFIX)  # hidden, never read as the file
    # The next atomic write in the folder removes it once it is a minute old (its writer is dead).
    atomic_write(tmp_path / "other.json", "{}")
    assert leftover in os.listdir(tmp_path)
    os.utime(tmp_path / leftover, (0, 0))
    atomic_write(tmp_path / "other.json", "{}")
    assert sorted(os.listdir(tmp_path)) == ["loss_history.json", "other.json"]


def test_a_live_writers_temporary_is_never_swept(tmp_path):
    child = textwrap.dedent(
        f"""
        import os, sys, time
        from qwentune.fsutil import atomic_open
        with atomic_open({str(tmp_path / "slow.jsonl")!r}) as handle:
            handle.write("a line\\n")
            handle.flush()
            [name] = [n for n in os.listdir({str(tmp_path)!r}) if n.startswith(".qwentune-tmp-")]
            os.utime(os.path.join({str(tmp_path)!r}, name), (0, 0))  # looks abandoned, but is locked
            print(name, flush=True)
            sys.stdin.readline()
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        name = writer.stdout.readline().strip()
        assert remove_stale_temporaries(tmp_path) == [] and name in os.listdir(tmp_path)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
    assert os.listdir(tmp_path) == ["slow.jsonl"] and (tmp_path / "slow.jsonl").read_text() == "a line\n"


def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "one").write_text("a")
    (tmp_path / "b" / "two").write_text("b")
    try:
        exchange(tmp_path / "a", tmp_path / "b")
    except OSError as exc:
        pytest.skip(f"no RENAME_EXCHANGE here: {exc}")
    assert os.listdir(tmp_path / "a") == ["two"] and os.listdir(tmp_path / "b") == ["one"]
    with pytest.raises(OSError):
        exchange(tmp_path / "a", tmp_path / "missing")


def test_work_folders_are_removed_only_when_their_owner_is_dead(tmp_path):
    mine = WorkDir.create(tmp_path, ".run-")
    (mine.path / "spool").write_text("x")
    assert WorkDir.remove_stale(tmp_path, ".run-") == [] and mine.path.is_dir()  # alive: locked
    child = f"from qwentune.fsutil import WorkDir; import os, signal; WorkDir.create({str(tmp_path)!r}, '.run-'); os.kill(os.getpid(), signal.SIGKILL)"
    assert subprocess.run([sys.executable, "-c", child], timeout=60).returncode == -signal.SIGKILL
    [dead] = [path for path in tmp_path.iterdir() if path != mine.path]
    assert WorkDir.remove_stale(tmp_path, ".run-") == [dead] and not dead.exists()
    assert mine.path.is_dir()
    mine.remove()
    assert list(tmp_path.iterdir()) == []
