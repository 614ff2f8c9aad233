"""`qwentune export --format gguf`: one GGUF file for llama.cpp, Ollama and LM Studio.

    qwentune export --model_path ./results/checkpoints --output_dir ./results/gguf --format gguf --quantization q4_k_m

The model is first written as the merged folder (qwentune.model.export), so the GGUF carries
exactly what that folder carries: the merged weights, the tokenizer, and the chat template
with the training defaults (system prompt, thinking off). The folder is then converted:

* f32 / f16 / bf16 / q8_0 are written by the `gguf` package (`GGUFWriter`, `TensorNameMap`,
  `SpecialVocab`, `gguf.quants`), no other dependency;
* the other llama.cpp types (q4_k_m, q5_k_m, q6_k, q4_0, ...) are made from an f32 GGUF by
  llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`, the `llamacpp` extra).

Why the conversion itself is written here: llama.cpp's converter (`convert_hf_to_gguf.py` and
its `conversion/` package) ships only in the llama.cpp repository and the llama-cpp-python
sdist, not in any installable module, and the `gguf` package has the pieces but no HF
converter. What follows is that converter's path for the three dense architectures we train
(Qwen2, Qwen3, Llama), with the same tensor names, layouts and tokenizer metadata.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from hashlib import sha256
from pathlib import Path

import gguf
import numpy as np

from qwentune.data.tokenize import end_of_turn_token
from qwentune.errors import RunFailed, UsageError

# Types the gguf package writes itself (gguf.quants has quantizers for these).
GGUF_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
# Types only llama.cpp's quantizer makes (name -> llama_cpp.LLAMA_FTYPE_MOSTLY_<NAME>).
LLAMACPP_TYPES = (
    "q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_m", "q3_k_s", "q3_k_l", "q2_k",
    "q4_0", "q4_1", "q5_0", "q5_1",
)  # fmt: skip
QUANTIZATIONS = (*GGUF_TYPES, *LLAMACPP_TYPES)
LLAMACPP_INSTALL = "pip install 'qwentune[llamacpp]'  (or: pip install llama-cpp-python; it compiles llama.cpp)"

# HF architecture -> (llama.cpp architecture, whether q/k rows are permuted as llama.cpp's LlamaModel does).
ARCHITECTURES = {
    "Qwen2ForCausalLM": (gguf.MODEL_ARCH.QWEN2, False),
    "Qwen3ForCausalLM": (gguf.MODEL_ARCH.QWEN3, False),
    "LlamaForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
}

# llama.cpp recognises a BPE pre-tokenizer by the hash of the ids of this text (convert_hf_to_gguf.py,
# get_vocab_base_pre); the hashes below are copied from there for the tokenizers of the models we train.
_PRE_TOKENIZER_CHECK_TEXT = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"  # noqa: E501
PRE_TOKENIZERS = {
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 .. Qwen3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
}


def gguf_file_name(quantization: str) -> str:
    return f"model-{quantization}.gguf"


def check_quantization(quantization: str) -> str:
    name = quantization.lower()
    if name not in QUANTIZATIONS:
        raise UsageError(f"--quantization '{quantization}' is not one of: {', '.join(QUANTIZATIONS)}")
    if name in LLAMACPP_TYPES:
        _llama_cpp()  # fail before the merge, not after it
    return name


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise UsageError(
            f"quantizing to k-quants and the other llama.cpp types needs llama-cpp-python ({exc})",
            advice=f"install it with: {LLAMACPP_INSTALL}; f16, bf16 and q8_0 need nothing more",
        ) from exc
    return llama_cpp


# ------------------------------------------------------------------------------------- the export


def export_gguf(
    model_path: str,
    output_dir: str,
    quantization: str = "f16",
    *,
    ollama: bool = False,
    base_model: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> Path:
    """Write `output_dir/model-<quantization>.gguf` for the model of `model_path` (as export_merged reads it).

    With `ollama`, an Ollama `Modelfile` for it is written beside it.
    """
    from qwentune.model.export import export_merged

    quantization = check_quantization(quantization)
    output = Path(output_dir)
    target = output / gguf_file_name(quantization)
    if target.exists():
        raise UsageError(f"'{target}' exists already; choose a new --output_dir or remove the file")
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output, prefix=".merged-") as scratch:
        merged = Path(scratch) / "model"
        export_merged(
            model_path, str(merged), base_model=base_model, device=device, trust_remote_code=trust_remote_code
        )
        convert_folder(merged, target, quantization, name=Path(model_path).name)
        if ollama:
            from transformers import AutoTokenizer

            from qwentune.model.ollama import write_modelfile

            write_modelfile(target, AutoTokenizer.from_pretrained(merged), stop_tokens(merged))
    return target


def cached_gguf(
    model_path: str, quantization: str = "f16", *, base_model: str | None = None, trust_remote_code: bool = False
) -> Path:
    """A folder holding `model-<quantization>.gguf` of `model_path` and the merged folder's tokenizer,
    generation config and metadata, exported on first use and again once the model's weights change.

    It lies next to the model (`<model folder>/gguf-<quantization>`), or in qwentune's cache for
    embedded names and hub ids.
    """
    from qwentune.model.checkpoint import WEIGHT_FILES, resolve_model_dir
    from qwentune.model.export import export_merged
    from qwentune.paths import cache_dir

    quantization = check_quantization(quantization)
    source = resolve_model_dir(model_path)
    if isinstance(source, Path):
        folder = source / f"gguf-{quantization}"
        weights = [source / name for name in WEIGHT_FILES if (source / name).is_file()]
        changed = max(path.stat().st_mtime for path in weights)
    else:
        folder = cache_dir() / "gguf" / f"{str(source).replace('/', '--').replace(':', '-')}-{quantization}"
        changed = 0.0
    target = folder / gguf_file_name(quantization)
    if target.is_file() and target.stat().st_mtime >= changed:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".gguf-") as scratch:
        merged = export_merged(
            model_path, str(Path(scratch) / "merged"), base_model=base_model, trust_remote_code=trust_remote_code
        )
        ready = Path(scratch) / "ready"
        ready.mkdir()
        for file in merged.iterdir():
            if file.suffix != ".safetensors":  # the tokenizer, generation config and qwentune metadata
                shutil.copy2(file, ready / file.name)
        convert_folder(merged, ready / target.name, quantization, name=Path(str(model_path)).name)
        shutil.rmtree(folder, ignore_errors=True)
        ready.replace(folder)
    return folder


def stop_tokens(folder: Path) -> list[str]:
    """The tokens that end an answer: the eos ids of the folder's generation config (end of turn first)."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = GenerationConfig.from_pretrained(folder).eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    tokens = tokenizer.convert_ids_to_tokens([i for i in ids if i is not None])
    end_of_turn = end_of_turn_token(tokenizer)
    return sorted(set(tokens), key=lambda token: (token != end_of_turn, tokens.index(token)))


def convert_folder(folder: Path, target: Path, quantization: str, name: str | None = None) -> Path:
    """A merged model folder (weights, config, tokenizer) -> one GGUF file of the given type."""
    quantization = check_quantization(quantization)
    name = name or folder.resolve().name
    if quantization in GGUF_TYPES:
        return _write(folder, target, quantization, name)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".f32-") as scratch:
        # llama.cpp's quantizer reads a GGUF; f32 loses nothing on the way there.
        full = _write(folder, Path(scratch) / "model-f32.gguf", "f32", name)
        return _quantize(full, target, quantization)


def _quantize(source: Path, target: Path, quantization: str) -> Path:
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quantization.upper()}")
    partial = target.with_name(target.name + ".partial")
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if status != 0:
        partial.unlink(missing_ok=True)
        raise RunFailed(f"llama.cpp could not quantize {source.name} to {quantization} (status {status})")
    partial.replace(target)
    return target


# ------------------------------------------------------------------------------------- writing


def _write(folder: Path, target: Path, quantization: str, name: str) -> Path:
    from transformers import AutoTokenizer

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch, permute = _architecture(config)
    file_type, tensor_type = GGUF_TYPES[quantization]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    _add_hyperparameters(writer, config, arch, file_type)
    _add_tokenizer(writer, folder, tokenizer, config)
    for name, array, qtype in _tensors(folder, config, arch, permute, tensor_type):
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)
    return target


def _architecture(config: dict) -> tuple:
    names = config.get("architectures") or [config.get("model_type", "?")]
    if names[0] not in ARCHITECTURES:
        raise UsageError(
            f"GGUF export supports the architectures {', '.join(ARCHITECTURES)}; this model is {names[0]}",
            advice="use --format hf and llama.cpp's convert_hf_to_gguf.py for other architectures",
        )
    return ARCHITECTURES[names[0]]


def _rope(config: dict) -> dict:
    """RoPE settings of a config saved by transformers 5 (rope_parameters) or 4 (rope_theta, rope_scaling)."""
    rope = dict(config.get("rope_parameters") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or {}
    rope.update({k: v for k, v in scaling.items() if k not in rope})
    rope.setdefault("rope_type", scaling.get("type", "default"))
    return rope


def _add_hyperparameters(writer: gguf.GGUFWriter, config: dict, arch, file_type) -> None:
    # The keys llama.cpp reads for these architectures (convert_hf_to_gguf.py, TextModel.set_gguf_parameters).
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if config.get("head_dim"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = _rope(config)
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope["rope_type"] == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif rope["rope_type"] != "default":
        raise UsageError(f"rope type '{rope['rope_type']}' is not supported by the GGUF export (default, linear, yarn)")
    if arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(file_type)


def _tensors(folder: Path, config: dict, arch, permute: bool, tensor_type):
    """(gguf name, array, type) for every weight, named and laid out as llama.cpp reads them."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise RunFailed(f"'{folder}' holds no .safetensors weights to convert")
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    tied = config.get("tie_word_embeddings", False)
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name.endswith(".rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
                    continue
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise RunFailed(f"tensor '{hf_name}' has no llama.cpp name for {gguf.MODEL_ARCH_NAMES[arch]}")
                data = handle.get_tensor(hf_name).float()
                if permute and hf_name.endswith("q_proj.weight"):
                    data = _permute(data, heads)
                elif permute and hf_name.endswith("k_proj.weight"):
                    data = _permute(data, kv_heads)
                array = data.numpy()
                # Norms, biases and other vectors stay f32, as llama.cpp expects them.
                qtype = gguf.GGMLQuantizationType.F32 if array.ndim <= 1 else tensor_type
                yield name, gguf.quants.quantize(np.ascontiguousarray(array), qtype), qtype


def _permute(weights, n_head: int):
    """Rows of q/k in llama.cpp's rotary layout (pairs interleaved), as its LlamaModel converter does."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _pre_tokenizer(tokenizer) -> str:
    digest = sha256(str(tokenizer.encode(_PRE_TOKENIZER_CHECK_TEXT)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise UsageError(
            f"llama.cpp would not recognise this tokenizer's pre-tokenizer (check hash {digest})",
            advice="the GGUF export knows the Qwen, SmolLM and Llama-3 tokenizers; use llama.cpp's "
            "convert_hf_to_gguf.py for others",
        )
    return PRE_TOKENIZERS[digest]


def _add_tokenizer(writer: gguf.GGUFWriter, folder: Path, tokenizer, config: dict) -> None:
    """The BPE vocabulary, merges, token types, special ids and the chat template of the merged folder."""
    vocab_size = max(config.get("vocab_size", 0), len(tokenizer))
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer (padding to a multiple of 64...)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            looks_special = by_id[i].startswith("<|") and by_id[i].endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    end_of_turn = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    # llama.cpp and Ollama stop at eos: make it the end of the assistant turn, as our generation config does.
    special.special_token_ids["eos"] = end_of_turn
    if tokenizer.pad_token_id is not None:
        special.special_token_ids["pad"] = tokenizer.pad_token_id
    bos = tokenizer.bos_token_id
    special.add_special_token["bos"] = bos is not None and tokenizer("x")["input_ids"][:1] == [bos]
    special.add_special_token["eos"] = False
    special.chat_template = tokenizer.chat_template  # the merged folder's, with the training defaults
    special.add_to_gguf(writer)
    writer.add_eot_token_id(end_of_turn)
