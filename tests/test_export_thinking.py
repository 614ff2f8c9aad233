"""An exported model keeps the thinking behaviour it was trained with, for plain transformers too."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from qwentune.infer.engine import QwenInference
from qwentune.model.checkpoint import META_FILE, thinking_default
from qwentune.model.export import export_merged

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = [{"role": "user", "content": "What is 23 × 17?"}]
NON_THINKING = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def trained_with(training_output, folder, thinking: str):
    """A copy of the training output whose metadata says it trained with `data.thinking: <thinking>`."""
    shutil.copytree(training_output, folder)
    meta_file = folder / META_FILE
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta["config"] = {"data": {"thinking": thinking}}
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "meta, thinks",
    [
        ({}, False),  # no metadata (a base model): Qwen3's non-thinking form, as training renders data without reasoning
        ({"config": {"data": {"thinking": "off"}}}, False),
        ({"config": {"data": {"thinking": "auto"}}}, False),  # mixed data: the switch works both ways; off unless asked
        ({"config": {"data": {"thinking": "on"}}}, True),
        ({"config": {"data": {"thinking": "off"}}, "enable_thinking": True}, True),  # an export's own record wins
    ],
)
def test_the_thinking_default_follows_the_training_metadata(meta, thinks):
    assert thinking_default(meta) is thinks


@pytest.mark.parametrize("thinking, thinks", [("on", True), ("off", False)])
def test_the_exported_template_defaults_to_the_training_thinking_mode(training_output, tmp_path, thinking, thinks):
    source = trained_with(training_output, tmp_path / "run", thinking)
    exported = export_merged(str(source), str(tmp_path / "merged"))

    # Plain transformers, no qwentune and no enable_thinking argument: the trained behaviour.
    plain = AutoTokenizer.from_pretrained(exported)
    prompt = plain.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(NON_THINKING) is not thinks
    assert prompt.endswith("<|im_start|>assistant\n") is thinks
    # A caller can still switch it either way.
    for asked in (True, False):
        switched = plain.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=asked)
        assert switched.endswith(NON_THINKING) is not asked

    # qwentune, loading the export, keeps the same default and renders the same prompt.
    engine = QwenInference(str(exported))
    assert engine.enable_thinking is thinks
    assert engine.tokenizer.decode(engine.prompt_ids(QUESTION)) == prompt
