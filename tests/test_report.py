"""Report writers: the four files, their shapes, and safe embedding of untrusted text."""

from __future__ import annotations

import csv
import json
import re

import pytest

from qwentune.evaluate import report
from qwentune.evaluate.metrics import METRIC_DEFINITIONS, not_available

INJECTION = '</script><script>alert("pwned")</script><img src=x onerror=alert(1)> <!-- & -->'
METRICS = ("bleu", "rougeL", "bertscore", "perplexity")


def _metrics(bleu, rouge_l, perplexity, bertscore):
    return {"bleu": bleu, "rougeL": rouge_l, "bertscore": bertscore, "perplexity": perplexity}


def make_results(models=("base", "tuned")):
    zh_bertscore = not_available("no offline BERTScore encoder for 'zh'")
    datasets = {
        "alpaca_eval": {"n": 2, "metrics": {"base": _metrics(10.0, 0.2, 9.0, 0.80), "tuned": _metrics(14.5, 0.3, 7.5, 0.84)}},
        "chinese_test": {"n": 1, "metrics": {"base": _metrics(20.0, 0.4, 6.0, zh_bertscore),
                                             "tuned": _metrics(18.0, 0.5, 6.5, zh_bertscore)}},
    }
    results = {
        "meta": {
            "started": "2025-01-31T12:00:00+00:00",
            "duration_s": 93.4,
            "config": {"max_new_tokens": 128},
            "versions": {"qwentune": "0.1.0"},
            "models": {"base": {"path": "models/base"}, "tuned": {"path": "results/checkpoints/final", "adapter": True}},
        },
        "definitions": METRIC_DEFINITIONS,
        "models": list(models),
        "datasets": {name: {"n": d["n"], "metrics": {m: d["metrics"][m] for m in models}} for name, d in datasets.items()},
        "overall": {m: _metrics(12.0, 0.3, 8.0, 0.82) for m in models},
        "samples": [
            {"dataset": "alpaca_eval", "id": "a1", "lang": "en", "prompt": "Name a colour.", "reference": "Blue.",
             "predictions": {"base": INJECTION, "tuned": "Blue."},
             "scores": {"base": {"bleu": 0.0, "rougeL": 0.0, "bertscore": 0.1},
                        "tuned": {"bleu": 100.0, "rougeL": 1.0, "bertscore": 1.0}}},
            {"dataset": "alpaca_eval", "id": "a2", "lang": "en",
             "prompt": [{"role": "user", "content": "Say hi."}], "reference": "Hi!",
             "predictions": {"base": "Hello.", "tuned": ""},
             "scores": {"base": {"bleu": 0.0, "rougeL": 0.0, "bertscore": 0.7},
                        "tuned": {"bleu": 0.0, "rougeL": 0.0, "bertscore": 0.0}}},
            {"dataset": "chinese_test", "id": "z1", "lang": "zh", "prompt": "北京是哪个国家的首都？",
             "reference": "中国。", "predictions": {"base": "中国", "tuned": "中国。"},
             "scores": {"base": {"bleu": 30.0, "rougeL": 0.8, "bertscore": zh_bertscore},
                        "tuned": {"bleu": 100.0, "rougeL": 1.0, "bertscore": zh_bertscore}}},
        ],
        "loss_curve": [{"step": 1, "loss": 2.3, "eval_loss": None}, {"step": 2, "loss": 1.9, "eval_loss": 2.0}],
    }
    for sample in results["samples"]:
        sample["predictions"] = {m: sample["predictions"][m] for m in models}
        sample["scores"] = {m: sample["scores"][m] for m in models}
    return results


@pytest.fixture
def written(tmp_path):
    return report.write_reports(make_results(), tmp_path / "evaluation")


def test_all_four_files_are_written(written):
    assert set(written) == {"json", "csv", "predictions", "html"}
    assert [path.name for path in written.values()] == [
        "evaluation_report.json", "evaluation_report.csv", "predictions.jsonl", "evaluation_report.html"
    ]
    assert all(path.stat().st_size > 0 for path in written.values())


def test_json_round_trips_with_deltas_filled_in(written):
    loaded = json.loads(written["json"].read_text(encoding="utf-8"))
    expected = make_results()
    assert {key: loaded[key] for key in expected} == expected
    assert loaded["deltas"]["alpaca_eval"] == pytest.approx({"bleu": 4.5, "rougeL": 0.1, "bertscore": 0.04, "perplexity": -1.5})
    assert "bertscore" not in loaded["deltas"]["chinese_test"]  # not available for either model
    assert loaded["deltas"]["overall"]["bleu"] == 0.0


def test_csv_has_one_row_per_dataset_model_and_metric(written):
    with written["csv"].open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    blocks = ["alpaca_eval", "chinese_test", "overall"]
    assert len(rows) == len(blocks) * 2 * len(METRICS)
    assert {(row["dataset"], row["model"], row["metric"]) for row in rows} == {
        (block, model, metric) for block in blocks for model in ("base", "tuned") for metric in METRICS
    }
    by_key = {(row["dataset"], row["model"], row["metric"]): row for row in rows}
    tuned_ppl = by_key["alpaca_eval", "tuned", "perplexity"]
    assert float(tuned_ppl["delta_vs_base"]) == pytest.approx(-1.5) and tuned_ppl["better"] == "lower"
    assert by_key["alpaca_eval", "base", "bleu"]["delta_vs_base"] == ""
    zh_bertscore = by_key["chinese_test", "tuned", "bertscore"]
    assert zh_bertscore["value"] == "" and "zh" in zh_bertscore["not_available_reason"]


def test_predictions_jsonl_has_one_line_per_sample(written):
    lines = written["predictions"].read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == make_results()["samples"]


def _embedded_json(html):
    return re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.DOTALL).group(1)


def test_html_loads_nothing_from_the_network(written):
    html = written["html"].read_text(encoding="utf-8")
    # The SVG namespace is an identifier, not a resource.
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) <= {"http://www.w3.org/2000/svg"}
    markup = html.replace(_embedded_json(html), "")  # the data is inert text (see the next test)
    assert not re.search(r"<(link|img|iframe|object|embed)\b|@import|url\(|\ssrc=", markup, flags=re.IGNORECASE)


def test_html_embeds_untrusted_text_as_inert_json(written):
    html = written["html"].read_text(encoding="utf-8")
    assert "alert" in html  # the text is there...
    assert "<script>alert" not in html and "<img" not in html and "<!--" not in html  # ...but never as markup
    assert html.count("</script>") == 2  # the data element and the program, nothing from the data
    payload = json.loads(_embedded_json(html))
    assert payload["samples"][0]["predictions"]["base"] == INJECTION
    assert payload["samples"][2]["prompt"] == "北京是哪个国家的首都？"


def test_single_model_run_has_no_deltas(tmp_path):
    paths = report.write_reports(make_results(models=("tuned",)), tmp_path)
    loaded = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert loaded["deltas"] == {}
    with paths["csv"].open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 1 * len(METRICS)
    assert all(row["delta_vs_base"] == "" for row in rows)


def test_non_finite_numbers_become_null(tmp_path):
    results = make_results()
    results["overall"]["base"]["perplexity"] = float("inf")
    paths = report.write_reports(results, tmp_path)
    loaded = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert loaded["overall"]["base"]["perplexity"] is None
    assert "perplexity" not in loaded["deltas"]["overall"]


def test_optional_reports_follow_the_output_config(tmp_path):
    paths = report.write_reports(make_results(), tmp_path, save_predictions=False, html=False)
    assert set(paths) == {"json", "csv"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation_report.csv", "evaluation_report.json"]


def test_metric_names_follow_report_order():
    results = make_results()
    results["overall"]["tuned"]["custom_score"] = 1.0
    assert report.metric_names(results) == ["bleu", "rougeL", "bertscore", "perplexity", "custom_score"]
