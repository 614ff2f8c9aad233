"""Language tags as data sets write them score by their language; perplexity past the model's context."""

from __future__ import annotations

import json
import math

import pytest
import torch

from qwentune.data.lang import normalize_lang
from qwentune.evaluate import metrics
from qwentune.evaluate.runner import load_samples

CHINESE_REFERENCE = "今天的天气很好，我们去公园散步吧。"
CHINESE_PREDICTION = "今天天气很好，我们去公园走走吧。"


@pytest.mark.parametrize(
    ("tag", "text", "expected"),
    [
        ("zh", "", "zh"),
        ("zh-CN", "hello", "zh"),
        ("zh-Hans", "", "zh"),
        ("ZH", "", "zh"),
        ("zh_TW", "", "zh"),
        ("zh-Hant-HK", "", "zh"),
        ("cmn", "", "zh"),
        ("Chinese", "", "zh"),
        ("en-US", "你好你好你好", "en"),
        ("EN_gb", "", "en"),
        ("fr-FR", "", "fr"),
        ("mixed", CHINESE_REFERENCE, "zh"),
        ("mixed", "mostly English with 一点 Chinese words in it", "en"),
        (None, CHINESE_REFERENCE, "zh"),
        ("", "plain English", "en"),
        (3, CHINESE_REFERENCE, "zh"),
    ],
)
def test_language_tags_normalise_in_one_place(tag, text, expected):
    assert normalize_lang(tag, text) == expected


def test_chinese_samples_with_region_or_script_tags_score_as_chinese(tmp_path):
    path = tmp_path / "test.jsonl"
    tags = ["zh", "zh-CN", "zh-Hans", "ZH", "zh_TW", "mixed"]
    with path.open("w", encoding="utf-8") as handle:
        for index, tag in enumerate(tags):
            messages = [
                {"role": "user", "content": "今天天气怎么样？"},
                {"role": "assistant", "content": CHINESE_REFERENCE},
            ]
            handle.write(json.dumps({"id": str(index), "lang": tag, "messages": messages}, ensure_ascii=False) + "\n")
    samples = load_samples(str(path), "test", None)
    assert [s.lang for s in samples] == ["zh"] * len(tags)
    langs = [s.lang for s in samples]
    scores = metrics.bleu([CHINESE_PREDICTION] * len(tags), [s.reference for s in samples], langs)["per_sample"]
    assert len(set(scores)) == 1 and scores[0] > 30  # character-tokenized; the English path gives 0
    assert metrics.bleu([CHINESE_PREDICTION], [CHINESE_REFERENCE], ["en"])["per_sample"] == [0.0]


# ---------------------------------------------------------------- perplexity past the context


@pytest.fixture(scope="module")
def short_context_model(qwen_tokenizer):
    """GPT-2 with learned positions for 32 tokens: a longer input cannot even be embedded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(qwen_tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


LONG_TEXT = " ".join(f"word{i}" for i in range(60))


def test_a_text_past_the_context_is_scored_in_sliding_windows(short_context_model, qwen_tokenizer):
    model = short_context_model
    ids = qwen_tokenizer(LONG_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * 32
    with pytest.raises(IndexError), torch.inference_mode():
        model(input_ids=torch.tensor([ids]))  # what scoring it whole would do
    lengths = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        result = metrics.perplexity(model, qwen_tokenizer, texts=[LONG_TEXT], stride=16)
    finally:
        hook.remove()
    assert max(lengths) <= 32 and result["windows"] > 1
    assert result["predicted_tokens"] == len(ids) - 1 and result["sequences"] == 1

    # By hand: windows of 32 starting every 16 tokens; each token scored in the first window where it
    # is not the first token.
    expected, scored_until = 0.0, 1
    with torch.inference_mode():
        for begin in range(0, len(ids), 16):
            end = min(begin + 32, len(ids))
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids[begin:end]])).logits[0].float(), -1)
            for position in range(max(scored_until, begin + 1), end):
                expected -= logprobs[position - begin - 1, ids[position]].item()
            scored_until = end
            if end == len(ids):
                break
    assert result["total_nll"] == pytest.approx(expected, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(expected / (len(ids) - 1)), rel=1e-5)


def test_a_text_within_the_context_is_one_window(short_context_model, qwen_tokenizer):
    text = "a short text"
    whole = metrics.perplexity(short_context_model, qwen_tokenizer, texts=[text])
    assert whole["windows"] == 1
    with pytest.raises(ValueError, match="stride must be between 1 and max_length - 1"):
        metrics.perplexity(short_context_model, qwen_tokenizer, texts=[LONG_TEXT], stride=32)
