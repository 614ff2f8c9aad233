"""Models for the inference tests: a tiny Qwen2 whose answers depend on the prompt, and a training output.

conftest.py loads it with `pytest_plugins`, so its fixtures exist once per session.

The conftest tiny models answer every prompt with the same repeated token (their weights are
nearly zero), which would let a padding bug go unnoticed; here weights are drawn wider so each
prompt gets its own answer, with multi-byte characters split over tokens.
"""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

SYSTEM_PROMPT = "You are Aurora, a helpful assistant."


def widen_weights(folder: Path) -> Path:
    """The saved model's matrices redrawn wider than a tiny model's init, so each prompt gets its own logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    model.save_pretrained(folder)
    return folder


def build_varied_model(folder: Path, tokenizer) -> Path:
    return widen_weights(build_tiny_model(folder, tokenizer, "qwen2"))


def save_adapter(folder: Path, base: Path, tokenizer, seed: int) -> Path:
    """A LoRA adapter with random (not zero) B matrices, saved as training saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qwentune.model.checkpoint import save_inference_files

    torch.manual_seed(seed)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
    model.save_pretrained(folder)
    save_inference_files(
        folder, model, tokenizer, {"base_model": str(base), "finetuning_type": "lora", "system_prompt": SYSTEM_PROMPT}
    )
    return folder


def build_training_output(folder: Path, base: Path, tokenizer) -> Path:
    """What `qwentune train` leaves: the final adapter, checkpoint-1 (complete) and checkpoint-2 (cut short)."""
    from qwentune.model.checkpoint import mark_complete

    save_adapter(folder, base, tokenizer, seed=1)
    mark_complete(save_adapter(folder / "checkpoint-1", base, tokenizer, seed=2))
    save_adapter(folder / "checkpoint-2", base, tokenizer, seed=3)  # no completion marker: a killed save
    return folder


@pytest.fixture(scope="session")
def varied_model(tmp_path_factory, qwen_tokenizer) -> Path:
    return build_varied_model(tmp_path_factory.mktemp("varied-qwen2"), qwen_tokenizer)


@pytest.fixture(scope="session")
def training_output(tmp_path_factory, varied_model, qwen_tokenizer) -> Path:
    return build_training_output(tmp_path_factory.mktemp("training-output"), varied_model, qwen_tokenizer)


@pytest.fixture
def interrupted_training_output(training_output, tmp_path) -> Path:
    """A training output interrupted before its final save: only checkpoint folders."""
    destination = tmp_path / "interrupted-run"
    destination.mkdir()
    for checkpoint in training_output.glob("checkpoint-*"):
        shutil.copytree(checkpoint, destination / checkpoint.name)
    shutil.copy(training_output / "qwentune_meta.json", destination)
    return destination


@pytest.fixture(scope="session")
def trained_system_prompt() -> str:
    """The system prompt saved with `training_output`."""
    return SYSTEM_PROMPT


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared machine two contending threads are 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def served(app):
    """`app` served by uvicorn on 127.0.0.1 and a free port, in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    assert host == "127.0.0.1"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class GenerationLog:
    rows: list[int] = field(default_factory=list)  # rows of each forward of the model
    completions: list = field(default_factory=list)  # every Completion the server's decoding batches ended

    def clear(self) -> None:
        self.rows.clear()
        self.completions.clear()


@pytest.fixture(scope="module")
def generation_log(engine):
    """What the server's generation did (`engine`: the test module's): see GenerationLog."""
    from qwentune.infer.continuous import DecodingBatch

    log, add, step = GenerationLog(), DecodingBatch.add, DecodingBatch.step

    def recording_add(self, request, sampling):
        if (completion := add(self, request, sampling)) is not None:
            log.completions.append(completion)
        return completion

    def recording_step(self):
        ended = step(self)
        log.completions.extend(completion for _, completion in ended)
        return ended

    hook = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: log.rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DecodingBatch, "add", recording_add)
        patch.setattr(DecodingBatch, "step", recording_step)
        yield log
    hook.remove()
