"""Answer a file of prompts: text (one prompt per line) or JSONL (`prompt` or `messages` per record).

Answers are written in input order, as JSONL (`.jsonl` output: line, id, prompt, answer, and
`reasoning` when the model thought first) or text (one answer per line, its newlines written as
`\\n`; answers only). A bad line is reported and skipped.

Resuming: next to the output, `<output>.progress.json` records which input lines are answered
and how many bytes of the output they fill; it is rewritten after every batch and removed when
the run completes. Running the same command again after an interruption drops any output
written after the last record and answers only what is left. Without that file the run starts
over and replaces the output.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from qwentune.console import console, notice
from qwentune.errors import RunFailed, UsageError
from qwentune.fsutil import atomic_write
from qwentune.infer.settings import GenerationSettings

ROLES = ("system", "user", "assistant")


@dataclass
class Prompt:
    line: int
    prompt: str | list[dict]
    id: str | None = None


def _jsonl_prompt(text: str) -> Prompt:
    """The prompt of one JSONL line; ValueError says what is wrong with it."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    messages, prompt = record.get("messages"), record.get("prompt")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        for message in messages:
            if (
                not isinstance(message, dict)
                or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)
            ):
                raise ValueError(f"each message needs a role ({', '.join(ROLES)}) and a text content")
        prompt = messages
    elif not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("needs a non-empty 'prompt' string or a 'messages' list")
    return Prompt(0, prompt, None if record.get("id") is None else str(record["id"]))


def read_prompts(path: Path) -> tuple[list[Prompt], list[str]]:
    """([prompts], [problems]): a bad line (bad JSON, bytes that are not UTF-8) is reported, the
    others kept. Blank lines are skipped."""
    prompts, problems = [], []
    is_jsonl = path.suffix == ".jsonl"
    # Lines are split as bytes and decoded one by one, so one undecodable line is one problem.
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
            continue
        if not line.strip():
            continue
        if not is_jsonl:
            prompts.append(Prompt(number, line.strip()))
            continue
        try:
            prompt = _jsonl_prompt(line)
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        prompt.line = number
        prompts.append(prompt)
    return prompts, problems


def format_answer(prompt: Prompt, answer: str, jsonl: bool, reasoning: str | None = None) -> str:
    if jsonl:
        record = {
            "line": prompt.line,
            **({"id": prompt.id} if prompt.id is not None else {}),
            "prompt": prompt.prompt,
            "answer": answer,
            **({"reasoning": reasoning} if reasoning is not None else {}),
        }
        return json.dumps(record, ensure_ascii=False) + "\n"
    return answer.replace("\r\n", "\n").replace("\n", "\\n") + "\n"


class ProgressRecord:
    """The `<output>.progress.json` of a run in progress (see the module docstring)."""

    def __init__(self, output: Path, input_digest: str):
        self.path = output.with_name(output.name + ".progress.json")
        self.input_digest = input_digest
        self.done: set[int] = set()
        self.output_bytes = 0

    def load(self) -> bool:
        """True when an interrupted run of the same input left a record; RunFailed for another input."""
        if not self.path.is_file():
            return False
        saved = json.loads(self.path.read_text(encoding="utf-8"))
        if saved["input_sha256"] != self.input_digest:
            raise RunFailed(f"{self.path} records a run over a different input file; delete it to start over")
        self.done, self.output_bytes = set(saved["done"]), saved["output_bytes"]
        return True

    def save(self) -> None:
        record = {"input_sha256": self.input_digest, "done": sorted(self.done), "output_bytes": self.output_bytes}
        atomic_write(self.path, json.dumps(record))  # a run killed mid-save keeps the previous record whole

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _fitting(engine, prompts: list[Prompt]) -> tuple[list[Prompt], list[str]]:
    """Prompts that leave room for an answer in the model's context, and problems for the others."""
    fitting, problems = [], []
    for prompt in prompts:
        size = len(engine.prompt_ids(prompt.prompt))
        if size >= engine.context_length:
            problems.append(
                f"line {prompt.line}: the prompt has {size} tokens; the model's context holds {engine.context_length}"
            )
        else:
            fitting.append(prompt)
    return fitting, problems


def check_files(input_file: str, output_file: str) -> tuple[Path, Path]:
    """The input and output paths, checked before any model is loaded: the input must be a file, and
    the output must not be it (by resolved path, through symlinks, or as a hard link): writing the
    answers would destroy the prompts."""
    source, output = Path(input_file), Path(output_file)
    if not source.is_file():
        raise UsageError(f"--input_file: {source} does not exist or is not a file")
    if output.resolve() == source.resolve() or (output.exists() and os.path.samefile(source, output)):
        raise UsageError(
            f"--output_file {output} is the input file {source}: the answers would overwrite the prompts",
            advice="choose another --output_file, e.g. " + str(source.with_name(source.stem + ".answers.jsonl")),
        )
    return source, output


def answer_file(engine, input_file: str, output_file: str, settings: GenerationSettings, batch_size: int = 8) -> int:
    source, output = check_files(input_file, output_file)
    prompts, problems = read_prompts(source)
    record = ProgressRecord(output, hashlib.sha256(source.read_bytes()).hexdigest())
    resuming = record.load()
    output.parent.mkdir(parents=True, exist_ok=True)
    if resuming:
        notice(
            f"resuming an interrupted run: {len(record.done)} of {len(prompts)} prompts already answered in {output}"
        )
    elif output.is_file() and output.stat().st_size:
        notice(f"replacing the answers of an earlier run in {output}")
    with output.open("a+b") as handle:
        handle.truncate(record.output_bytes)  # drops what was written after the last record (or everything)
    pending, too_long = _fitting(engine, [p for p in prompts if p.line not in record.done])
    problems += too_long
    for problem in problems:
        notice(f"{source}: {problem} (skipped)")
    record.save()
    jsonl = output.suffix == ".jsonl"
    columns = [TextColumn("Answering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress, output.open("ab") as handle:
        task = progress.add_task("answers", total=len(pending))
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            replies = engine.batch_respond([p.prompt for p in chunk], batch_size=len(chunk), **settings.model_dump())
            answers = [format_answer(p, r.content.strip(), jsonl, r.reasoning_content) for p, r in zip(chunk, replies)]
            handle.write("".join(answers).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())  # the answers reach the disk before the record says they are there
            record.done.update(p.line for p in chunk)
            record.output_bytes = handle.tell()
            record.save()
            progress.advance(task, len(chunk))
    record.remove()
    skipped = f"; {len(problems)} bad lines skipped" if problems else ""
    console.print(f"[green]{len(record.done)} answers[/green] in {output}{skipped}")
    return 1 if problems and not record.done else 0
