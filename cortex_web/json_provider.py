"""Flask's JSON responses through orjson: prediction responses are mostly floats (a 384-d embedding per
input), which orjson formats several times faster than the json module, on the gateway's hot path.

Only responses change: `dumps`/`loads` stay the json module's, so anything else that encodes through the
app (the test client, for one) keeps the standard behaviour. Text orjson cannot encode (a lone surrogate
a client sent and a response echoes) falls back to the json module rather than failing the request.
"""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider


class OrjsonProvider(DefaultJSONProvider):
    sort_keys = False

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = orjson.dumps(obj, default=self.default, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            return super().response(*args, **kwargs)
        return self._app.response_class(body, mimetype=self.mimetype)
