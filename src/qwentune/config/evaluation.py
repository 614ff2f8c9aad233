"""Schema of config/eval_config.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qwentune import paths
from qwentune.config.base import StrictModel

# tool_call_accuracy: scored on samples whose reference turn calls tools; thinking_length: of every prediction.
# preference_accuracy (and preference_margin): on datasets of preference pairs (chosen/rejected).
MetricName = Literal[
    "bleu", "rouge", "bertscore", "perplexity", "diversity", "tool_call_accuracy", "thinking_length", "preference_accuracy"
]


class EvalModelConfig(StrictModel):
    # A training output folder, checkpoint, adapter, merged model, hub id or embedded name.
    model_path: str = str(paths.CHECKPOINTS_DIR)
    # The model the adapter was trained from; None: read it from the checkpoint.
    base_model: str | None = None
    # Also evaluate base_model on the same samples and report per-metric deltas.
    compare_base: bool = True
    device: str = "auto"
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    # llamacpp: generation and perplexity by llama.cpp on CPU (the llamacpp extra), from a GGUF of
    # type gguf_quantization exported once and cached next to the model; device and torch_dtype stay "auto".
    backend: Literal["torch", "llamacpp"] = "torch"
    gguf_quantization: str = "f16"

    @model_validator(mode="after")
    def _backend_settings(self):
        if self.backend == "llamacpp" and (self.device != "auto" or self.torch_dtype != "auto"):
            raise ValueError("model.backend llamacpp runs on CPU with the GGUF's types: leave device and torch_dtype at 'auto'")
        if self.backend == "torch" and self.gguf_quantization != "f16":
            raise ValueError("model.gguf_quantization is read with model.backend: llamacpp only")
        return self


class EvalDatasetConfig(StrictModel):
    name: str
    path: str
    # Free-form label shown in the report (the guide uses instruction_following, chinese_capability).
    type: str = "instruction_following"
    max_samples: int | None = Field(None, ge=1)
    # Only the records whose fields have these values: a key of the record's `meta` (e.g. {category:
    # unknowable}) or a top-level field (lang, source). One test file can so be reported by its parts.
    where: dict[str, str | int | bool] = {}


class GenerationConfig(StrictModel):
    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    # Qwen3-style thinking switch for generation; None: the model's default (as it was trained).
    enable_thinking: bool | None = None


class BertScoreConfig(StrictModel):
    # Encoder folder or hub id; default: the embedded all-MiniLM-L6-v2 (English only).
    model: str = "embedded:minilm"
    num_layers: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)


class OutputConfig(StrictModel):
    results_dir: str = str(paths.EVALUATION_DIR)
    save_predictions: bool = True
    generate_report: bool = True


class EvalConfig(StrictModel):
    model: EvalModelConfig = EvalModelConfig()
    datasets: list[EvalDatasetConfig] = [
        EvalDatasetConfig(name="alpaca_eval", path=str(paths.PROCESSED_DATA_DIR / "test.jsonl")),
        EvalDatasetConfig(
            name="chinese_eval", path=str(paths.PROCESSED_DATA_DIR / "chinese_test.jsonl"), type="chinese_capability"
        ),
    ]
    metrics: list[MetricName] = [
        "bleu", "rouge", "bertscore", "perplexity", "diversity", "tool_call_accuracy", "thinking_length", "preference_accuracy"
    ]
    generation: GenerationConfig = GenerationConfig()
    bertscore: BertScoreConfig = BertScoreConfig()
    output: OutputConfig = OutputConfig()
    # Seeds sampled generation (generation.do_sample: true): the same seed gives the same predictions.
    seed: int = 42

    @model_validator(mode="after")
    def _unique_dataset_names(self):
        names = [d.name for d in self.datasets]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"datasets: names must be unique, repeated: {', '.join(duplicated)}")
        return self

    def inert_settings(self) -> list[str]:
        """Keys set in the config that its other settings leave without effect (printed as notices)."""
        found = []
        if not self.generation.do_sample:
            keys = [f"generation.{k}" for k in ("temperature", "top_p") if k in self.generation.model_fields_set]
            keys += ["seed"] if "seed" in self.model_fields_set else []
            if keys:
                found.append(f"{', '.join(keys)}: no effect with generation.do_sample false (greedy decoding)")
        if "bertscore" not in self.metrics and self.bertscore.model_fields_set:
            keys = ", ".join(f"bertscore.{k}" for k in sorted(self.bertscore.model_fields_set))
            found.append(f"{keys}: no effect, 'bertscore' is not in metrics")
        return found
