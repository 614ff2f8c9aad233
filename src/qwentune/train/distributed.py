"""Processes and platforms: torchrun DDP, DeepSpeed ZeRO, and Ascend NPU with MindSpeed.

The launcher (torchrun, deepspeed, or none) sets RANK / WORLD_SIZE; the Trainer (through
accelerate) then runs DDP over NCCL, HCCL or gloo. ZeRO comes from `--deepspeed FILE` or,
for multi-process runs, from the guide's `mindspeed.zero_stage`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from qwentune.config.base import ConfigError
from qwentune.config.training import TrainConfig
from qwentune.console import notice as print_notice

INSTALL_DEEPSPEED = "pip install deepspeed (on CPU run with DS_ACCELERATOR=cpu)"


def notice(message: str) -> None:
    """A notice from the main process only (every process of a run reaches the same conclusion)."""
    if is_main_process():
        print_notice(message)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def pooled_means(totals: dict[str, tuple[float, int]]) -> dict[str, float]:
    """{name: mean} of (sum, count) totals pooled over every process of a distributed run; alone, this
    process's. A name only some processes have counts zero on the others; a name with no count is left out.
    Every process must call it at the same point (each logs at the same steps)."""
    import torch
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    names = sorted(totals)
    if distributed:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, names)
        names = sorted(set().union(*gathered))
    if not names:
        return {}
    pooled = torch.tensor([totals.get(name, (0.0, 0)) for name in names], dtype=torch.float64)
    if distributed:
        # gloo reduces CPU tensors; NCCL needs them on this process's GPU.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        pooled = pooled.to(device)
        dist.all_reduce(pooled)
    return {name: total / count for name, (total, count) in zip(names, pooled.tolist(), strict=True) if count}


def memory_for_this_process(device: str) -> int:
    """Free memory this process may plan with: its accelerator's, or its share of the machine's RAM."""
    from qwentune.model.device import available_memory

    if device == "cpu":
        return available_memory(device) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return available_memory(device)


def zero_config(stage: int) -> dict:
    """A DeepSpeed ZeRO config; "auto" values are filled by the Trainer from the training config."""
    zero: dict = {
        "stage": stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1e9,
            "stage3_max_reuse_distance": 1e9,
            # Save a full, loadable model at the end (not only the shards).
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    else:
        zero |= {"allgather_partitions": True, "allgather_bucket_size": 5e8, "reduce_scatter": True}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "zero_optimization": zero,
    }


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def resolve_deepspeed(config_file: str | None, config: TrainConfig) -> str | dict | None:
    """The DeepSpeed config to train with: `--deepspeed FILE`, else ZeRO from `mindspeed.zero_stage` when there is more than one process."""
    if config_file:
        if not deepspeed_available():
            raise ConfigError(f"--deepspeed {config_file} needs DeepSpeed: {INSTALL_DEEPSPEED}")
        if not Path(config_file).is_file():
            raise ConfigError(f"--deepspeed: no such file {config_file} (shipped: config/deepspeed/zero2.json, zero3.json)")
        try:  # a broken file fails here, not deep inside DeepSpeed
            json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--deepspeed {config_file} is not valid JSON: {exc}") from exc
        return config_file
    stage = config.mindspeed.zero_stage
    if stage == 0 or world_size() == 1:
        return None
    if not deepspeed_available():
        notice(f"mindspeed.zero_stage {stage} asks for DeepSpeed ZeRO, which is not installed: plain DDP ({INSTALL_DEEPSPEED}).")
        return None
    return zero_config(stage)


def join_deepspeed_processes(device: str) -> None:
    """DeepSpeed's handle on the process group the Trainer's arguments started.

    accelerate sets it up on accelerators but not for CPU (gloo) runs, where ZeRO-3's sharded
    weight loading would otherwise see a single process. A no-op once set up.
    """
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else None)


def describe_processes(deepspeed: str | dict | None, config: TrainConfig, device: str) -> str:
    """One phrase for the plan: how many processes and what shards what."""
    processes = world_size()
    if deepspeed is not None:
        return f"{processes} process{'es' if processes > 1 else ''}, DeepSpeed ZeRO-{zero_stage_of(deepspeed)}"
    if processes > 1:
        return f"{processes} processes, DDP"
    if config.mindspeed.zero_stage:
        notice(
            f"mindspeed.zero_stage {config.mindspeed.zero_stage} shards across processes; this run has one, so ZeRO is off "
            "(launch with torchrun --nproc_per_node=N or deepspeed to use it)."
        )
    return "1 process"


def zero_stage_of(deepspeed: str | dict | None) -> int:
    if deepspeed is None:
        return 0
    data = json.loads(Path(deepspeed).read_text()) if isinstance(deepspeed, str) else deepspeed
    return int(data.get("zero_optimization", {}).get("stage", 0))


def prepare_platform(config: TrainConfig, device: str) -> None:
    """On CPU, DeepSpeed told so; on Ascend, MindSpeed's adaptor when asked for and installed; elsewhere one
    line on what runs instead of MindSpeed."""
    if device == "cpu":
        # DeepSpeed (imported by accelerate when installed) would otherwise probe for an accelerator and
        # log a warning in every run; a value the user set wins.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not config.mindspeed.use_mindspeed:
        return
    if device != "npu":
        notice(f"mindspeed.use_mindspeed is set but no Ascend NPU is available: training with PyTorch on {device}.")
        return
    if importlib.util.find_spec("mindspeed") is None:
        notice("MindSpeed is not installed: training with torch_npu only (install MindSpeed for its fused NPU kernels).")
        return
    try:
        # MindSpeed patches torch and Megatron for the NPU when its adaptor is imported.
        import mindspeed.megatron_adaptor  # noqa: F401
    except Exception as exc:  # it also needs Megatron-LM; torch_npu alone still trains
        notice(f"MindSpeed's adaptor could not be applied ({exc}): training with torch_npu only.")
        return
    notice("MindSpeed adaptor applied (mindspeed.megatron_adaptor) on the Ascend NPU.")
