"""The training recipe end to end on tiny Qwen models: methods, outputs, logs, stop tokens, debug mode."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, write_jsonl
from safetensors.torch import load_file

from qwentune.config.base import load_config
from qwentune.config.training import TrainConfig
from qwentune.train.recipe import run_training

WORDS = "the a cat dog river mountain answer question code light sound blue green quickly slowly".split()


def conversation(rng: random.Random, index: int) -> dict:
    question = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
    answer = " ".join(rng.choices(WORDS, k=rng.randint(2, 16)))
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": f"t{index}", "source": "test", "lang": "en", "messages": messages, "meta": {}}


def write_data(folder: Path, train: int = 16, validation: int = 4, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    records = [conversation(rng, i) for i in range(train + validation)]
    return write_jsonl(folder / "train.jsonl", records[:train]), write_jsonl(folder / "validation.jsonl", records[train:])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return write_data(tmp_path_factory.mktemp("train-data"))


def make_config(root: Path, model: Path, data: tuple[Path, Path], *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [
            f"model.model_name_or_path={model}",
            f"data.train_file={data[0]}",
            f"data.validation_file={data[1]}",
            "data.max_seq_length=128",
            f"training.output_dir={root / 'out'}",
            f"training.logging_dir={root / 'logs'}",
            "training.per_device_train_batch_size=4",
            "training.learning_rate=1e-3",
            "training.max_steps=4",
            "training.save_steps=2",
            "training.eval_steps=2",
            "training.logging_steps=1",
            "mindspeed.zero_stage=0",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_qwen2, data):
    root = tmp_path_factory.mktemp("lora-run")
    summary = run_training(make_config(root, tiny_qwen2, data, "lora.target_modules=all-linear", "training.save_total_limit=1"))
    return root, summary


def test_lora_output_holds_what_inference_needs(lora_run, qwen_tokenizer):
    out = lora_run[0] / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja", "loss_curve.png"):
        assert (out / name).is_file(), name
    generation = json.loads((out / "generation_config.json").read_text())
    assert qwen_tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    meta = json.loads((out / "qwentune_meta.json").read_text())
    assert meta["finetuning_type"] == "lora" and meta["base_model"].endswith("tiny-qwen20")
    assert meta["train_summary"]["global_step"] == 4


def test_saved_tokenizer_prompts_inference_as_training_rendered(lora_run, data, qwen_tokenizer):
    """Inference builds its prompt with the saved tokenizer (Qwen3 template, thinking off); it must be the trained prefix."""
    from qwentune.data.tokenize import encode_conversation, encode_prompt, load_tokenizer

    saved = load_tokenizer(str(lora_run[0] / "out"))
    messages = json.loads(data[0].read_text().splitlines()[0])["messages"]
    trained = encode_conversation(qwen_tokenizer, messages)
    prompt = encode_prompt(saved, messages[:-1])
    assert trained.input_ids[: len(prompt)] == prompt
    assert all(label == -100 for label in trained.labels[: len(prompt)])


def test_checkpoints_are_complete_and_capped(lora_run):
    out = lora_run[0] / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]  # save_total_limit: 1
    checkpoint = out / "checkpoint-4"
    for name in ("qwentune_complete", "adapter_model.safetensors", "optimizer.pt", "trainer_state.json", "generation_config.json"):
        assert (checkpoint / name).is_file(), name


def test_logs_carry_loss_lr_grad_norm_tokens_per_second_and_eval_loss(lora_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = lora_run[0] / "logs"
    text = (logs / "training.log").read_text()
    assert "plan lora" in text and '"eval_loss"' in text and '"tokens_per_second"' in text
    events = EventAccumulator(str(logs))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second", "eval/loss"} <= tags


def test_summary_counts_only_real_tokens(lora_run, data, qwen_tokenizer):
    summary = lora_run[1]
    assert 0 < summary["train_tokens"] < 16 * 128  # 4 steps x 4 examples, no padding counted
    assert summary["tokens_per_second"] > 0


def test_base_model_fine_tuned_on_chat_data_stops_at_end_of_turn(tmp_path, qwen_tokenizer, data):
    """A base model's own EOS is <|endoftext|>; after chat fine-tuning <|im_end|> must stop generation too."""
    base = build_tiny_model(tmp_path / "base", qwen_tokenizer)
    endoftext = qwen_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for name in ("config.json", "generation_config.json"):
        config = json.loads((base / name).read_text())
        config["eos_token_id"] = endoftext
        (base / name).write_text(json.dumps(config))
    run_training(make_config(tmp_path, base, data, "training.max_steps=1", "data.validation_file=null"))
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert {endoftext, qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")} <= set(generation["eos_token_id"])


def layer_weights(folder: Path, layer: int) -> dict[str, torch.Tensor]:
    weights = load_file(folder / "model.safetensors")
    return {k: v for k, v in weights.items() if f"layers.{layer}." in k}


def test_freeze_tuning_trains_only_the_last_layers(tmp_path, tiny_qwen3, data):
    run_training(
        make_config(
            tmp_path, tiny_qwen3, data, "lora.use_lora=false", "training.finetuning_type=freeze",
            "training.freeze_trainable_layers=1", "training.max_steps=2", "data.validation_file=null",
        )
    )
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists()
    for layer, changed in ((0, False), (1, True)):
        before, after = layer_weights(tiny_qwen3, layer), layer_weights(out, layer)
        differs = any(not torch.equal(before[k], after[k]) for k in before)
        assert differs == changed, f"layer {layer}"


def test_full_fine_tuning_with_gradient_checkpointing(tmp_path, tiny_qwen3, data):
    summary = run_training(
        make_config(
            tmp_path, tiny_qwen3, data, "lora.use_lora=false", "optimization.gradient_checkpointing=true",
            "training.max_steps=2", "data.validation_file=null",
        )
    )
    assert summary["train_loss"] == pytest.approx(summary["train_loss"])  # finite
    assert layer_weights(tmp_path / "out", 0)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["use_cache"] is True


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_on_cpu(tmp_path, tiny_qwen2, data, bits):
    pytest.importorskip("bitsandbytes")
    summary = run_training(
        make_config(tmp_path, tiny_qwen2, data, f"model.quantization_bit={bits}", "training.max_steps=2", "data.validation_file=null")
    )
    assert summary["global_step"] == 2 and summary["train_loss"] > 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("batching", ["grouped", "padding", "max_length"])
def test_other_batching_modes_train(tmp_path, tiny_qwen2, data, batching):
    summary = run_training(
        make_config(tmp_path, tiny_qwen2, data, f"data.batching={batching}", "training.max_steps=1", "data.validation_file=null")
    )
    assert summary["global_step"] == 1


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_qwen2, data):
    """A learning rate far too high makes validation loss rise; training stops and the best checkpoint is the final model."""
    summary = run_training(
        make_config(
            tmp_path, tiny_qwen2, data, "training.learning_rate=3.0", "training.max_steps=12", "training.eval_steps=1",
            "training.save_steps=1", "training.early_stopping_patience=1", "lora.target_modules=all-linear",
        )
    )
    history = json.loads((tmp_path / "out" / "loss_history.json").read_text())
    evals = [(p["step"], p["eval_loss"]) for p in history if p["eval_loss"] is not None]
    best_step = min(evals, key=lambda p: p[1])[0]
    assert summary["global_step"] < 12
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert Path(summary["best_checkpoint"]).is_dir()


def test_debug_run_checks_labels_and_writes_aside(tmp_path, tiny_qwen2, data, capsys):
    run_training(make_config(tmp_path, tiny_qwen2, data, "training.max_steps=50"), debug=True)
    printed = capsys.readouterr().out
    assert "trained tokens per example" in printed and "labels checked: 0 problem(s)" in printed
    assert "examples packed in one row" in printed
    meta = json.loads((tmp_path / "out" / "debug" / "qwentune_meta.json").read_text())
    assert meta["train_summary"]["global_step"] == 4
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_a_run_that_cannot_fit_stops_before_loading_with_advice(tmp_path, tiny_qwen2, data, monkeypatch, capsys):
    from qwentune.cli import main
    from qwentune.model import device

    monkeypatch.setattr(device, "available_memory", lambda name: 1024**2)
    code = main(["train", "--config", str(write_yaml(tmp_path)), *config_overrides(tmp_path, tiny_qwen2, data)])
    assert code == 2
    message = capsys.readouterr().err
    assert "free" in message and "optimization.check_memory=false" in message
    assert not (tmp_path / "out").exists()


def write_yaml(folder: Path) -> Path:
    path = folder / "empty.yaml"
    path.write_text("{}\n")
    return path


def config_overrides(root: Path, model: Path, data: tuple[Path, Path]) -> list[str]:
    return [
        f"model.model_name_or_path={model}", f"data.train_file={data[0]}", f"training.output_dir={root / 'out'}",
        f"training.logging_dir={root / 'logs'}", "mindspeed.zero_stage=0",
    ]
