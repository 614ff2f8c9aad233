"""`python quick_start.py`: the environment report and the whole flow on the embedded default.

Each stage calls the same function as its own command; `--full` runs them in order and closes
with one answer from the fine-tuned model and the headline metrics before and after.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import time
from pathlib import Path

from rich.table import Table

from qwentune import paths
from qwentune.cli import add_verbose_flag, guarded
from qwentune.console import console
from qwentune.errors import RunFailed

DATA_PRESET = "config/presets/quickstart_data.yaml"
TRAIN_PRESET = "config/presets/quickstart_train.yaml"
EVAL_PRESET = "config/presets/quickstart_eval.yaml"
SAMPLE_QUESTION = "你好，请介绍一下你自己。"
# Installed by hand for Ascend, so not among the declared dependencies.
PLATFORM_PACKAGES = ("torch_npu", "mindspeed")
HEADLINE_METRICS = ("bleu", "rougeL", "bertscore", "perplexity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quick_start.py", description="qwentune quick start: status, or run stages of the whole flow.")
    stages = parser.add_argument_group("stages (any combination; --full runs all)")
    for flag, help_text in [
        ("--status", "environment report: Python, device, dependency versions against the supported range, embedded assets, data, checkpoints"),
        ("--install", "install the requirements (pip) and fetch the embedded assets"),
        ("--download", "fetch datasets into data/raw (falls back to the bundled demo data when offline)"),
        ("--preprocess", "convert, clean and split data/raw into data/processed"),
        ("--train", "fine-tune with the training config"),
        ("--evaluate", "evaluate base vs tuned and write the reports"),
        ("--full", "install, download, preprocess, train, evaluate, then one sample answer"),
    ]:
        stages.add_argument(flag, action="store_true", help=help_text)
    parser.add_argument("--datasets", nargs="+", default=["demo"], help="datasets to download (default: the bundled demo data)")
    parser.add_argument("--data_config", default=DATA_PRESET, help="preprocessing config (default: the quickstart preset)")
    parser.add_argument("--train_config", default=TRAIN_PRESET, help="training config (default: the quickstart preset)")
    parser.add_argument("--eval_config", default=EVAL_PRESET, help="evaluation config (default: the quickstart preset)")
    add_verbose_flag(parser)
    return parser


# --- status -----------------------------------------------------------------------------------------

def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _dependency_lines() -> list[tuple[str, str]]:
    """Each declared dependency: installed version, the supported range, and what a gap costs."""
    from qwentune.versions import dependency_versions

    lines = []
    for dependency in dependency_versions():
        supported = f"supported {dependency.supported or 'any'}"
        if dependency.in_range is None:
            extra = f": pip install -e '.[{dependency.extra}]'" if dependency.extra else ""
            state = f"[yellow]not installed[/yellow]{extra}"
        else:
            state = "[green]ok[/green]" if dependency.in_range else "[red]outside the supported range[/red]"
        line = f"{dependency.installed or '-'}  ({supported})  {state}"
        if dependency.name == "transformers" and dependency.installed:
            line += f"; {_logits_feature()}"
        lines.append((dependency.name, line))
    return lines


def _logits_feature() -> str:
    """What this transformers does with the trained-positions-only logits (probed, as training does)."""
    from transformers import Qwen2ForCausalLM

    from qwentune.model.logits import logits_selection

    selection = logits_selection(Qwen2ForCausalLM)
    if selection == "mask":
        return "logits at trained positions: per-row boolean mask"
    if selection == "positions":
        return "[yellow]no boolean logits_to_keep[/yellow]: padded batches compute logits at the union of trained positions"
    return "[yellow]no logits_to_keep selection[/yellow]: logits at every position (more memory)"


def _device_line() -> str:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    from qwentune.model.device import select_device

    device = select_device()
    if device == "cuda":
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        return f"CUDA: {torch.cuda.device_count()} × {', '.join(sorted(names))}"
    if device == "npu":
        return f"Ascend NPU: {torch.npu.device_count()} device(s)"
    return f"CPU only ({torch.get_num_threads()} threads)"


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def print_status() -> int:
    table = Table(title="qwentune status", show_lines=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("Python", f"{platform.python_version()} ({sys.executable})")
    table.add_row("device", _device_line())
    for name, line in _dependency_lines():
        table.add_row(name, line)
    table.add_row("Ascend", ", ".join(f"{p} {_version(p)}" for p in PLATFORM_PACKAGES))
    from qwentune.assets import asset_status

    for asset in asset_status():
        state = "[green]ready[/green]" if asset["ready"] else "[yellow]not fetched[/yellow]"
        table.add_row(f"asset {asset['name']}", f"{state} {asset['path']}  {asset.get('detail', '')}")
    raw = sorted(p.name for p in paths.RAW_DATA_DIR.iterdir()) if paths.RAW_DATA_DIR.is_dir() else []
    table.add_row("raw data", ", ".join(raw) or "none (python data/download_data.py --list)")
    splits = sorted(paths.PROCESSED_DATA_DIR.glob("*.jsonl")) if paths.PROCESSED_DATA_DIR.is_dir() else []
    table.add_row("processed", ", ".join(f"{p.name}: {_count_lines(p)}" for p in splits) or "none")
    from qwentune.model.checkpoint import complete_checkpoints, holds_model

    checkpoints = complete_checkpoints(paths.CHECKPOINTS_DIR)
    final = "final model" if holds_model(paths.CHECKPOINTS_DIR) else "no final model"
    table.add_row("checkpoints", f"{final}; {len(checkpoints)} complete checkpoint(s) in {paths.CHECKPOINTS_DIR}")
    report = paths.EVALUATION_DIR / "evaluation_report.html"
    table.add_row("evaluation", str(report) if report.is_file() else "none")
    console.print(table)
    return 0


# --- stages -----------------------------------------------------------------------------------------

def install() -> None:
    """The requirements were installed by quick_start.py before this module could load; fetch the assets."""
    from qwentune.assets import ASSETS, asset_path

    for key in ASSETS:
        console.print(f"embedded asset {key}: {asset_path(key)}")


def download(datasets: list[str]) -> None:
    from qwentune.data.download import download_datasets

    download_datasets(datasets, paths.RAW_DATA_DIR, fallback_to_demo=True)


def preprocess(data_config: str, train_config: str) -> None:
    """Lengths are measured with the tokenizer of the model that will be trained."""
    from qwentune.config.base import load_config
    from qwentune.config.preprocess import PreprocessConfig
    from qwentune.config.training import TrainConfig
    from qwentune.data.preprocess import run_preprocess

    model = load_config(TrainConfig, train_config).model
    config = load_config(PreprocessConfig, data_config)
    config.tokenizer = model.tokenizer_name_or_path or model.model_name_or_path
    report = run_preprocess(config)
    if report.exit_code:
        raise RunFailed(f"preprocessing failed: {'; '.join(p.message for p in report.errors)}")


def train(train_config: str) -> dict:
    from qwentune.config.base import load_config
    from qwentune.config.training import TrainConfig
    from qwentune.train.recipe import run_training

    return run_training(load_config(TrainConfig, train_config))


def evaluate(eval_config: str) -> dict:
    from qwentune.config.base import load_config
    from qwentune.config.evaluation import EvalConfig
    from qwentune.evaluate.runner import run_evaluation

    return run_evaluation(load_config(EvalConfig, eval_config))


def sample_answer() -> str:
    from qwentune.infer.engine import QwenInference

    answer = QwenInference(str(paths.CHECKPOINTS_DIR)).generate(SAMPLE_QUESTION, max_new_tokens=64)
    console.print(f"[bold]Q:[/bold] {SAMPLE_QUESTION}\n[bold]A:[/bold] {answer}", markup=True)
    return answer


def _format_metric(value) -> str:
    if isinstance(value, dict):
        return "n/a"
    return "-" if value is None else f"{value:.3f}"


def print_summary(timings: dict[str, float], results: dict | None) -> None:
    table = Table(title="quick start summary", title_justify="left")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.0f}")
    console.print(table)
    if results:
        metrics = Table(title="headline metrics (all test samples)", title_justify="left")
        metrics.add_column("metric")
        for model in results["models"]:
            metrics.add_column(model, justify="right")
        for name in HEADLINE_METRICS:
            row = [_format_metric(results["overall"][m].get(name)) for m in results["models"]]
            metrics.add_row(name, *row)
        console.print(metrics)
    console.print(
        f"Outputs: model {paths.CHECKPOINTS_DIR}, logs {paths.LOGS_DIR} (tensorboard --logdir {paths.LOGS_DIR}), "
        f"report {paths.EVALUATION_DIR / 'evaluation_report.html'}"
    )


def main(argv: list[str] | None = None) -> int:
    """quick_start.py: its errors reach the user through the same single handler as every stage's."""
    args = build_parser().parse_args(argv)
    return guarded(lambda: run(args), verbose=args.verbose)


def run(args: argparse.Namespace) -> int:
    if args.full:
        args.install = args.download = args.preprocess = args.train = args.evaluate = True
    if not any((args.status, args.install, args.download, args.preprocess, args.train, args.evaluate)):
        build_parser().print_help()
        return 0
    if args.status:
        print_status()
    stages = [
        ("install", args.install, install),
        ("download", args.download, lambda: download(args.datasets)),
        ("preprocess", args.preprocess, lambda: preprocess(args.data_config, args.train_config)),
        ("train", args.train, lambda: train(args.train_config)),
        ("evaluate", args.evaluate, lambda: evaluate(args.eval_config)),
    ]
    timings: dict[str, float] = {}
    results = None
    for name, wanted, step in stages:
        if not wanted:
            continue
        console.rule(f"[bold]{name}")
        started = time.time()
        outcome = step()
        timings[name] = time.time() - started
        if name == "evaluate":
            results = outcome
    if args.full:
        console.rule("[bold]sample answer from the fine-tuned model")
        started = time.time()
        sample_answer()
        timings["sample answer"] = time.time() - started
    if timings:
        print_summary(timings, results)
    return 0
