"""The plan printed before training: parameters, memory, steps and tokens, and whether it fits.

The model is first built on the meta device (no memory, no weights read) and the fine-tuning
method applied to it, so trainable parameters are counted exactly and a run that cannot fit
stops before loading gigabytes, with the settings that would fit.

Memory model (bytes; b = bytes per weight value, t = per trainable value):
  weights      total * b (MoE: every expert, routed or not); QLoRA: quantized linear weights at 4 or 8 bits (+3% for their
               scales), the rest upcast to fp32 by peft's k-bit preparation
  gradients    trainable * t                      (ZeRO-2/3: split across processes)
  optimizer    trainable * states * t             (AdamW: 2 states; 8-bit optimizers: 1 byte each; ZeRO-1+: split)
  activations  per token of the largest micro-batch, per layer (10 * hidden + 4 * intermediate)
               values (MoE: intermediate = the routed experts' widths plus the shared expert's); with gradient checkpointing only each layer's input plus one layer
               recomputed; plus fp32 logits, their log-softmax and gradient for every position
               whose logit is computed. Memory-efficient attention stores no score matrix.
  overhead     0.5 GiB + 10% (runtime, allocator, temporaries)
It is an estimate: `optimization.check_memory: false` skips the check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwentune.config.base import apply_overrides, validate
from qwentune.config.training import TrainConfig
from qwentune.errors import UsageError
from qwentune.model.device import Precision

GIB = 1024**3


class DoesNotFitError(UsageError, MemoryError):
    """The estimated memory exceeds what the device has free; the message names settings that fit (exit 2)."""


@dataclass(frozen=True)
class ModelShape:
    total: int
    trainable: int
    quantizable: int  # weights of the decoder's linear layers (what bitsandbytes quantizes)
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    supports_packing: bool  # attention honours per-example position_ids (transformers' attention interface)
    logits_selection: str | None  # form of logits_to_keep the forward accepts (qwentune.model.logits), None: all logits
    active: int | None = None  # MoE: parameters one token passes through (routed experts only); None: all of them
    experts: tuple[int, int] | None = None  # MoE: (experts routed to per token, experts per layer)


@dataclass(frozen=True)
class BatchShape:
    tokens: int  # positions in the largest micro-batch, padding included
    logit_tokens: int  # positions whose logits are computed


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def overhead(self) -> int:
        return int(0.5 * GIB + 0.1 * (self.weights + self.gradients + self.optimizer + self.activations))

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def describe(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations", "overhead")
        return f"{gib(self.total)} (" + ", ".join(f"{p} {gib(getattr(self, p))}" for p in parts) + ")"


def gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"


def meta_model(config: TrainConfig):
    """The model with the fine-tuning method applied, built on the meta device: shapes only."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from qwentune.model.adapters import FINETUNING_METHODS
    from qwentune.model.loader import config_source

    model_config = AutoConfig.from_pretrained(
        config_source(config.model.model_name_or_path), trust_remote_code=config.model.trust_remote_code
    )
    # (accelerate's init_empty_weights would leave tied embeddings untied, counting them twice.)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.model.trust_remote_code)
    return FINETUNING_METHODS[config.training.finetuning_type](model, config)


def model_shape(config: TrainConfig) -> ModelShape:
    import torch

    from qwentune.model.adapters import count_parameters, decoder_layers
    from qwentune.model.logits import logits_selection
    from qwentune.train.attention import supports_packing

    model = meta_model(config)
    trainable, total = count_parameters(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    quantizable = sum(
        module.weight.numel()
        for name, module in decoder_layers(base).named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    )
    text = base.config.get_text_config()
    experts = moe_experts(text)
    return ModelShape(
        total=total,
        trainable=trainable,
        quantizable=quantizable,
        hidden=text.hidden_size,
        intermediate=feed_forward_width(text),
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        supports_packing=supports_packing(base),
        logits_selection=logits_selection(type(base)),
        active=active_parameters(base, experts, total) if experts else None,
        experts=experts,
    )


def moe_experts(text_config) -> tuple[int, int] | None:
    """(experts per token, experts per layer) of a mixture-of-experts config; None for a dense model."""
    routed, count = getattr(text_config, "num_experts_per_tok", None), getattr(text_config, "num_experts", None)
    return (routed, count) if routed and count else None


def feed_forward_width(text_config) -> int:
    """Feed-forward values one token computes per layer: the dense MLP, or its routed experts plus any shared expert."""
    experts = moe_experts(text_config)
    if experts is None:
        return getattr(text_config, "intermediate_size", 4 * text_config.hidden_size)
    shared = getattr(text_config, "shared_expert_intermediate_size", 0) or 0
    return experts[0] * text_config.moe_intermediate_size + shared


def active_parameters(model, experts: tuple[int, int], total: int) -> int:
    """Parameters a token uses: all `total` but the experts it is not routed to (transformers 5 fuses each layer's experts)."""
    routed, count = experts
    expert_values = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name and "lora_" not in name)
    return total - expert_values * (count - routed) // count


def batch_shape(lengths: list[int], trained_fraction: float, config: TrainConfig, logits_selection: str | None) -> BatchShape:
    """The largest micro-batch the data can produce under the configured batching."""
    size = config.training.per_device_train_batch_size
    longest = sorted(lengths, reverse=True)[:size]
    batching = config.data.batching
    if batching == "packed":
        tokens = sum(longest)
    elif batching == "max_length":
        tokens = size * config.data.max_seq_length
    else:
        tokens = size * longest[0]
    # Positions shared by every row keep the union of the rows' trained positions: at most all of them.
    exact = logits_selection == "mask" or (logits_selection == "positions" and batching == "packed")
    logit_tokens = math.ceil(sum(longest) * trained_fraction) if exact else tokens
    return BatchShape(tokens=tokens, logit_tokens=logit_tokens)


def _optimizer_bytes_per_value(optim: str, trainable_bytes: int) -> float:
    states = 0 if "adafactor" in optim else 1 if optim.startswith(("sgd", "lion")) else 2
    return states * (1 if "8bit" in optim else trainable_bytes)


def estimate_memory(
    shape: ModelShape, config: TrainConfig, precision: Precision, batch: BatchShape, world_size: int = 1, zero_stage: int = 0
) -> MemoryEstimate:
    weight_bytes = precision.dtype.itemsize
    bits = config.model.quantization_bit
    if bits:
        weights = shape.quantizable * bits / 8 * 1.03 + (shape.total - shape.quantizable) * 4
    else:
        weights = shape.total * weight_bytes
    lora = config.training.finetuning_type == "lora"
    trainable_bytes = 4 if lora or precision.fp16 else weight_bytes
    gradients = shape.trainable * trainable_bytes
    optimizer = shape.trainable * _optimizer_bytes_per_value(config.training.optim, trainable_bytes)
    if world_size > 1:
        optimizer /= world_size if zero_stage >= 1 else 1
        gradients /= world_size if zero_stage >= 2 else 1
        weights /= world_size if zero_stage >= 3 else 1
    activation_bytes = 2 if precision.fp16 or precision.bf16 or weight_bytes == 2 else 4
    per_layer = (10 * shape.hidden + 4 * shape.intermediate) * activation_bytes
    if config.optimization.gradient_checkpointing:
        per_token = shape.layers * shape.hidden * activation_bytes + per_layer
    else:
        per_token = shape.layers * per_layer
    activations = batch.tokens * per_token + batch.logit_tokens * shape.vocab * 12
    return MemoryEstimate(int(weights), int(gradients), int(optimizer), int(activations))


def fitting_alternatives(config: TrainConfig, device: str) -> list[list[str]]:
    """Overrides to try, one setting at a time, then all together (each a list of dotted `key=value`)."""
    training = config.training
    to_lora = [] if training.finetuning_type == "lora" else ["training.finetuning_type=lora", "lora.use_lora=true"]
    alternatives = []
    if training.per_device_train_batch_size > 1:
        # Same global batch: what one step held is accumulated instead (set where the config sets it).
        section = "mindspeed" if config.mindspeed.gradient_accumulation_steps else "training"
        accumulation = config.gradient_accumulation_steps * training.per_device_train_batch_size
        alternatives.append(["training.per_device_train_batch_size=1", f"{section}.gradient_accumulation_steps={accumulation}"])
    if not config.optimization.gradient_checkpointing:
        alternatives.append(["optimization.gradient_checkpointing=true"])
    if to_lora:
        alternatives.append(to_lora)
    if not config.model.quantization_bit and device.split(":")[0] in ("cuda", "cpu"):  # bitsandbytes backends
        alternatives.append([*to_lora, "model.quantization_bit=4"])
    if len(alternatives) > 1:
        alternatives.append(list(dict.fromkeys(o for a in alternatives for o in a)))
    return alternatives


def with_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    return validate(TrainConfig, apply_overrides(config.model_dump(), overrides), "(suggestion)")


def check_fits(
    estimate: MemoryEstimate,
    available: int,
    device: str,
    config: TrainConfig,
    rebuild_estimate,
) -> None:
    """Raise DoesNotFitError naming settings whose estimate fits; `rebuild_estimate(config)` estimates a variant."""
    if estimate.total <= available:
        return
    fitting = []
    for overrides in fitting_alternatives(config, device):
        needed = rebuild_estimate(with_overrides(config, overrides)).total
        if needed <= available:
            fitting.append(f"  {' '.join(overrides)}   (≈ {gib(needed)})")
    advice = (
        "Settings that would fit (add them to the command line or the config):\n" + "\n".join(fitting)
        if fitting
        else "No single change fits: use a smaller model, or more devices with DeepSpeed ZeRO-3 (mindspeed.zero_stage: 3)."
    )
    raise DoesNotFitError(
        f"this run needs about {estimate.describe()} but {device} has {gib(available)} free.\n{advice}\n"
        "The estimate is approximate; set optimization.check_memory=false to try anyway."
    )


def count_steps(examples: int, config: TrainConfig, world_size: int) -> int:
    """Optimizer steps of the run (as the Trainer counts them)."""
    if config.training.max_steps > 0:
        return config.training.max_steps
    batches = math.ceil(examples / (config.training.per_device_train_batch_size * world_size))
    per_epoch = max(batches // config.gradient_accumulation_steps, 1)
    return math.ceil(config.training.num_train_epochs * per_epoch)


@dataclass(frozen=True)
class RunPlan:
    """What the run will do and need, from the model's shape and the encoded data."""

    config: TrainConfig
    shape: ModelShape
    precision: Precision
    device: str
    processes: str  # how the run is spread, in words
    lengths: list[int]  # tokens of each training example
    trained_tokens: int
    world_size: int = 1
    zero_stage: int = 0

    def estimate(self, variant: TrainConfig | None = None) -> MemoryEstimate:
        """Memory of this run, or of the same run under `variant` settings."""
        variant = variant or self.config
        same_method = variant.training.finetuning_type == self.config.training.finetuning_type
        shape = self.shape if same_method else model_shape(variant)
        trained_fraction = self.trained_tokens / sum(self.lengths)
        batch = batch_shape(self.lengths, trained_fraction, variant, self.shape.logits_selection)
        return estimate_memory(shape, variant, self.precision, batch, self.world_size, self.zero_stage)

    def describe(self, available: int) -> str:
        config, shape = self.config, self.shape
        method = config.training.finetuning_type
        if config.model.quantization_bit:
            method += f" (QLoRA {config.model.quantization_bit}-bit)"
        steps = count_steps(len(self.lengths), config, self.world_size)
        return (
            f"{method} on {self.device} ({self.precision.name}), {self.processes}: {shape.trainable:,} trainable of "
            f"{shape.total:,} parameters ({100 * shape.trainable / shape.total:.2f}%){self._active()}; memory ≈ {self.estimate().describe()} "
            f"of {gib(available)} free; {len(self.lengths)} examples, {sum(self.lengths):,} tokens "
            f"({self.trained_tokens:,} trained) per epoch; {steps} steps of {config.training.per_device_train_batch_size} "
            f"× {config.gradient_accumulation_steps} accumulation × {self.world_size} process(es); "
            f"batching: {config.data.batching}"
        )

    def _active(self) -> str:
        if self.shape.experts is None:
            return ""
        routed, count = self.shape.experts
        return f", {self.shape.active:,} active per token ({routed} of {count} experts)"

    def check_fits(self, available: int) -> None:
        check_fits(self.estimate(), available, self.device, self.config, self.estimate)
