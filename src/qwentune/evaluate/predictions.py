"""Generated answers of the evaluation, cached per model under `<results_dir>/cache/`.

A prediction is keyed by its prompt (and tools), the generation settings and the model's fingerprint
(how it is loaded and its files' sizes and times), so an interrupted evaluation resumes where it
stopped and a model trained again into the same folder is generated again. A prediction is the
answer after any think block; the think block is kept apart.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qwentune.console import console, notice
from qwentune.data.reasoning import THINK_CLOSE

if TYPE_CHECKING:
    from qwentune.evaluate.runner import Sample


def cache_key(sample: Sample, settings: dict, model: str) -> str:
    """The prompt (with its tools, when it has some), the generation settings and the model's fingerprint."""
    prompt = [sample.prompt, sample.tools] if sample.tools else sample.prompt
    payload = json.dumps([prompt, settings, model], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def model_fingerprint(load_kwargs: dict) -> str:
    """How the model is loaded, and the name, size and modification time of each file at the top of its
    folder (and its base's): a model trained again into the same folder no longer reuses old predictions."""
    from qwentune.model.checkpoint import base_model_of, resolve_model_dir

    parts: list = [sorted((key, str(value)) for key, value in load_kwargs.items())]
    folders = [resolve_model_dir(load_kwargs[key]) for key in ("model_path", "base_model") if load_kwargs.get(key)]
    folders += [resolve_model_dir(base) for folder in folders if isinstance(folder, Path) and (base := base_model_of(folder))]
    for folder in folders:
        if isinstance(folder, Path):
            files = sorted(folder.iterdir()) if folder.is_dir() else [folder]
            parts.append([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()])
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def read_cache(path: Path) -> dict[str, dict]:
    cached = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                cached[entry["key"]] = {"prediction": entry["prediction"], "reasoning": entry.get("reasoning")}
            except (json.JSONDecodeError, KeyError):
                break  # a line cut short by an interruption: everything before it is good
    return cached


def answer_and_reasoning(reply) -> dict:
    """The answer after the think block (tool-call text kept) and the reasoning, from an engine Reply."""
    if reply.reasoning_content is None:
        return {"prediction": reply.text.strip(), "reasoning": None}
    _, closed, answer = reply.text.partition(THINK_CLOSE)
    return {"prediction": answer.strip() if closed else "", "reasoning": reply.reasoning_content.strip()}


def predict(engine, samples: list[Sample], settings: dict, cache_file: Path, label: str, model: str) -> dict[str, dict]:
    """{sample id: {"prediction", "reasoning"}}, generating only what the cache lacks (`model`: model_fingerprint)."""
    cached = read_cache(cache_file)
    keys = {s.id: cache_key(s, settings, model) for s in samples}
    todo = [s for s in samples if keys[s.id] not in cached]
    if len(todo) < len(samples):
        notice(f"{label}: {len(samples) - len(todo)} predictions reused from {cache_file}")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    batch_size = settings["batch_size"]
    generate_settings = {k: v for k, v in settings.items() if k not in ("batch_size", "seed")}
    if "seed" in settings:
        from transformers import set_seed

        set_seed(settings["seed"])  # sampled generation: the same seed (and samples) give the same predictions
    columns = [TextColumn(f"Generating ({label})"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    # Samples that share tool definitions generate together (tools are one per call); similar
    # prompt lengths together: less left padding per batch.
    groups: dict[str, list[Sample]] = {}
    for sample in todo:
        groups.setdefault(json.dumps(sample.tools, sort_keys=True), []).append(sample)
    with Progress(*columns, console=console) as progress, cache_file.open("a", encoding="utf-8") as handle:
        task = progress.add_task("generate", total=len(todo))
        for group in groups.values():
            options = {"tools": group[0].tools} if group[0].tools else {}
            group.sort(key=lambda s: len(engine.prompt_ids(s.prompt, **options)))
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                replies = engine.batch_respond(
                    [s.prompt for s in chunk], batch_size=batch_size, **options, **generate_settings
                )
                for sample, reply in zip(chunk, replies):
                    entry = answer_and_reasoning(reply)
                    cached[keys[sample.id]] = entry
                    handle.write(json.dumps({"key": keys[sample.id], "id": sample.id, **entry}, ensure_ascii=False) + "\n")
                handle.flush()
                progress.advance(task, len(chunk))
    return {s.id: cached[keys[s.id]] for s in samples}
