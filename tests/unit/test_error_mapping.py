"""The one mapping of Cortex's errors to HTTP (cortex_web/errors.py): every family answers with its own
code and status in the API's JSON shape."""
from __future__ import annotations

import pytest
from flask import Flask

from cortex_tasks.core.errors import CortexError, ItemError
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.registry.records import ModelNotFound, RegistryConflict, RegistryError
from cortex_tasks.core.storage.object_store import ObjectNotFound, ObjectStoreUnavailable
from cortex_tasks.core.storage.vector_store import CollectionNotFound, VectorStoreError
from cortex_web.errors import ApiError, register_error_handlers

CASES = [
    (ApiError(429, "rate_limited", "slow down", {"limit": 5}, {"Retry-After": "3"}), 429, "rate_limited",
     {"limit": 5}),
    (RegistryError("invalid_model_name", "bad name"), 422, "invalid_model_name", {}),
    (ModelNotFound("m"), 404, "model_not_found", {}),
    (RegistryConflict("stage_conflict", "no", {"stage": "canary"}), 409, "stage_conflict", {"stage": "canary"}),
    (VectorStoreError("dimension_mismatch", "3 != 4", {"expected": 4}), 422, "dimension_mismatch", {"expected": 4}),
    (CollectionNotFound("c"), 404, "collection_not_found", {}),
    (ObjectNotFound("a/b"), 404, "object_not_found", {}),
    (ObjectStoreUnavailable("storage_unavailable", "down"), 503, "storage_unavailable", {}),
    (ItemError("invalid_input", "bad item"), 422, "invalid_input", {}),
    (JobInputError("invalid_params", "bad", {"param": "k"}), 422, "invalid_params", {"param": "k"}),
    # A job's status travels in its details (the job record keeps them); the answer carries it as the status.
    (JobInputError("collection_not_found", "gone", {"status": 404, "name": "c"}), 404, "collection_not_found",
     {"name": "c"}),
]


@pytest.mark.parametrize(("error", "status", "code", "details"), CASES, ids=[case[2] for case in CASES])
def test_each_family_answers_with_its_code_and_status(error: CortexError, status: int, code: str,
                                                      details: dict) -> None:
    app = Flask(__name__)
    register_error_handlers(app)

    @app.get("/fail")
    def fail() -> str:
        raise error

    response = app.test_client().get("/fail")
    assert response.status_code == status
    assert response.get_json() == {"error": {"code": code, "message": error.message, "details": details}}
    for name, value in error.headers.items():
        assert response.headers[name] == value


def test_every_family_is_a_cortex_error() -> None:
    for family in (ApiError, RegistryError, VectorStoreError, ObjectNotFound, JobInputError, ItemError):
        assert issubclass(family, CortexError)
    assert issubclass(ObjectStoreUnavailable, ConnectionError)  # task retry policies still retry it
