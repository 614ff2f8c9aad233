"""Metrics of agent behaviour: tool calls and reasoning (pure functions, re-exported by `metrics`).

Same shape as the text metrics: {"overall": ..., "by_lang": {...}, "per_sample": [...]}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from statistics import fmean

from qwentune.data.toolcalls import parse_tool_calls

TOOL_CALL_RATES = ("tool_call_parseable", "tool_call_name", "tool_call_exact")

TOOL_METRIC_DEFINITIONS: dict[str, str] = {
    "tool_call_parseable": (
        "Tool calls (0-1), over the samples whose reference turn calls tools: share of predictions "
        "(the answer after any think block) holding at least one <tool_call> block and only blocks "
        'that parse as Qwen\'s {"name": ..., "arguments": {...}} with arguments a JSON object.'
    ),
    "tool_call_name": (
        "Tool calls (0-1): share of those samples whose parsed calls name the same functions as the "
        "reference's (as a multiset: parallel calls in any order)."
    ),
    "tool_call_exact": (
        "Tool calls (0-1): share of those samples whose parsed calls equal the reference's as JSON, "
        "names and arguments (objects compared by value, key order ignored; parallel calls in any order)."
    ),
    "thinking_chars": (
        "Thinking length: mean characters of the think block per prediction (0 for an answer with "
        "none). Text metrics score the answer without it. Neither higher nor lower is better."
    ),
}
# Descriptive numbers: a report gives their change, not a verdict.
NO_DIRECTION = frozenset({"thinking_chars"})


def _canonical(calls: list[dict]) -> list[str]:
    return sorted(json.dumps({"name": c["name"], "arguments": c["arguments"]}, sort_keys=True) for c in calls)


def score_tool_calls(prediction: str, reference_calls: list[dict]) -> dict[str, float]:
    """Per-sample 0/1 scores of one prediction against the reference calls."""
    parsed = parse_tool_calls(prediction)
    parseable = bool(parsed.calls) and not parsed.malformed
    names = sorted(c["name"] for c in parsed.calls) == sorted(c["name"] for c in reference_calls)
    exact = _canonical(parsed.calls) == _canonical(reference_calls)
    return {
        "tool_call_parseable": float(parseable),
        "tool_call_name": float(parseable and names),
        "tool_call_exact": float(parseable and exact),
    }


def tool_call_accuracy(
    predictions: Sequence[str], reference_calls: Sequence[list[dict] | None], langs: Sequence[str]
) -> dict:
    """Rates over the samples whose reference calls tools (None or [] elsewhere: not scored, per-sample None).

    Overall and per language: {"tool_call_parseable", "tool_call_name", "tool_call_exact", "n_scored"};
    None overall when no sample calls tools.
    """
    if not len(predictions) == len(reference_calls) == len(langs):
        raise ValueError("inputs must have the same length")
    per_sample = [score_tool_calls(p, r) if r else None for p, r in zip(predictions, reference_calls)]

    def rates(indices: list[int]) -> dict | None:
        scored = [per_sample[i] for i in indices if per_sample[i] is not None]
        if not scored:
            return None
        return {**{k: fmean(s[k] for s in scored) for k in TOOL_CALL_RATES}, "n_scored": len(scored)}

    by_lang = {}
    for lang in dict.fromkeys(langs):
        value = rates([i for i, sample_lang in enumerate(langs) if sample_lang == lang])
        if value is not None:
            by_lang[lang] = value
    return {"overall": rates(list(range(len(predictions)))), "by_lang": by_lang, "per_sample": per_sample}


def thinking_length(reasonings: Sequence[str | None], langs: Sequence[str]) -> dict:
    """Mean characters of reasoning per prediction (None counts as 0), overall and per language."""
    if len(reasonings) != len(langs):
        raise ValueError("inputs must have the same length")
    lengths = [len(r or "") for r in reasonings]
    by_lang = {
        lang: fmean(n for n, sample_lang in zip(lengths, langs) if sample_lang == lang) for lang in dict.fromkeys(langs)
    }
    return {"overall": fmean(lengths) if lengths else 0.0, "by_lang": by_lang, "per_sample": lengths}
