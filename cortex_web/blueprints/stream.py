"""POST /api/v1/predict/stream: Server-Sent Events, one event per output item (or per generated token
for `generate`), then a final `done` event with the job summary. A client that disconnects stops the
work (cortex_web/prediction_streams.py)."""
from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from typing import Any

from flask import Blueprint, Response, stream_with_context

from cortex_tasks.core.auth.roles import PREDICT
from cortex_web.auth import in_request_tenant, require
from cortex_web.limits import limit_prediction
from cortex_web.prediction_streams import StreamEvent, item_events, token_events
from cortex_web.predictions import parse_prediction

bp = Blueprint("stream", __name__, url_prefix="/api/v1")


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _events_response(events: Generator[StreamEvent, None, None]) -> Response:
    def written() -> Iterator[str]:
        try:
            for event, data in events:
                yield sse(event, data)
        finally:
            events.close()  # a client that went away stops the work behind the events

    return Response(stream_with_context(in_request_tenant(written())), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.post("/predict/stream")
@require(PREDICT)
@limit_prediction
def predict_stream() -> Response:
    """Stream a prediction as Server-Sent Events (tokens for `generate`, items otherwise)."""
    body, task, model, _ = parse_prediction()
    if task.name == "generate":
        return _events_response(token_events(model.name, body.inputs, body.params, body.priority,
                                             body.sensitive))
    return _events_response(item_events(task, model, body.inputs, body.params, body.priority, body.sensitive))
