"""OAuth2: access tokens for API keys (client credentials) and the public keys that verify them.

Both routes need no key: the token route is the login (rate-limited per client address, audited), and
the key set is public by nature (resource servers fetch it to verify Cortex's tokens themselves)."""
from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from cortex_tasks.core.auth.oauth import NO_STORE, client_credentials_grant
from cortex_tasks.core.auth.signing_keys import KEY_RING
from cortex_tasks.core.settings import get_settings
from cortex_web.audit import audited
from cortex_web.limits import limit_by_address

bp = Blueprint("oauth", __name__, url_prefix="/api/v1/oauth")
JWKS_MAX_AGE_SECONDS = 300  # a verifier refetches sooner anyway when it meets an unknown kid


@bp.post("/token")
@limit_by_address(lambda: get_settings().tokens.rate_tier)
@audited("token.issue")
def token() -> Response:
    """Issue an access token (OAuth2 client credentials: client id = key id, secret = the key's secret).

    Form-encoded `grant_type=client_credentials`; the client authenticates with HTTP Basic or the
    client_id and client_secret fields. Errors are OAuth2's `{"error", "error_description"}`."""
    issued = client_credentials_grant(request.form.to_dict(flat=False), request.content_type,
                                      request.headers.get("Authorization"))
    g.principal = issued.principal  # the audit record names the key that logged in
    response = jsonify({"access_token": issued.access_token, "token_type": "Bearer",
                        "expires_in": issued.expires_in})
    response.headers.update(NO_STORE)
    return response


@bp.get("/jwks.json")
def jwks() -> Response:
    """The public keys (JWKS) that verify Cortex's access tokens, by kid."""
    response = jsonify(KEY_RING.jwks())
    response.cache_control.public = True
    response.cache_control.max_age = JWKS_MAX_AGE_SECONDS
    return response
