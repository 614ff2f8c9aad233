"""The OpenAI-compatible server, through the official openai client and raw HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from infer_support import served

from qwentune.infer.engine import QwenInference
from qwentune.infer.server import create_app
from qwentune.infer.settings import GenerationSettings, Sampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

API_KEY = "test-key-123"
MODEL = "aurora-tiny"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine(training_output):
    return QwenInference(str(training_output))


@pytest.fixture(scope="module")
def base_url(engine, generation_log):
    app = create_app(engine, model_name=MODEL, api_key=API_KEY, max_batch_size=8, default_max_tokens=6)
    with served(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def post(base_url, path, body=None, *, key=API_KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base_url}{path}", json=body, headers=headers, timeout=60, **kwargs)


def test_chat_completion_matches_the_engine(client, engine):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip() == engine.chat(QUESTION, max_new_tokens=8)  # with the trained system prompt
    assert choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(engine.prompt_ids(QUESTION))
    assert response.usage.completion_tokens == 8
    assert response.model == MODEL


def test_streamed_chat_completion_is_the_same_answer(client):
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole and len([p for p in pieces if p]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8


def test_sampling_settings_stop_strings_and_the_default_length(client, engine):
    full = client.chat.completions.create(model=MODEL, messages=QUESTION).choices[0]
    assert full.finish_reason == "length" and full.message.content.strip() == engine.chat(QUESTION, max_new_tokens=6)
    stop = full.message.content[4:7]
    cut = client.chat.completions.create(model=MODEL, messages=QUESTION, stop=[stop]).choices[0]
    assert (
        cut.finish_reason == "stop" and cut.message.content == full.message.content[: full.message.content.index(stop)]
    )
    sampled = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=1.2, top_p=0.9, max_tokens=4)
    assert sampled.usage.completion_tokens == 4


def test_completions_continue_raw_text(client, engine):
    response = client.completions.create(
        model=MODEL, prompt=["Once upon a time", "The capital of France is"], max_tokens=5
    )
    assert [c.index for c in response.choices] == [0, 1]
    ids = engine.tokenizer("Once upon a time")["input_ids"]
    (expected,) = engine.run_batch([engine.request(ids, GenerationSettings(max_new_tokens=5))], Sampling())
    assert response.choices[0].text == expected.text
    streamed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.text


def test_models_and_health(client, base_url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(f"{base_url}/health", timeout=10)  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_the_api_key_is_required(base_url):
    anonymous = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    response = post(base_url, "/v1/chat/completions", {"model": MODEL, "messages": QUESTION}, key=None)
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert API_KEY not in response.text


@pytest.mark.parametrize(
    "body, status, param, words",
    [
        ({"model": "gpt-4", "messages": QUESTION}, 404, "model", "does not exist"),
        ({"model": MODEL, "messages": []}, 400, "messages", "at least 1"),
        ({"model": MODEL}, 400, "messages", "required"),
        ({"model": MODEL, "messages": QUESTION, "temperature": -1}, 400, "temperature", "greater than or equal to 0"),
        ({"model": MODEL, "messages": QUESTION, "top_p": 1.5}, 400, "top_p", "less than or equal to 1"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
        (
            {"model": MODEL, "messages": QUESTION, "max_tokens": 5000},
            400,
            "max_tokens",
            "maximum context length is 2048",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "word " * 2100}]},
            400,
            "messages",
            "maximum context length",
        ),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", "'user'"),
        ({"model": MODEL, "messages": QUESTION, "n": 2}, 400, "n", "'n' is not supported"),
        ({"model": MODEL, "messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ],
)
def test_bad_chat_requests_get_openai_errors(base_url, body, status, param, words):
    response = post(base_url, "/v1/chat/completions", body)
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"


def test_malformed_http_requests_get_openai_errors_and_the_server_keeps_serving(base_url, client):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for content in (b"{not json", b"", b"[1, 2]", b'"text"'):
        response = httpx.post(f"{base_url}/v1/chat/completions", content=content, headers=headers, timeout=10)
        assert response.status_code == 400, content
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    for method, path in (("GET", "/v1/nothing"), ("GET", "/v1/chat/completions")):
        response = httpx.request(method, f"{base_url}{path}", headers=headers, timeout=10)
        assert response.status_code in (404, 405) and "error" in response.json()
    response = post(base_url, "/v1/completions", {"model": MODEL, "prompt": ""})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2).choices[0].message.content


def test_concurrent_requests_are_batched_without_mixing_answers(client, engine, generation_log):
    questions = [[{"role": "user", "content": f"Question number {i}: {'why ' * i}?"}] for i in range(8)]
    expected = [engine.chat(q, max_new_tokens=6 + i % 3) for i, q in enumerate(questions)]
    generation_log.clear()

    def ask(i: int) -> str:
        if i % 2:
            stream = client.chat.completions.create(
                model=MODEL, messages=questions[i], max_tokens=6 + i % 3, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return (
            client.chat.completions.create(model=MODEL, messages=questions[i], max_tokens=6 + i % 3)
            .choices[0]
            .message.content
        )

    for _ in range(2):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        assert [a.strip() for a in answers] == expected
    # A client has its answer as soon as its row ends; the row is recorded once it has left the batch.
    deadline = time.monotonic() + 30
    while len(generation_log.completions) < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(generation_log.completions) == 16 and max(generation_log.rows) > 1


def test_a_client_that_leaves_mid_stream_stops_its_generation(base_url, client, generation_log):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 1500, "stream": True}
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # The abandoned answer leaves the batch; the worker keeps serving.
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2).choices[0].message.content
    (abandoned,) = [c for c in generation_log.completions[-2:] if c.finish_reason == "cancelled"]
    assert abandoned.completion_tokens < 1500


def test_a_failed_generation_is_a_500_and_the_server_keeps_serving(client, engine):
    def out_of_memory(module, args, kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    hook = engine.model.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    try:
        with pytest.raises(openai.InternalServerError, match="out of memory"):
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
        with pytest.raises(openai.APIError, match="out of memory"):
            list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2, stream=True))
    finally:
        hook.remove()
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2).choices[0].message.content
