"""Batching: every batching mode keeps each example's attention and loss inside the example.

The proof is numerical: an example's logits inside a padded batch or a packed row equal its
logits alone, and a batch's loss equals the token-weighted mean of its examples' losses.
"""

from __future__ import annotations

import pytest
import torch

from qwentune.data.pack import PackingCollator, PaddingCollator
from qwentune.data.tokenize import IGNORE_INDEX, EncodedExample, encode_conversation
from qwentune.model.logits import logits_selection
from qwentune.train.attention import PACKED_SDPA, example_bounds

CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the capital of France, and why is it famous?"},
        {"role": "assistant", "content": "Paris, for its art, food and the Eiffel Tower."},
    ],
    [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "One, two, three."},
        {"role": "user", "content": "Now backwards."},
        {"role": "assistant", "content": "Three, two, one."},
    ],
]


@pytest.fixture(scope="module")
def examples(qwen_tokenizer) -> list[EncodedExample]:
    return [encode_conversation(qwen_tokenizer, messages) for messages in CONVERSATIONS]


def features(examples):
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


def load(folder, attention):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32)
    # As in training (prepare_for_finetuning): with a KV cache transformers ignores packed position_ids.
    model.config.use_cache = False
    return model.eval()


def logits_alone(model, example):
    with torch.no_grad():
        return model(input_ids=torch.tensor([example.input_ids])).logits[0]


def test_packing_collator_restarts_positions_and_never_targets_across_examples(examples):
    batch = PackingCollator(logits_selection=None)(features(examples))
    lengths = [len(e.input_ids) for e in examples]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert "attention_mask" not in batch  # a mask would hide the example boundaries from transformers
    assert example_bounds(batch["position_ids"]) == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    starts = [0, lengths[0], lengths[0] + lengths[1]]
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts)


def test_trained_logits_only_keeps_exactly_the_positions_with_a_target(examples):
    batch = PackingCollator()(features(examples))
    expected = [t for e in examples for t in e.labels[1:] if t != IGNORE_INDEX]
    assert batch["logits_to_keep"].dtype == torch.bool
    assert batch["shift_labels"].tolist() == expected
    assert int(batch["logits_to_keep"].sum()) == sum(e.num_trained_tokens for e in examples)


def test_max_length_padding_pads_every_row_to_the_limit(examples):
    batch = PaddingCollator(pad_token_id=0, pad_to=128, logits_selection=None)(features(examples))
    assert batch["input_ids"].shape == (3, 128)
    assert batch["attention_mask"].sum().item() == sum(len(e.input_ids) for e in examples)


@pytest.mark.parametrize("architecture", ["tiny_qwen2", "tiny_qwen3"])
@pytest.mark.parametrize("attention", [PACKED_SDPA, "sdpa", "eager"])
def test_packed_example_logits_equal_logits_alone(request, examples, architecture, attention):
    model = load(request.getfixturevalue(architecture), attention)
    batch = PackingCollator(logits_selection=None)(features(examples))
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    reference = load(request.getfixturevalue(architecture), "sdpa")
    start = 0
    for example in examples:
        end = start + len(example.input_ids)
        torch.testing.assert_close(packed[start:end], logits_alone(reference, example), atol=1e-4, rtol=0)
        start = end


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padded_example_logits_equal_logits_alone(tiny_qwen2, examples, attention):
    model = load(tiny_qwen2, attention)
    batch = PaddingCollator(pad_token_id=0, logits_selection=None)(features(examples))
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        torch.testing.assert_close(padded[row, :length], logits_alone(model, example), atol=1e-4, rtol=0)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_batch_loss_is_the_token_weighted_mean_of_example_losses(tiny_qwen2, examples, packed):
    """Loss only on assistant tokens, each counted once, whatever the batching (checked through the model)."""
    from transformers import Qwen2ForCausalLM

    selection = logits_selection(Qwen2ForCausalLM)  # the form training sends on the installed transformers
    collator = PackingCollator(logits_selection=selection) if packed else PaddingCollator(0, logits_selection=selection)
    model = load(tiny_qwen2, PACKED_SDPA if packed else "sdpa")
    reference = load(tiny_qwen2, "sdpa")
    total = count = 0.0
    with torch.no_grad():
        for example in examples:
            logits = logits_alone(reference, example)[:-1]
            targets = torch.tensor(example.labels[1:])
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
        loss = model(**collator(features(examples))).loss.item()
    assert loss == pytest.approx(total / count, abs=1e-4)
