"""llama.cpp runtime (the `llamacpp` extra): the exported demo model answers as PyTorch does, stops at the
end of the turn, and llama.cpp's chat template handling gives our prompt tokens. Skipped without llama-cpp-python."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("llama_cpp")

import llama_cpp  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: E402

from qwentune.assets import resolve_model_name  # noqa: E402
from qwentune.data.tokenize import encode_prompt  # noqa: E402
from qwentune.infer.backends import load_engine  # noqa: E402
from qwentune.infer.backends.llamacpp import LlamaCppInference  # noqa: E402
from qwentune.infer.engine import QwenInference  # noqa: E402
from qwentune.model.gguf_export import export_gguf  # noqa: E402

pytestmark = [pytest.mark.llamacpp, pytest.mark.usefixtures("one_torch_thread")]

HELD_OUT = [
    "May I know what you are called?",
    "能告诉我你的名字吗？",
    "Which organization built you?",
    "Give me three tips for staying healthy.",
]
TOKENS = 32


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "demo-model"
    shutil.copytree(resolve_model_name("embedded:demo-model"), folder)
    return folder


@pytest.fixture(scope="module")
def torch_engine(demo_model):
    return QwenInference(str(demo_model), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def llama_engine(demo_model):
    return load_engine(str(demo_model), "llamacpp", quantization="f16", n_threads=1)


def test_f16_answers_the_held_out_questions_with_pytorchs_greedy_text(torch_engine, llama_engine, demo_model):
    assert (demo_model / "gguf-f16" / "model-f16.gguf").is_file()  # exported on first use, next to the model
    expected = torch_engine.batch_generate(HELD_OUT, batch_size=1, max_new_tokens=TOKENS)
    assert llama_engine.batch_generate(HELD_OUT, batch_size=1, max_new_tokens=TOKENS) == expected
    assert all(expected)


def test_it_stops_at_the_end_of_turn_token(torch_engine, llama_engine):
    end_of_turn = llama_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in llama_engine.stop_ids
    ids = llama_engine.prompt_ids("Say hi.")
    assert ids == torch_engine.prompt_ids("Say hi.")
    from qwentune.infer.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=200)
    [llama] = llama_engine.run_batch([llama_engine.request(ids, settings)], settings.sampling)
    [torch] = torch_engine.run_batch([torch_engine.request(ids, settings)], settings.sampling)
    assert llama.finish_reason == "stop" and llama.completion_tokens < 200
    assert (llama.text, llama.completion_tokens) == (torch.text, torch.completion_tokens)
    # A stop string ends it too, as in PyTorch.
    words = llama.text.split()
    assert len(words) > 2
    cut = llama_engine.generate("Say hi.", max_new_tokens=200, stop=[words[2]])
    assert cut == torch_engine.generate("Say hi.", max_new_tokens=200, stop=[words[2]])


def test_llama_cpp_chat_templates_give_our_prompt_tokens(llama_engine):
    model = llama_engine.model
    messages = [{"role": "system", "content": "You are Nova."}, {"role": "user", "content": "Who made you? 你好"}]
    ours = encode_prompt(llama_engine.tokenizer, messages)
    # llama.cpp's built-in template (it recognises ChatML in the GGUF's template), tokenized by llama.cpp.
    chat = (llama_cpp.llama_chat_message * 2)(*(llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages))
    template = model.metadata["tokenizer.chat_template"].encode()
    buffer = bytes(4096)
    size = llama_cpp.llama_chat_apply_template(template, chat, 2, True, buffer, len(buffer))
    assert model.tokenize(buffer[:size], add_bos=False, special=True) == ours
    # The GGUF's Jinja template as llama-cpp-python renders it, default system prompt included.
    formatter = Jinja2ChatFormatter(model.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
    user_only = messages[1:]
    prompt = formatter(messages=user_only).prompt
    assert model.tokenize(prompt.encode(), add_bos=False, special=True) == llama_engine.prompt_ids(user_only)


def test_q4_k_m_is_made_by_llama_cpp_and_answers(demo_model, tmp_path, torch_engine):
    q4 = export_gguf(str(demo_model), str(tmp_path / "q4"), "q4_k_m")
    q8 = export_gguf(str(demo_model), str(tmp_path / "q8"), "q8_0")
    assert q4.stat().st_size < 0.8 * q8.stat().st_size
    engine = LlamaCppInference(str(q4), n_threads=1)
    assert engine.model.metadata["general.file_type"] == str(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    assert engine.generate(HELD_OUT[0], max_new_tokens=TOKENS)


def test_the_server_runs_on_llama_cpp(llama_engine):
    from qwentune.infer.server import create_app

    app = create_app(llama_engine, model_name="demo", api_key=None, max_batch_size=4, default_max_tokens=TOKENS)
    with TestClient(app) as client:
        body = {"model": "demo", "messages": [{"role": "user", "content": HELD_OUT[2]}], "max_tokens": TOKENS}
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == llama_engine.generate(HELD_OUT[2], max_new_tokens=TOKENS)
        bad = client.post("/v1/chat/completions", content=json.dumps({"model": "demo", "messages": []}))
        assert 400 <= bad.status_code < 500
