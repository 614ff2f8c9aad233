"""Held-out preference accuracy: does the model prefer the chosen reply over the rejected one?

Each reply is scored by its length-normalised log-prob under the model (mean log-prob of its tokens
and end-of-turn token, after the chat-templated prompt, as training scores them), so a longer reply
is not penalised for its length alone. Margin = mean log-prob(chosen) - mean log-prob(rejected);
the pair counts as preferred when the margin is positive.
"""

from __future__ import annotations

PREFERENCE_DEFINITIONS = {
    "preference_accuracy": (
        "Share (0-1) of held-out preference pairs whose chosen reply has the higher length-normalised "
        "log-prob under the model: the mean natural-log probability of the reply's tokens and its "
        "end-of-turn token, conditioned on the chat-templated prompt (with the system prompt the model "
        "was trained with). Pairs only; other samples do not count."
    ),
    "preference_margin": (
        "Mean over the preference pairs of mean log-prob(chosen) - mean log-prob(rejected), in nats per "
        "token (see preference_accuracy). Positive: the model prefers the chosen replies."
    ),
}


def mean_reply_logps(model, tokenizer, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
    """Mean log-prob of the final assistant turn of each conversation (its trained tokens)."""
    import torch

    from qwentune.data.tokenize import IGNORE_INDEX, encode_conversation

    encoded = [encode_conversation(tokenizer, messages, last_turn_only=True) for messages in conversations]
    device = next(model.parameters()).device
    means = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(e.input_ids) for e in chunk)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in chunk], device=device)
        attention = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chunk], device=device)
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in chunk], device=device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        targets = labels[:, 1:]
        trained = targets != IGNORE_INDEX
        token_logps = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums = (token_logps * trained).sum(-1)
        means += (sums / trained.sum(-1).clamp(min=1)).tolist()
    return means


def pair_margins(model, tokenizer, pairs: list[tuple[list[dict], str, str]], batch_size: int = 8) -> list[float]:
    """Margin of each (prompt messages, chosen text, rejected text)."""
    conversations = [
        [*prompt, {"role": "assistant", "content": reply}] for prompt, chosen, rejected in pairs for reply in (chosen, rejected)
    ]
    means = mean_reply_logps(model, tokenizer, conversations, batch_size)
    return [chosen - rejected for chosen, rejected in zip(means[0::2], means[1::2], strict=True)]


def preference_values(margins: list[float]) -> dict:
    """The report's values for the margins of one dataset's pairs (nothing when it has none)."""
    if not margins:
        return {}
    return {
        "preference_accuracy": sum(margin > 0 for margin in margins) / len(margins),
        "preference_margin": sum(margins) / len(margins),
    }
