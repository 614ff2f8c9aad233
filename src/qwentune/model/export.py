"""`qwentune export`: a standalone model folder that plain transformers loads.

    qwentune export --model_path ./results/checkpoints --output_dir ./results/merged

A LoRA adapter is merged into its base model; a full fine-tune is saved as it is. The folder
gets the weights (safetensors, in the dtype the base model was saved in), the tokenizer and
chat template, and the generation config whose stop ids end the answer at the end of the turn.
The chat template's defaults become those of training (the system prompt the model was
trained with; Qwen3's thinking switch as training left it: off, unless `data.thinking: on`), so a
plain `tokenizer.apply_chat_template` gives the prompt the model was tuned on, and a caller's
`enable_thinking=` still switches it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qwentune.console import console
from qwentune.errors import UsageError
from qwentune.paths import CHECKPOINTS_DIR


def template_with_training_defaults(chat_template: str, system_prompt: str | None, variables: dict) -> str:
    """The chat template, rendering by default as qwentune rendered the training data.

    `variables` (e.g. Qwen3's enable_thinking=False) become defaults a caller may still set;
    `system_prompt` leads conversations without a system message, the rule of
    qwentune.data.dataset.with_system_prompt. Values are written as JSON, which Jinja reads as literals.
    """
    prefix = "".join(
        f"{{%- if {name} is not defined %}}{{%- set {name} = {json.dumps(value)} %}}{{%- endif %}}"
        for name, value in variables.items()
    )
    if system_prompt:
        prefix += (
            "{%- if not messages or messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {json.dumps(system_prompt)}}}] + messages %}}"
            "{%- endif %}"
        )
    return prefix + chat_template


def export_merged(
    model_path: str,
    output_dir: str,
    *,
    base_model: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> Path:
    """Write the standalone model of `model_path` (any folder QwenInference loads) into `output_dir`."""
    from qwentune.data.tokenize import template_kwargs
    from qwentune.model.checkpoint import read_meta, save_inference_files
    from qwentune.model.loader import load_for_inference
    from qwentune.model.multimodal import with_vision_tower

    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise UsageError(f"output folder '{output}' is not empty; choose a new folder")
    model, tokenizer, info = load_for_inference(
        model_path, base_model=base_model, device=device, dtype="saved", trust_remote_code=trust_remote_code
    )
    if info["adapter"]:
        model = model.merge_and_unload()
    # A multimodal base (Qwen3.5) trained on text: the merged language model goes back beside its vision tower.
    model = with_vision_tower(model, info["base_model"], trust_remote_code=trust_remote_code)
    tokenizer.chat_template = template_with_training_defaults(
        tokenizer.chat_template, info["system_prompt"], template_kwargs(tokenizer, info["enable_thinking"])
    )
    model.save_pretrained(output)
    source = Path(info["model_path"])
    meta = {
        **(read_meta(source) if source.is_dir() else {}),
        "base_model": info["base_model"],
        "exported_from": info["model_path"],
        "enable_thinking": info["enable_thinking"],  # the template's default now; qwentune keeps it too
    }
    save_inference_files(output, model, tokenizer, meta)
    return output


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model_path", default=str(CHECKPOINTS_DIR), help="training output, checkpoint, adapter or model folder"
    )
    parser.add_argument("--output_dir", required=True, help="new folder for the standalone model")
    parser.add_argument(
        "--format", choices=["hf", "gguf"], default="hf",
        help="hf: merged transformers folder (vLLM, SGLang); gguf: one file for llama.cpp, Ollama, LM Studio",
    )  # fmt: skip
    parser.add_argument(
        "--quantization", default="f16",
        help="GGUF type: f16, bf16, q8_0, f32 (no extra needed), or q4_k_m, q5_k_m, q6_k, ... (llamacpp extra)",
    )  # fmt: skip
    parser.add_argument("--ollama", action="store_true", help="with --format gguf: also write an Ollama Modelfile")
    parser.add_argument("--base_model", default=None, help="base model of an adapter (default: the one it names)")
    parser.add_argument("--device", default="cpu", help="where to merge (cpu needs no accelerator memory)")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="run the model's own code (only for models you trust)"
    )


def run_cli(args: argparse.Namespace) -> int:
    if args.format == "gguf" or args.ollama:
        return _run_gguf(args)
    with console.status(f"Exporting {args.model_path} ..."):
        output = export_merged(
            args.model_path,
            args.output_dir,
            base_model=args.base_model,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
        )
    console.print(
        f"[green]Exported[/green] to {output}. Load it anywhere with "
        f"AutoModelForCausalLM.from_pretrained('{output}') and AutoTokenizer.from_pretrained('{output}')."
    )
    return 0


def _run_gguf(args: argparse.Namespace) -> int:
    from qwentune.errors import UsageError
    from qwentune.model.gguf_export import export_gguf
    from qwentune.model.ollama import MODELFILE, ollama_commands

    if args.format != "gguf":
        raise UsageError("--ollama writes a Modelfile for a GGUF file: add --format gguf")
    with console.status(f"Exporting {args.model_path} to GGUF ({args.quantization}) ..."):
        target = export_gguf(
            args.model_path, args.output_dir, args.quantization, ollama=args.ollama, base_model=args.base_model,
            device=args.device, trust_remote_code=args.trust_remote_code,
        )  # fmt: skip
    size = target.stat().st_size / 2**20
    console.print(f"[green]Exported[/green] {target} ({size:.1f} MiB). Run it with: llama-cli -m {target} -cnv")
    if args.ollama:
        console.print("Load it into Ollama with:")
        for command in ollama_commands(target.parent / MODELFILE, Path(args.output_dir).resolve().name.lower()):
            console.print(f"  {command}", highlight=False)
    return 0
