"""Qwen3-MoE, Qwen3.5 and Qwen3-Next: packed rows are exact, as for Qwen2/Qwen3 (tests/test_train_batching.py).

Hybrid models' linear-attention layers carry a recurrent state and a convolution window along
the row; `isolate_linear_attention` restarts them at every example. The proof is numerical: an
example's logits inside a packed row equal its logits alone, and without the isolation they don't.
"""

from __future__ import annotations

import pytest
import torch

from qwentune.data.pack import PackingCollator
from qwentune.data.tokenize import IGNORE_INDEX, encode_conversation
from qwentune.train.attention import PACKED_SDPA, isolate_linear_attention, linear_attention_layers, supports_packing

CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the capital of France, and why is it famous?"},
        {"role": "assistant", "content": "Paris, for its art, food and the Eiffel Tower."},
    ],
    [{"role": "user", "content": "用中文数到三。"}, {"role": "assistant", "content": "一，二，三。"}],
]
HYBRID = ["qwen3_5", "qwen3_5_moe", "qwen3_next"]


@pytest.fixture(scope="module")
def examples(qwen_tokenizer):
    return [encode_conversation(qwen_tokenizer, messages) for messages in CONVERSATIONS]


def features(examples):
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


def load(folder, attention="sdpa"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32)
    model.config.use_cache = False
    return model


def largest_difference(model, reference, examples) -> float:
    """Largest |logit| difference between each example inside one packed row and the example alone."""
    batch = PackingCollator(logits_selection=None)(features(examples))
    worst, start = 0.0, 0
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for example in examples:
            end = start + len(example.input_ids)
            alone = reference(input_ids=torch.tensor([example.input_ids])).logits[0]
            worst = max(worst, (packed[start:end] - alone).abs().max().item())
            start = end
    return worst


@pytest.mark.parametrize("architecture", HYBRID)
@pytest.mark.parametrize("attention", [PACKED_SDPA, "sdpa"])
def test_hybrid_packed_example_logits_equal_logits_alone(tiny_new_model, examples, architecture, attention):
    folder = tiny_new_model(architecture)
    reference = load(folder).eval()
    model = load(folder, attention).eval()
    assert linear_attention_layers(model) and supports_packing(model)
    # Without isolation the recurrence leaks across examples (the failure this guards against).
    assert largest_difference(model, reference, examples) > 1e-2
    assert largest_difference(isolate_linear_attention(model), reference, examples) < 1e-4


def test_qwen3_moe_packs_exactly_without_any_isolation(tiny_new_model, examples):
    folder = tiny_new_model("qwen3_moe")
    model = load(folder, PACKED_SDPA).eval()
    assert not linear_attention_layers(model) and supports_packing(model)
    assert largest_difference(model, load(folder).eval(), examples) < 1e-4


def test_isolation_survives_activation_checkpointing(tiny_new_model, examples):
    """Recomputed layers in the backward pass see the same example bounds: gradients match a plain backward."""
    folder = tiny_new_model("qwen3_5")
    batch = PackingCollator(logits_selection=None)(features(examples))
    gradients = []
    for checkpointing in (False, True):
        model = isolate_linear_attention(load(folder, PACKED_SDPA)).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**batch).loss.backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_loss_of_a_hybrid_model_is_the_token_weighted_mean_of_example_losses(tiny_new_model, examples):
    folder = tiny_new_model("qwen3_next")
    model = isolate_linear_attention(load(folder, PACKED_SDPA)).eval()
    reference = load(folder).eval()
    total = count = 0.0
    with torch.no_grad():
        for example in examples:
            logits = reference(input_ids=torch.tensor([example.input_ids])).logits[0, :-1]
            targets = torch.tensor(example.labels[1:])
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
        batch = PackingCollator(logits_selection=None)(features(examples))
        output = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"])
    # The tiny MoE routes with output_router_logits: its load-balancing loss joins with the model's coefficient.
    assert output.aux_loss is not None and output.aux_loss.item() > 0
    expected = total / count + model.config.router_aux_loss_coef * output.aux_loss.item()
    assert output.loss.item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("architecture", ["qwen3_moe", *HYBRID])
def test_plan_counts_parameters_exactly_and_active_ones_per_token(tiny_new_model, architecture):
    """The meta-device plan counts what the loaded model holds; for MoE, what one token passes through."""
    from transformers import AutoModelForCausalLM

    from qwentune.config.base import load_config
    from qwentune.config.training import TrainConfig
    from qwentune.model.adapters import apply_lora
    from qwentune.train.plan import model_shape

    folder = tiny_new_model(architecture)
    config = load_config(TrainConfig, None, [f"model.model_name_or_path={folder}", "lora.target_modules=all-linear"])
    shape = model_shape(config)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(folder), config)
    assert shape.total == sum(p.numel() for p in model.parameters())
    assert shape.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = model.config
    if architecture == "qwen3_5":
        assert shape.experts is None and shape.active is None and shape.intermediate == text.intermediate_size
        return
    # Each layer's fused experts: gate_up (2 × width × hidden) and down (hidden × width) for each of them.
    per_expert = 3 * text.moe_intermediate_size * text.hidden_size
    unused = text.num_hidden_layers * per_expert * (text.num_experts - text.num_experts_per_tok)
    assert shape.experts == (text.num_experts_per_tok, text.num_experts)
    assert shape.active == shape.total - unused
    shared = getattr(text, "shared_expert_intermediate_size", 0) or 0
    assert shape.intermediate == text.num_experts_per_tok * text.moe_intermediate_size + shared


def test_moe_routers_stay_in_fp32_when_the_model_trains_in_bf16(tiny_new_model, examples):
    from transformers import AutoModelForCausalLM

    from qwentune.config.base import load_config
    from qwentune.config.training import TrainConfig
    from qwentune.model.adapters import prepare_for_finetuning

    folder = tiny_new_model("qwen3_moe")
    config = load_config(TrainConfig, None, [f"model.model_name_or_path={folder}", "lora.target_modules=all-linear"])
    model = prepare_for_finetuning(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16), config)
    routers = {n: p.dtype for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")}
    assert routers and set(routers.values()) == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if "embed_tokens" in n} == {torch.bfloat16}
    batch = PackingCollator(logits_selection=None)(features(examples))
    output = model(**batch)
    output.loss.backward()
    assert torch.isfinite(output.loss) and output.aux_loss.dtype == torch.float32
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
