"""The HTML report in a real browser: Debian's Chromium driven headless by Playwright.

Playwright's Python package only drives the system Chromium here (no browser download).
Set QWENTUNE_UPDATE_SCREENSHOT=1 to refresh docs/images/report_screenshot.png.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from qwentune.evaluate import metrics, report

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium fonts-noto-cjk)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "report_screenshot.png"
INJECTION = '<img src=x onerror="window.injected=1"><script>window.injected=2</script>'

# (dataset, lang, prompt, reference, base prediction, tuned prediction)
SAMPLES = [
    ("alpaca_eval", "en", "Give three tips for staying healthy.",
     "Eat a balanced diet, exercise regularly and get enough sleep.",
     "Staying healthy is important. You should try to be healthy.",
     "Eat a balanced diet, exercise every day and sleep seven to eight hours."),
    ("alpaca_eval", "en", "What is the capital of France?", "The capital of France is Paris.",
     "France is a country in Europe. Its capital is Paris.", "The capital of France is Paris."),
    ("alpaca_eval", "en", "Translate 'good morning' into Spanish.", "Buenos días.",
     "Good morning in Spanish.", "Buenos días."),
    ("alpaca_eval", "en", "Write a haiku about autumn.",
     "Crisp leaves drift and fall, / golden light on quiet paths, / the year exhales slow.",
     INJECTION, "Red leaves softly fall, / cool wind whispers through the trees, / autumn says goodbye."),
    ("alpaca_eval", "en", "Explain photosynthesis in one sentence.",
     "Plants use sunlight, water and carbon dioxide to make glucose and release oxygen.",
     "Photosynthesis is a process.",
     "Plants turn sunlight, water and carbon dioxide into sugar and oxygen."),
    ("alpaca_eval", "en", "List two primary colours.", "Red and blue.", "", "Red and blue. 🎨"),
    ("chinese_test", "zh", "请介绍一下北京。", "北京是中国的首都，有三千多年的历史，是政治和文化中心。",
     "北京是一个城市。", "北京是中国的首都，历史悠久，是全国的政治和文化中心。"),
    ("chinese_test", "zh", "如何保持健康？", "均衡饮食、规律运动、保证充足睡眠。",
     "健康很重要，要注意健康。", "保持均衡饮食，坚持规律运动，并保证充足的睡眠。"),
    ("chinese_test", "zh", "把“谢谢”翻译成英文。", "Thank you.", "谢谢的英文。", "Thank you."),
    ("chinese_test", "zh", "用一句话解释机器学习。", "机器学习是让计算机从数据中学习规律并做出预测的方法。",
     "机器学习就是机器在学习。", "机器学习是让计算机从数据中自动学习规律、进行预测的技术。"),
    ("chinese_test", "zh", "写一句关于春天的诗。", "春风又绿江南岸。", "春天来了。", "春风拂面百花开。"),
]
MODELS = ("base", "tuned")
BERTSCORE_EN = {"base": [0.86, 0.91, 0.80, 0.72, 0.84, 0.0], "tuned": [0.95, 1.0, 1.0, 0.90, 0.94, 0.90]}
PERPLEXITY = {"alpaca_eval": {"base": 9.8, "tuned": 6.1}, "chinese_test": {"base": 14.2, "tuned": 8.7}}


def _dataset_metrics(rows, model, bertscores):
    predictions = [row[4] if model == "base" else row[5] for row in rows]
    references, langs = [row[3] for row in rows], [row[1] for row in rows]
    rouge = metrics.rouge(predictions, references, langs)
    scored = [score for score in bertscores if metrics.is_available(score)]
    return {
        "bleu": metrics.bleu(predictions, references, langs)["overall"],
        **rouge["overall"],
        "bertscore": sum(scored) / len(scored) if scored else metrics.not_available(
            "no offline BERTScore encoder for 'zh': the configured encoder covers en only"
        ),
        **metrics.diversity(predictions, langs)["overall"],
    }


def make_results(models=MODELS):
    """Realistic results: BLEU, ROUGE and diversity computed for real, the model-dependent numbers made up."""
    zh_na = metrics.not_available("no offline BERTScore encoder for 'zh': the configured encoder covers en only")
    bertscores = {m: BERTSCORE_EN[m] + [zh_na] * 5 for m in MODELS}
    datasets, samples = {}, []
    for name in ("alpaca_eval", "chinese_test"):
        indices = [i for i, row in enumerate(SAMPLES) if row[0] == name]
        rows = [SAMPLES[i] for i in indices]
        by_model = {}
        for model in models:
            by_model[model] = _dataset_metrics(rows, model, [bertscores[model][i] for i in indices])
            by_model[model]["perplexity"] = PERPLEXITY[name][model]
        datasets[name] = {"n": len(rows), "metrics": by_model}
    overall = {model: _dataset_metrics(SAMPLES, model, bertscores[model]) for model in models}
    for model in models:
        overall[model]["perplexity"] = 7.4 if model == "tuned" else 11.5
    per_sample = {}
    for model in models:
        predictions = [row[4] if model == "base" else row[5] for row in SAMPLES]
        references, langs = [row[3] for row in SAMPLES], [row[1] for row in SAMPLES]
        per_sample[model] = (
            metrics.bleu(predictions, references, langs)["per_sample"],
            metrics.rouge(predictions, references, langs)["per_sample"],
        )
    for index, (dataset, lang, prompt, reference, base, tuned) in enumerate(SAMPLES):
        texts = {"base": base, "tuned": tuned}
        samples.append({
            "dataset": dataset, "id": f"{dataset}-{index}", "lang": lang,
            "prompt": [{"role": "user", "content": prompt}], "reference": reference,
            "predictions": {m: texts[m] for m in models},
            "scores": {m: {"bleu": per_sample[m][0][index], **per_sample[m][1][index],
                           "bertscore": bertscores[m][index]} for m in models},
        })
    loss_curve = [
        {"step": step, "loss": round(0.9 + 1.6 * math.exp(-step / 18) + 0.06 * math.sin(step), 4),
         "eval_loss": round(1.0 + 1.5 * math.exp(-step / 18), 4) if step % 20 == 0 else None}
        for step in range(1, 101)
    ]
    return {
        "meta": {
            "started": "2025-03-14T09:30:00+00:00",
            "duration_s": 412.7,
            "config": {"max_new_tokens": 256, "temperature": 0.0},
            "versions": {"qwentune": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0"},
            "models": {"base": {"path": "Qwen/Qwen2.5-0.5B-Instruct"},
                       "tuned": {"path": "results/checkpoints/final", "adapter": True}},
        },
        "definitions": metrics.METRIC_DEFINITIONS,
        "models": list(models),
        "datasets": datasets,
        "overall": overall,
        "samples": samples,
        "loss_curve": loss_curve,
    }


class Page:
    """A loaded report page with what the browser logged and requested while loading it."""

    def __init__(self, page, errors, requests, dialogs):
        self.page, self.errors, self.requests, self.dialogs = page, errors, requests, dialogs

    def visible_rows(self):
        return self.page.locator("#samples tbody tr:not([hidden])")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


def _open(context, results, out_dir):
    html_path = report.write_reports(results, out_dir)["html"]
    page = context.new_page()
    errors, requests, dialogs = [], [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(html_path.as_uri())
    page.wait_for_selector("body[data-rendered='ok']", timeout=10_000)
    return Page(page, errors, requests, dialogs)


@pytest.fixture(scope="module")
def loaded(browser_context, tmp_path_factory):
    loaded = _open(browser_context, make_results(), tmp_path_factory.mktemp("report"))
    yield loaded
    loaded.page.close()


def test_page_renders_without_errors_or_network(loaded):
    assert loaded.errors == []
    assert all(url.startswith("file://") for url in loaded.requests), loaded.requests
    assert loaded.page.evaluate("window.injected") is None and loaded.dialogs == []


def test_untrusted_text_is_shown_as_text(loaded):
    assert loaded.page.locator("#samples td", has_text="onerror=").count() == 1
    assert loaded.page.locator("#samples img, #samples script").count() == 0


def test_charts_draw_bars_with_size(loaded):
    page = loaded.page
    assert page.locator("#metric-charts .chart").count() == len(report.metric_names(make_results()))
    sizes = page.eval_on_selector_all(
        "svg rect.bar", "bars => bars.map(b => { const r = b.getBoundingClientRect(); return [r.width, r.height]; })"
    )
    assert len(sizes) > 20 and all(width > 0 and height > 0 for width, height in sizes)
    assert page.locator("#distribution-charts rect.bar[data-metric='rougeL']").count() > 0
    assert page.locator("#loss-chart path.line").count() == 2  # training and validation loss


def test_summary_colours_deltas_knowing_lower_perplexity_is_better(loaded):
    perplexity_row = loaded.page.locator("#summary tr", has_text="Perplexity")
    assert perplexity_row.locator(".delta.good").count() == 3  # tuned is lower everywhere
    not_available = loaded.page.locator("#summary .na").first
    assert "zh" in not_available.get_attribute("title")


def test_search_and_filters_narrow_the_rows(loaded):
    page = loaded.page
    assert loaded.visible_rows().count() == len(SAMPLES)
    page.fill("#search", "capital of france")
    assert loaded.visible_rows().count() == 1
    page.fill("#search", "北京")
    assert loaded.visible_rows().count() == 1
    page.fill("#search", "")
    page.select_option("#lang-filter", "zh")
    assert loaded.visible_rows().count() == 5
    assert "5 of 11" in page.inner_text("#count")
    page.select_option("#lang-filter", "")
    page.select_option("#dataset-filter", "alpaca_eval")
    assert loaded.visible_rows().count() == 6
    page.select_option("#dataset-filter", "")


def test_sample_table_shows_three_scores_per_model(loaded):
    headers = loaded.page.eval_on_selector_all("#samples th", "ths => ths.map(t => t.textContent)")
    assert len(headers) == 5 + len(MODELS) + 3 * len(MODELS)  # rouge1 and rouge2 stay in predictions.jsonl
    assert not any(header.startswith("ROUGE-1") for header in headers)


def test_clicking_a_header_sorts_the_rows(loaded):
    page = loaded.page
    header = page.locator("#samples th", has_text="BLEU").filter(has_text="tuned")
    column = page.eval_on_selector_all("#samples th", "ths => ths.map(t => t.textContent)").index(header.text_content())

    def column_values():
        cells = page.eval_on_selector_all(
            f"#samples tbody tr td:nth-child({column + 1})", "cells => cells.map(c => c.textContent)"
        )
        return [float(cell) for cell in cells]

    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert column_values() == sorted(column_values(), reverse=True)
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert column_values() == sorted(column_values())


def test_single_model_report_renders(browser_context, tmp_path):
    single = _open(browser_context, make_results(models=("tuned",)), tmp_path)
    try:
        assert single.errors == []
        assert single.page.locator("#summary .delta").count() == 0
        assert single.page.locator("#metric-charts rect.bar").count() > 0
    finally:
        single.page.close()


def test_screenshot_is_not_blank(browser_context, tmp_path):
    from PIL import Image

    fresh = _open(browser_context, make_results(), tmp_path)  # unfiltered and unsorted, as a reader first sees it
    path = tmp_path / "report.png"
    try:
        fresh.page.screenshot(path=str(path), full_page=True)
    finally:
        fresh.page.close()
    with Image.open(path) as image:
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert width >= 1200 and height > 1500
    assert colours is None or len(colours) > 200  # text, bars and tints, not a blank page
    if os.environ.get("QWENTUNE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOT)
