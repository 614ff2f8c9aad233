"""Language of a text: the one rule every stage shares (SPEC §6: mostly CJK -> zh)."""

from __future__ import annotations

import re

# CJK Unified Ideographs (+ Extension A) and CJK punctuation / full-width forms.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
_LETTER = re.compile(r"[A-Za-z\u00c0-\u024f\u0400-\u04ff]")


def cjk_ratio(text: str) -> float:
    """Share of CJK characters among the CJK characters and letters of `text`."""
    cjk = len(_CJK.findall(text))
    letters = len(_LETTER.findall(text))
    total = cjk + letters
    return cjk / total if total else 0.0


def detect_lang(text: str) -> str:
    """'zh' when at least 30% of the word characters are CJK, else 'en'.

    A CJK character carries about as much as a 3-4 letter word, so a threshold below
    one half keeps Chinese text with English terms in it classed as Chinese.
    """
    return "zh" if cjk_ratio(text) >= 0.3 else "en"
