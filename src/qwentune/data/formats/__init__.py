"""Converters from each public data format to canonical records, in a registry keyed by format name.

A converter is made per file. `feed` takes one raw record and yields what it became: canonical
records, or a Reject with a reason (never an exception that stops the run). Formats whose
records only make sense together (flat OASST message rows) collect in `feed` and yield in
`finish`. Each yielded record or reject is one item of the "in" count of stats.json.

Role names of the sources map onto system / user / assistant / tool. Tool data stays
structured: definitions in the record's `tools`, a call made by the assistant (ShareGPT
`function_call`, OpenAI `tool_calls`) in the assistant turn's `tool_calls`, results as `tool`
turns; reasoning (a separate field or a leading `<think>` block) in `reasoning_content`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Importing the format modules registers their converters in FORMATS.
from qwentune.data.formats import chat, instruction, oasst, preference  # noqa: F401
from qwentune.data.formats.base import FORMATS, ConversionOptions, Converter

__all__ = ["DETECTION_SAMPLE", "FORMATS", "ConversionOptions", "Converter", "Detection", "detect_format"]

# Detection: a file's format is the one that can convert most of its first records; ties go
# to the earlier, more specific format (canonical records are also valid OpenAI records; BELLE
# converts Alpaca records too, but only BELLE reads its dialogue-in-instruction records).
# Preference formats come first: they need "chosen"/"rejected" or "label", which no SFT format has.
DETECTION_PREFERENCE = (*preference.PREFERENCE_FORMATS, "canonical", "openai", "oasst", "firefly", "sharegpt", "alpaca", "belle")
DETECTION_SAMPLE = 64


@dataclass
class Detection:
    format: str | None
    recognized: int  # of the sampled records, how many the chosen format can convert
    sampled: int


def detect_format(samples: list[Any]) -> Detection:
    objects = [sample for sample in samples if isinstance(sample, dict)]
    best, best_count = None, 0
    for name in DETECTION_PREFERENCE:
        count = sum(1 for sample in objects if FORMATS[name].recognizes(sample))
        if count > best_count:
            best, best_count = name, count
    return Detection(best, best_count, len(samples))
