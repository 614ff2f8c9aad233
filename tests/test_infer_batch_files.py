"""Batch inference never destroys its input, and a line that is not UTF-8 is one skipped line."""

from __future__ import annotations

import json
import os

import pytest
from conftest import read_jsonl

from qwentune.cli import main
from qwentune.infer.batch import answer_file, read_prompts
from qwentune.infer.engine import QwenInference
from qwentune.infer.settings import GenerationSettings

PROMPTS = [{"prompt": "hi"}, {"prompt": "What is the capital of France?"}]


def write_prompts(path):
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    return path.read_bytes()


@pytest.mark.parametrize("how", ["same path", "relative path", "symlink", "hard link"])
def test_output_file_that_is_the_input_file_is_refused_before_loading(tmp_path, monkeypatch, capsys, how):
    source = tmp_path / "prompts.jsonl"
    before = write_prompts(source)
    monkeypatch.chdir(tmp_path)
    output = {"same path": source, "relative path": "./sub/../prompts.jsonl"}.get(how)
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        output = tmp_path / "answers.jsonl"
        output.symlink_to(source)
    elif how == "hard link":
        output = tmp_path / "answers.jsonl"
        os.link(source, output)
    # The model does not exist: the refusal comes first, without loading anything.
    code = main(
        ["infer", "--model_path", str(tmp_path / "no-model"), "--input_file", str(source), "--output_file", str(output)]
    )
    assert code == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "is the input file" in error and "would overwrite the prompts" in error
    assert source.read_bytes() == before


def test_a_line_that_is_not_utf8_is_reported_and_skipped(tmp_path):
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(
        b'\xef\xbb\xbf{"prompt": "first"}\n{"prompt": "caf\xe9 latin-1"}\n{"prompt": "third"}\nhi \xff\xfe\n'
    )
    prompts, problems = read_prompts(source)
    assert [(p.line, p.prompt) for p in prompts] == [(1, "first"), (3, "third")]
    assert problems == [
        "line 2: not valid UTF-8 (byte 0xe9 at column 16)",
        "line 4: not valid UTF-8 (byte 0xff at column 4)",
    ]
    text = tmp_path / "prompts.txt"
    text.write_bytes(b"one\n\x80two\nthree\n")
    prompts, problems = read_prompts(text)
    assert [p.prompt for p in prompts] == ["one", "three"] and problems == [
        "line 2: not valid UTF-8 (byte 0x80 at column 1)"
    ]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_batch_run_over_a_file_with_bad_bytes_completes(varied_model, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(b'{"prompt": "hi"}\n{"prompt": "\xc3\x28"}\n{"prompt": "ok"}\n')
    output = tmp_path / "answers.jsonl"
    engine = QwenInference(str(varied_model))
    assert answer_file(engine, str(source), str(output), GenerationSettings(max_new_tokens=2)) == 0
    assert [r["line"] for r in read_jsonl(output)] == [1, 3]
    shown = " ".join(capsys.readouterr().out.split())
    assert "line 2: not valid UTF-8" in shown and "1 bad lines skipped" in shown
