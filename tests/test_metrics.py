"""Metrics against the reference libraries called directly, known values, and edge cases."""

from __future__ import annotations

import math

import bert_score
import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

from qwentune.evaluate import metrics

EN_PREDICTIONS = [
    "The cat sat on the mat near the door.",
    "Paris is the capital of France.",
    "Water boils at 100 degrees Celsius at sea level.",
]
EN_REFERENCES = [
    "A cat was sitting on the mat by the door.",
    "The capital of France is Paris.",
    "At sea level, water boils at 100 degrees Celsius.",
]
ZH_PREDICTIONS = ["今天天气很好，我们去公园散步吧。", "北京是中国的首都。", "水在一百摄氏度时沸腾。"]
ZH_REFERENCES = ["今天天气不错，我们去公园走走。", "中国的首都是北京。", "在海平面，水在一百摄氏度沸腾。"]
LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 112  # about 5,000 characters


# ---------------------------------------------------------------- BLEU


def test_bleu_per_language_matches_sacrebleu():
    result = metrics.bleu(
        EN_PREDICTIONS + ZH_PREDICTIONS, EN_REFERENCES + ZH_REFERENCES, ["en"] * 3 + ["zh"] * 3
    )
    assert result["by_lang"]["en"] == pytest.approx(sacrebleu.corpus_bleu(EN_PREDICTIONS, [EN_REFERENCES]).score)
    zh_expected = sacrebleu.corpus_bleu(ZH_PREDICTIONS, [ZH_REFERENCES], tokenize="zh").score
    assert result["by_lang"]["zh"] == pytest.approx(zh_expected)
    assert 0 < result["by_lang"]["zh"] < 100


def test_sentence_bleu_matches_sacrebleu_defaults():
    result = metrics.bleu(EN_PREDICTIONS + ZH_PREDICTIONS, EN_REFERENCES + ZH_REFERENCES, ["en"] * 3 + ["zh"] * 3)
    expected = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(EN_PREDICTIONS, EN_REFERENCES)]
    expected += [sacrebleu.sentence_bleu(p, [r], tokenize="zh").score for p, r in zip(ZH_PREDICTIONS, ZH_REFERENCES)]
    assert result["per_sample"] == pytest.approx(expected)


def test_overall_bleu_of_mixed_corpus_is_corpus_bleu_with_per_sample_tokenizer():
    langs = ["en", "zh", "en", "zh", "en", "zh"]
    predictions = [EN_PREDICTIONS[0], ZH_PREDICTIONS[0], EN_PREDICTIONS[1], ZH_PREDICTIONS[1], EN_PREDICTIONS[2], ""]
    references = [EN_REFERENCES[0], ZH_REFERENCES[0], EN_REFERENCES[1], ZH_REFERENCES[1], EN_REFERENCES[2], "空"]
    tokenizers = {"en": Tokenizer13a(), "zh": TokenizerZh()}
    pretokenized = [tokenizers[lang](p) for p, lang in zip(predictions, langs)]
    pretokenized_refs = [tokenizers[lang](r) for r, lang in zip(references, langs)]
    expected = sacrebleu.corpus_bleu(pretokenized, [pretokenized_refs], tokenize="none").score
    assert metrics.bleu(predictions, references, langs)["overall"] == pytest.approx(expected)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_overall_bleu_of_one_language_equals_its_corpus_bleu(lang):
    predictions, references = (EN_PREDICTIONS, EN_REFERENCES) if lang == "en" else (ZH_PREDICTIONS, ZH_REFERENCES)
    result = metrics.bleu(predictions, references, [lang] * 3)
    assert result["overall"] == pytest.approx(result["by_lang"][lang])


@pytest.mark.parametrize(
    ("prediction", "reference", "lang", "expected"),
    [
        ("The cat sat on the mat.", "The cat sat on the mat.", "en", 100.0),
        ("今天天气很好。", "今天天气很好。", "zh", 100.0),
        ("Great job 😀 🎉 👍", "Great job 😀 🎉 👍", "en", 100.0),
        ("", "The cat sat on the mat.", "en", 0.0),
        ("The cat sat on the mat.", "", "en", 0.0),
        ("", "", "en", 0.0),
        ("   \n\t", "   ", "zh", 0.0),
    ],
)
def test_bleu_edge_cases(prediction, reference, lang, expected):
    result = metrics.bleu([prediction], [reference], [lang])
    assert result["per_sample"][0] == pytest.approx(expected)
    assert result["overall"] == pytest.approx(expected)


def test_corpus_bleu_of_a_text_shorter_than_four_tokens_is_zero_but_sentence_bleu_is_not():
    result = metrics.bleu(["Yes ."], ["Yes ."], ["en"])
    assert result["overall"] == 0.0  # no 4-grams to match at corpus level
    assert result["per_sample"] == [pytest.approx(100.0)]  # sentence BLEU's effective order


def test_bleu_of_mixed_text_and_long_output():
    result = metrics.bleu(["我喜欢 Python 编程", LONG_TEXT], ["我喜欢 Python 和编程", LONG_TEXT[:300]], ["zh", "en"])
    assert result["per_sample"][0] == pytest.approx(
        sacrebleu.sentence_bleu("我喜欢 Python 编程", ["我喜欢 Python 和编程"], tokenize="zh").score
    )
    assert 0 < result["per_sample"][1] < 100  # all n-grams match; the brevity penalty does not apply, precision drops


def test_bleu_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="same length"):
        metrics.bleu(["a"], ["a", "b"], ["en"])


def test_bleu_of_empty_corpus_is_zero():
    assert metrics.bleu([], [], []) == {"overall": 0.0, "by_lang": {}, "per_sample": []}


# ---------------------------------------------------------------- ROUGE


class ReferenceCharTokenizer:
    """Written independently of the module's: Chinese characters with all whitespace removed."""

    def tokenize(self, text):
        return list("".join(text.split()))


def test_rouge_english_matches_rouge_score_default():
    result = metrics.rouge(EN_PREDICTIONS, EN_REFERENCES, ["en"] * 3)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for row, prediction, reference in zip(result["per_sample"], EN_PREDICTIONS, EN_REFERENCES):
        expected = scorer.score(reference, prediction)
        assert row == pytest.approx({name: expected[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")})


def test_rouge_chinese_matches_rouge_score_with_char_tokenizer():
    result = metrics.rouge(ZH_PREDICTIONS, ZH_REFERENCES, ["zh"] * 3)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=ReferenceCharTokenizer())
    for row, prediction, reference in zip(result["per_sample"], ZH_PREDICTIONS, ZH_REFERENCES):
        expected = scorer.score(reference, prediction)
        assert row == pytest.approx({name: expected[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")})
    # Why the custom tokenizer: rouge-score's default drops every Chinese character.
    assert rouge_scorer.RougeScorer(["rougeL"]).score(ZH_REFERENCES[0], ZH_PREDICTIONS[0])["rougeL"].fmeasure == 0
    assert 0 < result["overall"]["rougeL"] < 1


def test_rouge_means_per_language_and_overall():
    result = metrics.rouge(EN_PREDICTIONS + ZH_PREDICTIONS, EN_REFERENCES + ZH_REFERENCES, ["en"] * 3 + ["zh"] * 3)
    rouge_l = [row["rougeL"] for row in result["per_sample"]]
    assert result["by_lang"]["en"]["rougeL"] == pytest.approx(sum(rouge_l[:3]) / 3)
    assert result["by_lang"]["zh"]["rougeL"] == pytest.approx(sum(rouge_l[3:]) / 3)
    assert result["overall"]["rougeL"] == pytest.approx(sum(rouge_l) / 6)


@pytest.mark.parametrize(
    ("prediction", "reference", "lang", "expected"),
    [
        ("The cat sat.", "The cat sat.", "en", 1.0),
        ("今天 天气很好", "今天天气 很好", "zh", 1.0),  # whitespace is not a token in Chinese
        ("😀 🎉", "😀 🎉", "zh", 1.0),
        ("😀 🎉", "😀 🎉", "en", 0.0),  # rouge-score's English tokenizer drops non-ASCII
        ("", "The cat sat.", "en", 0.0),
        ("The cat sat.", "", "en", 0.0),
        ("", "", "zh", 0.0),
        (" \n ", " ", "en", 0.0),
    ],
)
def test_rouge_edge_cases(prediction, reference, lang, expected):
    row = metrics.rouge([prediction], [reference], [lang])["per_sample"][0]
    assert row == pytest.approx({"rouge1": expected, "rouge2": expected, "rougeL": expected})


def test_rouge_mixed_text_and_long_output():
    result = metrics.rouge(["我喜欢Python", LONG_TEXT], ["我喜欢 Python", LONG_TEXT[:300]], ["zh", "en"])
    assert result["per_sample"][0]["rougeL"] == pytest.approx(1.0)
    assert 0 < result["per_sample"][1]["rougeL"] < 1


# ---------------------------------------------------------------- BERTScore


@pytest.fixture(scope="module")
def minilm_path():
    from qwentune.assets import asset_path

    return asset_path("minilm")


def test_bertscore_matches_bert_score(minilm_path):
    result = metrics.bertscore(EN_PREDICTIONS, EN_REFERENCES, ["en"] * 3, minilm_path)
    _, _, expected = bert_score.score(EN_PREDICTIONS, EN_REFERENCES, model_type=str(minilm_path), num_layers=6)
    assert result["per_sample"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert result["overall"] == pytest.approx(expected.mean().item(), abs=1e-5)


def test_bertscore_edge_cases_and_chinese(minilm_path):
    predictions = ["The cat sat on the mat.", "", "Some answer.", "   ", "今天天气很好。", LONG_TEXT, "😀"]
    references = ["The cat sat on the mat.", "A reference.", "", "A reference.", "今天天气很好。", LONG_TEXT, "😀"]
    langs = ["en", "en", "en", "en", "zh", "en", "en"]
    result = metrics.bertscore(predictions, references, langs, minilm_path, batch_size=2)
    scores = result["per_sample"]
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert scores[1:4] == [0.0, 0.0, 0.0]
    assert scores[4]["available"] is False and "zh" in scores[4]["reason"]
    assert scores[5] == pytest.approx(1.0, abs=1e-4)  # truncated to the encoder's 512 tokens, still identical
    assert scores[6] == pytest.approx(1.0, abs=1e-4)
    assert result["by_lang"]["zh"] == scores[4]
    assert result["n_scored"] == 6
    assert result["overall"] == pytest.approx(sum(scores[:4] + scores[5:]) / 6)


def test_bertscore_without_supported_language_is_not_available_and_loads_nothing():
    result = metrics.bertscore(ZH_PREDICTIONS, ZH_REFERENCES, ["zh"] * 3, "/nonexistent/encoder")
    assert result["overall"]["available"] is False
    assert all(score["available"] is False for score in result["per_sample"])
    assert result["n_scored"] == 0


# ---------------------------------------------------------------- perplexity


@pytest.fixture(scope="module")
def tiny_model(tiny_qwen2):
    """The shared tiny Qwen2 (conftest) with the real Qwen tokenizer's vocabulary."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()


PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "你是一个有帮助的助手。"}, {"role": "user", "content": "介绍一下北京。"}],
    [{"role": "user", "content": "Say nothing."}],
]
REFERENCES = ["The capital of France is Paris.", "北京是中国的首都，有三千多年的历史。", ""]


def _nll_prefix_by_prefix(model, context_ids, target_ids):
    """Sum of -log p(target_i | context, target_<i), one forward pass per target token."""
    total = 0.0
    for index, target in enumerate(target_ids):
        ids = torch.tensor([context_ids + target_ids[:index]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
        total -= log_probs[target].item()
    return total


def test_perplexity_of_a_pair_matches_hand_computation(tiny_model, qwen_tokenizer):
    from qwentune.data.tokenize import encode_prompt

    result = metrics.perplexity(tiny_model, qwen_tokenizer, prompts=PROMPTS[:1], references=REFERENCES[:1])
    prompt_ids = encode_prompt(qwen_tokenizer, PROMPTS[0])
    target_ids = qwen_tokenizer(REFERENCES[0], add_special_tokens=False)["input_ids"]
    target_ids.append(qwen_tokenizer.convert_tokens_to_ids("<|im_end|>"))
    expected_nll = _nll_prefix_by_prefix(tiny_model, prompt_ids, target_ids)
    assert result["predicted_tokens"] == len(target_ids)
    assert result["total_nll"] == pytest.approx(expected_nll, rel=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(expected_nll / len(target_ids)), rel=1e-4)
    assert result["perplexity"] > 0


def test_perplexity_of_plain_text_predicts_all_but_the_first_token(tiny_model, qwen_tokenizer):
    text = "Hello world, this is a test."
    ids = qwen_tokenizer(text, add_special_tokens=False)["input_ids"]
    result = metrics.perplexity(tiny_model, qwen_tokenizer, texts=[text])
    assert result["predicted_tokens"] == len(ids) - 1
    assert result["total_nll"] == pytest.approx(_nll_prefix_by_prefix(tiny_model, ids[:1], ids[1:]), rel=1e-4)


def test_empty_reference_scores_only_the_end_of_turn_token(tiny_model, qwen_tokenizer):
    result = metrics.perplexity(tiny_model, qwen_tokenizer, prompts=PROMPTS[2:], references=[""])
    assert result["predicted_tokens"] == 1


def test_perplexity_batched_equals_unbatched(tiny_model, qwen_tokenizer):
    texts = ["Short.", "A somewhat longer text that needs padding in a batch.", "中文文本也一样。", LONG_TEXT[:400]]
    for kwargs in ({"prompts": PROMPTS, "references": REFERENCES}, {"texts": texts}):
        one_by_one = metrics.perplexity(tiny_model, qwen_tokenizer, batch_size=1, **kwargs)
        batched = metrics.perplexity(tiny_model, qwen_tokenizer, batch_size=8, **kwargs)
        assert batched["predicted_tokens"] == one_by_one["predicted_tokens"]  # padding never counts
        assert batched["total_nll"] == pytest.approx(one_by_one["total_nll"], rel=1e-4)
        assert batched["perplexity"] == pytest.approx(one_by_one["perplexity"], rel=1e-4)


def test_perplexity_restores_training_mode(tiny_model, qwen_tokenizer):
    tiny_model.train()
    try:
        metrics.perplexity(tiny_model, qwen_tokenizer, texts=["Hello there, model."])
        assert tiny_model.training
    finally:
        tiny_model.eval()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"texts": ["a"], "prompts": PROMPTS[:1]}, {"prompts": PROMPTS[:1]}, {"texts": []}, {"texts": ["", "Hi"]}],
)
def test_perplexity_rejects_bad_or_empty_input(tiny_model, qwen_tokenizer, kwargs):
    with pytest.raises(ValueError):
        metrics.perplexity(tiny_model, qwen_tokenizer, **kwargs)


# ---------------------------------------------------------------- diversity


def test_distinct_counts_pooled_ngrams_within_predictions():
    result = metrics.diversity(["a b a b", "a b"], ["en", "en"])
    # unigrams a b a b a b: 2 unique of 6; bigrams ab ba ab | ab: 2 unique of 4 (none across the two)
    assert result["overall"] == pytest.approx({"distinct_1": 2 / 6, "distinct_2": 2 / 4})


def test_distinct_never_crosses_predictions_and_uses_characters_for_chinese():
    assert metrics.diversity(["a", "b"], ["en", "en"])["overall"] == {"distinct_1": 1.0, "distinct_2": 0.0}
    result = metrics.diversity(["你好你好", "Hello hello world"], ["zh", "en"])
    assert result["by_lang"]["zh"] == pytest.approx({"distinct_1": 2 / 4, "distinct_2": 2 / 3})
    assert result["by_lang"]["en"] == pytest.approx({"distinct_1": 1.0, "distinct_2": 1.0})  # case is kept
    assert result["overall"] == pytest.approx({"distinct_1": 5 / 7, "distinct_2": 4 / 5})


@pytest.mark.parametrize("predictions", [[], [""], ["   ", "\n"]])
def test_distinct_without_ngrams_is_zero(predictions):
    result = metrics.diversity(predictions, ["en"] * len(predictions))
    assert result["overall"] == {"distinct_1": 0.0, "distinct_2": 0.0}


def test_distinct_of_emoji_and_long_output():
    assert metrics.diversity(["😀😀🎉"], ["zh"])["overall"] == pytest.approx({"distinct_1": 2 / 3, "distinct_2": 1.0})
    long_result = metrics.diversity([LONG_TEXT], ["en"])["overall"]
    assert long_result["distinct_1"] == pytest.approx(9 / (9 * 112))  # 9 distinct words: "The" is not "the"


def test_every_reported_metric_is_defined():
    assert {"bleu", "sentence_bleu", "rouge1", "rouge2", "rougeL", "bertscore", "perplexity"} <= set(
        metrics.METRIC_DEFINITIONS
    )
    assert {"distinct_1", "distinct_2"} <= set(metrics.METRIC_DEFINITIONS)
