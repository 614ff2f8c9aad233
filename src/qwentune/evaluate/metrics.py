"""Evaluation metrics (SPEC §6): pure functions of strings; perplexity of a model and texts.

Text metrics take parallel lists `predictions`, `references` and `langs` (one language code
per sample, as in the canonical record: "zh" is Chinese, anything else is tokenized as
English) and return plain JSON-ready dicts

    {"overall": ..., "by_lang": {lang: ...}, "per_sample": [... in input order]}

(diversity has no per-sample value; perplexity returns corpus totals). A metric that cannot
be computed is `{"available": False, "reason": "..."}`, never a 0.

Edge cases, one rule for every text metric:
- an empty or whitespace-only prediction or reference scores 0: there is nothing to match,
  so even an empty prediction against an empty reference scores 0, not a perfect score;
- identical strings score the maximum (BLEU 100, ROUGE 1, BERTScore ~1) when the tokenizer
  finds tokens in them; corpus BLEU of texts shorter than four tokens is 0 (no 4-grams),
  while sentence BLEU uses the effective order and gives 100;
- emoji are kept as tokens by sacrebleu and by the Chinese character tokenizer, dropped by
  rouge-score's English tokenizer (it keeps only [a-z0-9]) and read as [UNK] by MiniLM;
- a mixed Chinese/English text is tokenized by its record's language: in a Chinese record,
  English words stay whole for sacrebleu's 'zh' tokenizer but are split into letters for
  ROUGE and diversity (SPEC §6: tokens are characters for Chinese);
- long texts are scored whole, except by BERTScore, whose encoder reads at most its
  maximum length (512 tokens for MiniLM); ROUGE-L's LCS is quadratic in the token counts.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from statistics import fmean

import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from qwentune.data.tokenize import IGNORE_INDEX, encode_prompt, end_of_turn_token
from qwentune.evaluate.tool_metrics import (  # noqa: F401  (re-exported: one namespace of metrics)
    NO_DIRECTION,
    TOOL_METRIC_DEFINITIONS,
    thinking_length,
    tool_call_accuracy,
)

CHINESE = "zh"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# Metrics whose improvement is a decrease; every other reported number is better higher.
LOWER_IS_BETTER = frozenset({"perplexity"})

METRIC_DEFINITIONS: dict[str, str] = {
    "bleu": (
        "Corpus BLEU (0-100) from sacrebleu 2 with its corpus defaults (4-grams, exponential "
        "smoothing, one reference, no lowercasing). Chinese samples are tokenized with "
        "sacrebleu's 'zh' tokenizer (each CJK character is a token), all others with '13a'. "
        "Per language it is sacrebleu's corpus score of that language's samples. Overall it "
        "pools the n-gram match counts and lengths of every sample, each tokenized by its own "
        "language, and computes BLEU once from the pooled counts; with one language, overall "
        "equals that language's score."
    ),
    "sentence_bleu": (
        "Per-sample BLEU (0-100): sacrebleu's sentence_bleu defaults (exponential smoothing, "
        "effective n-gram order) with the sample's tokenizer ('zh' or '13a'). Not averaged "
        "into the corpus BLEU, which is computed from pooled counts."
    ),
    "rouge1": (
        "ROUGE-1 F1 (0-1) from rouge-score: unigram overlap. Chinese text is split into its "
        "non-whitespace characters (rouge-score's default tokenizer drops every non-ASCII "
        "character, so Chinese would score 0); other text uses rouge-score's default "
        "tokenizer (lowercase, [a-z0-9] words, no stemming). Mean of per-sample F1."
    ),
    "rouge2": "ROUGE-2 F1 (0-1): as ROUGE-1 with bigram overlap. Mean of per-sample F1.",
    "rougeL": (
        "ROUGE-L F1 (0-1): longest common subsequence of the tokens (whole text, no sentence "
        "splitting), tokens as for ROUGE-1. Mean of per-sample F1."
    ),
    "bertscore": (
        "BERTScore F1 (0-1) from bert-score: greedy cosine matching of contextual token "
        "embeddings from the configured encoder (default: the embedded all-MiniLM-L6-v2, output "
        "of its 6th and last layer), no idf weighting, no baseline rescaling, texts truncated "
        "to the encoder's maximum length. Mean over the samples whose language the encoder "
        "covers (English for MiniLM); for other languages it is reported as not available, "
        "never as 0. Empty texts score 0."
    ),
    "perplexity": (
        "Perplexity (> 0, lower is better) = exp(total negative log-likelihood / total "
        "predicted tokens) over the whole corpus, natural log, fp32 logits. For prompt and "
        "reference pairs the scored tokens are the reference followed by the end-of-turn "
        "token (e.g. <|im_end|>), conditioned on the chat-templated prompt with the assistant "
        "header: the tokens the training loss is computed on. For plain texts no BOS is added "
        "and the first token is not predicted. Padding never counts. A sequence longer than the "
        "model's context (max_position_embeddings) is scored in sliding windows of that length "
        "moved by a stride (default: half the context): each token is predicted exactly once, "
        "in the first window that holds it after its first position, so it sees at least "
        "context - stride tokens before it (all of them in the first window)."
    ),
    "distinct_1": (
        "Distinct-1 (0-1): unique unigrams / total unigrams pooled over all predictions. "
        "Tokens are non-whitespace characters for Chinese, whitespace-separated words "
        "otherwise (case kept). 0 when there are no tokens."
    ),
    "distinct_2": (
        "Distinct-2 (0-1): as distinct-1 for bigrams; a bigram never spans two predictions."
    ),
    **TOOL_METRIC_DEFINITIONS,
}


def not_available(reason: str) -> dict:
    return {"available": False, "reason": reason}


def is_available(value) -> bool:
    """False for a `not_available` marker; numbers are available."""
    return not (isinstance(value, dict) and value.get("available") is False)


def _check_parallel(**columns: Sequence) -> None:
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")


def _indices_by_lang(langs: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, lang in enumerate(langs):
        groups[lang].append(index)
    return dict(groups)


def _is_blank(text: str) -> bool:
    return not text.strip()


# ---------------------------------------------------------------- BLEU


def _sacrebleu_tokenizer(lang: str) -> str:
    return "zh" if lang == CHINESE else "13a"


def bleu(predictions: Sequence[str], references: Sequence[str], langs: Sequence[str]) -> dict:
    """Corpus BLEU per language and overall, sentence BLEU per sample (all 0-100).

    Overall for a mixed-language corpus: sacrebleu tokenizes a whole corpus one way, and
    neither way fits both languages: '13a' leaves an unspaced Chinese sentence as one token,
    and 'zh' tokenizes English unlike '13a' (it splits off dashes and curly quotes, and does
    not unescape HTML entities), so English samples would count differently in the overall
    than in their own group. Instead each sample is tokenized by its own language and BLEU
    is computed once from the pooled n-gram statistics (matches and totals per order,
    hypothesis and reference lengths): corpus BLEU over all samples with a per-sample
    tokenizer, equal to the language's own score when there is one language.
    """
    _check_parallel(predictions=predictions, references=references, langs=langs)
    by_lang: dict[str, float] = {}
    per_sample = [0.0] * len(predictions)
    correct, total, sys_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for lang, indices in _indices_by_lang(langs).items():
        tokenize = _sacrebleu_tokenizer(lang)
        group_predictions = [predictions[i] for i in indices]
        group_references = [references[i] for i in indices]
        corpus = BLEU(tokenize=tokenize).corpus_score(group_predictions, [group_references])
        by_lang[lang] = corpus.score
        correct = [a + b for a, b in zip(correct, corpus.counts)]
        total = [a + b for a, b in zip(total, corpus.totals)]
        sys_len += corpus.sys_len
        ref_len += corpus.ref_len
        # The settings of sacrebleu.sentence_bleu, built once per language instead of per call.
        sentence_metric = BLEU(tokenize=tokenize, effective_order=True)
        for index in indices:
            per_sample[index] = sentence_metric.sentence_score(predictions[index], [references[index]]).score
    # BLEU's corpus smoothing default is "exp"; the static compute_bleu defaults to "none".
    overall = BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp").score
    return {"overall": overall, "by_lang": by_lang, "per_sample": per_sample}


# ---------------------------------------------------------------- ROUGE


class NonWhitespaceCharTokenizer:
    """rouge-score tokenizer for Chinese: every non-whitespace character is one token.

    rouge-score's default tokenizer keeps only [a-z0-9] and so drops Chinese entirely. Case
    is kept and there is no stemming: there is nothing to stem in Chinese.
    """

    def tokenize(self, text: str) -> list[str]:
        return [char for char in text if not char.isspace()]


def _rouge_scorer(lang: str) -> rouge_scorer.RougeScorer:
    if lang == CHINESE:
        return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=NonWhitespaceCharTokenizer())
    # rouge-score's own default (use_stemmer=False): the English numbers stay comparable to
    # anyone else calling RougeScorer without options.
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES))


def _mean_scores(rows: list[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    return {key: fmean(row[key] for row in rows) if rows else 0.0 for key in keys}


def rouge(predictions: Sequence[str], references: Sequence[str], langs: Sequence[str]) -> dict:
    """ROUGE-1/2/L F1 (0-1) per sample, and their means per language and overall."""
    _check_parallel(predictions=predictions, references=references, langs=langs)
    per_sample: list[dict[str, float]] = [{}] * len(predictions)
    by_lang: dict[str, dict[str, float]] = {}
    for lang, indices in _indices_by_lang(langs).items():
        scorer = _rouge_scorer(lang)
        for index in indices:
            # RougeScorer.score takes (target, prediction): the reference comes first.
            scores = scorer.score(references[index], predictions[index])
            per_sample[index] = {name: scores[name].fmeasure for name in ROUGE_TYPES}
        by_lang[lang] = _mean_scores([per_sample[i] for i in indices], ROUGE_TYPES)
    return {"overall": _mean_scores(per_sample, ROUGE_TYPES), "by_lang": by_lang, "per_sample": per_sample}


# ---------------------------------------------------------------- BERTScore


@functools.lru_cache(maxsize=1)
def _bert_scorer(model_path: str, num_layers: int, batch_size: int, device: str):
    """One loaded encoder for every dataset and model of an evaluation run (each load re-reads the weights)."""
    from bert_score import BERTScorer  # heavy import, only when something is scored

    return BERTScorer(
        # A local folder works as model_type; bert-score cannot infer the layer for it.
        model_type=model_path,
        num_layers=num_layers,
        batch_size=batch_size,
        device=device,
        idf=False,
        rescale_with_baseline=False,
    )


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    langs: Sequence[str],
    model_path,
    num_layers: int = 6,
    batch_size: int = 32,
    device: str = "cpu",
    encoder_langs: Collection[str] = ("en",),
) -> dict:
    """BERTScore F1 (0-1) with a local encoder; samples outside `encoder_langs` are not available.

    `model_path` is a local encoder folder (the caller passes the embedded MiniLM by default);
    `encoder_langs` are the languages it was trained on (MiniLM: English only). The encoder
    is loaded only when at least one sample can be scored.
    """
    _check_parallel(predictions=predictions, references=references, langs=langs)
    unsupported = {
        lang: not_available(
            f"no offline BERTScore encoder for '{lang}': the configured encoder covers "
            f"{', '.join(sorted(encoder_langs))} only"
        )
        for lang in set(langs) - set(encoder_langs)
    }
    per_sample: list = [unsupported.get(lang, 0.0) for lang in langs]
    # bert-score crashes on empty strings under transformers 5; they keep their 0.
    scorable = [
        index
        for index, lang in enumerate(langs)
        if lang in encoder_langs and not _is_blank(predictions[index]) and not _is_blank(references[index])
    ]
    if scorable:
        scorer = _bert_scorer(str(model_path), num_layers, batch_size, device)
        _, _, f1 = scorer.score([predictions[i] for i in scorable], [references[i] for i in scorable])
        for index, value in zip(scorable, f1.tolist()):
            per_sample[index] = value
    by_lang = {
        lang: unsupported[lang] if lang in unsupported else fmean(per_sample[i] for i in indices)
        for lang, indices in _indices_by_lang(langs).items()
    }
    scored = [value for value in per_sample if is_available(value)]
    return {
        "overall": fmean(scored) if scored else not_available("no sample in a language the encoder covers"),
        "by_lang": by_lang,
        "per_sample": per_sample,
        "n_scored": len(scored),
    }


# ---------------------------------------------------------------- perplexity


def _reference_sequence(tokenizer, messages: list[dict], reference: str) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat-templated prompt, then the reference and end-of-turn token.

    The prompt ids are exactly what generation starts from (`encode_prompt`), and the
    reference is tokenized on its own: the likelihood of producing this answer after this
    prompt. Only the reference and the end-of-turn token are labelled, as in training.
    """
    prompt_ids = encode_prompt(tokenizer, messages)
    answer_ids = tokenizer(reference, add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def _text_sequence(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) of a plain text: no BOS, every token labelled (the first is never predicted)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, list(ids)


def _batch_nll(model, batch: list[tuple[list[int], list[int]]]) -> tuple[float, int]:
    """Summed NLL and predicted-token count of one right-padded batch; logits freed on return."""
    width = max(len(ids) for ids, _ in batch)
    # Any id can pad: padded positions are masked from attention and ignored by the loss.
    input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in batch], device=model.device)
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=model.device)
    labels = torch.tensor(
        [labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in batch], device=model.device
    )
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    # Position t predicts token t + 1; fp32 so half-precision models sum their NLL exactly enough.
    shifted_logits = logits[:, :-1].flatten(0, 1).float()
    shifted_labels = labels[:, 1:].flatten()
    nll = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return nll.item(), int((shifted_labels != IGNORE_INDEX).sum())


def _windows(ids: list[int], labels: list[int], max_length: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """A sequence cut into windows of at most `max_length` tokens, `stride` apart. A position is
    labelled only in the first window where it is not the window's first token: each token is
    predicted once, with at least max_length - stride tokens of context after the first window."""
    if len(ids) <= max_length:
        return [(ids, labels)]
    windows, scored_until, begin = [], 1, 0
    while True:
        end = min(begin + max_length, len(ids))
        window_labels = [labels[p] if p >= scored_until else IGNORE_INDEX for p in range(begin, end)]
        windows.append((ids[begin:end], window_labels))
        if end == len(ids):
            return windows
        scored_until, begin = end, begin + stride


def context_length(model) -> int | None:
    """Positions the model was built for (None when its config does not say)."""
    return getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)


def perplexity(
    model,
    tokenizer,
    *,
    prompts: Sequence[list[dict]] | None = None,
    references: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    stride: int | None = None,
) -> dict:
    """Corpus perplexity of `references` given chat `prompts` (message lists), or of plain `texts`.

    Returns {"perplexity", "total_nll", "predicted_tokens", "sequences", "windows"}; raises
    ValueError when nothing is predicted (perplexity is undefined). Sequences are scored in
    batches so only one batch of logits is alive at a time; the model is put in eval mode meanwhile.
    A sequence longer than `max_length` (default: the model's context) is scored in sliding
    windows `stride` tokens apart (default: half of max_length); see METRIC_DEFINITIONS.
    """
    max_length = max_length or context_length(model)
    if max_length is not None:
        stride = stride or max(1, max_length // 2)
        if not 0 < stride < max_length:
            raise ValueError(f"stride must be between 1 and max_length - 1 ({max_length - 1}); got {stride}")
    if texts is not None and prompts is None and references is None:
        sequences = [_text_sequence(tokenizer, text) for text in texts]
    elif texts is None and prompts is not None and references is not None:
        _check_parallel(prompts=prompts, references=references)
        sequences = [_reference_sequence(tokenizer, p, r) for p, r in zip(prompts, references)]
    else:
        raise ValueError("pass either prompts and references, or texts")
    # Sequences with nothing to predict (empty or one-token texts) would be all padding.
    scored = [seq for seq in sequences if any(label != IGNORE_INDEX for label in seq[1][1:])]
    if not scored:
        raise ValueError("perplexity is undefined: no token to predict")
    if max_length is not None:
        windows = (window for ids, labels in scored for window in _windows(ids, labels, max_length, stride))
        scored = [(ids, labels) for ids, labels in windows if any(label != IGNORE_INDEX for label in labels[1:])]
    # Similar lengths side by side waste less compute on padding; the sum does not depend on order.
    scored.sort(key=lambda seq: len(seq[0]))
    total_nll, predicted_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(scored), batch_size):
                nll, count = _batch_nll(model, scored[start : start + batch_size])
                total_nll += nll
                predicted_tokens += count
    finally:
        model.train(was_training)
    return {
        "perplexity": math.exp(total_nll / predicted_tokens),
        "total_nll": total_nll,
        "predicted_tokens": predicted_tokens,
        "sequences": len(sequences),
        "windows": len(scored),
    }


# ---------------------------------------------------------------- diversity


def _diversity_tokens(text: str, lang: str) -> list[str]:
    if lang == CHINESE:
        return [char for char in text if not char.isspace()]
    return text.split()


def _distinct(token_lists: list[list[str]], n: int) -> float:
    ngrams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def _distinct_scores(token_lists: list[list[str]]) -> dict[str, float]:
    return {"distinct_1": _distinct(token_lists, 1), "distinct_2": _distinct(token_lists, 2)}


def diversity(predictions: Sequence[str], langs: Sequence[str]) -> dict:
    """Distinct-1/2 over all predictions, and per language; 0 when there are no n-grams."""
    _check_parallel(predictions=predictions, langs=langs)
    token_lists = [_diversity_tokens(text, lang) for text, lang in zip(predictions, langs)]
    by_lang = {
        lang: _distinct_scores([token_lists[i] for i in indices]) for lang, indices in _indices_by_lang(langs).items()
    }
    return {"overall": _distinct_scores(token_lists), "by_lang": by_lang}
