"""tool_call_accuracy and thinking length: the pure metrics, and their way through the evaluation runner and reports."""

from __future__ import annotations

import csv
import json

import pytest

from qwentune.evaluate import metrics

PARIS = [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "C", "city": "Paris"}}\n</tool_call>'


def test_exact_call_scores_one_whatever_the_key_order():
    result = metrics.tool_call_accuracy([CALL], [PARIS], ["en"])
    assert result["overall"] == {"tool_call_parseable": 1.0, "tool_call_name": 1.0, "tool_call_exact": 1.0, "n_scored": 1}


@pytest.mark.parametrize(
    ("prediction", "scores"),
    [
        ("It is sunny in Paris.", (0, 0, 0)),  # no call
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>', (0, 0, 0)),  # not JSON
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "C"}}\n</tool_call>', (1, 1, 0)),
        ('<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>', (1, 0, 0)),
        (CALL + '\n<tool_call>\n{"name": "get_weather"', (0, 0, 0)),  # a second block left open
        (CALL + "\n" + CALL, (1, 0, 0)),  # one call too many
    ],
)
def test_each_way_of_missing(prediction, scores):
    [row] = metrics.tool_call_accuracy([prediction], [PARIS], ["en"])["per_sample"]
    assert (row["tool_call_parseable"], row["tool_call_name"], row["tool_call_exact"]) == scores


def test_parallel_calls_in_any_order_and_only_tool_samples_count():
    reference = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]
    swapped = '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>'
    result = metrics.tool_call_accuracy([swapped, "plain answer", "没有调用"], [reference, None, PARIS], ["en", "en", "zh"])
    assert result["per_sample"][1] is None
    assert result["overall"]["n_scored"] == 2 and result["overall"]["tool_call_exact"] == 0.5
    assert result["by_lang"]["zh"]["tool_call_parseable"] == 0.0 and result["by_lang"]["en"]["tool_call_exact"] == 1.0
    assert metrics.tool_call_accuracy(["x"], [None], ["en"])["overall"] is None


def test_thinking_length():
    result = metrics.thinking_length(["abcd", None, "你好"], ["en", "en", "zh"])
    assert result["per_sample"] == [4, 0, 2]
    assert result["overall"] == 2.0 and result["by_lang"] == {"en": 2.0, "zh": 2.0}


def test_definitions_cover_the_new_metrics():
    for name in ("tool_call_parseable", "tool_call_name", "tool_call_exact", "thinking_chars"):
        assert name in metrics.METRIC_DEFINITIONS


def test_runner_scores_tool_samples_and_reports_them(tiny_qwen3, tmp_path, one_torch_thread):
    from qwentune.config.evaluation import EvalConfig
    from qwentune.evaluate.runner import run_evaluation

    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    records = [
        {
            "id": "t1",
            "source": "s",
            "lang": "en",
            "tools": [weather],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
            ],
            "meta": {},
        },
        {"id": "p1", "source": "s", "lang": "en", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "meta": {}},
    ]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = EvalConfig.model_validate(
        {
            "model": {"model_path": str(tiny_qwen3), "compare_base": False, "device": "cpu"},
            "datasets": [{"name": "tools", "path": str(data)}],
            "metrics": ["bleu", "tool_call_accuracy", "thinking_length"],
            "generation": {"max_new_tokens": 4, "batch_size": 2},
            "output": {"results_dir": str(tmp_path / "eval")},
        }
    )
    results = run_evaluation(config)
    tuned = results["overall"]["tuned"]
    # A random tiny model writes no call: every rate is measured, and 0.
    assert tuned["tool_call_parseable"] == tuned["tool_call_name"] == tuned["tool_call_exact"] == 0.0
    assert tuned["thinking_chars"] == 0.0
    by_id = {s["id"]: s for s in results["samples"]}
    assert by_id["t1"]["reference"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert by_id["t1"]["tools"] == [weather]
    assert "tool_call_exact" in by_id["t1"]["scores"]["tuned"] and "tool_call_exact" not in by_id["p1"]["scores"]["tuned"]
    rows = list(csv.DictReader((tmp_path / "eval" / "evaluation_report.csv").open()))
    metrics_in_csv = {(r["metric"], r["better"]) for r in rows if r["dataset"] == "overall"}
    assert {("tool_call_exact", "higher"), ("thinking_chars", "")} <= metrics_in_csv
    assert "Tool call exact" in (tmp_path / "eval" / "evaluation_report.html").read_text()
    # The cache keys the tools: a second run reuses every prediction.
    cache = (tmp_path / "eval" / "cache" / "predictions-tuned.jsonl").read_text().splitlines()
    assert len(cache) == 2 and all("reasoning" in json.loads(line) for line in cache)
    run_evaluation(config)
    assert len((tmp_path / "eval" / "cache" / "predictions-tuned.jsonl").read_text().splitlines()) == 2


def test_prediction_is_the_answer_after_the_think_block():
    from qwentune.evaluate.predictions import answer_and_reasoning
    from qwentune.infer.reply import Reply

    def reply(text, reasoning):
        return Reply(content="", reasoning_content=reasoning, tool_calls=[], finish_reason="stop", prompt_tokens=1, completion_tokens=1, text=text)

    assert answer_and_reasoning(reply("<think>\nadd them\n</think>\n\n" + CALL, "add them")) == {"prediction": CALL, "reasoning": "add them"}
    assert answer_and_reasoning(reply("<think>\nstill thinking", "still thinking")) == {"prediction": "", "reasoning": "still thinking"}
    assert answer_and_reasoning(reply(" 5 ", None)) == {"prediction": "5", "reasoning": None}
