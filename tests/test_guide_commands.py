"""Every command line in the user guide (seed_guide.zh.md) parses as written."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from qwentune.cli import parse_arguments
from qwentune.quickstart import build_parser as quickstart_parser

REPO = Path(__file__).resolve().parents[1]

# door script -> stage of `qwentune`
DOORS = {
    "data/download_data.py": "download",
    "data/preprocess.py": "preprocess",
    "scripts/train.py": "train",
    "scripts/evaluate.py": "evaluate",
    "scripts/inference.py": "infer",
}

GUIDE_COMMANDS = [
    "python data/download_data.py --datasets alpaca_gpt4_data oasst1",
    "python data/download_data.py --datasets alpaca_gpt4_data",
    "python data/download_data.py --datasets alpaca_gpt4_data oasst1 chinese_alpaca",
    "python data/download_data.py --all",
    "python data/download_data.py --list",
    "python data/preprocess.py --input_dir ./data/raw --output_dir ./data/processed",
    "python data/preprocess.py --input_dir ./data/raw --output_dir ./data/processed --tokenizer Qwen/Qwen-7B-Chat",
    "python data/preprocess.py --input_dir ./data/raw --output_dir ./data/processed --tokenizer Qwen/Qwen-7B-Chat "
    "--max_length 2048 --min_length 10 --train_ratio 0.9 --val_ratio 0.05 --test_ratio 0.05",
    "python data/preprocess.py --input_dir ./data/raw --validate_only",
    "python scripts/train.py --config config/training_config.yaml",
    "python scripts/train.py --config config/training_config.yaml --resume_from_checkpoint ./results/checkpoints/checkpoint-1000",
    "torchrun --nproc_per_node=4 scripts/train.py --config config/training_config.yaml",
    "deepspeed scripts/train.py --config config/training_config.yaml --deepspeed config/deepspeed.json",
    "python scripts/train.py --config config/training_config.yaml --debug",
    "python scripts/evaluate.py --config config/eval_config.yaml",
    "python scripts/evaluate.py --config config/eval_config.yaml --datasets alpaca_eval chinese_eval",
    "python scripts/evaluate.py --config config/eval_config.yaml --max_samples 100",
    "python scripts/inference.py --model_path ./results/checkpoints --interactive",
    "python scripts/inference.py --model_path ./results/checkpoints --interactive --max_length 512 --temperature 0.7 --top_p 0.9",
    "python scripts/inference.py --model_path ./results/checkpoints --input_file questions.txt --output_file answers.txt",
    "python scripts/inference.py --model_path ./results/checkpoints --input 请解释什么是深度学习",
    "python scripts/inference.py --model_path ./results/checkpoints --input 测试",
]

QUICKSTART_COMMANDS = [
    "python quick_start.py --status",
    "python quick_start.py --full",
    "python quick_start.py --install",
    "python quick_start.py --download",
    "python quick_start.py --preprocess",
    "python quick_start.py --train",
    "python quick_start.py --evaluate",
]


def door_arguments(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    script = next(w for w in words if w in DOORS)
    return DOORS[script], words[words.index(script) + 1 :]


@pytest.mark.parametrize("command", GUIDE_COMMANDS)
def test_guide_command_parses(command):
    stage, arguments = door_arguments(command)
    args = parse_arguments([stage, *arguments])
    assert args.stage == stage


@pytest.mark.parametrize("command", QUICKSTART_COMMANDS)
def test_quickstart_command_parses(command):
    flag = shlex.split(command)[-1].removeprefix("--")
    assert getattr(quickstart_parser().parse_args([f"--{flag}"]), flag) is True


@pytest.mark.parametrize("door", sorted(DOORS))
def test_every_door_answers_help(door):
    result = subprocess.run([sys.executable, door, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_quick_start_help():
    result = subprocess.run([sys.executable, "quick_start.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--full" in result.stdout and "--status" in result.stdout


def test_qwen_inference_imports_from_repo_root():
    code = "from scripts.inference import QwenInference; print(QwenInference.__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "QwenInference"


def test_bad_config_key_fails_before_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("training:\n  learnig_rate: 1e-4\n")
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", str(config)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "did you mean 'training.learning_rate'" in result.stderr
