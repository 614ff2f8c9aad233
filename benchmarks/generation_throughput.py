"""Evaluation generation: samples/s batched (left padding) vs one prompt at a time, same prompts.

    PYTHONPATH=src python benchmarks/generation_throughput.py                  # demo model, 16 prompts, batch 8
    PYTHONPATH=src python benchmarks/generation_throughput.py --rounds 3 --max_new_tokens 48

Both modes run greedy decoding on the same prompts, interleaved round by round, and the batched
answers are compared with the one-at-a-time answers (left padding can move fp32 sums by an ulp,
so a rare near-tie may decode differently; the count is printed). Prints the median
samples/s and CPU-seconds per sample of each mode and their ratio.

Backends side by side (PyTorch fp32 vs llama.cpp GGUF types; needs the llamacpp extra):

    PYTHONPATH=src python benchmarks/generation_throughput.py --backends --test_file data/processed/test.jsonl

Each prompt of the test split is answered greedily, one at a time, by every engine in turn, round
by round. Prints per engine: tokens/s, time to first token (median over prompts), CPU-seconds per
token, answers identical to PyTorch's, BLEU / ROUGE-L against the references, reference perplexity
and the GGUF file size.
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
    parser.add_argument("--backends", action="store_true", help="compare PyTorch fp32 with llama.cpp GGUF types")
    parser.add_argument("--quantizations", nargs="+", default=["f16", "q8_0", "q4_k_m"], help="with --backends")
    parser.add_argument("--test_file", default="data/processed/test.jsonl", help="with --backends: canonical JSONL")
    args = parser.parse_args()
    if args.backends:
        compare_backends(args)
        return

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


def timed_answer(engine, prompt, max_new_tokens: int) -> dict:
    """One greedy answer with its wall time, CPU time, time to first text and token count."""
    from qwentune.infer.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    first: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    request = engine.request(engine.prompt_ids(prompt), settings, on_text=lambda _: first or first.append(time.perf_counter()))
    [completion] = engine.run_batch([request], settings.sampling)
    wall = time.perf_counter() - start
    return {
        "text": completion.text.strip(),
        "tokens": completion.completion_tokens,
        "wall": wall,
        "cpu": time.process_time() - cpu,
        "ttft": (first[0] - start) if first else wall,
    }


def reference_perplexity(engine, samples) -> float:
    import math

    from qwentune.evaluate import metrics
    from qwentune.infer.engine import as_messages

    prompts = [as_messages(s.prompt, engine.system_prompt) for s in samples]
    if hasattr(engine, "sequence_nll"):  # llama.cpp: the same labelled tokens, scored by llama.cpp
        sequences = [metrics._reference_sequence(engine.tokenizer, p, s.reference) for p, s in zip(prompts, samples)]
        nll, count = map(sum, zip(*(engine.sequence_nll(ids, labels) for ids, labels in sequences)))
        return math.exp(nll / count)
    result = metrics.perplexity(engine.model, engine.tokenizer, prompts=prompts, references=[s.reference for s in samples])
    return result["perplexity"]


def compare_backends(args) -> None:
    from qwentune.evaluate import metrics
    from qwentune.evaluate.runner import load_samples
    from qwentune.infer.backends.llamacpp import LlamaCppInference
    from qwentune.infer.engine import QwenInference

    threads = torch.get_num_threads()
    samples = load_samples(args.test_file, "test", args.samples)
    engines = {"pytorch fp32": QwenInference(args.model_path, dtype="float32", device="cpu")}
    for quantization in args.quantizations:
        engines[f"llama.cpp {quantization}"] = LlamaCppInference(args.model_path, quantization=quantization, n_threads=threads)
    import llama_cpp

    print(
        f"setup: {args.model_path}, {len(samples)} test samples from {args.test_file}, one at a time, greedy, "
        f"{args.max_new_tokens} new tokens at most, {args.rounds} rounds; torch {torch.__version__} and "
        f"llama-cpp-python {llama_cpp.__version__}, {threads} threads each, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}"
    )
    runs: dict[str, list[list[dict]]] = {name: [] for name in engines}
    for round_index in range(args.rounds):
        for name, engine in engines.items():  # engines interleaved within each round
            runs[name].append([timed_answer(engine, s.prompt, args.max_new_tokens) for s in samples])
        print(f"round {round_index + 1} done")
    references, langs = [s.reference for s in samples], [s.lang for s in samples]
    baseline = [row["text"] for row in runs["pytorch fp32"][0]]
    print(f"{'engine':>16} | tokens/s | TTFT ms | CPU-ms/token | same as fp32 | BLEU | ROUGE-L | ppl | size MiB")
    for name, engine in engines.items():
        rates = [sum(r["tokens"] for r in rnd) / sum(r["wall"] for r in rnd) for rnd in runs[name]]
        cpu = [sum(r["cpu"] for r in rnd) / sum(r["tokens"] for r in rnd) for rnd in runs[name]]
        ttft = statistics.median(r["ttft"] for rnd in runs[name] for r in rnd)
        texts = [row["text"] for row in runs[name][0]]
        same = sum(a == b for a, b in zip(texts, baseline))
        bleu = metrics.bleu(texts, references, langs)["overall"]
        rouge = metrics.rouge(texts, references, langs)["overall"]["rougeL"]
        size = engine.gguf_file.stat().st_size / 2**20 if hasattr(engine, "gguf_file") else float("nan")
        print(
            f"{name:>16} | {statistics.median(rates):8.1f} | {ttft * 1000:7.0f} | {statistics.median(cpu) * 1000:12.1f} | "
            f"{same:>5}/{len(samples):<6} | {bleu:4.1f} | {rouge:7.3f} | {reference_perplexity(engine, samples):5.2f} | {size:8.1f}"
        )


if __name__ == "__main__":
    main()
