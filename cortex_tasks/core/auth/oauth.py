"""The OAuth2 client credentials grant (RFC 6749 §4.4) behind POST /oauth/token: an API key logs in and
gets a short-lived access token (tokens.py).

The client id is the key's id (the 12 hex characters after `ctx_`) and the client secret the key's secret
(what follows `ctx_<id>_`); the whole key is accepted as the secret too, so a client can be given the key
as it was printed. They come with HTTP Basic (RFC 6749 §2.3.1: each form-urlencoded first, which leaves a
key's characters as they are) or as the form fields client_id and client_secret, never both.

Failures are OAuthErrors, answered in RFC 6749 §5.2's shape (`{"error", "error_description"}`) because
that is what OAuth2 client libraries read; an unknown, revoked or expired key is `invalid_client` (401).
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from urllib.parse import unquote_plus

from cortex_tasks.core.auth.keys import KEY_ID, PREFIX, verify_key
from cortex_tasks.core.auth.tokens import IssuedToken, issue_token
from cortex_tasks.core.errors import CortexError

GRANT_TYPE = "client_credentials"
FORM_TYPE = "application/x-www-form-urlencoded"
# RFC 6749 §5.1 and §5.2: token answers, and errors, must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(CortexError):
    """An RFC 6749 §5.2 error: `code` is the OAuth2 error (invalid_request, invalid_client, ...)."""

    def __init__(self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(error, description, status=status, headers={**NO_STORE, **(headers or {})})


def _invalid_client(description: str) -> OAuthError:
    # §5.2: a 401 for a failed client authentication names the scheme the client should use.
    return OAuthError("invalid_client", description, 401, {"WWW-Authenticate": 'Basic realm="cortex"'})


def _basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _invalid_client("Authenticate the client with HTTP Basic (client id and secret) or form fields.")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("The Basic credentials are not base64 of 'id:secret'.") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("The Basic credentials are not base64 of 'id:secret'.")
    return unquote_plus(client_id), unquote_plus(secret)


def _single(form: Mapping[str, list[str]]) -> dict[str, str]:
    repeated = sorted(name for name, values in form.items() if len(values) > 1)
    if repeated:  # §3.2: no parameter more than once
        raise OAuthError("invalid_request", f"Parameters sent more than once: {', '.join(repeated)}.")
    return {name: values[0] for name, values in form.items() if values}


def client_credentials_grant(form: Mapping[str, list[str]], content_type: str | None,
                             authorization: str | None) -> IssuedToken:
    """Check a token request (its form fields, Content-Type and Authorization header) and issue the token."""
    if (content_type or "").split(";")[0].strip().lower() != FORM_TYPE:
        raise OAuthError("invalid_request", f"Send the parameters as {FORM_TYPE}.")
    params = _single(form)
    grant_type = params.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is missing; it is client_credentials.")
    if grant_type != GRANT_TYPE:
        raise OAuthError("unsupported_grant_type", f"Only the {GRANT_TYPE} grant is supported.")
    if params.get("scope"):
        raise OAuthError("invalid_scope", "Scopes are not used: a token carries its key's role, models and tasks.")
    in_form = "client_id" in params or "client_secret" in params
    if authorization and in_form:
        raise OAuthError("invalid_request", "Authenticate the client one way: HTTP Basic or form fields.")
    if authorization:
        client_id, secret = _basic(authorization)
    elif params.get("client_id") and params.get("client_secret"):
        client_id, secret = params["client_id"], params["client_secret"]
    else:
        raise _invalid_client("Client authentication is missing: HTTP Basic or client_id and client_secret.")
    if not KEY_ID.fullmatch(client_id):
        raise _invalid_client("Unknown client, or a wrong secret.")
    full_key = f"{PREFIX}_{client_id}_"
    principal = verify_key(secret if secret.startswith(full_key) else full_key + secret)
    if principal is None:
        raise _invalid_client("Unknown client, or a wrong secret; or its key is revoked or expired.")
    return issue_token(principal)
