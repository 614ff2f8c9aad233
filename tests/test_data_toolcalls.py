"""Tool calling and reasoning, from raw formats to token ids and loss masks.

Every rendering is checked token for token against the template's own
`apply_chat_template(messages, tools=..., tokenize=True)` given the official structures, on the
real Qwen3 template (embedded tokenizer) and on the real Qwen2.5-Instruct template
(tests/fixtures/templates/qwen2_5_instruct.jinja, as published with Qwen/Qwen2.5-*-Instruct),
and the trained text is asserted exactly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from qwentune.data.formats import FORMATS
from qwentune.data.readers import RawRecord
from qwentune.data.record import Record, Reject
from qwentune.data.tokenize import IGNORE_INDEX, encode_conversation, load_tokenizer
from qwentune.data.toolcalls import parse_tool_calls, qwen_style_messages

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}


@pytest.fixture(scope="module")
def qwen3(qwen_tokenizer):
    return qwen_tokenizer


@pytest.fixture(scope="module")
def qwen25(qwen_tokenizer):
    tokenizer = copy.deepcopy(qwen_tokenizer)
    tokenizer.chat_template = (TEMPLATES / "qwen2_5_instruct.jinja").read_text(encoding="utf-8")
    return tokenizer


def official_ids(tokenizer, messages, tools=None, **kwargs) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, **kwargs)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def trained_pieces(tokenizer, example) -> list[str]:
    """The trained spans, decoded, in order."""
    pieces, run = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            pieces.append(tokenizer.decode(run))
            run = []
    if run:
        pieces.append(tokenizer.decode(run))
    return pieces


def convert(format_name: str, raw: dict) -> Record | Reject:
    [item] = list(FORMATS[format_name]("test", "test.jsonl").feed(RawRecord(1, raw)))
    return item


def encode(tokenizer, record: Record, **kwargs):
    return encode_conversation(tokenizer, record.messages, tools=record.tools or None, **kwargs)


def call(name, arguments):
    """A call as the OpenAI API (and transformers' chat-template docs) write it."""
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# ---------------------------------------------------------------------------- tools, ShareGPT (glaive)

GLAIVE = {
    "conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temperature": 21}'},
        {"from": "gpt", "value": "It is 21 degrees in Paris."},
    ],
    "tools": json.dumps([WEATHER["function"]]),
}
GLAIVE_OFFICIAL = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Paris"})]},
    {"role": "tool", "content": '{"temperature": 21}'},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'


def test_single_call_qwen3(qwen3):
    record = convert("sharegpt", GLAIVE)
    assert record.tools == [WEATHER]
    example = encode(qwen3, record)
    assert example.input_ids == official_ids(qwen3, GLAIVE_OFFICIAL, [WEATHER])
    # The call and the answer are trained; definitions, the result and Qwen3's empty think block are not.
    assert trained_pieces(qwen3, example) == [CALL_TEXT, "It is 21 degrees in Paris.<|im_end|>"]
    text = qwen3.decode(example.input_ids)
    assert '"name": "get_weather"' in text.split("<|im_start|>user")[0]  # definitions in the system turn
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 21" in text


def test_single_call_qwen25(qwen25):
    record = convert("sharegpt", GLAIVE)
    example = encode(qwen25, record)
    assert example.input_ids == official_ids(qwen25, GLAIVE_OFFICIAL, [WEATHER])
    assert trained_pieces(qwen25, example) == [CALL_TEXT, "It is 21 degrees in Paris.<|im_end|>"]
    assert "You are Qwen, created by Alibaba Cloud" in qwen25.decode(example.input_ids)


# ---------------------------------------------------------------------------- parallel calls, OpenAI, Chinese

OPENAI_PARALLEL = {
    "messages": [
        {"role": "system", "content": "你是一个助手。"},
        {"role": "user", "content": "北京现在的天气和时间？"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "Asia/Shanghai"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 3}'},
        {"role": "tool", "tool_call_id": "c2", "content": "08:00"},
        {"role": "assistant", "content": "北京现在 3 度，早上八点。"},
        {"role": "user", "content": "谢谢！"},
        {"role": "assistant", "content": "不客气。"},
    ],
    "tools": [WEATHER, TIME],
}


def parallel_official():
    messages = copy.deepcopy(OPENAI_PARALLEL["messages"])
    messages[2] = {
        "role": "assistant",
        "content": "",
        "tool_calls": [call("get_weather", {"city": "北京"}), call("get_time", {"zone": "Asia/Shanghai"})],
    }
    return messages


@pytest.mark.parametrize("template", ["qwen3", "qwen25"])
def test_parallel_calls_results_multi_turn_chinese(template, request):
    tokenizer = request.getfixturevalue(template)
    record = convert("openai", OPENAI_PARALLEL)
    assert record.lang == "zh"
    assert [c["id"] for c in record.messages[2]["tool_calls"]] == ["c1", "c2"]
    assert record.messages[3]["tool_call_id"] == "c1"
    example = encode(tokenizer, record)
    assert example.input_ids == official_ids(tokenizer, parallel_official(), [WEATHER, TIME])
    calls = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "Asia/Shanghai"}}\n</tool_call><|im_end|>'
    )
    assert trained_pieces(tokenizer, example) == [calls, "北京现在 3 度，早上八点。<|im_end|>", "不客气。<|im_end|>"]
    text = tokenizer.decode(example.input_ids)
    # Both results in one user turn, untrained.
    assert '<|im_start|>user\n<tool_response>\n{"temperature": 3}\n</tool_response>\n<tool_response>\n08:00\n</tool_response><|im_end|>' in text


def test_text_before_a_call_is_trained_with_it(qwen3):
    record = convert(
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "Weather in Paris?"},
                {"from": "gpt", "value": "Let me check."},
                {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "Sunny."},
            ],
            "tools": [WEATHER],
        },
    )
    assert record.messages[1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
    }
    example = encode(qwen3, record)
    assert trained_pieces(qwen3, example)[0] == "Let me check.\n" + CALL_TEXT


# ---------------------------------------------------------------------------- thinking (Qwen3)

REASONED = [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "5", "reasoning_content": "2 plus 3 is 5."},
]
PLAIN = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]


def test_reasoning_is_rendered_and_trained(qwen3):
    example = encode_conversation(qwen3, REASONED)
    assert example.input_ids == official_ids(qwen3, REASONED)
    assert trained_pieces(qwen3, example) == ["<think>\n2 plus 3 is 5.\n</think>\n\n5<|im_end|>"]
    # What generation starts from with thinking on is exactly the untrained prefix.
    prompt = official_ids(qwen3, REASONED[:1], add_generation_prompt=True, enable_thinking=True)
    assert example.input_ids[: len(prompt)] == prompt and example.labels[len(prompt) - 1] == IGNORE_INDEX
    assert example.labels[len(prompt)] != IGNORE_INDEX


def test_no_reasoning_renders_the_official_non_thinking_form(qwen3):
    example = encode_conversation(qwen3, PLAIN)
    assert example.input_ids == official_ids(qwen3, PLAIN)
    assert trained_pieces(qwen3, example) == ["Hi!<|im_end|>"]
    # The empty think block is the non-thinking generation prompt, untrained.
    prompt = official_ids(qwen3, PLAIN[:1], add_generation_prompt=True, enable_thinking=False)
    assert example.input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in example.labels[: len(prompt)])


def test_mixed_records_each_keep_their_form(qwen3):
    # A mixed data set: each record decides for itself under data.thinking "auto".
    reasoned, plain = encode_conversation(qwen3, REASONED), encode_conversation(qwen3, PLAIN)
    assert trained_pieces(qwen3, reasoned)[0].startswith("<think>\n2 plus 3")
    assert trained_pieces(qwen3, plain) == ["Hi!<|im_end|>"]


def test_thinking_off_drops_reasoning(qwen3):
    example = encode_conversation(qwen3, REASONED, thinking="off")
    assert example.input_ids == official_ids(qwen3, [REASONED[0], {"role": "assistant", "content": "5"}])
    assert trained_pieces(qwen3, example) == ["5<|im_end|>"]


def test_thinking_on_trains_an_empty_think_block(qwen3):
    example = encode_conversation(qwen3, PLAIN, thinking="on")
    assert example.input_ids == official_ids(qwen3, PLAIN)
    assert trained_pieces(qwen3, example) == ["<think>\n\n</think>\n\nHi!<|im_end|>"]


def test_thinking_mode_is_checked(qwen3):
    with pytest.raises(ValueError, match="thinking must be one of auto, on, off"):
        encode_conversation(qwen3, PLAIN, thinking="yes")


def test_earlier_turns_reasoning_is_dropped_from_context(qwen3):
    messages = [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5", "reasoning_content": "2 plus 3 is 5."},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "20", "reasoning_content": "5 times 4 is 20."},
    ]
    example = encode_conversation(qwen3, messages)
    assert example.input_ids == official_ids(qwen3, messages)
    assert "2 plus 3" not in qwen3.decode(example.input_ids)
    assert trained_pieces(qwen3, example) == ["5<|im_end|>", "<think>\n5 times 4 is 20.\n</think>\n\n20<|im_end|>"]


def test_reasoning_in_a_tool_loop_then_a_new_question(qwen3):
    # Turns inside a tool loop keep their reasoning until a new user question follows: the
    # conversation before the last turn renders differently alone and inside the whole.
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "I should call the tool.",
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "reasoning_content": "The tool says sunny."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
    ]
    official = copy.deepcopy(messages)
    official[1]["tool_calls"] = [call("get_weather", {"city": "Paris"})]
    example = encode_conversation(qwen3, messages, tools=[WEATHER])
    assert example.input_ids == official_ids(qwen3, official, [WEATHER])
    assert trained_pieces(qwen3, example) == [CALL_TEXT, "Sunny.<|im_end|>", "You're welcome.<|im_end|>"]
    # Without the last question the loop's reasoning is rendered and trained.
    example = encode_conversation(qwen3, messages[:4], tools=[WEATHER])
    assert example.input_ids == official_ids(qwen3, official[:4], [WEATHER])
    assert trained_pieces(qwen3, example) == [
        "<think>\nI should call the tool.\n</think>\n\n" + CALL_TEXT,
        "<think>\nThe tool says sunny.\n</think>\n\nSunny.<|im_end|>",
    ]


def test_a_template_without_a_reasoning_field_gets_it_inline(qwen25, capsys):
    example = encode_conversation(qwen25, REASONED)
    inline = [REASONED[0], {"role": "assistant", "content": "<think>\n2 plus 3 is 5.\n</think>\n\n5"}]
    assert example.input_ids == official_ids(qwen25, inline)
    assert trained_pieces(qwen25, example) == ["<think>\n2 plus 3 is 5.\n</think>\n\n5<|im_end|>"]


# ---------------------------------------------------------------------------- a template without tools

@pytest.fixture(scope="module")
def demo_tokenizer():
    return load_tokenizer("embedded:demo-model")


def test_fallback_spells_tools_as_qwen_does(demo_tokenizer, qwen25):
    assert "tools" not in demo_tokenizer.chat_template
    record = convert("openai", OPENAI_PARALLEL)
    example = encode(demo_tokenizer, record)
    text = demo_tokenizer.decode(example.input_ids)
    # The same text Qwen2.5's own template gives the conversation (both are ChatML with this system prompt).
    assert text == qwen25.apply_chat_template(parallel_official(), tools=[WEATHER, TIME], tokenize=False)
    assert trained_pieces(demo_tokenizer, example)[0].startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}')


def test_fallback_is_announced_once(demo_tokenizer, capsys):
    from qwentune.data import tokenize

    tokenize._announced.discard("tools")
    record = convert("sharegpt", GLAIVE)
    encode(demo_tokenizer, record)
    encode(demo_tokenizer, record)
    out = capsys.readouterr().out
    assert out.count("no tool support") == 1 and "Qwen's tool-prompt style" in out


def test_qwen_style_messages_merges_results():
    messages = qwen_style_messages(
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
            {"role": "tool", "content": "a"},
            {"role": "tool", "content": "b"},
        ],
        [],
    )
    assert messages[-1] == {"role": "user", "content": "<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response>"}
    assert messages[1]["content"] == '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'


# ---------------------------------------------------------------------------- formats and rejects

def test_llamafactory_parallel_function_call_and_observation(qwen3):
    record = convert(
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "Weather and time in Paris?"},
                {
                    "from": "function_call",
                    "value": json.dumps(
                        [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"zone": "Europe/Paris"}}]
                    ),
                },
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "Sunny, 9 am."},
            ],
            "tools": [WEATHER["function"], TIME["function"]],
        },
    )
    assert [c["name"] for c in record.messages[1]["tool_calls"]] == ["get_weather", "get_time"]
    assert record.messages[2] == {"role": "tool", "content": "sunny"}


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": '}], "tools": [WEATHER]},
            "bad_tool_call",
            "not valid JSON",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [call("get_weather", "{city: Paris}")]}], "tools": [WEATHER]},
            "bad_tool_arguments",
            "arguments of message 1 tool call 0 are not valid JSON",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call("get_weather", "[1, 2]")]}], "tools": [WEATHER]},
            "bad_tool_arguments",
            "not a JSON object",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call("book_flight", {})]}], "tools": [WEATHER]},
            "undefined_tool",
            "calls 'book_flight'; defined tools: get_weather",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"name": "get_weather", "arguments": {}}'}]},
            "undefined_tool",
            "the record defines no tools",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[{\"description\": \"x\"}]"},
            "bad_tools",
            "tool definition 0 has no function name",
        ),
        (
            {"instruction": "q", "output": "<think>\nunfinished"},
            "bad_reasoning",
            "never closes",
        ),
        (
            {"instruction": "q", "output": "<think>a</think>b", "reasoning": "c"},
            "bad_reasoning",
            "both a reasoning field and a <think> block",
        ),
    ],
)
def test_malformed_tool_and_reasoning_data_is_rejected_with_a_reason(raw, reason, detail):
    fmt = "sharegpt" if "conversations" in raw else "openai" if "messages" in raw else "alpaca"
    reject = convert(fmt, raw)
    assert isinstance(reject, Reject)
    assert reject.reason == reason
    assert detail in reject.detail
    assert reject.original == raw


@pytest.mark.parametrize(
    ("fmt", "raw"),
    [
        ("openai", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A", "reasoning_content": "R"}]}),
        ("openai", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A", "reasoning": "R"}]}),
        ("openai", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"}]}),
        ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<think>R</think>A"}]}),
        ("alpaca", {"instruction": "q", "output": "A", "reasoning": "R"}),
        ("alpaca", {"instruction": "q", "output": "A", "reasoning_content": "R"}),
        ("alpaca", {"instruction": "q", "output": "<think>\nR\n</think>\nA"}),
    ],
)
def test_reasoning_shapes_become_one_field(fmt, raw):
    record = convert(fmt, raw)
    assert record.messages[-1] == {"role": "assistant", "content": "A", "reasoning_content": "R"}


def test_canonical_round_trip_keeps_structure(tmp_path):
    record = convert("openai", OPENAI_PARALLEL)
    again = convert("canonical", json.loads(record.to_json()))
    assert again.messages == record.messages and again.tools == record.tools
    # Files written before tools were a record field kept them in meta.
    old = json.loads(record.to_json())
    old["meta"]["tools"] = old.pop("tools")
    moved = convert("canonical", old)
    assert moved.tools == record.tools and "tools" not in moved.meta


def test_tool_calls_count_in_the_content_id():
    with_call = convert("sharegpt", GLAIVE)
    other = copy.deepcopy(GLAIVE)
    other["conversations"][1]["value"] = '{"name": "get_weather", "arguments": {"city": "Lyon"}}'
    assert convert("sharegpt", other).id != with_call.id


# ---------------------------------------------------------------------------- parsing model output

def test_parse_tool_calls():
    parsed = parse_tool_calls(
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}\n</tool_call>'
    )
    assert parsed.content == "Checking."
    assert parsed.calls == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_time", "arguments": {"zone": "UTC"}},
    ]
    assert parsed.malformed == []


def test_parse_tool_calls_keeps_malformed_blocks_apart():
    parsed = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call><tool_call>{"name": "g"')
    assert parsed.calls == []
    assert [reason for _, reason in parsed.malformed] == [
        "the tool call arguments are a list, not a JSON object",
        "the <tool_call> block is not closed",
    ]
    assert parse_tool_calls("no calls here").calls == []


# ---------------------------------------------------------------------------- preprocess

def test_preprocess_of_glaive_tool_data_with_the_qwen3_tokenizer(tmp_path, capsys):
    """Used to write its outputs and then crash printing the first example ("chat template did
    not render an assistant message verbatim"); tool definitions were never rendered."""
    import shutil

    from qwentune.cli import main

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "tools" / "glaive_toolcall.json", raw)
    code = main(["preprocess", "--input_dir", str(raw), "--output_dir", str(tmp_path / "out"), "--num_workers", "0"])
    printed = capsys.readouterr().out
    assert code == 0
    assert '⟦<tool_call>\n{"name": "get_weather"' in printed.replace("\r", "")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["totals"]["in"] == 8 and stats["totals"]["kept"] == 6
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["bad_tool_arguments", "undefined_tool"]
    kept = [
        json.loads(line)
        for name in ("train.jsonl", "validation.jsonl", "test.jsonl")
        for line in (tmp_path / "out" / name).read_text().splitlines()
    ]
    assert all(r["tools"][0]["function"]["name"] == "get_weather" for r in kept)
    assert {r["messages"][1]["tool_calls"][0]["arguments"]["city"] for r in kept} == {"Paris", "Oslo", "Lima", "Cairo", "Quebec", "Perth"}


def test_length_filter_counts_the_tool_definitions(tmp_path, qwen3):
    from qwentune.config.preprocess import PreprocessConfig
    from qwentune.data.preprocess import run_preprocess

    record = convert("sharegpt", GLAIVE)
    with_tools = len(encode(qwen3, record).input_ids)
    without = len(encode_conversation(qwen3, [{k: v for k, v in m.items()} for m in GLAIVE_OFFICIAL[:1]] + [{"role": "assistant", "content": "It is 21 degrees in Paris."}]).input_ids)
    assert with_tools > without + 60  # the definitions are most of it
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "glaive.json").write_text(json.dumps([GLAIVE]))
    config = PreprocessConfig(input_dir=raw, output_dir=tmp_path / "out", num_workers=0, max_length=with_tools - 1)
    stats = run_preprocess(config).stats
    assert stats["totals"]["rejected"] == 1 and list(stats["sources"].values())[0]["reasons"] == {"too_long": 1}


def test_records_that_differ_only_in_their_calls_are_not_duplicates():
    from qwentune.data.clean import content_key

    other = copy.deepcopy(GLAIVE)
    other["conversations"][1]["value"] = '{"name": "get_weather", "arguments": {"city": "Lyon"}}'
    assert content_key(convert("sharegpt", GLAIVE)) != content_key(convert("sharegpt", other))
    same = convert("sharegpt", copy.deepcopy(GLAIVE))
    assert content_key(convert("sharegpt", GLAIVE)) == content_key(same)


def test_training_encodes_records_with_their_tools_and_the_thinking_key(qwen3):
    from qwentune.config.base import ConfigError, load_config
    from qwentune.config.training import TrainConfig
    from qwentune.data.dataset import encode_records

    record = json.loads(convert("sharegpt", GLAIVE).to_json())
    record["messages"][-1]["reasoning_content"] = "The tool said 21."
    [auto] = encode_records([record], qwen3, max_length=1024).examples
    [off] = encode_records([record], qwen3, max_length=1024, thinking="off").examples
    assert trained_pieces(qwen3, auto) == [CALL_TEXT, "<think>\nThe tool said 21.\n</think>\n\nIt is 21 degrees in Paris.<|im_end|>"]
    assert trained_pieces(qwen3, off) == [CALL_TEXT, "It is 21 degrees in Paris.<|im_end|>"]
    assert '"name": "get_weather", "description"' in qwen3.decode(off.input_ids)  # the definitions are rendered
    with pytest.raises(ConfigError, match="'data.thinking': Input should be 'auto', 'on' or 'off'"):
        load_config(TrainConfig, None, ["data.thinking=yes"])
