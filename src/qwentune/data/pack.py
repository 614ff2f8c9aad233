"""Batches of encoded examples: padded rows, or one packed row per batch.

With `logits_selection` (the form of `logits_to_keep` the model's forward accepts, probed by
`qwentune.model.logits`), a collator also hands the model the positions that have a loss target
and those targets already shifted (`shift_labels`), so the LM head runs only where a loss is
computed: on a 151k vocabulary that head is a large share of a small model's compute, and prompt
tokens never need it. "mask" keeps exactly each row's trained positions; "positions" (older
transformers) keeps the columns where any row has a target, the others' targets there ignored.

Packing concatenates a batch's examples into one row whose `position_ids` restart at 0 for
each example and carries no attention mask: transformers reads the restarts as sequence
boundaries (flash-attention varlen, or a block-diagonal mask for sdpa/eager), and
`qwentune.train.attention` runs sdpa per example on CPU. The last token of one example
never predicts the first token of the next: targets are shifted inside each example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qwentune.data.tokenize import IGNORE_INDEX


def shifted_targets(labels: list[int]) -> list[int]:
    """What each position predicts: the next token's label; the last position predicts nothing."""
    return labels[1:] + [IGNORE_INDEX]


def _trained_logits_only(targets: list[list[int]], selection: str | None) -> dict:
    """`logits_to_keep` in the model's `selection` form and the targets of the logits it keeps."""
    if selection is None:
        return {}
    targets = torch.tensor(targets)
    keep = targets != IGNORE_INDEX
    if selection == "mask":  # the model flattens each row's kept positions
        return {"logits_to_keep": keep, "shift_labels": targets[keep]}
    columns = keep.any(dim=0).nonzero().squeeze(1)  # "positions": the same columns of every row
    return {"logits_to_keep": columns, "shift_labels": targets[:, columns]}


@dataclass
class PaddingCollator:
    """Right-pads a batch to its longest example (or to `pad_to`); padding is masked out of attention and loss."""

    pad_token_id: int
    pad_to: int | None = None
    logits_selection: str | None = "mask"

    def __call__(self, features: list[dict]) -> dict:
        width = self.pad_to or max(len(f["input_ids"]) for f in features)
        input_ids, labels, targets, attention_mask = [], [], [], []
        for feature in features:
            padding = width - len(feature["input_ids"])
            input_ids.append(feature["input_ids"] + [self.pad_token_id] * padding)
            labels.append(feature["labels"] + [IGNORE_INDEX] * padding)
            targets.append(shifted_targets(feature["labels"]) + [IGNORE_INDEX] * padding)
            attention_mask.append([1] * len(feature["input_ids"]) + [0] * padding)
        batch = {
            "input_ids": torch.tensor(input_ids),
            "attention_mask": torch.tensor(attention_mask),
            "labels": torch.tensor(labels),
        }
        return {**batch, **_trained_logits_only(targets, self.logits_selection)}


@dataclass
class PackingCollator:
    """Concatenates a batch's examples into one row with per-example `position_ids`; no padding at all."""

    logits_selection: str | None = "mask"

    def __call__(self, features: list[dict]) -> dict:
        input_ids, labels, targets, position_ids = [], [], [], []
        for feature in features:
            input_ids += feature["input_ids"]
            # The first token of an example is never a target: in the row it would follow another example.
            labels += [IGNORE_INDEX] + feature["labels"][1:]
            targets += shifted_targets(feature["labels"])
            position_ids += range(len(feature["input_ids"]))
        batch = {
            "input_ids": torch.tensor([input_ids]),
            "position_ids": torch.tensor([position_ids]),
            "labels": torch.tensor([labels]),
        }
        return {**batch, **_trained_logits_only([targets], self.logits_selection)}
