"""Trainer callbacks: throughput, the training log file, complete checkpoints, the loss curve."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from qwentune.fsutil import atomic_write
from qwentune.model.checkpoint import COMPLETE_MARKER, complete_checkpoints, mark_complete, save_inference_files
from qwentune.train.distributed import pooled_means

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


class ThroughputCallback(TrainerCallback):
    """Adds `tokens_per_second` (real tokens: no padding) to every training log, and totals the run.

    Must come before the callbacks that write logs out (TensorBoard, the log file): they
    receive the same `logs` dict.
    """

    def __init__(self):
        self.started = self.cpu_started = self.finished = self.cpu_finished = 0.0
        self.tokens_at_start = self.tokens = 0
        self._last = (0.0, 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.finished = time.time()
        self.cpu_started = self.cpu_finished = time.process_time()
        self.tokens_at_start = self.tokens = state.num_input_tokens_seen
        self._last = (self.started, self.tokens)

    def on_step_end(self, args, state, control, **kwargs):
        self.finished, self.cpu_finished = time.time(), time.process_time()
        self.tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        last_time, last_tokens = self._last
        elapsed = self.finished - last_time
        if elapsed > 0:
            logs["tokens_per_second"] = round((self.tokens - last_tokens) / elapsed, 2)
        self._last = (self.finished, self.tokens)

    def summary(self) -> dict:
        """Tokens trained in this session, wall and (this process's) CPU seconds of the training loop."""
        tokens = self.tokens - self.tokens_at_start
        seconds, cpu_seconds = self.finished - self.started, self.cpu_finished - self.cpu_started
        return {
            "train_tokens": tokens,
            "train_loop_seconds": round(seconds, 3),
            "train_loop_cpu_seconds": round(cpu_seconds, 3),
            "tokens_per_second": round(tokens / seconds, 2) if seconds else None,
        }


class RouterLossCallback(TrainerCallback):
    """Adds `router_aux_loss` (an MoE model's load-balancing loss, before its coefficient) to training logs.

    The logged `loss` already includes `router_aux_loss_coef * router_aux_loss`; this shows how
    balanced the routing is. Reads each training forward's output through a hook on the model.
    """

    def __init__(self, model):
        self._values: list[float] = []
        model.register_forward_hook(self._record)

    def _record(self, module, args, output):
        aux_loss = getattr(output, "aux_loss", None)
        if module.training and aux_loss is not None:
            self._values.append(float(aux_loss.detach()))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        values, self._values = self._values, []
        pooled = pooled_means({"router_aux_loss": (sum(values), len(values))})
        if "router_aux_loss" in pooled:
            logs["router_aux_loss"] = round(pooled["router_aux_loss"], 6)


class LogFileCallback(TrainerCallback):
    """Every logged value (loss, lr, grad norm, tokens/s, eval loss) also goes to the training log."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()}
            self.logger.info("step %d epoch %.2f %s", state.global_step, state.epoch or 0.0, json.dumps(shown))


class CheckpointFilesCallback(TrainerCallback):
    """Makes every checkpoint usable for inference on its own, marks it complete, then rotates.

    The marker is written last, once every process has saved its part, so a checkpoint cut
    short by a killed process is never picked for resume or inference. Old checkpoints are
    deleted here (the Trainer's own rotation is off) and only after the new one is complete,
    so a complete checkpoint survives a kill at any moment. The best checkpoint is kept.
    """

    def __init__(self, model, tokenizer, meta: dict, keep: int | None):
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.keep = keep

    def on_step_end(self, args, state, control, **kwargs):
        # A checkpoint folder about to be written again (a resumed run) is not complete until it is.
        if control.should_save and state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE_MARKER).unlink(missing_ok=True)

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            save_inference_files(folder, self.model, self.tokenizer, self.meta)
            write_loss_history(folder, state.log_history)
            mark_complete(folder)
        self._rotate(Path(args.output_dir), state.best_model_checkpoint)

    def _rotate(self, output_dir: Path, best: str | None) -> None:
        complete = complete_checkpoints(output_dir)
        if not complete:
            return
        newest = _step_of(complete[-1])
        # Folders without the marker older than the newest complete one: leftovers of a killed run.
        leftovers = [
            p for p in output_dir.glob("checkpoint-*") if p not in complete and _step_of(p) is not None and _step_of(p) < newest
        ]
        # Never the newest (just written) nor the best: with a limit of 1 both stay.
        removable = [p for p in complete[:-1] if not (best and p.resolve() == Path(best).resolve())]
        excess = len(complete) - self.keep if self.keep else 0
        for folder in leftovers + removable[: max(excess, 0)]:
            shutil.rmtree(folder, ignore_errors=True)


def _step_of(checkpoint: Path) -> int | None:
    number = checkpoint.name.removeprefix("checkpoint-")
    return int(number) if number.isdigit() else None


def write_loss_history(folder: Path, log_history: list[dict]) -> list[dict]:
    """The loss curve as [{step, loss, eval_loss}] (read by the evaluation report)."""
    curve = [
        {"step": entry["step"], "loss": entry.get("loss"), "eval_loss": entry.get("eval_loss")}
        for entry in log_history
        if "loss" in entry or "eval_loss" in entry
    ]
    atomic_write(folder / LOSS_HISTORY_FILE, json.dumps(curve, indent=1))
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
    if train or evals:
        axes.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=110)
    plt.close(figure)
