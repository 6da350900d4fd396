"""The token verifier with a local key pair (no services): every way a token can be wrong is a 401
invalid_token with its reason, the algorithm allow-list comes from the caller never from the token, and the
token request's own errors are OAuth2's. tests/integration/test_access_tokens.py runs the same cases
through the gateway against a JWKS server and Cortex's own keys."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from cortex_tasks.core.auth.oauth import OAuthError, client_credentials_grant
from cortex_tasks.core.auth.tokens import TokenError, _names, _subject_id, decode_verified, looks_like_jwt

ISSUER, AUDIENCE = "https://idp.example", "cortex-api"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
FORM = "application/x-www-form-urlencoded"


def public_jwk(private: Any, kid: str) -> PyJWK:
    to_jwk = RSAAlgorithm.to_jwk if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm.to_jwk
    return PyJWK({**json.loads(to_jwk(private.public_key())), "kid": kid})


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, "role": "reader"}
    return {name: value for name, value in {**base, **changes}.items() if value is not None}


def sign(payload: dict[str, Any], key: Any = RSA_KEY, algorithm: str = "RS256", kid: str = "k1") -> str:
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid})


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None = None) -> str:
    """A token built by hand: PyJWT refuses to make the forgeries this test needs."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def verify(token: str, key: PyJWK | None = None, algorithms: tuple[str, ...] = ("RS256",),
           required: tuple[str, ...] = ("exp", "iss", "aud", "sub")) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    return decode_verified(token, header, key or public_jwk(RSA_KEY, "k1"), algorithms=algorithms,
                           issuer=ISSUER, audience=AUDIENCE, required=required, leeway=5)


def reason(token: str, **options: Any) -> str:
    with pytest.raises(TokenError) as refused:
        verify(token, **options)
    error = refused.value
    assert (error.status, error.code) == (401, "invalid_token")
    assert error.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token", error_description="')
    return error.details["reason"]


def test_a_good_token_verifies():
    assert verify(sign(claims()))["sub"] == "alice"
    assert verify(sign(claims(), EC_KEY, "ES256"), public_jwk(EC_KEY, "k1"), ("ES256",))["role"] == "reader"


def test_each_defect_is_refused_with_its_reason():
    now = int(time.time())
    assert reason(sign(claims(exp=now - 60))) == "expired"
    assert reason(sign(claims(nbf=now + 600))) == "not_yet_valid"
    assert reason(sign(claims(aud="another-api"))) == "wrong_audience"
    assert reason(sign(claims(iss="https://evil.example"))) == "wrong_issuer"
    assert reason(sign(claims(sub=None))) == "missing_claim"
    assert reason(sign(claims(exp=None))) == "missing_claim"
    assert reason(sign(claims(), OTHER_RSA_KEY)) == "bad_signature"
    good = sign(claims())
    tampered = good.rsplit(".", 1)[0] + "." + b64(b"\x00" * 256)
    assert reason(tampered) == "bad_signature"


def test_alg_none_is_refused():
    token = unsigned({"alg": "none", "typ": "JWT", "kid": "k1"}, claims())
    assert looks_like_jwt(token) and token.endswith(".")
    assert reason(token) == "algorithm_not_allowed"
    assert reason(unsigned({"alg": "None", "kid": "k1"}, claims())) == "algorithm_not_allowed"


def test_hs256_signed_with_the_public_key_is_refused():
    # The HS/RS confusion: a verifier that takes the algorithm from the token would check this HMAC with
    # the RSA public key's PEM as the shared secret, and accept it.
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = unsigned({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(role="model_admin"), pem)
    assert reason(forged) == "algorithm_not_allowed"
    # Even with HS256 on the caller's list, the key is bound to its own algorithm.
    assert reason(forged, algorithms=("RS256", "HS256")) == "algorithm_not_allowed"


def test_a_key_verifies_only_its_own_algorithm():
    # An ES256 token cannot pass as RS256 and the other way round, whatever the allow-list holds.
    assert reason(sign(claims(), EC_KEY, "ES256"), algorithms=("RS256", "ES256")) == "algorithm_not_allowed"
    assert reason(sign(claims(), RSA_KEY, "RS512"), algorithms=("RS256",)) == "algorithm_not_allowed"


def test_jwt_shape_and_claim_helpers():
    assert looks_like_jwt(sign(claims()))
    for credential in ("ctx_0123456789ab_secret-part_x", "nope", "a.b", "a.b.c.d", "a b.c.d"):
        assert not looks_like_jwt(credential), credential
    assert _names({"models": ["m1", "m2"]}, "models") == frozenset({"m1", "m2"})
    assert _names({"scope": "embed ner"}, "scope") == frozenset({"embed", "ner"})
    assert _names({}, "models") is None
    assert _names({"realm": {"models": ["a"]}}, "realm.models") == frozenset({"a"})
    assert _names({"models": []}, "models") == frozenset()  # present and empty: no model at all
    for bad in ([1], [""], ["a b"], {"a": 1}, ['x"y'], 7):
        with pytest.raises(TokenError):
            _names({"models": bad}, "models")
    assert _subject_id("alice@example.org") == "oidc:alice@example.org"
    long_subject = _subject_id("x" * 300)
    assert long_subject.startswith("oidc:sha256:") and len(long_subject) <= 64
    assert _subject_id("a\x00b") != _subject_id("a\x00c")


def test_oidc_settings_refuse_shared_secret_algorithms_and_half_configurations(monkeypatch):
    from cortex_tasks.core.settings import TokensConfig

    monkeypatch.setenv("CORTEX_OIDC_ALGORITHMS", "RS256,HS256")
    with pytest.raises(ValidationError, match="asymmetric"):
        TokensConfig()
    monkeypatch.setenv("CORTEX_OIDC_ALGORITHMS", "none")
    with pytest.raises(ValidationError, match="asymmetric"):
        TokensConfig()
    monkeypatch.setenv("CORTEX_OIDC_ALGORITHMS", "RS256, PS256")
    assert TokensConfig().oidc_algorithms == ("RS256", "PS256")
    monkeypatch.setenv("CORTEX_OIDC_ISSUER", ISSUER)
    with pytest.raises(ValidationError, match="go together"):
        TokensConfig()
    monkeypatch.setenv("CORTEX_OIDC_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("CORTEX_OIDC_JWKS_URL", "file:///etc/passwd")
    with pytest.raises(ValidationError, match="http"):
        TokensConfig()
    monkeypatch.setenv("CORTEX_OIDC_JWKS_URL", "https://idp.example/jwks")
    monkeypatch.setenv("CORTEX_TOKEN_LIFETIME", "5m")
    monkeypatch.setenv("CORTEX_TOKEN_LEEWAY", "0s")
    config = TokensConfig()
    assert config.oidc_enabled and config.lifetime_seconds == 300 and config.leeway_seconds == 0
    monkeypatch.setenv("CORTEX_TOKEN_LIFETIME", "0")
    with pytest.raises(ValidationError, match="positive"):
        TokensConfig()


def oauth_error(form: dict[str, list[str]], content_type: str | None = FORM,
                authorization: str | None = None) -> OAuthError:
    with pytest.raises(OAuthError) as refused:
        client_credentials_grant(form, content_type, authorization)
    assert refused.value.headers["Cache-Control"] == "no-store"
    return refused.value


def test_token_requests_are_checked_before_any_key_is_looked_up():
    basic = "Basic " + base64.b64encode(b"0123456789ab:secret").decode()
    grant = {"grant_type": ["client_credentials"]}
    cases = [
        (({}, "application/json"), 400, "invalid_request"),
        (({},), 400, "invalid_request"),
        (({"grant_type": ["password"]},), 400, "unsupported_grant_type"),
        (({"grant_type": ["client_credentials", "client_credentials"]},), 400, "invalid_request"),
        (({**grant, "scope": ["admin"]},), 400, "invalid_scope"),
        (({**grant, "client_id": ["0123456789ab"]}, FORM, basic), 400, "invalid_request"),
        ((grant,), 401, "invalid_client"),
        ((grant, FORM, "Bearer abc"), 401, "invalid_client"),
        ((grant, FORM, "Basic !!!"), 401, "invalid_client"),
        ((grant, FORM, "Basic " + base64.b64encode(b"no-colon").decode()), 401, "invalid_client"),
        (({**grant, "client_id": ["../etc"], "client_secret": ["x"]},), 401, "invalid_client"),
    ]
    for arguments, status, code in cases:
        error = oauth_error(*arguments)
        assert (error.status, error.code) == (status, code), arguments
        if code == "invalid_client":
            assert error.headers["WWW-Authenticate"] == 'Basic realm="cortex"'
