"""Config loading: every problem stops before work starts and names the key and what is allowed."""

from pathlib import Path

import pytest

from qwentune.config.base import ConfigError, load_config
from qwentune.config.evaluation import EvalConfig
from qwentune.config.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "path, schema",
    [
        ("config/training_config.yaml", TrainConfig),
        ("config/eval_config.yaml", EvalConfig),
        ("config/presets/quickstart_train.yaml", TrainConfig),
        ("config/presets/quickstart_eval.yaml", EvalConfig),
    ],
)
def test_shipped_configs_load(path, schema):
    config = load_config(schema, REPO / path)
    assert config is not None


def test_shipped_training_config_carries_the_guide_values():
    config = load_config(TrainConfig, REPO / "config/training_config.yaml")
    assert config.model.model_name_or_path.startswith("Qwen/") and "Instruct" in config.model.model_name_or_path
    assert config.training.learning_rate == 2e-5
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.mindspeed.zero_stage == 2
    assert config.gradient_accumulation_steps == 4
    assert config.training.finetuning_type == "lora"


def test_typo_suggests_the_nearest_key():
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, None, ["training.learnig_rate=1e-4"])
    message = str(caught.value)
    assert "unknown key 'training.learnig_rate'" in message
    assert "did you mean 'training.learning_rate'" in message


def test_unknown_section_lists_valid_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  model_name_or_path: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, path)
    assert "did you mean 'model'" in str(caught.value)
    assert str(path) in str(caught.value)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, None, ["lora.r=abc"])
    assert "'lora.r'" in str(caught.value) and "'abc'" in str(caught.value)


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, None, ["training.lr_scheduler_type=cosin"])
    assert "'cosine'" in str(caught.value) and "'training.lr_scheduler_type'" in str(caught.value)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["training.fp16=true", "training.bf16=true"], "fp16 and training.bf16 cannot both be true"),
        (["lora.use_lora=false", "model.quantization_bit=4"], "quantization_bit (QLoRA) needs LoRA"),
        (["data.train_on_prompt=true", "data.last_turn_only=true"], "cannot both be true"),
        (["training.gradient_accumulation_steps=2", "mindspeed.gradient_accumulation_steps=4"], "set it in one place"),
        (["training.finetuning_type=lora", "lora.use_lora=false"], "finetuning_type is 'lora'"),
    ],
)
def test_impossible_combinations_are_refused(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, None, overrides)
    assert expected in str(caught.value)


def test_dotted_overrides_parse_yaml_values():
    config = load_config(
        TrainConfig,
        None,
        ["training.learning_rate=1e-4", "lora.target_modules=[q_proj, k_proj]", "model.quantization_bit=4", "training.max_steps=7"],
    )
    assert config.training.learning_rate == 1e-4
    assert config.lora.target_modules == ["q_proj", "k_proj"]
    assert config.model.quantization_bit == 4
    assert config.training.max_steps == 7


def test_use_lora_false_means_full_finetuning():
    assert load_config(TrainConfig, None, ["lora.use_lora=false"]).training.finetuning_type == "full"


def test_eval_dataset_names_must_be_unique():
    with pytest.raises(ConfigError) as caught:
        load_config(EvalConfig, None, ["datasets=[{name: a, path: x}, {name: a, path: y}]"])
    assert "repeated: a" in str(caught.value)


def test_eval_metric_names_are_checked():
    with pytest.raises(ConfigError) as caught:
        load_config(EvalConfig, None, ["metrics=[bleu, meteor]"])
    assert "'metrics.1'" in str(caught.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, tmp_path / "nope.yaml")
    assert "config file not found" in str(caught.value)
