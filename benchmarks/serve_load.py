"""Load test of `qwentune serve`: concurrent streaming clients against a server on loopback.

    python benchmarks/serve_load.py                                  # demo model, 8 clients, 32 requests
    python benchmarks/serve_load.py --max_batch_size 1               # the same without batching
    python benchmarks/serve_load.py --model_path ./results/checkpoints --requests 64 --max_tokens 128
    python benchmarks/serve_load.py --scenario disconnect --requests 16   # half the clients give up
    python benchmarks/serve_load.py --compare_with /tmp/old-qwentune     # that checkout's server, then this one's

Starts the server in its own process (so the clients do not compete with it for the GIL) on
127.0.0.1 and a free port, sends a fixed number of streaming chat requests from `--clients`
concurrent clients, then prints the setup, completed requests, errors, generated tokens per
second, and latency percentiles (whole answer and first token). Every wait is bounded.

`--scenario disconnect` runs two phases against the same server, side by side: half the
clients alone, then the same with the other half asking for long answers (`--abandon_max_tokens`,
prompts that ask for a long text) and leaving after `--abandon_after` seconds (alternately a
non-streamed request that times out and a stream closed mid-answer), until the first half is done. It prints the latency of the
clients that stayed in both phases, and from the server's /health counters the requests
abandoned, the tokens generated for them after their client left, and how long the worker
stayed busy once every client was gone.

`--compare_with DIR` runs the same scenario twice in one run, first against a server from the
qwentune checkout in DIR (e.g. `git worktree add /tmp/old-qwentune HEAD~3`), then against this
one's, and ends with their figures side by side; `--rounds N` alternates them N times and
compares each figure's median.
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
# What leaving clients ask: answers longer than they wait for (the demo model's answers above end in 8-60 tokens).
LONG_QUESTIONS = [
    "Write a long story about a dragon and a knight, at least 500 words.",
    "Write a detailed essay on the history of the Roman Empire, with many paragraphs.",
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


def start_server(args, port: int, log, checkout: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "qwentune.cli", "serve", "--model_path", args.model_path, "--host", "127.0.0.1",
        "--port", str(port), "--served_model_name", "bench", "--max_batch_size", str(args.max_batch_size),
        "--default_max_tokens", str(args.max_tokens), "--device", args.device,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=checkout)


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


async def abandoned_request(client: httpx.AsyncClient, number: int, max_tokens: int, after: float) -> bool:
    """A long request whose client leaves after `after` seconds: even numbers wait for a whole answer
    (and time out), odd numbers stream it (and close the stream). False when the answer came first."""
    body = {"model": "bench", "messages": [{"role": "user", "content": LONG_QUESTIONS[number % len(LONG_QUESTIONS)]}],
            "max_tokens": max_tokens, "stream": bool(number % 2)}  # fmt: skip
    try:
        if number % 2 == 0:
            await client.post("/v1/chat/completions", json=body, timeout=after)
            return False
        started = time.perf_counter()
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for _ in response.aiter_lines():
                if time.perf_counter() - started > after:
                    return True
        return False
    except httpx.TimeoutException:
        return True


async def run_with_leavers(
    base_url: str, keepers: int, leavers: int, requests: int, args
) -> tuple[list[Result], float, int, int]:
    """`keepers` clients share `requests` requests while `leavers` clients abandon long ones until they are done;
    the results, wall time, requests left and requests answered before their client left."""
    numbers = iter(range(requests))
    results: list[Result] = []
    done = asyncio.Event()
    left = answered = 0

    async def keeper(client: httpx.AsyncClient) -> None:
        for number in numbers:
            results.append(await one_request(client, number, args.max_tokens))

    async def leaver(client: httpx.AsyncClient, first: int) -> None:
        nonlocal left, answered
        number = first
        while not done.is_set():
            if await abandoned_request(client, number, args.abandon_max_tokens, args.abandon_after):
                left += 1
            else:
                answered += 1
            number += leavers

    limits = httpx.Limits(max_connections=keepers + leavers)
    async with httpx.AsyncClient(base_url=base_url, timeout=args.request_timeout, limits=limits) as client:
        started = time.perf_counter()
        leaving = [asyncio.create_task(leaver(client, i)) for i in range(leavers)]
        await asyncio.gather(*(keeper(client) for _ in range(keepers)))
        wall = time.perf_counter() - started
        done.set()
        await asyncio.gather(*leaving)
    return results, wall, left, answered


def wait_until_idle(base_url: str, timeout: float) -> tuple[dict, float]:
    """/health once nothing waits or generates, and the seconds that took."""
    started = time.perf_counter()
    while True:
        stats = httpx.get(f"{base_url}/health", timeout=30).raise_for_status().json()
        if stats["generating"] == 0 and stats["waiting"] == 0:
            return stats, time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"the worker was still busy {timeout:.0f} s after the last client left: {stats}")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency_line(results: list[Result]) -> str:
    done = [r for r in results if r.ok]
    if not done:
        return "no request completed"
    latencies, firsts = [r.latency for r in done], [r.first_token for r in done]
    return (f"latency p50 {statistics.median(latencies):.2f} s, p99 {percentile(latencies, 0.99):.2f} s; "
            f"first token p50 {statistics.median(firsts):.2f} s, p99 {percentile(firsts, 0.99):.2f} s")  # fmt: skip


def disconnect_scenario(args, base_url: str, server: subprocess.Popen) -> tuple[list[Result], dict]:
    """Prints both phases; returns every kept request's result and the figures to compare."""
    keepers = args.clients - args.clients // 2
    leavers = args.clients // 2
    print("phases (same server, one after the other):")
    phases, figures = [], {}
    for name, with_leavers in (("alone", 0), ("with leavers", leavers)):
        before, _ = wait_until_idle(base_url, args.request_timeout)
        cpu_before = cpu_seconds(server.pid)
        results, wall, left, answered = asyncio.run(
            run_with_leavers(base_url, keepers, with_leavers, args.requests, args)
        )
        after, idle_after = wait_until_idle(base_url, args.request_timeout)
        cpu = cpu_seconds(server.pid) - cpu_before
        phases.append(results)
        done = [r for r in results if r.ok]
        print(f"  {name}: {keepers} streaming clients, {len(done)}/{len(results)} requests completed in {wall:.1f} s "
              f"(server {cpu:.1f} CPU-s); {latency_line(results)}")  # fmt: skip
        for failure in [r for r in results if not r.ok][:5]:
            print(f"    error: {failure.error}")
        figures.update({f"{name}: {key}": value for key, value in latency_figures(results).items()})
        figures[f"{name}: wall s"] = wall
        figures[f"{name}: server CPU-s"] = cpu
        if with_leavers:
            abandoned = after["abandoned"] - before["abandoned"]
            after_leaving = after["tokens_after_abandonment"] - before["tokens_after_abandonment"]
            print(f"    {with_leavers} leaving clients sent {left + answered} requests of {args.abandon_max_tokens} tokens "
                  f"and left {left} after {args.abandon_after:g} s ({answered} answered sooner); the server abandoned "
                  f"{abandoned}, generating "
                  f"{after_leaving} tokens for them after their clients left "
                  f"({after_leaving / max(abandoned, 1):.2f} a request)")  # fmt: skip
            print(f"    worker idle {idle_after:.2f} s after the last client left "
                  f"(generated in this phase: {after['tokens_generated'] - before['tokens_generated']} tokens)")  # fmt: skip
            figures["with leavers: tokens after leaving"] = after_leaving
            figures["with leavers: worker idle after s"] = idle_after
    alone, shared = ([r.latency for r in phase if r.ok] for phase in phases)
    if alone and shared:
        ratio = statistics.median(shared) / statistics.median(alone)
        print(f"  p50 latency with leavers / alone: {ratio:.2f}x")
        figures["p50 latency with leavers / alone"] = ratio
    return phases[0] + phases[1], figures


def latency_figures(results: list[Result]) -> dict:
    done = [r for r in results if r.ok]
    if not done:
        return {"completed": 0}
    latencies, firsts = [r.latency for r in done], [r.first_token for r in done]
    return {"completed": len(done), "latency p50 s": statistics.median(latencies),
            "latency p99 s": percentile(latencies, 0.99), "first token p50 s": statistics.median(firsts)}  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def print_setup(args, health: dict) -> None:
    import torch
    import transformers

    print("setup:")
    print(f"  model {args.model_path} on {health['device']} ({health['dtype']}); max_batch_size {args.max_batch_size}; "
          f"greedy; max_tokens {args.max_tokens}")  # fmt: skip
    if args.scenario == "disconnect":
        print(f"  scenario disconnect: {args.clients - args.clients // 2} clients share {args.requests} streaming "
              f"requests; {args.clients // 2} more ask for {args.abandon_max_tokens} tokens and leave after "
              f"{args.abandon_after:g} s; {len(QUESTIONS)} distinct questions, {len(LONG_QUESTIONS)} for those "
              f"that leave")  # fmt: skip
    else:
        print(f"  {args.clients} concurrent streaming clients, {args.requests} requests, "
              f"{len(QUESTIONS)} distinct questions")  # fmt: skip
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"  {platform.machine()} with {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); "
          f"torch {torch.__version__} (OMP_NUM_THREADS={threads}), transformers {transformers.__version__}, "
          f"python {platform.python_version()}")  # fmt: skip
    if torch.cuda.is_available():
        print(f"  GPU: {torch.cuda.get_device_name(0)}")


def report(results: list[Result], wall: float, cpu: float) -> dict:
    """Prints the steady scenario's results; returns the figures to compare."""
    done = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in done)
    print("results:")
    print(f"  completed {len(done)}/{len(results)} requests in {wall:.1f} s; errors {len(results) - len(done)}")
    for failure in [r for r in results if not r.ok][:5]:
        print(f"    error: {failure.error}")
    if done:
        print(f"  generated {tokens} tokens: {tokens / wall:.1f} tokens/s, {len(done) / wall:.2f} requests/s "
              f"(server {cpu:.1f} CPU-s)")  # fmt: skip
        print(f"  {latency_line(results)}")
    return {**latency_figures(results), "wall s": wall, "tokens/s": tokens / wall, "server CPU-s": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["steady", "disconnect"], default="steady")
    parser.add_argument("--model_path", default="embedded:demo-model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--abandon_max_tokens", type=int, default=256, help="disconnect: tokens a leaving client asks for")
    parser.add_argument("--abandon_after", type=float, default=2.0, help="disconnect: seconds before a client leaves")
    parser.add_argument("--startup_timeout", type=float, default=600, help="seconds to wait for the model to load")
    parser.add_argument("--request_timeout", type=float, default=600)
    parser.add_argument("--compare_with", type=Path, default=None,
                        help="another qwentune checkout: run its server first, then this one's, and compare")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="runs of each server (alternating); medians are compared")
    args = parser.parse_args()

    checkouts = {"this checkout": REPO}
    if args.compare_with is not None:
        if not (args.compare_with / "src" / "qwentune").is_dir():
            parser.error(f"--compare_with {args.compare_with}: no src/qwentune there (give a qwentune checkout)")
        checkouts = {f"{args.compare_with}": args.compare_with.resolve(), "this checkout": REPO}
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    ok = True
    for round_ in range(1, args.rounds + 1):
        for name, checkout in checkouts.items():  # alternately, so a change in the machine's load hits both
            if len(checkouts) > 1 or args.rounds > 1:
                print(f"== round {round_}/{args.rounds}: server from {name} ({checkout})")
            figures = run_once(args, checkout)
            ok = ok and figures is not None and figures.pop("all ok")
            runs[name].append(figures or {})
    if len(checkouts) > 1 or args.rounds > 1:
        print_comparison({name: medians(figures) for name, figures in runs.items()}, args.rounds)
    return 0 if ok else 1


def medians(runs: list[dict]) -> dict:
    """Each figure's median over the runs that have it."""
    keys = dict.fromkeys(key for run in runs for key in run)
    return {key: statistics.median(run[key] for run in runs if key in run) for key in keys}


def run_once(args, checkout: Path) -> dict | None:
    """Starts a server from `checkout`, runs the scenario against it; its figures ("all ok": no request failed)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(args, port, log, checkout)
        try:
            health = wait_until_ready(base_url, server, args.startup_timeout)
            # One request first, so loading-time work (first kernels, caches) is not counted.
            asyncio.run(run_clients(base_url, 1, 1, 4, args.request_timeout))
            print_setup(args, health)
            if args.scenario == "disconnect":
                results, figures = disconnect_scenario(args, base_url, server)
            else:
                cpu_before = cpu_seconds(server.pid)
                results, wall = asyncio.run(
                    run_clients(base_url, args.clients, args.requests, args.max_tokens, args.request_timeout)
                )
                figures = report(results, wall, cpu_seconds(server.pid) - cpu_before)
        except (RuntimeError, TimeoutError) as exc:
            log.seek(0)
            print(f"benchmark failed: {exc}\nserver log (end):\n{log.read()[-3000:]}", file=sys.stderr)
            return None
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return {**figures, "all ok": all(r.ok for r in results)}


def print_comparison(compared: dict[str, dict], rounds: int) -> None:
    """The figures of each checkout's runs side by side, with the ratio of the last to the first."""
    names = list(compared)
    first, last = compared[names[0]], compared[names[-1]]
    print(f"side by side (same scenario, servers one after the other; medians over {rounds} round(s)):")
    print(f"  {'figure':40} " + " ".join(f"{name[-24:]:>24}" for name in names) + f" {'ratio':>8}")
    for key in dict.fromkeys(key for figures in compared.values() for key in figures):
        values = [compared[name].get(key) for name in names]
        ratio = f"{last[key] / first[key]:.2f}x" if key in last and first.get(key) else ""
        print(f"  {key:40} " + " ".join(f"{'-' if v is None else f'{v:.2f}':>24}" for v in values) + f" {ratio:>8}")


if __name__ == "__main__":
    sys.exit(main())
