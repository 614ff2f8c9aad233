"""Generation backends: PyTorch (`QwenInference`, the default) and llama.cpp (`LlamaCppInference`).

Both offer the same API (generate, chat, batch_generate, stream, run_batch, prompt_ids, request),
the same prompt tokens and the same stop handling (`qwentune.infer.decoding.RowState`), so the
CLI, the server and the evaluation take either without knowing which.
"""

from __future__ import annotations

BACKENDS = ("torch", "llamacpp")


def load_engine(model_path: str, backend: str = "torch", **kwargs):
    """An engine for `model_path` on `backend`; kwargs are those of the chosen engine's constructor."""
    from qwentune.errors import UsageError

    if backend == "torch":
        from qwentune.infer.engine import QwenInference

        return QwenInference(model_path, **kwargs)
    if backend == "llamacpp":
        from qwentune.infer.backends.llamacpp import LlamaCppInference

        return LlamaCppInference(model_path, **kwargs)
    raise UsageError(f"--backend '{backend}' is not one of: {', '.join(BACKENDS)}")
