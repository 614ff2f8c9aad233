"""Writing files so that a kill at any moment leaves the old content or the new, never half of one.

One place for the low-level rules every stage shares:

    atomic_write(path, text)          # a whole small file (JSON, CSV, HTML)
    with atomic_open(path) as handle  # a file written in pieces (predictions, JSONL)
    remove_stale_temporaries(folder)  # what killed writers left (each atomic write sweeps its folder)
    exchange(a, b)                    # swap two directories in one step (Linux renameat2)
    WorkDir.create(parent, prefix)    # a private working folder whose owner can be proven dead
    fault_point(name)                 # the fault-injection hook the SIGKILL tests use

A file is written to a temporary name beside its target, flushed to disk (fsync), then renamed
over the target, and the folder is synced so that the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

# Name prefix of temporary files: hidden, and recognisable as ours.
TEMP_PREFIX = ".qwentune-tmp-"


def fsync_dir(folder: Path) -> None:
    """Make the entries of `folder` (a rename, a new file) durable; a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None):
    """Open a temporary file beside `path`; on a clean exit it is synced and renamed over `path`.

    On an exception the temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    binary = "b" in mode
    descriptor, temporary = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    # Held until the file is closed: a later sweep can prove a leftover's writer dead (SIGKILL included).
    _lock(descriptor)
    remove_stale_temporaries(path.parent)
    try:
        with os.fdopen(descriptor, mode, encoding=None if binary else encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, data: str | bytes, *, encoding: str = "utf-8") -> None:
    """Replace `path` with `data` in one step (temporary file, fsync, rename)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", encoding=encoding) as handle:
        handle.write(data)


def remove_stale_temporaries(folder: Path, *, grace_s: float = 60.0) -> list[Path]:
    """Delete the temporary files (TEMP_PREFIX) in `folder` that a killed writer left behind: unlocked
    and unmodified for `grace_s` (the grace covers the instant between a file's creation and its lock)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): leftovers stay, hidden and never read
        return []
    removed = []
    try:
        entries = [entry for entry in os.scandir(folder) if entry.name.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat(follow_symlinks=False).st_mtime < grace_s:
                continue
            descriptor = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(entry.path).st_ino == os.fstat(descriptor).st_ino:  # not renamed over since opened
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass  # a live writer holds it, or it is gone already
        finally:
            os.close(descriptor)
    return removed


def _lock(descriptor: int) -> None:
    with contextlib.suppress(ImportError, OSError):  # no flock: nothing to prove, nothing swept
        import fcntl

        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _default_file_mode() -> int:
    """0o666 less the umask: what a plain open() would have given (mkstemp makes files 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# ---------------------------------------------------------------------------- directory exchange

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(first: Path, second: Path) -> None:
    """Swap two existing directories (or files) atomically: renameat2(RENAME_EXCHANGE).

    Raises OSError (ENOSYS, EINVAL, EXDEV...) where the system or the filesystem cannot; the
    caller then falls back to something weaker and says so.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError) as exc:  # not glibc >= 2.28, or not Linux
        raise OSError(errno.ENOSYS, "renameat2 is not available on this system") from exc
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first), None, str(second))


# ---------------------------------------------------------------------------- working folders


class WorkDir:
    """A private working folder, locked (flock on the folder itself) for as long as its owner lives.

    The kernel drops the lock when the process dies, however it dies (SIGKILL included), so
    `remove_stale` can prove a folder is abandoned by taking its lock. The folder is made
    under a `.qwentune-init-` name, locked, and only then renamed to its real name, so no
    other run ever sees it unlocked while its owner is alive.
    """

    def __init__(self, path: Path, descriptor: int):
        self.path = path
        self._descriptor = descriptor

    @classmethod
    def create(cls, parent: Path | str, prefix: str) -> WorkDir:
        import fcntl  # Unix only, like the folder swap it serves; the file helpers above work anywhere

        parent = Path(parent)
        initial = Path(tempfile.mkdtemp(prefix=".qwentune-init-", dir=parent))
        descriptor = os.open(initial, os.O_RDONLY)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        while True:
            final = parent / f"{prefix}{secrets.token_hex(8)}"
            if not final.exists():  # 64 random bits: a clash is practically impossible, but never overwrite
                break
        os.rename(initial, final)
        return cls(final, descriptor)

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    @staticmethod
    def remove_stale(parent: Path, prefix: str, *, init_grace_s: float = 60.0) -> list[Path]:
        """Delete the folders under `parent` named `prefix*` whose lock no live process holds.

        A folder still under its `.qwentune-init-` name is removed only when unlocked and older
        than `init_grace_s` (its owner locks it within microseconds of making it).
        """
        import fcntl

        removed = []
        try:
            entries = list(parent.iterdir())
        except OSError:
            return removed
        now = time.time()
        for entry in entries:
            if entry.name.startswith(prefix):
                pass
            elif entry.name.startswith(".qwentune-init-"):
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime < init_grace_s:
                        continue
            else:
                continue
            if entry.is_symlink() or not entry.is_dir():
                continue
            try:
                descriptor = os.open(entry, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(descriptor)
                continue  # a live run holds it
            try:
                if os.stat(entry).st_ino != os.fstat(descriptor).st_ino:
                    continue  # renamed over since we opened it: not the folder we locked
                shutil.rmtree(entry, ignore_errors=True)
                if not entry.exists():
                    removed.append(entry)
            finally:
                os.close(descriptor)
        return removed


# ---------------------------------------------------------------------------- fault injection

FAULT_ENV = "QWENTUNE_TEST_FAULT"


def fault_point(name: str) -> None:
    """Test hook: with QWENTUNE_TEST_FAULT="<name>=kill" the process SIGKILLs itself here;
    with "<name>=pause:<file>" it creates <file> and waits to be killed. Unset: nothing."""
    setting = os.environ.get(FAULT_ENV)
    if not setting:
        return
    point, _, action = setting.partition("=")
    if point != name:
        return
    if action.startswith("pause:"):
        Path(action.removeprefix("pause:")).write_text(str(os.getpid()))
        while True:
            time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)
