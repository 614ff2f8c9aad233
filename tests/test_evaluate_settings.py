"""Evaluation settings that must have an effect: the seed of sampled generation, and notices for keys
that the rest of the config leaves without effect (training's too)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_jsonl

from qwentune.config.base import load_config
from qwentune.config.evaluation import EvalConfig
from qwentune.config.training import TrainConfig
from qwentune.evaluate.runner import run_evaluation

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Say hello.", "Name a colour.", "写一句诗。", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    records = [
        {"id": str(i), "lang": "en", "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}]}
        for i, p in enumerate(PROMPTS)
    ]
    return write_jsonl(tmp_path_factory.mktemp("eval") / "test.jsonl", records)


def predictions(model: Path, samples: Path, results: Path, *overrides: str) -> list[str]:
    config = load_config(EvalConfig, None, [
        f"model.model_path={model}", "model.compare_base=false", "model.device=cpu",
        f"datasets=[{{name: t, path: '{samples}'}}]", "metrics=[bleu]", f"output.results_dir={results}",
        "output.generate_report=false", "generation.max_new_tokens=6", *overrides,
    ])  # fmt: skip
    results_of_run = run_evaluation(config)
    return [sample["predictions"]["tuned"] for sample in results_of_run["samples"]]


def test_the_seed_makes_sampled_predictions_repeatable(tiny_qwen2, samples, tmp_path, one_torch_thread):
    sampled = ("generation.do_sample=true", "generation.temperature=1.5", "generation.top_p=1.0")
    first = predictions(tiny_qwen2, samples, tmp_path / "a", *sampled, "seed=7")
    again = predictions(tiny_qwen2, samples, tmp_path / "b", *sampled, "seed=7")
    other = predictions(tiny_qwen2, samples, tmp_path / "c", *sampled, "seed=8")
    assert first == again
    assert other != first


def test_a_model_trained_again_into_its_folder_is_generated_again(tiny_qwen2, samples, tmp_path, one_torch_thread):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen2, model)
    results = tmp_path / "eval"  # one results folder for every run: its prediction cache is shared
    first = predictions(model, samples, results)
    cache = results / "cache" / "predictions-tuned.jsonl"
    assert len(cache.read_text().splitlines()) == len(PROMPTS)
    assert predictions(model, samples, results) == first  # the same model: reused, nothing generated
    assert len(cache.read_text().splitlines()) == len(PROMPTS)
    # "Trained again": other weights in the same folder under the same name.
    weights = load_file(model / "model.safetensors")
    torch.manual_seed(0)
    save_file({name: tensor + torch.randn_like(tensor) * 0.5 for name, tensor in weights.items()}, model / "model.safetensors")
    again = predictions(model, samples, results)
    assert len(cache.read_text().splitlines()) == 2 * len(PROMPTS)  # generated, not read from the cache
    assert again != first


@pytest.mark.parametrize(
    "schema, overrides, expected",
    [
        (EvalConfig, ["generation.temperature=0.3", "seed=3"], "generation.temperature, seed: no effect with generation.do_sample false"),
        (EvalConfig, ["metrics=[bleu]", "bertscore.num_layers=3"], "bertscore.num_layers: no effect, 'bertscore' is not in metrics"),
        (TrainConfig, ["lora.use_lora=false", "lora.r=4"], "lora.r: no effect with training.finetuning_type full"),
        (TrainConfig, ["training.max_steps=5", "training.num_train_epochs=2"], "training.num_train_epochs: no effect"),
        (TrainConfig, ["data.validation_file=null", "training.eval_steps=5", "training.save_steps=5"], "training.eval_steps: no effect without data.validation_file"),
        (TrainConfig, ["training.freeze_trainable_layers=3"], "training.freeze_trainable_layers: no effect with training.finetuning_type lora"),
    ],
)
def test_a_key_without_effect_is_named(schema, overrides, expected):
    assert any(line.startswith(expected) for line in load_config(schema, None, overrides).inert_settings())


@pytest.mark.parametrize(
    "path, schema",
    [
        ("config/training_config.yaml", TrainConfig),
        ("config/eval_config.yaml", EvalConfig),
        ("config/presets/quickstart_train.yaml", TrainConfig),
        ("config/presets/quickstart_eval.yaml", EvalConfig),
    ],
)
def test_shipped_configs_set_no_key_without_effect(path, schema):
    assert load_config(schema, REPO / path).inert_settings() == []
