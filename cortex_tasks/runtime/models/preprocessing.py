"""Text preprocessing before inference, with a map back to the text the client sent.

Steps, always applied in this order when switched on:
  encoding    lone UTF-16 surrogates become U+FFFD (or fail the item with `"reject"`); UTF-8 text that was
              decoded as Windows-1252 ("Ã©" for "é") is repaired
  html        <script>/<style> blocks, comments and HTML tags removed (block tags leave a line break),
              character references (&amp; &#233;) decoded; only known HTML element names count as tags,
              so "<john@example.com>" or "a < b" stay
  nfkc        Unicode NFKC normalisation (full-width letters, ligatures, compatibility forms)
  control     C0/C1 control characters (except tab and line breaks) and invisible format characters
              (zero-width space, soft hyphen, BOM, bidi controls, tag characters) removed; zero-width
              joiners only where they touch Latin text, so emoji sequences and Persian/Indic text keep them
  whitespace  runs of whitespace become one space (one line break if the run had one); ends trimmed

Offsets: models see `Prepared.text`, but every character of it knows the span of the original text it
came from, so span-producing tasks (ner, pii_*) report offsets in the text the client sent and mask that
text. A span that starts or ends inside a replaced unit (a ligature, an entity, a collapsed run) widens
to the whole unit.

Which steps run is a per-task default (TASK_STEPS); `params.preprocess` overrides it per request:
  false            nothing (lone surrogates still fail the item: no model can take them)
  true             the task's defaults
  ["nfkc", ...]    exactly these steps
  {"html": false}  the defaults with these switched; "encoding": "reject" fails items with lone surrogates
"""
from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.jobs.running import JobInputError

STEP_ORDER: tuple[str, ...] = ("encoding", "html", "nfkc", "control", "whitespace")

_ALL = frozenset(STEP_ORDER)
_PLAIN = frozenset({"encoding", "nfkc", "control", "whitespace"})
# Why the defaults differ: user-facing text analysis gets everything; generation keeps the prompt's
# layout and symbols (code, maths); classifiers see what they were trained on (no HTML stripping).
TASK_STEPS: dict[str, frozenset[str]] = {
    "ner": _ALL,
    "pii_detect": _ALL,
    "pii_mask": _ALL,
    "sentiment": _ALL,
    "language": _ALL,
    "embed": _PLAIN,
    "classify": _PLAIN,
    "zero_shot": _PLAIN,
    "generate": frozenset({"encoding", "control"}),
}
DEFAULT_STEPS = _PLAIN


@dataclass(frozen=True)
class Steps:
    enabled: frozenset[str]
    reject_bad_encoding: bool = False

    def __contains__(self, step: str) -> bool:
        return step in self.enabled


def steps_for(task: str, setting: Any = None) -> Steps:
    """The steps for `task` given the request's `params.preprocess` (None: the task's defaults)."""
    defaults = TASK_STEPS.get(task, DEFAULT_STEPS)
    if setting is None or setting is True:
        return Steps(defaults)
    if setting is False:
        return Steps(frozenset())
    if isinstance(setting, list):
        _check_names(setting)
        return Steps(frozenset(setting))
    if isinstance(setting, dict):
        _check_names(setting)
        enabled = set(defaults)
        reject = False
        for name, value in setting.items():
            if name == "encoding" and value == "reject":
                enabled.add(name)
                reject = True
            elif isinstance(value, bool):
                (enabled.add if value else enabled.discard)(name)
            else:
                raise JobInputError("invalid_params", f"params.preprocess.{name} must be true or false"
                                    + (' or "reject"' if name == "encoding" else ""))
        return Steps(frozenset(enabled), reject_bad_encoding=reject)
    raise JobInputError("invalid_params", "params.preprocess must be true, false, a list of step names "
                        "or an object of step: true/false", {"steps": list(STEP_ORDER)})


def _check_names(names: Iterable[Any]) -> None:
    unknown = [name for name in names if name not in _ALL]
    if unknown:
        raise JobInputError("invalid_params", f"unknown preprocessing step(s): {unknown}",
                            {"steps": list(STEP_ORDER)})


@dataclass(frozen=True)
class Prepared:
    """A preprocessed text and, when it differs from the original, where each character came from."""

    text: str
    original: str
    # starts[i], ends[i]: the span of `original` that text[i] came from. None: text is the original.
    starts: list[int] | None = None
    ends: list[int] | None = None

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map the span text[start:end] to the span of the original text it came from."""
        if self.starts is None or self.ends is None:
            return start, end
        if start >= end:
            at = self.starts[start] if start < len(self.starts) else len(self.original)
            return at, at
        return self.starts[start], self.ends[end - 1]


def prepare(text: str, steps: Steps) -> Prepared:
    current = _Mapped(text)
    if _SURROGATE.search(text):
        if "encoding" not in steps or steps.reject_bad_encoding:
            raise ItemError("invalid_encoding", "the text contains unpaired UTF-16 surrogates "
                            "(not valid Unicode)")
        current.substitute(_SURROGATE, lambda match: "\ufffd")
    if "encoding" in steps:
        current.substitute(_MOJIBAKE, _repair_mojibake)
    if "html" in steps and ("<" in current.text or "&" in current.text):
        current.substitute(_HTML, _html_replacement)
    if "nfkc" in steps:
        current.nfkc()
    if "control" in steps:
        current.substitute(_INVISIBLE, lambda match: "")
    if "whitespace" in steps:
        current.substitute(_WHITESPACE, _whitespace_replacement)
    return Prepared(current.text, text, current.starts, current.ends)


class _Mapped:
    """A text being rewritten, with the original span of every character (built only once it changes)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts: list[int] | None = None
        self.ends: list[int] | None = None

    def _maps(self) -> tuple[list[int], list[int]]:
        if self.starts is None or self.ends is None:
            self.starts = list(range(len(self.text)))
            self.ends = list(range(1, len(self.text) + 1))
        return self.starts, self.ends

    def substitute(self, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> None:
        pieces: list[str] = []
        new_starts: list[int] = []
        new_ends: list[int] = []
        done = 0
        changed = False
        for match in pattern.finditer(self.text):
            replacement = replace(match)
            if replacement == match.group():
                continue
            starts, ends = self._maps()
            changed = True
            start, end = match.span()
            pieces.append(self.text[done:start])
            new_starts += starts[done:start]
            new_ends += ends[done:start]
            pieces.append(replacement)
            # A replacement comes from the whole match: each of its characters maps to all of it.
            new_starts += [starts[start]] * len(replacement)
            new_ends += [ends[end - 1]] * len(replacement)
            done = end
        if not changed:
            return
        starts, ends = self._maps()
        pieces.append(self.text[done:])
        self.text = "".join(pieces)
        self.starts = new_starts + starts[done:]
        self.ends = new_ends + ends[done:]

    def nfkc(self) -> None:
        text = self.text
        if unicodedata.is_normalized("NFKC", text):
            return
        starts, ends = self._maps()
        pieces: list[str] = []
        new_starts: list[int] = []
        new_ends: list[int] = []
        for start, end in _nfkc_units(text):
            unit = text[start:end]
            normal = unicodedata.normalize("NFKC", unit)
            pieces.append(normal)
            if normal == unit:
                new_starts += starts[start:end]
                new_ends += ends[start:end]
            else:
                new_starts += [starts[start]] * len(normal)
                new_ends += [ends[end - 1]] * len(normal)
        self.text = "".join(pieces)
        self.starts, self.ends = new_starts, new_ends


def _nfkc_units(text: str) -> Iterable[tuple[int, int]]:
    """Split text into units that NFKC normalises independently (a starter and what composes with it)."""
    unit_start = 0
    for index in range(1, len(text)):
        char = text[index]
        if char < "\x80" or (unicodedata.combining(char) == 0 and _composes_alone(text[unit_start:index],
                                                                                  char)):
            yield unit_start, index
            unit_start = index
    if text:
        yield unit_start, len(text)


def _composes_alone(before: str, char: str) -> bool:
    normalize = unicodedata.normalize
    return normalize("NFKC", before + char) == normalize("NFKC", before) + normalize("NFKC", char)


# --- encoding ---------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters Windows-1252 decodes the bytes 0x80-0x9F to; with U+0080-U+00BF they are the possible
# readings of a UTF-8 continuation byte.
_CP1252_HIGH = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_CONTINUATION = "[\u0080-\u00bf" + re.escape(_CP1252_HIGH) + "]"
_MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONTINUATION}|[\u00e0-\u00ef]{_CONTINUATION}{{2}}"
                       f"|[\u00f0-\u00f4]{_CONTINUATION}{{3}}")


def _repair_mojibake(match: re.Match[str]) -> str:
    chars = match.group()
    try:
        raw = bytes(ord(char) if ord(char) < 0x100 else char.encode("cp1252")[0] for char in chars)
        return raw.decode("utf-8")
    except (UnicodeError, ValueError):
        return chars  # not UTF-8 after all: leave it


# --- html -------------------------------------------------------------------------------------------

_BLOCK_ELEMENTS = frozenset({
    "address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "details", "dialog",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
    "h5", "h6", "head", "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section",
    "summary", "table", "tbody", "td", "tfoot", "th", "thead", "title", "tr", "ul"
})
_INLINE_ELEMENTS = frozenset({
    "a", "abbr", "area", "audio", "b", "bdi", "bdo", "big", "button", "canvas", "center", "cite",
    "code", "col", "colgroup", "data", "datalist", "del", "dfn", "em", "embed", "font", "i", "iframe",
    "img", "input", "ins", "kbd", "label", "legend", "link", "map", "mark", "meta", "meter", "noscript",
    "object", "optgroup", "option", "output", "param", "picture", "progress", "q", "rp", "rt", "ruby",
    "s", "samp", "select", "small", "source", "span", "strike", "strong", "sub", "sup", "svg",
    "template", "textarea", "time", "track", "tt", "u", "var", "video", "wbr"
})
_ELEMENT_NAMES = "|".join(sorted(_BLOCK_ELEMENTS | _INLINE_ELEMENTS, key=len, reverse=True))
_HTML = re.compile(
    r"(?P<hidden><(?P<hidden_name>script|style)\b[^>]*>.*?</(?P=hidden_name)\s*>)"
    r"|(?P<comment><!--.*?-->)"
    r"|(?P<doctype><!doctype\b[^<>]*>)"
    rf"|(?P<tag></?(?P<name>{_ELEMENT_NAMES})(?:\s[^<>]*)?/?>)"
    r"|(?P<entity>&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});)",
    re.IGNORECASE | re.DOTALL,
)


def _html_replacement(match: re.Match[str]) -> str:
    if match.group("entity"):
        return html.unescape(match.group())
    if match.group("tag") and match.group("name").lower() in _BLOCK_ELEMENTS:
        return "\n"  # "<p>a</p><p>b</p>" must not become "ab"
    return ""


# --- control ----------------------------------------------------------------------------------------

_LATIN = "\u0000-\u024f"
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
    f"|(?<=[{_LATIN}])[\u200c\u200d]|[\u200c\u200d](?=[{_LATIN}])"
)


# --- whitespace -------------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _whitespace_replacement(match: re.Match[str]) -> str:
    if match.start() == 0 or match.end() == len(match.string):
        return ""
    run = match.group()
    return "\n" if any(char in _LINE_BREAKS for char in run) else " "
