"""Held-out preference accuracy: margins against a hand computation, and the values in every report format."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from qwentune.data.tokenize import IGNORE_INDEX, encode_conversation
from qwentune.evaluate.preference import pair_margins, preference_values

PAIRS = [
    ([{"role": "user", "content": "Name a colour."}], "Blue.", "A colour is a property of light that our eyes see."),
    ([{"role": "user", "content": "What is 2+2?"}], "二加二等于四。", "Four."),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}], "Goodbye.", "No."),
]


def mean_logp_by_hand(model, tokenizer, messages) -> float:
    example = encode_conversation(tokenizer, messages, last_turn_only=True)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0].double()
    scores = [
        torch.log_softmax(logits[i], -1)[example.labels[i + 1]].item()
        for i in range(len(example.input_ids) - 1)
        if example.labels[i + 1] != IGNORE_INDEX
    ]
    return sum(scores) / len(scores)


def test_margins_equal_the_hand_computation(tiny_qwen2, qwen_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    expected = [
        mean_logp_by_hand(model, qwen_tokenizer, [*prompt, {"role": "assistant", "content": chosen}])
        - mean_logp_by_hand(model, qwen_tokenizer, [*prompt, {"role": "assistant", "content": rejected}])
        for prompt, chosen, rejected in PAIRS
    ]
    # Batched with padding (2 conversations of different lengths per forward) gives the same margins.
    assert pair_margins(model, qwen_tokenizer, PAIRS, batch_size=2) == pytest.approx(expected, abs=1e-4)


def test_preference_values():
    assert preference_values([0.5, -0.25, 1.0, 0.0]) == {"preference_accuracy": 0.5, "preference_margin": 0.3125}
    assert preference_values([]) == {}


def test_runner_reports_preference_accuracy_in_every_format(tiny_qwen2, tmp_path, one_torch_thread):
    from qwentune.config.evaluation import EvalConfig
    from qwentune.evaluate.runner import run_evaluation

    records = [
        {"id": f"pair{i}", "source": "s", "lang": "en", "messages": prompt,
         "chosen": {"role": "assistant", "content": chosen}, "rejected": {"role": "assistant", "content": rejected}, "meta": {}}
        for i, (prompt, chosen, rejected) in enumerate(PAIRS)
    ]
    records.append({"id": "sft", "source": "s", "lang": "en", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "meta": {}})
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    config = EvalConfig.model_validate({
        "model": {"model_path": str(tiny_qwen2), "compare_base": False, "device": "cpu"},
        "datasets": [{"name": "prefs", "path": str(data)}],
        "metrics": ["bleu", "preference_accuracy"],
        "generation": {"max_new_tokens": 4, "batch_size": 2},
        "output": {"results_dir": str(tmp_path / "eval")},
    })
    results = run_evaluation(config)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    from qwentune.data.tokenize import load_tokenizer

    margins = pair_margins(model, load_tokenizer(str(tiny_qwen2)), PAIRS)
    tuned = results["datasets"]["prefs"]["metrics"]["tuned"]
    # The SFT sample is scored by generation only; the three pairs by margin too.
    assert tuned["preference_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert tuned["preference_margin"] == pytest.approx(sum(margins) / 3, abs=1e-4)
    by_id = {s["id"]: s for s in results["samples"]}
    assert by_id["pair1"]["reference"] == "二加二等于四。" and by_id["pair1"]["rejected"] == "Four."
    assert "preference_margin" in by_id["pair0"]["scores"]["tuned"] and "preference_margin" not in by_id["sft"]["scores"]["tuned"]
    assert "bleu" in tuned
    rows = list(csv.DictReader((tmp_path / "eval" / "evaluation_report.csv").open()))
    assert {(r["dataset"], r["metric"]) for r in rows} >= {("prefs", "preference_accuracy"), ("overall", "preference_margin")}
    saved = json.loads((tmp_path / "eval" / "evaluation_report.json").read_text())
    assert "preference_accuracy" in saved["definitions"]
    assert "preference_accuracy" in (tmp_path / "eval" / "evaluation_report.html").read_text()


def test_where_reports_one_file_by_its_parts(tmp_path):
    from qwentune.config.base import ConfigError
    from qwentune.evaluate.runner import load_samples

    records = [
        {"id": f"p{i}", "source": "demo", "lang": lang, "messages": [{"role": "user", "content": f"q{i}"}],
         "chosen": {"role": "assistant", "content": "yes"}, "rejected": {"role": "assistant", "content": "no"},
         "meta": {"category": category}}
        for i, (lang, category) in enumerate([("en", "unknowable"), ("zh", "unknowable"), ("en", "knowable")])
    ]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [s.id for s in load_samples(str(data), "d", None, {"category": "unknowable"})] == ["p0", "p1"]
    # A meta key and a top-level field together.
    assert [s.id for s in load_samples(str(data), "d", None, {"category": "unknowable", "lang": "zh"})] == ["p1"]
    with pytest.raises(ConfigError, match=r"datasets\[d\]\.where .*no record matches; the file's values are category: knowable, unknowable"):
        load_samples(str(data), "d", None, {"category": "unknown"})
