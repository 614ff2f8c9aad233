"""The evaluation recipe: samples -> predictions (base and tuned) -> metrics -> reports.

Predictions are cached per model (evaluate/predictions.py), so an interrupted evaluation resumes
where it stopped. A sample whose reference turn calls tools is prompted with the record's tool
definitions and scored by tool_call_accuracy against those calls.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from qwentune.config.base import ConfigError, load_config
from qwentune.config.evaluation import EvalConfig
from qwentune.console import console, notice
from qwentune.data.toolcalls import call_text
from qwentune.evaluate.predictions import model_fingerprint, predict
from qwentune.evaluate.preference import PREFERENCE_DEFINITIONS, pair_margins, preference_values
from qwentune.paths import writable_folder

TUNED, BASE = "tuned", "base"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/eval_config.yaml", help="evaluation config YAML")
    parser.add_argument("--datasets", nargs="+", default=None, help="names of datasets in the config to evaluate (default: all)")
    parser.add_argument("--max_samples", type=int, default=None, help="at most this many samples per dataset")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. generation.max_new_tokens=64")


def run_cli(args: argparse.Namespace) -> int:
    config = load_config(EvalConfig, args.config, args.overrides)
    run_evaluation(select_datasets(config, args.datasets, args.max_samples))
    return 0


def select_datasets(config: EvalConfig, names: list[str] | None, max_samples: int | None) -> EvalConfig:
    if names:
        known = [d.name for d in config.datasets]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"--datasets: unknown {', '.join(unknown)}; the config has {', '.join(known)}")
        config.datasets = [d for d in config.datasets if d.name in names]
    if max_samples is not None:
        if max_samples < 1:
            raise ConfigError("--max_samples must be >= 1")
        for dataset in config.datasets:
            dataset.max_samples = min(dataset.max_samples or max_samples, max_samples)
    return config


# --- samples ----------------------------------------------------------------------------------------

@dataclass
class Sample:
    dataset: str
    id: str
    lang: str
    prompt: list[dict]  # the conversation up to the last assistant turn
    reference: str  # the last assistant turn: its answer, then its calls as Qwen writes them
    tools: list[dict] | None = None  # the record's tool definitions, offered to the model
    reference_calls: list[dict] | None = None  # the last assistant turn's calls ({"name", "arguments"})
    rejected: str | None = None  # a preference pair's rejected reply (the reference is the chosen one)


def field_of(record: dict, key: str):
    """A record's `meta` value for `key`, else its top-level field (lang, source, id)."""
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    return meta[key] if key in meta else record.get(key)


def matching(records: list[dict], where: dict, dataset: str) -> list[dict]:
    """The records whose fields have the `where` values; none matching is an error that lists the values seen."""
    kept = [record for record in records if all(field_of(record, key) == value for key, value in where.items())]
    if records and not kept:
        seen = {key: sorted({str(field_of(record, key)) for record in records}) for key in where}
        raise ConfigError(
            f"datasets[{dataset}].where {where}: no record matches; the file's values are "
            + "; ".join(f"{key}: {', '.join(values[:10])}" for key, values in seen.items())
        )
    return kept


def load_samples(path: str, dataset: str, limit: int | None, where: dict | None = None) -> list[Sample]:
    from qwentune.data.dataset import read_canonical
    from qwentune.data.lang import normalize_lang

    samples = []
    skipped = 0
    records = read_canonical(path)
    for record in matching(records, where, dataset) if where else records:
        if "chosen" in record and "rejected" in record:  # a preference pair: generation is scored against chosen
            chosen, rejected = record["chosen"]["content"].strip(), record["rejected"]["content"].strip()
            lang = normalize_lang(record.get("lang"), chosen)
            samples.append(Sample(dataset, str(record["id"]), lang, record["messages"], chosen, rejected=rejected))
            if limit is not None and len(samples) >= limit:
                break
            continue
        messages = record["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            skipped += 1
            continue
        calls = messages[-1].get("tool_calls") or None
        reference = "\n".join([messages[-1]["content"].strip(), *(call_text(c) for c in calls or ())]).strip()
        # zh-CN, zh_TW, ZH... score as Chinese; 'mixed' or no tag: detected from the reference.
        lang = normalize_lang(record.get("lang"), reference)
        samples.append(
            Sample(dataset, str(record["id"]), lang, messages[:-1], reference, record.get("tools") or None, calls)
        )
        if limit is not None and len(samples) >= limit:
            break
    if skipped:
        notice(f"{dataset}: {skipped} records do not end with an assistant turn and were skipped")
    return samples


def generation_settings(config: EvalConfig) -> dict:
    generation = config.generation
    settings = {"max_new_tokens": generation.max_new_tokens, "batch_size": generation.batch_size}
    if generation.do_sample:
        # The seed is part of the settings, so predictions cached under another seed are not reused.
        settings.update(temperature=generation.temperature, top_p=generation.top_p, seed=config.seed)
    if generation.repetition_penalty != 1.0:
        settings["repetition_penalty"] = generation.repetition_penalty
    if generation.enable_thinking is not None:
        settings["enable_thinking"] = generation.enable_thinking
    return settings


# --- metrics ------------------------------------------------------------------------------------------

def text_metrics(
    config: EvalConfig,
    samples: list[Sample],
    predictions: dict[str, str],
    encoder: str | None,
    reasonings: dict[str, str | None] | None = None,
) -> tuple[dict, list[dict]]:
    """(corpus values, per-sample scores) of one model on one set of samples."""
    from qwentune.evaluate import metrics  # torch and the metric libraries: not needed for --help

    preds = [predictions[s.id] for s in samples]
    refs = [s.reference for s in samples]
    langs = [s.lang for s in samples]
    values: dict = {}
    per_sample: list[dict] = [{} for _ in samples]
    if "bleu" in config.metrics:
        result = metrics.bleu(preds, refs, langs)
        values["bleu"] = result["overall"]
        for row, score in zip(per_sample, result["per_sample"]):
            row["bleu"] = score
    if "rouge" in config.metrics:
        result = metrics.rouge(preds, refs, langs)
        values.update(result["overall"])
        for row, scores in zip(per_sample, result["per_sample"]):
            row.update(scores)
    if "bertscore" in config.metrics:
        result = metrics.bertscore(
            preds, refs, langs, encoder, num_layers=config.bertscore.num_layers, batch_size=config.bertscore.batch_size
        )
        values["bertscore"] = result["overall"]
        for row, score in zip(per_sample, result["per_sample"]):
            row["bertscore"] = score
    if "diversity" in config.metrics:
        values.update(metrics.diversity(preds, langs)["overall"])
    if "tool_call_accuracy" in config.metrics and any(s.reference_calls for s in samples):
        result = metrics.tool_call_accuracy(preds, [s.reference_calls for s in samples], langs)
        values.update({k: v for k, v in result["overall"].items() if k != "n_scored"})
        for row, scores in zip(per_sample, result["per_sample"]):
            row.update(scores or {})
    if "thinking_length" in config.metrics:
        result = metrics.thinking_length([(reasonings or {}).get(s.id) for s in samples], langs)
        values["thinking_chars"] = result["overall"]
        for row, length in zip(per_sample, result["per_sample"]):
            row["thinking_chars"] = length
    return values, per_sample


def model_perplexity(engine, samples: list[Sample], batch_size: int):
    from qwentune.evaluate import metrics
    from qwentune.infer.engine import as_messages

    # The prompt as the model sees it when generating (with the system prompt it was trained with).
    prompts = [as_messages(s.prompt, engine.system_prompt) for s in samples]
    if hasattr(engine, "sequence_nll"):  # llama.cpp scores the same labelled tokens itself
        return _llamacpp_perplexity(engine, prompts, samples)
    try:
        return metrics.perplexity(
            engine.model,
            engine.tokenizer,
            prompts=prompts,
            references=[s.reference for s in samples],
            batch_size=batch_size,
            max_length=engine.context_length,  # longer samples: sliding windows, never past the context
        )["perplexity"]
    except ValueError as exc:
        return metrics.not_available(str(exc))


def preference_margins(engine, pairs: list[Sample], batch_size: int) -> list[float]:
    """Length-normalised log-prob margin (chosen - rejected) of each pair, prompted as the model generates."""
    from qwentune.infer.engine import as_messages

    if hasattr(engine, "sequence_nll"):  # llama.cpp scores the same trained tokens of each reply
        return _llamacpp_margins(engine, [(as_messages(s.prompt, engine.system_prompt), s.reference, s.rejected) for s in pairs])
    return pair_margins(
        engine.model, engine.tokenizer, [(as_messages(s.prompt, engine.system_prompt), s.reference, s.rejected) for s in pairs], batch_size
    )


# --- the recipe ---------------------------------------------------------------------------------------

def _llamacpp_margins(engine, pairs: list[tuple[list[dict], str, str]]) -> list[float]:
    """pair_margins with llama.cpp: mean log-prob of the chosen reply's trained tokens minus the rejected one's."""
    from qwentune.data.tokenize import encode_conversation

    def mean_logp(prompt: list[dict], reply: str) -> float:
        encoded = encode_conversation(engine.tokenizer, [*prompt, {"role": "assistant", "content": reply}], last_turn_only=True)
        nll, count = engine.sequence_nll(encoded.input_ids, encoded.labels)
        return -nll / max(count, 1)

    return [mean_logp(prompt, chosen) - mean_logp(prompt, rejected) for prompt, chosen, rejected in pairs]


def _llamacpp_perplexity(engine, prompts: list[list[dict]], samples: list[Sample]) -> float:
    import math

    from qwentune.evaluate import metrics

    sequences = [metrics._reference_sequence(engine.tokenizer, p, s.reference) for p, s in zip(prompts, samples)]
    scored = [engine.sequence_nll(ids, labels) for ids, labels in sequences if len(ids) <= engine.context_length]
    nll, count = (sum(column) for column in zip(*scored)) if scored else (0.0, 0)
    if len(scored) < len(sequences):
        notice(f"perplexity (llama.cpp): {len(sequences) - len(scored)} samples longer than the context left out")
    return math.exp(nll / count) if count else metrics.not_available("no token to predict")


def _models_to_evaluate(config: EvalConfig) -> dict[str, dict]:
    """{label: load_engine kwargs}: the tuned model, and its base when comparing."""
    from qwentune.model.checkpoint import base_model_of, resolve_model_dir

    model = config.model
    common = dict(backend=model.backend, trust_remote_code=model.trust_remote_code)
    if model.backend == "llamacpp":
        common["quantization"] = model.gguf_quantization
    else:
        common.update(device=model.device, dtype=model.torch_dtype)
    models = {TUNED: dict(model_path=model.model_path, base_model=model.base_model, **common)}
    if model.compare_base:
        target = resolve_model_dir(model.model_path)
        base = model.base_model or (base_model_of(target) if isinstance(target, Path) else None)
        if base and base != model.model_path:
            models = {BASE: dict(model_path=base, **common), **models}
        else:
            notice("model.compare_base: no base model to compare with (set model.base_model); evaluating one model")
    return models


def _loss_curve(model_path: str) -> list[dict] | None:
    from qwentune.model.checkpoint import resolve_model_dir
    from qwentune.train.callbacks import LOSS_HISTORY_FILE

    target = resolve_model_dir(model_path)
    if isinstance(target, Path):
        for folder in (target, target.parent):
            if (folder / LOSS_HISTORY_FILE).is_file():
                return json.loads((folder / LOSS_HISTORY_FILE).read_text(encoding="utf-8"))
    return None


def _versions() -> dict:
    names = ("qwentune", "torch", "transformers", "peft", "sacrebleu", "rouge-score", "bert-score")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_evaluation(config: EvalConfig) -> dict:
    from qwentune.assets import resolve_model_name
    from qwentune.evaluate import metrics
    from qwentune.evaluate.report import write_reports
    from qwentune.infer.backends import load_engine

    started = time.time()
    for line in config.inert_settings():
        notice(line)
    results_dir = writable_folder(config.output.results_dir, "output.results_dir")
    datasets = {}
    for dataset in config.datasets:
        samples = load_samples(dataset.path, dataset.name, dataset.max_samples, dataset.where)
        if samples:
            datasets[dataset.name] = samples
        else:
            notice(f"{dataset.name}: no samples in {dataset.path}; skipped")
    if not datasets:
        raise ConfigError("no evaluation samples: check the dataset paths in the eval config (datasets[].path)")
    unique = list({s.id: s for samples in datasets.values() for s in samples}.values())
    settings = generation_settings(config)
    models = _models_to_evaluate(config)
    encoder = resolve_model_name(config.bertscore.model) if "bertscore" in config.metrics else None

    predictions: dict[str, dict[str, str]] = {}
    reasonings: dict[str, dict[str, str | None]] = {}
    perplexities: dict[str, dict[str, object]] = {}
    model_info: dict[str, dict] = {}
    margins: dict[str, dict[str, float]] = {}  # model -> pair id -> preference margin
    for label, kwargs in models.items():
        console.rule(f"[bold]{label}: {kwargs['model_path']}")
        with console.status(f"Loading {kwargs['model_path']} ..."):
            engine = load_engine(**kwargs)
        model_info[label] = engine.info
        cache_file = results_dir / "cache" / f"predictions-{label}.jsonl"
        entries = predict(engine, unique, settings, cache_file, label, model_fingerprint(kwargs))
        predictions[label] = {sample_id: entry["prediction"] for sample_id, entry in entries.items()}
        reasonings[label] = {sample_id: entry["reasoning"] for sample_id, entry in entries.items()}
        pairs = [s for s in unique if s.rejected is not None]
        if "preference_accuracy" in config.metrics and pairs:
            with console.status(f"Preference accuracy ({label}) ..."):
                margins[label] = dict(zip([s.id for s in pairs], preference_margins(engine, pairs, settings["batch_size"]), strict=True))
        if "perplexity" in config.metrics:
            with console.status(f"Perplexity ({label}) ..."):
                perplexities[label] = {name: model_perplexity(engine, samples, settings["batch_size"]) for name, samples in datasets.items()}
                perplexities[label]["overall"] = model_perplexity(engine, unique, settings["batch_size"])
        del engine
        gc.collect()

    results = {
        "meta": {
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "config": config.model_dump(),
            "versions": _versions(),
            "models": model_info,
            "generation": settings,
        },
        "definitions": {**metrics.METRIC_DEFINITIONS, **PREFERENCE_DEFINITIONS},
        "models": list(models),
        "datasets": {},
        "overall": {},
        "samples": [],
        "loss_curve": _loss_curve(config.model.model_path),
    }
    per_sample_scores: dict[str, dict[str, dict]] = {label: {} for label in models}
    with console.status("Scoring ..."):
        for name, samples in list(datasets.items()) + [("overall", unique)]:
            scores = {}
            for label in models:
                values, rows = text_metrics(config, samples, predictions[label], encoder, reasonings[label])
                if label in perplexities:
                    values["perplexity"] = perplexities[label][name]
                if label in margins:
                    values.update(preference_values([margins[label][s.id] for s in samples if s.id in margins[label]]))
                    for row, sample in zip(rows, samples, strict=True):
                        if sample.id in margins[label]:
                            row["preference_margin"] = margins[label][sample.id]
                scores[label] = values
                if name == "overall":
                    per_sample_scores[label] = {s.id: row for s, row in zip(samples, rows)}
            if name == "overall":
                results["overall"] = scores
            else:
                results["datasets"][name] = {"n": len(samples), "type": next(d.type for d in config.datasets if d.name == name), "metrics": scores}
    for name, samples in datasets.items():
        for sample in samples:
            results["samples"].append(
                {
                    "dataset": name,
                    "id": sample.id,
                    "lang": sample.lang,
                    "prompt": sample.prompt,
                    "reference": sample.reference,
                    **({"rejected": sample.rejected} if sample.rejected is not None else {}),
                    "predictions": {label: predictions[label][sample.id] for label in models},
                    **({"tools": sample.tools} if sample.tools else {}),
                    **(
                        {"reasoning": {label: reasonings[label][sample.id] for label in models}}
                        if any(reasonings[label][sample.id] for label in models)
                        else {}
                    ),
                    "scores": {label: per_sample_scores[label][sample.id] for label in models},
                }
            )
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    written = write_reports(results, results_dir, save_predictions=config.output.save_predictions, html=config.output.generate_report)
    console.print(f"[green]Evaluation done[/green] in {results['meta']['duration_s']:.0f}s: " + ", ".join(str(p) for p in written.values()))
    return results
