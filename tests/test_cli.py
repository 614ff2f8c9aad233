"""The command line: one error path (a message on stderr and an exit code), options and overrides
in any order, usage that names the door the user typed, and `--help` without heavy imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl

from qwentune.cli import guarded, main, parse_arguments
from qwentune.config.base import read_yaml
from qwentune.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE

REPO = Path(__file__).resolve().parents[1]
DOORS = {
    "data/download_data.py": "download",
    "data/preprocess.py": "preprocess",
    "scripts/train.py": "train",
    "scripts/evaluate.py": "evaluate",
    "scripts/inference.py": "infer",
}
HEAVY = ("torch", "transformers", "peft", "fastapi", "uvicorn", "datasets")


def stderr_of(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


# --- config files ------------------------------------------------------------------------------------


def test_a_config_file_that_is_not_utf8_is_one_clear_error(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_bytes("training:\n  output_dir: r\xe9sultats\n".encode("latin-1"))
    assert main(["train", "--config", str(config)]) == EXIT_USAGE
    err = stderr_of(capsys)
    assert f"config file {config} is not UTF-8 text: byte 25 (line 2)" in err and "save the file as UTF-8" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing set yet\n"])
def test_an_empty_config_file_is_an_error_not_silent_defaults(tmp_path, capsys, text):
    config = tmp_path / "train.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config)]) == EXIT_USAGE
    assert f"config file {config} is empty" in stderr_of(capsys)


def test_an_explicit_empty_mapping_takes_every_default(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("{}\n")
    assert read_yaml(config) == {}


def test_a_config_path_that_is_a_folder_is_named(tmp_path, capsys):
    assert main(["evaluate", "--config", str(tmp_path)]) == EXIT_USAGE
    assert f"config file {tmp_path} is a folder" in stderr_of(capsys)


# --- the one error path ------------------------------------------------------------------------------


def test_a_traceback_only_with_verbose_or_qwentune_debug(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "missing.yaml")
    monkeypatch.delenv("QWENTUNE_DEBUG", raising=False)
    assert main(["train", "--config", missing]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.strip() == f"error: config file not found: {missing}"
    assert main(["train", "--config", missing, "--verbose"]) == EXIT_USAGE
    assert "Traceback" in capsys.readouterr().err
    assert main(["--verbose", "evaluate", "--config", missing]) == EXIT_USAGE
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("QWENTUNE_DEBUG", "1")
    assert main(["train", "--config", missing]) == EXIT_USAGE
    assert "Traceback" in capsys.readouterr().err


def test_an_exception_that_is_not_ours_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv("QWENTUNE_DEBUG", raising=False)

    def bug() -> int:
        raise KeyError("boom")

    assert guarded(bug) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected KeyError: 'boom'") and "--verbose" in err and "Traceback" not in err


def test_ctrl_c_exits_130(capsys):
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert guarded(interrupted) == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err


def test_quick_start_goes_through_the_same_handler(tmp_path):
    result = subprocess.run(
        [sys.executable, "quick_start.py", "--train", "--train_config", str(tmp_path / "none.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert f"error: config file not found: {tmp_path / 'none.yaml'}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# --- a model that cannot load: exit 1 in every stage -------------------------------------------------


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory, tiny_qwen2) -> Path:
    """The tiny model with its weights file cut in half (a copy interrupted by a full disk)."""
    folder = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_qwen2, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def _train_command(root: Path, model: Path) -> list[str]:
    train = write_jsonl(root / "train.jsonl", [
        {"id": str(i), "messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}
        for i in range(4)
    ])  # fmt: skip
    config = {
        "model": {"model_name_or_path": str(model)},
        "data": {"train_file": str(train), "validation_file": None, "max_seq_length": 64},
        "training": {"output_dir": str(root / "out"), "logging_dir": str(root / "logs"), "max_steps": 1},
    }
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    return ["train", "--config", str(root / "train.yaml")]


def _evaluate_command(root: Path, model: Path) -> list[str]:
    test = write_jsonl(root / "test.jsonl", [
        {"id": "1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ])  # fmt: skip
    config = {
        "model": {"model_path": str(model), "compare_base": False},
        "datasets": [{"name": "t", "path": str(test)}],
        "metrics": ["bleu"],
        "output": {"results_dir": str(root / "eval")},
    }
    (root / "eval.yaml").write_text(yaml.safe_dump(config))
    return ["evaluate", "--config", str(root / "eval.yaml")]


@pytest.mark.parametrize("stage", ["infer", "evaluate", "train", "export"])
def test_a_model_that_cannot_load_exits_1_in_every_stage(broken_model, tmp_path, capsys, stage):
    command = {
        "infer": lambda: ["infer", "--model_path", str(broken_model), "--input", "hi"],
        "export": lambda: ["export", "--model_path", str(broken_model), "--output_dir", str(tmp_path / "merged")],
        "train": lambda: _train_command(tmp_path, broken_model),
        "evaluate": lambda: _evaluate_command(tmp_path, broken_model),
    }[stage]()
    assert main(command) == EXIT_FAILED
    err = stderr_of(capsys)
    assert f"could not load the model in '{broken_model}'" in err and "Traceback" not in err
    assert err.count("error:") == 1


def test_a_damaged_tokenizer_is_named_not_a_traceback(tiny_qwen2, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_qwen2, folder)
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:1000])
    assert main(["infer", "--model_path", str(folder), "--input", "hi"]) == EXIT_FAILED
    err = stderr_of(capsys)
    assert f"could not load the tokenizer '{folder}'" in err and "complete tokenizer" in err and "Traceback" not in err


# --- parsing -----------------------------------------------------------------------------------------


def test_dotted_overrides_anywhere_on_the_line():
    args = parse_arguments(["train", "training.seed=1", "--debug", "training.max_steps=2", "--config", "c.yaml", "lora.r=4"])
    assert args.overrides == ["training.seed=1", "training.max_steps=2", "lora.r=4"]
    assert args.debug and args.config == "c.yaml"
    args = parse_arguments(["evaluate", "seed=3", "--max_samples", "5", "generation.do_sample=true"])
    assert args.overrides == ["seed=3", "generation.do_sample=true"] and args.max_samples == 5


def test_overrides_after_a_flag_reach_the_config(tmp_path, capsys):
    # Both overrides are read (and both unknown keys named), whatever stands between them.
    assert main(["train", "--config", "config/training_config.yaml", "training.sed=1", "--debug", "lora.rr=2"]) == EXIT_USAGE
    err = stderr_of(capsys)
    assert "unknown key 'training.sed' (did you mean 'training.seed'?)" in err
    assert "unknown key 'lora.rr' (did you mean 'lora.r'?)" in err


@pytest.mark.parametrize("door", sorted(DOORS))
def test_usage_names_the_door_the_user_typed(door):
    result = subprocess.run([sys.executable, door, "--no_such_flag"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.startswith(f"usage: {door} ")
    assert "qwentune" not in result.stderr.splitlines()[0]


# --- --help stays light ------------------------------------------------------------------------------

# Runs a door (or `qwentune STAGE`) with --help in a fresh interpreter and prints the heavy modules it imported.
HELP_PROBE = """
import contextlib, io, json, runpy, sys
door, stage = sys.argv[1], sys.argv[2]
with contextlib.redirect_stdout(io.StringIO()) as shown:
    try:
        if door == "-":
            sys.path.insert(0, "src")
            from qwentune.cli import main
            main([stage, "--help"])
        else:
            sys.argv = [door, "--help"]
            runpy.run_path(door, run_name="__main__")
    except SystemExit:
        pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy})
print(json.dumps({{"heavy": heavy, "usage": "usage:" in shown.getvalue()}}))
"""


@pytest.mark.parametrize(
    "door, stage", [*((door, stage) for door, stage in sorted(DOORS.items())), ("-", "serve"), ("-", "export")]
)
def test_help_imports_no_heavy_library(door, stage):
    probe = HELP_PROBE.format(heavy=set(HEAVY))
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-c", probe, door, stage], cwd=REPO, capture_output=True, text=True, timeout=120, env=environment
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["usage"]
    assert [m for m in seen["heavy"] if "." not in m] == []


@pytest.mark.parametrize(
    "command, key",
    [
        (["train", "--config", "config/training_config.yaml", "training.output_dir={blocked}/out"], "training.output_dir"),
        (["evaluate", "--config", "config/eval_config.yaml", "output.results_dir={blocked}/eval"], "output.results_dir"),
        (["download", "--offline", "--output_dir", "{blocked}/raw"], "--output_dir"),
    ],
)
def test_an_output_folder_that_cannot_be_made_stops_before_work(tmp_path, capsys, command, key):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert main([word.format(blocked=blocked) for word in command]) == EXIT_USAGE
    err = stderr_of(capsys)
    assert f"error: {key}: cannot create the folder {blocked}/" in err and "Traceback" not in err
