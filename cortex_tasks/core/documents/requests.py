"""What POST /documents and POST /qa accept: pydantic models shared by the gateway (which answers a bad
body with 422 before anything is queued) and the tasks (which validate their JSON payload again, so a
message from an older or foreign sender cannot write junk).

Plain data and pydantic only: the gateway imports this module, so no Haystack, torch or model code here.
"""
from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.request_fields import Storable, WaitSeconds
from cortex_tasks.core.validation.items import CONTROL_CHARACTERS, INVALID_INPUT, check_no_control_characters

MAX_DOCUMENTS = 50
MAX_CONTENT_CHARS = 50_000
MAX_DOCUMENT_ID_CHARS = 200
MAX_META_KEYS = 32
MAX_META_VALUE_CHARS = 1000
MAX_QUESTION_CHARS = 1000
MAX_TOP_K = 20
DEFAULT_TOP_K = 5
MAX_FILTER_KEYS = 16
MAX_FILTER_CHOICES = 50
DEFAULT_COLLECTION = "default"

# Collection names as for vector collections: safe in URLs and logs.
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Metadata keys become Haystack filter fields (`meta.<key>`): identifiers only, so a key can never be
# mistaken for a nested path.
META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# Keys Cortex keeps in each passage's `meta` beside the user's metadata (and the ones Haystack's
# DocumentSplitter adds): a user key of the same name would be overwritten or would break scoping.
RESERVED_META_KEYS = frozenset({
    "collection", "document_id", "passage_index", "passage_count", "document_chars", "indexed_by", "indexed_at",
    "source_id", "split_id", "split_idx_start", "page_number", "_split_overlap",
})

MetaValue = str | int | float | bool | None


def _check_text(value: str, what: str) -> str:
    # A document's content has its own length limit (MAX_CONTENT_CHARS); being non-blank and free of
    # control characters are the rules every text item meets (an ItemError: 422 invalid_input, as on
    # /predict).
    if not value.strip():
        raise ItemError(INVALID_INPUT, f"{what} is empty", {"field": what})
    return check_no_control_characters(value, what, {"field": what})


def _check_collection(value: str) -> str:
    if not COLLECTION_NAME.match(value):
        raise ValueError("a collection name is 1-64 characters: letters, digits, '_', '-', '.', starting with "
                         "a letter or digit")
    return value


def _check_scalar(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"meta value for {key!r} must be finite")
    if isinstance(value, str) and len(value) > MAX_META_VALUE_CHARS:
        raise ValueError(f"meta value for {key!r} is over {MAX_META_VALUE_CHARS} characters")
    if isinstance(value, str) and CONTROL_CHARACTERS.search(value):
        raise ValueError(f"meta value for {key!r} must not contain control characters")


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(default=None, min_length=1, max_length=MAX_DOCUMENT_ID_CHARS)
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    # A flat JSON object: values are strings, numbers, booleans or null (filterable in POST /qa).
    meta: Storable[dict[str, MetaValue]] = Field(default_factory=dict, max_length=MAX_META_KEYS)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value, "id")

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        return _check_text(value, "content")

    @field_validator("meta")
    @classmethod
    def _meta(cls, value: dict[str, MetaValue]) -> dict[str, MetaValue]:
        for key, item in value.items():
            if not META_KEY.match(key):
                raise ValueError(f"meta key {key!r} must be an identifier (letters, digits, '_'; 1-64 characters)")
            if key in RESERVED_META_KEYS:
                raise ValueError(f"meta key {key!r} is reserved; reserved keys: {', '.join(sorted(RESERVED_META_KEYS))}")
            _check_scalar(key, item)
        return value


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    collection: str = DEFAULT_COLLECTION
    wait: WaitSeconds = Field(default=None, ge=0, le=60)

    _collection = field_validator("collection")(classmethod(lambda cls, value: _check_collection(value)))

    @model_validator(mode="after")
    def _distinct_ids(self) -> IndexRequest:
        ids = [document.id for document in self.documents if document.id is not None]
        repeated = sorted({item for item in ids if ids.count(item) > 1})
        if repeated:
            raise ValueError(f"document ids repeat within the request: {', '.join(repeated[:5])}")
        return self


FilterValue = MetaValue | list[MetaValue]


class QuestionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: int = Field(default=DEFAULT_TOP_K, ge=1, le=MAX_TOP_K)
    collection: str = DEFAULT_COLLECTION
    # Equality on the documents' metadata; a list means "any of these values".
    filters: Storable[dict[str, FilterValue] | None] = Field(default=None, max_length=MAX_FILTER_KEYS)
    # false: retrieval and the extractive answer only (no language model, fast).
    generate: bool = True
    max_tokens: int = Field(default=96, ge=1, le=256)
    wait: WaitSeconds = Field(default=None, ge=0, le=60)

    _collection = field_validator("collection")(classmethod(lambda cls, value: _check_collection(value)))

    @field_validator("question")
    @classmethod
    def _question(cls, value: str) -> str:
        return _check_text(value, "question")

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: dict[str, FilterValue] | None) -> dict[str, FilterValue] | None:
        for key, item in (value or {}).items():
            if not META_KEY.match(key) or key in RESERVED_META_KEYS:
                raise ValueError(f"filter key {key!r} must be a metadata key of the documents")
            choices = item if isinstance(item, list) else [item]
            if isinstance(item, list) and not 1 <= len(item) <= MAX_FILTER_CHOICES:
                raise ValueError(f"filter {key!r} lists 1 to {MAX_FILTER_CHOICES} values")
            for choice in choices:
                _check_scalar(key, choice)
        return value
