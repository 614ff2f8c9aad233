"""`qwentune infer` / scripts/inference.py: one prompt, a file of prompts, or an interactive chat."""

from __future__ import annotations

import argparse

from qwentune.console import console
from qwentune.paths import CHECKPOINTS_DIR


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_path", default=str(CHECKPOINTS_DIR), help="training output, checkpoint, adapter, model folder, hub id or embedded:demo-model")
    parser.add_argument("--base_model", default=None, help="base model of an adapter (default: the one it names)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--interactive", action="store_true", help="chat in the terminal (/help for commands)")
    mode.add_argument("--input", help="answer one prompt and exit")
    mode.add_argument("--input_file", help="answer every prompt of a file (text: one per line; .jsonl: prompt or messages)")
    parser.add_argument("--output_file", help="where --input_file answers go (.jsonl or text, in input order)")
    parser.add_argument("--max_length", type=int, default=512, help="most new tokens per answer")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: greedy)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling (with --temperature)")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per generation batch (--input_file)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, npu")
    parser.add_argument("--load_in_bits", type=int, choices=[4, 8], default=None, help="load the model quantized (bitsandbytes)")


def _validate(args: argparse.Namespace) -> str | None:
    if args.input_file and not args.output_file:
        return "--input_file needs --output_file"
    if args.temperature is not None and args.temperature < 0:
        return "--temperature must be >= 0"
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return "--top_p must be in (0, 1]"
    if args.max_length < 1:
        return "--max_length must be >= 1"
    return None


def run_cli(args: argparse.Namespace) -> int:
    problem = _validate(args)
    if problem:
        console.print(f"[red]error:[/red] {problem}")
        return 2
    from qwentune.infer.engine import QwenInference
    from qwentune.model.checkpoint import NoModelError

    settings = dict(max_new_tokens=args.max_length, temperature=args.temperature, top_p=args.top_p)
    with console.status(f"Loading {args.model_path} ..."):
        try:
            engine = QwenInference(
                args.model_path,
                base_model=args.base_model,
                device=args.device,
                quantization_bit=args.load_in_bits,
                system_prompt=args.system,
            )
        except (NoModelError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    if args.input is not None:
        for piece in engine.stream(args.input, **settings):
            console.out(piece, end="", highlight=False)
        console.out("")
        return 0
    if args.input_file:
        from qwentune.infer.batch import answer_file

        return answer_file(engine, args.input_file, args.output_file, batch_size=args.batch_size, **settings)
    from qwentune.infer.interactive import chat_loop

    return chat_loop(engine, **settings)
