"""`--backend llamacpp`: generation by llama.cpp (llama-cpp-python) from a GGUF file, on CPU.

    engine = LlamaCppInference("./results/checkpoints")              # GGUF exported once, cached
    engine = LlamaCppInference("./results/gguf/model-q4_k_m.gguf")   # or a given file
    engine.generate("Who are you?")

The prompt tokens are ours (the chat template rendered by `QwenInference.prepare` with the same
system prompt and thinking default), llama.cpp only runs the model, and each new token goes
through the same `RowState` as in PyTorch: the same stop ids, stop strings, token limits,
cancellation and streamed text. Requests of a batch are generated one after the other (llama.cpp
keeps one sequence per context here); the server and evaluation call `run_batch` unchanged.
Settings map onto llama.cpp's sampler: greedy when no temperature; otherwise temperature,
top_p, top_k; repetition_penalty is llama.cpp's repeat penalty (over the last 64 tokens, where
transformers penalises every earlier token).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from qwentune.errors import UsageError
from qwentune.infer.decoding import Completion, GenerationRequest, RowState
from qwentune.infer.engine import QwenInference
from qwentune.infer.settings import Sampling

DEFAULT_CONTEXT = 8192  # tokens of KV cache at most: a 32k-context model would reserve GBs it rarely uses


def _llama_cpp():
    from qwentune.model.gguf_export import _llama_cpp as load

    return load()


def _trained_context(gguf_file: Path) -> int:
    """The context length in the GGUF's metadata (read without loading the model)."""
    import gguf

    fields = gguf.GGUFReader(gguf_file).fields
    arch = fields["general.architecture"].contents()
    return int(fields[f"{arch}.context_length"].contents())


class LlamaCppInference(QwenInference):
    continuous_batching = False  # the server's worker calls run_batch: one sequence at a time here
    def __init__(
        self,
        model_path: str,
        *,
        quantization: str = "f16",
        base_model: str | None = None,
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        enable_thinking: bool | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
    ):
        """`model_path`: a .gguf file, or any model QwenInference loads (exported to GGUF once, then cached)."""
        from transformers import AutoTokenizer

        from qwentune.model.checkpoint import read_meta, thinking_default
        from qwentune.model.gguf_export import cached_gguf

        llama_cpp = _llama_cpp()
        if str(model_path).endswith(".gguf"):
            gguf_file = Path(model_path)
            if not gguf_file.is_file():
                raise UsageError(f"GGUF file '{model_path}' does not exist")
            folder = gguf_file.parent
        else:
            folder = cached_gguf(model_path, quantization, base_model=base_model, trust_remote_code=trust_remote_code)
            gguf_file = folder / f"model-{quantization}.gguf"
        # Our own tokenizer where it was saved beside the file (a cached export), else the one in the GGUF.
        if (folder / "tokenizer_config.json").is_file():
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file.name)
        meta = read_meta(folder)
        threads = n_threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count()
        self._context = min(n_ctx or DEFAULT_CONTEXT, _trained_context(gguf_file))
        self.model = llama_cpp.Llama(
            model_path=str(gguf_file), n_ctx=self._context, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self._threads = threads
        self._scorer = None
        self.gguf_file = gguf_file
        self.info = {
            "model_path": str(gguf_file),
            "adapter": False,
            "base_model": meta.get("base_model"),
            "device": "cpu",
            "dtype": gguf_file.stem.removeprefix("model-"),
            "quantization_bit": None,
            "system_prompt": meta.get("system_prompt"),
            "enable_thinking": thinking_default(meta),
            "backend": "llamacpp",
        }
        self.system_prompt = system_prompt if system_prompt is not None else self.info["system_prompt"]
        self.enable_thinking = enable_thinking if enable_thinking is not None else bool(self.info["enable_thinking"])
        self._stop_ids = self._end_of_generation_ids(llama_cpp)
        self._lock = threading.Lock()

    def _end_of_generation_ids(self, llama_cpp) -> set[int]:
        """The GGUF's end-of-generation tokens (eos = end of turn, eot, <|endoftext|>...), as llama.cpp sees them."""
        vocab = llama_cpp.llama_model_get_vocab(self.model.model)
        special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        return {i for i in special if i < self.model.n_vocab() and llama_cpp.llama_vocab_is_eog(vocab, i)}

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def stop_ids(self) -> set[int]:
        return self._stop_ids

    def run_batch(self, requests: list[GenerationRequest], sampling: Sampling) -> list[Completion]:
        with self._lock:
            return [self._generate(request, sampling) for request in requests]

    def _generate(self, request: GenerationRequest, sampling: Sampling) -> Completion:
        row = RowState(request, self.tokenizer, self.stop_ids)
        if sampling.greedy:
            options = dict(temp=0.0, top_k=0, top_p=1.0)
        else:
            options = dict(temp=sampling.temperature, top_k=sampling.top_k or 0, top_p=sampling.top_p or 1.0)
        # Forget the previous prompt: llama-cpp-python would reuse its common prefix from the KV cache, and
        # a prompt evaluated in other chunks can round differently and flip a near-tie (measured on the demo model).
        self.model.reset()
        tokens = self.model.generate(
            request.prompt_ids, min_p=0.0, repeat_penalty=sampling.repetition_penalty or 1.0, reset=True, **options
        )
        for token in tokens:
            row.step(int(token))
            if row.finished:
                break
        if not row.finished:
            row.finish("length")
        return row.completion

    # ---------------------------------------------------------------- scoring (perplexity)

    def sequence_nll(self, ids: list[int], labels: list[int]) -> tuple[float, int]:
        """(summed negative log-likelihood, tokens predicted) of the labelled tokens, as metrics.perplexity counts."""
        llama_cpp = _llama_cpp()
        if self._scorer is None or self._scorer.n_ctx() < len(ids):
            size = max(len(ids), 2048)
            self._scorer = llama_cpp.Llama(
                model_path=str(self.gguf_file), n_ctx=size, n_batch=size, n_ubatch=size, logits_all=True,
                n_threads=self._threads, n_threads_batch=self._threads, verbose=False,
            )  # fmt: skip
        scorer = self._scorer
        scorer.reset()
        scorer.eval(ids)
        logits = np.asarray(scorer.scores[: len(ids) - 1], dtype=np.float64)
        targets = np.asarray(labels[1:])
        keep = targets != -100
        logits, targets = logits[keep], targets[keep]
        peak = logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        return float((log_norm - logits[np.arange(len(targets)), targets]).sum()), int(keep.sum())
