"""The training recipe, top to bottom: config -> data -> model -> Trainer -> saved model.

`qwentune train` and `scripts/train.py` call `run_cli`; `run_training` is the Python entry.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from qwentune.config.base import ConfigError, load_config
from qwentune.config.training import TrainConfig
from qwentune.console import console, notice

DEBUG_SAMPLES = 16
DEBUG_STEPS = 4


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/training_config.yaml", help="training config YAML")
    parser.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' for the newest complete checkpoint in training.output_dir",
    )
    parser.add_argument("--debug", action="store_true", help=f"{DEBUG_SAMPLES} samples, {DEBUG_STEPS} steps, verbose data checks")
    parser.add_argument("--deepspeed", default=None, help="DeepSpeed config JSON (overrides mindspeed.zero_stage)")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=1e-4")


def run_cli(args: argparse.Namespace) -> int:
    try:
        config = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    run_training(config, resume_from_checkpoint=args.resume_from_checkpoint, debug=args.debug, deepspeed=args.deepspeed)
    return 0


def _resolve_resume(resume: str | None, output_dir: Path) -> str | None:
    from qwentune.model.checkpoint import COMPLETE_MARKER, latest_checkpoint

    if resume is None:
        return None
    if resume == "latest":
        latest = latest_checkpoint(output_dir)
        if latest is None:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}")
        return str(latest)
    folder = Path(resume)
    if not (folder / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(
            f"'{folder}' is not a complete checkpoint (no {COMPLETE_MARKER} marker: it was cut short or is not a "
            "checkpoint). Use --resume_from_checkpoint latest to pick the newest complete one."
        )
    return str(folder)


def _report_platform(config: TrainConfig, device: str) -> None:
    if config.mindspeed.use_mindspeed and device != "npu":
        notice(f"mindspeed.use_mindspeed is set but no Ascend NPU is available: training with PyTorch on {device}.")


def _training_dtype(config: TrainConfig, device: str):
    """The weights' dtype; half precision only where the device trains in it, else fp32 with a notice."""
    import torch

    from qwentune.model.device import bf16_supported, resolve_dtype

    dtype = resolve_dtype(config.model.torch_dtype, device)
    half_ok = {torch.bfloat16: bf16_supported(device), torch.float16: device != "cpu"}
    if dtype in half_ok and not half_ok[dtype]:
        notice(f"model.torch_dtype {config.model.torch_dtype} is not supported for training on {device}: using float32.")
        return torch.float32
    for flag in ("fp16", "bf16"):
        if getattr(config.training, flag) and device == "cpu":
            notice(f"training.{flag} needs an accelerator: mixed precision is off on cpu.")
            setattr(config.training, flag, False)
    return dtype


def run_training(
    config: TrainConfig,
    *,
    resume_from_checkpoint: str | None = None,
    debug: bool = False,
    deepspeed: str | None = None,
) -> dict:
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.integrations import TensorBoardCallback

    from qwentune.data.dataset import ExampleDataset, PaddingCollator, encode_records, read_canonical
    from qwentune.data.tokenize import describe_example, load_tokenizer
    from qwentune.model.adapters import count_parameters, prepare_for_finetuning
    from qwentune.model.checkpoint import save_inference_files
    from qwentune.model.device import select_device
    from qwentune.model.loader import load_causal_lm
    from qwentune.train.callbacks import (
        CheckpointFilesCallback,
        LogFileCallback,
        file_logger,
        plot_loss_curve,
        write_loss_history,
    )

    started = time.time()
    training = config.training
    output_dir = Path(training.output_dir)
    resume = _resolve_resume(resume_from_checkpoint, output_dir)
    set_seed(training.seed)
    device = select_device()
    _report_platform(config, device)
    logger = file_logger(Path(training.logging_dir) / "training.log")
    logger.info("config %s", config.model_dump_json())

    # Data
    tokenizer = load_tokenizer(
        config.model.tokenizer_name_or_path or config.model.model_name_or_path, config.model.trust_remote_code
    )
    limit = DEBUG_SAMPLES if debug else config.data.max_samples
    encode = dict(
        max_length=config.data.max_seq_length,
        train_on_prompt=config.data.train_on_prompt,
        last_turn_only=config.data.last_turn_only,
        system_prompt=config.data.default_system_prompt,
    )
    train_split = encode_records(read_canonical(config.data.train_file, limit), tokenizer, **encode)
    if not train_split.examples:
        raise ValueError(f"{config.data.train_file}: no example has an assistant turn left to train on")
    eval_split = None
    validation_file = config.data.validation_file
    if validation_file and Path(validation_file).is_file():
        eval_limit = DEBUG_SAMPLES if debug else config.data.max_eval_samples
        eval_split = encode_records(read_canonical(validation_file, eval_limit), tokenizer, description="Validation", **encode)
    console.print("[bold]One training example[/bold] (labels: the tokens inside ⟦ ⟧ are trained):")
    console.print(describe_example(tokenizer, train_split.examples[0]), markup=False)
    if train_split.truncated:
        notice(f"{train_split.truncated} training examples were longer than data.max_seq_length and were truncated")

    # Model
    dtype = _training_dtype(config, device)
    model = load_causal_lm(
        config.model.model_name_or_path,
        dtype=dtype,
        quantization_bit=config.model.quantization_bit,
        trust_remote_code=config.model.trust_remote_code,
        attn_implementation=config.model.attn_implementation,
    )
    model = prepare_for_finetuning(model, config)
    trainable, total = count_parameters(model)
    tokens = sum(len(e.input_ids) for e in train_split.examples)
    plan = (
        f"{config.training.finetuning_type} on {device} ({str(dtype).removeprefix('torch.')}): "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%); "
        f"{len(train_split.examples)} examples, {tokens:,} tokens per epoch"
    )
    console.print(f"[bold]Plan:[/bold] {plan}")
    logger.info("plan %s", plan)

    # Trainer
    has_eval = eval_split is not None and len(eval_split.examples) > 0
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=training.num_train_epochs,
        max_steps=DEBUG_STEPS if debug else training.max_steps,
        per_device_train_batch_size=training.per_device_train_batch_size,
        per_device_eval_batch_size=training.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_ratio,
        lr_scheduler_type=training.lr_scheduler_type,
        optim=training.optim,
        max_grad_norm=training.max_grad_norm,
        logging_steps=1 if debug else training.logging_steps,
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=training.eval_steps,
        seed=training.seed,
        fp16=training.fp16,
        bf16=training.bf16,
        gradient_checkpointing=False,  # enabled in prepare_for_finetuning, before adapters wrap the model
        dataloader_pin_memory=training.dataloader_pin_memory and device != "cpu",
        dataloader_num_workers=training.dataloader_num_workers,
        report_to=[],
        remove_unused_columns=False,
        deepspeed=deepspeed,
        ddp_find_unused_parameters=False if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    meta = {
        "base_model": config.model.model_name_or_path,
        "finetuning_type": config.training.finetuning_type,
        "system_prompt": config.data.default_system_prompt,
        "train_file": config.data.train_file,
        "train_examples": len(train_split.examples),
        "config": config.model_dump(),
    }
    from torch.utils.tensorboard import SummaryWriter

    callbacks = [
        LogFileCallback(logger),
        CheckpointFilesCallback(model, tokenizer, meta),
        TensorBoardCallback(SummaryWriter(log_dir=training.logging_dir)),
    ]
    if has_eval and training.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
        arguments.load_best_model_at_end = True
        arguments.metric_for_best_model = "eval_loss"
        arguments.greater_is_better = False
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=ExampleDataset(train_split.examples),
        eval_dataset=ExampleDataset(eval_split.examples) if has_eval else None,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    result = trainer.train(resume_from_checkpoint=resume)

    # Final output: what inference needs, in the output folder itself.
    trainer.save_model(str(output_dir))
    summary = {"train_loss": result.training_loss, "global_step": result.global_step, "seconds": time.time() - started}
    if trainer.is_world_process_zero():
        save_inference_files(output_dir, model, tokenizer, {**meta, "train_summary": summary})
        curve = write_loss_history(output_dir, trainer.state.log_history)
        plot_loss_curve(curve, output_dir / "loss_curve.png")
        logger.info("done %s", summary)
        console.print(
            f"[green]Training done[/green] in {summary['seconds']:.0f}s: {result.global_step} steps, "
            f"mean loss {result.training_loss:.4f}. Model: {output_dir}  Log: {Path(training.logging_dir) / 'training.log'}"
        )
    return summary
