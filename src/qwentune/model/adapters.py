"""Which parameters train: LoRA (QLoRA on a quantized base), full, or the last N layers.

The methods only mark what trains; they also run on a model built on the meta device, which
is how the plan counts trainable parameters before any weight is loaded.
"""

from __future__ import annotations

import torch

from qwentune.config.base import ConfigError
from qwentune.config.training import TrainConfig
from qwentune.errors import UsageError


def _names_peft_maps_to_experts(model) -> set[str]:
    """Leaf names that peft (0.18+) re-targets onto fused MoE expert tensors for this model type.

    For transformers-4 compatibility peft reads `gate_proj`/`up_proj`/`down_proj`/`gate` on a Qwen3-MoE
    or Qwen3-Next model as the experts and the router, whatever module they name (a shared expert's
    `down_proj` included). Its table is private, so a peft without it maps nothing.
    """
    try:
        from peft.utils.transformers_weight_conversion import _MODEL_TO_CONVERSION_PATTERN, _MOE_TARGET_MODULE_MAPPING
    except ImportError:
        return set()
    pattern = _MODEL_TO_CONVERSION_PATTERN.get(getattr(model.config, "model_type", None))
    return set(_MOE_TARGET_MODULE_MAPPING.get(pattern, {}))


def all_linear_modules(model) -> list[str]:
    """The names `lora.target_modules: all-linear` stands for: each nn.Linear but the LM head.

    Resolved here rather than by peft's "all-linear", which on a Qwen3-MoE or Qwen3-Next model also
    wraps the router and the fused experts in parameter adapters: they refuse lora_dropout (default
    0.1), and routing would train. Experts are opt-in (lora.target_parameters); names peft would read
    as experts (a shared expert's projections on those models) are left out.
    """
    head = model.get_output_embeddings()
    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and "lora_" not in name
    }
    return sorted(linear - _names_peft_maps_to_experts(model))


def apply_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    if lora.target_parameters and lora.lora_dropout:
        raise ConfigError(
            f"lora.target_parameters {lora.target_parameters} needs lora.lora_dropout: 0 "
            f"(peft's parameter adapters have no dropout; it is {lora.lora_dropout})"
        )
    target_modules = all_linear_modules(model) if lora.target_modules == "all-linear" else lora.target_modules
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=target_modules,
        target_parameters=lora.target_parameters or None,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
    )
    return get_peft_model(model, peft_config)


def apply_full(model, config: TrainConfig):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UsageError(f"freeze tuning cannot find the decoder layers of {type(model).__name__}; use lora or full")
    return layers


def apply_freeze(model, config: TrainConfig):
    """Train only the last `training.freeze_trainable_layers` decoder layers (and nothing else)."""
    layers = decoder_layers(model)
    keep = config.training.freeze_trainable_layers
    if keep > len(layers):
        raise UsageError(f"training.freeze_trainable_layers is {keep} but the model has {len(layers)} layers")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in layers[len(layers) - keep :]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)
    return model


FINETUNING_METHODS = {"lora": apply_lora, "full": apply_full, "freeze": apply_freeze}


def prepare_for_finetuning(model, config: TrainConfig, *, fp32_trainable: bool = False):
    """Gradient checkpointing (set up before adapters wrap the model), then the method.

    fp32_trainable: keep trainable parameters in fp32 (fp16 mixed precision needs fp32 master
    weights; LoRA adapters already are).
    """
    checkpointing = config.optimization.gradient_checkpointing
    if config.model.quantization_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        # transformers renamed the switch (the old name warns and goes in v6); older 5.x only has the old one.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # With frozen embeddings no input needs grad, and checkpointed blocks would get no gradient.
        model.enable_input_require_grads()
    # Training needs no KV cache; and with one, transformers stops reading packed position_ids as
    # example boundaries (sdpa/eager would attend across examples).
    model.config.use_cache = False
    # MoE: the router's load-balancing loss joins the LM loss with the model's own router_aux_loss_coef
    # (released Qwen3-MoE configs ship output_router_logits false, which suits inference only).
    if getattr(model.config, "router_aux_loss_coef", None):
        model.config.output_router_logits = True
    model = routers_in_fp32(model)
    model = FINETUNING_METHODS[config.training.finetuning_type](model, config)
    if fp32_trainable:
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    return model


def _fp32_routing(forward):
    """A router forward computed in fp32, its routing weights handed back in the experts' dtype."""

    def route(hidden_states):
        logits, weights, experts = forward(hidden_states.float())
        return logits, weights.to(hidden_states.dtype), experts

    return route


def routers_in_fp32(model):
    """MoE routers (…TopKRouter) of a half-precision model kept in fp32, as Qwen trains them.

    bf16 keeps 8 bits of mantissa, so close router logits can tie or swap and send a token to other
    experts; the router is a sliver of the parameters. Other models are returned unchanged.
    """
    for module in model.modules():
        if type(module).__name__.endswith("TopKRouter") and module.weight.dtype in (torch.float16, torch.bfloat16):
            module.float()
            module.forward = _fp32_routing(module.forward)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); a 4-bit parameter stores two values per byte."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel() * (2 if type(parameter).__name__ == "Params4bit" else 1)
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
