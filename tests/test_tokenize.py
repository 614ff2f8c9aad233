"""The loss mask on the real Qwen tokenizer: exactly the assistant contents plus <|im_end|>."""

import pytest

from qwentune.data.tokenize import IGNORE_INDEX, describe_example, encode_conversation, encode_prompt, render

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "你好，介绍一下你自己。"},
    {"role": "assistant", "content": "我是极光，由 Qwentune 实验室开发。"},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
]


def trained_runs(tokenizer, example) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token_id, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            assert label == token_id, "a trained label must be the token itself"
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def test_labels_are_exactly_assistant_contents_and_end_of_turn(qwen_tokenizer):
    example = encode_conversation(qwen_tokenizer, CONVERSATION)
    assert trained_runs(qwen_tokenizer, example) == ["我是极光，由 Qwentune 实验室开发。<|im_end|>", "2 + 2 = 4.<|im_end|>"]
    assert len(example.input_ids) == len(example.labels)


def test_nothing_from_system_or_user_turns_is_trained(qwen_tokenizer):
    example = encode_conversation(qwen_tokenizer, CONVERSATION)
    trained_text = qwen_tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    for message in CONVERSATION:
        if message["role"] != "assistant":
            assert message["content"] not in trained_text
    im_start = qwen_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start not in [t for t in example.labels if t != IGNORE_INDEX]


def test_full_sequence_is_the_chat_template_rendering(qwen_tokenizer):
    example = encode_conversation(qwen_tokenizer, CONVERSATION)
    assert qwen_tokenizer.decode(example.input_ids) == render(qwen_tokenizer, CONVERSATION)


def test_reply_equal_to_user_text_is_found_in_its_own_turn(qwen_tokenizer):
    messages = [
        {"role": "user", "content": "Say: ok"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "ok"},
        {"role": "assistant", "content": "ok"},
    ]
    example = encode_conversation(qwen_tokenizer, messages)
    assert trained_runs(qwen_tokenizer, example) == ["ok<|im_end|>", "ok<|im_end|>"]
    # The second user "ok" sits between the two trained runs and is not trained.
    user_turn = qwen_tokenizer("<|im_start|>user\nok<|im_end|>", add_special_tokens=False)["input_ids"]
    text_ids = example.input_ids
    start = next(i for i in range(len(text_ids)) if text_ids[i : i + len(user_turn)] == user_turn and i > 10)
    assert all(label == IGNORE_INDEX for label in example.labels[start : start + len(user_turn)])


def test_last_turn_only(qwen_tokenizer):
    example = encode_conversation(qwen_tokenizer, CONVERSATION, last_turn_only=True)
    assert trained_runs(qwen_tokenizer, example) == ["2 + 2 = 4.<|im_end|>"]


def test_train_on_prompt_trains_every_token(qwen_tokenizer):
    example = encode_conversation(qwen_tokenizer, CONVERSATION, train_on_prompt=True)
    assert example.labels == example.input_ids


def test_truncation_is_reported(qwen_tokenizer):
    example = encode_conversation(qwen_tokenizer, CONVERSATION, max_length=12)
    assert example.truncated and len(example.input_ids) == 12 and len(example.labels) == 12


def test_qwen3_thinking_is_off_and_consistent_with_inference(qwen_tokenizer):
    """Training renders the final reply after the same empty think block the generation prompt ends with."""
    prompt_text = qwen_tokenizer.decode(encode_prompt(qwen_tokenizer, CONVERSATION[:-1]))
    assert prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    full_text = render(qwen_tokenizer, CONVERSATION)
    assert full_text.startswith(prompt_text)
    assert full_text[len(prompt_text):] == "2 + 2 = 4.<|im_end|>\n"


def test_qwen2_style_template_without_think_block(tmp_path, qwen_tokenizer):
    """A ChatML template without thinking support (Qwen2.5) masks the same way."""
    from transformers import AutoTokenizer

    qwen_tokenizer.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.chat_template = (
        "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    example = encode_conversation(tokenizer, CONVERSATION)
    assert trained_runs(tokenizer, example) == ["我是极光，由 Qwentune 实验室开发。<|im_end|>", "2 + 2 = 4.<|im_end|>"]


def test_describe_example_marks_trained_spans(qwen_tokenizer):
    text = describe_example(qwen_tokenizer, encode_conversation(qwen_tokenizer, CONVERSATION))
    assert "⟦2 + 2 = 4.<|im_end|>⟧" in text
    assert "⟦You are" not in text


def test_unrendered_reply_is_an_error(qwen_tokenizer):
    tokenizer = qwen_tokenizer
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
        with pytest.raises(ValueError, match="did not render an assistant message"):
            encode_conversation(tokenizer, CONVERSATION)
    finally:
        tokenizer.chat_template = original
