"""Load test of `qwentune serve`: concurrent streaming clients against a server on loopback.

    python benchmarks/serve_load.py                                  # demo model, 8 clients, 32 requests
    python benchmarks/serve_load.py --max_batch_size 1               # the same without batching
    python benchmarks/serve_load.py --model_path ./results/checkpoints --requests 64 --max_tokens 128

Starts the server in its own process (so the clients do not compete with it for the GIL) on
127.0.0.1 and a free port, sends a fixed number of streaming chat requests from `--clients`
concurrent clients, then prints the setup, completed requests, errors, generated tokens per
second, and latency percentiles (whole answer and first token). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain what a neural network is in two sentences.",
    "请用一句话介绍一下你自己。",
    "Write a haiku about autumn.",
    "What is 17 times 23?",
    "Name three primary colours.",
    "Why is the sky blue?",
]


@dataclass
class Result:
    ok: bool
    latency: float = 0.0
    first_token: float = 0.0
    tokens: int = 0
    error: str = ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args, port: int, log) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "qwentune.cli", "serve", "--model_path", args.model_path, "--host", "127.0.0.1",
        "--port", str(port), "--served_model_name", "bench", "--max_batch_size", str(args.max_batch_size),
        "--default_max_tokens", str(args.max_tokens), "--device", args.device,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def wait_until_ready(base_url: str, server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            return httpx.get(f"{base_url}/health", timeout=2).raise_for_status().json()
        except httpx.HTTPError:
            time.sleep(0.5)
    raise TimeoutError(f"the server was not ready within {timeout:.0f} s")


async def one_request(client: httpx.AsyncClient, number: int, max_tokens: int) -> Result:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": QUESTIONS[number % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first_token = None
    tokens = 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return Result(False, error=f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    return Result(False, error=chunk["error"]["message"])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first_token is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first_token = time.perf_counter() - started
    except httpx.HTTPError as exc:
        return Result(False, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    return Result(True, latency, first_token if first_token is not None else latency, tokens)


async def run_clients(
    base_url: str, clients: int, requests: int, max_tokens: int, timeout: float
) -> tuple[list[Result], float]:
    numbers = iter(range(requests))  # shared: each client takes the next request number until none are left
    results: list[Result] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for number in numbers:
            results.append(await one_request(client, number, max_tokens))

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        return results, time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(args, health: dict, results: list[Result], wall: float) -> None:
    import torch
    import transformers

    done = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in done)
    print("setup:")
    print(f"  model {args.model_path} on {health['device']} ({health['dtype']}); max_batch_size {args.max_batch_size}; "
          f"greedy; max_tokens {args.max_tokens}")  # fmt: skip
    print(
        f"  {args.clients} concurrent streaming clients, {args.requests} requests, {len(QUESTIONS)} distinct questions"
    )
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"  {platform.machine()} with {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); "
          f"torch {torch.__version__} (OMP_NUM_THREADS={threads}), transformers {transformers.__version__}, "
          f"python {platform.python_version()}")  # fmt: skip
    if torch.cuda.is_available():
        print(f"  GPU: {torch.cuda.get_device_name(0)}")
    print("results:")
    print(f"  completed {len(done)}/{len(results)} requests in {wall:.1f} s; errors {len(results) - len(done)}")
    for failure in [r for r in results if not r.ok][:5]:
        print(f"    error: {failure.error}")
    if done:
        latencies, firsts = [r.latency for r in done], [r.first_token for r in done]
        print(f"  generated {tokens} tokens: {tokens / wall:.1f} tokens/s, {len(done) / wall:.2f} requests/s")
        print(f"  latency p50 {statistics.median(latencies):.2f} s, p99 {percentile(latencies, 0.99):.2f} s; "
              f"first token p50 {statistics.median(firsts):.2f} s, p99 {percentile(firsts, 0.99):.2f} s")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_path", default="embedded:demo-model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--startup_timeout", type=float, default=600, help="seconds to wait for the model to load")
    parser.add_argument("--request_timeout", type=float, default=600)
    args = parser.parse_args()

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(args, port, log)
        try:
            health = wait_until_ready(base_url, server, args.startup_timeout)
            # One request first, so loading-time work (first kernels, caches) is not counted.
            asyncio.run(run_clients(base_url, 1, 1, 4, args.request_timeout))
            results, wall = asyncio.run(
                run_clients(base_url, args.clients, args.requests, args.max_tokens, args.request_timeout)
            )
        except (RuntimeError, TimeoutError) as exc:
            log.seek(0)
            print(f"benchmark failed: {exc}\nserver log (end):\n{log.read()[-3000:]}", file=sys.stderr)
            return 1
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    report(args, health, results, wall)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
