"""Multi-process training on CPU: torchrun DDP (gloo), and DeepSpeed ZeRO-2 / ZeRO-3 (DS_ACCELERATOR=cpu).

Two processes with 2 examples each take the same global batch of 4 as one process, so the
logged losses and the final adapter must match the single-process run (up to the order of
floating-point sums). ZeRO-2 comes from the guide's `mindspeed.zero_stage`, ZeRO-3 from
`--deepspeed config/deepspeed/zero3.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from test_train_recipe import write_data

REPO = Path(__file__).resolve().parents[1]
STEPS = 3

pytestmark = pytest.mark.slow


def write_config(root: Path, model: Path, data: Path, batch_size: int, zero_stage: int = 0) -> Path:
    config = {
        "model": {"model_name_or_path": str(model)},
        "data": {"train_file": str(data), "validation_file": None, "max_seq_length": 128},
        "training": {
            "output_dir": str(root / "out"), "logging_dir": str(root / "logs"), "max_steps": STEPS, "save_steps": 100,
            "logging_steps": 1, "per_device_train_batch_size": batch_size, "learning_rate": 1e-3,
        },
        "lora": {"target_modules": "all-linear", "lora_dropout": 0.0},  # no dropout: processes draw different masks
        "mindspeed": {"zero_stage": zero_stage},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def torchrun(config: Path, *extra: str) -> Path:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(REPO / "scripts" / "train.py"), "--config", str(config), *extra,
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(command, cwd=config.parent, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return config.parent / "out"


def losses(output_dir: Path) -> list[float]:
    return [p["loss"] for p in json.loads((output_dir / "loss_history.json").read_text()) if p["loss"] is not None]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_qwen2):
    root = tmp_path_factory.mktemp("distributed")
    data = write_data(root / "data", train=16, validation=0)[0]
    from qwentune.cli import main

    single = write_config(root / "single", tiny_qwen2, data, batch_size=4)
    assert main(["train", "--config", str(single)]) == 0
    return root, tiny_qwen2, data, single.parent / "out"


def assert_same_training(output_dir: Path, reference: Path) -> None:
    assert losses(output_dir) == pytest.approx(losses(reference), abs=1e-5)
    assert len(losses(reference)) == STEPS
    mine, theirs = load_file(output_dir / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys()
    for name in theirs:
        assert (mine[name] - theirs[name]).abs().max() < 1e-5, name


def test_torchrun_ddp_matches_one_process(setup):
    root, model, data, reference = setup
    assert_same_training(torchrun(write_config(root / "ddp", model, data, batch_size=2)), reference)


def test_deepspeed_zero2_from_the_guides_zero_stage_matches_one_process(setup):
    pytest.importorskip("deepspeed")
    root, model, data, reference = setup
    assert_same_training(torchrun(write_config(root / "zero2", model, data, batch_size=2, zero_stage=2)), reference)


def test_deepspeed_zero3_from_a_config_file_matches_one_process(setup):
    pytest.importorskip("deepspeed")
    root, model, data, reference = setup
    output_dir = torchrun(write_config(root / "zero3", model, data, batch_size=2), "--deepspeed", str(REPO / "config/deepspeed/zero3.json"))
    assert_same_training(output_dir, reference)
