"""`--debug`: a few samples, a few steps, in a separate folder, with checks that the data trains what it should."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from qwentune.config.training import TrainConfig
from qwentune.data.tokenize import IGNORE_INDEX, end_of_turn_token

if TYPE_CHECKING:  # data.dataset imports torch; `train --help` reads this module for DEBUG_SAMPLES
    from qwentune.data.dataset import EncodedSplit

DEBUG_SAMPLES = 16
DEBUG_STEPS = 4


def debug_config(config: TrainConfig) -> TrainConfig:
    """The config of a debug run; it writes under <output_dir>/debug so a trained model is never overwritten."""
    from qwentune.train.plan import with_overrides

    training = config.training
    return with_overrides(
        config,
        [
            f"data.max_samples={DEBUG_SAMPLES}",
            f"data.max_eval_samples={DEBUG_SAMPLES}",
            f"training.max_steps={DEBUG_STEPS}",
            "training.logging_steps=1",
            f"training.output_dir={Path(training.output_dir) / 'debug'}",
            f"training.logging_dir={Path(training.logging_dir) / 'debug'}",
        ],
    )


def _spread(values: list[int]) -> str:
    return f"min {min(values)}, median {statistics.median(values):g}, max {max(values)}"


def label_statistics(split: EncodedSplit) -> list[str]:
    trained = [e.num_trained_tokens for e in split.examples]
    return [
        f"examples: {len(split.examples)} kept, {split.truncated} truncated, {len(split.without_targets)} dropped without trained tokens",
        f"tokens per example: {_spread(split.lengths)}",
        f"trained tokens per example: {_spread(trained)}",
        f"trained share of all tokens: {100 * split.trained_tokens / max(split.tokens, 1):.1f}%",
    ]


def label_problems(split: EncodedSplit, tokenizer, train_on_prompt: bool = False) -> list[str]:
    """What is wrong with the labels: a label that is not its token, or trained text that does not end its turn
    (unless every token is trained, `data.train_on_prompt`)."""
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    problems = [f"record {name} has no assistant tokens left to train (dropped)" for name in split.without_targets]
    for index, example in enumerate(split.examples):
        pairs = list(zip(example.input_ids, example.labels))
        if any(label not in (IGNORE_INDEX, token) for token, label in pairs):
            problems.append(f"example {index}: a label differs from its input token")
        last_trained = max(i for i, (_, label) in enumerate(pairs) if label != IGNORE_INDEX)
        if not (example.truncated or train_on_prompt) and example.labels[last_trained] != end_id:
            problems.append(f"example {index}: the last trained token is not the end-of-turn token, so the model would not learn to stop")
    return problems


def describe_batch(batch: dict) -> str:
    """One line on what the collator made of a few examples (not a whole training batch)."""
    shapes = ", ".join(f"{key} {tuple(value.shape)}" for key, value in batch.items())
    line = f"the first examples collated: {shapes}"
    if "position_ids" in batch:
        line += f"; {int((batch['position_ids'][0] == 0).sum())} examples packed in one row"
    return line
