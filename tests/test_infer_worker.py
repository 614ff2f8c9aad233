"""Continuous batching in the server's worker: rows join and leave a running batch between decoding steps.

Forwards are counted with a forward hook on the model (rows of each forward), never by time.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import build_tiny_model
from infer_support import widen_weights

from qwentune.infer.decoding import Completion
from qwentune.infer.engine import QwenInference
from qwentune.infer.settings import GenerationSettings, Sampling
from qwentune.infer.worker import GenerationWorker, Job

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "hi",
    "What is the capital of France? Answer in one short sentence, please.",
    "1+1=?",
    "请用三句话介绍一下你自己，以及你能做什么。",
    "Name a colour.",
]
ENDS_EARLY = 1  # the prompt whose answer the engine fixture makes end with <|im_end|> at its 4th token at the latest


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def engine(request, tmp_path_factory, qwen_tokenizer):
    """A varied tiny model (infer_support), changed so that PROMPTS[ENDS_EARLY] ends with <|im_end|> within 4 tokens.

    Its output row for <|im_end|> becomes 1.01 times the row of the 4th token that prompt got before,
    so <|im_end|> wins wherever that token won (other prompts may end early there too).
    """
    folder = widen_weights(build_tiny_model(tmp_path_factory.mktemp(f"varied-{request.param}"), qwen_tokenizer, request.param))
    engine = QwenInference(str(folder), device="cpu", dtype="float32")
    prompt = torch.tensor([engine.prompt_ids(PROMPTS[ENDS_EARLY])])
    answer = engine.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    fourth = int(answer[0, prompt.shape[1] + 3])
    end_of_turn = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    head = engine.model.get_output_embeddings()
    with torch.no_grad():
        head.weight = torch.nn.Parameter(head.weight.detach().clone())  # untied: the prompt's <|im_end|> reads as before
        head.weight[end_of_turn] = head.weight[fourth] * 1.01
    assert end_of_turn in engine.stop_ids
    return engine


@pytest.fixture
def forwards(engine):
    """Rows of each forward the model runs from now on."""
    rows: list[int] = []
    hook = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    yield rows
    hook.remove()


def request(engine, prompt: str, max_new_tokens: int, **listeners):
    return engine.request(engine.prompt_ids(prompt), GenerationSettings(max_new_tokens=max_new_tokens), **listeners)


def alone(engine, prompt: str, max_new_tokens: int, sampling: Sampling = Sampling()) -> Completion:
    (completion,) = engine.run_batch([request(engine, prompt, max_new_tokens)], sampling)
    return completion


class Finished:
    """on_finish of a request: the Completion, and an event set when it arrives."""

    def __init__(self):
        self.event, self.completion = threading.Event(), None

    def __call__(self, completion: Completion) -> None:
        self.completion = completion
        self.event.set()

    def wait(self, timeout: float = 60) -> Completion:
        assert self.event.wait(timeout), f"no answer within {timeout} s"
        return self.completion


class Served:
    """A started GenerationWorker, the requests handed to it and the errors it reported."""

    def __init__(self, engine):
        self.worker = GenerationWorker(engine, max_batch_size=4)
        self.errors: list[Exception] = []
        self.submitted = 0
        self.worker.start()

    def submit(self, req, sampling: Sampling = Sampling()) -> None:
        self.submitted += 1
        self.worker.submit(Job(req, sampling, on_error=self.errors.append))

    def settled(self) -> dict:
        """The stats once nothing waits or generates and every request is counted (a client gets its
        answer just before it is counted); fails the test if a generation failed."""

        def done() -> bool:
            stats = self.worker.stats()
            return stats["finished"] + stats["abandoned"] == self.submitted and stats["generating"] == 0

        wait_until(done)
        assert not self.errors
        return self.worker.stats()


@pytest.fixture
def worker(engine):
    served = Served(engine)
    yield served
    served.worker.close()


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_rows_joining_and_leaving_get_the_greedy_answer_they_get_alone(engine, forwards):
    lengths = [9, 12, 5, 16, 7]
    expected = [alone(engine, p, n) for p, n in zip(PROMPTS, lengths)]
    assert expected[ENDS_EARLY].finish_reason == "stop" and expected[ENDS_EARLY].completion_tokens <= 4
    assert [c.finish_reason for i, c in enumerate(expected) if i != ENDS_EARLY].count("length") >= 3
    forwards.clear()
    batch = engine.decoding_batch()
    got: dict[int, Completion] = {}
    requests = [request(engine, p, n) for p, n in zip(PROMPTS, lengths)]
    sampled = request(engine, "Tell me a story.", 10)  # a row with its own sampling settings in the same batch
    joins = {0: [0, 1], 2: [2], 3: [3, "sampled"], 6: [4]}  # step: rows that join before it
    step = 0
    while step == 0 or len(batch):
        for which in joins.get(step, []):
            if which == "sampled":
                assert batch.add(sampled, Sampling(temperature=0.9, top_p=0.95, repetition_penalty=1.2)) is None
            elif (completion := batch.add(requests[which], Sampling())) is not None:
                got[which] = completion
        for ended, completion in batch.step():
            got[next(i for i, r in enumerate([*requests, sampled]) if r is ended)] = completion
        step += 1
    assert [got[i] for i in range(len(PROMPTS))] == expected
    assert max(forwards) >= 3  # rows really shared forwards
    reason, tokens = got[len(PROMPTS)].finish_reason, got[len(PROMPTS)].completion_tokens
    assert (reason, tokens) == ("length", 10) or reason == "stop" and tokens < 10


def test_a_row_abandoned_mid_batch_stops_costing_forwards(engine, worker, forwards):
    leaving, staying = Finished(), Finished()
    left_at: list[int] = []  # forwards run when the client left

    def leave(piece: str) -> None:  # on the worker thread, between two steps: a client leaving there
        if not left_at and left.generated >= 3 and stays.generated >= 1:
            left_at.append(len(forwards))
            left.abandon()

    left = request(engine, PROMPTS[3], 400, on_text=leave, on_finish=leaving)
    stays = request(engine, PROMPTS[0], 400, on_finish=staying)
    worker.submit(left)
    worker.submit(stays)
    completion = leaving.wait()
    wait_until(lambda: len(forwards) >= left_at[0] + 5)
    stays.abandon()
    staying.wait()
    assert max(forwards[: left_at[0]]) == 2  # both rows shared forwards until then
    assert set(forwards[left_at[0] :]) == {1}  # not one forward more for the row whose client left
    assert completion.finish_reason == "cancelled" and completion.completion_tokens == left.abandoned_at
    stats = worker.settled()
    assert stats["abandoned"] == 2 and stats["tokens_after_abandonment"] <= 1 and stats["finished"] == 0


def test_a_request_arriving_while_a_batch_runs_starts_before_that_batch_ends(engine, worker, forwards):
    long_finished, short_finished = Finished(), Finished()
    long = request(engine, PROMPTS[3], 1000, on_finish=long_finished)
    worker.submit(long)
    wait_until(lambda: long.generated >= 3)
    short = request(engine, PROMPTS[0], 6, on_finish=short_finished)
    worker.submit(short)
    completion = short_finished.wait()
    assert not long_finished.event.is_set() and long.generated < 1000
    assert completion == alone(engine, PROMPTS[0], 6)
    assert forwards.count(2) >= 5  # the short request's steps ran beside the long one
    long.abandon()
    assert long_finished.wait().finish_reason == "cancelled"
    stats = worker.settled()
    assert stats["finished"] == 1 and stats["abandoned"] == 1


def test_the_worker_answers_more_requests_than_its_batch_holds_as_each_would_alone(engine, worker):
    lengths = [3, 9, 5, 12, 7, 4, 10, 6]
    prompts = [PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)) for i in range(len(lengths))]
    finished = [Finished() for _ in lengths]
    for prompt, n, done in zip(prompts, lengths, finished):
        worker.submit(request(engine, prompt, n, on_finish=done))
    answers = [done.wait() for done in finished]
    assert answers == [alone(engine, p, n) for p, n in zip(prompts, lengths)]
    assert worker.settled()["finished"] == len(lengths)


def test_a_failed_prefill_fails_its_request_only_and_a_failed_step_every_row_then_the_worker_keeps_serving(engine):
    served = Served(engine)
    failures: dict[str, list[Exception]] = {"joining": [], "running": []}
    failed = threading.Event()

    def job(name: str, prompt: str, max_new_tokens: int) -> Job:
        def on_error(exc: Exception) -> None:
            failures[name].append(exc)
            failed.set()

        return Job(request(engine, prompt, max_new_tokens), Sampling(), on_error=on_error)

    hooks = []

    def out_of_memory_at(prefill: bool):
        def hook(module, args, kwargs):
            if (kwargs["input_ids"].shape[1] > 1) == prefill:
                raise RuntimeError("out of memory (simulated)")

        hooks.append(engine.model.register_forward_pre_hook(hook, with_kwargs=True))
        return hooks[-1]

    try:
        running = job("running", PROMPTS[3], 1000)
        served.worker.submit(running)
        wait_until(lambda: running.request.generated >= 3)
        hook = out_of_memory_at(prefill=True)
        served.worker.submit(job("joining", PROMPTS[0], 4))
        assert failed.wait(60)
        hook.remove()
        assert "out of memory" in str(failures["joining"][0]) and not failures["running"]
        generated = running.request.generated
        wait_until(lambda: running.request.generated >= generated + 3)  # the running row went on
        failed.clear()
        hook = out_of_memory_at(prefill=False)
        assert failed.wait(60)
        hook.remove()
        assert "out of memory" in str(failures["running"][0]) and running.request.generated < 1000
        done = Finished()
        served.submit(request(engine, PROMPTS[2], 4, on_finish=done))
        assert done.wait() == alone(engine, PROMPTS[2], 4)
        assert served.settled()["finished"] == 1
    finally:
        for hook in hooks:
            hook.remove()
        served.worker.close()


def test_a_sampled_row_draws_what_generate_draws_for_it_alone_from_the_same_seed(engine):
    sampling = Sampling(temperature=0.8, top_p=0.9, top_k=50, repetition_penalty=1.3)
    torch.manual_seed(7)
    expected = alone(engine, PROMPTS[3], 12, sampling)
    torch.manual_seed(7)
    batch = engine.decoding_batch()
    completion = batch.add(request(engine, PROMPTS[3], 12), sampling)
    while completion is None:
        completion = next((c for _, c in batch.step()), None)
    assert completion == expected
    torch.manual_seed(8)
    assert alone(engine, PROMPTS[3], 12, sampling) != expected  # the seed, not the prompt, chose these tokens
