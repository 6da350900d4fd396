"""Offline language identification with lingua (package lingua-language-detector).

Output per text:
  {"language": "en", "name": "English", "confidence": 0.91,
   "alternatives": [{"language": "de", "name": "German", "confidence": 0.02}, ...]}
`confidence` is lingua's relative confidence among the candidate languages (they sum to 1); short texts
spread it over several languages. A text with no letters answers "und" (undetermined), confidence 0.
  params.top_k      how many alternatives (default 3)
  params.threshold  alternatives below it are left out
  params.languages  ISO 639-1 codes to choose among (renormalised over them), e.g. ["en", "de", "fr"]

Candidates: lingua's models cost about 25 MB of memory per language in high-accuracy mode, so the
detector knows a set of widely used languages (CANDIDATES) unless CORTEX_LANGUAGE_CANDIDATES lists ISO
639-1 codes, or "all" for lingua's 75 (about 1.2 GB per worker process).
"""
from __future__ import annotations

from typing import Any

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.settings import get_settings
from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.models.postprocessing import DECIMALS, read_threshold, read_top_k

CANDIDATES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "da", "nb", "fi", "cs", "tr", "ru",
              "uk", "el", "ar", "zh", "ja", "ko", "hi")
CANDIDATES_ENV = "CORTEX_LANGUAGE_CANDIDATES"
DEFAULT_ALTERNATIVES = 3
UNDETERMINED = {"language": "und", "name": "Undetermined", "confidence": 0.0}
_DISPLAY_NAMES = {"BOKMAL": "Norwegian Bokmål", "NYNORSK": "Norwegian Nynorsk"}


def configured_candidates() -> tuple[str, ...] | None:
    """ISO 639-1 codes to build the detector for; None means every language lingua knows."""
    raw = get_settings().language_candidates.strip().lower()
    if raw == "all":
        return None
    if raw:
        return tuple(code.strip() for code in raw.split(",") if code.strip())
    return CANDIDATES


def display_name(language: Any) -> str:
    return _DISPLAY_NAMES.get(language.name, language.name.replace("_", " ").title())


class LinguaLanguageDetector:
    low_accuracy = False

    def __init__(self, name: str, version: str) -> None:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

        codes = configured_candidates()
        if codes is None:
            builder = LanguageDetectorBuilder.from_all_languages()
        else:
            try:
                isos = [getattr(IsoCode639_1, code.upper()) for code in codes]
            except AttributeError as exc:
                raise ValueError(f"{CANDIDATES_ENV}: unknown ISO 639-1 code ({exc})") from None
            builder = LanguageDetectorBuilder.from_iso_codes_639_1(*isos)
        if self.low_accuracy:
            builder = builder.with_low_accuracy_mode()
        # Loading every model now keeps the first request as fast as the others.
        self.detector = builder.with_preloaded_language_models().build()
        self.languages = frozenset(Language.all()) if codes is None else frozenset(
            Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in codes)
        self.info = ModelInfo(name=name, version=version, task="language", device="cpu",
                              max_input_chars=10_000, max_batch_size=256)

    def _read_languages(self, params: dict[str, Any]) -> frozenset[str] | None:
        wanted = params.get("languages")
        if wanted is None:
            return None
        known = sorted(language.iso_code_639_1.name.lower() for language in self.languages)
        if not isinstance(wanted, list) or not wanted or not all(isinstance(code, str) for code in wanted):
            raise JobInputError("invalid_params", "params.languages must be a list of ISO 639-1 codes",
                                {"valid": known})
        lowered = frozenset(code.lower() for code in wanted)
        unknown = sorted(lowered - set(known))
        if unknown:
            raise JobInputError("invalid_params", f"language(s) not known to this detector: {unknown}; "
                                f"known: {', '.join(known)}", {"valid": known})
        return lowered

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        top_k = read_top_k(params)
        alternatives = DEFAULT_ALTERNATIVES if top_k is None else top_k
        threshold = read_threshold(params) or 0.0
        wanted = self._read_languages(params)
        outputs = []
        for text in inputs:
            # Sequential on purpose: ~0.2 ms a text, and a prefork child should not start a thread pool.
            values = self.detector.compute_language_confidence_values(str(text))
            ranked = [(value.language, value.value) for value in values
                      if wanted is None or value.language.iso_code_639_1.name.lower() in wanted]
            total = sum(confidence for _, confidence in ranked)
            if total <= 0:
                outputs.append({**UNDETERMINED, "alternatives": []})
                continue
            entries = [{"language": language.iso_code_639_1.name.lower(), "name": display_name(language),
                        "confidence": round(confidence / total, DECIMALS)} for language, confidence in ranked]
            best, rest = entries[0], entries[1:]
            outputs.append({**best, "alternatives": [entry for entry in rest
                                                     if entry["confidence"] >= threshold][:alternatives]})
        return outputs


class LinguaFastLanguageDetector(LinguaLanguageDetector):
    """Trigrams only: ~15x less memory and faster to load, weaker on short texts, overconfident."""

    low_accuracy = True
