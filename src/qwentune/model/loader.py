"""Load a causal LM (hub id, folder or embedded asset) for training or inference."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from qwentune.assets import resolve_model_name
from qwentune.errors import QwentuneError, RunFailed, UsageError
from qwentune.hub import ModelUnavailable, from_pretrained_kwargs

DAMAGED_MODEL_ADVICE = "check that the folder holds a complete model (config.json and its weights); copy or download it again"


@contextlib.contextmanager
def loading(what: str) -> Iterator[None]:
    """A library's failure to load `what` becomes one RunFailed naming it (exit 1 in every stage)."""
    try:
        yield
    except QwentuneError:
        raise
    except Exception as exc:  # safetensors, torch, peft and shape errors share no base class
        raise RunFailed(f"could not load {what}: {type(exc).__name__}: {exc}", advice=DAMAGED_MODEL_ADVICE) from exc


def quiet_library_noise() -> None:
    """Silence library chatter that says nothing about this run (training and inference both call it)."""
    # bitsandbytes (imported by peft) warns on each CPU import that an optional `kernels` package is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # peft still calls transformers APIs renamed in v5 (loading an adapter asks is_gradient_checkpointing;
    # QLoRA preparation enables checkpointing by the old name).
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*deprecated", category=FutureWarning)
    # We tokenize long texts on purpose (token counts, perplexity windows): "Token indices sequence
    # length is longer than..." says nothing about the run.
    logging.getLogger("transformers.tokenization_utils_base").addFilter(_drop_length_warning)
    # The "Loading weights" bar of every model load: a wall of carriage returns in a log or a pipe.
    if not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def _drop_length_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token indices sequence length is longer")


def quantization_config(bits: int | None, compute_dtype: torch.dtype):
    """bitsandbytes settings for QLoRA: NF4 with double quantization, or 8-bit."""
    if bits is None:
        return None
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    quantization_bit: int | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    device_map: dict | str | None = None,
):
    path = resolve_model_name(name_or_path)
    if (Path(path) / "adapter_config.json").is_file():
        return load_merged_adapter(
            Path(path), dtype=dtype, quantization_bit=quantization_bit, trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, device_map=device_map,
        )
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, **from_pretrained_kwargs(path)}
    if kwargs.get("local_files_only"):
        # AutoModel's look for an adapter config does not inherit local_files_only (transformers 5.x)
        # and would retry the unreachable hub for half a minute.
        kwargs["adapter_kwargs"] = {"local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    quant = quantization_config(quantization_bit, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if Path(path).exists():
        with loading(f"the model in '{path}'"):
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelUnavailable(
            f"could not load the model '{name_or_path}' (not a local folder, so it was looked up on the hub): {exc}\n"
            "If the Hugging Face hub is unreachable: set HF_ENDPOINT to a mirror, download the model and pass "
            "its folder, or use the embedded demo model (embedded:demo-model)."
        ) from exc


def adapter_base(folder: Path) -> str:
    """The model a LoRA output was trained from; raises UsageError when the folder does not say."""
    from qwentune.model.checkpoint import base_model_of

    base = base_model_of(folder)
    if not base:
        raise UsageError(f"adapter '{folder}' does not name its base model (adapter_config.json base_model_name_or_path)")
    return base


def load_merged_adapter(folder: Path, **load):
    """A LoRA training output as a plain model, its adapter merged into its base: a later stage (DPO
    after SFT) trains new adapters on it, and the reference (new adapters disabled) is the SFT model."""
    from peft import PeftModel

    base = load_causal_lm(adapter_base(folder), **load)
    with loading(f"the adapter in '{folder}'"):
        merged = PeftModel.from_pretrained(base, folder).merge_and_unload()
    # peft 0.18 (the floor) leaves its config on the unwrapped model; 0.21 does not. A new LoRA must not see a stale one.
    if hasattr(merged, "peft_config"):
        del merged.peft_config
    return merged


def config_source(name_or_path: str) -> str:
    """The folder or hub id whose config.json describes the model `load_causal_lm` loads from `name_or_path`."""
    path = resolve_model_name(name_or_path)
    if (Path(path) / "adapter_config.json").is_file():
        return config_source(adapter_base(Path(path)))
    return path


def load_for_inference(
    model_path: str,
    *,
    base_model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantization_bit: int | None = None,
    trust_remote_code: bool = False,
):
    """(model, tokenizer, info) from a training output, checkpoint, adapter, merged model, hub id or embedded name.

    An adapter folder names its base model (overridable with `base_model`). The tokenizer, chat
    template, system prompt and stop tokens come from what training saved next to the weights.
    `dtype`: "auto" (bf16 where the device has it, else fp32), "saved" (as the weights were
    saved), or float32 / bfloat16 / float16.
    `info` says what was loaded: model_path, adapter, base_model, device, dtype, system_prompt,
    enable_thinking (the model's default: see checkpoint.thinking_default).
    """
    quiet_library_noise()
    from pathlib import Path

    from transformers import GenerationConfig

    from qwentune.data.tokenize import load_tokenizer
    from qwentune.model.checkpoint import (
        ADAPTER_CONFIG,
        base_model_of,
        chat_generation_config,
        read_meta,
        resolve_model_dir,
        thinking_default,
    )
    from qwentune.model.device import resolve_dtype, select_device

    target = resolve_model_dir(model_path)
    folder = target if isinstance(target, Path) else None
    meta = read_meta(folder) if folder else {}
    chosen_device = select_device(device)
    torch_dtype = "auto" if dtype == "saved" else resolve_dtype(dtype, chosen_device)
    load = dict(dtype=torch_dtype, quantization_bit=quantization_bit, trust_remote_code=trust_remote_code)
    if quantization_bit is not None:
        # A quantized model cannot be moved after loading: bitsandbytes places it while loading.
        load["device_map"] = {"": chosen_device}
    is_adapter = folder is not None and (folder / ADAPTER_CONFIG).is_file()
    if is_adapter:
        from peft import PeftModel

        base = base_model or base_model_of(folder)
        if not base:
            raise UsageError(f"adapter '{folder}' does not name its base model; pass base_model (--base_model)")
        base_lm = load_causal_lm(base, **load)
        with loading(f"the adapter in '{folder}'"):
            model = PeftModel.from_pretrained(base_lm, folder)
        plain_model = model.get_base_model()
    else:
        base = meta.get("base_model", str(target))
        model = plain_model = load_causal_lm(str(target), **load)
    has_tokenizer = folder is not None and (folder / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(folder) if has_tokenizer else base, trust_remote_code)
    if is_adapter and (folder / "generation_config.json").is_file():
        # PeftModel loads the base model's generation config; the tuned model's stop ids are saved with the adapter.
        plain_model.generation_config = GenerationConfig.from_pretrained(folder)
    plain_model.generation_config = chat_generation_config(model, tokenizer)
    if quantization_bit is None:
        model.to(chosen_device)
    model.eval()
    info = {
        "model_path": str(target),
        "adapter": is_adapter,
        "base_model": base,
        "device": chosen_device,
        "dtype": str(model.dtype).removeprefix("torch."),
        "quantization_bit": quantization_bit,
        "system_prompt": meta.get("system_prompt"),
        "enable_thinking": thinking_default(meta),
    }
    return model, tokenizer, info
