"""Which accelerator to use and which dtype it can train in."""

from __future__ import annotations

import importlib.util

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def npu_available() -> bool:
    """Ascend NPU: torch_npu importable and a device present."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401  (registers torch.npu)

    return bool(torch.npu.is_available())


def select_device(requested: str = "auto") -> str:
    """'auto' -> cuda, else npu, else cpu; an explicit choice is checked."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if npu_available():
            return "npu"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{requested}' was asked for but CUDA is not available; use device: auto or cpu")
    if requested.startswith("npu") and not npu_available():
        raise RuntimeError(f"device '{requested}' was asked for but no Ascend NPU (torch_npu) is available")
    return requested


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device.startswith("npu")


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'auto' -> bf16 where the device has it, else fp32 (CPU half precision is slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return DTYPES[name]
