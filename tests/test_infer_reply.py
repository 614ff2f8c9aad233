"""Replies split into reasoning, answer and tool calls, whole or piece by piece."""

from __future__ import annotations

import json
import random

import pytest

from qwentune.infer.reply import ReplyParser, assemble

TOOLS = frozenset({"get_weather", "get_time"})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}\n</tool_call>'


def parse_whole(text: str, **options):
    parser = ReplyParser(**options)
    deltas = parser.feed(text) + parser.close()
    return assemble(deltas, text=text, finish_reason="stop", prompt_tokens=0, completion_tokens=0), deltas


def parse_in_pieces(text: str, seed: int, **options):
    """The same text fed in random pieces, as a stream delivers it."""
    rng = random.Random(seed)
    parser, deltas, start = ReplyParser(**options), [], 0
    while start < len(text):
        end = start + rng.randint(1, 4)
        deltas += parser.feed(text[start:end])
        start = end
    deltas += parser.close()
    return assemble(deltas, text=text, finish_reason="stop", prompt_tokens=0, completion_tokens=0), deltas


def summary(reply):
    calls = [(c.name, c.parsed_arguments) for c in reply.tool_calls]
    return reply.content, reply.reasoning_content, calls, reply.finish_reason


CASES = [
    # (text, options, content, reasoning, calls)
    ("Hello there.\n", {}, "Hello there.\n", None, []),
    ("<think>\nLet me add.\n2+2=4\n</think>\n\nIt is 4.", {}, "It is 4.", "Let me add.\n2+2=4", []),
    ("Let me add.\n</think>\n\nIt is 4.", {"thinking_open": True}, "It is 4.", "Let me add.", []),
    ("<think>\nstill thinking when the limit came", {}, "", "still thinking when the limit came", []),
    ("<think>\n\n</think>\n\n你好！", {}, "你好！", None, []),  # an empty block: no reasoning
    ("a <think> in the middle is text", {}, "a <think> in the middle is text", None, []),
    (CALL, {"tool_names": TOOLS}, "", None, [("get_weather", {"city": "Paris", "unit": "°C"})]),
    (
        "Checking both.\n" + CALL + "\n" + CALL.replace("get_weather", "get_time"),
        {"tool_names": TOOLS},
        "Checking both.",
        None,
        [("get_weather", {"city": "Paris", "unit": "°C"}), ("get_time", {"city": "Paris", "unit": "°C"})],
    ),
    ("<think>\nNeed weather.\n</think>\n\n" + CALL, {"tool_names": TOOLS}, "", "Need weather.", [("get_weather", {"city": "Paris", "unit": "°C"})]),
    # Not parsed without tools: the call stays in the answer as written.
    (CALL, {}, CALL, None, []),
    # Unparseable or undefined calls come back as the text the model wrote.
    ("<tool_call>\n{not json}\n</tool_call>", {"tool_names": TOOLS}, "<tool_call>\n{not json}\n</tool_call>", None, []),
    (CALL.replace("get_weather", "launch"), {"tool_names": TOOLS}, CALL.replace("get_weather", "launch"), None, []),
    ('<tool_call>\n{"name": "get_time", "arguments": [1]}\n</tool_call>', {"tool_names": TOOLS},
     '<tool_call>\n{"name": "get_time", "arguments": [1]}\n</tool_call>', None, []),
    ('<tool_call>\n{"name": "get_time", "argu', {"tool_names": TOOLS}, '<tool_call>\n{"name": "get_time", "argu', None, []),
    ("ends with a partial tag <tool_ca", {"tool_names": TOOLS}, "ends with a partial tag <tool_ca", None, []),
    ("  spaces kept  ", {"tool_names": TOOLS}, "  spaces kept  ", None, []),
]  # fmt: skip


@pytest.mark.parametrize("text, options, content, reasoning, calls", CASES)
def test_a_reply_parses_the_same_whole_and_in_pieces(text, options, content, reasoning, calls):
    whole, _ = parse_whole(text, **options)
    expected_finish = "tool_calls" if calls else "stop"
    assert summary(whole) == (content, reasoning, calls, expected_finish)
    for seed in range(20):
        pieces, _ = parse_in_pieces(text, seed, **options)
        assert summary(pieces) == summary(whole), seed


def test_arguments_are_json_text_and_calls_get_distinct_ids():
    reply, _ = parse_whole(CALL + "\n" + CALL, tool_names=TOOLS)
    first, second = reply.tool_calls
    assert json.loads(first.arguments) == {"city": "Paris", "unit": "°C"} and "°C" in first.arguments
    assert first.id.startswith("call_") and first.id != second.id
    assert first.as_openai()["function"] == {"name": "get_weather", "arguments": first.arguments}


def test_nothing_is_streamed_before_it_is_decided():
    assert [(d.kind, d.text) for d in ReplyParser(tool_names=TOOLS).feed("Sure.\n<tool")] == [("content", "Sure.")]
    thinking = ReplyParser()
    assert [(d.kind, d.text) for d in thinking.feed("<think>\nstep one\n")] == [("reasoning", "step one")]
    assert [(d.kind, d.text) for d in thinking.feed("step two\n</th")] == [("reasoning", "\nstep two")]
    assert [(d.kind, d.text) for d in thinking.feed("ink>\n\nDone")] == [("content", "Done")]


def test_with_one_call_allowed_later_calls_stay_text():
    second = CALL.replace("get_weather", "get_time")
    reply, _ = parse_whole(CALL + "\n" + second, tool_names=TOOLS, max_calls=1)
    assert [c.name for c in reply.tool_calls] == ["get_weather"] and reply.content == second
    for seed in range(10):
        assert summary(parse_in_pieces(CALL + "\n" + second, seed, tool_names=TOOLS, max_calls=1)[0]) == summary(reply)
