"""Keeping secrets out of log lines: query parameters that carry credentials, and Cortex API keys
wherever they appear.

The gateway reads keys only from the Authorization and X-API-Key headers, but clients still send
`?api_key=ctx_...` (a habit from other APIs), and gunicorn's access log writes the request line as it
came, query string included. What is redacted keeps its name and, for a Cortex key, its id (which is not
secret and tells an operator whose key it was).
"""
from __future__ import annotations

import re
from urllib.parse import unquote_plus

REDACTED = "[redacted]"
# Query parameter names (compared lower-case, with - and _ alike) whose values are credentials.
SECRET_PARAMETERS = frozenset({
    "api_key", "apikey", "key", "token", "access_token", "refresh_token", "id_token", "auth", "authorization",
    "password", "passwd", "secret", "client_secret", "x_api_key", "signature", "sig",
})
# ctx_<12 hex id>_<secret> (cortex_tasks.core.auth.keys), also percent-encoded or in a path.
API_KEY = re.compile(r"\b(ctx_[0-9a-f]{12}_)[A-Za-z0-9_\-]+")
# Headers that carry credentials, as gunicorn names their access-log atoms.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie", "set-cookie"})


def _secret_name(name: str) -> bool:
    return unquote_plus(name).strip().lower().replace("-", "_") in SECRET_PARAMETERS


def redact_query(query: str) -> str:
    """The query string with the values of credential parameters replaced."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, sep, _value = part.partition("=")
        parts.append(f"{name}={REDACTED}" if sep and _secret_name(name) else part)
    return redact_keys("&".join(parts))


def redact_target(target: str) -> str:
    """A request target (path?query) with its query redacted and any key in the path too."""
    path, sep, query = target.partition("?")
    return redact_keys(path) + (sep + redact_query(query) if sep else "")


def redact_keys(text: str) -> str:
    """Any Cortex API key in `text` reduced to its id."""
    return API_KEY.sub(lambda match: match.group(1) + REDACTED, text)
