"""Is an answer a usable dense caption? Cleaning, then refusal, length and truncation checks.

A failed check is retried (the model may do better on a second try) and, when retries run out,
recorded as a failure: such an answer is never written as a caption.
"""

from __future__ import annotations

import re

REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry[,.!]|i apologi[sz]e)"
    r"|\bi (?:can(?:no|')t|am unable to|'m unable to|am not able to|won'?t) "
    r"(?:help|assist|describe|provide|comply|identify|process|view|see)"
    r"|\bas an ai\b",
    re.IGNORECASE,
)
PREFIX = re.compile(r"^\s*(caption|description)\s*:\s*", re.IGNORECASE)


def clean_caption(text: str) -> str:
    """One paragraph of plain text: markdown emphasis, headings, bullets and wrapping quotes removed."""
    text = text.replace("**", "").replace("__", "")
    lines = [re.sub(r"^\s*(#+|[-*\u2022]|\d+[.)])\s+", "", line) for line in text.splitlines()]
    text = " ".join(line.strip() for line in lines if line.strip())
    text = PREFIX.sub("", text)
    if len(text) > 1 and text[0] in "\"'\u201c" and text[-1] in "\"'\u201d":
        text = text[1:-1]
    return re.sub(r"\s+", " ", text).strip()


def check_caption(text: str, min_words: int, max_words: int, finish_reason: str | None = None,
                  refusal: str | None = None) -> str | None:
    """The reason the answer is unusable, or None when it is a good caption."""
    if refusal:
        return "refusal"
    if not text:
        return "empty answer"
    if REFUSAL.search(text[:300]):
        return "refusal"
    words = len(text.split())
    if finish_reason == "length":
        return f"truncated at max_tokens ({words} words)"
    if words < min_words:
        return f"too short ({words} words < {min_words})"
    if words > max_words:
        return f"too long ({words} words > {max_words})"
    return None
