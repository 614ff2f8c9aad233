"""The `qwentune` command: one subcommand per stage, each defined once in its own module.

The doors (`scripts/train.py`, `data/preprocess.py`, ...) call `main([stage, *argv], prog=door)`,
so usage and help name the command the user typed. `guarded` is the single place an error
reaches the user (quick_start.py goes through it too).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable

from qwentune.errors import EXIT_FAILED, EXIT_INTERRUPTED, QwentuneError

# stage -> module exposing configure_parser(parser) and run_cli(args) -> int
COMMANDS = {
    "download": ("qwentune.data.download", "fetch raw datasets into data/raw"),
    "preprocess": ("qwentune.data.preprocess", "convert, clean, filter and split data"),
    "train": ("qwentune.train.recipe", "fine-tune a model (LoRA, QLoRA, full, freeze)"),
    "evaluate": ("qwentune.evaluate.runner", "evaluate and write reports"),
    "infer": ("qwentune.infer.cli", "chat, answer one prompt, or answer a file of prompts"),
    "serve": ("qwentune.infer.serve_cli", "OpenAI-compatible HTTP server"),
    "export": ("qwentune.model.export", "merge an adapter into a standalone model"),
}
VERBOSE_FLAG = "--verbose"
DEBUG_ENV = "QWENTUNE_DEBUG"


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(VERBOSE_FLAG, action="store_true", help=f"on an error, show the traceback too (or set {DEBUG_ENV}=1)")


def stage_parser(stage: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of one stage, named as the user called it (`qwentune train` or `scripts/train.py`)."""
    module_name, help_text = COMMANDS[stage]
    parser = argparse.ArgumentParser(prog=prog or f"qwentune {stage}", description=help_text)
    importlib.import_module(module_name).configure_parser(parser)
    add_verbose_flag(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: lists the stages (each stage's own options live in `stage_parser`)."""
    parser = argparse.ArgumentParser(prog="qwentune", description="Fine-tune Qwen-family chat models end to end.")
    add_verbose_flag(parser)
    subparsers = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, help_text) in COMMANDS.items():
        # Not configured here: configuring imports the stage module, and some pull heavy libraries.
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def parse_arguments(argv: list[str], prog: str | None = None) -> argparse.Namespace:
    """`[--verbose] STAGE [options and dotted overrides in any order]` -> the stage's arguments."""
    leading = 0
    while leading < len(argv) and argv[leading] == VERBOSE_FLAG:
        leading += 1
    rest = argv[leading:]
    if not rest or rest[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints the stages (--help) or why the stage is wrong, and exits
        raise AssertionError("unreachable: argparse exits without a valid stage")
    stage = rest[0]
    # Intermixed: overrides may come before, between or after options (`a=1 --debug b=2`).
    args = stage_parser(stage, prog).parse_intermixed_args(rest[1:])
    args.stage = stage
    args.verbose = args.verbose or leading > 0
    return args


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(argv, prog)
    module = importlib.import_module(COMMANDS[args.stage][0])
    return guarded(lambda: module.run_cli(args), verbose=args.verbose)


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def guarded(action: Callable[[], int], *, verbose: bool = False) -> int:
    """Run `action`; what it raises reaches the user here, once, as a short message on stderr and an exit code."""
    show_traceback = verbose or debug_requested()
    try:
        return action()
    except QwentuneError as exc:
        return report(exc, show_traceback=show_traceback)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # not ours: a bug here or in a library; the traceback is for the bug report
        if show_traceback:
            traceback.print_exception(exc)
        from qwentune.console import error

        hint = "" if show_traceback else f"; run again with {VERBOSE_FLAG} (or {DEBUG_ENV}=1) for the traceback"
        error(f"unexpected {type(exc).__name__}: {exc}{hint}")
        return EXIT_FAILED


def report(exc: QwentuneError, *, show_traceback: bool = False) -> int:
    """The one place an error reaches the user: its message (and advice) on stderr."""
    from qwentune.console import error

    if show_traceback:
        traceback.print_exception(exc)
    error(exc.message if not exc.advice else f"{exc.message}\n  {exc.advice}")
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
