"""The whole flow through the guide's doors on a tiny Qwen model: preprocess -> train -> evaluate -> infer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import read_jsonl

REPO = Path(__file__).resolve().parents[1]

ALPACA = [
    {"instruction": f"What is {i} plus {i}?", "input": "", "output": f"{i} plus {i} is {2 * i}."} for i in range(12)
] + [{"instruction": f"{i}加{i}等于多少？", "input": "", "output": f"{i}加{i}等于{2 * i}。"} for i in range(12)]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": f"Name colour number {i}."}, {"from": "gpt", "value": f"Colour {i} is blue."}]}
    for i in range(8)
]


def run_door(*arguments: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *arguments], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{arguments} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def flow(tmp_path_factory, tiny_qwen2):
    root = tmp_path_factory.mktemp("flow")
    raw = root / "raw"
    (raw / "maths").mkdir(parents=True)
    (raw / "maths" / "alpaca.json").write_text(json.dumps(ALPACA, ensure_ascii=False), encoding="utf-8")
    (raw / "chat").mkdir()
    (raw / "chat" / "sharegpt.json").write_text(json.dumps(SHAREGPT), encoding="utf-8")
    processed = root / "processed"
    preprocess = run_door(
        "data/preprocess.py", "--input_dir", str(raw), "--output_dir", str(processed), "--tokenizer", str(tiny_qwen2),
        "--min_length", "5", "--max_length", "512", "--train_ratio", "0.6", "--val_ratio", "0.2", "--test_ratio", "0.2",
    )
    output_dir, logs = root / "checkpoints", root / "logs"
    train_config = {
        "model": {"model_name_or_path": str(tiny_qwen2)},
        "data": {"train_file": str(processed / "train.jsonl"), "validation_file": str(processed / "validation.jsonl"), "max_seq_length": 256},
        "training": {
            "output_dir": str(output_dir), "logging_dir": str(logs), "max_steps": 4, "per_device_train_batch_size": 4,
            "learning_rate": 1e-3, "logging_steps": 1, "save_steps": 2, "eval_steps": 2,
        },
        "lora": {"use_lora": True, "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    }
    (root / "train.yaml").write_text(yaml.safe_dump(train_config))
    train = run_door("scripts/train.py", "--config", str(root / "train.yaml"))
    results_dir = root / "evaluation"
    eval_config = {
        "model": {"model_path": str(output_dir), "base_model": str(tiny_qwen2), "compare_base": True},
        "datasets": [
            {"name": "alpaca_eval", "path": str(processed / "test.jsonl")},
            {"name": "chinese_eval", "path": str(processed / "chinese_test.jsonl"), "type": "chinese_capability"},
        ],
        "generation": {"max_new_tokens": 6, "batch_size": 4},
        "output": {"results_dir": str(results_dir)},
    }
    (root / "eval.yaml").write_text(yaml.safe_dump(eval_config))
    evaluate = run_door("scripts/evaluate.py", "--config", str(root / "eval.yaml"), "--max_samples", "5")
    return {
        "root": root, "processed": processed, "output_dir": output_dir, "logs": logs, "results_dir": results_dir,
        "preprocess": preprocess, "train": train, "evaluate": evaluate,
    }


def test_preprocess_accounts_for_every_record(flow):
    processed = flow["processed"]
    counts = {name: len(read_jsonl(processed / f"{name}.jsonl")) for name in ("train", "validation", "test")}
    rejects = read_jsonl(processed / "rejects.jsonl") if (processed / "rejects.jsonl").exists() else []
    assert sum(counts.values()) + len(rejects) == len(ALPACA) + len(SHAREGPT)
    assert all(counts.values())
    chinese = read_jsonl(processed / "chinese_test.jsonl")
    assert chinese and all(r["lang"] == "zh" for r in chinese)
    assert {r["id"] for r in chinese} <= {r["id"] for r in read_jsonl(processed / "test.jsonl")}


def test_training_prints_a_decoded_example_with_its_mask(flow):
    assert "⟦" in flow["train"].stdout and "<|im_end|>⟧" in flow["train"].stdout


def test_training_writes_what_inference_needs(flow):
    output_dir = flow["output_dir"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "generation_config.json", "qwentune_meta.json", "loss_curve.png"):
        assert (output_dir / name).is_file(), name
    generation = json.loads((output_dir / "generation_config.json").read_text())
    assert 151645 in generation["eos_token_id"]  # <|im_end|>
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    assert (output_dir / "checkpoint-2" / "qwentune_complete").is_file()


def test_training_logs(flow):
    log = (flow["logs"] / "training.log").read_text()
    assert "plan lora" in log and '"loss"' in log and "eval_loss" in log
    assert list(flow["logs"].glob("events.out.tfevents.*"))


def test_evaluation_reports(flow):
    results_dir = flow["results_dir"]
    for name in ("evaluation_report.json", "evaluation_report.csv", "evaluation_report.html", "predictions.jsonl"):
        assert (results_dir / name).is_file(), name
    report = json.loads((results_dir / "evaluation_report.json").read_text())
    assert report["models"] == ["base", "tuned"]
    assert set(report["datasets"]) == {"alpaca_eval", "chinese_eval"}
    tuned = report["overall"]["tuned"]
    for metric in ("bleu", "rougeL", "perplexity", "distinct_1", "distinct_2"):
        assert metric in tuned
    assert tuned["perplexity"] > 1
    assert report["datasets"]["alpaca_eval"]["n"] <= 5
    predictions = read_jsonl(results_dir / "predictions.jsonl")
    assert len(predictions) == sum(d["n"] for d in report["datasets"].values())


def test_single_prompt_inference(flow):
    result = run_door("scripts/inference.py", "--model_path", str(flow["output_dir"]), "--input", "测试", "--max_length", "4")
    assert result.returncode == 0


def test_batch_inference_keeps_order(flow, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text("one\ntwo\nthree\n", encoding="utf-8")
    answers = tmp_path / "answers.txt"
    run_door("scripts/inference.py", "--model_path", str(flow["output_dir"]), "--input_file", str(questions), "--output_file", str(answers), "--max_length", "3")
    assert len(answers.read_text(encoding="utf-8").splitlines()) == 3
