"""Sentences and passages, without a model or a download.

Haystack's sentence splitting (and `respect_sentence_boundary`) needs NLTK's punkt data, which it would
download at run time; Cortex downloads nothing. So sentences come from a small rule-based splitter, and
passages are whole sentences packed up to a word budget with one sentence of overlap. `passages()` is
the `splitting_function` of the indexing pipeline's DocumentSplitter; `sentences()` also feeds the
extractive answer.
"""
from __future__ import annotations

import re

PASSAGE_WORDS = 120
# A sentence longer than this is cut into word windows so that no passage outgrows the embedder's
# 256-token window (MiniLM truncates beyond it, silently losing the rest).
MAX_SENTENCE_WORDS = 150

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace and an
# uppercase letter, digit or opening quote; a blank line always ends one.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?P<close>[\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")
# Abbreviations whose period does not end a sentence.
_ABBREVIATIONS = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|vs|etc|e\.g|i\.e|Inc|Ltd|Co|No|Fig|approx)\.$",
                            re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """The text's sentences, stripped, in order (a text without sentence ends is one sentence)."""
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        candidate = text[start:match.start() + len(match.group("close") or "")].strip()
        if _ABBREVIATIONS.search(candidate) and "\n" not in match.group():
            continue  # "Dr. Smith": not a boundary; keep reading
        if candidate:
            pieces.append(candidate)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        pieces.append(tail)
    return [window for piece in pieces for window in _word_windows(piece, MAX_SENTENCE_WORDS)]


def _word_windows(sentence: str, limit: int) -> list[str]:
    words = sentence.split()
    if len(words) <= limit:
        return [sentence]
    return [" ".join(words[i:i + limit]) for i in range(0, len(words), limit)]


def passages(text: str, max_words: int = PASSAGE_WORDS) -> list[str]:
    """Consecutive sentences packed into passages of at most `max_words` words (a longer sentence is a
    passage of its own); each passage after the first repeats the previous passage's last sentence, so
    a fact stated across a boundary stays whole in one passage."""
    units = sentences(text)
    packed: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in units:
        length = len(sentence.split())
        if current and words + length > max_words:
            packed.append(" ".join(current))
            overlap = current[-1]
            overlap_words = len(overlap.split())
            current, words = ([overlap], overlap_words) if overlap_words + length <= max_words else ([], 0)
        current.append(sentence)
        words += length
    if current:
        packed.append(" ".join(current))
    return packed
