"""The Trainer's arguments from the training config, and how each batching mode feeds the Trainer."""

from __future__ import annotations

from dataclasses import dataclass

from qwentune.config.training import TrainConfig
from qwentune.data.pack import PackingCollator, PaddingCollator
from qwentune.model.device import Precision


@dataclass(frozen=True)
class BatchingMode:
    sampling: str  # TrainingArguments.train_sampling_strategy
    counts_tokens: str  # TrainingArguments.include_num_input_tokens_seen: count real tokens only
    packed: bool = False
    pad_to_max_length: bool = False


BATCHING = {
    "packed": BatchingMode(sampling="random", counts_tokens="all", packed=True),  # a packed row has no padding
    "grouped": BatchingMode(sampling="group_by_length", counts_tokens="non_padding"),
    "padding": BatchingMode(sampling="random", counts_tokens="non_padding"),
    "max_length": BatchingMode(sampling="random", counts_tokens="non_padding", pad_to_max_length=True),
}


def make_collator(config: TrainConfig, pad_token_id: int, logits_selection: str | None):
    mode = BATCHING[config.data.batching]
    if mode.packed:
        return PackingCollator(logits_selection=logits_selection)
    pad_to = config.data.max_seq_length if mode.pad_to_max_length else None
    return PaddingCollator(pad_token_id, pad_to=pad_to, logits_selection=logits_selection)


def training_arguments(
    config: TrainConfig,
    precision: Precision,
    *,
    device: str,
    has_eval: bool,
    deepspeed: str | dict | None,
    world_size: int,
):
    from transformers import TrainingArguments

    training = config.training
    mode = BATCHING[config.data.batching]
    keep_best = has_eval and training.keeps_best_model
    return TrainingArguments(
        output_dir=training.output_dir,
        num_train_epochs=training.num_train_epochs,
        max_steps=training.max_steps,
        per_device_train_batch_size=training.per_device_train_batch_size,
        per_device_eval_batch_size=training.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_ratio,  # a value below 1 is a share of the total steps
        lr_scheduler_type=training.lr_scheduler_type,
        optim=training.optim,
        max_grad_norm=training.max_grad_norm,
        logging_steps=training.logging_steps,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=None,  # CheckpointFilesCallback rotates, after a new checkpoint is complete
        eval_strategy="steps" if has_eval else "no",
        eval_steps=training.eval_steps,
        prediction_loss_only=True,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        seed=training.seed,
        fp16=precision.fp16,
        bf16=precision.bf16,
        dataloader_pin_memory=training.dataloader_pin_memory and device != "cpu",
        dataloader_num_workers=training.dataloader_num_workers,
        train_sampling_strategy=mode.sampling,
        include_num_input_tokens_seen=mode.counts_tokens,
        report_to=[r for r in training.report_to if r not in ("tensorboard", "none")],  # TensorBoard is wired by the recipe
        disable_tqdm=True,  # the rich progress bar replaces it
        remove_unused_columns=False,
        use_cpu=device == "cpu",
        deepspeed=deepspeed,
        ddp_find_unused_parameters=False if world_size > 1 else None,
    )
