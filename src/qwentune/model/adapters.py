"""Which parameters train: LoRA (and QLoRA on a quantized base), full, or the last N layers."""

from __future__ import annotations

from qwentune.config.training import TrainConfig


def apply_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.model.quantization_bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.optimization.gradient_checkpointing
        )
    lora = config.lora
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
    )
    return get_peft_model(model, peft_config)


def apply_full(model, config: TrainConfig):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def apply_freeze(model, config: TrainConfig):
    """Train only the last `training.freeze_trainable_layers` decoder layers (and nothing else)."""
    layers = model.model.layers
    keep = config.training.freeze_trainable_layers
    if keep > len(layers):
        raise ValueError(f"training.freeze_trainable_layers is {keep} but the model has {len(layers)} layers")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in layers[len(layers) - keep :]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)
    return model


FINETUNING_METHODS = {"lora": apply_lora, "full": apply_full, "freeze": apply_freeze}


def prepare_for_finetuning(model, config: TrainConfig):
    if config.optimization.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        # With frozen embeddings no input needs grad, and checkpointed blocks would get no gradient.
        model.enable_input_require_grads()
    return FINETUNING_METHODS[config.training.finetuning_type](model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total)."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
