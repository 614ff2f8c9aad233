"""The training recipe, top to bottom: config -> data -> plan -> model -> Trainer -> saved model.

`qwentune train` and `scripts/train.py` call `run_cli`; `run_training` is the Python entry.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qwentune.config.base import ConfigError, load_config
from qwentune.config.training import TrainConfig
from qwentune.console import console, notice
from qwentune.errors import UsageError
from qwentune.paths import writable_folder
from qwentune.train.debug import DEBUG_SAMPLES, DEBUG_STEPS

if TYPE_CHECKING:
    from qwentune.model.device import Precision


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/training_config.yaml", help="training config YAML")
    parser.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' for the newest complete checkpoint in training.output_dir",
    )
    parser.add_argument(
        "--debug", action="store_true", help=f"{DEBUG_SAMPLES} samples, {DEBUG_STEPS} steps, verbose data checks; writes to <output_dir>/debug"
    )
    parser.add_argument("--deepspeed", default=None, help="DeepSpeed config JSON (overrides mindspeed.zero_stage)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=1e-4")


def run_cli(args: argparse.Namespace) -> int:
    config = load_config(TrainConfig, args.config, args.overrides)
    run_training(config, resume_from_checkpoint=args.resume_from_checkpoint, debug=args.debug, deepspeed=args.deepspeed)
    return 0


def run_training(
    config: TrainConfig,
    *,
    resume_from_checkpoint: str | None = None,
    debug: bool = False,
    deepspeed: str | None = None,
) -> dict:
    """Train as `config` says; returns the run's summary (also saved in the output's qwentune_meta.json)."""
    from qwentune.model.loader import quiet_library_noise

    quiet_library_noise()  # before the imports below bring peft and bitsandbytes in
    from qwentune.train.arguments import training_arguments
    from qwentune.train.debug import debug_config
    from qwentune.train.distributed import world_size

    started = time.time()
    inert = config.inert_settings()  # before --debug sets keys of its own
    if debug:
        config = debug_config(config)
        console.print(f"[bold]Debug run[/bold]: {DEBUG_SAMPLES} samples, {DEBUG_STEPS} steps, output in {config.training.output_dir}")
    output_dir = writable_folder(config.training.output_dir, "training.output_dir")
    writable_folder(config.training.logging_dir, "training.logging_dir")
    resume = resolve_resume(resume_from_checkpoint, output_dir)
    run = start_run(config, deepspeed)
    for line in inert:
        run.notice(line)
    tokenizer, train_split, eval_split = prepare_data(run, debug)
    shape = plan_run(run, train_split)
    config = run.config  # the plan may change the batching
    # The Trainer's arguments come before the model: with ZeRO-3 the weights then load already sharded.
    arguments = training_arguments(
        config, run.precision, device=run.device, has_eval=eval_split is not None, deepspeed=run.deepspeed, world_size=world_size()
    )
    model = build_model(run)
    # Saved with every checkpoint and the final model: what inference needs to know about the run.
    meta = {
        "base_model": config.model.model_name_or_path,
        "finetuning_type": config.training.finetuning_type,
        "system_prompt": config.data.default_system_prompt,
        "train_file": config.data.train_file,
        "train_examples": len(train_split.examples),
        "config": config.model_dump(),
    }
    trainer = build_trainer(run, arguments, model, tokenizer, train_split, eval_split, shape, meta, debug)
    result = trainer.train(resume_from_checkpoint=resume)
    return save_output(run, trainer, result, tokenizer, meta, started)


@dataclass
class Run:
    """What every stage of one run shares."""

    config: TrainConfig
    device: str
    precision: Precision
    deepspeed: str | dict | None
    logger: logging.Logger
    main: bool  # the process that prints and writes the final output

    def say(self, *args, **kwargs) -> None:
        if self.main:
            console.print(*args, **kwargs)

    def notice(self, message: str) -> None:
        if self.main:
            notice(message)


def start_run(config: TrainConfig, deepspeed: str | None) -> Run:
    """Device, precision, processes and the log file."""
    from transformers import set_seed

    from qwentune.model.device import select_device, training_precision
    from qwentune.train.callbacks import file_logger
    from qwentune.train.distributed import is_main_process, prepare_platform, resolve_deepspeed

    training = config.training
    set_seed(training.seed)
    device = select_device()
    prepare_platform(config, device)
    run = Run(
        config=config,
        device=device,
        precision=training_precision(config.model.torch_dtype, training.fp16, training.bf16, device),
        deepspeed=resolve_deepspeed(deepspeed, config),
        logger=file_logger(Path(training.logging_dir) / "training.log"),
        main=is_main_process(),
    )
    for note in run.precision.notes:
        run.notice(note)
    run.logger.info("config %s", config.model_dump_json())
    return run


def prepare_data(run: Run, debug: bool):
    """(tokenizer, train split, validation split or None), with one decoded example shown."""
    from qwentune.data.dataset import MIN_RECORDS_PER_WORKER
    from qwentune.data.tokenize import describe_example, load_tokenizer
    from qwentune.train import debug as checks

    model = run.config.model
    tokenizer = load_tokenizer(model.tokenizer_name_or_path or model.model_name_or_path, model.trust_remote_code)
    if run.config.training.stage == "sft":
        train_split, eval_split = load_splits(run.config, tokenizer)
    else:  # preference pairs: prompt + chosen and prompt + rejected, trained on the final reply
        from qwentune.train.preference import load_pair_splits

        train_split, eval_split = load_pair_splits(run.config, tokenizer)
        if train_split.not_pairs:
            run.notice(f"{train_split.not_pairs} records of data.train_file are not preference pairs and were skipped")
    workers = run.config.data.preprocessing_num_workers
    run.say(f"Tokenized in {train_split.workers} of {workers} processes (data.preprocessing_num_workers; one per {MIN_RECORDS_PER_WORKER} records at most)")
    run.say("[bold]One training example[/bold] (labels: the tokens inside ⟦ ⟧ are trained):")
    run.say(describe_example(tokenizer, train_split.examples[0]), markup=False)
    if train_split.truncated:
        run.notice(f"{train_split.truncated} training examples were longer than data.max_seq_length and were truncated")
    if train_split.without_targets:
        run.notice(f"{len(train_split.without_targets)} training examples had no assistant tokens left to train and were dropped")
    if debug and run.config.training.stage == "sft":
        for line in checks.label_statistics(train_split):
            run.say(f"  {line}", markup=False)
        problems = checks.label_problems(train_split, tokenizer, run.config.data.train_on_prompt)
        for problem in problems:
            run.say(f"  [red]problem:[/red] {problem}", markup=True)
        run.say(f"  labels checked: {len(problems)} problem(s)")
    return tokenizer, train_split, eval_split


def load_splits(config: TrainConfig, tokenizer):
    """(train, validation or None) encoded with the chat template and loss mask."""
    from qwentune.data.dataset import encode_records, read_canonical

    data = config.data
    encode = dict(
        max_length=data.max_seq_length,
        train_on_prompt=data.train_on_prompt,
        last_turn_only=data.last_turn_only,
        system_prompt=data.default_system_prompt,
        thinking=data.thinking,
        num_workers=data.preprocessing_num_workers,
    )
    train = encode_records(read_canonical(data.train_file, data.max_samples), tokenizer, **encode)
    if not train.examples:
        raise ConfigError(f"data.train_file {data.train_file}: no example has an assistant turn left to train on")
    if not (data.validation_file and Path(data.validation_file).is_file()):
        return train, None
    records = read_canonical(data.validation_file, data.max_eval_samples)
    validation = encode_records(records, tokenizer, description="Validation", **encode)
    return train, (validation if validation.examples else None)


def plan_run(run: Run, train_split):
    """Print the plan and stop when it cannot fit; shapes come from a meta-device model (nothing loaded yet)."""
    from qwentune.train.distributed import describe_processes, memory_for_this_process, world_size, zero_stage_of
    from qwentune.train.plan import RunPlan, model_shape, with_overrides

    shape = model_shape(run.config)
    if run.config.data.batching == "packed" and not shape.supports_packing:
        run.notice("this model's attention ignores per-example positions, so packing would mix examples: data.batching grouped.")
        run.config = with_overrides(run.config, ["data.batching=grouped"])
    plan = RunPlan(
        config=run.config,
        shape=shape,
        precision=run.precision,
        device=run.device,
        processes=describe_processes(run.deepspeed, run.config, run.device),
        lengths=train_split.lengths,
        trained_tokens=train_split.trained_tokens,
        world_size=world_size(),
        zero_stage=zero_stage_of(run.deepspeed),
    )
    available = memory_for_this_process(run.device)
    line = plan.describe(available)
    run.say(f"[bold]Plan:[/bold] {line}")
    run.logger.info("plan %s", line)
    if run.config.optimization.check_memory:
        plan.check_fits(available)
    return shape


def build_model(run: Run):
    """The model with its attention for the batching, prepared for the fine-tuning method."""
    from qwentune.model.adapters import count_parameters, prepare_for_finetuning
    from qwentune.model.loader import load_causal_lm
    from qwentune.train.attention import isolate_linear_attention, packed_attention
    from qwentune.train.distributed import join_deepspeed_processes

    config = run.config
    if run.deepspeed is not None:
        join_deepspeed_processes(run.device)
    attention = config.model.attn_implementation
    if config.data.batching == "packed" and attention in (None, "sdpa"):
        attention = packed_attention(run.device)
    model = load_causal_lm(
        config.model.model_name_or_path,
        dtype=run.precision.dtype,
        quantization_bit=config.model.quantization_bit,
        trust_remote_code=config.model.trust_remote_code,
        attn_implementation=attention,
    )
    if config.data.batching == "packed":
        # Hybrid models' linear-attention layers would carry state across the row's examples.
        model = isolate_linear_attention(model)
    model = prepare_for_finetuning(model, config, fp32_trainable=run.precision.fp16)
    trainable, total = count_parameters(model)
    run.logger.info("parameters trainable %d total %d attention %s", trainable, total, attention)
    return model


def build_trainer(run: Run, arguments, model, tokenizer, train_split, eval_split, shape, meta: dict, debug: bool):
    from transformers import EarlyStoppingCallback, Trainer
    from transformers.trainer_callback import PrinterCallback

    from qwentune.data.dataset import ExampleDataset
    from qwentune.train.arguments import make_collator
    from qwentune.train.callbacks import (
        CheckpointFilesCallback,
        LogFileCallback,
        RouterLossCallback,
        ThroughputCallback,
    )
    from qwentune.train.debug import describe_batch
    from qwentune.train.progress import RichProgressCallback

    training = run.config.training
    if training.stage == "sft":
        train_dataset = ExampleDataset(train_split.examples)
        eval_dataset = ExampleDataset(eval_split.examples) if eval_split is not None else None
        collator = make_collator(run.config, tokenizer.pad_token_id, shape.logits_selection)
        trainer_class, stage_arguments = Trainer, {}
    else:
        from qwentune.train.preference import preference_parts

        train_dataset, eval_dataset, collator, trainer_class, stage_arguments = preference_parts(
            run.config, model, tokenizer, train_split, eval_split, shape.logits_selection, arguments
        )
    if debug:
        run.say(f"  {describe_batch(collator([train_dataset[i] for i in range(min(2, len(train_dataset)))]))}", soft_wrap=True)
    callbacks = [
        ThroughputCallback(),  # first: it adds tokens/s to the logs the others write out
        LogFileCallback(run.logger),
        CheckpointFilesCallback(model, tokenizer, meta, keep=training.save_total_limit),
        RichProgressCallback(),
    ]
    if getattr(model.config, "output_router_logits", False):
        callbacks.insert(1, RouterLossCallback(model))  # before the callbacks that write logs out
    if "tensorboard" in training.report_to and run.main:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=training.logging_dir)))
    if eval_split is not None and training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
    trainer = trainer_class(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        **stage_arguments,
    )
    trainer.remove_callback(PrinterCallback)  # the progress callback prints instead
    return trainer


def save_output(run: Run, trainer, result, tokenizer, meta: dict, started: float) -> dict:
    """What inference needs, in the output folder itself; the run's summary goes into its metadata."""
    from qwentune.model.checkpoint import save_inference_files
    from qwentune.train.callbacks import ThroughputCallback, plot_loss_curve, write_loss_history

    output_dir = Path(run.config.training.output_dir)
    model = trainer.model
    model.config.use_cache = True  # off only for training (prepare_for_finetuning)
    trainer.save_model(str(output_dir))
    throughput = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ThroughputCallback))
    summary = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "seconds": round(time.time() - started, 3),
        **throughput.summary(),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_eval_loss": trainer.state.best_metric,
    }
    if run.main:
        save_inference_files(output_dir, model, tokenizer, {**meta, "train_summary": summary})
        curve = write_loss_history(output_dir, trainer.state.log_history)
        plot_loss_curve(curve, output_dir / "loss_curve.png")
        if run.config.training.stage != "sft":
            from qwentune.train.preference import plot_preference_curves

            plot_preference_curves(trainer.state.log_history, output_dir / "preference_curves.png")
        run.logger.info("done %s", summary)
        console.print(
            f"[green]Training done[/green] in {summary['seconds']:.0f}s: {result.global_step} steps, "
            f"mean loss {result.training_loss:.4f}, {summary['tokens_per_second'] or 0:,.0f} tokens/s. "
            f"Model: {output_dir}  Log: {Path(run.config.training.logging_dir) / 'training.log'}"
        )
    return summary


def resolve_resume(resume: str | None, output_dir: Path) -> str | None:
    """The checkpoint folder to resume from, checked readable before any work starts."""
    from qwentune.model.checkpoint import COMPLETE_MARKER, check_checkpoint, complete_checkpoints, latest_checkpoint

    if resume is None:
        return None
    if resume == "latest":
        latest = latest_checkpoint(output_dir)
        if latest is None:
            raise UsageError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}")
        check_checkpoint(latest)
        return str(latest)
    folder = Path(resume)
    if not folder.is_dir():
        found = complete_checkpoints(output_dir)
        listed = f"complete checkpoints in {output_dir}: {', '.join(c.name for c in found)}" if found else f"{output_dir} holds no complete checkpoint"
        raise UsageError(
            f"--resume_from_checkpoint: '{folder}' {'is a file, not a folder' if folder.exists() else 'does not exist'}",
            advice=listed,
        )
    if not (folder / COMPLETE_MARKER).is_file():
        raise UsageError(
            f"'{folder}' is not a complete checkpoint (no {COMPLETE_MARKER} marker: it was cut short or is not a "
            "checkpoint). Use --resume_from_checkpoint latest to pick the newest complete one."
        )
    check_checkpoint(folder)
    return str(folder)
