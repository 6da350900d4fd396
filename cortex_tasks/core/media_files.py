"""Media in the object store: images and recordings staged for jobs, and images made by image_generate.

Each is one object named by its content's hash inside the tenant's space (`tenants/<tenant>/<kind>/<sha256>`).
Generated images are served by GET /api/v1/generated/<sha256> to that tenant's keys only (the gateway reads
the caller's tenant's name; another tenant's image is simply not there: 404).

Retention (the hourly expire-media job): a staged input is deleted once it has not been sent for
CORTEX_STAGED_MEDIA_RETENTION, a generated image CORTEX_GENERATED_MEDIA_RETENTION after it was made. The
same bytes sent again reuse their object, so staging rewrites one that is half-way to its expiry: a job
queued now never finds its input deleted under it by the next run of the job.
"""
from __future__ import annotations

import re
import time

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.object_store import ObjectStore

IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
# The kinds of media objects and whether each is a staged input; only names of exactly this shape expire
# (a tenant's own objects elsewhere under its prefix, given as image_ref, are never touched).
STAGED_KINDS = ("images", "audio")
GENERATED_KIND = "generated"
MEDIA_NAME = re.compile(r"^tenants/[^/]+/(images|audio|generated)/[0-9a-f]{64}$")

DAY = 86400.0


def media_prefix(tenant: str, kind: str) -> str:
    return f"tenants/{tenant}/{kind}/"


def stage_object(store: ObjectStore, name: str, data: bytes, content_type: str) -> None:
    """Store staged input bytes under their content-addressed name: written when missing, and written again
    when the existing copy is past half of its retention, so that it outlives every job that uses it."""
    modified = store.modified_at(name)
    fresh_for = get_settings().staged_media_retention_days * DAY / 2
    if modified is None or time.time() - modified > fresh_for:
        store.put(name, data, content_type)


def generated_image_name(tenant: str, sha256: str) -> str:
    return f"{media_prefix(tenant, GENERATED_KIND)}{sha256}"


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
