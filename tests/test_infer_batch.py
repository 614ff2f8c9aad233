"""Batch mode: answers in input order, bad lines skipped, interrupted runs resumed."""

from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, write_jsonl

from qwentune.cli import main
from qwentune.errors import RunFailed
from qwentune.infer.batch import answer_file
from qwentune.infer.engine import QwenInference
from qwentune.infer.settings import GenerationSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = GenerationSettings(max_new_tokens=4)
QUESTIONS = [
    "hi",
    "What is the capital of France?",
    "1+1=?",
    "请介绍一下你自己。",
    "Name a colour.",
    "Why is the sky blue?",
    "ok",
]


@pytest.fixture(scope="module")
def engine(varied_model):
    return QwenInference(str(varied_model))


@pytest.fixture(scope="module")
def expected(engine) -> dict[str, str]:
    return dict(zip(QUESTIONS, engine.batch_generate(QUESTIONS, max_new_tokens=4)))


class Interrupted(Exception):
    pass


def printed(capsys) -> str:
    """What the console printed, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().out.split())


def interrupt_after(engine, monkeypatch, batches: int) -> list[int]:
    """Make the engine fail after `batches` batches (a killed run); returns the sizes of the batches generated."""
    real, calls = engine.batch_respond, []

    def flaky(prompts, **kwargs):
        if len(calls) == batches:
            raise Interrupted
        calls.append(len(prompts))
        return real(prompts, **kwargs)

    monkeypatch.setattr(engine, "batch_respond", flaky)
    return calls


def test_text_in_text_out_keeps_the_order(engine, expected, tmp_path):
    source = tmp_path / "questions.txt"
    source.write_text("\n".join(QUESTIONS[:3]) + "\n\n" + "\n".join(QUESTIONS[3:]) + "\n", encoding="utf-8")
    assert answer_file(engine, str(source), str(tmp_path / "answers.txt"), SETTINGS, batch_size=3) == 0
    lines = (tmp_path / "answers.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [expected[q].replace("\n", "\\n") for q in QUESTIONS]
    assert not (tmp_path / "answers.txt.progress.json").exists()


def test_jsonl_records_with_prompts_or_messages_and_bad_lines(engine, expected, tmp_path, capsys):
    source = tmp_path / "questions.jsonl"
    lines = [
        json.dumps({"id": "a", "prompt": QUESTIONS[0]}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": QUESTIONS[1]}]}),
        json.dumps({"question": "no prompt key"}),
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps(["a list"]),
        json.dumps({"id": 7, "prompt": QUESTIONS[2]}),
    ]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "answers.jsonl"
    assert answer_file(engine, str(source), str(output), SETTINGS, batch_size=2) == 0
    records = read_jsonl(output)
    assert [(r["line"], r.get("id"), r["answer"]) for r in records] == [
        (1, "a", expected[QUESTIONS[0]]),
        (3, None, expected[QUESTIONS[1]]),
        (7, "7", expected[QUESTIONS[2]]),
    ]
    shown = printed(capsys)
    for number in (2, 4, 5, 6):
        assert f"line {number}:" in shown
    assert "4 bad lines skipped" in shown


def test_a_prompt_too_long_for_the_context_is_skipped(engine, tmp_path, capsys):
    source = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "word " * engine.context_length}, {"prompt": "hi"}])
    assert answer_file(engine, str(source), str(tmp_path / "a.jsonl"), SETTINGS) == 0
    assert [r["line"] for r in read_jsonl(tmp_path / "a.jsonl")] == [2]
    assert "line 1: the prompt has" in printed(capsys)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_an_interrupted_run_resumes_where_it_stopped(suffix, engine, expected, tmp_path, monkeypatch):
    source = tmp_path / "questions.txt"
    source.write_text("\n".join(QUESTIONS) + "\n", encoding="utf-8")
    output = tmp_path / f"answers{suffix}"
    interrupt_after(engine, monkeypatch, batches=2)
    with pytest.raises(Interrupted):
        answer_file(engine, str(source), str(output), SETTINGS, batch_size=2)
    with output.open("a", encoding="utf-8") as handle:
        handle.write('{"line": 5, "answ')  # a write cut short by the kill
    monkeypatch.undo()
    calls = interrupt_after(engine, monkeypatch, batches=99)
    assert answer_file(engine, str(source), str(output), SETTINGS, batch_size=2) == 0
    assert calls == [2, 1]  # only the 3 prompts left were generated
    if suffix == ".jsonl":
        assert [(r["line"], r["answer"]) for r in read_jsonl(output)] == [
            (i + 1, expected[q]) for i, q in enumerate(QUESTIONS)
        ]
    else:
        assert output.read_text(encoding="utf-8").splitlines() == [expected[q] for q in QUESTIONS]
    # Run again once complete: a fresh run replaces the answers, nothing is duplicated.
    assert answer_file(engine, str(source), str(output), SETTINGS, batch_size=4) == 0
    assert len(output.read_text(encoding="utf-8").splitlines()) == len(QUESTIONS)


def test_a_progress_record_of_another_input_is_refused(engine, tmp_path, monkeypatch, capsys):
    output = tmp_path / "answers.jsonl"
    first = tmp_path / "first.txt"
    first.write_text("hi\nho\nhu\n", encoding="utf-8")
    interrupt_after(engine, monkeypatch, batches=1)
    with pytest.raises(Interrupted):
        answer_file(engine, str(first), str(output), SETTINGS, batch_size=1)
    monkeypatch.undo()
    second = tmp_path / "second.txt"
    second.write_text("other\n", encoding="utf-8")
    with pytest.raises(RunFailed, match="different input"):
        answer_file(engine, str(second), str(output), SETTINGS)


def test_the_command_line_answers_a_file_and_one_prompt(varied_model, expected, tmp_path, capsys):
    source = tmp_path / "questions.txt"
    source.write_text("\n".join(QUESTIONS[:2]) + "\n", encoding="utf-8")
    args = ["infer", "--model_path", str(varied_model), "--max_length", "4"]
    assert main([*args, "--input_file", str(source), "--output_file", str(tmp_path / "a.txt")]) == 0
    assert (tmp_path / "a.txt").read_text(encoding="utf-8").splitlines() == [expected[q] for q in QUESTIONS[:2]]
    capsys.readouterr()
    assert main([*args, "--input", QUESTIONS[0]]) == 0
    assert capsys.readouterr().out.rstrip("\n").endswith(expected[QUESTIONS[0]])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--input_file", "q.txt"], "--input_file needs --output_file"),
        (["--input", "hi", "--temperature", "-1"], "--temperature: Input should be greater than or equal to 0"),
        (["--input", "hi", "--max_length", "0"], "--max_length: Input should be greater than or equal to 1"),
        (["--input", "hi", "--top_p", "2"], "--top_p: Input should be less than or equal to 1"),
    ],
)
def test_the_command_line_refuses_bad_options_before_loading(extra, message, capsys):
    assert main(["infer", "--model_path", "./not/loaded", *extra]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
