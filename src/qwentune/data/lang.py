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


# Tags data sets write for Chinese or English, by their primary subtag (zh-CN, zh_Hans, ZH, cmn, chinese).
_PRIMARY = {"zh": "zh", "cmn": "zh", "zho": "zh", "chi": "zh", "chinese": "zh", "中文": "zh",
            "en": "en", "eng": "en", "english": "en"}
# Tags that name no single language: the text decides.
_UNDECIDED = {"", "mixed", "auto", "mul", "multi", "multilingual", "und", "unknown", "zh-en", "en-zh"}


def normalize_lang(tag: object, text: str = "") -> str:
    """The language code every stage uses for a record's `lang` tag, as data sets write it.

    Chinese tags of any region or script (zh-CN, zh_TW, zh-Hans, ZH, cmn) -> 'zh', English ones
    -> 'en', another language -> its lower-case primary subtag ('fr-FR' -> 'fr'); no tag, or one
    that names no single language ('mixed', 'und'), -> detect_lang(text).
    """
    if isinstance(tag, str):
        cleaned = tag.strip().lower().replace("_", "-")
        if cleaned not in _UNDECIDED:
            primary = cleaned.split("-")[0]
            if primary in _PRIMARY:
                return _PRIMARY[primary]
            if re.fullmatch(r"[a-z]{2,3}", primary):
                return primary
    return detect_lang(text)


def detect_lang(text: str) -> str:
    """'zh' when at least 30% of the word characters are CJK, else 'en'.

    A CJK character carries about as much as a 3-4 letter word, so a threshold below
    one half keeps Chinese text with English terms in it classed as Chinese.
    """
    return "zh" if cjk_ratio(text) >= 0.3 else "en"
