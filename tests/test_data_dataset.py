"""Training-side data (`qwentune.data.dataset`): the same examples whatever the number of tokenizing
processes; a missing or damaged processed file is one clear error."""

from __future__ import annotations

import json
import random

import pytest
from conftest import write_jsonl
from test_train_recipe import conversation

from qwentune.cli import main
from qwentune.config.base import load_config
from qwentune.config.training import TrainConfig
from qwentune.data.dataset import MIN_RECORDS_PER_WORKER, encode_records, read_canonical
from qwentune.errors import RunFailed
from qwentune.train.recipe import load_splits


def records(count: int) -> list[dict]:
    rng = random.Random(0)
    return [conversation(rng, i) for i in range(count)]


def test_workers_tokenize_exactly_what_one_process_does(qwen_tokenizer):
    data = records(2 * MIN_RECORDS_PER_WORKER + 7)
    data[5]["messages"] = [{"role": "user", "content": "a question without an answer"}]  # nothing to train
    options = dict(max_length=36, system_prompt="Be brief.")
    alone = encode_records(data, qwen_tokenizer, **options)
    shared = encode_records(data, qwen_tokenizer, num_workers=2, **options)
    assert (alone.workers, shared.workers) == (1, 2)
    assert [e.input_ids for e in shared.examples] == [e.input_ids for e in alone.examples]
    assert [e.labels for e in shared.examples] == [e.labels for e in alone.examples]
    assert shared.truncated == alone.truncated > 0
    assert shared.without_targets == alone.without_targets == [str(data[5]["id"])]


def test_a_small_split_is_not_worth_a_second_process(qwen_tokenizer):
    assert encode_records(records(MIN_RECORDS_PER_WORKER - 1), qwen_tokenizer, max_length=64, num_workers=4).workers == 1


def test_training_reads_preprocessing_num_workers(tmp_path, qwen_tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", records(2 * MIN_RECORDS_PER_WORKER))
    config = load_config(
        TrainConfig, None, [f"data.train_file={train}", "data.validation_file=null", "data.preprocessing_num_workers=2"]
    )
    split, _ = load_splits(config, qwen_tokenizer)
    assert split.workers == 2 and len(split.examples) == 2 * MIN_RECORDS_PER_WORKER


def test_a_damaged_line_of_a_processed_file_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps(records(1)[0])
    for line, problem in [(b"{not json\n", "is not JSON"), (b'{"id": "\xff"}\n', "is not UTF-8 text"), (b"[1, 2]\n", "is not a record")]:
        path.write_bytes(f"{good}\n\n".encode() + line)
        with pytest.raises(RunFailed, match=f"{path} line 3 {problem}"):
            read_canonical(path)


def test_training_without_its_data_file_is_a_usage_error(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{train_file: {tmp_path / 'none.jsonl'}}}\nmodel: {{model_name_or_path: embedded:qwen-tokenizer}}\n")
    assert main(["train", "--config", str(config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: data file not found: {tmp_path / 'none.jsonl'} run preprocessing first" in err
