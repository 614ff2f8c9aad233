"""Trainer callbacks: the training log file, checkpoint completion, inference files, loss curve."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from qwentune.model.checkpoint import mark_complete, save_inference_files

LOSS_HISTORY_FILE = "loss_history.json"


def file_logger(log_file: Path) -> logging.Logger:
    """A logger writing to results/logs/training.log (appending, so a resumed run continues it)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("qwentune.train")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    return logger


class LogFileCallback(TrainerCallback):
    """Every logged value (loss, lr, grad norm, eval loss) also goes to the training log."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()}
            self.logger.info("step %d epoch %.2f %s", state.global_step, state.epoch or 0.0, json.dumps(shown))


class CheckpointFilesCallback(TrainerCallback):
    """Makes every checkpoint usable for inference on its own, then marks it complete.

    The marker is written last, after the Trainer has saved weights, optimizer and state,
    so a checkpoint cut short by a killed process is never picked for resume or inference.
    """

    def __init__(self, model, tokenizer, meta: dict):
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            save_inference_files(folder, self.model, self.tokenizer, self.meta)
            write_loss_history(folder, state.log_history)
            mark_complete(folder)


def write_loss_history(folder: Path, log_history: list[dict]) -> list[dict]:
    """The loss curve as [{step, loss, eval_loss}] (read by the evaluation report)."""
    curve = [
        {"step": entry["step"], "loss": entry.get("loss"), "eval_loss": entry.get("eval_loss")}
        for entry in log_history
        if "loss" in entry or "eval_loss" in entry
    ]
    (folder / LOSS_HISTORY_FILE).write_text(json.dumps(curve, indent=1), encoding="utf-8")
    return curve


def plot_loss_curve(curve: list[dict], image_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(p["step"], p["loss"]) for p in curve if p.get("loss") is not None]
    evals = [(p["step"], p["eval_loss"]) for p in curve if p.get("eval_loss") is not None]
    figure, axes = plt.subplots(figsize=(7, 4))
    if train:
        axes.plot(*zip(*train), label="training loss")
    if evals:
        axes.plot(*zip(*evals), marker="o", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=110)
    plt.close(figure)
