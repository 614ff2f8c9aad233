"""Thinking and tool calling in the Python API: prompts as the model's own template renders them,
replies split into reasoning, answer and calls (a tiny Qwen3 made to write scripted replies)."""

from __future__ import annotations

import json
import shutil

import pytest
from scripted_replies import CLOCK, WEATHER, last_turn, script_replies

from qwentune.infer.engine import QwenInference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
THOUGHT = "<think>\nThe user wants the weather.\nI should answer.\n</think>\n\n"


def scripted(prompt: str) -> str:
    """What the model writes: a call for a weather question, an answer once the result is in."""
    turn = last_turn(prompt)
    if "<tool_response>" in turn:
        return "It is 18°C and sunny in Paris."
    if prompt.endswith('"arguments": '):  # a forced call to a named function
        return '{"city": "Paris"}}\n</tool_call>'
    if prompt.endswith('{"name": "'):  # a forced call to any function
        return 'get_time", "arguments": {}}\n</tool_call>'
    if "<tools>" in prompt and "weather" in turn:
        return CALL
    if "Think" in turn:
        answer = "23 × 17 = 391."
        return answer if prompt.endswith("</think>\n\n") else THOUGHT + answer
    return "Hello!"


@pytest.fixture(scope="module")
def engine(tiny_qwen3):
    engine = QwenInference(str(tiny_qwen3))
    undo = script_replies(engine, scripted)
    yield engine
    undo()


def decoded(engine, ids) -> str:
    return engine.tokenizer.decode(ids)


def test_thinking_is_off_by_default_and_switched_per_call(engine, qwen_tokenizer):
    question = [{"role": "user", "content": "Think: what is 23 × 17?"}]
    assert engine.enable_thinking is False  # trained without reasoning (no metadata says otherwise)
    official = qwen_tokenizer.apply_chat_template
    off = official(question, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    on = official(question, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert decoded(engine, engine.prompt_ids(question)) == off and off.endswith("<think>\n\n</think>\n\n")
    assert decoded(engine, engine.prompt_ids(question, enable_thinking=True)) == on

    plain = engine.respond(question)
    assert (plain.content, plain.reasoning_content, plain.finish_reason) == ("23 × 17 = 391.", None, "stop")
    thought = engine.respond(question, enable_thinking=True)
    assert thought.reasoning_content == "The user wants the weather.\nI should answer."
    assert thought.content == "23 × 17 = 391." and thought.text.startswith("<think>")
    # The string API gives the answer alone, streamed or not.
    assert engine.generate(question, enable_thinking=True) == "23 × 17 = 391."
    assert "".join(engine.stream(question, enable_thinking=True)) == "23 × 17 = 391."
    deltas = list(engine.stream_reply(question, enable_thinking=True))
    kinds = [d.kind for d in deltas]
    assert kinds[0] == "reasoning" and kinds[-1] == "content" and kinds == sorted(kinds, key=("reasoning", "content").index)
    assert "".join(d.text for d in deltas if d.kind == "reasoning") == thought.reasoning_content


def test_the_engine_default_can_be_changed(tiny_qwen3):
    thinking = QwenInference(str(tiny_qwen3), enable_thinking=True)
    question = [{"role": "user", "content": "hi"}]
    assert decoded(thinking, thinking.prompt_ids(question)).endswith("<|im_start|>assistant\n")
    assert decoded(thinking, thinking.prompt_ids(question, enable_thinking=False)).endswith("</think>\n\n")


def test_tools_are_rendered_by_the_template_and_calls_parsed(engine, qwen_tokenizer):
    expected = qwen_tokenizer.apply_chat_template(
        QUESTION, tools=[WEATHER], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert decoded(engine, engine.prompt_ids(QUESTION, tools=[WEATHER])) == expected
    reply = engine.respond(QUESTION, tools=[WEATHER, CLOCK])
    assert reply.finish_reason == "tool_calls" and reply.content == ""
    ((call),) = reply.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    # The string API keeps the call as the model wrote it.
    assert engine.generate(QUESTION, tools=[WEATHER]) == CALL
    streamed = list(engine.stream_reply(QUESTION, tools=[WEATHER]))
    assert [d.kind for d in streamed] == ["tool_call"] and streamed[0].tool_call.name == "get_weather"


def test_a_tool_round_trip_renders_calls_and_results_like_the_template(engine, qwen_tokenizer):
    first = engine.respond(QUESTION, tools=[WEATHER])
    (call,) = first.tool_calls
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.as_openai()]},  # OpenAI's shape, as clients send it
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
    ]
    canonical = [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        history[2],
    ]
    expected = qwen_tokenizer.apply_chat_template(
        canonical, tools=[WEATHER], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    prompt = decoded(engine, engine.prompt_ids(history, tools=[WEATHER]))
    assert prompt == expected
    assert CALL in prompt and '<tool_response>\n{"temperature": 18, "sky": "sunny"}\n</tool_response>' in prompt
    final = engine.respond(history, tools=[WEATHER])
    assert (final.content, final.tool_calls, final.finish_reason) == ("It is 18°C and sunny in Paris.", [], "stop")


def test_tool_choice(engine):
    named = engine.respond(QUESTION, tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert engine.prepare(QUESTION, tools=[WEATHER], tool_choice="get_weather").prefill.endswith('"arguments": ')
    assert [(c.name, c.parsed_arguments) for c in named.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert named.text == CALL and named.finish_reason == "tool_calls"
    required = engine.respond([{"role": "user", "content": "hi"}], tools=[WEATHER, CLOCK], tool_choice="required")
    assert [(c.name, c.parsed_arguments) for c in required.tool_calls] == [("get_time", {})]
    # "none": the tools are not offered and nothing is parsed.
    none = engine.prepare(QUESTION, tools=[WEATHER], tool_choice="none")
    assert "<tools>" not in decoded(engine, none.ids) and none.tool_names is None
    for bad, words in [
        ("get_stock", "'auto', 'none', 'required' or a defined function (defined: get_weather)"),
        ({"type": "function", "function": {}}, "defined function"),
    ]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            engine.prepare(QUESTION, tools=[WEATHER], tool_choice=bad)
    with pytest.raises(ValueError, match="needs tools"):
        engine.prepare(QUESTION, tool_choice="required")
    with pytest.raises(ValueError, match="enable_thinking must be True, False or None"):
        engine.prepare(QUESTION, enable_thinking="no")


@pytest.mark.parametrize(
    "tools, history_call, words",
    [
        ([{"type": "function", "function": {"description": "no name"}}], None, "tool definition 0 has no function name"),
        ([WEATHER], {"function": {"name": "get_weather", "arguments": "{city: Paris}"}}, "not valid JSON"),
        ([WEATHER], {"function": {"name": "get_weather", "arguments": "[1, 2]"}}, "not a JSON object"),
    ],
)
def test_malformed_tools_and_calls_are_refused_with_the_reason(engine, tools, history_call, words):
    messages = list(QUESTION)
    if history_call:
        messages += [{"role": "assistant", "content": None, "tool_calls": [history_call]}, {"role": "user", "content": "?"}]
    with pytest.raises(ValueError, match=words):
        engine.respond(messages, tools=tools)


def test_a_batch_mixes_calls_thinking_and_plain_answers(engine):
    prompts = [QUESTION, [{"role": "user", "content": "Think: 23 × 17?"}], [{"role": "user", "content": "hi"}]]
    replies = engine.batch_respond(prompts, batch_size=3, tools=[WEATHER], enable_thinking=True)
    assert [r.finish_reason for r in replies] == ["tool_calls", "stop", "stop"]
    assert replies[0].tool_calls[0].name == "get_weather"
    assert (replies[1].content, bool(replies[1].reasoning_content)) == ("23 × 17 = 391.", True)
    assert (replies[2].content, replies[2].reasoning_content) == ("Hello!", None)


def test_a_qwen2_5_template_gets_calls_as_objects_and_ignores_the_thinking_switch(tiny_qwen2, tmp_path):
    """Qwen2.5's template writes arguments with `tojson`: OpenAI's JSON text must reach it as an object."""
    from conftest import REPO
    from transformers import AutoTokenizer

    folder = tmp_path / "qwen2.5-style"
    shutil.copytree(tiny_qwen2, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = (REPO / "tests" / "fixtures" / "templates" / "qwen2_5_instruct.jinja").read_text(encoding="utf-8")
    tokenizer.save_pretrained(folder)
    engine = QwenInference(str(folder))
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    canonical = [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        history[2],
    ]  # fmt: skip
    expected = tokenizer.apply_chat_template(canonical, tools=[WEATHER], tokenize=False, add_generation_prompt=True)
    prompt = decoded(engine, engine.prompt_ids(history, tools=[WEATHER]))
    assert prompt == expected and CALL in prompt and "You are Qwen" in prompt
    assert not engine.has_thinking_switch
    assert engine.prompt_ids(history, tools=[WEATHER], enable_thinking=True) == engine.prompt_ids(history, tools=[WEATHER])


def test_a_batch_file_keeps_the_reasoning_apart(engine, tmp_path):
    from conftest import read_jsonl, write_jsonl

    from qwentune.infer.batch import answer_file
    from qwentune.infer.settings import GenerationSettings

    source = write_jsonl(tmp_path / "questions.jsonl", [{"prompt": "Think: 23 × 17?"}, {"prompt": "hi"}])
    engine.enable_thinking = True
    try:
        assert answer_file(engine, str(source), str(tmp_path / "answers.jsonl"), GenerationSettings(max_new_tokens=40)) == 0
        assert answer_file(engine, str(source), str(tmp_path / "answers.txt"), GenerationSettings(max_new_tokens=40)) == 0
    finally:
        engine.enable_thinking = False
    first, second = read_jsonl(tmp_path / "answers.jsonl")
    assert (first["answer"], first["reasoning"]) == ("23 × 17 = 391.", "The user wants the weather.\nI should answer.")
    assert second["answer"] == "Hello!" and "reasoning" not in second
    assert (tmp_path / "answers.txt").read_text(encoding="utf-8") == "23 × 17 = 391.\nHello!\n"


def test_a_template_that_opens_the_think_block_itself(tiny_qwen3, qwen_tokenizer, tmp_path):
    """Templates like Qwen3-*-Thinking-2507's end the generation prompt with `<think>\\n`: the reply starts inside it."""
    from transformers import AutoTokenizer

    folder = tmp_path / "opens-think"
    shutil.copytree(tiny_qwen3, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    closing = "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}"
    assert closing in qwen_tokenizer.chat_template
    tokenizer.chat_template = qwen_tokenizer.chat_template.replace(
        closing, "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- else %}\n        {{- '<think>\\n' }}\n    {%- endif %}"
    )
    tokenizer.save_pretrained(folder)
    engine = QwenInference(str(folder))
    script_replies(engine, lambda prompt: "Multiply.\n</think>\n\n391." if prompt.endswith("<think>\n") else "391.")
    assert engine.prepare(QUESTION, enable_thinking=True).thinking_open
    reply = engine.respond(QUESTION, enable_thinking=True)
    assert (reply.reasoning_content, reply.content) == ("Multiply.", "391.")
    deltas = list(engine.stream_reply(QUESTION, enable_thinking=True))
    assert deltas[0].kind == "reasoning" and "".join(d.text for d in deltas if d.kind == "reasoning") == "Multiply."
    plain = engine.respond(QUESTION)
    assert not engine.prepare(QUESTION).thinking_open and (plain.reasoning_content, plain.content) == (None, "391.")
