"""Evaluation generation: samples/s batched (left padding) vs one prompt at a time, same prompts.

    PYTHONPATH=src python benchmarks/generation_throughput.py                  # demo model, 16 prompts, batch 8
    PYTHONPATH=src python benchmarks/generation_throughput.py --rounds 3 --max_new_tokens 48

Both modes run greedy decoding on the same prompts, interleaved round by round, and the batched
answers are compared with the one-at-a-time answers (left padding can move fp32 sums by an ulp,
so a rare near-tie may decode differently; the count is printed). Prints the median
samples/s and CPU-seconds per sample of each mode and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

PROMPTS = [
    "What is your name?", "你叫什么名字？", "Give me three tips for staying healthy.", "什么是机器学习？请简要说明。",
    "Translate 'good morning' into Chinese.", "What is 12 times 3?", "Name the three primary colours.",
    "写一句关于春天的诗。", "Explain photosynthesis in one sentence.", "列出三种常见的水果。",
    "Who wrote Romeo and Juliet?", "用一句话解释什么是重力。", "Summarise: The cat sat on the mat all day.",
    "北京是哪个国家的首都？", "Give an antonym of 'happy'.", "如何煮米饭？",
]


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="embedded:demo-model")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from qwentune.infer.engine import QwenInference

    engine = QwenInference(args.model_path, dtype="float32")
    prompts = (PROMPTS * (args.samples // len(PROMPTS) + 1))[: args.samples]
    settings = {"max_new_tokens": args.max_new_tokens}
    print(
        f"setup: {args.model_path}, {args.samples} prompts, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
        f"greedy fp32, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}"
    )
    figures = {"batched": [], "one at a time": []}
    for round_index in range(args.rounds):
        batched, wall_b, cpu_b = timed(lambda: engine.batch_generate(prompts, batch_size=args.batch_size, **settings))
        single, wall_s, cpu_s = timed(lambda: [engine.generate(p, **settings) for p in prompts])
        same = sum(b == s for b, s in zip(batched, single))
        figures["batched"].append((args.samples / wall_b, cpu_b / args.samples))
        figures["one at a time"].append((args.samples / wall_s, cpu_s / args.samples))
        print(f"round {round_index + 1}: batched {wall_b:.1f}s, one at a time {wall_s:.1f}s, identical answers {same}/{len(prompts)}")
    medians = {mode: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)) for mode, rows in figures.items()}
    for mode, (rate, cpu) in medians.items():
        print(f"{mode:>14}: {rate:.2f} samples/s, {cpu:.2f} CPU-s per sample (median of {args.rounds})")
    print(f"batched / one at a time: {medians['batched'][0] / medians['one at a time'][0]:.2f}x samples/s, "
          f"{medians['one at a time'][1] / medians['batched'][1]:.2f}x less CPU per sample")


if __name__ == "__main__":
    main()
