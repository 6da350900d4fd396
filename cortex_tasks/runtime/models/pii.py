"""PII detection and masking with presidio-analyzer, on the bundled spaCy pipeline (no download).

Entity types (`params.entities` picks among them; all but URL by default):
  EMAIL        pattern, domain checked against the bundled public-suffix snapshot (never fetched)
  PHONE        python-phonenumbers, numbers valid for one of PHONE_REGIONS or written with +country code
  CREDIT_CARD  pattern + Luhn checksum
  IBAN         pattern + country format + ISO 7064 checksum
  IP_ADDRESS   IPv4/IPv6 pattern, checked with `ipaddress`
  US_SSN       pattern; passes the default threshold only with context ("SSN: ...")
  ADDRESS      street-address patterns (English "12 Baker Street", German "Hauptstraße 5")
  PERSON, LOCATION   spaCy NER (PERSON; GPE and LOC), presidio's fixed NER score 0.85
  URL          pattern (opt-in: most URLs are not personal)
Overlapping hits keep the most confident (then the longest) one.

pii_detect, per text: {"entities": [{"type", "text", "start", "end", "score"}, ...]}
pii_mask, per text:   {"text": masked, "entities": [{"type", "start", "end", "score", "rule", "replacement",
                       "masked_start", "masked_end"}, ...]}; the masked answer never repeats the raw values.
Offsets (start/end) are in the text the client sent, and masking rewrites that text (see
models/preprocessing.py). masked_start/masked_end locate each replacement in the masked text.

Masking rules per type, changeable per request with
`params.rules` ({"EMAIL": "redact", "phone": "keep", ...}; "address" means ADDRESS and LOCATION):
  partial       EMAIL only: first character of the local part, then ***, domain kept (j***@example.com)
  last_four     every letter and digit but the last four becomes * (separators stay)
  country_only  ADDRESS/LOCATION: adjacent address parts ("221B Baker Street, London, United Kingdom") are
                one address; it is replaced by its country when one of its parts names a country, else
                redacted
  redact        [TYPE]
  keep          left as it is (still reported)
Defaults: EMAIL partial, PHONE last_four, ADDRESS/LOCATION country_only, everything else redact.
`params.confidence_threshold` (default 0.85, architecture pii_protection.detection; `threshold` is an
alias) drops weaker hits. Validated pattern hits score 1.0, phone and IP 0.9, NER 0.85.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.models.postprocessing import read_threshold
from cortex_tasks.runtime.models.preprocessing import Prepared
from cortex_tasks.runtime.models.spacy_ner import PIPELINE_PACKAGE, english_pipeline, pipeline_turn

SUPPORTED_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "US_SSN", "ADDRESS", "PERSON",
                   "LOCATION", "URL")
DEFAULT_TYPES = tuple(kind for kind in SUPPORTED_TYPES if kind != "URL")
NER_TYPES = frozenset({"PERSON", "LOCATION"})
DEFAULT_CONFIDENCE_THRESHOLD = 0.85
DEFAULT_RULES = {"EMAIL": "partial", "PHONE": "last_four", "ADDRESS": "country_only",
                 "LOCATION": "country_only"}
RULES = ("partial", "last_four", "country_only", "redact", "keep")
RULE_TYPES = {"partial": frozenset({"EMAIL"}), "country_only": frozenset({"ADDRESS", "LOCATION"})}
# Other spellings clients use for a type (presidio's names among them).
TYPE_ALIASES = {"EMAIL_ADDRESS": ("EMAIL",), "PHONE_NUMBER": ("PHONE",), "IBAN_CODE": ("IBAN",),
                "IP": ("IP_ADDRESS",), "SSN": ("US_SSN",), "ADDRESS": ("ADDRESS", "LOCATION")}
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "AT", "CH", "IL", "IN", "CA", "AU", "BR")
VALIDATED_PATTERN_SCORE = 0.9
INTERNATIONAL_PHONE_SCORE = 0.95
NATIONAL_PHONE_SCORE = 0.6  # + presidio's context boost (0.35) clears 0.85
COUNTRY_SCORE = 0.85
ADDRESS_SCORE = 0.85
BATCH_SIZE = 32
# The PII pipeline needs tokens, lemmas (context words) and entities, not the dependency parse.
PII_DISABLED = ("parser",)

STREET_SUFFIXES = (r"Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?|"
                   r"Court|Ct\.?|Place|Pl\.?|Way|Terrace|Square|Sq\.?|Parkway|Highway|Crescent|Close")
ADDRESS_PATTERNS = (
    ("street address (en)", rf"\b\d{{1,5}}[A-Za-z]?\s+(?:[A-Z][a-z]+\s+){{1,3}}(?:{STREET_SUFFIXES})(?!\w)"),
    ("street address (de)", (r"\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm)"
                             r"\s+\d{1,4}[a-z]?\b")),
)


@dataclass(frozen=True)
class Hit:
    type: str
    start: int  # in the preprocessed text
    end: int
    score: float


# --- the presidio analyzer, built once per process and kind --------------------------------------

_analyzers: dict[bool, Any] = {}
_analyzers_lock = threading.Lock()


def analyzer(with_ner: bool):  # -> presidio_analyzer.AnalyzerEngine
    with _analyzers_lock:
        if with_ner not in _analyzers:
            _analyzers[with_ner] = _build_analyzer(with_ner)
    return _analyzers[with_ner]


def _build_analyzer(with_ner: bool):
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )

    # presidio's e-mail check asks tldextract, which downloads the public-suffix list on first use;
    # the snapshot inside the package is enough and keeps workers offline.
    offline_suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_suffixes(pattern_text).fqdn != ""

    class ValidPhoneRecognizer(PhoneRecognizer):
        """presidio scores every phonenumbers match 0.4. With leniency VALID a match is a number valid
        for its region; written with its country code it is hardly anything else, while a national
        format (030 1234567, 078-05-1120) is also what IDs and order numbers look like, so those
        need a context word ("call", "phone", ...) to clear the default threshold."""

        def analyze(self, text, entities, nlp_artifacts=None):
            results = super().analyze(text, entities, nlp_artifacts)
            for result in results:
                international = text.startswith(("+", "00"), result.start)
                result.score = INTERNATIONAL_PHONE_SCORE if international else NATIONAL_PHONE_SCORE
            return results

    class SharedPipelineEngine(SpacyNlpEngine):
        """presidio's spaCy engine on the pipeline this process already holds (or a tokenizer only)."""

        def __init__(self) -> None:
            super().__init__(
                models=[{"lang_code": "en", "model_name": PIPELINE_PACKAGE}],
                ner_model_configuration=NerModelConfiguration(
                    model_to_presidio_entity_mapping={"PERSON": "PERSON", "GPE": "LOCATION",
                                                      "LOC": "LOCATION"},
                    labels_to_ignore=["CARDINAL", "DATE", "EVENT", "FAC", "LANGUAGE", "LAW", "MONEY",
                                      "NORP", "ORDINAL", "ORG", "PERCENT", "PRODUCT", "QUANTITY", "TIME",
                                      "WORK_OF_ART"]))

        def load(self) -> None:
            self.nlp = {"en": english_pipeline() if with_ner else spacy.blank("en")}

        def process_batch(self, texts, language, batch_size=1, n_process=1, as_tuples=False):
            pipeline = self.nlp[language]
            disabled = [name for name in PII_DISABLED if name in pipeline.pipe_names]
            # The caller holds the pipeline's turn (detect): the recognizers read these docs after the batch.
            for doc in pipeline.pipe(texts, batch_size=BATCH_SIZE, disable=disabled):
                artifacts = self._doc_to_nlp_artifact(doc, language)
                if not with_ner:
                    # A bare tokenizer has no lemmatizer: context words then match lower-cased tokens.
                    artifacts.lemmas = [token.lower_ for token in doc]
                yield doc.text, artifacts

    ip_patterns = [Pattern(pattern.name, pattern.regex, VALIDATED_PATTERN_SCORE)
                   for pattern in IpRecognizer.PATTERNS]
    recognizers = [
        OfflineEmailRecognizer(supported_entity="EMAIL"),
        ValidPhoneRecognizer(supported_entity="PHONE", supported_regions=PHONE_REGIONS),
        CreditCardRecognizer(supported_entity="CREDIT_CARD"),
        IbanRecognizer(supported_entity="IBAN"),
        IpRecognizer(patterns=ip_patterns, supported_entity="IP_ADDRESS"),
        UsSsnRecognizer(supported_entity="US_SSN"),
        UrlRecognizer(supported_entity="URL"),
        PatternRecognizer(supported_entity="ADDRESS", name="StreetAddressRecognizer",
                          # presidio matches case-insensitively; capitals are what tell a street name
                          patterns=[Pattern(name, f"(?-i:{regex})", ADDRESS_SCORE)
                                    for name, regex in ADDRESS_PATTERNS],
                          context=["address", "street", "live", "lives", "located", "ship"]),
    ]
    if with_ner:
        recognizers.append(SpacyRecognizer(supported_entities=sorted(NER_TYPES)))
    else:
        # Without NER, country names are the one kind of LOCATION a list finds reliably; they let
        # country_only keep the country of an address. Case-sensitive: "turkey", "china", "chad".
        names = sorted((name for name in country_names() if len(name) > 3), key=len, reverse=True)
        alternatives = "|".join(re.escape(name) for name in names)
        recognizers.append(PatternRecognizer(
            supported_entity="LOCATION", name="CountryNameRecognizer",
            patterns=[Pattern("country name", rf"(?-i:\b(?:{alternatives})\b)", COUNTRY_SCORE)]))
    engine = SharedPipelineEngine()
    engine.load()
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


# --- request parameters ----------------------------------------------------------------------------

def _type_names(raw: str) -> tuple[str, ...]:
    name = raw.strip().upper()
    if name in TYPE_ALIASES:
        return TYPE_ALIASES[name]
    if name in SUPPORTED_TYPES:
        return (name,)
    raise JobInputError("invalid_params", f"unknown PII type {raw!r}; valid: {', '.join(SUPPORTED_TYPES)}",
                        {"valid": list(SUPPORTED_TYPES)})


def read_types(params: dict[str, Any], available: Iterable[str]) -> tuple[str, ...]:
    wanted = params.get("entities")
    available = tuple(available)
    if wanted is None:
        return tuple(kind for kind in DEFAULT_TYPES if kind in available)
    if not isinstance(wanted, list) or not wanted or not all(isinstance(name, str) for name in wanted):
        raise JobInputError("invalid_params", "params.entities must be a list of PII types",
                            {"valid": list(available)})
    chosen = [kind for name in wanted for kind in _type_names(name)]
    missing = sorted(set(chosen) - set(available))
    if missing:
        raise JobInputError("invalid_params", f"this model cannot detect {missing}; it detects "
                            f"{', '.join(available)}", {"valid": list(available)})
    return tuple(dict.fromkeys(chosen))


def read_confidence_threshold(params: dict[str, Any]) -> float:
    name = "confidence_threshold" if "confidence_threshold" in params else "threshold"
    threshold = read_threshold(params, name, DEFAULT_CONFIDENCE_THRESHOLD)
    return DEFAULT_CONFIDENCE_THRESHOLD if threshold is None else threshold


def read_rules(params: dict[str, Any]) -> dict[str, str]:
    rules = dict(DEFAULT_RULES)
    given = params.get("rules")
    if given is None:
        return rules
    if not isinstance(given, dict):
        raise JobInputError("invalid_params", 'params.rules must be an object like {"EMAIL": "redact"}',
                            {"rules": list(RULES)})
    for raw_type, rule in given.items():
        if rule not in RULES:
            raise JobInputError("invalid_params", f"unknown masking rule {rule!r} for {raw_type}; "
                                f"valid: {', '.join(RULES)}", {"rules": list(RULES)})
        for kind in _type_names(raw_type):
            allowed = RULE_TYPES.get(rule)
            if allowed is not None and kind not in allowed:
                raise JobInputError("invalid_params", f"rule {rule!r} applies only to {sorted(allowed)}")
            rules[kind] = rule
    return rules


# --- detection -------------------------------------------------------------------------------------

def resolve_overlaps(hits: Iterable[Hit]) -> list[Hit]:
    """Keep the most confident, then the longest, of overlapping hits; in text order."""
    kept: list[Hit] = []
    for hit in sorted(hits, key=lambda h: (-h.score, -(h.end - h.start), h.start)):
        if all(hit.end <= other.start or hit.start >= other.end for other in kept):
            kept.append(hit)
    return sorted(kept, key=lambda h: h.start)


def detect(texts: list[str], types: tuple[str, ...], threshold: float, with_ner: bool) -> list[list[Hit]]:
    engine = analyzer(with_ner)
    found = []
    # The whole analysis is one turn on the pipeline: the recognizers read the docs' tokens, which the
    # turn's memory zone frees when it ends (spacy_ner.pipeline_turn).
    with pipeline_turn(engine.nlp_engine.nlp["en"]):
        for text, artifacts in engine.nlp_engine.process_batch(texts, "en"):
            results = engine.analyze(text, language="en", entities=list(types), nlp_artifacts=artifacts,
                                     score_threshold=0.0)
            found.append(resolve_overlaps(Hit(result.entity_type, result.start, result.end, float(result.score))
                                          for result in results if result.score >= threshold))
    return found


# --- masking ---------------------------------------------------------------------------------------

_countries: frozenset[str] | None = None
# Everyday names phonenumbers' English region names leave out.
COUNTRY_ALIASES = ("USA", "US", "U.S.", "U.S.A.", "United States of America", "America", "UK", "U.K.",
                   "Britain", "Great Britain", "England", "Scotland", "Wales", "Northern Ireland", "Holland",
                   "Czech Republic", "Deutschland", "The Netherlands", "Republic of Ireland")


def country_names() -> frozenset[str]:
    """English country names (phonenumbers' region names, offline) and everyday aliases, as written."""
    global _countries
    if _countries is None:
        import phonenumbers
        from phonenumbers import geocoder

        names = {geocoder._region_display_name(region, "en")
                 for region in phonenumbers.SUPPORTED_REGIONS}
        _countries = frozenset(name for name in names if name) | frozenset(COUNTRY_ALIASES)
    return _countries


_lower_countries: frozenset[str] | None = None


def is_country(name: str) -> bool:
    global _lower_countries
    if _lower_countries is None:
        _lower_countries = frozenset(country.lower() for country in country_names())
    key = " ".join(name.strip().lower().split())
    return key in _lower_countries or key.removeprefix("the ") in _lower_countries


_ADDRESS_GAP = re.compile(r"[\s,;/\-–]*")
# After a street address, what may stand between it and a later part: city names and postcodes the
# detectors did not flag ("221B Baker Street, London NW1 6XE, United Kingdom").
_ADDRESS_TAIL = re.compile(r"(?:[\s,]+(?:[A-ZÄÖÜ][\w'-]*|\d[\dA-Z-]{2,9}|[A-Z]{1,2}\d[\dA-Z]?))*[\s,]+")
MAX_ADDRESS_TAIL = 40


def group_addresses(spans: list[tuple[str, int, int, float]], text: str) -> list[list[tuple[str, int, int, float]]]:
    """Adjacent ADDRESS/LOCATION spans, separated only by commas or spaces, form one address; after a
    street address, unflagged city names and postcodes may stand between them too."""
    address_kinds = RULE_TYPES["country_only"]
    groups: list[list[tuple[str, int, int, float]]] = []
    for span in spans:
        group = groups[-1] if groups else None
        joins = False
        if group is not None and span[0] in address_kinds and group[-1][0] in address_kinds:
            gap_start, gap_end = group[-1][2], span[1]
            joins = bool(_ADDRESS_GAP.fullmatch(text, gap_start, gap_end)) or (
                any(part[0] == "ADDRESS" for part in group) and gap_end - gap_start <= MAX_ADDRESS_TAIL
                and bool(_ADDRESS_TAIL.fullmatch(text, gap_start, gap_end)))
        if joins and group is not None:
            group.append(span)
        else:
            groups.append([span])
    return groups


def _last_four(value: str) -> str:
    keep_from = [index for index, char in enumerate(value) if char.isalnum()][-4:]
    first_kept = keep_from[0] if keep_from else len(value)
    return "".join("*" if char.isalnum() and index < first_kept else char for index, char in enumerate(value))


def _partial_email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at:
        return "[EMAIL]"
    return (local[0] if len(local) > 1 else "") + "***@" + domain


def mask(original: str, spans: list[tuple[str, int, int, float]], rules: dict[str, str]) -> dict[str, Any]:
    """Rewrite the original text; spans are (type, start, end, score) in it, in order, not overlapping."""
    pieces: list[str] = []
    entities: list[dict[str, Any]] = []
    done = 0
    length = 0
    for group in group_addresses(spans, original):
        kind = "ADDRESS" if len(group) > 1 or group[0][0] == "ADDRESS" else group[0][0]
        start, end = group[0][1], group[-1][2]
        value = original[start:end]
        rule = rules.get(kind, "redact")
        if rule == "partial":
            replacement = _partial_email(value)
        elif rule == "last_four":
            replacement = _last_four(value)
        elif rule == "country_only":
            country = next((original[s:e] for _, s, e, _ in reversed(group) if is_country(original[s:e])), None)
            replacement = country if country is not None else f"[{kind}]"
        elif rule == "keep":
            replacement = value
        else:
            replacement = f"[{kind}]"
        pieces.append(original[done:start])
        length += start - done
        entities.append({"type": kind, "start": start, "end": end,
                         "score": round(min(score for *_, score in group), 4), "rule": rule,
                         "replacement": replacement, "masked_start": length,
                         "masked_end": length + len(replacement)})
        pieces.append(replacement)
        length += len(replacement)
        done = end
    pieces.append(original[done:])
    return {"text": "".join(pieces), "entities": entities}


# --- backends --------------------------------------------------------------------------------------

class PiiDetector:
    """pii_detect with patterns and spaCy NER."""

    accepts_prepared = True
    with_ner = True
    masks = False
    task = "pii_detect"

    def __init__(self, name: str, version: str) -> None:
        analyzer(self.with_ner)  # load now: the registry calls this once per process
        self.types = tuple(kind for kind in SUPPORTED_TYPES if self.with_ner or kind != "PERSON")
        self.info = ModelInfo(name=name, version=version, task=self.task, device="cpu",
                              max_input_chars=10_000, max_batch_size=64)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        types = read_types(params, self.types)
        threshold = read_confidence_threshold(params)
        rules = read_rules(params) if self.masks else {}
        prepared = [item if isinstance(item, Prepared) else Prepared(str(item), str(item)) for item in inputs]
        outputs = []
        for item, hits in zip(prepared, detect([item.text for item in prepared], types, threshold,
                                               self.with_ner)):
            spans = []
            for hit in hits:
                start, end = item.to_original(hit.start, hit.end)
                spans.append((hit.type, start, end, hit.score))
            if self.masks:
                outputs.append(mask(item.original, spans, rules))
            else:
                outputs.append({"entities": [{"type": kind, "text": item.original[start:end], "start": start,
                                              "end": end, "score": round(score, 4)}
                                             for kind, start, end, score in spans]})
        return outputs


class PiiMasker(PiiDetector):
    """pii_mask with patterns and spaCy NER."""

    masks = True
    task = "pii_mask"


class PatternPiiDetector(PiiDetector):
    """pii_detect with patterns only (no spaCy model: no PERSON, LOCATION = country names); the fallback."""

    with_ner = False


class PatternPiiMasker(PiiMasker):
    """pii_mask with patterns only (no spaCy model: no PERSON, LOCATION = country names); the fallback."""

    with_ner = False
