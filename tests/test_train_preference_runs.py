"""DPO through the whole machinery: resume after SIGKILL ends exactly where an uninterrupted run ends,
and torchrun DDP / DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU processes train as one process with the same global batch."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl
from safetensors.torch import load_file
from test_train_distributed import assert_same_training, torchrun
from test_train_resume import kill_after_first_checkpoint, losses, run

WORDS = "colour light answer short long reply question model data water city music".split()


def write_pairs(folder: Path, count: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    records = [
        {"id": f"p{i}", "source": "t", "lang": "en",
         "messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))}],
         "chosen": {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))},
         "rejected": {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(8, 20)))}, "meta": {}}
        for i in range(count)
    ]
    return write_jsonl(folder / "pairs.jsonl", records)


def write_config(root: Path, model: Path, data: Path, *, steps: int, batch_size: int, save_steps: int = 100,
                 dropout: float = 0.0, zero_stage: int = 0) -> Path:
    config = {
        "model": {"model_name_or_path": str(model)},
        "data": {"train_file": str(data), "validation_file": None, "max_seq_length": 128},
        "training": {
            "stage": "dpo", "output_dir": str(root / "out"), "logging_dir": str(root / "logs"), "max_steps": steps,
            "save_steps": save_steps, "save_total_limit": 2, "logging_steps": 1,
            "per_device_train_batch_size": batch_size, "learning_rate": 1e-3,
        },
        "lora": {"target_modules": "all-linear", "lora_dropout": dropout},
        "mindspeed": {"zero_stage": zero_stage},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dpo_resumed_after_sigkill_matches_an_uninterrupted_run(tmp_path, tiny_qwen2):
    data = write_pairs(tmp_path / "data", 24)
    # Dropout on: resuming must also restore the random state (the reference pass draws none: adapters off).
    options = dict(steps=12, batch_size=2, save_steps=4, dropout=0.1)
    whole = write_config(tmp_path / "whole", tiny_qwen2, data, **options)
    cut = write_config(tmp_path / "cut", tiny_qwen2, data, **options)
    run(whole)
    output_dir = kill_after_first_checkpoint(cut)
    run(cut, "--resume_from_checkpoint", "latest")
    assert losses(output_dir) == losses(whole.parent / "out")
    assert sorted(losses(output_dir)) == list(range(1, 13))
    mine, theirs = load_file(output_dir / "adapter_model.safetensors"), load_file(whole.parent / "out" / "adapter_model.safetensors")
    assert all((mine[name] == theirs[name]).all() for name in theirs)


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_qwen2):
    from qwentune.cli import main

    root = tmp_path_factory.mktemp("dpo-distributed")
    data = write_pairs(root / "data", 12)
    config = write_config(root / "single", tiny_qwen2, data, steps=3, batch_size=4)
    assert main(["train", "--config", str(config)]) == 0
    return root, data, config.parent / "out"


@pytest.mark.slow
def test_dpo_torchrun_ddp_matches_one_process(single, tiny_qwen2):
    root, data, reference = single
    output_dir = torchrun(write_config(root / "ddp", tiny_qwen2, data, steps=3, batch_size=2))
    assert_same_training(output_dir, reference)
    # The logged rewards and accuracies are the whole batch's, not the first process's half.
    assert logged_metrics(output_dir) == pytest.approx(logged_metrics(reference), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_dpo_deepspeed_matches_one_process(single, tiny_qwen2, zero_stage):
    pytest.importorskip("deepspeed")
    root, data, reference = single
    # ZeRO-3 partitions the weights: the reference pass (adapters disabled) must gather them like the policy's.
    config = write_config(root / f"zero{zero_stage}", tiny_qwen2, data, steps=3, batch_size=2, zero_stage=zero_stage)
    output_dir = torchrun(config)
    assert_same_training(output_dir, reference)
    assert logged_metrics(output_dir) == pytest.approx(logged_metrics(reference), abs=1e-5)


def logged_metrics(output_dir: Path) -> list[float]:
    """Each step's logged preference values (rewards, margins, accuracy, log-probs), from the training log."""
    lines = (output_dir.parent / "logs" / "training.log").read_text().splitlines()
    logged = [json.loads(line[line.index("{"):]) for line in lines if " step " in line and '"rewards/margins"' in line]
    keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")
    assert len(logged) == 3 and all(key in entry for entry in logged for key in keys), logged
    return [entry[key] for entry in logged for key in keys]
