"""Attention for packed rows: each example attends only to itself, at the cost of its own length.

A packed row holds several examples with `position_ids` restarting at 0 for each. Given no
attention mask, transformers sees the restarts: flash-attention runs varlen kernels, and
sdpa/eager get a block-diagonal 4-D mask over the whole row. That mask is correct but costs
the full row length squared and keeps sdpa off its fused causal kernel; on CPU it ate the
packing gain in a peer toolkit. `packed_sdpa` instead runs causal sdpa on each example's
slice of the row: exact isolation, no mask, and attention work of sum(len_i^2).

Hybrid models (Qwen3.5, Qwen3-Next) interleave full attention with Gated DeltaNet layers, a
linear-attention recurrence after a causal convolution. Both carry state along the row, and
`position_ids` do not stop them: measured on tiny models, a packed example's logits differ from
its logits alone by up to 0.14. `isolate_linear_attention` runs those layers on each example's
slice, so each starts from zero state: the difference drops to 3e-7. (transformers' own path is
`cu_seqlens` into the flash-linear-attention kernels, which are CUDA-only; its CPU reference
implementation refuses `cu_seqlens`.)
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface

PACKED_SDPA = "qwentune_packed_sdpa"


def example_bounds(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of the examples in a packed row, and its end: [0, 37, 120, ..., length].

    position_ids: (1, length), or multimodal rotary positions (sections, 1, length) whose first
    section holds the text positions (Qwen3.5 passes these to attention in transformers 5.2).
    """
    row = position_ids.reshape(-1, position_ids.shape[-1])[0]
    starts = (row == 0).nonzero().flatten().tolist()
    return [*starts, position_ids.shape[-1]] if starts and starts[0] == 0 else [0, position_ids.shape[-1]]


def packed_sdpa_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, position_ids=None, **kwargs
):
    """Causal sdpa per example. query/key/value: (1, heads, row_length, head_dim)."""
    if attention_mask is not None or position_ids is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        raise ValueError(
            f"{PACKED_SDPA} attention takes one packed row with position_ids and no attention mask "
            "(training with data.batching: packed); load the model with sdpa for anything else"
        )
    bounds = example_bounds(position_ids)
    if sliding_window and max(end - start for start, end in zip(bounds[:-1], bounds[1:])) > sliding_window:
        raise ValueError(
            f"an example is longer than the model's sliding attention window ({sliding_window}), which "
            f"{PACKED_SDPA} does not apply: use data.batching: grouped"
        )
    groups = getattr(module, "num_key_value_groups", 1)
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=groups > 1,
        )
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)


def flash_attention_available(device: str) -> bool:
    if not device.startswith("cuda"):
        return False
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def packed_attention(device: str) -> str:
    """The attention to train packed rows with: flash-attention varlen where installed on CUDA, else per-example sdpa."""
    return "flash_attention_2" if flash_attention_available(device) else PACKED_SDPA


# Handed from the decoder's pre-hook to each decoder layer through the layers' **kwargs, so it survives
# activation checkpointing's recomputation (which calls a layer again with the same kwargs).
EXAMPLE_BOUNDS_KWARG = "qwentune_example_bounds"


def linear_attention_layers(model) -> list[torch.nn.Module]:
    """The Gated DeltaNet (linear-attention) layers of a hybrid Qwen model; [] for other models."""
    return [module for module in model.modules() if type(module).__name__.endswith("GatedDeltaNet")]


def _bounds_from_position_ids(module, args, kwargs):
    """Decoder pre-hook: a packed row (one row, restarting positions, no mask) hands its example bounds down."""
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and position_ids.dim() == 2 and position_ids.shape[0] == 1 and kwargs.get("attention_mask") is None:
        kwargs[EXAMPLE_BOUNDS_KWARG] = tuple(example_bounds(position_ids))
    return args, kwargs


def _with_bounds(forward, linear_attention):
    """A decoder layer's forward that lends its example bounds to its linear-attention module for the call.

    transformers up to 5.2 calls the linear-attention module with fixed arguments (no **kwargs), so
    there the bounds cannot travel as arguments; later releases pass them on, and checkpointing
    recomputes a layer's class forward (not this wrapper) with the same kwargs, bounds included.
    """

    def lend(*args, **kwargs):
        linear_attention.qwentune_bounds = kwargs.get(EXAMPLE_BOUNDS_KWARG)
        try:
            return forward(*args, **kwargs)
        finally:
            linear_attention.qwentune_bounds = None

    return lend


def _per_example(forward, linear_attention):
    """A linear-attention forward that runs each example of a packed row on its own (zero initial state)."""

    def isolated(hidden_states, *args, **kwargs):
        bounds = kwargs.pop(EXAMPLE_BOUNDS_KWARG, None) or getattr(linear_attention, "qwentune_bounds", None)
        if bounds is None or len(bounds) <= 2:
            return forward(hidden_states, *args, **kwargs)
        slices = [forward(hidden_states[:, start:end], *args, **kwargs) for start, end in zip(bounds[:-1], bounds[1:])]
        return torch.cat(slices, dim=1)

    return isolated


def isolate_linear_attention(model) -> torch.nn.Module:
    """Make a hybrid model's packed rows exact (each example's recurrence starts at zero); other models unchanged.

    Call on the transformers model before wrapping it (peft, DeepSpeed): the hook sits on its decoder.
    """
    layers = linear_attention_layers(model)
    if not layers or getattr(model, "_qwentune_isolated", False):
        return model
    for decoder_layer in model.modules():
        for child in decoder_layer.children():
            if child in layers:
                decoder_layer.forward = _with_bounds(decoder_layer.forward, child)
                child.forward = _per_example(child.forward, child)
    model.get_decoder().register_forward_pre_hook(_bounds_from_position_ids, with_kwargs=True)
    model._qwentune_isolated = True
    return model


def supports_packing(model) -> bool:
    """Models on transformers' attention interface honour per-example position_ids; remote code may not.

    Hybrid Qwen models (linear attention) qualify once `isolate_linear_attention` is applied.
    """
    return bool(getattr(model, "_supports_attention_backend", False) or linear_attention_layers(model))
