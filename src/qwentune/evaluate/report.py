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
from pathlib import Path

from qwentune.evaluate.metrics import LOWER_IS_BETTER, METRIC_DEFINITIONS

JSON_REPORT = "evaluation_report.json"
CSV_REPORT = "evaluation_report.csv"
HTML_REPORT = "evaluation_report.html"
PREDICTIONS = "predictions.jsonl"
OVERALL = "overall"
# Report order; metrics not listed here follow in the order they first appear.
METRIC_ORDER = ("bleu", "rouge1", "rouge2", "rougeL", "bertscore", "perplexity", "distinct_1", "distinct_2")
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
                    "better": "lower" if metric in LOWER_IS_BETTER else "higher",
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
    return _HTML_TEMPLATE.replace("__REPORT_DATA__", _escape_for_script(_to_json(payload)))


def write_reports(results: dict, out_dir, *, save_predictions: bool = True, html: bool = True) -> dict[str, Path]:
    """Write the reports into `out_dir` (created if needed); returns their paths by kind.

    The JSON and CSV are always written; `save_predictions` and `html` follow the eval
    config's `output.save_predictions` and `output.generate_report`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    completed = complete_results(results)
    paths = {"json": out_dir / JSON_REPORT, "csv": out_dir / CSV_REPORT}
    paths["json"].write_text(_to_json(completed, indent=2) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(completed))
    if save_predictions:
        paths["predictions"] = out_dir / PREDICTIONS
        lines = "".join(_to_json(sample) + "\n" for sample in completed["samples"])
        paths["predictions"].write_text(lines, encoding="utf-8")
    if html:
        paths["html"] = out_dir / HTML_REPORT
        paths["html"].write_text(render_html(completed), encoding="utf-8")
    return paths


_HTML_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qwentune evaluation report</title>
<style>
:root {
  --text: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa;
  --good: #1a7f37; --good-bg: #dafbe1; --bad: #cf222e; --bad-bg: #ffebe9; --accent: #0969da;
}
* { box-sizing: border-box; }
body {
  margin: 0; color: var(--text); background: #fff; line-height: 1.5;
  font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", "Noto Sans", Roboto, "Helvetica Neue", Arial,
    "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", "Source Han Sans SC",
    "WenQuanYi Micro Hei", sans-serif;
}
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 0 0 6px; }
.subtitle { color: var(--muted); margin: 0 0 16px; }
.facts { display: flex; flex-wrap: wrap; gap: 8px 32px; margin: 0; }
.facts div { min-width: 140px; }
.facts dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
details { margin-top: 12px; }
summary { cursor: pointer; color: var(--accent); }
pre { background: var(--soft); padding: 12px; border-radius: 6px; overflow: auto; font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.summary td.metric { font-weight: 600; }
.arrow { color: var(--muted); padding: 0 4px; }
.base-value { color: var(--muted); }
.delta { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 10px; font-size: 12px; }
.delta.good { color: var(--good); background: var(--good-bg); }
.delta.bad { color: var(--bad); background: var(--bad-bg); }
.delta.same { color: var(--muted); background: var(--soft); }
.na { color: var(--muted); border-bottom: 1px dotted var(--muted); cursor: help; }
.legend { display: flex; gap: 16px; margin: 0 0 12px; font-size: 13px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 20px; }
.chart { border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
.chart svg { display: block; width: 100%; height: auto; overflow: visible; }
.chart text { font-size: 11px; fill: var(--muted); }
.chart text.value { fill: var(--text); font-size: 9.5px; }
.chart .grid { stroke: #eaeef2; }
.chart .axis { stroke: var(--line); }
.wide { grid-column: 1 / -1; }
dl.definitions dt { font-weight: 600; margin-top: 10px; }
dl.definitions dd { margin: 2px 0 0; color: var(--muted); max-width: 960px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-bottom: 12px; }
.controls input, .controls select { font: inherit; font-size: 14px; padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px; }
.controls input { flex: 1 1 280px; }
.count { color: var(--muted); font-size: 13px; }
.samples-wrap { overflow-x: auto; }
.samples { font-size: 13px; }
.samples th, .samples td { padding: 6px 7px; }
.samples th { cursor: pointer; user-select: none; position: sticky; top: 0; white-space: nowrap; }
.samples th small { display: block; font-weight: 400; color: var(--muted); }
.samples th[aria-sort="ascending"]::after { content: " \25B2"; font-size: 10px; }
.samples th[aria-sort="descending"]::after { content: " \25BC"; font-size: 10px; }
.samples td.text { min-width: 150px; max-width: 340px; }
.samples td.text div { max-height: 12em; overflow: auto; white-space: pre-wrap; overflow-wrap: anywhere; }
.samples td.tag { white-space: nowrap; color: var(--muted); font-size: 13px; }
.empty { color: var(--muted); font-style: italic; }
</style>
</head>
<body>
<main>
<header>
  <h1>Evaluation report</h1>
  <p class="subtitle" id="subtitle">qwentune</p>
  <dl class="facts" id="facts"></dl>
  <details><summary>Configuration and versions</summary><pre id="config"></pre></details>
</header>
<noscript><p>This report draws its tables and charts with JavaScript; the same numbers are in evaluation_report.json and .csv.</p></noscript>
<section><h2>Summary</h2><div class="samples-wrap"><table class="summary" id="summary"></table></div></section>
<section><h2>Metrics by dataset</h2><div class="legend" id="legend"></div><div class="charts" id="metric-charts"></div></section>
<section id="distribution-section"><h2>Per-sample score distributions</h2><div class="charts" id="distribution-charts"></div></section>
<section id="loss-section"><h2>Training loss</h2><div class="charts" id="loss-chart"></div></section>
<section><h2>Samples</h2>
  <div class="controls">
    <input type="search" id="search" placeholder="Filter prompts, references and predictions…" aria-label="Filter samples">
    <select id="dataset-filter" aria-label="Dataset"></select>
    <select id="lang-filter" aria-label="Language"></select>
    <span class="count" id="count"></span>
  </div>
  <div class="samples-wrap"><table class="samples" id="samples"><thead></thead><tbody></tbody></table></div>
</section>
<section><h2>Metric definitions</h2><dl class="definitions" id="definitions"></dl></section>
</main>
<script type="application/json" id="report-data">__REPORT_DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("report-data").textContent);
const view = data.view;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = { base: "#7b8fa8", tuned: "#e07b39" };
const EXTRA_COLORS = ["#2f81c7", "#4aa37a", "#b35c9e", "#c9a227"];
const LABELS = {
  bleu: "BLEU", rouge1: "ROUGE-1", rouge2: "ROUGE-2", rougeL: "ROUGE-L", bertscore: "BERTScore",
  perplexity: "Perplexity", distinct_1: "Distinct-1", distinct_2: "Distinct-2",
};
// Known ranges give comparable histograms; other per-sample scores use their own maximum.
const RANGES = { bleu: 100, rouge1: 1, rouge2: 1, rougeL: 1, bertscore: 1, distinct_1: 1, distinct_2: 1 };
const lowerIsBetter = new Set(view.lower_is_better);
const datasetNames = Object.keys(data.datasets);

function label(metric) { return LABELS[metric] || metric; }
function color(model, index) { return COLORS[model] || EXTRA_COLORS[index % EXTRA_COLORS.length]; }
function isNumber(value) { return typeof value === "number" && isFinite(value); }
function reasonOf(value) {
  if (value && typeof value === "object" && value.reason) return value.reason;
  return value === undefined ? "not computed for this model" : "not available";
}
function fmt(value) {
  const size = Math.abs(value);
  return value.toFixed(size >= 100 ? 1 : size >= 10 ? 2 : 3);
}
// Three significant digits: fits above a bar.
function fmtShort(value) { return Math.abs(value) >= 1000 ? value.toFixed(0) : String(+value.toPrecision(3)); }
function el(tag, attrs, parent, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}
function svg(tag, attrs, parent, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}
function valueNode(value, parent) {
  if (isNumber(value)) return el("span", { class: "num" }, parent, fmt(value));
  return el("span", { class: "na", title: reasonOf(value) }, parent, "n/a");
}
function promptText(prompt) {
  if (!Array.isArray(prompt)) return prompt == null ? "" : String(prompt);
  // A lone user message is the prompt itself; a conversation shows who said what.
  if (prompt.length === 1 && prompt[0].role === "user") return String(prompt[0].content);
  return prompt.map((m) => `${m.role}: ${m.content}`).join("\n\n");
}
function formatDuration(seconds) {
  if (!isNumber(seconds)) return "n/a";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = Math.round(seconds % 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${seconds.toFixed(1)} s`;
}
function deltaClass(metric, delta) {
  if (delta === 0) return "same";
  return (delta > 0) !== lowerIsBetter.has(metric) ? "good" : "bad";
}

function renderHeader() {
  const meta = data.meta || {};
  const started = meta.started ? new Date(meta.started) : null;
  document.getElementById("subtitle").textContent = data.models.length > 1
    ? "Base model and fine-tuned model on the same prompts" : "One model on the evaluation sets";
  const facts = document.getElementById("facts");
  const add = (term, value, title) => {
    const item = el("div", {}, facts);
    el("dt", {}, item, term);
    el("dd", title ? { title } : {}, item, value);
  };
  for (const model of data.models) {
    const info = (meta.models || {})[model] || {};
    add(`${model} model`, (info.path || "?") + (info.adapter ? " (adapter)" : ""));
  }
  add("Datasets", datasetNames.map((name) => `${name} (${data.datasets[name].n})`).join(", "));
  add("Samples", String(data.samples.length));
  add("Date", started && !isNaN(started) ? started.toLocaleString() : (meta.started || "n/a"), meta.started);
  add("Duration", formatDuration(meta.duration_s));
  document.getElementById("config").textContent =
    JSON.stringify({ config: meta.config || {}, versions: meta.versions || {} }, null, 2);
}

function metricsOf(block) { return block === view.overall ? data.overall : data.datasets[block].metrics; }

function renderSummary() {
  const table = document.getElementById("summary");
  const blocks = [view.overall, ...datasetNames];
  const head = el("tr", {}, el("thead", {}, table));
  el("th", {}, head, "Metric");
  for (const block of blocks) {
    const n = block === view.overall ? datasetNames.reduce((sum, name) => sum + (data.datasets[name].n || 0), 0)
      : data.datasets[block].n;
    const th = el("th", { class: "num" }, head, block);
    el("small", {}, th, ` n=${n}`);
  }
  const body = el("tbody", {}, table);
  for (const metric of view.metric_names) {
    const row = el("tr", {}, body);
    el("td", { class: "metric", title: data.definitions[metric] || "" }, row,
      label(metric) + (lowerIsBetter.has(metric) ? " ↓" : " ↑"));
    for (const block of blocks) {
      const cell = el("td", { class: "num" }, row);
      const byModel = metricsOf(block) || {};
      data.models.forEach((model, index) => {
        if (index > 0) el("span", { class: "arrow" }, cell, "→");
        const node = valueNode((byModel[model] || {})[metric], cell);
        if (index < data.models.length - 1) node.classList.add("base-value");
      });
      const delta = ((data.deltas || {})[block] || {})[metric];
      if (isNumber(delta)) {
        el("span", { class: `delta ${deltaClass(metric, delta)}` }, cell, (delta > 0 ? "+" : "") + fmt(delta));
      }
    }
  }
}

function chartFrame(container, title, wide) {
  const box = el("div", { class: wide ? "chart wide" : "chart" }, container);
  el("h3", {}, box, title);
  return box;
}
// Axis maximum and a round tick step (about four ticks) for values up to `value`;
// counts get whole-number steps.
function niceScale(value, counts) {
  if (!(value > 0)) return { max: 1, step: counts ? 1 : 0.25 };
  const raw = value / 4, magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
  const multiples = counts ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
  const step = Math.max(counts ? 1 : 0, multiples.map((k) => k * magnitude).find((s) => s >= raw));
  return { max: Math.ceil(value / step - 1e-9) * step, step };
}
function yAxis(plot, geometry, scale) {
  for (let value = 0; value <= scale.max + 1e-9; value += scale.step) {
    const y = geometry.y(value);
    svg("line", { class: "grid", x1: geometry.left, x2: geometry.right, y1: y, y2: y }, plot);
    svg("text", { x: geometry.left - 6, y: y + 4, "text-anchor": "end" }, plot, String(+value.toPrecision(6)));
  }
}
function geometryFor(width, height, maxValue, left) {
  const top = 18, bottom = height - 28;
  return { left, right: width - 8, top, bottom, y: (v) => bottom - ((bottom - top) * v) / maxValue };
}

function renderMetricCharts() {
  const legend = document.getElementById("legend");
  data.models.forEach((model, index) => {
    const item = el("span", {}, legend);
    el("span", { class: "swatch", style: `background:${color(model, index)}` }, item);
    item.appendChild(document.createTextNode(model));
  });
  const container = document.getElementById("metric-charts");
  const groups = [view.overall, ...datasetNames];
  for (const metric of view.metric_names) {
    const values = groups.map((block) => data.models.map((model) => ((metricsOf(block) || {})[model] || {})[metric]));
    const numbers = values.flat().filter(isNumber);
    let scale = niceScale(Math.max(0, ...numbers) * 1.1);
    // Head-room for the labels must not push a 0-1 score's axis past 1.
    if (RANGES[metric] && scale.max > RANGES[metric]) scale = { max: RANGES[metric], step: RANGES[metric] / 4 };
    const box = chartFrame(container, label(metric) + (lowerIsBetter.has(metric) ? " (lower is better)" : ""));
    const width = 320, height = 200;
    const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label(metric) }, box);
    const geometry = geometryFor(width, height, scale.max, 40);
    yAxis(plot, geometry, scale);
    const groupWidth = (geometry.right - geometry.left) / groups.length;
    const barWidth = Math.min(28, (groupWidth * 0.75) / data.models.length);
    groups.forEach((block, g) => {
      const start = geometry.left + g * groupWidth + (groupWidth - barWidth * data.models.length) / 2;
      data.models.forEach((model, m) => {
        const value = values[g][m], x = start + m * barWidth;
        if (isNumber(value)) {
          const y = geometry.y(Math.max(0, value));
          const bar = svg("rect", { class: "bar", x, y, width: barWidth - 2, height: Math.max(1, geometry.bottom - y),
            fill: color(model, m), "data-model": model, "data-metric": metric }, plot);
          svg("title", {}, bar, `${block} · ${model}: ${fmt(value)}`);
          svg("text", { class: "value", x: x + barWidth / 2 - 1, y: y - 3, "text-anchor": "middle" }, plot, fmtShort(value));
        } else {
          const na = svg("text", { x: x + barWidth / 2, y: geometry.bottom - 4, "text-anchor": "middle" }, plot, "n/a");
          svg("title", {}, na, `${model}: ${reasonOf(value)}`);
        }
      });
      const name = block.length > 14 ? block.slice(0, 13) + "…" : block;
      const tick = svg("text", { x: geometry.left + (g + 0.5) * groupWidth, y: height - 10, "text-anchor": "middle" }, plot, name);
      svg("title", {}, tick, block);
    });
    svg("line", { class: "axis", x1: geometry.left, x2: geometry.right, y1: geometry.bottom, y2: geometry.bottom }, plot);
  }
}

// The per-sample scores worth a column and a histogram; predictions.jsonl has them all.
function sampleMetrics() {
  const seen = new Set();
  for (const sample of data.samples) {
    for (const scores of Object.values(sample.scores || {})) for (const key of Object.keys(scores)) seen.add(key);
  }
  return view.sample_metrics.filter((metric) => seen.has(metric));
}

function renderDistributions(metrics) {
  const container = document.getElementById("distribution-charts");
  const bins = 10;
  let drawn = 0;
  for (const metric of metrics) {
    const perModel = data.models.map((model) =>
      data.samples.map((s) => ((s.scores || {})[model] || {})[metric]).filter(isNumber));
    if (!perModel.some((values) => values.length)) continue;
    drawn++;
    const top = RANGES[metric] || niceScale(Math.max(...perModel.flat())).max;
    const counts = perModel.map((values) => {
      const histogram = new Array(bins).fill(0);
      for (const v of values) histogram[Math.min(bins - 1, Math.max(0, Math.floor((v / top) * bins)))]++;
      return histogram;
    });
    const scale = niceScale(Math.max(1, ...counts.flat()), true);
    const title = metric === "bleu" ? "Sentence BLEU" : label(metric);
    const box = chartFrame(container, `${title}: samples per score bin`);
    const width = 320, height = 200;
    const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title }, box);
    const geometry = geometryFor(width, height, scale.max, 34);
    yAxis(plot, geometry, scale);
    const binWidth = (geometry.right - geometry.left) / bins;
    counts.forEach((histogram, m) => {
      const model = data.models[m], barWidth = (binWidth - 2) / data.models.length;
      histogram.forEach((count, b) => {
        if (!count) return;
        const x = geometry.left + b * binWidth + 1 + m * barWidth, y = geometry.y(count);
        const bar = svg("rect", { class: "bar", x, y, width: Math.max(1, barWidth - 1), height: geometry.bottom - y,
          fill: color(model, m), "data-model": model, "data-metric": metric }, plot);
        svg("title", {}, bar, `${model}: ${count} samples in [${fmt((b * top) / bins)}, ${fmt(((b + 1) * top) / bins)})`);
      });
    });
    for (const fraction of [0, 0.5, 1]) {
      svg("text", { x: geometry.left + fraction * (geometry.right - geometry.left), y: height - 10,
        "text-anchor": "middle" }, plot, String(+(fraction * top).toFixed(2)));
    }
    svg("line", { class: "axis", x1: geometry.left, x2: geometry.right, y1: geometry.bottom, y2: geometry.bottom }, plot);
  }
  if (!drawn) document.getElementById("distribution-section").hidden = true;
}

function renderLossCurve() {
  const points = (data.loss_curve || []).filter((p) => isNumber(p.step));
  const series = [["loss", "training loss", "#2f81c7"], ["eval_loss", "validation loss", "#e07b39"]]
    .map(([key, name, stroke]) => ({ name, stroke, points: points.filter((p) => isNumber(p[key])).map((p) => [p.step, p[key]]) }))
    .filter((s) => s.points.length);
  if (!series.length) { document.getElementById("loss-section").hidden = true; return; }
  const box = chartFrame(document.getElementById("loss-chart"), "Loss by training step", true);
  const width = 900, height = 260;
  const all = series.flatMap((s) => s.points);
  const minStep = Math.min(...all.map((p) => p[0])), maxStep = Math.max(...all.map((p) => p[0]));
  const scale = niceScale(Math.max(...all.map((p) => p[1])));
  const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "loss curve" }, box);
  const geometry = geometryFor(width, height, scale.max, 44);
  const x = (step) => geometry.left + ((geometry.right - geometry.left) * (step - minStep)) / Math.max(1, maxStep - minStep);
  yAxis(plot, geometry, scale);
  const stepTicks = [[minStep, "start"], [Math.round((minStep + maxStep) / 2), "middle"], [maxStep, "end"]];
  for (const [step, anchor] of stepTicks) {
    svg("text", { x: x(step), y: height - 10, "text-anchor": anchor }, plot, `step ${step}`);
  }
  series.forEach((s, index) => {
    const path = s.points.map(([step, loss], i) => `${i ? "L" : "M"}${x(step).toFixed(1)},${geometry.y(loss).toFixed(1)}`).join(" ");
    svg("path", { class: "line", d: path, fill: "none", stroke: s.stroke, "stroke-width": 2 }, plot);
    if (s.points.length < 60) {
      for (const [step, loss] of s.points) {
        const dot = svg("circle", { cx: x(step), cy: geometry.y(loss), r: 3, fill: s.stroke }, plot);
        svg("title", {}, dot, `${s.name} at step ${step}: ${fmt(loss)}`);
      }
    }
    svg("rect", { x: geometry.right - 150, y: 8 + index * 16, width: 10, height: 10, fill: s.stroke }, plot);
    svg("text", { x: geometry.right - 134, y: 17 + index * 16 }, plot, s.name);
  });
  svg("line", { class: "axis", x1: geometry.left, x2: geometry.right, y1: geometry.bottom, y2: geometry.bottom }, plot);
}

function renderDefinitions() {
  const list = document.getElementById("definitions");
  for (const [metric, text] of Object.entries(data.definitions || {})) {
    el("dt", {}, list, metric === "sentence_bleu" ? "Sentence BLEU (per-sample BLEU)" : label(metric));
    el("dd", {}, list, text);
  }
}

function renderSamples(metrics) {
  const table = document.getElementById("samples");
  const columns = [
    { title: "#", type: "number", get: (s, i) => i + 1, cls: "num" },
    { title: "Dataset", type: "text", get: (s) => s.dataset || "", cls: "tag" },
    { title: "Lang", type: "text", get: (s) => s.lang || "", cls: "tag" },
    { title: "Prompt", type: "text", get: (s) => promptText(s.prompt), cls: "text" },
    { title: "Reference", type: "text", get: (s) => s.reference || "", cls: "text" },
    ...data.models.map((model) => ({ title: "Prediction", sub: model, type: "text", cls: "text",
      get: (s) => (s.predictions || {})[model] || "" })),
  ];
  for (const metric of metrics) {
    for (const model of data.models) {
      columns.push({ title: metric === "bleu" ? "BLEU" : label(metric), sub: model, type: "number", cls: "num",
        definition: data.definitions[metric === "bleu" ? "sentence_bleu" : metric],
        get: (s) => ((s.scores || {})[model] || {})[metric] });
    }
  }
  const headRow = el("tr", {}, table.tHead);
  columns.forEach((column, index) => {
    const th = el("th", { class: column.cls === "num" ? "num" : "", scope: "col", tabindex: "0",
      title: column.definition || `Sort by ${column.title}` }, headRow, column.title);
    if (column.sub) el("small", {}, th, column.sub);
    const sort = () => sortBy(index, th);
    th.addEventListener("click", sort);
    th.addEventListener("keydown", (event) => { if (event.key === "Enter") sort(); });
  });
  const body = table.tBodies[0];
  const rows = data.samples.map((sample, i) => {
    const tr = el("tr", {}, body);
    const values = columns.map((column) => column.get(sample, i));
    columns.forEach((column, c) => {
      const td = el("td", { class: column.cls }, tr);
      if (column.cls === "text") {
        const text = values[c];
        el("div", text ? {} : { class: "empty" }, td, text || "(empty)");
      } else if (column.type === "number" && c > 0) {
        valueNode(values[c], td);
      } else {
        td.textContent = String(values[c]);
      }
    });
    const haystack = [sample.id, ...values.filter((v) => typeof v === "string")].join("\n").toLowerCase();
    return { tr, values, sample, haystack };
  });

  let sortState = { index: 0, direction: 1 };
  function sortBy(index, th) {
    const direction = sortState.index === index ? -sortState.direction : columns[index].type === "number" && index > 0 ? -1 : 1;
    sortState = { index, direction };
    for (const other of headRow.children) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", direction > 0 ? "ascending" : "descending");
    const numeric = columns[index].type === "number";
    rows.sort((a, b) => {
      const x = a.values[index], y = b.values[index];
      if (numeric) {  // numbers first in the chosen direction, then "n/a"
        if (!isNumber(x) || !isNumber(y)) return (isNumber(x) ? 0 : 1) - (isNumber(y) ? 0 : 1);
        return (x - y) * direction;
      }
      return String(x).localeCompare(String(y)) * direction;
    });
    for (const row of rows) body.appendChild(row.tr);
  }

  const search = document.getElementById("search");
  const datasetFilter = document.getElementById("dataset-filter");
  const langFilter = document.getElementById("lang-filter");
  const fillSelect = (select, allLabel, values) => {
    el("option", { value: "" }, select, allLabel);
    for (const value of values) el("option", { value }, select, value);
  };
  fillSelect(datasetFilter, "All datasets", datasetNames);
  fillSelect(langFilter, "All languages", [...new Set(data.samples.map((s) => s.lang || ""))].sort());
  const count = document.getElementById("count");
  function applyFilters() {
    const query = search.value.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const visible = (!query || row.haystack.includes(query))
        && (!datasetFilter.value || row.sample.dataset === datasetFilter.value)
        && (!langFilter.value || (row.sample.lang || "") === langFilter.value);
      row.tr.hidden = !visible;
      shown += visible;
    }
    count.textContent = `${shown} of ${rows.length} samples`;
  }
  for (const control of [search, datasetFilter, langFilter]) control.addEventListener("input", applyFilters);
  applyFilters();
}

renderHeader();
renderSummary();
renderMetricCharts();
const perSampleMetrics = sampleMetrics();
renderDistributions(perSampleMetrics);
renderLossCurve();
renderSamples(perSampleMetrics);
renderDefinitions();
document.body.dataset.rendered = "ok";
</script>
</body>
</html>
"""
