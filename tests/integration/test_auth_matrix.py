"""Every /api/v1 route needs a key: none or a bad one is 401, a role without the permission is 403,
a role with it gets through (reader < inference_user < model_admin). Walks the app's real URL map."""
from __future__ import annotations

import re
from datetime import UTC

import pytest

from cortex_tasks.core.auth.keys import create_key, revoke_key
from cortex_tasks.core.auth.roles import ROLE_PERMISSIONS

# These tests read or write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")

# The token route is the login and the key set is public (tests/integration/test_access_tokens.py).
PUBLIC = {"/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/assets/<path:filename>", "/api/v1/oauth/token",
          "/api/v1/oauth/jwks.json"}


def api_routes(app) -> list[tuple[str, str, str | None]]:
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule in PUBLIC:
            continue
        view = app.view_functions[rule.endpoint]
        permission = getattr(view, "required_permission", None)
        path = re.sub(r"<int:[^<>]+>", "1", rule.rule)
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "00000000-0000-0000-0000-000000000000", path)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, path, permission))
    return routes


def call(client, method: str, path: str, headers: dict[str, str]):
    return client.open(path, method=method, headers=headers, json={} if method in ("POST", "PUT") else None)


def test_every_api_route_declares_a_permission(app):
    routes = api_routes(app)
    assert len(routes) >= 5
    assert [route for route in routes if route[2] is None] == []


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer nope"}, {"X-API-Key": "ctx_abc_def"}, {"Authorization": "Basic Zm9vOmJhcg=="},
    {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJyb2xlIjoibW9kZWxfYWRtaW4ifQ."},  # a JWT with alg none
])
def test_missing_or_bad_key_is_401_everywhere(app, headers):
    client = app.test_client()
    for method, path, _ in api_routes(app):
        response = call(client, method, path, headers)
        assert response.status_code == 401, (method, path)
        assert response.get_json()["error"]["code"] in ("missing_api_key", "invalid_api_key", "invalid_token")


@pytest.mark.parametrize("role", sorted(ROLE_PERMISSIONS))
def test_each_role_gets_exactly_its_permissions(app, keys, role):
    client = app.test_client()
    headers = {"Authorization": f"Bearer {keys[role]}"}
    for method, path, permission in api_routes(app):
        response = call(client, method, path, headers)
        if permission in ROLE_PERMISSIONS[role]:
            assert response.status_code not in (401, 403), (role, method, path, response.get_json())
            assert response.status_code < 500, (role, method, path, response.get_json())
        else:
            assert response.status_code == 403, (role, method, path)
            assert response.get_json()["error"]["code"] == "forbidden"


def test_x_api_key_header_works(app, keys):
    response = app.test_client().get("/api/v1/health/metrics", headers={"X-API-Key": keys["reader"]})
    assert response.status_code == 200


def test_revoked_and_expired_keys_are_rejected(app):
    from datetime import datetime, timedelta

    from cortex_tasks.core.storage.db import session_scope
    from cortex_tasks.core.storage.tables import ApiKey

    client = app.test_client()
    revoked = create_key("reader")
    assert revoke_key(revoked.key_id)
    expired = create_key("reader", expires_in_days=1)
    with session_scope() as session:
        session.get(ApiKey, expired.key_id).expires_at = datetime.now(UTC) - timedelta(seconds=1)
    for issued in (revoked, expired):
        response = client.get("/api/v1/health/metrics", headers={"Authorization": f"Bearer {issued.key}"})
        assert response.status_code == 401


def test_keys_are_stored_hashed(keys):
    from cortex_tasks.core.storage.db import session_scope
    from cortex_tasks.core.storage.tables import ApiKey

    key_id, secret = keys["reader"].split("_", 2)[1:]
    with session_scope() as session:
        row = session.get(ApiKey, key_id)
    assert secret not in row.secret_hash and len(row.secret_hash) == 64


def test_admin_key_from_environment_is_model_admin(app, monkeypatch):
    from cortex_tasks.core.settings import reset_settings_cache

    monkeypatch.setenv("CORTEX_ADMIN_KEY", "automation-admin-key-0123456789")
    reset_settings_cache()
    try:
        client = app.test_client()
        response = client.get("/api/v1/keys", headers={"Authorization": "Bearer automation-admin-key-0123456789"})
        assert response.status_code == 200
    finally:
        monkeypatch.delenv("CORTEX_ADMIN_KEY")
        reset_settings_cache()


def test_public_endpoints_need_no_key(app):
    client = app.test_client()
    for path in ("/health", "/metrics", "/api/v1/openapi.json", "/api/v1/docs", "/api/v1/oauth/jwks.json"):
        assert client.get(path).status_code == 200, path


def test_keys_api_creates_lists_and_revokes(admin_api):
    created = admin_api.post("/api/v1/keys", {"role": "reader", "name": "ci"})
    assert created.status_code == 201
    body = created.get_json()
    reader = admin_api.as_key(body["key"])
    assert reader.get("/api/v1/health/metrics").status_code == 200
    assert body["key_id"] in [k["key_id"] for k in admin_api.get("/api/v1/keys").get_json()["keys"]]
    assert admin_api.delete(f"/api/v1/keys/{body['key_id']}").status_code == 200
    assert admin_api.post("/api/v1/keys", {"role": "superuser"}).status_code == 422
