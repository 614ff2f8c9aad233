"""Loading for inference from every kind of model location, with what training saved."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from qwentune.infer.engine import QwenInference
from qwentune.model.checkpoint import NoModelError, resolve_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def answer(path, **kwargs) -> str:
    return QwenInference(str(path), **kwargs).generate("Who are you?", max_new_tokens=8)


@pytest.fixture(scope="module")
def tuned(training_output):
    return QwenInference(str(training_output))


def test_a_training_output_loads_its_final_adapter_with_what_training_saved(
    tuned, training_output, varied_model, trained_system_prompt
):
    info = tuned.info
    assert info["model_path"] == str(training_output) and info["adapter"]
    assert info["base_model"] == str(varied_model)
    assert info["device"] == "cpu" and info["dtype"] == "float32"  # automatic choices on this machine
    assert tuned.system_prompt == trained_system_prompt
    assert trained_system_prompt in tuned.tokenizer.decode(tuned.prompt_ids("hi"))
    assert tuned.tokenizer.convert_tokens_to_ids("<|im_end|>") in tuned.stop_ids
    # The adapter changes the answers of its base model.
    assert tuned.generate("Who are you?", max_new_tokens=8) != answer(varied_model, system_prompt=trained_system_prompt)


def test_an_interrupted_training_output_loads_its_latest_complete_checkpoint(
    training_output, interrupted_training_output, trained_system_prompt
):
    interrupted = interrupted_training_output
    assert resolve_model_dir(interrupted) == interrupted / "checkpoint-1"  # checkpoint-2 never completed
    engine = QwenInference(str(interrupted))
    assert engine.info["model_path"] == str(interrupted / "checkpoint-1")
    assert engine.system_prompt == trained_system_prompt
    assert engine.generate("Who are you?", max_new_tokens=8) == answer(training_output / "checkpoint-1")


def test_an_adapter_folder_alone_names_its_base_model_which_can_be_overridden(
    training_output, tmp_path, tiny_qwen2, tuned, trained_system_prompt
):
    bare = tmp_path / "adapter"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):  # no tokenizer, no qwentune metadata
        shutil.copy(training_output / name, bare)
    engine = QwenInference(str(bare), system_prompt=trained_system_prompt)
    assert engine.info["base_model"] == tuned.info["base_model"]
    assert engine.generate("Who are you?", max_new_tokens=8) == tuned.generate("Who are you?", max_new_tokens=8)
    other = QwenInference(str(bare), base_model=str(tiny_qwen2))
    assert other.info["base_model"] == str(tiny_qwen2)


def test_a_system_prompt_given_at_load_replaces_the_saved_one(training_output):
    engine = QwenInference(str(training_output), system_prompt="You are Nova.")
    assert "You are Nova." in engine.tokenizer.decode(engine.prompt_ids("hi"))


@pytest.mark.parametrize("kind", ["empty folder", "incomplete checkpoints only", "missing folder", "a file"])
def test_a_place_without_a_model_is_a_clear_error(kind, tmp_path, training_output):
    if kind == "empty folder":
        path, expected = tmp_path, "holds no model"
    elif kind == "incomplete checkpoints only":
        shutil.copytree(
            training_output / "checkpoint-2", tmp_path / "checkpoint-2", ignore=shutil.ignore_patterns("*.safetensors")
        )
        shutil.copy(training_output / "checkpoint-2" / "adapter_model.safetensors", tmp_path / "checkpoint-2")
        path, expected = tmp_path, "no complete checkpoint"
    elif kind == "missing folder":
        path, expected = "./no/such/folder", "does not exist"
    else:
        path, expected = training_output / "adapter_config.json", "is a file"
    with pytest.raises(NoModelError, match=expected):
        QwenInference(str(path))


def test_an_unreachable_hub_id_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempt (and no wait)
    with pytest.raises(OSError, match="HF_ENDPOINT"):
        QwenInference("no-such-org/no-such-model")


def test_the_embedded_demo_model_answers():
    from qwentune.assets import asset_status

    if not next(a for a in asset_status() if a["name"] == "demo-model")["ready"]:
        pytest.skip("the embedded demo model is not in the cache (fetching it needs PyPI)")
    engine = QwenInference("embedded:demo-model")
    assert engine.info["base_model"] == "embedded:demo-model"
    assert engine.generate("What is 2 + 2?", max_new_tokens=6)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_loading(bits, varied_model):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    engine = QwenInference(str(varied_model), quantization_bit=bits)
    layer = engine.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == {4: "Linear4bit", 8: "Linear8bitLt"}[bits]
    assert isinstance(engine.generate("hi", max_new_tokens=3), str)
