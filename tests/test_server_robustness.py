"""The server under hostile and careless clients, through a real uvicorn server on 127.0.0.1.

Clients that give up (streamed or not, with the openai client's retries), SIGTERM/SIGINT with
requests in flight, huge bodies and prompt lists, numbers at the edges of float64, tool turns.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from infer_support import served

from qwentune.infer.engine import QwenInference
from qwentune.infer.openai_api import UNSUPPORTED
from qwentune.infer.server import create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[1]
API_KEY = "test-key-456"
MODEL = "aurora-tiny"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
LONG = 1900  # new tokens: tens of seconds of generation on a CPU, unless the request is stopped
HEADERS = {"Authorization": f"Bearer {API_KEY}"}




@pytest.fixture(scope="module")
def engine(training_output):
    return QwenInference(str(training_output))


@pytest.fixture(scope="module")
def base_url(engine, generation_log):
    app = create_app(engine, model_name=MODEL, api_key=API_KEY, default_max_tokens=4, max_body_mb=1, max_prompts=4)
    with served(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def post(base_url, body, path="/v1/chat/completions", timeout: float = 60) -> httpx.Response:
    content = json.dumps(body).encode()  # NaN and Infinity as Python's json writes them
    headers = {**HEADERS, "Content-Type": "application/json"}
    return httpx.post(f"{base_url}{path}", content=content, headers=headers, timeout=timeout)


def health(base_url) -> dict:
    return httpx.get(f"{base_url}/health", timeout=30).json()


def wait_idle(base_url, timeout: float = 60) -> dict:
    """/health once nothing waits or generates; fails when the worker stays busy for `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        stats = health(base_url)
        if stats["generating"] == 0 and stats["waiting"] == 0:
            return stats
        assert time.monotonic() < deadline, f"the worker is still busy after {timeout} s: {stats}"
        time.sleep(0.05)


# ---------------------------------------------------------------- clients that go away


def give_up_waiting(base_url):
    """A client that waits 1.5 s for a long answer, then gives up; the openai client retries twice."""
    impatient = openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=2, timeout=1.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=LONG)
    return 3


def leave_mid_stream(base_url):
    stream = openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0).chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=LONG, stream=True
    )
    for _, _chunk in zip(range(3), stream):
        pass
    stream.close()
    return 1


@pytest.mark.parametrize("leave", [give_up_waiting, leave_mid_stream], ids=["non-streamed", "streamed"])
def test_a_client_that_goes_away_stops_its_generation(base_url, client, generation_log, leave):
    before = wait_idle(base_url)
    generation_log.clear()
    abandoned = leave(base_url)
    started = time.monotonic()
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
    waited = time.monotonic() - started
    assert answer.choices[0].finish_reason == "length"
    assert waited < 30, f"the next request waited {waited:.1f} s behind abandoned work"
    after = wait_idle(base_url, timeout=30)
    cancelled = [c for c in generation_log.completions if c.finish_reason == "cancelled"]
    # How far a request got before its client left depends on the machine's speed (475 tokens on an idle
    # one); what must hold is that it stopped short of its length, within a token or two of the leaving.
    assert 1 <= len(cancelled) <= abandoned and all(c.completion_tokens < LONG for c in cancelled)
    assert after["abandoned"] - before["abandoned"] == abandoned
    assert after["tokens_after_abandonment"] - before["tokens_after_abandonment"] <= 2 * abandoned


def test_a_storm_of_clients_that_leave_leaves_the_server_idle_and_serving(base_url, client):
    before = wait_idle(base_url)

    def leave(i: int) -> None:
        if i % 2:
            with httpx.stream("POST", f"{base_url}/v1/chat/completions", headers=HEADERS, timeout=60,
                              json={"model": MODEL, "messages": QUESTION, "max_tokens": 500, "stream": True}) as response:  # fmt: skip
                for _, _line in zip(range(i % 5), response.iter_lines()):
                    pass
        else:
            with pytest.raises(httpx.TimeoutException):
                post(base_url, {"model": MODEL, "messages": QUESTION, "max_tokens": 500}, timeout=0.2 + i / 20)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(leave, range(24)))
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2).choices[0].message.content
    after = wait_idle(base_url, timeout=60)
    abandoned = after["abandoned"] - before["abandoned"]
    assert 0 < abandoned <= 24
    assert after["tokens_after_abandonment"] - before["tokens_after_abandonment"] <= 2 * abandoned


# ---------------------------------------------------------------- the event loop stays free


def test_health_answers_while_a_huge_prompt_is_tokenized(base_url, engine):
    big = create_app(engine, model_name=MODEL, api_key=API_KEY, max_body_mb=8)
    with served(big) as url:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "the quick brown fox " * 60_000}]}
        results = {}

        def send() -> None:
            started = time.monotonic()
            results["response"] = post(url, body)
            results["seconds"] = time.monotonic() - started

        sender = threading.Thread(target=send)
        sender.start()
        slowest = 0.0
        while sender.is_alive():
            started = time.monotonic()
            assert health(url)["status"] == "ok"
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        sender.join()
    response = results["response"]
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    assert results["seconds"] > 0.5, "too small a prompt to show anything"
    # /health waited for at most a part of the tokenizing (on the loop, it waited for all of it).
    assert slowest < results["seconds"] / 2, (slowest, results["seconds"])


def test_bodies_and_prompt_lists_over_the_limits_are_refused(base_url, client):
    too_big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    response = post(base_url, too_big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert "--max_body_mb" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the size is counted as the body arrives
        for _ in range(12):
            yield b" " * 100_000
        yield json.dumps({"model": MODEL, "messages": QUESTION}).encode()

    headers = {**HEADERS, "Content-Type": "application/json"}
    response = httpx.post(f"{base_url}/v1/chat/completions", content=chunks(), headers=headers, timeout=60)
    assert response.status_code == 413
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "y" * 1_100_000}])
    assert raised.value.status_code == 413
    response = post(base_url, {"model": MODEL, "prompt": ["a", "b", "c", "d", "e"], "max_tokens": 1}, "/v1/completions")
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert "at most 4" in response.json()["error"]["message"]
    assert len(client.completions.create(model=MODEL, prompt=["a", "b", "c", "d"], max_tokens=1).choices) == 4


# ---------------------------------------------------------------- numbers at the edges

EDGES = [1, 1e-300, 5e-324, 0, -0.0, -1, 1e308, float("nan"), float("inf"), float("-inf"), 10**30, 2.5, True, "1"]
NUMERIC_FIELDS = ["temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "repetition_penalty",
                  "presence_penalty", "frequency_penalty", "n", "seed", "top_logprobs"]  # fmt: skip


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_every_numeric_value_generates_or_gets_a_400_naming_its_field(base_url, field):
    outcomes = {}
    for value in EDGES:
        body = {"model": MODEL, "messages": QUESTION, "max_tokens": 1, field: value}
        response = post(base_url, body)
        outcomes[repr(value)] = response.status_code
        assert response.status_code in (200, 400), (value, response.text)
        if response.status_code == 400:
            error = response.json()["error"]
            assert error["param"] == field and field in error["message"], (value, error)
            if field in UNSUPPORTED:
                assert "is not supported" in error["message"], error
            elif isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
                assert "finite number" in error["message"] and "less than" not in error["message"], error
        else:
            assert response.json()["choices"][0]["message"]["content"] is not None
    assert field in UNSUPPORTED or outcomes["1"] == 200, outcomes


def test_the_reported_numeric_cases(base_url, client):
    greedy = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4).choices[0].message.content
    tiny = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=1e-300)
    assert tiny.choices[0].message.content == greedy  # a temperature below 1e-5 is greedy decoding
    response = post(base_url, {"model": MODEL, "messages": QUESTION, "repetition_penalty": 1e-308})
    assert response.status_code == 400 and response.json()["error"]["param"] == "repetition_penalty"
    assert "greater than or equal to 0.01" in response.json()["error"]["message"]
    response = post(base_url, {"model": MODEL, "messages": QUESTION, "temperature": float("nan")})
    assert response.json()["error"]["message"] == "temperature: must be a finite number (got nan)"


# ---------------------------------------------------------------- other hostile input


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"model": MODEL, "messages": "hi"}, "messages", "valid list"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages.0.content", "valid string"),
        ({"model": MODEL, "messages": [{"role": "user", "content": None}]}, "messages.0.content", "required"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.0.content", "surrogate"),
        ({"model": MODEL, "messages": QUESTION, "stop": 5}, "stop", "valid string"),
        ({"model": MODEL, "messages": QUESTION, "stream": "maybe"}, "stream", "valid boolean"),
        ({"model": 5, "messages": QUESTION}, "model", "valid string"),
        ({"model": MODEL, "messages": [*QUESTION, {"role": "tool", "content": "42"}]}, "messages.1.tool_call_id",
         "required"),
    ],
)  # fmt: skip
def test_wrong_types_get_a_400_naming_the_field(base_url, body, param, words):
    response = post(base_url, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_bodies_that_are_not_a_json_object_get_a_400(base_url):
    for content, headers in ((b"[" * 100_000, {}), (b'{"model": "\xff\xfe"}', {}),
                             (json.dumps({"model": MODEL, "messages": QUESTION}).encode(), {"Content-Type": "text/plain"})):  # fmt: skip
        response = httpx.post(f"{base_url}/v1/chat/completions", content=content, headers={**HEADERS, **headers})
        assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert health(base_url)["status"] == "ok"


def test_tool_turns_are_accepted_and_rendered(client, engine):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"},
    ]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    expected = engine.prompt_ids([messages[0], {**messages[1], "content": ""}, messages[2]])
    assert response.usage.prompt_tokens == len(expected)
    rendered = engine.tokenizer.decode(expected)
    assert "get_weather" in rendered and "22 degrees and sunny" in rendered
    with pytest.raises(openai.BadRequestError, match="not valid JSON"):
        broken = {**call, "function": {"name": "get_weather", "arguments": "{city"}}
        client.chat.completions.create(model=MODEL, messages=[messages[0], {**messages[1], "tool_calls": [broken]}])


# ---------------------------------------------------------------- shutdown


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_server_within_seconds_with_requests_in_flight(training_output, tmp_path, sig):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w+")
    command = [sys.executable, "-m", "qwentune.cli", "serve", "--model_path", str(training_output),
               "--port", str(port), "--served_model_name", MODEL]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "QWENTUNE_API_KEY": API_KEY}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                health(base_url)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        outcomes = {}

        def whole() -> None:
            outcomes["whole"] = post(base_url, {"model": MODEL, "messages": QUESTION, "max_tokens": LONG})

        def streamed() -> None:
            body = {"model": MODEL, "messages": QUESTION, "max_tokens": LONG, "stream": True}
            with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=HEADERS, timeout=60) as r:
                outcomes["streamed"] = list(r.iter_lines())

        clients = [threading.Thread(target=whole), threading.Thread(target=streamed)]
        for thread in clients:
            thread.start()
        while (stats := health(base_url))["generating"] + stats["waiting"] < 2:
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)
        signalled = time.monotonic()
        server.send_signal(sig)
        server.wait(timeout=60)
        took = time.monotonic() - signalled
        for thread in clients:
            thread.join(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
        log.seek(0)
        output = log.read()
    assert took < 15, f"the server took {took:.1f} s to stop\n{output[-3000:]}"
    assert server.returncode in (0, 130, -sig), output[-3000:]
    whole = outcomes["whole"]
    assert whole.status_code == 503 and "shutting down" in whole.json()["error"]["message"]
    assert any("shutting down" in line for line in outcomes["streamed"]), outcomes["streamed"][-3:]
