"""Multimodal Qwen checkpoints (Qwen3.5 `…ForConditionalGeneration`) fine-tuned on text.

qwentune trains the language model alone: `AutoModelForCausalLM` loads such a folder as its text
model (e.g. `Qwen3_5ForCausalLM`, text logits equal to the multimodal class's), so LoRA can only
wrap language-model modules and the vision tower is neither loaded nor changed. On export the
fine-tuned language weights go back into the checkpoint's own class, next to its untouched
vision tower, so the merged folder loads as the model it came from.
"""

from __future__ import annotations


def is_multimodal(config) -> bool:
    """A config with a vision tower (its text model is what qwentune trains)."""
    return getattr(config, "vision_config", None) is not None


def with_vision_tower(text_model, base_model: str, *, trust_remote_code: bool = False):
    """`text_model` back in `base_model`'s multimodal class, vision tower as the base has it; else `text_model`."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from qwentune.model.loader import config_source

    source = config_source(base_model)
    if not is_multimodal(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)):
        return text_model
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=text_model.dtype, trust_remote_code=trust_remote_code)
    # The text model and the multimodal one's language model are the same module class: weights map one to one.
    model.get_decoder().load_state_dict(text_model.get_decoder().state_dict())
    model.get_output_embeddings().load_state_dict(text_model.get_output_embeddings().state_dict())
    model.generation_config = text_model.generation_config
    return model
