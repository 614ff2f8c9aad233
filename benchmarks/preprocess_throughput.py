"""Preprocess throughput: generate N Alpaca-style records (English and Chinese, varied lengths),
run the whole pipeline on them, and print records/s, wall time, CPU seconds and peak memory.

    PYTHONPATH=src python benchmarks/preprocess_throughput.py                 # 1,000,000 records
    PYTHONPATH=src python benchmarks/preprocess_throughput.py -n 100000 --num_workers 2

The data is half a JSON array (the streaming array reader) and half JSON lines, with about 1%
exact duplicates and 0.5% empty outputs so that cleaning has work to do. The pipeline runs in a
child process so that its figures do not include the generation; the child reports its own
resource usage and that of its tokenizer workers (resource.getrusage).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EN_WORDS = (
    "the model data train answer question language learn token system user value result method "
    "process example simple clear step first second final number table list city river country "
    "history science music energy water light time people world small large quick careful"
).split()
ZH_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自"
    "二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变"
    "条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指"
    "几九区强放决西被干做必战先回则任取据处理府研"
)


def english(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(EN_WORDS) for _ in range(words)).capitalize() + "."


def chinese(rng: random.Random, chars: int) -> str:
    return "".join(rng.choice(ZH_CHARS) for _ in range(chars)) + "。"


def record(rng: random.Random, index: int) -> dict:
    if index % 2:
        instruction = english(rng, rng.randint(4, 30))
        given = english(rng, rng.randint(0, 40)) if rng.random() < 0.4 else ""
        output = english(rng, int(rng.lognormvariate(4.5, 0.8)))  # median ~90 words, long tail
    else:
        instruction = chinese(rng, rng.randint(6, 40))
        given = chinese(rng, rng.randint(0, 60)) if rng.random() < 0.4 else ""
        output = chinese(rng, int(rng.lognormvariate(5.0, 0.8)))  # median ~150 characters
    if rng.random() < 0.005:
        output = ""
    # A unique tag keeps records distinct (random text of short length can repeat by chance).
    return {"instruction": f"{instruction} #{index}", "input": given, "output": output}


def generate(folder: Path, count: int, seed: int) -> int:
    rng = random.Random(seed)
    half = count // 2
    previous = None
    with (
        (folder / "alpaca_array.json").open("w", encoding="utf-8") as array,
        (folder / "alpaca_lines.jsonl").open("w", encoding="utf-8") as json_lines,
    ):
        array.write("[\n")
        for index in range(count):
            item = previous if previous is not None and rng.random() < 0.01 else record(rng, index)
            previous = item
            text = json.dumps(item, ensure_ascii=False)
            if index < half:
                array.write(("" if index == 0 else ",\n") + text)
            else:
                json_lines.write(text + "\n")
        array.write("\n]\n")
    return sum(path.stat().st_size for path in folder.iterdir())


def run_pipeline(args) -> None:
    """Child role: run the pipeline and print one JSON line of figures."""
    from qwentune.config.preprocess import PreprocessConfig
    from qwentune.data.preprocess import run_preprocess

    config = PreprocessConfig(
        input_dir=Path(args.input_dir),
        output_dir=Path(args.output_dir),
        tokenizer=args.tokenizer,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        show_example=False,
    )
    started = time.perf_counter()
    report = run_preprocess(config)
    wall = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        "BENCHMARK "
        + json.dumps(
            {
                "wall_s": wall,
                "num_workers": config.worker_count(),
                "cpu_s_main": own.ru_utime + own.ru_stime,
                "cpu_s_workers": workers.ru_utime + workers.ru_stime,
                "peak_rss_main_mb": own.ru_maxrss / 1024,
                "peak_rss_largest_worker_mb": workers.ru_maxrss / 1024,
                "totals": report.stats["totals"],
                "tokens": report.stats["tokens"],
                "exit_code": report.exit_code,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--records", type=int, default=1_000_000)
    parser.add_argument("--num_workers", type=int, default=None, help="default: the pipeline's (one per CPU)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--tokenizer", default=None, help="default: the embedded Qwen tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    parser.add_argument("--run-pipeline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input_dir", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_pipeline:
        run_pipeline(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="qwentune-bench-"))
    raw, out = work / "raw", work / "processed"
    raw.mkdir()
    started = time.perf_counter()
    size = generate(raw, args.records, args.seed)
    print(
        f"generated {args.records:,} records ({size / 1e6:,.0f} MB) in {time.perf_counter() - started:.0f} s "
        f"under {work}",
        flush=True,
    )
    command = [
        sys.executable,
        __file__,
        "--run-pipeline",
        "--input_dir",
        str(raw),
        "--output_dir",
        str(out),
        "--batch_size",
        str(args.batch_size),
    ]
    if args.num_workers is not None:
        command += ["--num_workers", str(args.num_workers)]
    if args.tokenizer:
        command += ["--tokenizer", args.tokenizer]
    environment = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")])
        ),
    )
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    figures_line = next((line for line in result.stdout.splitlines() if line.startswith("BENCHMARK ")), None)
    if result.returncode != 0 or figures_line is None:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        return 1
    figures = json.loads(figures_line.removeprefix("BENCHMARK "))
    cpu = figures["cpu_s_main"] + figures["cpu_s_workers"]
    print(f"""
setup     {args.records:,} Alpaca-style records (half zh, half en), {size / 1e6:,.0f} MB in 2 files
          (JSON array + JSON lines); num_workers={figures["num_workers"]}, batch_size={args.batch_size},
          tokenizer={args.tokenizer or "embedded Qwen"}, max_length 2048, min_length 10, all cleaning rules on
machine   {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}
result    {figures["totals"]["in"] / figures["wall_s"]:,.0f} records/s, wall {figures["wall_s"]:.1f} s,
          CPU {cpu:.1f} s (main {figures["cpu_s_main"]:.1f} s, tokenizer workers {figures["cpu_s_workers"]:.1f} s)
memory    peak RSS: main process {figures["peak_rss_main_mb"]:,.0f} MB, \
largest worker {figures["peak_rss_largest_worker_mb"]:,.0f} MB
records   {json.dumps(figures["totals"])}
tokens    {json.dumps(figures["tokens"])}""")
    if not args.keep:
        import shutil

        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
