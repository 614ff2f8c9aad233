"""Qwen3-MoE and hybrid Qwen3.5 end to end through the guide's doors: train -> inference -> export -> plain transformers.

Recipe-level, like tests/test_end_to_end.py: each door runs as a user runs it (a subprocess), on
a tiny model built from the architecture's config with the real Qwen tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_train_recipe import write_data

# Only transformers reads the exported folder: no qwentune on the path.
PLAIN_TRANSFORMERS = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
ids = tokenizer.apply_chat_template([{"role": "user", "content": "the cat"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**ids, max_new_tokens=6, do_sample=False)
print(json.dumps({"class": type(model).__name__, "model_type": model.config.model_type, "new_tokens": output.shape[1] - ids["input_ids"].shape[1]}))
"""


def door(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert result.returncode == 0, f"{args[0]} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# The MoE run also adapts the fused experts (peft's parameter LoRA, which takes no dropout).
EXPERTS = ["lora.target_parameters=[mlp.experts.gate_up_proj,mlp.experts.down_proj]", "lora.lora_dropout=0"]


@pytest.mark.slow
@pytest.mark.parametrize(("architecture", "overrides"), [("qwen3_5", []), ("qwen3_moe", EXPERTS)], ids=["qwen3_5", "qwen3_moe"])
def test_lora_run_infers_exports_and_loads_in_plain_transformers(tmp_path, tiny_new_model, architecture, overrides):
    model = tiny_new_model(architecture)
    train_file, validation_file = write_data(tmp_path / "data", train=12, validation=2)
    out = tmp_path / "out"
    config = tmp_path / "train.yaml"
    config.write_text(f"model:\n  model_name_or_path: {model}\n", encoding="utf-8")
    result = door(
        str(REPO / "scripts" / "train.py"),
        "--config",
        str(config),
        f"data.train_file={train_file}",
        f"data.validation_file={validation_file}",
        "data.max_seq_length=128",
        f"training.output_dir={out}",
        f"training.logging_dir={tmp_path / 'logs'}",
        "training.per_device_train_batch_size=4",
        "training.learning_rate=1e-3",
        "training.max_steps=3",
        "training.save_steps=3",
        "training.logging_steps=1",
        "mindspeed.zero_stage=0",
        "lora.target_modules=all-linear",
        *overrides,
        cwd=tmp_path,
    )
    assert "data.batching grouped" not in result.stdout  # packed: exact for these models
    meta = json.loads((out / "qwentune_meta.json").read_text())
    assert meta["train_summary"]["global_step"] == 3
    steps = [json.loads(line[line.index("{") :]) for line in (tmp_path / "logs" / "training.log").read_text().splitlines() if " INFO step " in line]
    # An MoE's load-balancing loss is logged beside the loss it is part of.
    steps = [step for step in steps if "loss" in step]
    assert len(steps) == 3 and all(("router_aux_loss" in step) == (architecture == "qwen3_moe") for step in steps)
    if overrides:
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert set(adapter["target_parameters"]) == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    # A random tiny model's words are noise: the door must load the adapter on its base and answer (exit 0).
    door(str(REPO / "scripts" / "inference.py"), "--model_path", str(out), "--input", "the cat", "--max_length", "6", cwd=tmp_path)
    merged = tmp_path / "merged"
    door("-m", "qwentune.cli", "export", "--model_path", str(out), "--output_dir", str(merged), cwd=tmp_path)
    loaded = json.loads(door("-c", PLAIN_TRANSFORMERS, str(merged), cwd=merged).stdout.strip().splitlines()[-1])
    assert loaded["model_type"] == json.loads((Path(model) / "config.json").read_text())["model_type"]
    assert loaded["new_tokens"] >= 1


@pytest.mark.slow
def test_a_hybrid_run_killed_and_resumed_ends_like_an_uninterrupted_one(tmp_path, tiny_new_model):
    """As tests/test_train_resume.py proves for Qwen2, on Qwen3.5 (packed, isolated linear attention)."""
    from safetensors.torch import load_file
    from test_train_resume import kill_after_first_checkpoint, losses, run, write_config

    model = tiny_new_model("qwen3_5")
    data = write_data(tmp_path / "data", train=24, validation=0)
    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    whole, cut = write_config(tmp_path / "whole", model, data), write_config(tmp_path / "cut", model, data)
    run(whole)
    output_dir = kill_after_first_checkpoint(cut)
    run(cut, "--resume_from_checkpoint", "latest")
    assert losses(output_dir) == losses(whole.parent / "out")
    expected, resumed = load_file(whole.parent / "out" / "adapter_model.safetensors"), load_file(output_dir / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys() and all((expected[k] == resumed[k]).all() for k in expected)


@pytest.fixture(scope="module")
def tiny_qwen3_5_multimodal(tmp_path_factory, qwen_tokenizer) -> Path:
    """A tiny Qwen3.5 checkpoint as released: `Qwen3_5ForConditionalGeneration`, vision tower included."""
    import torch
    from conftest import NEW_ARCHITECTURES
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    text = dict(
        vocab_size=len(qwen_tokenizer), hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, tie_word_embeddings=True, eos_token_id=qwen_tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=qwen_tokenizer.pad_token_id, **NEW_ARCHITECTURES["qwen3_5"][1],
    )  # fmt: skip
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    torch.manual_seed(0)
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=True))
    folder = tmp_path_factory.mktemp("tiny-qwen3_5-multimodal")
    model.save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_multimodal_checkpoint_trains_on_text_and_exports_as_its_own_class(tmp_path, tiny_qwen3_5_multimodal):
    import torch
    from safetensors.torch import load_file
    from test_train_recipe import make_config
    from transformers import AutoModelForImageTextToText

    from qwentune.model.export import export_merged
    from qwentune.model.loader import load_for_inference
    from qwentune.train.recipe import run_training

    data = write_data(tmp_path / "data", train=8, validation=0)
    run_training(make_config(tmp_path, tiny_qwen3_5_multimodal, (data[0], None), "lora.target_modules=all-linear", "training.max_steps=2"))
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert adapter and not [name for name in adapter if "visual" in name]  # LoRA on the language model only
    tuned, tokenizer, _ = load_for_inference(str(tmp_path / "out"), dtype="saved")
    merged = export_merged(str(tmp_path / "out"), str(tmp_path / "merged"))
    exported = AutoModelForImageTextToText.from_pretrained(merged).eval()
    original = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_5_multimodal)
    assert type(exported).__name__ == type(original).__name__ == "Qwen3_5ForConditionalGeneration"
    vision = {n: p for n, p in original.named_parameters() if ".visual." in f".{n}"}
    assert vision and all(torch.equal(p, dict(exported.named_parameters())[n]) for n, p in vision.items())
    ids = torch.tensor([tokenizer.encode("the cat and the dog")])
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, tuned(input_ids=ids).logits, atol=1e-4, rtol=0)
