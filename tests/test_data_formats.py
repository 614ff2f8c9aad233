"""Each format converted turn by turn from our own fixtures; detection; the canonical record."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwentune.data.formats import FORMATS, ConversionOptions, detect_format
from qwentune.data.readers import DataFile, RawRecord
from qwentune.data.record import InvalidRecord, Record, Reject, make_record, stable_id

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def convert(file_name: str, format_name: str, **options) -> list[Record | Reject]:
    converter = FORMATS[format_name](file_name.split(".")[0], file_name, ConversionOptions(**options))
    items = []
    for raw in DataFile(FIXTURES / file_name).records():
        assert isinstance(raw, RawRecord), raw
        items.extend(converter.feed(raw))
    items.extend(converter.finish())
    return items


def turns(record: Record) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in record.messages]


def reasons(items) -> list[tuple[int | None, str]]:
    return [(item.line, item.reason) for item in items if isinstance(item, Reject)]


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("alpaca.json", "alpaca"),
        ("sharegpt.json", "sharegpt"),
        ("sharegpt_single_object.json", "sharegpt"),
        ("openai.jsonl", "openai"),
        ("oasst_trees.jsonl", "oasst"),
        ("oasst_nested.jsonl", "oasst"),
        ("oasst_flat.jsonl", "oasst"),
        ("belle_multiturn.jsonl", "belle"),
        ("belle_instruction.jsonl", "alpaca"),  # the same shape as Alpaca, converted the same way
        ("belle_conversations.jsonl", "sharegpt"),
        ("firefly.jsonl", "firefly"),
        ("firefly_concatenated.json", "firefly"),
        ("canonical.jsonl", "canonical"),
    ],
)
def test_detection(file_name, expected):
    samples = [raw.data for raw in DataFile(FIXTURES / file_name).records() if isinstance(raw, RawRecord)]
    assert detect_format(samples).format == expected


def test_detection_fails_on_unknown_shapes():
    detection = detect_format([{"dataset_name": {"file_name": "x.json"}}, [1, 2]])
    assert detection.format is None and detection.recognized == 0


def test_alpaca():
    items = convert("alpaca.json", "alpaca")
    records = [item for item in items if isinstance(item, Record)]
    assert turns(records[0]) == [("user", "Translate to French.\nGood morning"), ("assistant", "Bonjour")]
    assert turns(records[1]) == [
        ("system", "You are a careful assistant."),
        ("user", "What is 2 + 2?"),
        ("assistant", "4"),
        ("user", "And times 3?"),
        ("assistant", "12"),
        ("user", "Now subtract 5."),
        ("assistant", "7"),
    ]
    assert turns(records[2]) == [("user", "将日期转换为ISO 8601格式\nNovember 25, 2020"), ("assistant", "")]
    pinned = next(r for r in records if r.messages[0]["content"].startswith("What is the capital"))
    assert pinned.meta == {"split": "test"}
    assert records[-1].lang == "zh" and records[0].lang == "en"
    assert reasons(items) == [(45, "wrong_type"), (51, "missing_field")]
    assert all(item.origin.file == "alpaca.json" for item in records)
    assert records[0].origin.line == 2 and records[0].origin.raw["output"] == "Bonjour"


def test_alpaca_parallel_lists_variant():
    converter = FORMATS["alpaca"]("vicuna", "f.jsonl")
    [record] = converter.feed(RawRecord(1, {"input": ["q1", "q2"], "output": ["a1", "a2"]}))
    assert turns(record) == [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    [reject] = converter.feed(RawRecord(2, {"input": ["q1"], "output": ["a1", "a2"]}))
    assert reject.reason == "bad_dialogue"


def test_sharegpt():
    items = convert("sharegpt.json", "sharegpt")
    records = [item for item in items if isinstance(item, Record)]
    assert records[0].id == "chat_0"
    assert turns(records[0]) == [
        ("user", "Who are you?"),
        ("assistant", "I am an assistant trained to help."),
        ("user", "Have a nice day!"),
        ("assistant", "You too!"),
    ]
    assert turns(records[1]) == [
        ("system", "You can call functions."),
        ("user", "What is the weather in Paris?"),
        ("assistant", ""),
        ("tool", '{"temperature": 21}'),
        ("assistant", "It is 21 degrees in Paris."),
    ]
    # The call and the definitions stay structured (definitions decoded from their JSON string).
    assert records[1].messages[2]["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert records[1].tools[0]["function"]["name"] == "get_weather"
    assert "tools" not in records[1].meta
    assert turns(records[2])[-1] == ("user", "苹果 香蕉 橘子")  # kept here; cleaning rejects it
    assert reasons(items) == [(28, "unknown_role")]


def test_openai():
    converter = FORMATS["openai"]("openai", "openai.jsonl")
    items = []
    for raw in DataFile(FIXTURES / "openai.jsonl").records():
        items.extend(converter.feed(raw) if isinstance(raw, RawRecord) else [])
    records = [item for item in items if isinstance(item, Record)]
    assert turns(records[0]) == [
        ("system", "You are a happy assistant."),
        ("user", "I fell off my bike today."),
        ("assistant", "It's great that you're getting exercise outdoors!"),
    ]
    assert records[1].id == "tool-1"
    assert turns(records[1]) == [
        ("user", "Weather in Rome?"),
        ("assistant", ""),
        ("tool", '{"temperature": 25}'),
        ("assistant", "It is 25 degrees in Rome."),
    ]
    assert records[1].messages[1]["tool_calls"][0]["name"] == "get_weather"
    assert records[1].messages[1]["tool_calls"][0]["arguments"] == {"city": "Rome"}  # decoded from JSON text
    assert records[1].tools == [{"type": "function", "function": {"name": "get_weather"}}]
    assert turns(records[2]) == [("system", "You are a happy assistant."), ("assistant", "You're great!")]
    assert reasons(items) == [(5, "not_an_object"), (6, "misplaced_system")]


def test_belle_multiturn_dialogue():
    items = convert("belle_multiturn.jsonl", "belle")
    assert turns(items[0]) == [
        ("user", "请根据题材「健身房」，写一句话。"),
        ("assistant", "好的：健身房是锻炼身体的好地方。"),
        ("user", "再写一句关于跑步机的。"),
        ("assistant", "跑步机让人在雨天也能坚持跑步。"),
    ]
    assert turns(items[1]) == [
        ("user", "你好"),
        ("assistant", "你好！有什么可以帮您？"),
        ("user", "介绍一下北京。"),
        ("assistant", "北京是中国的首都，历史悠久。"),
    ]
    assert isinstance(items[2], Reject) and items[2].reason == "bad_dialogue"


def test_belle_instruction_and_conversations():
    [first, second] = convert("belle_instruction.jsonl", "belle")
    assert turns(first)[1] == ("assistant", "\n小明每分钟走 2000 ÷ 10 = 200 米。")  # cleaning strips it
    assert turns(second)[0] == ("user", "给定一组时间序列数据，预测未来的值。\n时间序列数据：[10, 15, 20]\n")
    [record] = convert("belle_conversations.jsonl", "belle")
    assert record.id == "66623028"
    assert turns(record) == [("user", "归纳介绍三种不同类型的电影题材"), ("assistant", "动作片、喜剧片和科幻片。")]


def test_firefly():
    items = convert("firefly.jsonl", "firefly")
    assert turns(items[0]) == [
        ("user", "将下面句子翻译成现代文：\n石中央又生一树，高百余尺。"),
        ("assistant", "大石的中央长着一棵树，一百多尺高。"),
    ]
    assert items[0].meta == {"kind": "ClassicalChinese"} and items[0].lang == "zh"
    assert isinstance(items[2], Reject) and items[2].reason == "missing_field"
    assert [turns(r)[1][1] for r in convert("firefly_concatenated.json", "firefly")] == [
        "下联：秋月扬辉",
        "下联：海阔天空",
    ]


def test_canonical_keeps_id_lang_meta_and_pinned_split():
    items = convert("canonical.jsonl", "canonical")
    assert items[0].id == "demo-1" and items[0].lang == "zh" and items[0].meta["split"] == "test"
    assert items[0].source == "canonical" and items[0].meta["original_source"] == "demo"
    assert isinstance(items[2], Reject) and items[2].reason == "invalid_split"


BEST = [
    ("user", "What is the boiling point of water?"),
    ("assistant", "100 degrees Celsius at sea level, less at altitude."),
]
ALL = [
    [
        ("user", "What is the boiling point of water?"),
        ("assistant", "It boils at 100 °C at sea level."),
        ("user", "And on top of Everest?"),
        ("assistant", "About 70 °C, because the air pressure is lower."),
    ],
    BEST,
    [("user", "What is the boiling point of water?"), ("assistant", "I am not sure, maybe 90 degrees?")],
]


@pytest.mark.parametrize("file_name", ["oasst_trees.jsonl", "oasst_nested.jsonl", "oasst_flat.jsonl"])
def test_oasst_best_ranked_path(file_name):
    items = convert(file_name, "oasst")
    trees = {item.meta["message_tree_id"]: item for item in items if isinstance(item, Record)}
    assert sorted(trees) == ["t1", "t3"]
    # Rank 0 (a5) is deleted, so rank 1 (a2) is best; its unanswered follow-up is trimmed.
    assert turns(trees["t1"]) == BEST and trees["t1"].id == "a2"
    # A tree with no reply stays a lone question; cleaning rejects it (not_ending_with_assistant).
    assert turns(trees["t3"]) == [("user", "水的沸点是多少？")] and trees["t3"].lang == "zh"
    rejected = sorted(item.reason for item in items if isinstance(item, Reject))
    if file_name == "oasst_trees.jsonl":
        assert rejected == ["deleted"]
    elif file_name == "oasst_flat.jsonl":
        assert rejected == ["deleted", "orphan_message"]
    else:
        assert rejected == []


@pytest.mark.parametrize("file_name", ["oasst_trees.jsonl", "oasst_flat.jsonl"])
def test_oasst_all_paths(file_name):
    records = [item for item in convert(file_name, "oasst", oasst_all_paths=True) if isinstance(item, Record)]
    threads = [turns(record) for record in records if record.meta["message_tree_id"] == "t1"]
    assert threads == ALL
    assert [r.id for r in records if r.meta["message_tree_id"] == "t1"] == ["a3", "a2", "a4"]


def test_oasst_flat_rows_lines_and_originals():
    items = convert("oasst_flat.jsonl", "oasst")
    orphan = next(item for item in items if isinstance(item, Reject) and item.reason == "orphan_message")
    assert orphan.line == 1 and orphan.original["message_id"] == "z9"
    record = next(item for item in items if isinstance(item, Record) and item.meta["message_tree_id"] == "t1")
    assert record.origin.raw["message_id"] == "p1" and record.origin.line == 12  # a tree is located at its root


def test_oasst_rank_ties_and_nulls():
    replies = [
        {"message_id": "x", "role": "assistant", "text": "unranked", "rank": None},
        {"message_id": "y", "role": "assistant", "text": "second", "rank": 1},
        {"message_id": "z", "role": "assistant", "text": "also second", "rank": 1},
    ]
    tree = {"message_id": "r", "role": "prompter", "text": "q", "replies": replies}
    [record] = FORMATS["oasst"]("o", "f").feed(RawRecord(1, tree))
    assert record.id == "y"


def test_make_record_validates_and_detects_language():
    record = make_record(
        [{"role": "user", "content": "你好吗？"}, {"role": "assistant", "content": "我很好"}], source="s"
    )
    assert record.lang == "zh" and record.id == stable_id("s", record.messages)
    same = make_record(
        [{"role": "user", "content": "你好吗？"}, {"role": "assistant", "content": "我很好"}], source="s"
    )
    other = make_record(
        [{"role": "user", "content": "你好吗？"}, {"role": "assistant", "content": "我很好"}], source="t"
    )
    assert same.id == record.id != other.id
    assert make_record([{"role": "user", "content": "x"}], source="s", split="val").meta == {"split": "validation"}
    with pytest.raises(InvalidRecord) as error:
        make_record([{"role": "narrator", "content": "x"}], source="s")
    assert error.value.reason == "unknown_role"
    with pytest.raises(InvalidRecord) as error:
        make_record([{"role": "user", "content": 3}], source="s")
    assert error.value.reason == "wrong_type"
    with pytest.raises(InvalidRecord) as error:
        make_record([], source="s")
    assert error.value.reason == "empty_conversation"
