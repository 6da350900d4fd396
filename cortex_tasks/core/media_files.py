"""Where generated images are kept and how they are fetched: one object per image, named by its hash inside
the tenant's space of the object store, served by GET /api/v1/generated/<sha256> to that tenant's keys only
(the gateway reads the caller's tenant's name; another tenant's image is simply not there: 404)."""
from __future__ import annotations

import re

IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


def generated_image_name(tenant: str, sha256: str) -> str:
    return f"tenants/{tenant}/generated/{sha256}"


def generated_image_url(sha256: str) -> str:
    return f"/api/v1/generated/{sha256}"


def image_media_type(data: bytes) -> str:
    """The media type of a stored image from its first bytes (the formats the images API answers in)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"
