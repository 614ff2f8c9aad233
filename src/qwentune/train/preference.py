"""Preference training (training.stage: dpo): pairs -> one packed, isolated row per batch -> the loss.

Each pair becomes two encoded conversations, prompt + chosen and prompt + rejected, trained on
the final reply only. A batch of n pairs is one row of 2n sequences (chosen, rejected, chosen, ...)
with positions restarting per sequence: the SFT packing and its per-sequence attention isolation
(`qwentune.data.pack`, `qwentune.train.attention`), so a pair costs what two SFT examples do and no
compute goes to padding. Only reply positions get logits (`logits_to_keep`), and each kept position
carries the number of its sequence, so per-sequence log-probs are one `index_add`.

The reference: under LoRA the policy itself with its adapters disabled (no second copy); with full or
freeze tuning a frozen copy; or, with `precompute_ref_logprobs`, log-probs computed once before
training and carried with each pair. SimPO and ORPO need none.
"""

from __future__ import annotations

import contextlib
import copy
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import track
from transformers import Trainer

from qwentune.config.base import ConfigError
from qwentune.data.dataset import encode_conversations, read_canonical, trained_only
from qwentune.data.pack import PackingCollator, PaddingCollator, shifted_targets
from qwentune.data.tokenize import IGNORE_INDEX, EncodedExample
from qwentune.train.distributed import pooled_means
from qwentune.train.pref_losses import KTOLoss, PreferenceLoss, kto_loss, preference_loss, sequence_logps

SIDES = ("chosen", "rejected")


@dataclass
class PairExample:
    chosen: EncodedExample
    rejected: EncodedExample

    @property
    def input_ids(self) -> list[int]:  # for describe_example: the chosen conversation
        return self.chosen.input_ids

    @property
    def labels(self) -> list[int]:
        return self.chosen.labels

    @property
    def num_trained_tokens(self) -> int:
        return self.chosen.num_trained_tokens + self.rejected.num_trained_tokens

    @property
    def row_length(self) -> int:
        """Tokens the pair puts in a row: both sides."""
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


@dataclass
class PairSplit:
    examples: list[PairExample]
    truncated: int
    without_targets: list[str]  # pairs dropped: a side had no reply token left after truncation
    not_pairs: int  # records in the file that are not preference pairs (SFT or KTO records)
    # Processes that tokenized the split (data.preprocessing_num_workers, fewer for a small split).
    workers: int = 1

    @property
    def lengths(self) -> list[int]:
        """Tokens of each pair (both sides) or KTO example (with its KL sequence): what goes into a row."""
        return [e.row_length for e in self.examples]

    @property
    def trained_tokens(self) -> int:
        return sum(e.num_trained_tokens for e in self.examples)


def encode_pairs(
    records: list[dict], tokenizer, *, max_length: int, system_prompt: str | None = None, thinking: str = "auto", num_workers: int = 1
) -> PairSplit:
    """Both sides of each pair, trained on the final reply, tokenized by up to `num_workers` processes."""
    pairs = [record for record in records if "chosen" in record and "rejected" in record]
    sides = [{"messages": [*record["messages"], record[side]]} for record in pairs for side in SIDES]
    encoded, workers = encode_conversations(
        sides, tokenizer, num_workers=num_workers, max_length=max_length, system_prompt=system_prompt,
        thinking=thinking, last_turn_only=True,
    )
    kept, truncated, without_targets = trained_only(pairs, list(zip(encoded[0::2], encoded[1::2], strict=True)), "pair")
    examples = [PairExample(*sides) for _, sides in kept]
    return PairSplit(examples, truncated, without_targets, len(records) - len(pairs), workers)


@dataclass
class KTOExample:
    """One reply with its label; the prompt is input_ids[:prompt_length] (the KL pairs swap the rest)."""

    example: EncodedExample
    desirable: bool

    @property
    def input_ids(self) -> list[int]:
        return self.example.input_ids

    @property
    def labels(self) -> list[int]:
        return self.example.labels

    @property
    def prompt_length(self) -> int:
        return next(i for i, label in enumerate(self.example.labels) if label != IGNORE_INDEX)

    @property
    def num_trained_tokens(self) -> int:
        return self.example.num_trained_tokens

    @property
    def row_length(self) -> int:
        """About what the example puts in a row: itself and its KL sequence (its prompt, another reply)."""
        return 2 * len(self.example.input_ids)


def encode_kto(
    records: list[dict], tokenizer, *, max_length: int, system_prompt: str | None = None, thinking: str = "auto", num_workers: int = 1
) -> PairSplit:
    """KTO examples (a `completion` and a boolean `label`); the split's lengths count each with its KL sequence."""
    labelled = [record for record in records if "completion" in record and isinstance(record.get("label"), bool)]
    replies = [{"messages": [*record["messages"], record["completion"]]} for record in labelled]
    encoded, workers = encode_conversations(
        replies, tokenizer, num_workers=num_workers, max_length=max_length, system_prompt=system_prompt,
        thinking=thinking, last_turn_only=True,
    )
    kept, truncated, without_targets = trained_only(labelled, [(example,) for example in encoded], "example")
    examples = [KTOExample(example, record["label"]) for record, (example,) in kept]
    return PairSplit(examples, truncated, without_targets, len(records) - len(labelled), workers)


def load_pair_splits(config, tokenizer) -> tuple[PairSplit, PairSplit | None]:
    """(train, validation or None) pairs (stage dpo) or labelled replies (stage kto), from processed files."""
    data = config.data
    kto = config.training.stage == "kto"
    encode_split = encode_kto if kto else encode_pairs
    encode = dict(
        max_length=data.max_seq_length,
        system_prompt=data.default_system_prompt,
        thinking=data.thinking,
        num_workers=data.preprocessing_num_workers,
    )
    train = encode_split(read_canonical(data.train_file, data.max_samples), tokenizer, **encode)
    if not train.examples:
        wanted = "KTO example (a record with 'completion' and a boolean 'label')" if kto else "preference pair (a record with 'chosen' and 'rejected')"
        raise ConfigError(
            f"data.train_file {data.train_file}: no {wanted} to train on with training.stage {config.training.stage}; "
            f"{train.not_pairs} records are something else. "
            "Preprocess preference data (data/formats/preference.py lists the shapes) into its own folder."
        )
    if not (data.validation_file and Path(data.validation_file).is_file()):
        return train, None
    validation = encode_split(read_canonical(data.validation_file, data.max_eval_samples), tokenizer, **encode)
    return train, (validation if validation.examples else None)


class PairDataset(torch.utils.data.Dataset):
    """Pairs (or KTO examples) as features; precomputed reference log-probs ride along when there are some."""

    def __init__(self, examples: list[PairExample] | list[KTOExample], reference: torch.Tensor | None = None):
        self.examples = examples
        self.reference = reference  # (pairs, 2): chosen, rejected

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        if isinstance(example, KTOExample):
            return {"input_ids": example.input_ids, "labels": example.labels, "desirable": example.desirable,
                    "prompt_length": example.prompt_length}
        feature = {
            "chosen_input_ids": example.chosen.input_ids,
            "chosen_labels": example.chosen.labels,
            "rejected_input_ids": example.rejected.input_ids,
            "rejected_labels": example.rejected.labels,
        }
        if self.reference is not None:
            feature["reference_logps"] = self.reference[index].tolist()
        return feature


@dataclass
class PairCollator:
    """A batch of pairs as 2n sequences (chosen, rejected, ...): packed into one row, or padded rows.

    Adds `pref_targets` (each kept logit's target) and `pref_segments` (its sequence number), in the
    order the model returns the kept logits for the given `logits_selection`.
    """

    pad_token_id: int
    packed: bool = True
    pad_to: int | None = None
    logits_selection: str | None = "mask"

    def __call__(self, features: list[dict]) -> dict:
        sequences = [
            {"input_ids": f[f"{side}_input_ids"], "labels": f[f"{side}_labels"]} for f in features for side in SIDES
        ]
        batch = self.rows(sequences)
        if "reference_logps" in features[0]:
            batch["reference_logps"] = torch.tensor([f["reference_logps"] for f in features])
        return batch

    def rows(self, sequences: list[dict]) -> dict:
        """Model inputs for the sequences (in pairs), with pref_targets, pref_segments and pref_pairs."""
        if self.packed:
            batch = PackingCollator()(sequences)
            targets = torch.tensor([[t for s in sequences for t in shifted_targets(s["labels"])]])
            segments = torch.tensor([[i for i, s in enumerate(sequences) for _ in s["input_ids"]]])
        else:
            batch = PaddingCollator(self.pad_token_id, pad_to=self.pad_to)(sequences)
            width = batch["input_ids"].shape[1]
            targets = torch.tensor([shifted_targets(s["labels"]) + [IGNORE_INDEX] * (width - len(s["labels"])) for s in sequences])
            segments = torch.arange(len(sequences)).unsqueeze(1).expand(-1, width)
        # Rows and positions come from the SFT collators; the targets and the kept logits are the pairs' own.
        # The preference loss reads pref_targets: no LM loss inside the model.
        batch = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
        keep = targets != IGNORE_INDEX
        if self.logits_selection == "mask":
            batch["logits_to_keep"] = keep
            targets, segments = targets[keep], segments[keep]
        elif self.logits_selection == "positions":
            columns = keep.any(dim=0).nonzero().squeeze(1)
            batch["logits_to_keep"] = columns
            targets, segments = targets[:, columns], segments[:, columns]
        batch["pref_targets"], batch["pref_segments"] = targets, segments
        batch["pref_pairs"] = torch.tensor(len(sequences) // 2)
        return batch


@dataclass
class KTOCollator(PairCollator):
    """Each example followed by its KL sequence: its own prompt with the next example's reply
    (TRL's mismatched pairs), so both come out of one forward as a (reply, KL) pair."""

    def __call__(self, features: list[dict]) -> dict:
        sequences = []
        for index, feature in enumerate(features):
            other = features[(index + 1) % len(features)]
            cut, other_cut = feature["prompt_length"], other["prompt_length"]
            kl = {
                "input_ids": feature["input_ids"][:cut] + other["input_ids"][other_cut:],
                "labels": feature["labels"][:cut] + other["labels"][other_cut:],
            }
            sequences += [{"input_ids": feature["input_ids"], "labels": feature["labels"]}, kl]
        batch = self.rows(sequences)
        batch["desirable"] = torch.tensor([f["desirable"] for f in features])
        return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "logits_to_keep")


def pair_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs, trained tokens), each (pairs, 2): chosen and rejected of each pair."""
    outputs = model(**{key: batch[key] for key in MODEL_INPUTS if key in batch}, use_cache=False)
    sequences = 2 * int(batch["pref_pairs"])
    sums, counts = sequence_logps(outputs.logits, batch["pref_targets"], batch["pref_segments"], sequences)
    return sums.view(-1, 2), counts.view(-1, 2)


def reference_context(model):
    """The policy as its own reference: a PEFT model with its adapters disabled."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


class PreferenceTrainer(Trainer):
    """Trainer whose loss is a preference loss; logs rewards, margins, accuracy and log-probs like TRL."""

    def __init__(self, *args, preference: PreferenceLoss | KTOLoss, reference_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.preference = preference
        self.reference_model = reference_model
        if reference_model is not None:
            self.reference_model = reference_model.to(self.args.device).eval().requires_grad_(False)
        self.model_accepts_loss_kwargs = False  # the loss is a mean over pairs: the Trainer scales it for accumulation
        self._metrics: dict[str, dict[str, list[tuple[float, int]]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def reference_logps(self, model, batch: dict) -> torch.Tensor | None:
        if not self.preference.needs_reference:
            return None
        if "reference_logps" in batch:
            return batch["reference_logps"]
        with torch.no_grad():
            if self.reference_model is not None:
                return pair_logps(self.reference_model, batch)[0]
            policy = self.accelerator.unwrap_model(model)
            with reference_context(policy):
                return pair_logps(policy, batch)[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, counts = pair_logps(model, inputs)
        reference = self.reference_logps(model, inputs)
        if isinstance(self.preference, KTOLoss):  # (reply, KL reply) per example
            losses, metrics = kto_loss(
                self.preference, logps[:, 0], reference[:, 0], logps[:, 1], reference[:, 1], inputs["desirable"],
                gather=self.accelerator.gather if self.accelerator.num_processes > 1 else None,
            )
            return self._finish(model, losses, metrics, logps, return_outputs)
        losses, metrics = preference_loss(
            self.preference,
            logps[:, 0], logps[:, 1], counts[:, 0], counts[:, 1],
            *((reference[:, 0], reference[:, 1]) if reference is not None else ()),
        )
        return self._finish(model, losses, metrics, logps, return_outputs)

    def _finish(self, model, losses, metrics, logps, return_outputs):
        logged = self._metrics["train" if model.training else "eval"]
        for name, values in metrics.items():
            logged[name].append((values.float().sum().item(), values.numel()))
        loss = losses.mean()
        return (loss, {"logps": logps}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The batch has no `labels`, so the Trainer's own step would skip the loss: evaluate the preference loss.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        # (sum, count) of each value over this process's steps, then over all processes: the whole batches' means.
        totals = {name: (sum(t for t, _ in pairs), sum(c for _, c in pairs)) for name, pairs in self._metrics[mode].items() if pairs}
        logs.update({f"{prefix}{name}": round(mean, 6) for name, mean in pooled_means(totals).items()})
        self._metrics[mode].clear()
        super().log(logs, start_time)


def frozen_reference(model, config, settings: PreferenceLoss):
    """A frozen copy of the starting model when the loss needs a reference the policy cannot give."""
    if not settings.needs_reference or config.training.precompute_ref_logprobs or config.training.finetuning_type == "lora":
        return None
    return copy.deepcopy(model).eval().requires_grad_(False)


def precompute_reference(model, dataset: PairDataset, collator: PairCollator, batch_size: int, device) -> PairDataset:
    """The dataset with the starting model's log-probs of each side, computed once (before any update)."""
    sums = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), reference_context(model):
        # One forward per batch without gradients: about a third of a training step each.
        for start in track(range(0, len(dataset), batch_size), description="Reference log-probs", transient=True):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {key: value.to(device) for key, value in batch.items()}
            sums.append(pair_logps(model, batch)[0].cpu())
    model.train(was_training)
    return PairDataset(dataset.examples, torch.cat(sums))


def settings_of(config) -> PreferenceLoss | KTOLoss:
    training = config.training
    if training.stage == "kto":
        return KTOLoss(training.pref_beta, training.kto_desirable_weight, training.kto_undesirable_weight)
    return PreferenceLoss(
        loss=training.pref_loss or "sigmoid",
        beta=training.pref_beta,
        label_smoothing=training.pref_label_smoothing,
        simpo_gamma=training.simpo_gamma,
        orpo_lambda=training.orpo_lambda,
        sft_weight=training.pref_ftx,
    )


def plot_preference_curves(log_history: list[dict], image_path: Path) -> None:
    """Rewards of chosen and rejected, and the preference accuracy, over training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [entry for entry in log_history if "rewards/chosen" in entry or "kl" in entry]
    if not points:
        return
    figure, (rewards, second) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        shown = [(p["step"], p[key]) for p in points if key in p]
        if shown:
            rewards.plot(*zip(*shown), label=key.split("/")[1])
    rewards.set_xlabel("step")
    rewards.set_ylabel("reward")
    rewards.legend()
    # DPO: the share of pairs whose chosen reward is higher; KTO: the reference point z0 (KL estimate).
    key, label = ("rewards/accuracies", "preference accuracy (training batches)") if "rewards/accuracies" in points[0] else ("kl", "KL estimate z0")
    second.plot([p["step"] for p in points if key in p], [p[key] for p in points if key in p], color="green")
    second.set_xlabel("step")
    second.set_ylabel(label)
    if key == "rewards/accuracies":
        second.set_ylim(0, 1)
    figure.tight_layout()
    figure.savefig(image_path)
    plt.close(figure)


def preference_parts(config, model, tokenizer, train_split: PairSplit, eval_split: PairSplit | None, logits_selection, arguments):
    """(train dataset, eval dataset, collator, Trainer class, its extra arguments) for training.stage dpo."""
    from qwentune.train.arguments import BATCHING

    mode = BATCHING[config.data.batching]
    if isinstance(logits_selection, bool):  # older ModelShape: whether a boolean mask is accepted
        logits_selection = "mask" if logits_selection else None
    collator = (KTOCollator if config.training.stage == "kto" else PairCollator)(
        tokenizer.pad_token_id,
        packed=mode.packed,
        pad_to=config.data.max_seq_length if mode.pad_to_max_length else None,
        logits_selection=logits_selection,
    )
    settings = settings_of(config)
    train = PairDataset(train_split.examples)
    evaluation = PairDataset(eval_split.examples) if eval_split is not None else None
    if settings.needs_reference and config.training.precompute_ref_logprobs:
        batch = config.training.per_device_eval_batch_size
        model.to(arguments.device)
        train = precompute_reference(model, train, collator, batch, arguments.device)
        if evaluation is not None:
            evaluation = precompute_reference(model, evaluation, collator, batch, arguments.device)
    extra = {"preference": settings, "reference_model": frozen_reference(model, config, settings)}
    return train, evaluation, collator, PreferenceTrainer, extra
