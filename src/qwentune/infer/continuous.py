"""Continuous (iteration-level) batching: rows join and leave a running batch between decoding steps.

The server's worker keeps one `DecodingBatch`. A request joins with `add`: its prompt is
prefilled alone (so its first token is the one it would get alone) and its KV cache rows are
merged into the batch's, left-padded to the longest. Each `step` runs one forward over every
row, chooses each row's next token with that row's own sampling settings, and drops the rows
that ended (end of turn, stop string, token limit, or their client left, checked before the
forward so an abandoned row costs no further compute) together with their KV cache rows.

Written by hand over a DynamicCache rather than transformers' ContinuousBatchingManager: on CPU
the manager took 39 s for 4 requests of 20 tokens that `generate` answered in 0.37 s one by one
(tiny Qwen2, transformers 5.24), and in 5.2 (our floor) every request shares one generation
config, so rows could not keep their own temperature, top_p, top_k or repetition penalty.
"""

from __future__ import annotations

import copy
import inspect
import threading
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessorList

from qwentune.infer.decoding import Completion, GenerationRequest, RowState
from qwentune.infer.settings import Sampling


@dataclass(eq=False)  # rows are told apart by identity
class Row:
    state: RowState
    processors: LogitsProcessorList  # empty for plain greedy decoding
    sample: bool
    ids: list[int]  # prompt and answer so far: what the processors (repetition penalty) look at
    position: int  # of the next token to feed (= tokens of this row in the cache)

    @property
    def request(self) -> GenerationRequest:
        return self.state.request


class DecodingBatch:
    """The rows generating now, their KV cache and attention mask (see the module docstring).

    `lock` is held while the model runs, so other callers of the same engine wait their turn.
    """

    def __init__(self, model, tokenizer, stop_ids: set[int], lock: threading.Lock):
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.lock = lock
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, cache length): 0 over each row's left padding
        # transformers renamed forward's past_key_values to cache (5.24 warns about the old name; 5.2 has only it).
        # A PEFT model (an unmerged adapter) passes it on to its base model under the same name.
        forward = (model.get_base_model() if hasattr(model, "get_base_model") else model).forward
        self.cache_arg = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _row(self, request: GenerationRequest, sampling: Sampling) -> Row:
        config = copy.deepcopy(self.model.generation_config)
        config.update(**sampling.generate_kwargs())
        prompt = torch.tensor([request.prompt_ids], device=self.device)
        # The processors generate would build (repetition penalty, temperature, top_k, top_p and any the
        # model saved), each applied to this row alone as generate applies them to a request alone.
        processors = self.model._get_logits_processor(
            generation_config=config, input_ids_seq_length=prompt.shape[1], encoder_input_ids=prompt, device=self.device
        )
        state = RowState(request, self.tokenizer, self.stop_ids)
        return Row(state, processors, bool(config.do_sample), list(request.prompt_ids), len(request.prompt_ids))

    @torch.inference_mode()
    def add(self, request: GenerationRequest, sampling: Sampling) -> Completion | None:
        """Prefill `request` and choose its first token; its Completion when that already ends it, else None (it joined)."""
        row = self._row(request, sampling)
        if request.cancel.is_set():  # its client left before it started
            row.state.finish("cancelled")
            return row.state.completion
        with self.lock:
            cache = DynamicCache()
            ids = torch.tensor([request.prompt_ids], device=self.device)
            out = self.model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=torch.arange(ids.shape[1], device=self.device)[None],
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_arg: cache},
            )
            self._advance([row], out.logits[:, -1])
        if row.state.finished:
            return row.state.completion
        self._merge(row, cache)
        return None

    @torch.inference_mode()
    def step(self) -> list[tuple[GenerationRequest, Completion]]:
        """One decoding step over every row; the requests that ended and their Completions (they have left the batch)."""
        ended = self._leave([row for row in self.rows if row.request.cancel.is_set()], "cancelled")
        if not self.rows:
            return ended
        with self.lock:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
            out = self.model(
                input_ids=torch.tensor([[row.ids[-1]] for row in self.rows], device=self.device),
                attention_mask=self.mask,
                position_ids=torch.tensor([[row.position] for row in self.rows], device=self.device),
                use_cache=True,
                **{self.cache_arg: self.cache},
            )
            for row in self.rows:
                row.position += 1
            self._advance(self.rows, out.logits[:, -1])
        return ended + self._leave([row for row in self.rows if row.state.finished])

    def _advance(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Choose each row's next token from its logits (one line per row), as generate does, and follow it."""
        logits = logits.float()
        for row, scores in zip(rows, logits):
            scores = scores[None]
            if row.processors:
                scores = row.processors(torch.tensor([row.ids], device=self.device), scores)
            if row.sample:
                token = int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1))
            else:
                token = int(scores.argmax(dim=-1))
            row.ids.append(token)
            row.state.step(token)

    def _merge(self, row: Row, cache: DynamicCache) -> None:
        """Add a prefilled row and its cache to the batch, left-padding whichever is shorter."""
        if not self.rows:
            self.rows, self.cache = [row], cache
            self.mask = torch.ones(1, row.position, dtype=torch.long, device=self.device)
            return
        length = max(self.mask.shape[1], row.position)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
            mine.values = torch.cat([_pad_left(mine.values, length), _pad_left(theirs.values, length)])
        joining = torch.ones(1, row.position, dtype=self.mask.dtype, device=self.device)
        self.mask = torch.cat([_pad_left(self.mask, length), _pad_left(joining, length)])
        self.rows.append(row)

    def _leave(self, leaving: list[Row], reason: str | None = None) -> list[tuple[GenerationRequest, Completion]]:
        """Drop `leaving` rows (ending them for `reason` first when given) with their cache rows."""
        if not leaving:
            return []
        for row in leaving:
            if reason is not None:
                row.state.finish(reason)
        keep = [i for i, row in enumerate(self.rows) if row not in leaving]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache = self.mask = None
        else:
            index = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
            # Columns that are padding in every remaining row: cut them, the rows that needed them are gone.
            unused = int(self.mask.argmax(dim=1).min())
            if unused:
                self.mask = self.mask[:, unused:]
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[..., unused:, :], layer.values[..., unused:, :]
        return [(row.request, row.state.completion) for row in leaving]


def _pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """`tensor` with zeros before its sequence dimension (the last for a mask, the one before for keys/values) up to `length`."""
    dim = 1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
