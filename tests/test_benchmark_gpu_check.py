"""benchmarks/gpu_check.py runs: its --tiny mode trains the same code path on CPU and prints every figure."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO


def test_gpu_check_tiny_trains_both_shapes_and_prints_their_figures():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--steps", "2", "--warmup", "1", "--batch_size", "2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith("qwen")}
    assert set(rows) == {"qwen2.5-7b", "qwen3-30b-a3b"}
    number = re.compile(r"^[\d.]+(B|M|%|Gi)?$")
    for name, fields in rows.items():
        assert len(fields) == 7 and all(number.match(f) for f in fields), (name, fields)
        assert float(fields[2]) > 0  # tokens/s
    # The MoE shape routes 2 of 8 experts: fewer active parameters than total.
    moe = rows["qwen3-30b-a3b"]
    assert moe[0][-1] == moe[1][-1] and float(moe[1][:-1]) < float(moe[0][:-1])
