"""Which accelerator to use and which dtype it can train in."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from qwentune.errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def npu_available() -> bool:
    """Ascend NPU: torch_npu importable and a device present."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401  (registers torch.npu)

    return bool(torch.npu.is_available())


class DeviceUnavailable(UsageError, RuntimeError):
    """The device the config or a flag asks for is not on this machine (exit 2)."""


def select_device(requested: str = "auto") -> str:
    """'auto' -> cuda, else npu, else cpu; an explicit choice is checked."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if npu_available():
            return "npu"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device '{requested}' was asked for but CUDA is not available; use device: auto or cpu")
    if requested.startswith("npu") and not npu_available():
        raise DeviceUnavailable(f"device '{requested}' was asked for but no Ascend NPU (torch_npu) is available")
    return requested


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device.startswith("npu")


def fp16_supported(device: str) -> bool:
    """Half precision that trains at speed: accelerators only (CPU fp16 kernels are slow and few)."""
    return device.startswith(("cuda", "npu"))


def available_memory(device: str) -> int:
    """Bytes free for a new run: the accelerator's free memory, or the RAM available on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device.startswith("npu"):
        return torch.npu.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'auto' -> bf16 where the device has it, else fp32 (CPU half precision is slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return DTYPES[name]


@dataclass(frozen=True)
class Precision:
    """How a run computes: the weights' dtype, mixed precision, and what was changed from the config."""

    dtype: torch.dtype
    fp16: bool = False
    bf16: bool = False
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        mixed = " + fp16 mixed precision" if self.fp16 else " + bf16 mixed precision" if self.bf16 else ""
        return str(self.dtype).removeprefix("torch.") + mixed


def training_precision(torch_dtype: str, fp16: bool, bf16: bool, device: str) -> Precision:
    """Half precision where the device trains in it; bf16 falls back to fp16 on GPUs without it, else to fp32.

    fp16 weights always train with fp16 mixed precision (loss scaling; the trainable parameters
    are kept in fp32 by the caller): pure fp16 updates underflow.
    """
    notes = []
    dtype = resolve_dtype(torch_dtype, device)
    half = torch.float16 if fp16_supported(device) else torch.float32
    if dtype == torch.bfloat16 and not bf16_supported(device):
        dtype = half
        notes.append(f"model.torch_dtype bfloat16 is not supported on {device}: using {str(half).removeprefix('torch.')}.")
    if dtype == torch.float16 and not fp16_supported(device):
        dtype = torch.float32
        notes.append(f"model.torch_dtype float16 does not train on {device}: using float32.")
    if bf16 and not bf16_supported(device):
        bf16, fp16 = False, fp16 or fp16_supported(device)
        notes.append(f"training.bf16 is not supported on {device}: " + ("fp16 instead." if fp16 else "mixed precision is off."))
    if fp16 and not fp16_supported(device):
        fp16 = False
        notes.append(f"training.fp16 needs an accelerator: mixed precision is off on {device}.")
    if dtype == torch.float16:
        fp16, bf16 = True, False
    return Precision(dtype, fp16=fp16, bf16=bf16, notes=tuple(notes))
