"""Preference data: every input shape becomes the canonical pair (or KTO) record, bad pairs become rejects."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import read_jsonl, write_jsonl
from test_data_download import COMMIT, FakeHub, _parquet, run_door

from qwentune.config.preprocess import PreprocessConfig
from qwentune.data.formats import FORMATS, detect_format
from qwentune.data.preprocess import run_preprocess
from qwentune.data.readers import RawRecord
from qwentune.data.record import Record, Reject


def convert(format_name: str, data: dict) -> Record | Reject:
    (item,) = list(FORMATS[format_name]("prefs", "file.jsonl").feed(RawRecord(line=7, data=data)))
    return item


def user(text):
    return {"role": "user", "content": text}


def reply(text):
    return {"role": "assistant", "content": text}


ALPACA = {"instruction": "Name a colour", "input": "one word", "chosen": "Blue", "rejected": "A dog", "system": "Be brief"}
CHINESE = {"prompt": "天空是什么颜色？", "chosen": "天空是蓝色的。", "rejected": "The sky is blue."}
SHAREGPT = {
    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "2+2?"}],
    "chosen": {"from": "gpt", "value": "4"},
    "rejected": {"from": "gpt", "value": "5"},
}
ULTRAFEEDBACK = {
    "prompt": "Name a fruit",
    "prompt_id": "abc123",
    "chosen": [user("Name a fruit"), reply("Apple")],
    "rejected": [user("Name a fruit"), reply("Chair")],
    "score_chosen": 9.0,
    "score_rejected": 1.0,
}
HH = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for 8 minutes.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?\n\nAssistant: Why would you?",
}
KTO = {"messages": [user("Capital of France?"), reply("Paris")], "label": True}


@pytest.mark.parametrize(
    ("format_name", "data", "prompt", "chosen", "rejected"),
    [
        ("pairwise", ALPACA, [{"role": "system", "content": "Be brief"}, user("Name a colour\none word")], "Blue", "A dog"),
        ("pairwise", CHINESE, [user("天空是什么颜色？")], "天空是蓝色的。", "The sky is blue."),
        ("sharegpt_pairwise", SHAREGPT, [user("Hi"), reply("Hello"), user("2+2?")], "4", "5"),
        ("messages_pairwise", ULTRAFEEDBACK, [user("Name a fruit")], "Apple", "Chair"),
        ("hh_rlhf", HH, [user("Hi"), reply("Hello!"), user("How do I boil an egg?")], "Simmer it for 8 minutes.", "Why would you?"),
    ],
)
def test_each_pair_shape_converts_and_is_detected(format_name, data, prompt, chosen, rejected):
    assert detect_format([data]).format == format_name
    record = convert(format_name, data)
    assert isinstance(record, Record), record
    assert (record.kind, record.messages, record.chosen, record.rejected) == ("pair", prompt, reply(chosen), reply(rejected))
    assert record.origin.line == 7
    # Written and read back as our own canonical pair record, it converts to the same pair.
    written = record.to_dict()
    assert list(written) == ["id", "source", "lang", "messages", "chosen", "rejected", "meta"]
    assert detect_format([written]).format == "messages_pairwise"
    again = convert("messages_pairwise", written)
    assert (again.id, again.messages, again.chosen, again.rejected, again.lang) == (
        record.id, record.messages, record.chosen, record.rejected, record.lang
    )


def test_languages_and_ids():
    assert convert("pairwise", CHINESE).lang == "zh"
    assert convert("messages_pairwise", ULTRAFEEDBACK).id == "abc123"
    # Without an id, the content id covers the rejected side too: two pairs differing only there differ.
    other = convert("pairwise", {**ALPACA, "rejected": "A cat"})
    assert convert("pairwise", ALPACA).id != other.id


def test_kto_shapes():
    record = convert("kto", KTO)
    assert (record.kind, record.messages, record.completion, record.label) == ("kto", [user("Capital of France?")], reply("Paris"), True)
    assert detect_format([KTO]).format == "kto"
    argilla = {"prompt": "Capital of Italy?", "completion": "Rome", "label": False}
    record = convert("kto", argilla)
    assert (record.messages, record.completion, record.label) == ([user("Capital of Italy?")], reply("Rome"), False)
    assert list(record.to_dict()) == ["id", "source", "lang", "messages", "completion", "label", "meta"]


@pytest.mark.parametrize(
    ("format_name", "data", "reason", "detail"),
    [
        ("pairwise", {**ALPACA, "rejected": "   "}, "empty_reply", "the rejected reply is empty"),
        ("pairwise", {**ALPACA, "chosen": None}, "wrong_type", "the chosen reply is a NoneType, not text"),
        ("messages_pairwise", {**ULTRAFEEDBACK, "rejected": [user("Name a car"), reply("Ford")]}, "prompt_mismatch",
         "the chosen and rejected sides differ in prompt turn 0"),
        ("messages_pairwise", {**ULTRAFEEDBACK, "prompt": "Something else"}, "prompt_mismatch",
         "the chosen and rejected sides differ in prompt turn 0"),
        ("hh_rlhf", {**HH, "rejected": HH["rejected"].replace("boil", "fry")}, "prompt_mismatch",
         "the chosen and rejected sides differ in prompt turn 2"),
        ("hh_rlhf", {**HH, "chosen": "\n\nHuman: Hi"}, "bad_reply", "the chosen conversation does not end with an assistant turn"),
        ("sharegpt_pairwise", {**SHAREGPT, "chosen": {"from": "human", "value": "4"}}, "unknown_role",
         "the chosen turn is from 'human', not gpt/assistant"),
        ("sharegpt_pairwise", {**SHAREGPT, "conversations": SHAREGPT["conversations"][:2]}, "bad_prompt",
         "the prompt ends with a assistant turn, not a user turn"),
        ("kto", {**KTO, "label": "yes"}, "wrong_type", "'label' must be true or false (desirable or not); got 'yes'"),
    ],
)
def test_bad_pairs_are_rejects_with_a_reason(format_name, data, reason, detail):
    item = convert(format_name, data)
    assert isinstance(item, Reject)
    assert (item.reason, item.detail, item.line, item.original) == (reason, detail, 7, data)


@pytest.fixture
def preference_folder(tmp_path):
    raw = tmp_path / "raw" / "prefs"
    raw.mkdir(parents=True)
    pairs = [{**ALPACA, "instruction": f"Name colour number {i}", "chosen": f"Blue {i}"} for i in range(20)]
    pairs.append({**ALPACA, "instruction": "identical", "chosen": "Same  text", "rejected": "Same text"})
    pairs.append({**ALPACA, "instruction": "long rejected", "rejected": "word " * 300})
    pairs.append({**ALPACA, "instruction": "bad", "chosen": "Fine \ufffd"})
    pairs.append({**ALPACA, "instruction": "Name colour number 3", "chosen": "Blue 3"})  # duplicate of pair 3
    (raw / "alpaca_pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    write_jsonl(raw / "hh.jsonl", [HH])
    write_jsonl(raw / "uf.jsonl", [ULTRAFEEDBACK, {**ULTRAFEEDBACK, "prompt_id": "x", "prompt": "Other"}])
    return tmp_path


def test_preprocess_keeps_pairs_whole_and_rejects_bad_ones(preference_folder):
    config = PreprocessConfig(
        input_dir=preference_folder / "raw",
        output_dir=preference_folder / "out",
        max_length=200,
        min_length=1,
        num_workers=0,
        show_example=False,
        ratios={"train": 0.6, "validation": 0.2, "test": 0.2},
    )
    report = run_preprocess(config)
    out = preference_folder / "out"
    splits = {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "validation", "test")}
    rejects = read_jsonl(out / "rejects.jsonl")
    reasons = sorted(r["reason"] for r in rejects)
    # The long one: its chosen side is short, but the length filter counts the longer (rejected) side.
    assert reasons == ["broken_encoding", "duplicate", "identical_pair", "prompt_mismatch", "too_long"]
    detail = {r["reason"]: r["detail"] for r in rejects}
    assert detail["broken_encoding"].startswith("chosen reply: assistant text holds U+FFFD")
    assert int(detail["too_long"].split()[0]) > 300
    kept = [record for split in splits.values() for record in split]
    assert len(kept) == 20 + 1 + 1  # 20 Alpaca pairs, HH, UltraFeedback
    assert all(set(record) == {"id", "source", "lang", "messages", "chosen", "rejected", "meta"} for record in kept)
    totals = report.stats["total"] if "total" in report.stats else None
    assert totals is None or totals["rejected"] == len(rejects)
    # A pair never splits: each id is in one split only, with both sides.
    ids = [record["id"] for record in kept]
    assert len(ids) == len(set(ids))


def test_registry_preference_datasets_download_from_the_hub(tmp_path):
    hh_lines = "".join(json.dumps(HH) + "\n" for _ in range(3)).encode()
    zh_pairs = [{"conversations": [{"from": "human", "value": f"问题 {i}"}], "chosen": {"from": "gpt", "value": f"回答 {i}"},
                 "rejected": {"from": "gpt", "value": f"answer {i}"}} for i in range(4)]
    with FakeHub() as hub:
        hub.repos["Anthropic/hh-rlhf"] = {
            "helpful-base/train.jsonl.gz": gzip.compress(hh_lines),
            "helpful-base/test.jsonl.gz": gzip.compress(hh_lines[: len(hh_lines) // 3]),
        }
        hub.repos["llamafactory/DPO-En-Zh-20k"] = {"dpo_zh.json": json.dumps(zh_pairs, ensure_ascii=False).encode()}
        hub.repos["HuggingFaceH4/ultrafeedback_binarized"] = {
            "data/train_prefs-00000-of-00001.parquet": _parquet([ULTRAFEEDBACK]),
            "data/test_prefs-00000-of-00001.parquet": _parquet([ULTRAFEEDBACK]),
        }
        done = run_door(tmp_path, hub.url, "--datasets", "hh_rlhf", "dpo_zh", "ultrafeedback_binarized")
    assert done.returncode == 0, done.stderr
    raw = tmp_path / "raw"
    assert (raw / "hh_rlhf" / "train.jsonl.gz").is_file()
    assert COMMIT in json.loads((raw / "dpo_zh" / "source.json").read_text())["files"][0]["origin"]
    report = run_preprocess(PreprocessConfig(input_dir=raw, output_dir=tmp_path / "out", min_length=1, num_workers=0, show_example=False))
    kept = [r for name in ("train", "validation", "test") for r in read_jsonl(tmp_path / "out" / f"{name}.jsonl")]
    by_source = {source: [r for r in kept if r["source"] == source] for source in ("hh_rlhf", "dpo_zh", "ultrafeedback_binarized")}
    # HH's 4 lines are one pair 4 times (3 duplicates); the 4 Chinese pairs are all kept, in Chinese.
    assert [len(by_source[s]) for s in by_source] == [1, 4, 1]
    assert {r["lang"] for r in by_source["dpo_zh"]} == {"zh"}
    assert report.exit_code == 0
