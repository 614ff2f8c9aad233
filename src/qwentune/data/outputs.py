"""The output set of a preprocess run, committed as a whole or not at all.

The set (train/validation/test/chinese_test JSONL, rejects.jsonl, stats.json) is written into a
staging folder beside the output folder, `.<name>.qwentune-stage-<random>`, which also holds the
run's spool. When the run succeeds, the staging folder and the output folder trade places in
one system call (renameat2 RENAME_EXCHANGE), so at every instant, a SIGKILL included, the
output folder holds either the complete old set or the complete new one. A run with an error
never commits: the old set stays exactly as it was.

Other entries of the output folder (a user's notes, a subfolder) are hard-linked into the
staging folder before the swap, so they are in the output folder before and after it; an
entry that appears during the swap is moved across right after it.

Where the swap cannot work (the output folder is a mount point, its parent is read-only, it is
the working directory or holds it, the filesystem has no RENAME_EXCHANGE, an entry cannot be
hard-linked, more than MAX_FOREIGN_ENTRIES other entries) the staging folder goes
inside the output folder and the files are renamed one by one: a failed run still leaves the
old set, but a kill during those renames can leave a mix; `atomic` says which way was taken.

The staging folder is locked for the run's life (`qwentune.fsutil.WorkDir`): the next run
removes the staging folders (and spools) of runs that were killed, and never a live run's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from qwentune.data.inputs import OUTPUT_FILES
from qwentune.errors import UsageError
from qwentune.fsutil import WorkDir, exchange, fault_point, fsync_dir

# Where a killed run's staging folder of OUTPUT lies: in OUTPUT's parent (the swap) or inside OUTPUT.
STAGE_INSIDE = ".qwentune-stage-"


def stage_prefix(folder: Path) -> str:
    return f".{folder.name}.qwentune-stage-"


class OutputSet:
    """Collects the output lines of a run in a staging folder; `commit` publishes them all at once.

    With no folder (validate_only, no input) lines are only counted.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder.resolve() if folder is not None else None
        self.handles: dict[str, object] = {}
        self.lines: Counter = Counter()
        self.first_line: dict[str, str] = {}
        self.stage: WorkDir | None = None
        self.atomic = True
        self.cleaned: list[Path] = []
        if self.folder is not None:
            self._open_stage()

    # ------------------------------------------------------------------ setting up

    def _open_stage(self) -> None:
        folder = self.folder
        if folder.exists() and not folder.is_dir():  # a swap would trade the user's file away
            raise UsageError(f"output_dir: {folder} is a file, not a folder", advice="give a folder for the outputs")
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.cleaned = WorkDir.remove_stale(folder.parent, stage_prefix(folder))
        if folder.is_dir():
            self.cleaned += WorkDir.remove_stale(folder, STAGE_INSIDE)
        swap = (
            os.access(folder.parent, os.W_OK)
            and (not folder.exists() or os.stat(folder).st_dev == os.stat(folder.parent).st_dev)
            # Swapping the folder this process works in (or one above it) would leave its relative
            # paths pointing into the old, removed folder.
            and not Path.cwd().resolve().is_relative_to(folder)
        )
        if swap:
            self.stage = WorkDir.create(folder.parent, stage_prefix(folder))
        else:
            folder.mkdir(exist_ok=True)
            self.stage = WorkDir.create(folder, STAGE_INSIDE)
            self.atomic = False

    @property
    def spool_parent(self) -> Path | None:
        """Where the run's spool goes: inside the staging folder, so a killed run's is removed with it."""
        return self.stage.path if self.stage else None

    # ------------------------------------------------------------------ writing

    def write(self, name: str, line: str) -> None:
        self.lines[name] += 1
        self.first_line.setdefault(name, line)
        if self.stage is None:
            return
        handle = self.handles.get(name)
        if handle is None:
            handle = self.handles[name] = (self.stage.path / name).open("w", encoding="utf-8")
        handle.write(line + "\n")

    def _finish_files(self, stats: dict) -> None:
        for name in OUTPUT_FILES[:-1]:  # every split file exists, even when empty
            if name not in self.handles:
                self.handles[name] = (self.stage.path / name).open("w", encoding="utf-8")
        for handle in self.handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self.handles = {}
        with (self.stage.path / "stats.json").open("w", encoding="utf-8") as handle:
            json.dump(stats, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(self.stage.path)

    # ------------------------------------------------------------------ committing

    def commit(self, stats: dict) -> list[Path]:
        """Publish the set; returns the output paths. Nothing is published when this raises."""
        if self.stage is None:
            return []
        self._finish_files(stats)
        fault_point("preprocess:staged")
        if self.atomic:
            try:
                self._swap()
            except OSError:
                self.atomic = False  # the filesystem refused the swap: fall back, still all-or-old on error
                self._rename_one_by_one()
        else:
            self._rename_one_by_one()
        return [self.folder / name for name in OUTPUT_FILES]

    def _swap(self) -> None:
        folder, stage = self.folder, self.stage.path
        if not folder.exists():
            os.chmod(stage, 0o777 & ~_umask())
            os.rename(stage, folder)  # nothing to trade places with: one rename publishes the set
            fault_point("preprocess:swapped")
            fsync_dir(folder.parent)
            self.stage.release()
            self.stage = None
            return
        with contextlib.suppress(OSError):
            os.chmod(stage, os.stat(folder).st_mode & 0o7777)
        _link_foreign_entries(folder, stage)
        fault_point("preprocess:linked")
        exchange(folder, stage)
        fault_point("preprocess:swapped")
        fsync_dir(folder.parent)
        # `stage` now holds the old set; carry over what appeared in the folder during the swap.
        for entry in os.listdir(stage):
            if entry not in OUTPUT_FILES and not os.path.lexists(folder / entry):
                with contextlib.suppress(OSError):
                    os.rename(stage / entry, folder / entry)
        self.stage.remove()  # the old set (and the links to the foreign entries, which stay in `folder`)
        self.stage = None

    def _rename_one_by_one(self) -> None:
        folder, stage = self.folder, self.stage.path
        if stage.parent != folder:  # the swap was refused: bring the staged files next to their targets
            folder.mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_FILES:
            os.replace(stage / name, folder / name)
            fault_point("preprocess:renamed-one")
        fsync_dir(folder)
        self.stage.remove()
        self.stage = None

    def discard(self) -> None:
        """Drop the staged set; the output folder is untouched."""
        for handle in self.handles.values():
            handle.close()
        self.handles = {}
        if self.stage is not None:
            self.stage.remove()
            self.stage = None


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# More foreign entries than this (an output folder pointed at a project or home folder): replacing
# the six files one by one is cheaper than mirroring the tree with links.
MAX_FOREIGN_ENTRIES = 10_000


def _link_foreign_entries(folder: Path, stage: Path) -> None:
    """Hard-link every entry of `folder` that is not ours into `stage`, subfolders recreated.

    Raises OSError when an entry cannot be linked (another filesystem inside, no permission) or
    there are more than MAX_FOREIGN_ENTRIES: the caller then replaces the files one by one.
    """
    budget = [MAX_FOREIGN_ENTRIES]
    for entry in os.scandir(folder):
        if entry.name in OUTPUT_FILES or entry.name.startswith(STAGE_INSIDE):
            continue
        _link_tree(Path(entry.path), stage / entry.name, budget)


def _link_tree(source: Path, target: Path, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise OSError(errno.EFBIG, f"more than {MAX_FOREIGN_ENTRIES} other entries in the output folder")
    if source.is_dir() and not source.is_symlink():
        if os.stat(source).st_dev != os.stat(source.parent).st_dev:
            raise OSError(errno.EXDEV, "a mount point inside the output folder", str(source))
        target.mkdir()
        for entry in os.scandir(source):
            _link_tree(Path(entry.path), target / entry.name, budget)
        shutil.copystat(source, target, follow_symlinks=False)  # after filling it: its times stay the source's
    else:
        os.link(source, target, follow_symlinks=False)
