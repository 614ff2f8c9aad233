"""GGUF export: the file loads back (transformers' GGUF reader) with the merged model's logits and tokenizer,
carries the stop tokens and chat template, and the Ollama Modelfile renders our prompt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import gguf
import pytest
import torch
from conftest import build_tiny_model
from infer_support import widen_weights
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from qwentune.cli import main
from qwentune.data.tokenize import render
from qwentune.errors import UsageError
from qwentune.model.export import export_merged
from qwentune.model.gguf_export import convert_folder, export_gguf, stop_tokens
from qwentune.model.ollama import MODELFILE, chatml_parts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "Who are you? Answer briefly.",
    "用一句话介绍一下北京。",
    "def add(a, b):\n    return a + b  # émoji 🦙 <tag>",
]
TEXTS = [*PROMPTS, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nok<|endoftext|>"]


@pytest.fixture(scope="module")
def qwen3_model(tmp_path_factory, qwen_tokenizer):
    # head_dim 128 as in every real Qwen3: transformers' GGUF reader ignores attention.key_length for qwen3
    # (its GGUF_CONFIG_MAPPING has no head_dim), so it can only read back models with its default head_dim.
    return widen_weights(build_tiny_model(tmp_path_factory.mktemp("qwen3"), qwen_tokenizer, "qwen3", head_dim=128))


@pytest.fixture(scope="module")
def sources(training_output, qwen3_model):
    """Each architecture's model path: qwen2 as a LoRA training output (merged on export), qwen3 a plain model."""
    return {"qwen2": training_output, "qwen3": qwen3_model}


@pytest.fixture(scope="module")
def exports(sources, tmp_path_factory):
    """For each architecture: the merged folder and the f16 / q8_0 GGUF files exported from the same source."""
    out = {}
    for arch, source in sources.items():
        root = tmp_path_factory.mktemp(f"gguf-{arch}")
        merged = export_merged(str(source), str(root / "merged"))
        out[arch] = {
            "merged": merged,
            "f16": export_gguf(str(source), str(root / "gguf"), "f16", ollama=True),
            "q8_0": convert_folder(merged, root / "gguf" / "model-q8_0.gguf", "q8_0"),
        }
    return out


def next_token_logits(model, tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        return model(**ids).logits[0, -1].float()


def read_gguf(path) -> tuple[dict, dict]:
    """(metadata, tensor types) of a GGUF file, read once."""
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, {t.name: t.tensor_type for t in reader.tensors}


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_f16_gguf_gives_the_merged_models_logits_and_tokens(exports, arch):
    files = exports[arch]
    merged = AutoModelForCausalLM.from_pretrained(files["merged"])
    tokenizer = AutoTokenizer.from_pretrained(files["merged"])
    loaded = AutoModelForCausalLM.from_pretrained(files["f16"].parent, gguf_file=files["f16"].name)
    for prompt in PROMPTS:
        expected = next_token_logits(merged, tokenizer, prompt)
        got = next_token_logits(loaded, tokenizer, prompt)
        assert expected.std() > 0.5  # logits that vary, not a near-constant tiny model
        # fp16 weights: measured ~0.2% of the largest logit off (relative L2 ~1.5e-3); allowed 3x that
        torch.testing.assert_close(got, expected, rtol=0, atol=5e-3 * expected.abs().max().item())
        assert got.argmax() == expected.argmax()

    from_gguf = AutoTokenizer.from_pretrained(files["f16"].parent, gguf_file=files["f16"].name)
    for text in TEXTS:
        assert from_gguf(text)["input_ids"] == tokenizer(text)["input_ids"], text


def test_q8_0_gguf_stays_close(exports):
    # One architecture: reading a GGUF with the 151k-token vocabulary costs ~10 CPU-seconds (gguf's reader).
    files = exports["qwen3"]
    merged = AutoModelForCausalLM.from_pretrained(files["merged"])
    tokenizer = AutoTokenizer.from_pretrained(files["merged"])
    loaded = AutoModelForCausalLM.from_pretrained(files["q8_0"].parent, gguf_file=files["q8_0"].name)
    assert files["q8_0"].stat().st_size < 0.8 * files["f16"].stat().st_size
    for prompt in PROMPTS:
        expected = next_token_logits(merged, tokenizer, prompt)
        got = next_token_logits(loaded, tokenizer, prompt)
        # 8-bit blocks on these wide random weights: measured relative L2 error 2-5%
        assert (got - expected).norm() / expected.norm() < 0.1
        assert got.argmax() == expected.argmax()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_gguf_metadata_stop_tokens_template_and_context(exports, arch):
    files = exports[arch]
    tokenizer = AutoTokenizer.from_pretrained(files["merged"])
    fields, types = read_gguf(files["f16"])
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay f32
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fields["general.architecture"] == arch
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields["tokenizer.ggml.eos_token_id"] == im_end and fields["tokenizer.ggml.eot_token_id"] == im_end
    assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False  # Qwen prompts start without a BOS
    assert len(fields["tokenizer.ggml.tokens"]) == json.loads((files["merged"] / "config.json").read_text())["vocab_size"]
    assert fields["tokenizer.ggml.token_type"][im_end] == gguf.TokenType.CONTROL
    assert len(fields["tokenizer.ggml.merges"]) > 100_000
    assert fields[f"{arch}.context_length"] == 2048
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    # The merged folder's template, training defaults included: the same prompt, thinking off for Qwen3.
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    if arch == "qwen3":
        assert "enable_thinking = false" in fields["tokenizer.chat_template"]


def test_merged_folder_generation_config_lists_every_stop_token(exports):
    for files in exports.values():
        tokenizer = AutoTokenizer.from_pretrained(files["merged"])
        eos = GenerationConfig.from_pretrained(files["merged"]).eos_token_id
        expected = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", tokenizer.eos_token)}
        assert expected <= set(eos)
        assert stop_tokens(files["merged"])[0] == "<|im_end|>"


def test_modelfile_has_the_template_parts_stops_and_system_prompt(exports, trained_system_prompt):
    qwen2 = (exports["qwen2"]["f16"].parent / MODELFILE).read_text()
    assert qwen2.startswith("FROM ./model-f16.gguf\n")
    assert f'SYSTEM """{trained_system_prompt}"""' in qwen2
    assert 'PARAMETER stop "<|im_end|>"' in qwen2
    qwen3 = (exports["qwen3"]["f16"].parent / MODELFILE).read_text()
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ end }}" in qwen3  # thinking off, as trained
    assert "SYSTEM" not in qwen3  # no system prompt saved with it


# Ollama's template engine is Go's text/template; run the Modelfile's TEMPLATE with it where Go is installed.
GO_RENDER = """package main
import ("encoding/json"; "os"; "text/template")
func main() {
    var data map[string]any
    json.Unmarshal([]byte(os.Args[2]), &data)
    t := template.Must(template.New("m").Parse(os.Args[1]))
    if err := t.Execute(os.Stdout, data); err != nil { panic(err) }
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")
@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_modelfile_template_renders_our_prompt_in_go(exports, arch, tmp_path):
    files = exports[arch]
    tokenizer = AutoTokenizer.from_pretrained(files["merged"])
    text = (files["f16"].parent / MODELFILE).read_text()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system, _ = chatml_parts(tokenizer)
    (tmp_path / "render.go").write_text(GO_RENDER)
    build = subprocess.run(["go", "build", "-o", str(tmp_path / "render"), str(tmp_path / "render.go")],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "GOFLAGS": "-mod=mod"})  # fmt: skip
    assert build.returncode == 0, build.stderr
    conversations = [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "You are Nova."}, {"role": "user", "content": "Hi"}],
        [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "和 2+2 呢？"},
        ],
    ]
    for messages in conversations:
        given = messages[0]["content"] if messages[0]["role"] == "system" else system
        turns = [{"Role": m["role"], "Content": m["content"]} for m in messages if m["role"] != "system"]
        data = {"System": given or "", "Messages": turns}  # Ollama's api.Message fields
        result = subprocess.run(
            [str(tmp_path / "render"), template, json.dumps(data)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == render(tokenizer, messages, add_generation_prompt=True)


def test_unknown_or_uninstalled_quantizations_and_architectures_fail_clearly(tmp_path, varied_model):
    with pytest.raises(UsageError, match="q4_k_m"):
        export_gguf(str(varied_model), str(tmp_path / "a"), "q4_km")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="llama-cpp-python") as info:
            export_gguf(str(varied_model), str(tmp_path / "b"), "q4_k_m")
        assert "pip install" in info.value.advice
    assert not (tmp_path / "b").exists()  # refused before any work
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UsageError, match="Qwen2ForCausalLM"):
        convert_folder(folder, tmp_path / "x.gguf", "f16")


def test_export_command_writes_gguf_and_prints_the_ollama_commands(varied_model, tmp_path, capsys):
    out = tmp_path / "my-model"
    assert main(["export", "--model_path", str(varied_model), "--output_dir", str(out), "--format", "gguf",
                 "--quantization", "q8_0", "--ollama"]) == 0  # fmt: skip
    printed = "".join(capsys.readouterr().out.split())  # rich wraps long lines anywhere
    assert sorted(p.name for p in out.iterdir()) == [MODELFILE, "model-q8_0.gguf"]
    assert f"ollamacreatemy-model-f{out / MODELFILE}" in printed and "ollamarunmy-model" in printed
    # A second export into the same file is refused; --ollama needs --format gguf.
    assert main(["export", "--model_path", str(varied_model), "--output_dir", str(out), "--format", "gguf",
                 "--quantization", "q8_0"]) == 2  # fmt: skip
    assert main(["export", "--model_path", str(varied_model), "--output_dir", str(tmp_path / "o"), "--ollama"]) == 2
    assert "--format gguf" in capsys.readouterr().err
