"""QwenInference: batched = one at a time, streaming = whole answers, settings per call, stops."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
from conftest import REPO
from pydantic import ValidationError

from qwentune.infer.engine import PromptTooLongError, QwenInference
from qwentune.infer.settings import GenerationSettings, Sampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "hi",
    "What is the capital of France? Answer in one short sentence, please.",
    "1+1=?",
    "请用三句话介绍一下你自己，以及你能做什么。",
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c d e f g"}],
]


@pytest.fixture(scope="module")
def engine(varied_model):
    return QwenInference(str(varied_model), device="cpu", dtype="float32")


def test_batched_greedy_answers_equal_one_at_a_time(engine):
    lengths = {len(engine.prompt_ids(p)) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # different lengths: the batch really is left-padded
    alone = [engine.generate(p, max_new_tokens=12) for p in PROMPTS]
    batched = engine.batch_generate(PROMPTS, batch_size=len(PROMPTS), max_new_tokens=12)
    assert batched == alone
    assert len(set(alone)) == len(alone) and all(alone)  # each prompt got its own answer


def test_stream_pieces_join_to_the_decoded_answer(engine):
    prompt_ids = torch.tensor([engine.prompt_ids(PROMPTS[3])])
    generated = engine.model.generate(
        prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=16, do_sample=False
    )
    decoded = engine.tokenizer.decode(generated[0, prompt_ids.shape[1] :], skip_special_tokens=True)
    pieces = list(engine.stream(PROMPTS[3], max_new_tokens=16))
    assert len(pieces) > 1 and "".join(pieces) == decoded
    # A character whose bytes span tokens is held back until complete.
    assert not any(piece.endswith("\ufffd") for piece in pieces[:-1])


def test_completion_reports_tokens_and_finish_reason(engine):
    request = engine.request(engine.prompt_ids("hi"), GenerationSettings(max_new_tokens=5))
    (completion,) = engine.run_batch([request], Sampling())
    assert completion.completion_tokens == 5 and completion.finish_reason == "length"
    assert completion.prompt_tokens == len(engine.prompt_ids("hi"))


def test_stop_strings_end_the_answer_before_them(engine):
    full = engine.generate("hi", max_new_tokens=12)
    stop = full[6:9]
    assert engine.generate("hi", max_new_tokens=12, stop=[stop]) == full[: full.index(stop)].strip()
    streamed = "".join(engine.stream("hi", max_new_tokens=12, stop=[stop]))
    assert streamed.strip() == full[: full.index(stop)].strip()


def test_saved_stop_ids_end_the_answer(engine):
    ids = engine.tokenizer(engine.generate("hi", max_new_tokens=6), add_special_tokens=False)["input_ids"]
    saved = engine.model.generation_config.eos_token_id
    engine.model.generation_config.eos_token_id = [*saved, ids[2]]
    try:
        short = engine.generate("hi", max_new_tokens=6)
    finally:
        engine.model.generation_config.eos_token_id = saved
    assert short == engine.tokenizer.decode(ids[:2]).strip()


def test_settings_are_checked_per_call(engine):
    with pytest.raises(ValidationError, match="temperature"):
        engine.generate("hi", temperature=-1)
    with pytest.raises(ValidationError, match="top_p"):
        engine.generate("hi", temperature=0.7, top_p=1.5)
    with pytest.raises(ValidationError, match="num_beams"):
        engine.generate("hi", num_beams=2)
    sampled = engine.generate("hi", max_new_tokens=8, temperature=1.5, top_p=0.95, top_k=50)
    assert isinstance(sampled, str) and sampled


def test_the_context_bounds_prompt_and_answer(engine):
    with pytest.raises(PromptTooLongError, match="context"):
        engine.generate("word " * engine.context_length)
    prompt = "word " * (engine.context_length - 40)
    room = engine.context_length - len(engine.prompt_ids(prompt))
    assert engine.request(engine.prompt_ids(prompt), GenerationSettings()).max_new_tokens == room


def test_a_stop_event_or_leaving_the_loop_ends_generation(engine):
    stop = threading.Event()
    pieces = []
    for piece in engine.stream("hi", stop_event=stop, max_new_tokens=500):
        pieces.append(piece)
        stop.set()
    assert 1 <= len(pieces) <= 2
    for _ in engine.stream("hi", max_new_tokens=500):
        break
    assert engine.generate("hi", max_new_tokens=3)  # the engine is free again


def test_concurrent_callers_get_their_own_answers(engine):
    expected = {i: engine.generate(p, max_new_tokens=8) for i, p in enumerate(PROMPTS)}
    got = {}
    threads = [
        threading.Thread(target=lambda i=i, p=p: got.__setitem__(i, engine.generate(p, max_new_tokens=8)))
        for i, p in enumerate(PROMPTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == expected


def test_the_guide_import_works_from_the_repo_root(varied_model):
    code = (
        "from scripts.inference import QwenInference\n"
        f"bot = QwenInference({str(varied_model)!r}, device='cpu')\n"
        "print(repr(bot.generate('hi', max_new_tokens=4)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("'")
