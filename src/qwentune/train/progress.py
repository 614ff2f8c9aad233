"""The training progress bar (rich): steps, elapsed time, ETA, and the latest loss, lr and tokens/s.

Replaces the Trainer's tqdm bar and its printed log dicts. When the console is not a
terminal (a log file, CI) each logging step prints one line instead of a redrawn bar.
"""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from qwentune.console import console


def describe_log(step: int, max_steps: int, logs: dict) -> str:
    parts = [f"step {step}/{max_steps}"]
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    if "eval_loss" in logs:
        parts.append(f"validation loss {logs['eval_loss']:.4f}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if "grad_norm" in logs:
        parts.append(f"grad norm {logs['grad_norm']:.3f}")
    if "tokens_per_second" in logs:
        parts.append(f"{logs['tokens_per_second']:,.0f} tokens/s")
    return "  ".join(parts)


class RichProgressCallback(TrainerCallback):
    def __init__(self):
        self.progress: Progress | None = None
        self.printing = False
        self.train_task = self.eval_task = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.printing = state.is_world_process_zero
        if not (self.printing and console.is_terminal):
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.progress.start()
        self.train_task = self.progress.add_task("Training", total=state.max_steps, completed=state.global_step, status="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.train_task, completed=state.global_step)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.progress is None:
            return
        if self.eval_task is None:
            self.eval_task = self.progress.add_task("Validating", total=len(eval_dataloader), status="")
        self.progress.advance(self.eval_task)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.progress is not None and self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (self.printing and logs and ("loss" in logs or "eval_loss" in logs)):
            return
        line = describe_log(state.global_step, state.max_steps, logs)
        if self.progress is None:
            console.print(line)
            return
        if "loss" in logs:
            self.progress.update(self.train_task, status=line.split("  ", 1)[-1])
        if "eval_loss" in logs:
            self.progress.console.print(line)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
