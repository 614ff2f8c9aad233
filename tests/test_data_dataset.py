"""Training-side tokenizing (`qwentune.data.dataset`): the same examples whatever the number of processes."""

from __future__ import annotations

import random

from conftest import write_jsonl
from test_train_recipe import conversation

from qwentune.config.base import load_config
from qwentune.config.training import TrainConfig
from qwentune.data.dataset import MIN_RECORDS_PER_WORKER, encode_records
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
