"""Preference training: log-probs and every loss against a hand computation on a tiny Qwen model,
packed pairs against unpacked ones, the LoRA reference against the base model, the config checks,
and a short DPO run through the recipe."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_jsonl

from qwentune.config.base import ConfigError, validate
from qwentune.config.training import TrainConfig
from qwentune.data.tokenize import IGNORE_INDEX
from qwentune.train.attention import PACKED_SDPA
from qwentune.train.pref_losses import KTOLoss, PreferenceLoss, kto_loss, preference_loss
from qwentune.train.preference import (
    KTOCollator,
    PairCollator,
    PairDataset,
    encode_kto,
    encode_pairs,
    pair_logps,
    reference_context,
)

PAIRS = [
    {"messages": [{"role": "user", "content": "Name a colour."}], "chosen": {"role": "assistant", "content": "Blue."},
     "rejected": {"role": "assistant", "content": "A colour is a property of light that our eyes see."}},
    {"messages": [{"role": "system", "content": "Answer in Chinese."}, {"role": "user", "content": "What is 2+2?"}],
     "chosen": {"role": "assistant", "content": "二加二等于四。"}, "rejected": {"role": "assistant", "content": "Four."}},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
     "chosen": {"role": "assistant", "content": "Goodbye, take care."}, "rejected": {"role": "assistant", "content": "No."}},
]


def load(folder, attention=PACKED_SDPA):
    """The tiny model with the attention training uses for packed rows (or `attention`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


@pytest.fixture(scope="module")
def pairs(qwen_tokenizer):
    split = encode_pairs(PAIRS, qwen_tokenizer, max_length=512)
    assert len(split.examples) == 3 and split.not_pairs == 0
    return split.examples


def logps_by_hand(model, example) -> tuple[float, int]:
    """Summed log-prob of the trained tokens of one conversation, alone in its own forward, full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
    total, count = 0.0, 0
    for position in range(len(example.input_ids) - 1):
        target = example.labels[position + 1]
        if target != IGNORE_INDEX:
            total += torch.log_softmax(logits[position].double(), -1)[target].item()
            count += 1
    return total, count


def test_pairs_train_on_the_final_reply_only(pairs, qwen_tokenizer):
    first = pairs[2]
    trained = [t for t in first.chosen.labels if t != IGNORE_INDEX]
    assert qwen_tokenizer.decode(trained) == "Goodbye, take care.<|im_end|>"
    assert qwen_tokenizer.decode([t for t in first.rejected.labels if t != IGNORE_INDEX]) == "No.<|im_end|>"
    # The earlier assistant turn ("Hello!") is prompt here: not trained.
    skipped = encode_pairs([{"messages": [{"role": "user", "content": "x"}]}], qwen_tokenizer, max_length=64)
    assert (skipped.examples, skipped.not_pairs) == ([], 1)


def test_workers_encode_pairs_and_kto_exactly_as_one_process(qwen_tokenizer):
    from qwentune.data.dataset import MIN_RECORDS_PER_WORKER

    # Enough sides for two processes (a pair has two), one pair with nothing left to train, one SFT record.
    many = [
        {**PAIRS[i % 3], "id": f"p{i}", "chosen": {"role": "assistant", "content": f"Answer {i}."}}
        for i in range(MIN_RECORDS_PER_WORKER + 3)
    ]
    many[4] = {**many[4], "messages": [{"role": "user", "content": "long " * 80}]}
    many.append({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
    alone = encode_pairs(many, qwen_tokenizer, max_length=40, system_prompt="Be brief.")
    shared = encode_pairs(many, qwen_tokenizer, max_length=40, system_prompt="Be brief.", num_workers=2)
    assert (alone.workers, shared.workers) == (1, 2)
    assert [(e.chosen.input_ids, e.rejected.labels) for e in shared.examples] == [
        (e.chosen.input_ids, e.rejected.labels) for e in alone.examples
    ]
    assert shared.without_targets == alone.without_targets == ["p4"] and shared.not_pairs == alone.not_pairs == 1
    labelled = [{**KTO[i % len(KTO)], "id": f"k{i}"} for i in range(2 * MIN_RECORDS_PER_WORKER)]
    alone, shared = (encode_kto(labelled, qwen_tokenizer, max_length=64, num_workers=n) for n in (1, 2))
    assert shared.workers == 2 and [e.input_ids for e in shared.examples] == [e.input_ids for e in alone.examples]


def installed_selection() -> str | None:
    """The logits_to_keep form training sends to a Qwen2 model on the installed transformers (probed)."""
    from transformers import Qwen2ForCausalLM

    from qwentune.model.logits import logits_selection

    return logits_selection(Qwen2ForCausalLM)


@pytest.mark.parametrize("selection", ["mask", "positions", None])
def test_packed_pair_logps_equal_each_sequence_alone(tiny_qwen2, pairs, selection):
    if selection == "mask" and installed_selection() != "mask":
        pytest.skip("the installed transformers takes no boolean logits_to_keep (training probes and sends positions)")
    models = {True: load(tiny_qwen2), False: load(tiny_qwen2, "sdpa")}  # as the recipe loads them for each batching
    expected = [[logps_by_hand(models[False], getattr(p, side)) for side in ("chosen", "rejected")] for p in pairs]
    features = [PairDataset(pairs)[i] for i in range(len(pairs))]
    for packed, model in models.items():
        batch = PairCollator(pad_token_id=0, packed=packed, logits_selection=selection)(features)
        assert batch["input_ids"].shape[0] == (1 if packed else 6)
        with torch.no_grad():
            sums, counts = pair_logps(model, batch)
        assert counts.tolist() == [[c for _, c in pair] for pair in expected]
        assert torch.allclose(sums.double(), torch.tensor([[s for s, _ in pair] for pair in expected], dtype=torch.double), atol=1e-4), (packed, selection)


def test_packed_rows_hold_no_padding_and_keep_reply_logits_only(pairs):
    features = [PairDataset(pairs)[i] for i in range(len(pairs))]
    batch = PairCollator(pad_token_id=0, packed=True)(features)
    lengths = [len(getattr(p, side).input_ids) for p in pairs for side in ("chosen", "rejected")]
    trained = [getattr(p, side).num_trained_tokens for p in pairs for side in ("chosen", "rejected")]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert int(batch["logits_to_keep"].sum()) == sum(trained) == len(batch["pref_targets"])
    assert torch.bincount(batch["pref_segments"]).tolist() == trained


def hand_loss(name, c, r, rc, rr, nc, nr, beta=0.1, smoothing=0.0, gamma=0.5, lam=0.1):
    """Each loss written out from its paper, on floats."""
    def logsig(x):
        return -math.log1p(math.exp(-x))

    if name in ("ipo", "simpo", "orpo"):
        c, r, rc, rr = c / nc, r / nr, rc / nc, rr / nr
    h = (c - r) - (rc - rr)
    if name == "sigmoid":
        return -(1 - smoothing) * logsig(beta * h) - smoothing * logsig(-beta * h)
    if name == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if name == "hinge":
        return max(0.0, 1 - beta * h)
    if name == "simpo":
        m = beta * (c - r) - gamma
        return -(1 - smoothing) * logsig(m) - smoothing * logsig(-m)
    odds = (c - math.log(1 - math.exp(c))) - (r - math.log(1 - math.exp(r)))
    return -c - lam * logsig(odds)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("sigmoid", {}),
        ("sigmoid", {"label_smoothing": 0.2}),
        ("ipo", {"beta": 0.5}),
        ("hinge", {"beta": 2.0}),
        ("simpo", {"beta": 2.0, "simpo_gamma": 0.3, "label_smoothing": 0.1}),
        ("orpo", {"orpo_lambda": 0.25}),
        ("sigmoid", {"sft_weight": 0.5}),  # pref_ftx: + weight x the chosen reply's mean NLL per token
        ("simpo", {"beta": 2.0, "sft_weight": 1.0}),
    ],
)
def test_each_loss_equals_the_hand_computation(tiny_qwen2, pairs, name, options):
    policy = load(tiny_qwen2)
    reference = load(tiny_qwen2)
    torch.manual_seed(1)
    with torch.no_grad():  # a policy that has moved away from the reference
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    hand = []
    for pair in pairs:
        (c, nc), (r, nr) = logps_by_hand(policy, pair.chosen), logps_by_hand(policy, pair.rejected)
        (rc, _), (rr, _) = logps_by_hand(reference, pair.chosen), logps_by_hand(reference, pair.rejected)
        hand.append(hand_loss(name, c, r, rc, rr, nc, nr, beta=options.get("beta", 0.1),
                              smoothing=options.get("label_smoothing", 0.0), gamma=options.get("simpo_gamma", 0.5),
                              lam=options.get("orpo_lambda", 0.1)) + options.get("sft_weight", 0.0) * -c / nc)
    batch = PairCollator(pad_token_id=0, logits_selection=installed_selection())([PairDataset(pairs)[i] for i in range(len(pairs))])
    settings = PreferenceLoss(loss=name, **options)
    with torch.no_grad():
        logps, counts = pair_logps(policy, batch)
        reference_logps = pair_logps(reference, batch)[0] if settings.needs_reference else None
    losses, metrics = preference_loss(
        settings, logps[:, 0], logps[:, 1], counts[:, 0], counts[:, 1],
        *((reference_logps[:, 0], reference_logps[:, 1]) if reference_logps is not None else ()),
    )
    assert losses.tolist() == pytest.approx(hand, rel=1e-4, abs=1e-5)
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"}
    assert metrics["rewards/accuracies"].tolist() == [float(x > y) for x, y in zip(metrics["rewards/chosen"], metrics["rewards/rejected"], strict=True)]


def test_lora_reference_is_the_base_model(tiny_qwen2, pairs):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(load(tiny_qwen2), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # trained-looking adapters: B is zero at initialisation
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    batch = PairCollator(pad_token_id=0, logits_selection=installed_selection())([PairDataset(pairs)[i] for i in range(len(pairs))])
    with torch.no_grad():
        tuned = pair_logps(policy, batch)[0]
        with reference_context(policy):
            reference = pair_logps(policy, batch)[0]
        base = pair_logps(load(tiny_qwen2), batch)[0]
        again = pair_logps(policy, batch)[0]
    assert torch.allclose(reference, base, atol=1e-5)
    assert not torch.allclose(tuned, base, atol=1e-3)  # the adapters do change the policy
    assert torch.equal(tuned, again)  # and are back on after the reference pass


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"pref_beta": 0.2}, "training.pref_beta applies to training.stage dpo or kto, but training.stage is 'sft'"),
        ({"stage": "dpo", "pref_loss": "orpo", "simpo_gamma": 1.0}, "training.simpo_gamma applies to training.pref_loss simpo, not 'orpo'"),
        ({"stage": "dpo", "pref_loss": "simpo", "precompute_ref_logprobs": True}, "reference-free"),
        ({"stage": "dpo", "pref_loss": "hinge", "pref_label_smoothing": 0.1}, "training.pref_label_smoothing applies to training.pref_loss sigmoid / simpo"),
        ({"stage": "dpo", "pref_loss": "kto_pair"}, "training.pref_loss"),
        ({"stage": "dpo", "pref_label_smoothing": 0.5}, "pref_label_smoothing"),
        ({"stage": "kto", "pref_loss": "sigmoid"}, "training.pref_loss applies to training.stage dpo, but training.stage is 'kto'"),
        ({"stage": "dpo", "kto_undesirable_weight": 2.0}, "training.kto_undesirable_weight applies to training.stage kto"),
        ({"stage": "dpo", "pref_loss": "orpo", "pref_ftx": 1.0}, "training.pref_ftx applies to training.pref_loss sigmoid / ipo / hinge / simpo, not 'orpo'"),
        ({"stage": "kto", "pref_ftx": 1.0}, "training.pref_ftx applies to training.stage dpo, but training.stage is 'kto'"),
    ],
)
def test_preference_keys_are_checked(training, message):
    with pytest.raises(ConfigError) as caught:
        validate(TrainConfig, {"training": training})
    assert message in str(caught.value)


def test_sft_mask_keys_are_refused_with_dpo():
    with pytest.raises(ConfigError, match="data.train_on_prompt applies to training.stage sft"):
        validate(TrainConfig, {"training": {"stage": "dpo"}, "data": {"train_on_prompt": True}})


@pytest.mark.parametrize(("finetuning", "extra"), [("lora", {}), ("full", {"precompute_ref_logprobs": True})])
def test_dpo_run_learns_the_training_pairs(tmp_path, tiny_qwen2, finetuning, extra):
    from qwentune.train.recipe import run_training

    train = write_jsonl(tmp_path / "train.jsonl", [{"id": str(i), "source": "t", "lang": "en", **p, "meta": {}} for i, p in enumerate(PAIRS)])
    validation = write_jsonl(tmp_path / "validation.jsonl", [{"id": "v", "source": "t", "lang": "en", **PAIRS[0], "meta": {}}])
    config = validate(TrainConfig, {
        "model": {"model_name_or_path": str(tiny_qwen2)},
        "data": {"train_file": str(train), "validation_file": str(validation), "max_seq_length": 256},
        "training": {"stage": "dpo", "output_dir": str(tmp_path / "out"), "logging_dir": str(tmp_path / "logs"),
                     "max_steps": 6, "per_device_train_batch_size": 3, "logging_steps": 1, "save_steps": 6, "eval_steps": 6,
                     "learning_rate": 5e-3 if finetuning == "lora" else 1e-3, "warmup_ratio": 0, "report_to": [],
                     "lr_scheduler_type": "constant", "finetuning_type": finetuning, **extra},
        "lora": {"use_lora": finetuning == "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                 "target_modules": "all-linear"},
    })
    run_training(config)
    logged = [json.loads(line[line.index("{"):]) for line in (tmp_path / "logs" / "training.log").read_text().splitlines() if " step " in line and '"rewards/chosen"' in line]
    assert len(logged) == 6
    # The first step's policy is the reference: log 2 exactly, zero rewards.
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert logged[0]["rewards/margins"] == pytest.approx(0, abs=1e-4)
    assert logged[-1]["loss"] < logged[0]["loss"] - 0.01
    assert logged[-1]["rewards/margins"] > 0 and logged[-1]["rewards/accuracies"] == 1.0
    assert (tmp_path / "out" / "preference_curves.png").stat().st_size > 0
    # Validation computes the preference loss too, with its own rewards and accuracy.
    evaluated = [json.loads(line[line.index("{"):]) for line in (tmp_path / "logs" / "training.log").read_text().splitlines() if '"eval_loss"' in line]
    assert len(evaluated) == 1 and evaluated[0]["eval_rewards/accuracies"] in (0.0, 1.0)
    assert evaluated[0]["eval_loss"] < math.log(2)  # the validation pair is a training pair, learnt by now


def test_a_lora_output_loads_merged_into_its_base(training_output, varied_model, one_torch_thread):
    """A DPO stage started from an SFT LoRA output trains on (and refers to) the SFT model itself."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qwentune.model.loader import config_source, load_causal_lm

    merged = load_causal_lm(str(training_output))
    assert not hasattr(merged, "peft_config") and not any("lora" in name for name, _ in merged.named_parameters())
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(varied_model), training_output).eval()
    plain = AutoModelForCausalLM.from_pretrained(varied_model).eval()
    input_ids = torch.tensor([[1, 20, 300, 4000, 50000]])
    with torch.no_grad():
        expected, got, base = (m(input_ids=input_ids).logits for m in (with_adapter, merged.eval(), plain))
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)  # the adapter is in
    assert config_source(str(training_output)) == str(varied_model)


KTO = [
    {"messages": [{"role": "user", "content": "Name a colour."}], "completion": {"role": "assistant", "content": "Blue."}, "label": True},
    {"messages": [{"role": "user", "content": "What is 2+2?"}], "completion": {"role": "assistant", "content": "Five, I think."}, "label": False},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Italy?"}],
     "completion": {"role": "assistant", "content": "Rome."}, "label": True},
]


def test_kto_loss_equals_the_hand_computation(tiny_qwen2, qwen_tokenizer):
    split = encode_kto([*KTO, PAIRS[0]], qwen_tokenizer, max_length=512)
    assert (len(split.examples), split.not_pairs) == (3, 1)
    examples = split.examples
    policy, reference = load(tiny_qwen2), load(tiny_qwen2)
    torch.manual_seed(2)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    batch = KTOCollator(pad_token_id=0, logits_selection=installed_selection())([PairDataset(examples)[i] for i in range(3)])
    assert batch["desirable"].tolist() == [True, False, True]

    class Spliced:  # example i's prompt with example i+1's reply: the KL sequence, built by hand
        def __init__(self, i):
            a, b = examples[i], examples[(i + 1) % 3]
            self.input_ids = a.input_ids[: a.prompt_length] + b.input_ids[b.prompt_length :]
            self.labels = a.labels[: a.prompt_length] + b.labels[b.prompt_length :]

    beta = 0.3
    own = [(logps_by_hand(policy, e)[0], logps_by_hand(reference, e)[0]) for e in examples]
    kl_pairs = [(logps_by_hand(policy, Spliced(i))[0], logps_by_hand(reference, Spliced(i))[0]) for i in range(3)]
    z0 = max(0.0, sum(p - r for p, r in kl_pairs) / 3)
    weights = {True: 1.5, False: 0.5}

    def sig(x):
        return 1 / (1 + math.exp(-x))

    hand = [
        weights[e.desirable] * (1 - sig(beta * ((p - r) - z0) if e.desirable else beta * (z0 - (p - r))))
        for e, (p, r) in zip(examples, own, strict=True)
    ]
    with torch.no_grad():
        logps, _ = pair_logps(policy, batch)
        ref = pair_logps(reference, batch)[0]
    losses, metrics = kto_loss(KTOLoss(beta, 1.5, 0.5), logps[:, 0], ref[:, 0], logps[:, 1], ref[:, 1], batch["desirable"])
    assert losses.tolist() == pytest.approx(hand, rel=1e-4, abs=1e-6)
    assert metrics["kl"][0].item() == pytest.approx(z0, abs=1e-4)
    assert len(metrics["rewards/chosen"]) == 2 and len(metrics["rewards/rejected"]) == 1


def test_kto_reference_point_is_the_global_batchs_when_gathered():
    settings = KTOLoss(beta=0.5)
    logps, ref = torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -5.0])
    desirable = torch.tensor([True, False])
    here = torch.tensor([-3.0, -2.0]) - torch.tensor([-4.0, -4.0])  # KL log-ratios 1 and 2 on this process
    elsewhere = torch.tensor([7.0, 6.0])  # another process's
    _, alone = kto_loss(settings, logps, ref, torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -4.0]), desirable)
    _, pooled = kto_loss(settings, logps, ref, torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -4.0]), desirable,
                         gather=lambda shifts: torch.cat([shifts, elsewhere]))
    assert alone["kl"][0].item() == pytest.approx(here.mean().item())
    assert pooled["kl"][0].item() == pytest.approx(torch.cat([here, elsewhere]).mean().item())


def test_kto_run_lowers_its_loss(tmp_path, tiny_qwen2):
    from qwentune.train.recipe import run_training

    train = write_jsonl(tmp_path / "train.jsonl", [{"id": str(i), "source": "t", "lang": "en", **r, "meta": {}} for i, r in enumerate(KTO)])
    config = validate(TrainConfig, {
        "model": {"model_name_or_path": str(tiny_qwen2)},
        "data": {"train_file": str(train), "validation_file": None, "max_seq_length": 256},
        "training": {"stage": "kto", "output_dir": str(tmp_path / "out"), "logging_dir": str(tmp_path / "logs"),
                     "max_steps": 6, "per_device_train_batch_size": 3, "logging_steps": 1, "save_steps": 100,
                     "learning_rate": 5e-3, "warmup_ratio": 0, "report_to": [], "lr_scheduler_type": "constant"},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"},
    })
    run_training(config)
    logged = [json.loads(line[line.index("{"):]) for line in (tmp_path / "logs" / "training.log").read_text().splitlines() if " step " in line and '"kl"' in line]
    assert len(logged) == 6
    assert logged[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # 1 - sigmoid(0) at the reference
    assert logged[-1]["loss"] < logged[0]["loss"] - 0.01
    assert logged[-1]["rewards/chosen"] > 0 > logged[-1]["rewards/rejected"]


@pytest.mark.parametrize("training", [{}, {"stage": "dpo", "pref_loss": "simpo", "simpo_gamma": 1.0}, {"stage": "kto"}])
def test_a_dumped_config_validates_again(training):
    """The plan and --debug re-validate a full dump (every key set): the stage checks must pass it."""
    config = validate(TrainConfig, {"training": training})
    again = validate(TrainConfig, config.model_dump())
    assert again.training.stage == config.training.stage
