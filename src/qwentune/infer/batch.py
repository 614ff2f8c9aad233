"""Answer a file of prompts: text (one per line) or JSONL (`prompt` or `messages` per record)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from qwentune.console import console, notice


def read_prompts(path: Path) -> tuple[list[tuple[int, object]], list[str]]:
    """([(line number, prompt or messages)], [problems]) — a bad line is reported, the rest kept."""
    prompts, problems = [], []
    is_jsonl = path.suffix == ".jsonl"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            prompts.append((number, line.strip()))
            continue
        try:
            record = json.loads(line)
            prompt = record.get("messages") or record["prompt"]
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            problems.append(f"line {number}: not a JSON object with 'prompt' or 'messages'")
            continue
        prompts.append((number, prompt))
    return prompts, problems


def _done_lines(output: Path) -> set[int]:
    """Lines already answered by an earlier, interrupted run (JSONL output only)."""
    done = set()
    if output.suffix == ".jsonl" and output.is_file():
        for line in output.read_text(encoding="utf-8").splitlines():
            try:
                done.add(json.loads(line)["line"])
            except (json.JSONDecodeError, KeyError, TypeError):
                break
    return done


def answer_file(engine, input_file: str, output_file: str, *, batch_size: int = 8, **settings) -> int:
    source, output = Path(input_file), Path(output_file)
    if not source.is_file():
        console.print(f"[red]error:[/red] input file not found: {source}")
        return 1
    prompts, problems = read_prompts(source)
    for problem in problems:
        notice(f"{source}: {problem} (skipped)")
    done = _done_lines(output)
    pending = [(n, p) for n, p in prompts if n not in done]
    if done:
        notice(f"resuming: {len(done)} answers already in {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    columns = [TextColumn("Answering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress, output.open("a", encoding="utf-8") as handle:
        task = progress.add_task("answers", total=len(pending))
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            answers = engine.batch_generate([p for _, p in chunk], batch_size=batch_size, **settings)
            for (number, prompt), answer in zip(chunk, answers):
                if output.suffix == ".jsonl":
                    handle.write(json.dumps({"line": number, "prompt": prompt, "answer": answer}, ensure_ascii=False) + "\n")
                else:
                    handle.write(answer.replace("\n", "\\n") + "\n")
            handle.flush()
            progress.advance(task, len(chunk))
    console.print(f"[green]{len(pending)} answers[/green] written to {output}" + (f"; {len(problems)} bad lines skipped" if problems else ""))
    return 1 if problems and not prompts else 0
