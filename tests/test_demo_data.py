"""Checks on the hand-written demo data in src/qwentune/data/demo (pure JSON, no models)."""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from qwentune.data.lang import detect_lang

DEMO = Path(__file__).resolve().parents[1] / "src" / "qwentune" / "data" / "demo"
IDENTITY = "identity.json"
ALPACA = "instructions_alpaca.json"
SHAREGPT = "instructions_conversations.json"
NAMES = ("Aurora", "极光")
NEAR_DUP = 0.8


def load(name: str) -> list:
    with open(DEMO / name, encoding="utf-8") as f:
        return json.load(f)


def norm(text: str) -> str:
    """Lower-case, collapse whitespace, strip end punctuation: what a paraphrase check compares."""
    return " ".join(text.lower().split()).strip(" ?？!！.。,，~")


def user_text(rec: dict) -> str:
    return (rec["instruction"] + "\n" + rec.get("input", "")).strip()


def first_human(conv: dict) -> str:
    return next(t["value"] for t in conv["conversations"] if t["from"] == "human")


def size(text: str) -> int:
    """Words for English, CJK characters for Chinese."""
    if detect_lang(text) == "zh":
        return len(re.findall(r"[\u4e00-\u9fff]", text))
    return len(text.split())


@pytest.fixture(scope="module")
def identity() -> list:
    return load(IDENTITY)


@pytest.fixture(scope="module")
def alpaca() -> list:
    return load(ALPACA)


@pytest.fixture(scope="module")
def sharegpt() -> list:
    return load(SHAREGPT)


# --------------------------------------------------------------------------- all files


@pytest.mark.parametrize("name", [IDENTITY, ALPACA, SHAREGPT])
def test_file_parses_as_list_of_objects(name):
    data = load(name)
    assert isinstance(data, list) and data
    assert all(isinstance(r, dict) for r in data)


@pytest.mark.parametrize("name", [IDENTITY, ALPACA])
def test_alpaca_records_well_formed(name):
    allowed = {"instruction", "input", "output", "system", "history", "split"}
    for i, r in enumerate(load(name)):
        assert set(r) <= allowed, (i, set(r) - allowed)
        for key in ("instruction", "input", "output"):
            assert isinstance(r[key], str), (i, key)
        assert r["instruction"].strip(), i
        assert r["output"].strip(), i
        if "system" in r:
            assert isinstance(r["system"], str) and r["system"].strip(), i
        for pair in r.get("history", []):
            assert isinstance(pair, list) and len(pair) == 2, i
            assert all(isinstance(x, str) and x.strip() for x in pair), i


@pytest.mark.parametrize("name", [IDENTITY, ALPACA])
def test_no_duplicate_alpaca_prompts(name):
    data = load(name)
    keys = Counter((norm(r["instruction"]), r.get("input", "").strip()) for r in data)
    assert [k for k, n in keys.items() if n > 1] == []


def test_only_identity_pins_a_split(alpaca, sharegpt):
    assert not any("split" in r for r in alpaca)
    assert not any("split" in c for c in sharegpt)


def test_files_are_utf8_not_ascii_escaped():
    for name in (IDENTITY, ALPACA, SHAREGPT):
        raw = (DEMO / name).read_text(encoding="utf-8")
        assert "\\u4" not in raw and "\\u5" not in raw, name  # CJK kept as characters


# --------------------------------------------------------------------------- identity


def test_identity_counts_per_language_and_split(identity):
    counts = Counter((detect_lang(user_text(r)), r.get("split", "train")) for r in identity)
    assert 50 <= counts["en", "train"] <= 70, counts
    assert 50 <= counts["zh", "train"] <= 70, counts
    assert 10 <= counts["en", "test"] <= 20, counts
    assert 10 <= counts["zh", "test"] <= 20, counts
    assert set(k[1] for k in counts) == {"train", "test"}


def test_identity_split_values(identity):
    for r in identity:
        assert r.get("split", "test") == "test"  # only held-out records carry split, always "test"


def test_every_identity_answer_names_the_assistant(identity):
    for r in identity:
        assert any(n in r["output"] for n in NAMES), r["instruction"]


def test_identity_answers_match_question_language_and_are_short(identity):
    for r in identity:
        lang = detect_lang(r["instruction"])
        assert r["input"] == ""
        assert detect_lang(r["output"]) == lang, r["instruction"]
        limit = 40 if lang == "en" else 60
        assert size(r["output"]) <= limit, r["output"]


def test_identity_never_claims_the_old_identity(identity, alpaca, sharegpt):
    answers = [r["output"] for r in identity + alpaca]
    answers += [t["value"] for c in sharegpt for t in c["conversations"] if t["from"] == "gpt"]
    bad = re.compile(r"I'?m SmolLM|I am SmolLM|我是 ?SmolLM|trained by Hugging Face", re.I)
    assert [a for a in answers if bad.search(a)] == []


def test_held_out_questions_are_not_in_training(identity, alpaca, sharegpt):
    held_out = [r["instruction"] for r in identity if r.get("split") == "test"]
    training = [r["instruction"] for r in identity if "split" not in r]
    training += [r["instruction"] for r in alpaca]
    training += [h[0] for r in alpaca for h in r.get("history", [])]
    training += [t["value"] for c in sharegpt for t in c["conversations"] if t["from"] == "human"]
    training_norm = [norm(t) for t in training]
    assert not set(map(norm, held_out)) & set(training_norm)
    for q in held_out:
        matcher = difflib.SequenceMatcher(None, "", norm(q))  # b is cached: the held-out question
        for t in training_norm:
            matcher.set_seq1(t)
            assert matcher.ratio() < NEAR_DUP, (q, t)


# --------------------------------------------------------------------------- general Alpaca


def test_alpaca_counts_and_language_mix(alpaca):
    assert 180 <= len(alpaca) <= 230
    langs = Counter(detect_lang(user_text(r)) for r in alpaca)
    assert set(langs) == {"en", "zh"}
    assert 0.35 <= langs["zh"] / len(alpaca) <= 0.65, langs


def test_alpaca_feature_mix(alpaca):
    with_history = [r for r in alpaca if r.get("history")]
    assert 5 <= len(with_history) <= 10
    assert {detect_lang(r["instruction"]) for r in with_history} == {"en", "zh"}
    assert 3 <= sum("system" in r for r in alpaca) <= 15
    with_input = sum(bool(r["input"].strip()) for r in alpaca)
    assert 20 <= with_input < len(alpaca) / 2  # some use input, most don't


def test_alpaca_answers_are_short(alpaca):
    long = [r["output"][:40] for r in alpaca
            if size(r["output"]) > (80 if detect_lang(r["output"]) == "en" else 120)]
    assert len(long) <= len(alpaca) // 20, long


# --------------------------------------------------------------------------- ShareGPT


def test_sharegpt_counts_and_language_mix(sharegpt):
    assert 70 <= len(sharegpt) <= 100
    langs = Counter(detect_lang(first_human(c)) for c in sharegpt)
    assert set(langs) == {"en", "zh"}
    assert 0.35 <= langs["zh"] / len(sharegpt) <= 0.65, langs


def test_sharegpt_structure(sharegpt):
    turns_seen = Counter()
    for i, c in enumerate(sharegpt):
        assert set(c) == {"conversations"}, i
        conv = c["conversations"]
        for t in conv:
            assert set(t) == {"from", "value"}, i
            assert isinstance(t["value"], str) and t["value"].strip(), i
        roles = [t["from"] for t in conv]
        if roles and roles[0] == "system":
            roles = roles[1:]
        assert roles and len(roles) % 2 == 0, (i, roles)
        assert roles == ["human", "gpt"] * (len(roles) // 2), (i, roles)
        assert roles[-1] == "gpt"
        turns_seen[len(roles) // 2] += 1
    assert set(turns_seen) <= {1, 2, 3}
    assert turns_seen[1] and (turns_seen[2] + turns_seen[3]), turns_seen
    assert any(c["conversations"][0]["from"] == "system" for c in sharegpt)


def test_sharegpt_no_duplicates(sharegpt):
    firsts = Counter(norm(first_human(c)) for c in sharegpt)
    assert [k for k, n in firsts.items() if n > 1] == []


def test_sharegpt_has_identity_consistent_turns(sharegpt):
    identity_turns = [t["value"] for c in sharegpt for t in c["conversations"]
                      if t["from"] == "gpt" and any(n in t["value"] for n in NAMES)]
    assert len(identity_turns) >= 4
    langs = {detect_lang(first_human(c)) for c in sharegpt
             if any(n in t["value"] for t in c["conversations"] if t["from"] == "gpt" for n in NAMES)}
    assert langs == {"en", "zh"}


# --------------------------------------------------------------------------- README


def test_readme_lists_each_file_with_its_count(identity, alpaca, sharegpt):
    readme = (DEMO / "README.md").read_text(encoding="utf-8")
    for name, data in ((IDENTITY, identity), (ALPACA, alpaca), (SHAREGPT, sharegpt)):
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}`")]
        assert rows, name
        assert f"| {len(data)} |" in rows[0], (name, len(data))
    assert "Apache" in readme


def test_preference_demo_pairs_are_balanced_held_out_and_distinct():
    """The DPO demo's pairs: per language and category the counts the docs state, 30 held out, no
    held-out question close to a training one, every pair's sides different, meta.lang right."""
    pairs = load("preference_honesty.json")
    counts = Counter((p["meta"]["lang"], p["meta"]["category"], p.get("split", "-")) for p in pairs)
    assert counts == {
        ("en", "unknowable", "-"): 45, ("en", "unknowable", "test"): 10, ("en", "knowable", "-"): 45,
        ("en", "knowable", "test"): 10, ("zh", "unknowable", "-"): 25, ("zh", "unknowable", "test"): 5,
        ("zh", "knowable", "-"): 25, ("zh", "knowable", "test"): 5,
    }
    assert len({p["id"] for p in pairs}) == len({norm(p["instruction"]) for p in pairs}) == len(pairs)
    assert all(p["chosen"].strip() and p["rejected"].strip() and p["chosen"] != p["rejected"] for p in pairs)
    assert all(detect_lang(user_text(p)) == p["meta"]["lang"] for p in pairs)
    held_out = [norm(p["instruction"]) for p in pairs if p.get("split") == "test"]
    train = [norm(p["instruction"]) for p in pairs if p.get("split") != "test"]
    closest = max(difflib.SequenceMatcher(None, h, t).ratio() for h in held_out for t in train)
    assert closest < NEAR_DUP
