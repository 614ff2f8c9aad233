"""Schema of config/training_config.yaml: the guide's blocks and keys, checked before any work starts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qwentune import paths
from qwentune.config.base import StrictModel

FinetuningType = Literal["lora", "full", "freeze"]
# How examples become batches (see docs/training.md for the measured figures):
#   packed     each batch's examples concatenated into one row, positions restarting per example;
#              attention never crosses examples and no compute goes to padding (fastest).
#   grouped    examples of similar length batched together, padded to the longest in the batch.
#   padding    random batches padded to the longest in the batch.
#   max_length every example padded to data.max_seq_length (fixed shapes, as the official Qwen
#              finetune script does; slowest, kept for comparison and shape-static accelerators).
Batching = Literal["packed", "grouped", "padding", "max_length"]


class ModelConfig(StrictModel):
    # A hub id (Qwen/Qwen2.5-0.5B-Instruct), a local folder, or an embedded asset (embedded:demo-model).
    model_name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"
    # Only when the config asks: remote code runs with the user's rights.
    trust_remote_code: bool = False
    # "auto": bf16 where the device has it, else fp32 (CPU trains in fp32).
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # QLoRA: load the frozen base in 4-bit NF4 or 8-bit (bitsandbytes); needs lora.use_lora.
    quantization_bit: Literal[4, 8] | None = None
    # Tokenizer to use when it differs from the model's own.
    tokenizer_name_or_path: str | None = None
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None


class DataConfig(StrictModel):
    train_file: str = str(paths.PROCESSED_DATA_DIR / "train.jsonl")
    validation_file: str | None = str(paths.PROCESSED_DATA_DIR / "validation.jsonl")
    max_seq_length: int = Field(2048, ge=16)
    preprocessing_num_workers: int = Field(4, ge=1)
    # Loss on system/user tokens too (default: assistant turns only).
    train_on_prompt: bool = False
    # Loss on the final assistant turn only.
    last_turn_only: bool = False
    # Reasoning (Qwen3 hybrid thinking): "auto" trains each record as its data has it (a think block
    # where there is reasoning, the non-thinking form elsewhere); "on" trains a think block in every
    # turn (empty without reasoning); "off" drops reasoning. See docs/tools_and_reasoning.md.
    thinking: Literal["auto", "on", "off"] = "auto"
    # System prompt for conversations that have none; saved with the model so inference uses it too.
    # (Some templates insert their own default otherwise, e.g. SmolLM2 names itself in it.)
    default_system_prompt: str | None = None
    # Use at most this many training / validation records (None: all).
    max_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    batching: Batching = "packed"

    @model_validator(mode="after")
    def _mask_options_agree(self):
        if self.train_on_prompt and self.last_turn_only:
            raise ValueError("data.train_on_prompt and data.last_turn_only cannot both be true")
        return self


_PREFERENCE_KEYS = (
    "pref_loss", "pref_beta", "pref_label_smoothing", "simpo_gamma", "orpo_lambda", "precompute_ref_logprobs",
    "pref_ftx", "kto_desirable_weight", "kto_undesirable_weight",
)


class TrainingConfig(StrictModel):
    output_dir: str = str(paths.CHECKPOINTS_DIR)
    logging_dir: str = str(paths.LOGS_DIR)
    # None: derived from lora.use_lora (true -> lora, false -> full).
    finetuning_type: FinetuningType | None = None
    # freeze tuning: train only the last N decoder layers.
    freeze_trainable_layers: int = Field(2, ge=1)
    num_train_epochs: float = Field(3, gt=0)
    # > 0 overrides num_train_epochs.
    max_steps: int = -1
    per_device_train_batch_size: int = Field(4, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    # Also accepted under mindspeed: as in the guide; set it in one place.
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "cosine"
    optim: str = "adamw_torch"
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(500, ge=1)
    eval_steps: int = Field(500, ge=1)
    save_total_limit: int | None = Field(3, ge=1)
    seed: int = 42
    fp16: bool = False
    bf16: bool = False
    dataloader_pin_memory: bool = True
    dataloader_num_workers: int = Field(0, ge=0)
    # Stop when validation loss has not improved for this many evaluations (None: never).
    early_stopping_patience: int | None = Field(None, ge=1)
    # Keep the checkpoint with the lowest validation loss and make it the final model
    # (always on with early stopping).
    load_best_model_at_end: bool = False
    # "tensorboard" writes event files to logging_dir; other Trainer integrations (wandb, ...) pass through.
    report_to: list[str] = ["tensorboard"]
    # What is trained: sft (conversations), dpo (preference pairs; see pref_loss), kto (replies labelled
    # desirable or not). docs/training.md.
    stage: Literal["sft", "dpo", "kto"] = "sft"
    # stage dpo: sigmoid (DPO), ipo, hinge (SLiC), simpo or orpo (reference-free). None: sigmoid.
    pref_loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] | None = None
    # DPO/IPO/hinge/SimPO temperature β: how far the policy may move from the reference.
    pref_beta: float = Field(0.1, gt=0)
    # sigmoid / simpo: the probability that a pair's labels are flipped (conservative DPO).
    pref_label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    # simpo: the target reward margin γ.
    simpo_gamma: float = Field(0.5, ge=0)
    # orpo: the weight λ of the odds-ratio term beside the chosen replies' NLL.
    orpo_lambda: float = Field(0.1, gt=0)
    # sigmoid/ipo/hinge: reference log-probs computed once before training instead of a reference
    # forward each step (LoRA: the adapters disabled; full/freeze: no frozen copy kept in memory).
    precompute_ref_logprobs: bool = False
    # sigmoid/ipo/hinge/simpo: weight of the chosen replies' SFT loss (mean NLL per token) added to the
    # preference loss (LLaMA-Factory's pref_ftx, TRL's rpo_alpha): keeps the answers the pairs prefer fluent.
    pref_ftx: float = Field(0.0, ge=0)
    # kto: loss weights of desirable and undesirable replies (raise the rarer side's to balance them).
    kto_desirable_weight: float = Field(1.0, gt=0)
    kto_undesirable_weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _one_precision(self):
        if self.fp16 and self.bf16:
            raise ValueError("training.fp16 and training.bf16 cannot both be true")
        return self

    @model_validator(mode="after")
    def _best_checkpoint_is_saved(self):
        # The best model can only be restored from a checkpoint saved at an evaluation step.
        if (self.load_best_model_at_end or self.early_stopping_patience) and self.save_steps % self.eval_steps:
            raise ValueError(
                f"training.save_steps ({self.save_steps}) must be a multiple of training.eval_steps "
                f"({self.eval_steps}) to keep the best checkpoint (early_stopping_patience / load_best_model_at_end)"
            )
        return self

    @model_validator(mode="after")
    def _preference_keys_fit_the_stage(self):
        # Keys set to something other than their default (a re-validated dump sets every key, to its value).
        given = {key for key in self.model_fields_set if getattr(self, key) != type(self).model_fields[key].default}
        loss = self.pref_loss or "sigmoid"
        stage_keys = {"sft": (), "dpo": _PREFERENCE_KEYS[:7], "kto": ("pref_beta", *_PREFERENCE_KEYS[7:])}
        for key in _PREFERENCE_KEYS:
            if key in given and key not in stage_keys[self.stage]:
                stages = " or ".join(stage for stage, keys in stage_keys.items() if key in keys)
                raise ValueError(f"training.{key} applies to training.stage {stages}, but training.stage is '{self.stage}'")
        if self.stage != "dpo":
            return self
        only = {
            "simpo_gamma": ("simpo",),
            "orpo_lambda": ("orpo",),
            "pref_label_smoothing": ("sigmoid", "simpo"),
            "precompute_ref_logprobs": ("sigmoid", "ipo", "hinge"),
            "pref_beta": ("sigmoid", "ipo", "hinge", "simpo"),
            # orpo's loss already holds the chosen NLL (orpo_lambda weighs the odds-ratio term beside it).
            "pref_ftx": ("sigmoid", "ipo", "hinge", "simpo"),
        }
        for key, losses in only.items():
            if key in given and loss not in losses:
                raise ValueError(
                    f"training.{key} applies to training.pref_loss {' / '.join(losses)}, not '{loss}'"
                    + (" (reference-free: it has no reference model)" if key == "precompute_ref_logprobs" else "")
                )
        return self

    @property
    def keeps_best_model(self) -> bool:
        return self.load_best_model_at_end or self.early_stopping_patience is not None


class LoraConfig(StrictModel):
    use_lora: bool = True
    r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    # Module names, or the string "all-linear": every nn.Linear of the decoder (attention, dense MLP,
    # linear-attention projections) except the LM head and MoE routers; experts are not linear modules.
    target_modules: list[str] | Literal["all-linear"] = ["q_proj", "v_proj"]
    # Parameters adapted by name with peft's parameter LoRA: MoE experts, stored by transformers 5 as fused
    # 3-D tensors, e.g. ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]. Needs lora_dropout: 0.
    target_parameters: list[str] = []
    use_rslora: bool = False
    use_dora: bool = False


class MindSpeedConfig(StrictModel):
    # On Ascend with MindSpeed installed its adaptor is applied; elsewhere a notice says what runs instead.
    use_mindspeed: bool = False
    # DeepSpeed ZeRO stage for multi-process runs (0: plain DDP).
    zero_stage: Literal[0, 1, 2, 3] = 0
    gradient_accumulation_steps: int | None = Field(None, ge=1)


class OptimizationConfig(StrictModel):
    # Recompute each layer's activations in the backward pass: far less memory, ~30% more compute.
    gradient_checkpointing: bool = False
    # Before loading the model, estimate its memory and stop with settings that would fit when
    # the device cannot hold it. false: skip (the estimate is approximate).
    check_memory: bool = True


class TrainConfig(StrictModel):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    lora: LoraConfig = LoraConfig()
    mindspeed: MindSpeedConfig = MindSpeedConfig()
    optimization: OptimizationConfig = OptimizationConfig()

    @model_validator(mode="after")
    def _check_combinations(self):
        implied = "lora" if self.lora.use_lora else "full"
        chosen = self.training.finetuning_type
        if chosen is None:
            self.training.finetuning_type = implied
        elif chosen == "lora" and not self.lora.use_lora:
            raise ValueError("training.finetuning_type is 'lora' but lora.use_lora is false")
        elif chosen in ("full", "freeze") and self.lora.use_lora and "use_lora" in self.lora.model_fields_set:
            raise ValueError(f"training.finetuning_type is '{chosen}' but lora.use_lora is true; set one of them")
        if self.model.quantization_bit and self.training.finetuning_type != "lora":
            raise ValueError("model.quantization_bit (QLoRA) needs LoRA: set lora.use_lora: true")
        a, b = self.training.gradient_accumulation_steps, self.mindspeed.gradient_accumulation_steps
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"gradient_accumulation_steps is {a} under training and {b} under mindspeed; set it in one place"
            )
        return self

    @model_validator(mode="after")
    def _preference_mask(self):
        # A preference stage trains the final reply of each side; the SFT mask switches would be ignored.
        if self.training.stage != "sft":
            for key in ("train_on_prompt", "last_turn_only"):
                if getattr(self.data, key):
                    raise ValueError(f"data.{key} applies to training.stage sft; stage {self.training.stage} trains the final reply")
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.training.gradient_accumulation_steps or self.mindspeed.gradient_accumulation_steps or 1

    def inert_settings(self) -> list[str]:
        """Keys set in the config that this run's other settings leave without effect (printed as notices)."""
        found = []
        method = self.training.finetuning_type
        lora_keys = sorted(set(self.lora.model_fields_set) - {"use_lora"})
        if method != "lora" and lora_keys:
            found.append(f"{', '.join('lora.' + k for k in lora_keys)}: no effect with training.finetuning_type {method}")
        if method != "freeze" and "freeze_trainable_layers" in self.training.model_fields_set:
            found.append(f"training.freeze_trainable_layers: no effect with training.finetuning_type {method}")
        if self.training.max_steps > 0 and "num_train_epochs" in self.training.model_fields_set:
            found.append(f"training.num_train_epochs: no effect, training.max_steps ({self.training.max_steps}) decides the length")
        if self.data.validation_file is None:
            evaluation = ("per_device_eval_batch_size", "eval_steps", "early_stopping_patience", "load_best_model_at_end")
            keys = [f"training.{k}" for k in evaluation if k in self.training.model_fields_set]
            keys += ["data.max_eval_samples"] if "max_eval_samples" in self.data.model_fields_set else []
            if keys:
                found.append(f"{', '.join(keys)}: no effect without data.validation_file")
        return found
