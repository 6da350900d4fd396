"""Image inputs, from the request to the worker.

A client gives an image as base64 in JSON (`{"image": "<base64>"}`, a `data:image/...;base64,` URL too), as a
file of a multipart upload (turned into the same form by cortex_web/request_body.py), or as a reference to an
object in the object store (`{"image_ref": "tenants/<tenant>/..."}`: only under the caller's tenant's prefix).

The gateway checks every image before anything is queued: at most `image_max_bytes` encoded bytes, a format
Pillow can read, at most `image_max_pixels` pixels (read from the header, before any pixel is decoded, so a
decompression bomb costs nothing), and a complete decode. A broken rule is an ItemError naming the item
(`invalid_image`, 422). A good image is stored once under its content hash (`tenants/<tenant>/images/<sha256>`)
and travels as a staged item, `{"image_sha256", "image_object"}`: messages and job rows stay small, and the
cache keys it by the hash of its bytes (core/cache/keys.py). Workers read it back with its digest checked.

Plain Python and Pillow: the gateway imports this module.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.media_files import media_prefix, stage_object
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.object_store import ObjectNotFound, ObjectStoreError, get_object_store

INVALID_IMAGE = "invalid_image"
# Formats a photograph or a drawing comes in; others Pillow reads (EPS through Ghostscript, say) are refused.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The keys of a staged item: only the gateway writes them (a client's item with them is refused).
STAGED_KEYS = frozenset({"image_sha256", "image_object"})
CLIENT_KEYS = ("image", "image_ref")


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    width: int
    height: int
    format: str
    size: int


def tenant_prefix(tenant: str) -> str:
    return f"tenants/{tenant}/"


def staged_name(tenant: str, sha256: str) -> str:
    return f"{media_prefix(tenant, 'images')}{sha256}"


def is_staged(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == STAGED_KEYS and isinstance(item["image_sha256"], str) \
        and bool(SHA256.match(item["image_sha256"])) and isinstance(item["image_object"], str)


def is_image_item(item: Any) -> bool:
    """A client's image item (`image` or `image_ref`) or a staged one."""
    return isinstance(item, dict) and (is_staged(item) or (len(item) == 1 and next(iter(item)) in CLIENT_KEYS))


def _fail(where: str, why: str, details: dict[str, Any] | None) -> ItemError:
    return ItemError(INVALID_IMAGE, f"{where} {why}", details)


def decode_base64(value: str, where: str, details: dict[str, Any] | None = None) -> bytes:
    return decode_limited(value, get_settings().image_max_bytes, where, details, INVALID_IMAGE)


def decode_limited(value: str, max_bytes: int, where: str, details: dict[str, Any] | None, code: str) -> bytes:
    """The bytes of base64 text (a `data:...;base64,` prefix allowed), refused unread when it encodes more
    than `max_bytes` (base64 is 4/3 of the bytes)."""
    text = re.sub(r"^data:[A-Za-z0-9.+/-]+;base64,", "", value, count=1, flags=re.IGNORECASE).strip()
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise ItemError(code, f"{where} is larger than {max_bytes} bytes", {**(details or {}), "max_bytes": max_bytes})
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ItemError(code, f"{where} is not valid base64", details) from None


def check_image(data: bytes, where: str, details: dict[str, Any] | None = None) -> ImageFacts:
    """The facts of a decodable image within the limits, or ItemError naming `where` and the broken rule."""
    settings = get_settings()
    if not data:
        raise _fail(where, "is empty", details)
    if len(data) > settings.image_max_bytes:
        raise _fail(where, f"has {len(data)} bytes; at most {settings.image_max_bytes} are allowed",
                    {**(details or {}), "max_bytes": settings.image_max_bytes})
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice it: every bomb warning is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ACCEPTED_FORMATS:
                    raise _fail(where, f"is a {image.format} image; accepted formats are "
                                f"{', '.join(sorted(ACCEPTED_FORMATS))}", details)
                width, height = image.size
                if width < 1 or height < 1:
                    raise _fail(where, "has no pixels", details)
                if width * height > settings.image_max_pixels:
                    raise _fail(where, f"is {width}x{height} pixels; at most {settings.image_max_pixels} "
                                "pixels are allowed", {**(details or {}), "max_pixels": settings.image_max_pixels})
                image.load()  # a truncated or corrupt file fails here, not in the worker
                facts = ImageFacts(hashlib.sha256(data).hexdigest(), width, height, image.format, len(data))
    except ItemError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _fail(where, "has too many pixels to decode safely",
                    {**(details or {}), "max_pixels": settings.image_max_pixels}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        why = "is not an image Cortex can read" if isinstance(exc, UnidentifiedImageError) \
            else f"cannot be decoded ({type(exc).__name__}: {str(exc)[:200]})"
        raise _fail(where, why, details) from None
    return facts


def read_reference(reference: Any, tenant: str, where: str, details: dict[str, Any] | None = None) -> tuple[str, bytes]:
    """The object name and bytes of `{"image_ref": name}`: a name under the caller's tenant's prefix
    (an `s3://<bucket>/` of the configured bucket may precede it)."""
    if not isinstance(reference, str) or not reference:
        raise _fail(where, "image_ref must be an object name", details)
    name = reference
    bucket = get_settings().s3_bucket
    name = name.removeprefix(f"s3://{bucket}/")
    if not name.startswith(tenant_prefix(tenant)):
        raise _fail(where, f"image_ref must name an object under {tenant_prefix(tenant)}", details)
    try:
        return name, get_object_store().get(name)
    except ObjectNotFound:
        raise ItemError("image_not_found", f"{where} refers to {reference!r}, which does not exist",
                        details) from None
    except ObjectStoreError as exc:
        if exc.code == "invalid_object_name":
            raise _fail(where, f"image_ref is not a valid object name ({exc.message})", details) from None
        raise


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed every check, and where it is (or will be) stored."""

    data: bytes
    facts: ImageFacts
    object_name: str
    stored: bool  # already in the store (given by reference)

    def staged(self) -> dict[str, str]:
        return {"image_sha256": self.facts.sha256, "image_object": self.object_name}

    def store(self) -> dict[str, str]:
        """Written under its hash once (the same bytes are the same object); the staged item."""
        if not self.stored:
            stage_object(get_object_store(), self.object_name, self.data,
                         Image.MIME.get(self.facts.format, "application/octet-stream"))
        return self.staged()


def check_item(item: Any, tenant: str, where: str, details: dict[str, Any] | None = None) -> CheckedImage:
    """A client's image item (base64 or reference), read and checked; ItemError naming `where` if bad."""
    if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in CLIENT_KEYS:
        raise _fail(where, 'must be {"image": "<base64>"} or {"image_ref": "<object name>"}', details)
    if "image" in item:
        if not isinstance(item["image"], str):
            raise _fail(where, "image must be a base64 string", details)
        data = decode_base64(item["image"], where, details)
        facts = check_image(data, where, details)
        return CheckedImage(data, facts, staged_name(tenant, facts.sha256), stored=False)
    name, data = read_reference(item["image_ref"], tenant, where, details)
    return CheckedImage(data, check_image(data, where, details), name, stored=True)


def stage_item(item: Any, tenant: str, where: str, details: dict[str, Any] | None = None) -> dict[str, str]:
    """A client's image item checked and stored; the staged item."""
    return check_item(item, tenant, where, details).store()


def stage_inputs(inputs: list[Any], tenant: str, field: str = "inputs") -> list[dict[str, str]]:
    """Every item of a request checked, then (all good) stored, in order: the first bad one is an ItemError
    naming it (`inputs[3]`), and a refused request has stored nothing."""
    checked = [check_item(item, tenant, f"{field}[{index}]", {"index": index}) for index, item in enumerate(inputs)]
    return [image.store() for image in checked]


def load_staged(item: Any) -> bytes:
    """The bytes of a staged item (worker side), their digest checked; ItemError if it is not one or is gone."""
    if not is_staged(item):
        raise ItemError(INVALID_IMAGE, "the item is not an image (image tasks take {\"image\": \"<base64>\"} "
                        "or {\"image_ref\": \"<object name>\"})")
    try:
        return get_object_store().get(item["image_object"], expected_sha256=item["image_sha256"])
    except ObjectNotFound:
        raise ItemError("image_not_found", f"the image {item['image_sha256'][:12]}... is no longer stored") from None
