"""Preference losses as pure functions of per-sequence log-probabilities (one value per pair).

Names and formulas follow TRL (DPOTrainer / CPOTrainer) and the papers, so figures compare:
    sigmoid  DPO (Rafailov et al. 2023): -log σ(β·h), h = (π_c - π_r) - (ref_c - ref_r),
             with label smoothing ε (cDPO): -(1-ε)·log σ(β·h) - ε·log σ(-β·h)
    ipo      IPO (Azar et al. 2023): (h - 1/(2β))², h from length-averaged log-probs
    hinge    SLiC (Zhao et al. 2023): max(0, 1 - β·h)
    simpo    SimPO (Meng et al. 2024), reference-free: -log σ(β·(avg_c - avg_r) - γ), with ε as sigmoid
    orpo     ORPO (Hong et al. 2024), reference-free: NLL(chosen) - λ·log σ(log odds(avg_c) - log odds(avg_r))
Rewards (what the logs call rewards/chosen and rewards/rejected) are β·(π - ref) for the reference
losses, β·avg for SimPO and λ·avg for ORPO; accuracy is the share of pairs whose chosen reward is higher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

REFERENCE_FREE = ("simpo", "orpo")
# Losses on length-averaged log-probs (as TRL computes them); the others use summed log-probs.
AVERAGED = ("ipo", "simpo", "orpo")


@dataclass(frozen=True)
class PreferenceLoss:
    loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    sft_weight: float = 0.0  # weight of the chosen replies' mean NLL per token added to the loss (pref_ftx)

    @property
    def needs_reference(self) -> bool:
        return self.loss not in REFERENCE_FREE


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, segments: torch.Tensor, sequences: int):
    """(summed log-prob, trained tokens) of each sequence; `segments` says which sequence each target belongs to.

    logits (..., V) and targets/segments (...) cover the same positions; IGNORE (-100) targets count nowhere.
    """
    logits = logits.reshape(-1, logits.shape[-1])
    targets, segments = targets.reshape(-1), segments.reshape(-1)
    trained = targets != -100
    logits, targets, segments = logits[trained], targets[trained], segments[trained]
    # cross_entropy is -log p of the target without keeping a log_softmax of the whole vocabulary.
    token_logps = -F.cross_entropy(logits.float(), targets, reduction="none")
    sums = torch.zeros(sequences, dtype=token_logps.dtype, device=token_logps.device).index_add(0, segments, token_logps)
    counts = torch.bincount(segments, minlength=sequences).to(token_logps.dtype)
    return sums, counts


def preference_loss(
    settings: PreferenceLoss,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss per pair, metrics per pair) from summed log-probs of the policy (and of the reference)."""
    beta, smoothing = settings.beta, settings.label_smoothing
    average = settings.loss in AVERAGED
    if average:
        chosen, rejected = chosen / chosen_tokens, rejected / rejected_tokens
        if ref_chosen is not None:
            ref_chosen, ref_rejected = ref_chosen / chosen_tokens, ref_rejected / rejected_tokens
    if settings.loss == "simpo":
        margin = beta * (chosen - rejected) - settings.simpo_gamma
        losses = -F.logsigmoid(margin) * (1 - smoothing) - F.logsigmoid(-margin) * smoothing
        reward_chosen, reward_rejected = beta * chosen, beta * rejected
    elif settings.loss == "orpo":
        # log odds(p) = log p - log(1 - p), with p the length-normalised sequence probability.
        log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
        losses = -chosen - settings.orpo_lambda * F.logsigmoid(log_odds)
        reward_chosen, reward_rejected = settings.orpo_lambda * chosen, settings.orpo_lambda * rejected
    else:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"the {settings.loss} loss needs reference log-probs")
        h = (chosen - rejected) - (ref_chosen - ref_rejected)
        if settings.loss == "sigmoid":
            losses = -F.logsigmoid(beta * h) * (1 - smoothing) - F.logsigmoid(-beta * h) * smoothing
        elif settings.loss == "ipo":
            losses = (h - 1 / (2 * beta)) ** 2
        elif settings.loss == "hinge":
            losses = torch.relu(1 - beta * h)
        else:
            raise ValueError(f"unknown preference loss {settings.loss!r}")
        reward_chosen, reward_rejected = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    if settings.sft_weight:
        # The chosen reply's SFT loss: its mean NLL per token (chosen is already that mean when averaged).
        nll = -(chosen if average else chosen / chosen_tokens)
        losses = losses + settings.sft_weight * nll
    reward_chosen, reward_rejected = reward_chosen.detach(), reward_rejected.detach()
    metrics = {
        "rewards/chosen": reward_chosen,
        "rewards/rejected": reward_rejected,
        "rewards/margins": reward_chosen - reward_rejected,
        "rewards/accuracies": (reward_chosen > reward_rejected).float(),
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
    }
    return losses, metrics


@dataclass(frozen=True)
class KTOLoss:
    """KTO (Ethayarajh et al. 2024), as TRL's KTOTrainer: a reply is pushed above (desirable) or below
    (undesirable) the reference point z0, the batch's KL estimate from mismatched prompt/reply pairs."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    needs_reference: bool = True


def kto_loss(
    settings: KTOLoss,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    desirable: torch.Tensor,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss per example, metrics) from summed log-probs of each reply and of its mismatched (KL) reply.

    gather: collects the KL log-ratios of every process (as TRL does), so z0 is the global batch's.
    """
    beta = settings.beta
    # z0: no gradient flows through the reference point (as in the paper and TRL).
    shifts = (kl_logps - ref_kl_logps).detach()
    kl = (gather(shifts) if gather is not None else shifts).mean().clamp(min=0)
    logratio = logps - ref_logps
    losses = torch.where(
        desirable,
        settings.desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl))),
        settings.undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio))),
    )
    rewards = (beta * logratio).detach()
    metrics = {"kl": kl.expand_as(rewards), "logps/completion": logps.detach()}
    if desirable.any():
        metrics["rewards/chosen"] = rewards[desirable]
    if (~desirable).any():
        metrics["rewards/rejected"] = rewards[~desirable]
    return losses, metrics
