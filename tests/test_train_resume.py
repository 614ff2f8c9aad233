"""Resume: a run killed with SIGKILL and resumed from its latest complete checkpoint ends exactly
where an uninterrupted run ends (same weights, same logged losses, in fp32 on CPU), and a
finished run continues for more steps.

Only the killed run needs its own process; the others run in this one (same code, same
threads), which keeps the test short.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from test_train_recipe import write_data

from qwentune.errors import UsageError
from qwentune.model.checkpoint import COMPLETE_MARKER

REPO = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 12, 4


def write_config(root: Path, model: Path, data: tuple[Path, Path]) -> Path:
    config = {
        "model": {"model_name_or_path": str(model)},
        "data": {"train_file": str(data[0]), "validation_file": None, "max_seq_length": 128},
        "training": {
            "output_dir": str(root / "out"), "logging_dir": str(root / "logs"), "max_steps": STEPS,
            "save_steps": SAVE_EVERY, "save_total_limit": 2, "logging_steps": 1, "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
        },
        # Dropout on: resuming must also restore the random state.
        "lora": {"target_modules": "all-linear", "lora_dropout": 0.1},
        "mindspeed": {"zero_stage": 0},
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config), *extra]


def run(config: Path, *extra: str) -> None:
    """`python scripts/train.py --config CONFIG EXTRA...`, in this process."""
    from qwentune.cli import main

    assert main(["train", "--config", str(config), *extra]) == 0


def losses(output_dir: Path) -> dict[int, float]:
    history = json.loads((output_dir / "loss_history.json").read_text())
    return {p["step"]: p["loss"] for p in history if p["loss"] is not None}


def kill_after_first_checkpoint(config: Path) -> Path:
    output_dir = config.parent / "out"
    process = subprocess.Popen(train_command(config), cwd=config.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = output_dir / f"checkpoint-{SAVE_EVERY}" / COMPLETE_MARKER
    deadline = time.time() + 600
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    return output_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen2):
    data = write_data(tmp_path_factory.mktemp("resume-data"), train=24, validation=0)
    whole = write_config(tmp_path_factory.mktemp("whole"), tiny_qwen2, data)
    cut = write_config(tmp_path_factory.mktemp("cut"), tiny_qwen2, data)
    run(whole)
    output_dir = kill_after_first_checkpoint(cut)
    assert not (output_dir / "adapter_model.safetensors").exists()
    run(cut, "--resume_from_checkpoint", "latest")
    return {"whole": whole.parent / "out", "cut": output_dir, "config": cut}


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(runs):
    whole = load_file(runs["whole"] / "adapter_model.safetensors")
    resumed = load_file(runs["cut"] / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert (whole[name] == resumed[name]).all(), name


def test_resumed_run_logs_the_losses_of_an_uninterrupted_run(runs):
    whole, resumed = losses(runs["whole"]), losses(runs["cut"])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == whole


def test_latest_skips_a_checkpoint_without_its_completion_marker(runs, tmp_path):
    from qwentune.train.recipe import resolve_resume

    output_dir = tmp_path / "out"
    for step, complete in ((4, True), (8, False)):
        (output_dir / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (output_dir / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("ok\n")
    assert resolve_resume("latest", output_dir) == str(output_dir / "checkpoint-4")
    with pytest.raises(UsageError, match="not a complete checkpoint"):
        resolve_resume(str(output_dir / "checkpoint-8"), output_dir)


def test_checkpoints_after_resume_are_complete_and_capped(runs):
    names = {p.name for p in runs["cut"].glob("checkpoint-*")}
    assert names == {f"checkpoint-{STEPS - SAVE_EVERY}", f"checkpoint-{STEPS}"}
    assert all((runs["cut"] / name / COMPLETE_MARKER).is_file() for name in names)


def test_a_finished_run_continues_for_more_steps(runs):
    run(runs["config"], "--resume_from_checkpoint", "latest", f"training.max_steps={STEPS + SAVE_EVERY}")
    assert max(losses(runs["cut"])) == STEPS + SAVE_EVERY
    meta = json.loads((runs["cut"] / "qwentune_meta.json").read_text())
    assert meta["train_summary"]["global_step"] == STEPS + SAVE_EVERY


@pytest.mark.parametrize(
    "complete, incomplete, best, keep, left",
    [
        ([2, 4, 6], [], None, 2, [4, 6]),
        ([2, 4, 6], [5, 8], None, 2, [4, 6, 8]),  # a leftover older than the newest goes; a newer one is being written
        ([2, 4, 6], [], 2, 1, [2, 6]),  # the best and the newest stay, whatever the limit
        ([2, 4, 6], [], 4, 2, [4, 6]),
        ([2, 4, 6], [], None, None, [2, 4, 6]),
    ],
)
def test_rotation_keeps_the_newest_complete_and_the_best_checkpoint(tmp_path, complete, incomplete, best, keep, left):
    from qwentune.train.callbacks import CheckpointFilesCallback

    for step in complete + incomplete:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if step in complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("ok\n")
    callback = CheckpointFilesCallback(model=None, tokenizer=None, meta={}, keep=keep)
    callback._rotate(tmp_path, str(tmp_path / f"checkpoint-{best}") if best else None)
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*")) == left


# --- a checkpoint that cannot be used says why and what to do --------------------------------------


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny_qwen2) -> Path:
    """A finished 2-step run that kept checkpoint-1 and checkpoint-2; tests damage copies of it."""
    root = tmp_path_factory.mktemp("two-checkpoints")
    config = write_config(root, tiny_qwen2, write_data(root, train=8, validation=0))
    run(config, "training.max_steps=2", "training.save_steps=1", "training.save_total_limit=null")
    return config


def damaged_copy(two_checkpoints: Path, tmp_path: Path, file: str, damage: str) -> Path:
    """A copy of the run whose checkpoint-2 has `file` truncated, or one byte changed in its middle."""
    shutil.copytree(two_checkpoints.parent / "out", tmp_path / "out")
    path = tmp_path / "out" / "checkpoint-2" / file
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    config = yaml.safe_load(two_checkpoints.read_text())
    config["training"]["output_dir"] = str(tmp_path / "out")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "train.yaml"


@pytest.mark.parametrize(
    "file, damage",
    [
        ("adapter_model.safetensors", "truncated"),
        ("optimizer.pt", "byte changed"),  # torch.load would read this one without complaint
        ("optimizer.pt", "truncated"),
        ("rng_state.pth", "truncated"),
    ],
)
@pytest.mark.parametrize("resume", ["latest", "checkpoint-2"])
def test_a_damaged_checkpoint_names_the_file_and_the_earlier_checkpoint(two_checkpoints, tmp_path, capsys, file, damage, resume):
    from qwentune.cli import main

    config = damaged_copy(two_checkpoints, tmp_path, file, damage)
    target = "latest" if resume == "latest" else str(tmp_path / "out" / resume)
    assert main(["train", "--config", str(config), "--resume_from_checkpoint", target]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"checkpoint-2 is damaged: {file} cannot be read" in err
    assert f"--resume_from_checkpoint {tmp_path / 'out' / 'checkpoint-1'}" in err
    assert "Traceback" not in err
    # Nothing was trained over the damaged run.
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_a_missing_resume_folder_does_not_exist(two_checkpoints, tmp_path, capsys):
    from qwentune.cli import main

    missing = tmp_path / "checkpoint-9"
    assert main(["train", "--config", str(two_checkpoints), "--resume_from_checkpoint", str(missing)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"'{missing}' does not exist" in err and "not a complete checkpoint" not in err
    assert "complete checkpoints in" in err and "checkpoint-1, checkpoint-2" in err
