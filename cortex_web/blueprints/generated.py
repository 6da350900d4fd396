"""Images made by `image_generate`: GET /api/v1/generated/<image_id>.

The worker keeps each image under its hash in the calling tenant's space of the object store
(core/media_files.py); this route reads it from the caller's own tenant's space only, so another tenant's
image answers 404 exactly like one that never existed.
"""
from __future__ import annotations

from flask import Blueprint, Response

from cortex_tasks.core.auth.roles import READ
from cortex_tasks.core.media_files import IMAGE_ID, generated_image_name, image_media_type
from cortex_tasks.core.storage.object_store import ObjectNotFound, get_object_store
from cortex_tasks.core.tenancy import current_tenant
from cortex_web.auth import require
from cortex_web.errors import ApiError

bp = Blueprint("generated", __name__, url_prefix="/api/v1")


@bp.get("/generated/<image_id>")
@require(READ)
def generated_image(image_id: str) -> Response:
    """A generated image of the caller's tenant, by the id (sha256) its image_generate answer gave."""
    if not IMAGE_ID.match(image_id):
        raise ApiError(404, "image_not_found", f"No generated image {image_id[:80]!r}.")
    store = get_object_store()
    name = generated_image_name(current_tenant(), image_id)
    try:
        data = store.get(name, expected_sha256=image_id)
    except ObjectNotFound:
        raise ApiError(404, "image_not_found", f"No generated image {image_id!r}.") from None
    return Response(data, mimetype=image_media_type(data),
                    headers={"Cache-Control": "private, max-age=86400",
                             "Content-Disposition": f'inline; filename="{image_id[:16]}"'})
