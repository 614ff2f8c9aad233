"""`qwentune serve`: the command line of the OpenAI-compatible server (`qwentune.infer.server`).

Apart from the server so that `--help` and bad flags are answered without importing fastapi or torch.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from qwentune.console import console, notice
from qwentune.errors import UsageError
from qwentune.infer.cli import add_model_arguments, load_engine
from qwentune.infer.settings import DEFAULT_MAX_BODY_MB, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PROMPTS

API_KEY_ENV = "QWENTUNE_API_KEY"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 makes the server reachable from other machines)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api_key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set)"
    )
    parser.add_argument(
        "--served_model_name", default=None, help="the model id clients name (default: --model_path as given)"
    )
    parser.add_argument(
        "--max_batch_size", type=int, default=8, help="most concurrent requests generated as one batch (1: no batching)"
    )
    parser.add_argument(
        "--default_max_tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="new tokens for a request that sets no max_tokens",
    )
    parser.add_argument(
        "--max_body_mb",
        type=float,
        default=DEFAULT_MAX_BODY_MB,
        help="largest request body accepted, in MB; a larger one gets 413 before it is parsed (default: %(default)s)",
    )
    parser.add_argument(
        "--max_prompts",
        type=int,
        default=DEFAULT_MAX_PROMPTS,
        help="most prompts in one /v1/completions request; more get 400 (default: %(default)s)",
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_cli(args: argparse.Namespace) -> int:
    from qwentune.infer.server import create_app, serve

    for flag in ("max_batch_size", "default_max_tokens", "max_prompts"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be >= 1 (got {getattr(args, flag)})")
    if not args.max_body_mb > 0:
        raise UsageError(f"--max_body_mb must be > 0 (got {args.max_body_mb})")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    engine = load_engine(args)
    name = args.served_model_name or args.model_path
    app = create_app(engine, model_name=name, api_key=api_key, max_batch_size=args.max_batch_size,
                     default_max_tokens=args.default_max_tokens, max_body_mb=args.max_body_mb,
                     max_prompts=args.max_prompts)  # fmt: skip
    if not _is_loopback(args.host) and api_key is None:
        notice(f"binding {args.host} without an API key: anyone who can reach this machine can use the model")
    # The key itself is never printed or logged; uvicorn's access log shows method, path and status only.
    console.print(
        f"Serving [bold]{name}[/bold] ({engine.info['device']}, {engine.info['dtype']}) at http://{args.host}:{args.port}/v1"
        f" — API key {'required' if api_key else 'not required'}. Ctrl-C to stop."
    )
    serve(app, host=args.host, port=args.port)
    return 0
