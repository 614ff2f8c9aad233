"""Reaching the Hugging Face hub (or the mirror HF_ENDPOINT names) for models and tokenizers.

transformers, asked for a hub id it cannot reach, retries every file for about 20 seconds
and then raises a long exception chain. Before a model or tokenizer is loaded by hub id,
`from_pretrained_kwargs` asks the endpoint once (per process) whether it answers at all:
if not, a cached copy is loaded without asking again, and with no cached copy one
ModelUnavailable says what to do.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from qwentune.errors import RunFailed

PROBE_TIMEOUT_S = 10
MIRROR_EXAMPLE = "https://hf-mirror.com"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# A model repo has a config; a tokenizer-only repo has a tokenizer config.
_MARKER_FILES = ("config.json", "tokenizer_config.json")


class ModelUnavailable(RunFailed, OSError):
    """A model or tokenizer that can be neither found locally nor fetched; the message says what to do (exit 1)."""


def hub_endpoint() -> str:
    # huggingface_hub reads HF_ENDPOINT once, at import; read it per call so that a value set
    # later in the process (a notebook, quick_start) is honoured too.
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def probe(server: str) -> str | None:
    """None when `server` answers at all, whatever the status; else why not."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(server, timeout=PROBE_TIMEOUT_S, follow_redirects=True)
    except Exception as exc:  # the hub client's transport errors differ between huggingface_hub versions
        return f"{type(exc).__name__}: {exc}"
    return None


# Loading asks once per process; the download stage keeps its own answers per run.
_probe_once = functools.lru_cache(maxsize=None)(probe)


def is_hub_id(name: str) -> bool:
    """Whether from_pretrained would look `name` up on the hub: not a folder here, and shaped like `org/name`."""
    return not Path(name).exists() and _HUB_ID.match(name) is not None


def is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in _MARKER_FILES)


def _offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def from_pretrained_kwargs(name_or_path: str, what: str = "model") -> dict:
    """Extra from_pretrained arguments for `name_or_path`: {} when it is local or the hub answers;
    {"local_files_only": True} when the hub does not answer but the cache holds it.

    Raises ModelUnavailable when the hub does not answer and nothing is cached. With
    HF_HUB_OFFLINE set the libraries already stay off the network, so nothing is asked.
    """
    if not is_hub_id(name_or_path) or _offline_mode():
        return {}
    endpoint = hub_endpoint()
    problem = _probe_once(endpoint)
    if problem is None:
        return {}
    if is_cached(name_or_path):
        from qwentune.console import notice

        notice(f"{endpoint} cannot be reached ({problem}): loading {what} '{name_or_path}' from the local cache.")
        return {"local_files_only": True}
    raise ModelUnavailable(
        f"the {what} '{name_or_path}' is neither a local folder nor in the Hugging Face cache, and {endpoint} cannot "
        f"be reached ({problem}). Either set HF_ENDPOINT to a mirror (e.g. {MIRROR_EXAMPLE}); or download it "
        f"where there is network (hf download {name_or_path} --local-dir DIR), copy DIR here and name DIR "
        "instead; or try the whole flow offline with the embedded demo model (embedded:demo-model)."
    )
