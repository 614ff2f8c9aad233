"""Export: an adapter merged into a folder that plain transformers loads and that answers the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qwentune.cli import main
from qwentune.infer.engine import QwenInference
from qwentune.model.export import export_merged

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = "Who are you? Answer briefly."

# Run in a fresh interpreter with no qwentune on the path: only transformers reads the folder.
PLAIN_TRANSFORMERS = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
folder, question = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
messages = [{"role": "user", "content": question}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**ids, max_new_tokens=12, do_sample=False)
print(json.dumps({
    "answer": tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip(),
    "prompt": tokenizer.decode(ids["input_ids"][0]),
    "eos": model.generation_config.eos_token_id,
    "dtype": str(model.dtype),
}))
"""


@pytest.fixture(scope="module")
def exported(training_output, tmp_path_factory):
    return export_merged(str(training_output), str(tmp_path_factory.mktemp("export") / "merged"))


def test_the_merged_model_answers_like_the_adapter_without_qwentune(exported, training_output, trained_system_prompt):
    names = {p.name for p in exported.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(exported), QUESTION],
        capture_output=True, text=True, timeout=300, cwd=exported,
        env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    tuned = QwenInference(str(training_output))
    assert plain["answer"] == tuned.generate(QUESTION, max_new_tokens=12)
    assert trained_system_prompt in plain["prompt"]  # the trained system prompt is the template's default now
    assert tuned.tokenizer.convert_tokens_to_ids("<|im_end|>") in plain["eos"]
    assert plain["dtype"] == "torch.float32"  # as the base model was saved


def test_qwentune_loads_the_export_as_a_plain_model(exported, training_output, trained_system_prompt):
    engine = QwenInference(str(exported))
    assert not engine.info["adapter"] and engine.system_prompt == trained_system_prompt
    assert engine.generate(QUESTION, max_new_tokens=12) == QwenInference(str(training_output)).generate(
        QUESTION, max_new_tokens=12
    )
    # An explicit system message still wins over the template's default.
    messages = [{"role": "system", "content": "You are Nova."}, {"role": "user", "content": "hi"}]
    prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "You are Nova." in prompt and trained_system_prompt not in prompt


def test_the_export_command_refuses_a_folder_in_use(training_output, exported, capsys):
    assert main(["export", "--model_path", str(training_output), "--output_dir", str(exported)]) == 2  # a folder the user named: bad usage
    assert "is not empty" in " ".join(capsys.readouterr().err.split())
