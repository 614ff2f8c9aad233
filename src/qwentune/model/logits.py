"""Which form of `logits_to_keep` a model class accepts, found by running a tiny instance of it.

Training computes logits only where a loss is computed (`qwentune.data.pack`). Recent transformers
(`slice_logits_to_keep`) take a 2-D boolean mask, one row per sequence, and flatten the kept
positions; older releases (5.6.0, for one) index `hidden_states[:, logits_to_keep, :]`, which takes
a 1-D tensor of positions shared by every row but raises IndexError on a 2-D mask. A version number
would not say what a model class (remote code included) does, so each class is asked once, by
behaviour: a tiny instance runs both forms against its own full logits.
"""

from __future__ import annotations

import functools

from qwentune.console import notice

# Best first: a per-row mask keeps exactly the trained positions; shared positions keep their union.
LOGITS_SELECTIONS = ("mask", "positions")
# Small enough to build in milliseconds, valid for the decoder configs transformers ships.
PROBE_CONFIG = {
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "max_position_embeddings": 64,
}


def _tiny_model(model_class):
    import torch

    defaults = model_class.config_class()
    config = model_class.config_class(**{k: v for k, v in PROBE_CONFIG.items() if hasattr(defaults, k)})
    # Its random weights must not move the run's random state (LoRA init, dropout, sampling order).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return model_class(config).eval()


def _selects(model, selection: str) -> bool:
    """Whether the model returns exactly its full logits at the positions `selection` names."""
    import torch

    # use_cache=False: a one-layer hybrid model (Qwen3.5) has only linear-attention layers, whose cache
    # cannot tell its sequence length.
    input_ids = torch.arange(10).reshape(2, 5) % model.config.vocab_size
    keep = torch.tensor([[False, True, True, False, False], [False, False, True, True, True]])
    with torch.no_grad():
        full = model(input_ids=input_ids, use_cache=False).logits
        if selection == "mask":
            expected, logits_to_keep = full[keep], keep
        else:
            columns = keep.any(dim=0).nonzero().squeeze(1)
            expected, logits_to_keep = full[:, columns], columns
        try:
            selected = model(input_ids=input_ids, logits_to_keep=logits_to_keep, use_cache=False).logits
        except (IndexError, RuntimeError, TypeError, ValueError):
            return False
    return selected.shape == expected.shape and torch.allclose(selected, expected, atol=1e-5)


@functools.lru_cache(maxsize=None)
def logits_selection(model_class) -> str | None:
    """"mask", "positions" or None (the model computes logits everywhere); one probe per class and process."""
    import transformers

    try:
        model = _tiny_model(model_class)
    except Exception as problem:  # a class we cannot build small (remote code): computing every logit is always right
        notice(f"could not probe {model_class.__name__} ({problem}); logits are computed at every position")
        return None
    accepted = [selection for selection in LOGITS_SELECTIONS if _selects(model, selection)]
    chosen = accepted[0] if accepted else None
    if chosen != LOGITS_SELECTIONS[0]:
        fallback = "a 1-D tensor of positions (same loss)" if chosen else "no selection: logits at every position (same loss, more memory)"
        notice(
            f"{model_class.__name__} under transformers {transformers.__version__} does not take a boolean logits_to_keep "
            f"mask; using {fallback}"
        )
    return chosen
