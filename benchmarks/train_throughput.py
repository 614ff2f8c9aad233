"""Training throughput: our default batching against padding every sample to max_length.

LoRA on the embedded demo model (SmolLM2-135M) over a few hundred variable-length chat
samples: the Alpaca-GPT4 sample in ../shared/datasets when present, else generated records
with the same length spread. Both arms run the same steps, hyperparameters, seed and example
order; they differ only in how a batch is built:

  default   data.batching: packed  (examples of a batch in one row, per-example attention,
            logits only where a loss is computed)
  baseline  every sample padded to data.max_seq_length with an attention mask and logits and
            loss over every position, as the official Qwen finetune script trains

Each trial is a fresh process (`scripts/train.py` machinery through `--trial`), so its peak
RSS is its own; the arms alternate for a few rounds and medians are reported: real (non-padding)
tokens trained per second and per CPU-second of the training loop, peak RSS, final loss, the
largest per-step loss difference between the arms, and model FLOPs utilisation (MFU) against a
matmul peak measured here.

    PYTHONPATH=src python benchmarks/train_throughput.py                  # 3 rounds x 6 steps
    PYTHONPATH=src python benchmarks/train_throughput.py --rounds 5 --steps 10 --batch_size 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ALPACA_SAMPLE = REPO.parent / "shared" / "datasets" / "alpaca_gpt4_data.sample.json"
SYSTEM_PROMPT = "You are a helpful assistant."
ARMS = ("default", "baseline")


# ---------------------------------------------------------------- data


def alpaca_records(limit: int) -> list[dict]:
    rows = json.loads(ALPACA_SAMPLE.read_text(encoding="utf-8"))[:limit]
    return [chat(i, "\n\n".join(p for p in (r["instruction"], r["input"]) if p.strip()), r["output"]) for i, r in enumerate(rows)]


def generated_records(count: int, seed: int = 0) -> list[dict]:
    """Alpaca-like lengths: short prompts; answers log-normal around ~100 words, from a few to ~450."""
    rng = random.Random(seed)
    words = "the model answers questions about data language science history code music water cities people".split()
    records = []
    for i in range(count):
        prompt = " ".join(rng.choices(words, k=max(3, int(rng.lognormvariate(2.6, 0.6)))))
        answer = " ".join(rng.choices(words, k=min(450, max(2, int(rng.lognormvariate(4.4, 0.9))))))
        records.append(chat(i, prompt, answer))
    return records


def chat(index: int, prompt: str, answer: str) -> dict:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"id": f"bench-{index}", "source": "benchmark", "lang": "en", "messages": messages, "meta": {}}


# ---------------------------------------------------------------- one trial (child process)


def run_trial(arm: str, config_path: str) -> None:
    from qwentune.config.base import load_config
    from qwentune.config.training import TrainConfig
    from qwentune.train import arguments
    from qwentune.train.recipe import run_training

    if arm == "baseline":
        # The official Qwen script's batches: padded to max_length, logits and loss everywhere.
        from qwentune.data.pack import PaddingCollator

        arguments.make_collator = lambda config, pad_token_id, logits_selection: PaddingCollator(
            pad_token_id, pad_to=config.data.max_seq_length, logits_selection=None
        )
    run_training(load_config(TrainConfig, config_path))


# ---------------------------------------------------------------- the comparison (parent)


def write_config(folder: Path, arm: str, train_file: Path, args) -> Path:
    config = {
        "model": {"model_name_or_path": "embedded:demo-model", "torch_dtype": "float32"},
        "data": {
            "train_file": str(train_file), "validation_file": None, "max_seq_length": args.max_length,
            "default_system_prompt": SYSTEM_PROMPT, "batching": "packed" if arm == "default" else "max_length",
        },
        "training": {
            "output_dir": str(folder / "out"), "logging_dir": str(folder / "logs"), "max_steps": args.steps,
            "per_device_train_batch_size": args.batch_size, "learning_rate": 3e-4, "warmup_ratio": 0.0,
            "lr_scheduler_type": "constant", "logging_steps": 1, "save_steps": 10_000, "seed": 42,
            "report_to": [],
        },
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "mindspeed": {"use_mindspeed": False, "zero_stage": 0},
    }
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def trial(arm: str, folder: Path, train_file: Path, args) -> dict:
    folder.mkdir(parents=True)
    config = write_config(folder, arm, train_file, args)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with open(folder / "console.txt", "w") as console:
        process = subprocess.Popen([sys.executable, __file__, "--trial", arm, "--config", str(config)], stdout=console, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"{arm} trial failed; see {folder / 'console.txt'}")
    out = folder / "out"
    summary = json.loads((out / "qwentune_meta.json").read_text())["train_summary"]
    curve = [p["loss"] for p in json.loads((out / "loss_history.json").read_text()) if p["loss"] is not None]
    return {
        "tokens_per_second": summary["train_tokens"] / summary["train_loop_seconds"],
        "tokens_per_cpu_second": summary["train_tokens"] / summary["train_loop_cpu_seconds"],
        "tokens": summary["train_tokens"],
        "seconds": summary["train_loop_seconds"],
        "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,  # ru_maxrss is in KiB on Linux
        "losses": curve,
    }


def matmul_peak_flops(seconds: float = 3.0, size: int = 2048) -> float:
    """FP32 matmul FLOP/s of this machine with torch's default threads (the best of a few runs)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best, deadline = 0.0, time.time() + seconds
    while time.time() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def example_lengths(records: list[dict], max_length: int) -> tuple[list[int], float]:
    """Token lengths of the encoded examples (as the trainer truncates them) and the share of trained tokens."""
    from qwentune.assets import resolve_model_name
    from qwentune.data.tokenize import encode_conversation, load_tokenizer

    tokenizer = load_tokenizer(resolve_model_name("embedded:demo-model"))
    examples = [
        encode_conversation(tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}, *r["messages"]], max_length=max_length)
        for r in records
    ]
    lengths = [len(e.input_ids) for e in examples]
    return lengths, sum(e.num_trained_tokens for e in examples) / sum(lengths)


def flops_per_token(lengths: list[int], trained_share: float) -> float:
    """Useful training FLOPs per real token (LoRA: forward + input gradients; adapter weight gradients are negligible).

    Per token: 2 FLOPs per decoder weight forward and again backward; causal attention
    2 * 2 * hidden * (length / 2) per layer each way, averaged over the data's lengths; the LM
    head (2 * hidden * vocab, each way) only at trained positions. Padding is not useful work.
    """
    from transformers import AutoConfig

    from qwentune.assets import resolve_model_name

    config = AutoConfig.from_pretrained(resolve_model_name("embedded:demo-model"))
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    layer_weights = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    mean_context = sum(n * n for n in lengths) / sum(lengths) / 2
    forward = 2 * layer_weights + 2 * 2 * h * mean_context * layers + trained_share * 2 * h * config.vocab_size
    return 2 * forward


def report(results: dict[str, list[dict]], peak: float, lengths: list[int], trained_share: float, args, data_source: str) -> None:
    def median(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in results[arm])

    per_token = flops_per_token(lengths, trained_share)

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; matmul peak {peak / 1e9:.1f} GFLOP/s (fp32)")
    print(f"data: {data_source}; {args.rounds} rounds x {args.steps} steps, batch {args.batch_size}, max_length {args.max_length}\n")
    header = f"{'arm':<9} {'tokens/s':>9} {'tokens/CPU-s':>13} {'peak RSS':>9} {'final loss':>11} {'MFU':>6}"
    print(header)
    print("-" * len(header))
    for arm in ARMS:
        mfu = median(arm, "tokens_per_second") * per_token / peak
        final = statistics.median(r["losses"][-1] for r in results[arm])
        print(
            f"{arm:<9} {median(arm, 'tokens_per_second'):>9.1f} {median(arm, 'tokens_per_cpu_second'):>13.1f} "
            f"{median(arm, 'peak_rss_gib'):>7.2f}Gi {final:>11.4f} {100 * mfu:>5.1f}%"
        )
    # Each round's two trials ran back to back: their ratio is robust to the machine slowing down between rounds.
    pairs = list(zip(results["default"], results["baseline"]))
    per_cpu = statistics.median(d["tokens_per_cpu_second"] / b["tokens_per_cpu_second"] for d, b in pairs)
    per_wall = statistics.median(d["tokens_per_second"] / b["tokens_per_second"] for d, b in pairs)
    rss = statistics.median(d["peak_rss_gib"] / b["peak_rss_gib"] for d, b in pairs)
    gap = max(abs(x - y) for d, b in pairs for x, y in zip(d["losses"], b["losses"]))
    print(f"\ndefault / baseline (median of per-round ratios): {per_cpu:.2f}x real tokens per CPU-second, "
          f"{per_wall:.2f}x per second, {rss:.2f}x peak RSS")
    # The baseline runs every layer over max_length positions per sample; at equal speed per position
    # that alone makes the default this much faster, whatever else either arm does.
    padded_per_real = args.steps * args.batch_size * args.max_length / results["baseline"][0]["tokens"]
    print(f"baseline positions per real token trained (padding): {padded_per_real:.2f}; the data's samples: "
          f"median {statistics.median(lengths):.0f} tokens, mean {statistics.mean(lengths):.0f}, "
          f"{sum(n >= args.max_length for n in lengths)} of {len(lengths)} cut at max_length")
    print(f"largest per-step loss difference between the arms: {gap:.2e} (same examples in the same order)")
    print(json.dumps({arm: [{k: v for k, v in r.items() if k != "losses"} for r in results[arm]] for arm in ARMS}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--trial", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        return run_trial(args.trial, args.config)

    if ALPACA_SAMPLE.is_file():
        records, source = alpaca_records(args.samples), f"{ALPACA_SAMPLE.name} ({args.samples} records)"
    else:
        records, source = generated_records(args.samples), f"{args.samples} generated Alpaca-like records"
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        root = Path(tmp)
        train_file = root / "train.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        peak = matmul_peak_flops()
        lengths, trained_share = example_lengths(records, args.max_length)
        results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for round_index in range(args.rounds):
            for arm in ARMS:
                started = time.time()
                results[arm].append(trial(arm, root / f"{arm}-{round_index}", train_file, args))
                done = results[arm][-1]
                print(
                    f"round {round_index + 1} {arm:<8}: {done['tokens_per_cpu_second']:.1f} tokens/CPU-s, "
                    f"{done['tokens_per_second']:.1f} tokens/s, peak RSS {done['peak_rss_gib']:.2f} GiB "
                    f"({time.time() - started:.0f}s)",
                    flush=True,
                )
        report(results, peak, lengths, trained_share, args, source)


if __name__ == "__main__":
    main()
