"""Backend choice: torch by default, llamacpp where llama-cpp-python is installed, clear errors otherwise."""

from __future__ import annotations

import importlib.util

import pytest

from qwentune.cli import main
from qwentune.config.base import ConfigError, load_config
from qwentune.config.evaluation import EvalConfig
from qwentune.errors import UsageError
from qwentune.infer.backends import load_engine

LLAMA_CPP_MISSING = importlib.util.find_spec("llama_cpp") is None


def test_an_unknown_backend_names_the_choices(varied_model):
    with pytest.raises(UsageError, match="torch, llamacpp"):
        load_engine(str(varied_model), "vllm")


@pytest.mark.skipif(not LLAMA_CPP_MISSING, reason="llama-cpp-python is installed")
def test_llamacpp_without_the_extra_says_how_to_install_it(varied_model, capsys):
    code = main(["infer", "--model_path", str(varied_model), "--backend", "llamacpp", "--input", "hi"])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "llama-cpp-python" in err and "pip install 'qwentune[llamacpp]'" in err


def test_llamacpp_refuses_torch_only_options(varied_model, capsys):
    code = main(["infer", "--model_path", str(varied_model), "--backend", "llamacpp", "--load_in_bits", "4", "--input", "hi"])
    assert code == 2
    assert "--gguf_quantization" in " ".join(capsys.readouterr().err.split())


def test_eval_config_backend_keys_are_checked(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("model:\n  backend: llamacpp\n  gguf_quantization: q8_0\n")
    config = load_config(EvalConfig, str(path), [])
    assert (config.model.backend, config.model.gguf_quantization) == ("llamacpp", "q8_0")
    with pytest.raises(ConfigError, match="torch_dtype"):
        load_config(EvalConfig, str(path), ["model.torch_dtype=float32"])
    with pytest.raises(ConfigError, match="llamacpp"):
        load_config(EvalConfig, str(path), ["model.backend=torch"])
    with pytest.raises(ConfigError, match="backend"):
        load_config(EvalConfig, str(path), ["model.backend=onnx"])
