"""DPO throughput: our packed pairs against padded pairs, and against TRL's DPOTrainer, side by side.

LoRA DPO (sigmoid loss, beta 0.1, reference = the policy with adapters disabled) on the embedded
demo model (SmolLM2-135M) over generated preference pairs with an Alpaca-like length spread
(short prompts, replies log-normal around ~60 and ~100 words). Every arm runs the same steps,
batch size, learning rate, LoRA settings and pairs; they differ only in how a batch is built and
who runs the loop:

  packed       ours, data.batching packed: a batch's 2n sequences in one row, per-sequence
               attention, logits only at reply positions
  padded       ours, data.batching padding: 2n rows padded to the longest, logits everywhere
  trl          TRL DPOTrainer, its defaults (chosen and rejected concatenated, padded)
  trl_padfree  TRL DPOTrainer with padding_free=True

Each trial is a fresh process; arms alternate for a few rounds and medians are reported: real
(non-padding) tokens of the pairs trained per CPU-second and per wall-second of the training loop
(model loading and tokenizing excluded), and the final loss.

    PYTHONPATH=src python benchmarks/dpo_throughput.py                    # 2 rounds x 6 steps x 4 pairs
    PYTHONPATH=src python benchmarks/dpo_throughput.py --rounds 3 --steps 8 --arms packed trl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("packed", "padded", "trl", "trl_padfree")
SYSTEM_PROMPT = "You are a helpful assistant."
WORDS = "the model answers questions about data language science history code music water cities people".split()


def generated_pairs(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(mu: float, cap: int) -> str:
        return " ".join(rng.choices(WORDS, k=min(cap, max(2, int(rng.lognormvariate(mu, 0.8))))))

    return [
        {"id": f"pair-{i}", "source": "benchmark", "lang": "en",
         "messages": [{"role": "user", "content": text(2.6, 60)}],
         "chosen": {"role": "assistant", "content": text(4.1, 300)},
         "rejected": {"role": "assistant", "content": text(4.6, 300)}, "meta": {}}
        for i in range(count)
    ]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def loop_timer(timing: dict):
    """A callback that writes the training loop's CPU and wall seconds into `timing` ("cpu", "wall")."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timing["cpu"], timing["wall"] = cpu_seconds(), time.perf_counter()

        def on_train_end(self, *a, **k):
            timing["cpu"], timing["wall"] = cpu_seconds() - timing["cpu"], time.perf_counter() - timing["wall"]

    return LoopTimer()


def real_tokens(pairs: list[dict], tokenizer, max_length: int) -> list[int]:
    """Tokens of each pair, both sides (prompt + reply each), as our encoder renders them."""
    from qwentune.train.preference import encode_pairs

    split = encode_pairs(pairs, tokenizer, max_length=max_length, system_prompt=SYSTEM_PROMPT)
    return split.lengths


def run_ours(arm: str, train_file: Path, folder: Path, args) -> dict:

    from qwentune.config.base import validate
    from qwentune.config.training import TrainConfig
    from qwentune.train import recipe

    config = validate(TrainConfig, {
        "model": {"model_name_or_path": "embedded:demo-model"},
        "data": {"train_file": str(train_file), "validation_file": None, "max_seq_length": args.max_length,
                 "default_system_prompt": SYSTEM_PROMPT, "batching": "packed" if arm == "packed" else "padding"},
        "training": {"stage": "dpo", "pref_beta": 0.1, "output_dir": str(folder / "out"), "logging_dir": str(folder / "logs"),
                     "max_steps": args.steps, "per_device_train_batch_size": args.batch_size, "learning_rate": 1e-4,
                     "warmup_ratio": 0, "lr_scheduler_type": "constant", "logging_steps": 1, "save_steps": 10_000,
                     "report_to": [], "seed": 7},
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "optimization": {"check_memory": False},
    })
    timing = {}

    original = recipe.build_trainer

    def build_trainer(*a, **k):
        trainer = original(*a, **k)
        trainer.add_callback(loop_timer(timing))
        if arm == "padded":  # the common padded batch: logits (and their softmax) at every position
            trainer.data_collator.logits_selection = None
        return trainer

    recipe.build_trainer = build_trainer
    summary = recipe.run_training(config)
    losses = [e["loss"] for e in json.loads((folder / "out" / "trainer_state.json").read_text())["log_history"] if "loss" in e] if (folder / "out" / "trainer_state.json").is_file() else []
    return {"cpu": timing["cpu"], "wall": timing["wall"], "final_loss": losses[-1] if losses else summary["train_loss"], "steps": summary["global_step"]}


def run_trl(arm: str, train_file: Path, folder: Path, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from qwentune.assets import resolve_model_name
    from qwentune.data.tokenize import load_tokenizer

    path = resolve_model_name("embedded:demo-model")
    tokenizer = load_tokenizer(path)
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    system = [{"role": "system", "content": SYSTEM_PROMPT}]
    dataset = Dataset.from_list([{"prompt": system + r["messages"], "chosen": [r["chosen"]], "rejected": [r["rejected"]]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    config = DPOConfig(
        output_dir=str(folder / "out"), max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=1e-4,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], seed=7,
        beta=0.1, loss_type="sigmoid", max_length=args.max_length, padding_free=arm == "trl_padfree", use_cpu=True,
        disable_tqdm=True,
        gradient_checkpointing=False,  # TRL turns it on by default; ours is off: same compute per token
    )
    timing = {}

    trainer = DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[loop_timer(timing)],
    )
    result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"cpu": timing["cpu"], "wall": timing["wall"], "final_loss": losses[-1] if losses else result.training_loss, "steps": result.global_step}


def trial(arm: str, train_file: Path, args) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"dpo-bench-{arm}-") as folder:
        command = [sys.executable, __file__, "--trial", arm, "--train_file", str(train_file), "--steps", str(args.steps),
                   "--batch_size", str(args.batch_size), "--max_length", str(args.max_length), "--result", f"{folder}/result.json"]
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"trial {arm} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(Path(folder, "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=4, help="pairs per step")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--trial", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--train_file", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        with tempfile.TemporaryDirectory() as folder:
            run = run_trl if args.trial.startswith("trl") else run_ours
            result = run(args.trial, Path(args.train_file), Path(folder), args)
        Path(args.result).write_text(json.dumps(result))
        return

    from qwentune.assets import resolve_model_name
    from qwentune.data.tokenize import load_tokenizer

    pairs = generated_pairs(args.steps * args.batch_size)  # each arm sees every pair once, in the same order
    tokenizer = load_tokenizer(resolve_model_name("embedded:demo-model"))
    lengths = real_tokens(pairs, tokenizer, args.max_length)
    with tempfile.TemporaryDirectory(prefix="dpo-bench-data-") as data:
        train_file = Path(data) / "train.jsonl"
        train_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
        for round_ in range(args.rounds):
            for arm in args.arms:
                results[arm].append(trial(arm, train_file, args))
                print(f"round {round_ + 1} {arm}: {results[arm][-1]}", flush=True)
    tokens = sum(lengths)
    print(f"\nSetup: embedded:demo-model (SmolLM2-135M), LoRA r16 all-linear, DPO sigmoid beta 0.1, {args.steps} steps x "
          f"{args.batch_size} pairs, {len(pairs)} pairs, {tokens:,} real tokens (both sides, prompt included; pair length "
          f"median {statistics.median(lengths):.0f}, max {max(lengths)}), {args.rounds} rounds, torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'arm':<12} {'tokens/CPU-s':>13} {'tokens/s wall':>14} {'CPU-s':>8} {'wall s':>8} {'final loss':>11}")
    base = None
    for arm in args.arms:
        cpu = statistics.median(r["cpu"] for r in results[arm])
        wall = statistics.median(r["wall"] for r in results[arm])
        loss = statistics.median(r["final_loss"] for r in results[arm])
        per_cpu = tokens / cpu
        base = base or per_cpu
        print(f"{arm:<12} {per_cpu:>13,.1f} {tokens / wall:>14,.1f} {cpu:>8.1f} {wall:>8.1f} {loss:>11.4f}   ({per_cpu / base:.2f}x {args.arms[0]})")


if __name__ == "__main__":
    main()
