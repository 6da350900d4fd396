"""Access tokens through the real gateway, PostgreSQL and Redis.

Cortex's own: POST /api/v1/oauth/token with a real key, the token used on real routes, signing-key
rotation (old tokens keep working, new ones carry the new kid), revocation of the key ending its tokens.
An external identity provider's: a local JWKS server (a thread) publishes a local key pair; its tokens map
claims to the principal, and every defective token is a 401 invalid_token."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import g
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cortex_tasks.core.auth import signing_keys
from cortex_tasks.core.auth.keys import create_key, create_tenant, revoke_key
from cortex_tasks.core.settings import reset_settings_cache
from cortex_web.auth import CACHE_SECONDS
from tests.support.serving import served

IDP_ISSUER, IDP_AUDIENCE = "https://idp.test", "cortex-gateway"
IDP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
IDP_EC_KEY = ec.generate_private_key(ec.SECP256R1())
UNPUBLISHED_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FORM = "application/x-www-form-urlencoded"


def address() -> str:
    """A client address of its own per test, so that rate-limit buckets and alert windows do not mix."""
    value = uuid.uuid4().int
    return f"10.{value % 250}.{(value >> 8) % 250}.{(value >> 16) % 250 + 1}"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_out_the_auth_cache() -> None:
    # The gateway remembers a verified credential this long; past it, the next request verifies again.
    time.sleep(CACHE_SECONDS + 0.2)


# --- Cortex's own tokens -------------------------------------------------------------------------------


def request_token(client, key: str, via: str = "basic", remote: str | None = None):
    key_id, secret = key.split("_", 2)[1:]
    environ = {"REMOTE_ADDR": remote or address()}
    form = {"grant_type": "client_credentials"}
    if via == "basic":
        return client.post("/api/v1/oauth/token", data=form, headers=basic(key_id, secret), environ_base=environ)
    return client.post("/api/v1/oauth/token", data={**form, "client_id": key_id, "client_secret": key},
                       environ_base=environ)


def test_token_for_a_key_works_on_real_routes_with_the_keys_role(app):
    client = app.test_client()
    key = create_key("inference_user", name="token client", tier="unlimited")
    response = request_token(client, key.key)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == signing_keys.KEY_RING.signing_key().kid
    with client:
        assert client.get("/api/v1/models", headers=bearer(token)).status_code == 200
        assert g.principal.key_id == key.key_id and g.principal.role == "inference_user"
        assert (g.principal.tier, g.principal.tenant, g.principal.models) == ("unlimited", "default", None)
    # The key's role, not more: inference_user may not administer keys.
    refused = client.get("/api/v1/keys", headers=bearer(token))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    # The whole key as client_secret in form fields works as well.
    assert request_token(client, key.key, via="form").status_code == 200


def test_jwks_verifies_the_token_outside_cortex(app):
    client = app.test_client()
    key = create_key("reader", tier="unlimited")
    token = request_token(client, key.key).get_json()["access_token"]
    jwks = client.get("/api/v1/oauth/jwks.json")
    assert jwks.status_code == 200 and "max-age" in jwks.headers["Cache-Control"]
    published = {jwk["kid"]: jwk for jwk in jwks.get_json()["keys"]}
    assert all("d" not in jwk for jwk in published.values())  # public halves only
    claims = jwt.decode(token, jwt.PyJWK(published[jwt.get_unverified_header(token)["kid"]]),
                        algorithms=["ES256"], audience="cortex-api", issuer="cortex")
    assert claims["sub"] == key.key_id and claims["role"] == "reader" and claims["tenant"] == "default"
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"]


def test_rotation_keeps_old_tokens_working_and_revocation_ends_them(app):
    client = app.test_client()
    key = create_key("reader", tier="unlimited")
    old_token = request_token(client, key.key).get_json()["access_token"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    new_kid = signing_keys.rotate()
    assert new_kid != old_kid
    wait_out_the_auth_cache()
    assert client.get("/api/v1/models", headers=bearer(old_token)).status_code == 200
    new_token = request_token(client, key.key).get_json()["access_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert {old_kid, new_kid} <= {jwk["kid"] for jwk in client.get("/api/v1/oauth/jwks.json").get_json()["keys"]}
    listed = {entry["kid"]: entry for entry in signing_keys.list_signing_keys()}
    assert listed[new_kid]["retired_at"] is None and listed[old_kid]["retired_at"] is not None

    assert revoke_key(key.key_id)
    wait_out_the_auth_cache()
    for token in (old_token, new_token):
        refused = client.get("/api/v1/models", headers=bearer(token))
        assert refused.status_code == 401, refused.get_json()
        assert refused.get_json()["error"]["details"]["reason"] == "key_inactive"
        assert refused.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    # And the revoked key gets no new token.
    assert request_token(client, key.key).status_code == 401


def test_dropping_retired_keys_ends_their_tokens(app):
    client = app.test_client()
    key = create_key("reader", tier="unlimited")
    token = request_token(client, key.key).get_json()["access_token"]
    signing_keys.rotate(drop_retired=True)
    wait_out_the_auth_cache()
    refused = client.get("/api/v1/models", headers=bearer(token))
    assert refused.status_code == 401 and refused.get_json()["error"]["details"]["reason"] == "unknown_kid"


def test_the_signing_key_is_replaced_when_older_than_the_rotation_age(app, monkeypatch):
    client = app.test_client()
    key = create_key("reader", tier="unlimited")
    first = jwt.get_unverified_header(request_token(client, key.key).get_json()["access_token"])["kid"]
    monkeypatch.setenv("CORTEX_TOKEN_KEY_ROTATION", "5s")
    reset_settings_cache()
    time.sleep(5.1)
    token = request_token(client, key.key).get_json()["access_token"]
    second = jwt.get_unverified_header(token)["kid"]
    assert second != first
    # One new key, not one per token: the next token within the age has the same kid.
    assert jwt.get_unverified_header(request_token(client, key.key).get_json()["access_token"])["kid"] == second


def test_cli_rotates_and_lists_the_signing_keys():
    from click.testing import CliRunner

    from cortex_tasks.cli import main

    before = signing_keys.KEY_RING.signing_key().kid
    rotated = CliRunner().invoke(main, ["tokens", "rotate"])
    assert rotated.exit_code == 0, rotated.output
    kid = rotated.output.strip().rsplit(" ", 1)[-1]
    assert kid != before and signing_keys.KEY_RING.signing_key().kid == kid
    listed = CliRunner().invoke(main, ["tokens", "keys"])
    assert listed.exit_code == 0, listed.output
    by_kid = {entry["kid"]: entry for entry in json.loads(listed.output)}
    assert by_kid[kid]["retired_at"] is None and by_kid[before]["retired_at"] is not None
    assert "PRIVATE" not in listed.output


def test_own_tokens_that_are_expired_or_forged_are_refused(app):
    client = app.test_client()
    key = create_key("reader", tier="unlimited")
    signer = signing_keys.KEY_RING.signing_key()
    now = int(time.time())
    good = {"iss": "cortex", "aud": "cortex-api", "sub": key.key_id, "iat": now, "exp": now + 60,
            "jti": "j", "role": "reader"}

    def refused(claims: dict[str, Any], private: Any = signer.private_key, kid: str = signer.kid) -> str:
        token = jwt.encode(claims, private, algorithm="ES256", headers={"kid": kid})
        response = client.get("/api/v1/models", headers=bearer(token))
        assert response.status_code == 401, (claims, response.get_json())
        return response.get_json()["error"]["details"]["reason"]

    assert client.get("/api/v1/models", headers=bearer(
        jwt.encode(good, signer.private_key, algorithm="ES256", headers={"kid": signer.kid}))).status_code == 200
    assert refused({**good, "iat": now - 600, "exp": now - 300}) == "expired"
    assert refused({**good, "aud": "elsewhere"}) == "wrong_audience"
    assert refused({**good, "role": "platform_owner"}) == "unknown_role"
    assert refused({key: value for key, value in good.items() if key != "jti"}) == "missing_claim"
    assert refused(good, ec.generate_private_key(ec.SECP256R1())) == "bad_signature"
    assert refused(good, kid="no-such-kid") == "unknown_kid"
    assert refused({**good, "sub": "0123456789ab"}) == "key_inactive"


def test_token_request_errors_are_oauth2_errors_and_audited(app, admin_api, keys):
    client = app.test_client()
    remote = address()
    key = create_key("reader", tier="unlimited")
    key_id = key.key_id
    wrong = client.post("/api/v1/oauth/token", data={"grant_type": "client_credentials"},
                        headers=basic(key_id, "not-the-secret"), environ_base={"REMOTE_ADDR": remote})
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_client"
    assert wrong.get_json()["error_description"] and wrong.headers["WWW-Authenticate"] == 'Basic realm="cortex"'
    grant = client.post("/api/v1/oauth/token", data={"grant_type": "password"}, headers=basic(key_id, "x"),
                        environ_base={"REMOTE_ADDR": remote})
    assert grant.status_code == 400 and grant.get_json()["error"] == "unsupported_grant_type"
    as_json = client.post("/api/v1/oauth/token", json={"grant_type": "client_credentials"},
                          environ_base={"REMOTE_ADDR": remote})
    assert as_json.status_code == 400 and as_json.get_json()["error"] == "invalid_request"
    granted = request_token(client, key.key, remote=remote)
    assert granted.status_code == 200

    app.extensions["cortex_audit"].flush()
    # Refused logins belong to no tenant: the platform admin reads them.
    events = admin_api.as_key(keys["platform_admin"]).get("/api/v1/audit",
                                                          query_string={"size": 200}).get_json()["events"]
    mine = [event for event in events if event["ip"] == remote]
    issued = [event for event in mine if event["action"] == "token.issue"]
    assert {event["outcome"] for event in issued} == {"success", "failure"}
    assert any(event["outcome"] == "success" and event["actor"]["key_id"] == key_id for event in issued)
    violation = next(event for event in mine if event["type"] == "security_violations")
    assert violation["action"] == "invalid_client" and violation["actor"]["key_id"] == key_id
    assert key.key.split("_", 2)[2] not in json.dumps(events)
    assert granted.get_json()["access_token"] not in json.dumps(events)


def test_token_route_is_rate_limited_per_client_address(app):
    client = app.test_client()
    remote = address()
    statuses = [client.post("/api/v1/oauth/token", data={"grant_type": "client_credentials"},
                            headers=basic("0123456789ab", "x"), environ_base={"REMOTE_ADDR": remote}).status_code
                for _ in range(12)]
    assert statuses[:10] == [401] * 10 and statuses[-1] == 429  # the default tier's burst is 10
    limited = client.post("/api/v1/oauth/token", data={"grant_type": "client_credentials"},
                          environ_base={"REMOTE_ADDR": remote})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    # Another address is not affected.
    assert client.post("/api/v1/oauth/token", data={"grant_type": "client_credentials"},
                       environ_base={"REMOTE_ADDR": address()}).status_code == 401


# --- an external identity provider ---------------------------------------------------------------------


class JwksServer:
    """The identity provider's JWKS endpoint: a WSGI app served in a thread, counting its fetches."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = keys
        self.fetches = 0
        self._lock = threading.Lock()

    def document(self) -> dict[str, Any]:
        published = []
        for kid, private in self.keys.items():
            to_jwk = RSAAlgorithm.to_jwk if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm.to_jwk
            published.append({**json.loads(to_jwk(private.public_key())), "kid": kid, "use": "sig"})
        return {"keys": published}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self._lock:
            self.fetches += 1
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(self.document()).encode()]


@pytest.fixture()
def idp(monkeypatch) -> Iterator[JwksServer]:
    create_tenant("acme")  # the tenant the provider's tokens name (False when an earlier test made it)
    server = JwksServer({"rsa-1": IDP_KEY, "ec-1": IDP_EC_KEY})
    with served(server) as url:
        # A URL of its own per test: the gateway keeps one key cache per JWKS URL.
        monkeypatch.setenv("CORTEX_OIDC_ISSUER", IDP_ISSUER)
        monkeypatch.setenv("CORTEX_OIDC_AUDIENCE", IDP_AUDIENCE)
        monkeypatch.setenv("CORTEX_OIDC_JWKS_URL", f"{url}/jwks.json?test={uuid.uuid4().hex}")
        reset_settings_cache()
        yield server


def idp_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": f"user-{uuid.uuid4().hex[:8]}", "iat": now,
            "exp": now + 300, "tenant": "acme", "role": "reader"}
    return {name: value for name, value in {**base, **changes}.items() if value is not None}


def idp_token(claims: dict[str, Any], private: Any = IDP_KEY, algorithm: str = "RS256", kid: str = "rsa-1") -> str:
    return jwt.encode(claims, private, algorithm=algorithm, headers={"kid": kid})


def forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_external_tokens_map_claims_to_the_principal(app, idp):
    client = app.test_client()
    claims = idp_claims(sub="alice", role="model_admin", models=["sst2-distilbert", "minilm"], tasks="embed ner")
    with client:
        response = client.get("/api/v1/keys", headers=bearer(idp_token(claims)))
        assert response.status_code == 200, response.get_json()
        principal = g.principal
    assert (principal.key_id, principal.role, principal.tenant, principal.tier) == (
        "oidc:alice", "model_admin", "acme", "default")
    assert principal.models == frozenset({"sst2-distilbert", "minilm"})
    assert principal.tasks == frozenset({"embed", "ner"})
    # An EC key of the same provider, and a reader's token is held to the reader role.
    reader = idp_token(idp_claims(), IDP_EC_KEY, "ES256", "ec-1")
    assert client.get("/api/v1/models", headers=bearer(reader)).status_code == 200
    assert client.get("/api/v1/keys", headers=bearer(reader)).status_code == 403


def test_every_defective_external_token_is_401_invalid_token(app, idp):
    client = app.test_client()
    now = int(time.time())
    public_pem = IDP_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    cases = {
        "expired": idp_token(idp_claims(iat=now - 900, exp=now - 600)),
        "not_yet_valid": idp_token(idp_claims(nbf=now + 600)),
        "wrong_audience": idp_token(idp_claims(aud="another-api")),
        "wrong_issuer": idp_token(idp_claims(iss="https://evil.test")),
        "unknown_kid": idp_token(idp_claims(), UNPUBLISHED_KEY, kid="rsa-unpublished"),
        "bad_signature": idp_token(idp_claims(), UNPUBLISHED_KEY, kid="rsa-1"),
        "alg_none": forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, idp_claims(role="model_admin"), None),
        "hs_rs_confusion": forged({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, idp_claims(role="model_admin"),
                                  public_pem),
        "missing_role": idp_token(idp_claims(role=None)),
        "missing_tenant": idp_token(idp_claims(tenant=None)),
        "missing_exp": idp_token(idp_claims(exp=None)),
        "unknown_role": idp_token(idp_claims(role="superuser")),
        "bad_models_claim": idp_token(idp_claims(models=[1, 2])),
        "unknown_tenant": idp_token(idp_claims(tenant="no-such-tenant")),
        "platform_admin": idp_token(idp_claims(role="platform_admin")),
    }
    expected_reason = {"alg_none": "algorithm_not_allowed", "hs_rs_confusion": "algorithm_not_allowed",
                       "missing_role": "missing_claim", "missing_tenant": "missing_claim",
                       "missing_exp": "missing_claim", "bad_models_claim": "invalid_claim",
                       "platform_admin": "role_not_allowed"}
    for case, token in cases.items():
        response = client.get("/api/v1/models", headers=bearer(token), environ_base={"REMOTE_ADDR": address()})
        assert response.status_code == 401, (case, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == "invalid_token" and error["message"], case
        assert error["details"]["reason"] == expected_reason.get(case, case), (case, error)
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"'), case


def test_made_up_kids_do_not_make_the_gateway_fetch_per_request(app, idp):
    client = app.test_client()
    assert client.get("/api/v1/models", headers=bearer(idp_token(idp_claims()))).status_code == 200
    fetched = idp.fetches
    for _ in range(8):
        token = idp_token(idp_claims(), UNPUBLISHED_KEY, kid=uuid.uuid4().hex)
        assert client.get("/api/v1/models", headers=bearer(token)).status_code == 401
    # At most one refetch for the first unknown kid; none in the cooldown after it.
    assert idp.fetches - fetched <= 1


def test_a_key_the_provider_adds_is_fetched_when_first_seen(app, idp, monkeypatch):
    from cortex_tasks.core.auth import tokens

    # No cooldown for this provider, as after the 30 s one has passed.
    url = tokens.get_settings().tokens.oidc_jwks_url
    monkeypatch.setitem(tokens._providers, url, tokens.ProviderKeys(url, min_refetch_seconds=0))
    client = app.test_client()
    assert client.get("/api/v1/models", headers=bearer(idp_token(idp_claims()))).status_code == 200
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys["rsa-2"] = rotated
    token = idp_token(idp_claims(), rotated, kid="rsa-2")
    assert client.get("/api/v1/models", headers=bearer(token)).status_code == 200


def test_an_unreachable_provider_is_503_not_401(app, monkeypatch):
    from cortex_tasks.stack.embedded import free_port

    monkeypatch.setenv("CORTEX_OIDC_ISSUER", IDP_ISSUER)
    monkeypatch.setenv("CORTEX_OIDC_AUDIENCE", IDP_AUDIENCE)
    monkeypatch.setenv("CORTEX_OIDC_JWKS_URL", f"http://127.0.0.1:{free_port()}/jwks.json")
    reset_settings_cache()
    response = app.test_client().get("/api/v1/models", headers=bearer(idp_token(idp_claims())))
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "identity_provider_unavailable"


def test_external_tokens_are_refused_when_no_provider_is_configured(app):
    response = app.test_client().get("/api/v1/models", headers=bearer(idp_token(idp_claims())))
    assert response.status_code == 401 and response.get_json()["error"]["details"]["reason"] == "wrong_issuer"
