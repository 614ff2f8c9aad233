"""The `qwentune` command: one subcommand per stage, each defined once in its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from qwentune.errors import EXIT_INTERRUPTED, QwentuneError

# stage -> module exposing configure_parser(parser) and run_cli(args) -> int
COMMANDS = {
    "download": ("qwentune.data.download", "fetch raw datasets into data/raw"),
    "preprocess": ("qwentune.data.preprocess", "convert, clean, filter and split data"),
    "train": ("qwentune.train.recipe", "fine-tune a model (LoRA, QLoRA, full, freeze)"),
    "evaluate": ("qwentune.evaluate.runner", "evaluate and write reports"),
    "infer": ("qwentune.infer.cli", "chat, answer one prompt, or answer a file of prompts"),
    "serve": ("qwentune.infer.server", "OpenAI-compatible HTTP server"),
    "export": ("qwentune.model.export", "merge an adapter into a standalone model"),
}


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwentune", description="Fine-tune Qwen-family chat models end to end.")
    subparsers = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        # Import only the stage being run: the others may pull heavy libraries.
        if stage is not None and name != stage:
            subparsers.add_parser(name, help=help_text)
            continue
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).configure_parser(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(stage).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.stage][0])
    try:
        return module.run_cli(args)
    except QwentuneError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _verbose() -> bool:
    return os.environ.get("QWENTUNE_DEBUG", "") not in ("", "0")


def _report(exc: QwentuneError) -> int:
    """The one place an error reaches the user: one line (and its advice) on stderr."""
    from qwentune.console import error

    if _verbose():
        traceback.print_exception(exc)
    error(exc.message if not exc.advice else f"{exc.message}\n  {exc.advice}")
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
