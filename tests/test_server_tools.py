"""Tool calling and thinking through the OpenAI-compatible server, with the official openai client.

A tiny Qwen3 (the real Qwen3 template) is made to write scripted replies through the real
generation path (tests/scripted_replies.py); the server's prompts, reply parsing, streaming and
protocol run for real.
"""

from __future__ import annotations

import json

import httpx
import pytest
from infer_support import served
from scripted_replies import CLOCK, WEATHER, last_turn, script_replies

from qwentune.infer.engine import QwenInference
from qwentune.infer.server import create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

MODEL = "qwen3-tiny"
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
ASK_SUM = [{"role": "user", "content": "Think: what is 23 × 17?"}]
REASONING = "23 × 17 = 23 × 10 + 23 × 7.\n= 230 + 161."
ANSWER = "23 × 17 = 391."


def scripted(prompt: str) -> str:
    turn = last_turn(prompt)
    if "<tool_response>" in turn:  # the answer quotes the tool's result: proof that it reached the prompt
        result = turn.split("<tool_response>\n")[1].split("\n</tool_response>")[0]
        return f"The tool says {result}."
    if prompt.endswith('"arguments": '):
        return '{"city": "Paris"}}\n</tool_call>'
    if "broken" in turn:
        return '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>'
    if "both" in turn:
        return (
            'Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
        )
    if "weather" in turn and "<tools>" in prompt:
        return '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}\n</tool_call>'
    if "Think" in turn:
        return ANSWER if prompt.endswith("</think>\n\n") else f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"
    return "Hello!"


@pytest.fixture(scope="module")
def engine(tiny_qwen3):
    engine = QwenInference(str(tiny_qwen3))
    undo = script_replies(engine, scripted)
    yield engine
    undo()


@pytest.fixture(scope="module")
def base_url(engine):
    app = create_app(engine, model_name=MODEL, max_batch_size=8, default_max_tokens=64)
    with served(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def thinking_by_default(engine):
    """The served model thinks unless a request says otherwise (as one trained with `data.thinking: on`)."""
    engine.enable_thinking = True
    yield
    engine.enable_thinking = False


def get_weather(city: str, unit: str = "°C") -> dict:
    return {"city": city, "temperature": 18, "unit": unit}


def streamed(client, **request):
    """A streamed reply put together as a client would: content, reasoning, calls, finish reason, and the chunks."""
    chunks = list(client.chat.completions.create(model=MODEL, stream=True, **request))
    content, reasoning, calls, finish = "", "", {}, None
    for chunk in chunks:
        (choice,) = chunk.choices
        delta = choice.delta
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = call.id or entry["id"]
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
        finish = choice.finish_reason or finish
    return content, reasoning, [calls[i] for i in sorted(calls)], finish, chunks


def test_a_tool_calling_round_trip(client):
    messages = list(ASK_WEATHER)
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "°C"}

    messages.append(choice.message)  # the SDK's own message object, as its documentation does
    result = get_weather(**json.loads(call.function.arguments))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result, ensure_ascii=False)})
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls
    assert final.choices[0].message.content == f"The tool says {json.dumps(result, ensure_ascii=False)}."


def test_a_streamed_tool_calling_round_trip(client):
    content, reasoning, calls, finish, chunks = streamed(client, messages=ASK_WEATHER, tools=[WEATHER])
    assert (content, reasoning, finish) == ("", "", "tool_calls")
    (call,) = calls
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris", "unit": "°C"}
    # As OpenAI streams a call: first its id, type and name, then its arguments.
    call_deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert call_deltas[0].id and call_deltas[0].type == "function" and call_deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.function.name is None for d in call_deltas[1:])

    history = [
        *ASK_WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
        ]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18°C, sunny"},
    ]  # fmt: skip
    content, _, calls, finish, _ = streamed(client, messages=history, tools=[WEATHER])
    assert (content, calls, finish) == ("The tool says 18°C, sunny.", [], "stop")


def test_parallel_calls_and_text_before_them(client):
    ask = [{"role": "user", "content": "Weather and time, both please."}]
    message = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER, CLOCK]).choices[0].message
    assert message.content == "Checking both."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})
    ]  # fmt: skip
    assert len({c.id for c in message.tool_calls}) == 2
    content, _, calls, finish, _ = streamed(client, messages=ask, tools=[WEATHER, CLOCK])
    assert content == "Checking both." and finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    # parallel_tool_calls=false: one call; the model's second block comes back as the text it wrote.
    single = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER, CLOCK], parallel_tool_calls=False)
    message = single.choices[0].message
    assert [c.function.name for c in message.tool_calls] == ["get_weather"] and single.choices[0].finish_reason == "tool_calls"
    assert message.content == 'Checking both.<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


def test_an_unparseable_call_comes_back_as_content(client):
    ask = [{"role": "user", "content": "Give me a broken call for the weather."}]
    expected = '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>'
    choice = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER]).choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (expected, None, "stop")
    content, _, calls, finish, _ = streamed(client, messages=ask, tools=[WEATHER])
    assert (content, calls, finish) == (expected, [], "stop")


def test_tool_choice(client, base_url):
    named = {"type": "function", "function": {"name": "get_weather"}}
    choice = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER, CLOCK], tool_choice=named
    ).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    # "none": the model is offered no tools and its text is not read for calls.
    plain = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="none")
    assert plain.choices[0].message.content == "Hello!" and plain.choices[0].finish_reason == "stop"
    auto = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="auto")
    assert auto.choices[0].finish_reason == "tool_calls"


def test_reasoning_content_with_thinking_on_and_none_with_it_off(client):
    off = client.chat.completions.create(model=MODEL, messages=ASK_SUM).choices[0].message
    assert off.content == ANSWER and getattr(off, "reasoning_content", None) is None
    assert "reasoning_content" not in off.model_dump(exclude_unset=True)

    on = client.chat.completions.create(
        model=MODEL, messages=ASK_SUM, extra_body={"chat_template_kwargs": {"enable_thinking": True}}
    ).choices[0].message
    assert (on.content, on.reasoning_content) == (ANSWER, REASONING)

    content, reasoning, _, finish, chunks = streamed(
        client, messages=ASK_SUM, extra_body={"chat_template_kwargs": {"enable_thinking": True}}
    )
    assert (content, reasoning, finish) == (ANSWER, REASONING, "stop")
    kinds = [
        "reasoning" if getattr(c.choices[0].delta, "reasoning_content", None) else "content"
        for c in chunks if getattr(c.choices[0].delta, "reasoning_content", None) or c.choices[0].delta.content
    ]  # fmt: skip
    assert kinds[0] == "reasoning" and kinds[-1] == "content" and kinds.count("reasoning") > 1
    assert kinds == sorted(kinds, key=["reasoning", "content"].index)  # all reasoning first

    content, reasoning, _, _, _ = streamed(client, messages=ASK_SUM)
    assert (content, reasoning) == (ANSWER, "")


@pytest.mark.usefixtures("thinking_by_default")
def test_enable_thinking_false_is_honoured(client):
    default = client.chat.completions.create(model=MODEL, messages=ASK_SUM).choices[0].message
    assert default.reasoning_content == REASONING
    for extra in ({"chat_template_kwargs": {"enable_thinking": False}}, {"enable_thinking": False}):
        message = client.chat.completions.create(model=MODEL, messages=ASK_SUM, extra_body=extra).choices[0].message
        assert message.content == ANSWER and getattr(message, "reasoning_content", None) is None, extra


def post(base_url, body) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json={"model": MODEL, **body}, timeout=60)


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice",
         "names the function 'launch', which 'tools' does not define (defined: get_weather)"),
        ({"tool_choice": "required"}, "tool_choice", '"required" needs \'tools\''),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "'none', 'auto' or 'required'"),
        ({"tools": [{"type": "function", "function": {"name": "get weather!"}}]}, "tools.0.function.name", "pattern"),
        ({"tools": [WEATHER, WEATHER]}, "tools", "defines get_weather more than once"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type", "'function'"),
        ({"chat_template_kwargs": {"enable_thinking": False, "add_vision_id": True}}, "chat_template_kwargs",
         "takes only 'enable_thinking' on this server (got 'add_vision_id')"),
        ({"chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs.enable_thinking", "boolean"),
        ({"enable_thinking": True, "chat_template_kwargs": {"enable_thinking": False}}, "enable_thinking", "disagree"),
        ({"messages": [*ASK_WEATHER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], "tools": [WEATHER]},
         "messages", "not valid JSON"),
    ],
)  # fmt: skip
def test_bad_tool_requests_get_a_400_naming_the_field_and_the_server_keeps_serving(base_url, client, body, param, words):
    response = post(base_url, {"messages": ASK_WEATHER, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER]).choices[0].message.tool_calls


def test_the_raw_stream_carries_openai_shaped_deltas(base_url):
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": ASK_WEATHER, "tools": [WEATHER], "stream": True}) as response:  # fmt: skip
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
    call_deltas = [d["delta"] for d in deltas if "tool_calls" in d["delta"]]
    head, arguments = call_deltas
    assert set(head) == {"tool_calls"} and head["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert set(head["tool_calls"][0]) == {"index", "id", "type", "function"}
    assert arguments == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris", "unit": "°C"}'}}]}
    assert deltas[-1]["finish_reason"] == "tool_calls" and deltas[-1]["delta"] == {}
