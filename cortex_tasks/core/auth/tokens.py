"""Access tokens (JWT): issuing Cortex's own, and verifying them and an external identity provider's.

Cortex's tokens are signed with the keys of signing_keys.py (ES256, `kid` in the header) and carry the API
key they were issued to (`sub`) with its role, tier, tenant, models and tasks. They verify only while that
key is still active, so revoking a key ends its tokens too (within the gateway's 2 s cache).

An external identity provider is configured by issuer, audience and JWKS URL (CORTEX_OIDC_*); its claims
map to the principal by the configured claim names. The token's unverified `iss` only chooses which of the
two verifies it; the verification then checks `iss` again.

Which algorithms verify is fixed per issuer (ES256 for Cortex, CORTEX_OIDC_ALGORITHMS for the provider),
never read from the token: `alg: none` and an HS256 token signed with a public key as its secret (the
HS/RS confusion) are refused before any key is looked at, and each key verifies only its own algorithm.
Every refusal is a TokenError: 401 `invalid_token`, with the reason in the message and in details.
"""
from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKError

from cortex_tasks.core import redis_clock
from cortex_tasks.core.auth import signing_keys
from cortex_tasks.core.auth.keys import Principal, active_principal, tenant_exists
from cortex_tasks.core.auth.roles import PLATFORM_ADMIN, ROLE_PERMISSIONS
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import TokensConfig, get_settings
from cortex_tasks.core.tenancy import TENANT_ID

# Three base64url parts; the signature may be empty (an `alg: none` token is still a token, and refused as
# one). API keys (`ctx_<id>_<secret>`) have no dots, so the two never look alike.
JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_TOKEN_CHARS = 8192
OWN_REQUIRED = ("exp", "iat", "iss", "aud", "sub", "jti")
EXTERNAL_REQUIRED = ("exp", "iss", "aud", "sub")
# A claimed name (tenant, model, task, subject): printable, no quotes or separators a log or header reuses.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:|/+-]{0,127}")
MAX_SUBJECT_CHARS = 59  # "oidc:" + subject fits the 64 characters of a job owner or an audit actor


class TokenError(CortexError):
    """A bearer token that does not authenticate (RFC 6750 `invalid_token`)."""

    def __init__(self, reason: str, message: str):
        description = message.replace('"', "'").replace("\\", "/")
        super().__init__("invalid_token", message, {"reason": reason}, status=401,
                         headers={"WWW-Authenticate": f'Bearer error="invalid_token", '
                                                      f'error_description="{description}"'})


class IdentityProviderUnavailable(CortexError):
    """The provider's JWKS could not be fetched: the token may well be good, so this is not a 401."""

    def __init__(self, message: str):
        super().__init__("identity_provider_unavailable", message, status=503, headers={"Retry-After": "5"})


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    kid: str
    principal: Principal


@dataclass(frozen=True)
class VerifiedToken:
    principal: Principal
    expires_at: float  # epoch seconds: a cache must not remember the token longer


def looks_like_jwt(credential: str) -> bool:
    return JWT_SHAPE.fullmatch(credential) is not None


def issue_token(principal: Principal) -> IssuedToken:
    """A signed access token for an active API key's principal."""
    config = get_settings().tokens
    key = signing_keys.KEY_RING.signing_key()
    now = int(redis_clock.shared_now())  # the clock every gateway checks it by (decode_verified)
    claims: dict[str, Any] = {
        "iss": config.issuer, "aud": config.audience, "sub": principal.key_id, "iat": now, "nbf": now,
        "exp": now + config.lifetime_seconds, "jti": uuid.uuid4().hex,
        "role": principal.role, "tier": principal.tier, "tenant": principal.tenant,
    }
    if principal.models is not None:
        claims["models"] = sorted(principal.models)
    if principal.tasks is not None:
        claims["tasks"] = sorted(principal.tasks)
    token = jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})
    return IssuedToken(token, config.lifetime_seconds, key.kid, principal)


def verify_token(token: str) -> VerifiedToken:
    """Who the bearer token authenticates; raises TokenError (401) or IdentityProviderUnavailable (503)."""
    if len(token) > MAX_TOKEN_CHARS or not looks_like_jwt(token):
        raise TokenError("malformed", "The bearer token is not a JWT.")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise TokenError("malformed", "The bearer token is not a well-formed JWT.") from None
    config = get_settings().tokens
    issuer = unverified.get("iss")
    if issuer == config.issuer:
        return _verify_own(token, header, config)
    if config.oidc_enabled and issuer == config.oidc_issuer:
        return _verify_external(token, header, config)
    raise TokenError("wrong_issuer", "The token's issuer is not one this gateway trusts.")


def decode_verified(token: str, header: Mapping[str, Any], key: PyJWK, *, algorithms: tuple[str, ...],
                    issuer: str, audience: str, required: tuple[str, ...], leeway: float,
                    now: float | None = None) -> dict[str, Any]:
    """The claims of a token whose signature, algorithm, issuer, audience and times check out with `key`.
    `header` is the token's unverified header, read only to refuse a disallowed algorithm by name. Times
    are checked against `now`, by default Redis's clock (see _check_times)."""
    if header.get("alg") not in algorithms:
        raise TokenError("algorithm_not_allowed",
                         f"Tokens of this issuer must be signed with {', '.join(algorithms)}.")
    try:
        claims = jwt.decode(token, key, algorithms=list(algorithms), issuer=issuer, audience=audience,
                            options={"require": list(required), "verify_exp": False, "verify_nbf": False,
                                     "verify_iat": False})
    except jwt.InvalidAudienceError:
        raise TokenError("wrong_audience", "The token is not meant for this gateway (aud).") from None
    except jwt.InvalidIssuerError:
        raise TokenError("wrong_issuer", "The token's issuer is not one this gateway trusts.") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError("missing_claim", f"The token lacks the {exc.claim} claim.") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError("algorithm_not_allowed", "The token's algorithm does not fit its key.") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad_signature", "The token's signature does not verify.") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError("invalid", f"The token is not valid: {exc}.") from None
    _check_times(claims, redis_clock.shared_now() if now is None else now, leeway)
    return claims


def _check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    """PyJWT's exp, nbf and iat checks, against the clock every gateway shares (Redis's) rather than this
    host's: PyJWT reads only the local clock, and gateways minutes apart then refused each other's fresh
    tokens as not valid yet (nbf) and cut their lifetimes short. The leeway is left for the issuers
    Cortex does not run (an external identity provider's clock)."""
    try:
        exp, nbf, iat = (None if claims.get(name) is None else int(claims[name]) for name in ("exp", "nbf", "iat"))
    except (ValueError, TypeError, OverflowError):
        raise TokenError("invalid", "The token is not valid: its exp, nbf and iat must be integers.") from None
    if exp is not None and exp <= now - leeway:
        raise TokenError("expired", "The token has expired.")
    if (nbf is not None and nbf > now + leeway) or (iat is not None and iat > now + leeway):
        raise TokenError("not_yet_valid", "The token is not valid yet (nbf or iat in the future).")


def _kid(header: Mapping[str, Any]) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 256:
        raise TokenError("missing_kid", "The token's header names no key (kid).")
    return kid


def _role(claims: Mapping[str, Any], name: str) -> str:
    role = _claim(claims, name)
    if role is None:
        raise TokenError("missing_claim", f"The token lacks the {name} claim.")
    if not isinstance(role, str) or role not in ROLE_PERMISSIONS:
        raise TokenError("unknown_role", f"The token's role is none of {', '.join(ROLE_PERMISSIONS)}.")
    return role


def _claim(claims: Mapping[str, Any], dotted: str) -> Any:
    """A claim by name; dots reach into objects (`realm_access.role`)."""
    value: Any = claims
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _names(claims: Mapping[str, Any], name: str) -> frozenset[str] | None:
    """A list of names (or one space-separated string, as OAuth scopes are), None when absent."""
    value = _claim(claims, name)
    if value is None:
        return None
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and NAME.fullmatch(item) for item in items):
        raise TokenError("invalid_claim", f"The {name} claim must be a list of names.")
    return frozenset(items)


def _tenant(value: Any, name: str) -> str:
    """A tenant id as Cortex writes them (tenancy.TENANT_ID), of a tenant that exists: a token cannot
    conjure a tenant (its resources would have no owner to belong to)."""
    if not isinstance(value, str) or not TENANT_ID.fullmatch(value):
        raise TokenError("invalid_claim", f"The {name} claim must name a tenant.")
    if not tenant_exists(value):
        raise TokenError("unknown_tenant", f"The token's tenant {value!r} does not exist here.")
    return value


def _verify_own(token: str, header: Mapping[str, Any], config: TokensConfig) -> VerifiedToken:
    key = signing_keys.KEY_RING.verification_key(_kid(header))
    if key is None:
        raise TokenError("unknown_kid", "The token was signed with a key this gateway does not know.")
    claims = decode_verified(token, header, key.verifier, algorithms=(key.algorithm,), issuer=config.issuer,
                             audience=config.audience, required=OWN_REQUIRED, leeway=config.leeway_seconds)
    _role(claims, "role")
    subject = claims["sub"]
    key_holder = active_principal(subject) if isinstance(subject, str) else None
    if key_holder is None:
        raise TokenError("key_inactive", "The API key this token was issued to is revoked, expired or unknown.")
    # The key's own role, tenant and limits (the claims are a copy of them, for other services to read).
    return VerifiedToken(key_holder, float(claims["exp"]))


def _subject_id(subject: Any) -> str:
    """The principal's key_id for an external subject: `oidc:<sub>`, or a digest of a long or odd one
    (it becomes a job owner and a rate-limit bucket, so two subjects must never share one)."""
    if not isinstance(subject, str) or not subject:
        raise TokenError("invalid_claim", "The sub claim must be a string.")
    if len(subject) <= MAX_SUBJECT_CHARS and NAME.fullmatch(subject):
        return f"oidc:{subject}"
    return f"oidc:sha256:{hashlib.sha256(subject.encode()).hexdigest()[:48]}"


def _verify_external(token: str, header: Mapping[str, Any], config: TokensConfig) -> VerifiedToken:
    assert config.oidc_issuer and config.oidc_audience and config.oidc_jwks_url
    if header.get("alg") not in config.oidc_algorithms:  # before any fetch: `none` costs nothing
        raise TokenError("algorithm_not_allowed",
                         f"Tokens of this issuer must be signed with {', '.join(config.oidc_algorithms)}.")
    key = provider_keys(config.oidc_jwks_url).key(_kid(header))
    claims = decode_verified(token, header, key, algorithms=config.oidc_algorithms, issuer=config.oidc_issuer,
                             audience=config.oidc_audience, required=EXTERNAL_REQUIRED,
                             leeway=config.leeway_seconds)
    tenant = _claim(claims, config.oidc_tenant_claim)
    if tenant is None:
        if config.oidc_default_tenant is None:
            raise TokenError("missing_claim", f"The token lacks the {config.oidc_tenant_claim} claim.")
        tenant = config.oidc_default_tenant
    role = _role(claims, config.oidc_role_claim)
    if role == PLATFORM_ADMIN:
        # Platform administration (tenants, every tenant's keys) stays with Cortex's own keys: a provider's
        # role claim is often editable by the tenant's own administrators.
        raise TokenError("role_not_allowed", "An external token cannot carry the platform_admin role.")
    principal = Principal(_subject_id(claims["sub"]), role, config.oidc_tier,
                          _tenant(tenant, config.oidc_tenant_claim), _names(claims, config.oidc_models_claim),
                          _names(claims, config.oidc_tasks_claim))
    return VerifiedToken(principal, float(claims["exp"]))


class ProviderKeys:
    """The identity provider's public keys, fetched from its JWKS URL by PyJWKClient, which caches the set
    and refetches for an unknown kid at most once per cooldown (see TokensConfig)."""

    def __init__(self, url: str, cache_seconds: float = TokensConfig.jwks_cache_seconds,
                 min_refetch_seconds: float = TokensConfig.jwks_min_refetch_seconds) -> None:
        self.url = url
        self._client = PyJWKClient(url, cache_jwk_set=True, lifespan=cache_seconds, timeout=5,
                                   cooldown_duration=min_refetch_seconds)

    def key(self, kid: str) -> PyJWK:
        try:
            return self._client.get_signing_key(kid)
        except PyJWKClientConnectionError as exc:
            raise IdentityProviderUnavailable(f"The identity provider's keys could not be fetched: {exc}") from None
        except (PyJWKClientError, PyJWKError):
            # An unknown kid, or a key set with no usable key for it.
            raise TokenError("unknown_kid", "The token was signed with a key the identity provider does not "
                                            "publish.") from None


_providers: dict[str, ProviderKeys] = {}
_providers_lock = threading.Lock()


def provider_keys(url: str) -> ProviderKeys:
    """One key cache per JWKS URL for the whole process."""
    with _providers_lock:
        if url not in _providers:
            _providers[url] = ProviderKeys(url)
        return _providers[url]
