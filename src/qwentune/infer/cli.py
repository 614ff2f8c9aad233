"""`qwentune infer` / scripts/inference.py: one prompt, a file of prompts, or an interactive chat."""

from __future__ import annotations

import argparse

from qwentune.console import console
from qwentune.errors import UsageError
from qwentune.infer.settings import DEFAULT_MAX_NEW_TOKENS
from qwentune.paths import CHECKPOINTS_DIR


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which model to load and how: shared by `infer` and `serve`."""
    parser.add_argument(
        "--model_path",
        default=str(CHECKPOINTS_DIR),
        help="training output, checkpoint, adapter or model folder, hub id, or embedded:demo-model",
    )
    parser.add_argument("--base_model", default=None, help="base model of an adapter (default: the one it names)")
    parser.add_argument("--system", default=None, help="system prompt (default: the one the model was trained with)")
    parser.add_argument("--device", default="auto", help="auto (cuda, else npu, else cpu), cpu, cuda, cuda:1, npu")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bf16 where supported, else fp32",
    )
    parser.add_argument(
        "--load_in_bits", type=int, choices=[4, 8], default=None, help="load the model quantized (bitsandbytes)"
    )
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="run the model's own code (only for models you trust)"
    )
    parser.add_argument(
        "--enable_thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Qwen3-style models: reason in a think block before answering (default: as the model was trained)",
    )
    parser.add_argument(
        "--backend", choices=["torch", "llamacpp"], default="torch",
        help="torch: PyTorch; llamacpp: llama.cpp on CPU (llamacpp extra) from a .gguf --model_path, "
        "or a GGUF exported once and cached next to the model",
    )  # fmt: skip
    parser.add_argument(
        "--gguf_quantization",
        default="f16",
        help="with --backend llamacpp: the cached GGUF's type (f16, q8_0, q4_k_m...)",
    )


def load_engine(args: argparse.Namespace):
    """The engine for the model the arguments name (a model that cannot load raises RunFailed: exit 1)."""
    from qwentune.infer.engine import QwenInference

    if args.backend == "llamacpp":
        return _load_llamacpp(args)
    with console.status(f"Loading {args.model_path} ..."):
        return QwenInference(
            args.model_path, device=args.device, dtype=args.dtype, quantization_bit=args.load_in_bits, **_common(args)
        )


def _common(args: argparse.Namespace) -> dict:
    """The engine arguments both backends take."""
    return dict(
        base_model=args.base_model,
        trust_remote_code=args.trust_remote_code,
        system_prompt=args.system,
        enable_thinking=args.enable_thinking,
    )


def _load_llamacpp(args: argparse.Namespace):
    from qwentune.infer.backends.llamacpp import LlamaCppInference

    if args.load_in_bits is not None or args.device not in ("auto", "cpu") or args.dtype != "auto":
        raise UsageError(
            "--backend llamacpp runs on CPU with the GGUF's own types: "
            "drop --load_in_bits/--device/--dtype and choose --gguf_quantization"
        )
    with console.status(f"Loading {args.model_path} with llama.cpp (a first run exports the GGUF) ..."):
        return LlamaCppInference(args.model_path, quantization=args.gguf_quantization, **_common(args))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--interactive", action="store_true", help="chat in the terminal (/help for commands)")
    mode.add_argument("--input", help="answer one prompt and exit")
    mode.add_argument(
        "--input_file", help="answer every prompt of a file (text: one per line; .jsonl: prompt or messages)"
    )
    parser.add_argument("--output_file", help="where --input_file answers go (.jsonl or text, in input order)")
    # The guide's name: it bounds the answer, not prompt + answer.
    parser.add_argument("--max_length", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="most new tokens per answer")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: greedy)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling (with --temperature)")
    parser.add_argument(
        "--top_k", type=int, default=None, help="sample among the k likeliest tokens (with --temperature)"
    )
    parser.add_argument("--repetition_penalty", type=float, default=None, help="> 1 discourages repeating")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per generation batch (--input_file)")


def generation_settings(args: argparse.Namespace):
    """The arguments' GenerationSettings; a bad value raises UsageError naming its option."""
    from pydantic import ValidationError

    from qwentune.infer.settings import GenerationSettings

    options = {"max_new_tokens": "--max_length"}
    values = dict(
        max_new_tokens=args.max_length,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
    )
    try:
        return GenerationSettings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0])
        raise UsageError(f"{options.get(name, '--' + name)}: {error['msg']}") from None


def run_cli(args: argparse.Namespace) -> int:
    if args.input_file and not args.output_file:
        raise UsageError("--input_file needs --output_file")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1 (got {args.batch_size})")
    if args.input_file:
        from qwentune.infer.batch import check_files

        check_files(args.input_file, args.output_file)  # before the model loads: a mistake costs nothing
    settings = generation_settings(args)
    engine = load_engine(args)
    if args.input is not None:
        from qwentune.infer.interactive import show_reply

        # Reasoning shown dimmed, as in the chat; the answer as it is written.
        for _ in show_reply(engine.stream_reply(args.input, **settings.model_dump())):
            pass
        console.out("")
        return 0
    if args.input_file:
        from qwentune.infer.batch import answer_file

        return answer_file(engine, args.input_file, args.output_file, settings, batch_size=args.batch_size)
    from qwentune.infer.interactive import chat_loop

    return chat_loop(engine, settings)
