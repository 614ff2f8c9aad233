"""Cost of rejecting one huge record: wall time, CPU seconds and peak memory of a preprocess run
over 1,000 ordinary Alpaca records plus one record of SIZE megabytes of text.

    PYTHONPATH=src python benchmarks/huge_record.py                   # 50 MB, as in issue 10
    PYTHONPATH=src python benchmarks/huge_record.py --mb 50 500 --where line array
    PYTHONPATH=/tmp/old/src python benchmarks/huge_record.py --mb 1 --text unbroken   # another checkout

`--where line`: the record is one line of a JSON-lines file (rejected while read: over
max_record_chars); `array`: an element of a JSON array (skipped the same way); `parsed`: a
record just under max_record_chars, so it is parsed, rendered, and rejected by the tokenizer's
character bound without being tokenized. Each run is a child process that reports its own
getrusage (and its tokenizer workers'); the baseline line is a run without the huge record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from qwentune.config.preprocess import PreprocessConfig
from qwentune.data.preprocess import run_preprocess
raw, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
started = time.perf_counter()
report = run_preprocess(PreprocessConfig(input_dir=raw, output_dir=out, num_workers=workers, show_example=False))
wall = time.perf_counter() - started
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
# VmHWM: this process's own peak (ru_maxrss would carry over the parent's across exec).
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({
    "wall_s": wall,
    "cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
    "rss_mb": hwm / 1024, "worker_rss_mb": kids.ru_maxrss / 1024,
    "reasons": report.stats["reasons"], "kept": report.stats["totals"]["kept"],
}))
"""


def write_inputs(folder: Path, megabytes: int, where: str, text: str = "words") -> None:
    folder.mkdir(parents=True)
    normal = [
        json.dumps({"instruction": f"Question {i}: what is {i} times three?", "output": f"It is {3 * i}. " * 3})
        for i in range(1000)
    ]
    chars = megabytes << 20
    if where == "parsed":
        chars = (4 << 20) - 200  # just under the default max_record_chars (max_length 2048)
    with (folder / "data.jsonl").open("w", encoding="utf-8") as handle:
        handle.write("\n".join(normal) + "\n")
    if not megabytes:
        return
    # About 1 MB, written repeatedly (this process stays small): words, or one unbroken run of letters
    # (a single pre-token for a BPE tokenizer, its worst case).
    piece = "lorem ipsum dolor sit amet " * 40_000 if text == "words" else "loremipsumdolorsitamet" * 47_663
    name, start, end = "big.jsonl", '{"instruction": "huge", "output": "', '"}\n'
    if where == "array":
        name, start = "big.json", '[{"instruction": "q", "output": "a"},\n' + start
        end = '"},\n{"instruction": "q2", "output": "a2"}]\n'
    with (folder / name).open("w", encoding="utf-8") as handle:
        handle.write(start)
        for _ in range(chars // len(piece)):
            handle.write(piece)
        handle.write(piece[: chars % len(piece)] + end)


def run(megabytes: int, where: str, workers: int, text: str) -> dict:
    with tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "raw"
        write_inputs(raw, megabytes, where, text)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(raw), str(Path(work) / "out"), str(workers)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, nargs="+", default=[50], help="sizes of the huge record in MB")
    parser.add_argument("--where", nargs="+", default=["line"], choices=["line", "array", "parsed"])
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--text", choices=["words", "unbroken"], default="words", help="the huge record's text")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, num_workers {args.num_workers}, "
        f"max_length 2048, text {args.text}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'record':>20} {'wall s':>8} {'CPU s':>8} {'main RSS MB':>12} {'worker RSS MB':>14}  rejected")
    cases = [(0, "line")] + [(mb, where) for where in args.where for mb in (args.mb if where != "parsed" else [4])]
    for megabytes, where in cases:
        started = time.perf_counter()
        figures = run(megabytes, where, args.num_workers, args.text)
        label = (
            "none (baseline)"
            if not megabytes
            else ("4 Mi chars, parsed" if where == "parsed" else f"{megabytes} MB {where}")
        )
        print(
            f"{label:>20} {figures['wall_s']:8.1f} {figures['cpu_s']:8.1f} {figures['rss_mb']:12.0f} "
            f"{figures['worker_rss_mb']:14.0f}  {figures['reasons']} (total with setup {time.perf_counter() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()
