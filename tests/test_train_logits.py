"""Logits at the trained positions only: the probed form of `logits_to_keep`, its fallback, same losses.

Older transformers (5.6.0, for one) index `hidden_states[:, logits_to_keep, :]` and raise IndexError on
a 2-D boolean mask; `SlicingQwen2` below is Qwen2 with that release's forward, so the fallback is
exercised on whatever transformers is installed (and for real by `bash tests/run_tests.sh --min-deps`).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_train_recipe import make_config, write_data
from transformers import Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from qwentune.data.pack import PackingCollator, PaddingCollator
from qwentune.data.tokenize import IGNORE_INDEX, encode_conversation
from qwentune.model import logits
from qwentune.train.callbacks import LOSS_HISTORY_FILE
from qwentune.train.recipe import run_training


class SlicingQwen2(Qwen2ForCausalLM):
    """Qwen2's forward as transformers 5.6.0 wrote it: `hidden_states[:, logits_to_keep, :]`."""

    def forward(self, input_ids=None, labels=None, logits_to_keep=0, **kwargs):
        hidden_states = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        output = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None if labels is None else self.loss_function(output, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=output)


@pytest.fixture(scope="module")
def features(qwen_tokenizer):
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}],
        [{"role": "user", "content": "Name a colour, please, any colour at all."}, {"role": "assistant", "content": "Blue."}],
    ]
    examples = [encode_conversation(qwen_tokenizer, messages) for messages in conversations]
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


def test_probe_answers_mask_for_the_installed_qwen2_or_falls_back_to_positions():
    # Whatever the release, the answer must be a form the class really computes right.
    assert logits.logits_selection(Qwen2ForCausalLM) in logits.LOGITS_SELECTIONS
    model = logits._tiny_model(Qwen2ForCausalLM)
    assert logits._selects(model, logits.logits_selection(Qwen2ForCausalLM))


def test_probe_falls_back_to_positions_for_a_forward_that_cannot_take_a_mask(capsys):
    assert logits.logits_selection(SlicingQwen2) == "positions"
    assert "SlicingQwen2 under transformers" in capsys.readouterr().out  # the one-line notice
    assert logits.logits_selection(SlicingQwen2) == "positions"  # cached: no second probe, no second notice
    assert capsys.readouterr().out == ""


def test_positions_keep_the_union_of_trained_columns_and_ignore_the_rest(features):
    mask = PaddingCollator(pad_token_id=0)(features)
    positions = PaddingCollator(pad_token_id=0, logits_selection="positions")(features)
    columns = positions["logits_to_keep"]
    assert columns.ndim == 1 and columns.tolist() == mask["logits_to_keep"].any(dim=0).nonzero().squeeze(1).tolist()
    kept = positions["shift_labels"]
    assert kept.shape == (2, len(columns))
    # The same targets, in the same order, as the mask keeps; the other rows' columns are ignored.
    assert kept[kept != IGNORE_INDEX].tolist() == mask["shift_labels"].tolist()


def test_packed_positions_are_exactly_the_trained_ones(features):
    mask = PackingCollator()(features)
    positions = PackingCollator(logits_selection="positions")(features)
    assert positions["logits_to_keep"].tolist() == mask["logits_to_keep"][0].nonzero().squeeze(1).tolist()
    assert positions["shift_labels"][0].tolist() == mask["shift_labels"].tolist()
    assert "logits_to_keep" not in PackingCollator(logits_selection=None)(features)


@pytest.mark.parametrize("selection", ["mask", "positions"])
def test_old_style_forward_loss_equals_full_logits_loss_or_is_refused(tiny_qwen2, features, selection):
    model = SlicingQwen2.from_pretrained(tiny_qwen2).eval()
    batch = PackingCollator(logits_selection=selection)(features)
    full = PackingCollator(logits_selection=None)(features)
    with torch.no_grad():
        reference = model(**full).loss
        if selection == "mask":  # the crash the probe prevents
            with pytest.raises(IndexError):
                model(**batch)
            return
        loss = model(**batch).loss
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=0)


def losses(tmp_path, model, data, name: str, *overrides: str) -> list[float]:
    root = tmp_path / name
    run_training(make_config(root, model, data, "training.max_steps=3", "data.validation_file=null", *overrides))
    curve = json.loads((root / "out" / LOSS_HISTORY_FILE).read_text(encoding="utf-8"))
    return [point["loss"] for point in curve if point["loss"] is not None]


@pytest.mark.parametrize("batching", ["packed", "padding"])
def test_training_losses_are_the_same_whichever_form_the_probe_picks(tmp_path, tiny_qwen2, monkeypatch, batching):
    data = write_data(tmp_path / "data", train=12, validation=2)
    logits.logits_selection.cache_clear()  # the probe runs inside this training, as in a fresh process
    probed = losses(tmp_path, tiny_qwen2, data, "probed", f"data.batching={batching}")
    forced = {}
    for selection in (None, "positions"):
        monkeypatch.setattr(logits, "logits_selection", lambda model_class, s=selection: s)
        forced[selection] = losses(tmp_path, tiny_qwen2, data, f"forced-{selection}", f"data.batching={batching}")
    assert len(probed) == 3
    print(f"losses ({batching}): probed {probed}; full logits {forced[None]}; positions {forced['positions']}")  # for -s
    # Full logits are the reference every release computes; either selection must reproduce them.
    assert forced[None] == pytest.approx(probed, abs=1e-5)
    assert forced["positions"] == pytest.approx(probed, abs=1e-5)
