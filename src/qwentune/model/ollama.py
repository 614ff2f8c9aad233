"""An Ollama `Modelfile` beside an exported GGUF: the same ChatML prompt, stop tokens and system prompt.

Ollama renders prompts with a Go template, not the Jinja chat template in the GGUF, so the
template is written here. Its model-specific parts are read off our own template by rendering
it (not re-derived): the default system prompt, and what opens the assistant's answer (for
Qwen3 with thinking off, the empty think block).
"""

from __future__ import annotations

import json
from pathlib import Path

from qwentune.data.tokenize import CHATML_END_OF_TURN, render
from qwentune.errors import UsageError

MODELFILE = "Modelfile"
_PROBE = "qwentune-probe"

# Ollama's variables: .System (SYSTEM or the request's system message), .Messages (user/assistant/tool turns).
_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ if $last }}@ANSWER@{{ end }}
{{- else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ if $last }}@ANSWER@{{ end }}
{{- end }}
{{- end }}"""


def chatml_parts(tokenizer) -> tuple[str | None, str]:
    """(default system prompt or None, the text that opens an answer) of a ChatML chat template."""
    user = [{"role": "user", "content": _PROBE}]
    turn = f"<|im_start|>user\n{_PROBE}{CHATML_END_OF_TURN}\n"
    closed = render(tokenizer, user)
    opened = render(tokenizer, user, add_generation_prompt=True)
    if not closed.endswith(turn) or not opened.startswith(closed):
        raise UsageError(
            "the Ollama Modelfile is written for ChatML chat templates (<|im_start|>role ... <|im_end|>); "
            "this model's template renders differently",
            advice="export without --ollama and write the Modelfile's TEMPLATE by hand",
        )
    system = None
    prefix = closed[: -len(turn)]
    if prefix:
        if not (prefix.startswith("<|im_start|>system\n") and prefix.endswith(f"{CHATML_END_OF_TURN}\n")):
            raise UsageError(f"unexpected text before the first user turn in the chat template: {prefix[:80]!r}")
        system = prefix[len("<|im_start|>system\n") : -len(f"{CHATML_END_OF_TURN}\n")]
    return system, opened[len(closed) :]


def modelfile_text(gguf_name: str, tokenizer, stop_tokens: list[str]) -> str:
    system, answer = chatml_parts(tokenizer)
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{_TEMPLATE.replace("@ANSWER@", answer)}"""', ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    # Strings in JSON quoting, which Ollama's Modelfile parser reads.
    lines += [f"PARAMETER stop {json.dumps(token)}" for token in stop_tokens]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_file: Path, tokenizer, stop_tokens: list[str]) -> Path:
    path = gguf_file.parent / MODELFILE
    path.write_text(modelfile_text(gguf_file.name, tokenizer, stop_tokens), encoding="utf-8")
    return path


def ollama_commands(modelfile: Path, name: str) -> list[str]:
    return [f"ollama create {name} -f {modelfile}", f"ollama run {name}"]
