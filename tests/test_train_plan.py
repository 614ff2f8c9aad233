"""Before training: the plan (parameters, memory, steps), precision fallbacks, DeepSpeed and platform choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwentune.config.base import ConfigError, load_config
from qwentune.config.training import TrainConfig
from qwentune.model.device import Precision, training_precision
from qwentune.model.logits import logits_selection
from qwentune.train.distributed import prepare_platform, resolve_deepspeed, zero_config
from qwentune.train.plan import (
    GIB,
    BatchShape,
    DoesNotFitError,
    ModelShape,
    check_fits,
    count_steps,
    estimate_memory,
    model_shape,
    with_overrides,
)

REPO = Path(__file__).resolve().parents[1]
# Roughly Qwen2.5-7B.
SEVEN_B = ModelShape(
    total=7_615_616_512, trainable=7_615_616_512, quantizable=6_525_353_984, hidden=3584, intermediate=18944,
    layers=28, vocab=152064, supports_packing=True, logits_selection="mask",
)
FP32, BF16 = Precision(torch.float32), Precision(torch.bfloat16)
BATCH = BatchShape(tokens=4 * 2048, logit_tokens=4 * 1024)


def config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, ["mindspeed.zero_stage=0", *overrides])


def lora_shape(trainable: int = 20_185_088) -> ModelShape:
    return ModelShape(**{**SEVEN_B.__dict__, "trainable": trainable})


def test_lora_needs_far_less_than_full_fine_tuning():
    full = estimate_memory(SEVEN_B, config("lora.use_lora=false"), BF16, BATCH)
    lora = estimate_memory(lora_shape(), config(), BF16, BATCH)
    assert full.weights == lora.weights == SEVEN_B.total * 2
    assert full.optimizer == SEVEN_B.total * 2 * 2  # AdamW's two states, in bf16
    assert lora.optimizer == 20_185_088 * 2 * 4  # adapters train in fp32
    assert lora.gradients < full.gradients / 100 and lora.activations == full.activations


def test_gradient_checkpointing_and_qlora_shrink_what_they_should():
    plain = estimate_memory(lora_shape(), config(), BF16, BATCH)
    checkpointed = estimate_memory(lora_shape(), config("optimization.gradient_checkpointing=true"), BF16, BATCH)
    quantized = estimate_memory(lora_shape(), config("model.quantization_bit=4"), BF16, BATCH)
    assert checkpointed.activations < plain.activations / 3
    assert checkpointed.weights == plain.weights
    # 4-bit decoder weights; peft's k-bit preparation keeps embeddings and LM head in fp32.
    assert quantized.weights == int(SEVEN_B.quantizable * 0.5 * 1.03 + (SEVEN_B.total - SEVEN_B.quantizable) * 4)
    assert quantized.weights < 0.55 * plain.weights


def test_zero3_splits_weights_gradients_and_optimizer_across_processes():
    one = estimate_memory(SEVEN_B, config("lora.use_lora=false"), BF16, BATCH)
    four = estimate_memory(SEVEN_B, config("lora.use_lora=false"), BF16, BATCH, world_size=4, zero_stage=3)
    assert (four.weights, four.gradients, four.optimizer) == (one.weights // 4, one.gradients // 4, one.optimizer // 4)
    assert four.activations == one.activations


def test_a_run_that_does_not_fit_names_settings_that_would():
    full = config("lora.use_lora=false", "training.per_device_train_batch_size=4")

    def estimate(variant: TrainConfig):
        shape = SEVEN_B if variant.training.finetuning_type == "full" else lora_shape()
        return estimate_memory(shape, variant, BF16, BATCH if variant.training.per_device_train_batch_size == 4 else BatchShape(2048, 1024))

    needed = estimate(full)
    with pytest.raises(DoesNotFitError) as caught:
        check_fits(needed, 40 * GIB, "cuda:0", full, estimate)
    message = str(caught.value)
    assert "cuda:0 has 40.00 GiB free" in message
    assert "training.finetuning_type=lora lora.use_lora=true" in message
    assert "optimization.check_memory=false" in message
    check_fits(needed, needed.total, "cuda:0", full, estimate)  # enough: no error


def test_suggested_overrides_are_valid_config():
    variant = with_overrides(config("mindspeed.gradient_accumulation_steps=4"), ["training.per_device_train_batch_size=1", "mindspeed.gradient_accumulation_steps=16"])
    assert variant.gradient_accumulation_steps == 16


def test_model_shape_counts_what_peft_trains(tiny_qwen2):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = model_shape(config(f"model.model_name_or_path={tiny_qwen2}", "lora.target_modules=all-linear"))
    real = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2), LoraConfig(r=8, target_modules="all-linear"))
    assert shape.trainable == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert shape.total == sum(p.numel() for p in real.parameters())
    assert shape.supports_packing and shape.logits_selection == logits_selection(type(real.get_base_model())) and shape.layers == 2


def test_lora_switches_reach_peft(tiny_qwen2):
    from qwentune.train.plan import meta_model

    model = meta_model(config(f"model.model_name_or_path={tiny_qwen2}", "lora.use_rslora=true", "lora.use_dora=true", "lora.r=4"))
    peft_config = model.peft_config["default"]
    assert (peft_config.use_rslora, peft_config.use_dora, peft_config.r) == (True, True, 4)
    assert peft_config.target_modules == {"q_proj", "v_proj"}


def test_steps_follow_batch_accumulation_processes_and_epochs():
    run = config("training.per_device_train_batch_size=4", "training.gradient_accumulation_steps=2", "training.num_train_epochs=3")
    assert count_steps(100, run, world_size=1) == 3 * (25 // 2)
    assert count_steps(100, run, world_size=2) == 3 * (13 // 2)
    assert count_steps(100, with_overrides(run, ["training.max_steps=7"]), world_size=1) == 7


@pytest.mark.parametrize(
    "device, dtype, fp16, bf16, expected",
    [
        ("cpu", "bfloat16", False, False, Precision(torch.float32)),
        ("cpu", "auto", False, True, Precision(torch.float32)),
        ("cpu", "float32", True, False, Precision(torch.float32)),
        ("cuda", "float16", False, False, Precision(torch.float16, fp16=True)),
        ("npu", "bfloat16", False, True, Precision(torch.bfloat16, bf16=True)),
    ],
)
def test_precision_falls_back_where_the_device_lacks_it(device, dtype, fp16, bf16, expected):
    chosen = training_precision(dtype, fp16, bf16, device)
    assert (chosen.dtype, chosen.fp16, chosen.bf16) == (expected.dtype, expected.fp16, expected.bf16)
    changed = (dtype not in ("auto", "float32") and chosen.dtype == torch.float32) or (fp16 and not chosen.fp16) or (bf16 and not chosen.bf16)
    assert bool(chosen.notes) == changed


def test_bf16_falls_back_to_fp16_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    chosen = training_precision("bfloat16", False, True, "cuda")
    assert (chosen.dtype, chosen.fp16, chosen.bf16) == (torch.float16, True, False)


@pytest.mark.parametrize("path, stage", [("config/deepspeed/zero2.json", 2), ("config/deepspeed/zero3.json", 3), ("config/deepspeed.json", 2)])
def test_shipped_deepspeed_configs_are_the_ones_the_code_builds(path, stage):
    assert json.loads((REPO / path).read_text()) == zero_config(stage)


def test_zero_stage_applies_only_to_multi_process_runs(monkeypatch):
    run = config("mindspeed.zero_stage=2")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_deepspeed(None, run) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    pytest.importorskip("deepspeed")
    assert resolve_deepspeed(None, run) == zero_config(2)
    assert resolve_deepspeed(str(REPO / "config/deepspeed/zero3.json"), config()) == str(REPO / "config/deepspeed/zero3.json")


def test_missing_deepspeed_file_is_a_clear_error():
    pytest.importorskip("deepspeed")
    with pytest.raises(ConfigError, match="zero2.json"):
        resolve_deepspeed("config/nope.json", config())


def test_mindspeed_off_ascend_says_what_runs_instead(capsys):
    prepare_platform(config("mindspeed.use_mindspeed=true"), "cpu")
    printed = " ".join(capsys.readouterr().out.split())
    assert "no Ascend NPU is available: training with PyTorch on cpu" in printed


def test_best_checkpoint_needs_saves_at_evaluation_steps():
    with pytest.raises(ConfigError, match="multiple of training.eval_steps"):
        config("training.early_stopping_patience=2", "training.save_steps=50", "training.eval_steps=20")
    with pytest.raises(ConfigError, match="'packed'"):
        config("data.batching=packing")
