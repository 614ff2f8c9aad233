"""Evaluation reports, all written from one results dict.

The evaluation runner produces this dict; every report is a view of it:

    results = {
        "meta": {
            "started": "2025-01-31T12:00:00+00:00",       # ISO 8601
            "duration_s": 93.4,
            "config": {...},                               # the evaluation config as used
            "versions": {"qwentune": "0.1.0", "torch": ..., ...},
            "models": {"base": {"path": "..."}, "tuned": {"path": "...", "adapter": True}},
        },
        "definitions": METRIC_DEFINITIONS,                 # filled in when absent
        "models": ["base", "tuned"],                       # or ["tuned"]: a single model, no deltas
        "datasets": {
            "alpaca_eval": {
                "n": 30,
                "metrics": {                               # model -> metric -> value
                    "base": {"bleu": 3.1, "rougeL": 0.2, "perplexity": 8.4,
                             "bertscore": {"available": False, "reason": "..."}},
                    "tuned": {...},
                },
            },
        },
        "overall": {"base": {...}, "tuned": {...}},        # same shape, all datasets together
        "deltas": {"alpaca_eval": {"bleu": 1.2, ...}, "overall": {...}},  # tuned - base; see compute_deltas
        "samples": [{
            "dataset": "alpaca_eval", "id": "...", "lang": "en",
            "prompt": "..." or [{"role": ..., "content": ...}],
            "reference": "...",
            "predictions": {"base": "...", "tuned": "..."},
            "scores": {"base": {"bleu": 12.0, "rougeL": 0.3, "bertscore": 0.9}, "tuned": {...}},
        }],
        "loss_curve": [{"step": 1, "loss": 2.3, "eval_loss": None}, ...] or None,
    }

A metric value is a number or the `{"available": False, "reason": ...}` marker of
`qwentune.evaluate.metrics`; per-sample "bleu" is sentence BLEU. Files written by
`write_reports`:

- evaluation_report.json: the whole dict (deltas and definitions filled in);
- evaluation_report.csv: one row per dataset (then "overall") x model x metric, with the
  tuned - base delta on the tuned rows and the reason on rows that are not available;
- predictions.jsonl: one line per sample, as in "samples";
- evaluation_report.html: one self-contained file (no network: inline CSS, vanilla JS and
  SVG charts) with the summary, charts, definitions and a searchable, sortable sample
  table (per sample it shows sentence BLEU, ROUGE-L and BERTScore). The data is embedded
  as JSON and rendered with textContent only, so no text from a model or a dataset is
  ever parsed as HTML.

Non-finite numbers (an overflowing perplexity) are written as null: JSON has no NaN.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from importlib import resources
from pathlib import Path

from qwentune.evaluate.metrics import LOWER_IS_BETTER, METRIC_DEFINITIONS, NO_DIRECTION
from qwentune.fsutil import atomic_open, atomic_write

JSON_REPORT = "evaluation_report.json"
CSV_REPORT = "evaluation_report.csv"
HTML_REPORT = "evaluation_report.html"
# The page (styles, charts, the sample table) beside this module; the results go in as one JSON object.
HTML_TEMPLATE = "report_template.html"
PREDICTIONS = "predictions.jsonl"
OVERALL = "overall"
# Report order; metrics not listed here follow in the order they first appear.
METRIC_ORDER = (
    "bleu", "rouge1", "rouge2", "rougeL", "bertscore", "perplexity", "distinct_1", "distinct_2",
    "tool_call_parseable", "tool_call_name", "tool_call_exact", "thinking_chars",
)
# Per-sample scores shown in the HTML (a column per model and a histogram each); more would
# crowd the table.
SAMPLE_TABLE_METRICS = ("bleu", "rougeL", "bertscore")
CSV_COLUMNS = ("dataset", "model", "metric", "value", "delta_vs_base", "better", "not_available_reason")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_blocks(results: dict) -> dict[str, dict]:
    """dataset name (then "overall") -> model -> metric -> value."""
    blocks = {name: dataset["metrics"] for name, dataset in results["datasets"].items()}
    blocks[OVERALL] = results["overall"]
    return blocks


def compute_deltas(results: dict) -> dict[str, dict[str, float]]:
    """tuned - base per dataset and overall, for metrics that both models have as numbers.

    Empty for a single-model run. The sign is raw: for perplexity a negative delta is an
    improvement (see `LOWER_IS_BETTER`).
    """
    if not {"base", "tuned"} <= set(results["models"]):
        return {}
    deltas = {}
    for name, by_model in _metric_blocks(results).items():
        base, tuned = by_model.get("base", {}), by_model.get("tuned", {})
        deltas[name] = {
            metric: tuned[metric] - base[metric]
            for metric in base
            if _is_number(base[metric]) and _is_number(tuned.get(metric))
        }
    return deltas


def complete_results(results: dict) -> dict:
    """A copy with the optional parts filled in: deltas, definitions, loss curve."""
    completed = copy.deepcopy(results)
    completed.setdefault("definitions", dict(METRIC_DEFINITIONS))
    completed.setdefault("loss_curve", None)
    if "deltas" not in completed:
        completed["deltas"] = compute_deltas(completed)
    return completed


def metric_names(results: dict) -> list[str]:
    """Every metric reported for any dataset or model, in report order."""
    seen: dict[str, None] = {}
    for by_model in _metric_blocks(results).values():
        for values in by_model.values():
            seen.update(dict.fromkeys(values))
    ranked = {name: index for index, name in enumerate(METRIC_ORDER)}
    return sorted(seen, key=lambda name: ranked.get(name, len(ranked)))


def _json_safe(value):
    """`value` with non-finite floats replaced by None, so the output is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _to_json(value, **kwargs) -> str:
    # default=str: paths and dates in the config are written as text.
    return json.dumps(_json_safe(value), ensure_ascii=False, allow_nan=False, default=str, **kwargs)


def csv_rows(results: dict) -> list[dict]:
    """The tidy CSV table: one row per dataset (then "overall") x model x reported metric."""
    deltas = results.get("deltas") or {}
    names = metric_names(results)
    rows = []
    for dataset, by_model in _metric_blocks(results).items():
        for model in results["models"]:
            values = by_model.get(model, {})
            for metric in names:
                if metric not in values:
                    continue
                value = values[metric]
                delta = deltas.get(dataset, {}).get(metric) if model == "tuned" else None
                rows.append({
                    "dataset": dataset,
                    "model": model,
                    "metric": metric,
                    "value": value if _is_number(value) else "",
                    "delta_vs_base": "" if delta is None else delta,
                    "better": "lower" if metric in LOWER_IS_BETTER else "" if metric in NO_DIRECTION else "higher",
                    "not_available_reason": "" if _is_number(value) else _not_available_reason(value),
                })
    return rows


def _not_available_reason(value) -> str:
    if isinstance(value, dict):
        return value.get("reason", "not available")
    return "not a finite number" if value is not None else "missing"


def _escape_for_script(json_text: str) -> str:
    """JSON that cannot end its <script> element or open a comment: <, > and & become escapes.

    These characters only occur inside JSON strings, where the \\u escapes mean the same.
    """
    return json_text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(results: dict) -> str:
    """The self-contained HTML report of already completed results (see `complete_results`)."""
    payload = dict(results)
    payload["view"] = {
        "metric_names": metric_names(results),
        "lower_is_better": sorted(LOWER_IS_BETTER),
        "overall": OVERALL,
        "sample_metrics": list(SAMPLE_TABLE_METRICS),
    }
    template = resources.files("qwentune.evaluate").joinpath(HTML_TEMPLATE).read_text(encoding="utf-8")
    return template.replace("__REPORT_DATA__", _escape_for_script(_to_json(payload)))


def write_reports(results: dict, out_dir, *, save_predictions: bool = True, html: bool = True) -> dict[str, Path]:
    """Write the reports into `out_dir` (created if needed); returns their paths by kind.

    The JSON and CSV are always written; `save_predictions` and `html` follow the eval
    config's `output.save_predictions` and `output.generate_report`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    completed = complete_results(results)
    paths = {"json": out_dir / JSON_REPORT, "csv": out_dir / CSV_REPORT}
    # Each report is replaced in one step: a killed run leaves the previous report whole.
    atomic_write(paths["json"], _to_json(completed, indent=2) + "\n")
    with atomic_open(paths["csv"], newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(completed))
    if save_predictions:
        paths["predictions"] = out_dir / PREDICTIONS
        lines = "".join(_to_json(sample) + "\n" for sample in completed["samples"])
        atomic_write(paths["predictions"], lines)
    if html:
        paths["html"] = out_dir / HTML_REPORT
        atomic_write(paths["html"], render_html(completed))
    return paths
