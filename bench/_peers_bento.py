"""The BentoML peer of `python -m bench peers`: the same model behind BentoML's adaptive batching,
written as BentoML's documentation writes a batchable service and started the usual way:

    bentoml serve bench._peers_bento:Embedder

POST /predict takes {"inputs": [texts]} and answers the list of vectors. Requests are merged into
batches of up to MAX_BATCH_SIZE texts along the list; BentoML adapts the wait to the arrival rate
within MAX_LATENCY_MS (past it a request is refused with 503, so it is set well above any p99 here).
"""
from __future__ import annotations

import bentoml

from bench._peers_model import embed, load_model

MAX_BATCH_SIZE = 64
MAX_LATENCY_MS = 10_000


@bentoml.service(workers=1, traffic={"timeout": 60})
class Embedder:
    def __init__(self) -> None:
        self.model = load_model()

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, inputs: list[str]) -> list[list[float]]:
        return embed(self.model, inputs)
