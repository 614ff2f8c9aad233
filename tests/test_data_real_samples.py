"""Extra check on real public samples, when the shared collection is beside the repo (skipped otherwise).

Set QWENTUNE_SAMPLE_DATASETS to point at another copy of the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qwentune.config.preprocess import PreprocessConfig
from qwentune.data.preprocess import run_preprocess

SAMPLES = Path(os.environ.get("QWENTUNE_SAMPLE_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
# Wrappers and configs in that folder that are not datasets: their format is rightly undetected.
NOT_DATASETS = {
    "bad_inputs.jsonl",
    "llamafactory.dataset_info.2024-05-pre-demo.json",
    "llamafactory.dataset_info.HEAD.json",
}

EXPECTED_FORMATS = {
    "alpaca_gpt4_data.sample.json": "alpaca",
    "oasst1.llamafactory_oaast_sft_zh.sample.json": "alpaca",  # LLaMA-Factory's Alpaca-with-history conversion
    "oasst1.sample.jsonl": "oasst",
    "oasst1.messages_nested.sample.jsonl": "oasst",
    "oasst.flat_messages.DERIVED.jsonl": "oasst",
    "belle.multiturn_chat_0.8M.readme_example.jsonl": "belle",
    "firefly.sample.jsonl": "firefly",
    "sharegpt.glaive_toolcall_en.sample.json": "sharegpt",
    "sharegpt.axolotl_fixture_conversation.json": "sharegpt",
    "openai_messages.sample.jsonl": "openai",
    "chinese_vicuna_chat_lists.sample.jsonl": "alpaca",
}

pytestmark = pytest.mark.skipif(not any(SAMPLES.glob("*.json*")), reason=f"no real samples at {SAMPLES}")


def test_real_samples_convert_and_add_up(tmp_path):
    config = PreprocessConfig(input_dir=SAMPLES, output_dir=tmp_path / "out", num_workers=0, show_example=False)
    report = run_preprocess(config)
    stats = report.stats
    for name, entry in stats["sources"].items():
        assert entry["in"] == entry["train"] + entry["validation"] + entry["test"] + entry["rejected"], name
    totals = stats["totals"]
    assert totals["in"] == totals["kept"] + totals["rejected"] and totals["kept"] > 2000
    assert {p.file for p in report.errors} <= NOT_DATASETS
    formats = {f["file"]: f["format"] for f in stats["files"]}
    for name, expected in EXPECTED_FORMATS.items():
        assert formats[name] == expected, name
    # The known bad records of the collection are caught.
    reasons = stats["reasons"]
    assert reasons["not_ending_with_assistant"] > 0 and reasons["empty_output"] >= 1
    assert reasons["no_user_turn"] >= 1 and reasons["unfilled_template"] >= 80
