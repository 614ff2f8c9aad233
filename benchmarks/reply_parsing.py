"""What reading replies costs: `ReplyParser` (reasoning, answer and tool calls) per streamed piece.

    python benchmarks/reply_parsing.py                      # 2,000-token replies, 4-character pieces
    python benchmarks/reply_parsing.py --pieces 8000 --piece_chars 3

Every streamed chat reply of the API and the server goes through the parser. This feeds a
synthetic reply (a think block, an answer, a tool call) piece by piece, as a stream delivers it,
with calls parsed, and the same text without reasoning or calls with parsing off, side by side
in one run. It prints the setup and, over `--repeats` runs, the median CPU time and wall time
per piece. A decoding step of even the tiny demo model takes milliseconds on a CPU, so compare
the figures with `benchmarks/generation_throughput.py`'s time per token.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from qwentune.infer.reply import ReplyParser

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'


def reply_text(pieces: int, piece_chars: int, structured: bool) -> str:
    """About `pieces * piece_chars` characters: half reasoning, half answer, then a call (when structured)."""
    half = pieces * piece_chars // 2
    sentence = "Let us think about this step by step, carefully. "
    body = (sentence * (half // len(sentence) + 1))[:half]
    answer = ("The answer is forty-two, for these reasons. " * (half // 44 + 1))[:half]
    return f"<think>\n{body}\n</think>\n\n{answer}\n{CALL}" if structured else body + answer


def measure(text: str, piece_chars: int, repeats: int, **options) -> tuple[int, float, float]:
    """(pieces, median CPU-µs per piece, median wall-µs per piece)."""
    pieces = [text[i : i + piece_chars] for i in range(0, len(text), piece_chars)]
    cpu, wall = [], []
    for _ in range(repeats):
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        parser = ReplyParser(**options)
        for piece in pieces:
            parser.feed(piece)
        parser.close()
        cpu.append((time.process_time() - started_cpu) / len(pieces) * 1e6)
        wall.append((time.perf_counter() - started_wall) / len(pieces) * 1e6)
    return len(pieces), statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=2000, help="streamed pieces per reply (about one per token)")
    parser.add_argument("--piece_chars", type=int, default=4, help="characters per piece")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}; {args.repeats} runs, medians")
    cases = [
        ("plain answer, calls not parsed", reply_text(args.pieces, args.piece_chars, False), {}),
        ("think block + answer + call, calls parsed", reply_text(args.pieces, args.piece_chars, True),
         {"tool_names": frozenset({"get_weather"})}),
    ]  # fmt: skip
    for name, text, options in cases:
        pieces, cpu, wall = measure(text, args.piece_chars, args.repeats, **options)
        print(f"{name:44} {pieces:6d} pieces  {cpu:6.2f} CPU-µs/piece  {wall:6.2f} wall-µs/piece")


if __name__ == "__main__":
    main()
