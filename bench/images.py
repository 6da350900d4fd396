"""Image embedding throughput through POST /api/v1/predict (task image_embed) against the raw model.

Baseline (same run): EfficientNet-Lite0 in this process, decoding and preprocessing the same JPEGs and
embedding them BATCH_SIZE at a time (what the worker does per batch, without HTTP, staging or queues).
Figures: items/s of the raw model and of Cortex with 1 and 4 clients sending BATCH_SIZE images (base64 JSON)
per request, the ratio of each to the raw figure, p50/p99 request latency. Every image is new (random
noise over a drawn shape), so no answer comes from the cache.
"""
from __future__ import annotations

import base64
import io
import json
import random
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench._harness import api_key, gateway_and_worker, machine, percentiles, services

BATCH_SIZE = 16
CLIENTS = (1, 4)


def pictures(count: int, seed: int) -> list[bytes]:
    """Distinct 320x240 JPEGs: a shape in a random colour over random noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    made = []
    for _ in range(count):
        image = Image.fromarray(noise.integers(0, 256, (240, 320, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        x, y = rng.randrange(0, 200), rng.randrange(0, 120)
        draw.ellipse((x, y, x + 110, y + 110), fill=tuple(rng.randrange(256) for _ in range(3)))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        made.append(out.getvalue())
    return made


def raw_throughput(images: list[bytes]) -> dict[str, Any]:
    """The model alone: decode + preprocess + forward + normalise, BATCH_SIZE images per call."""
    import numpy as np

    from cortex_tasks.core.catalogue import MODELS
    from cortex_tasks.runtime.models.efficientnet import preprocess, shared_network

    network = shared_network(dict(MODELS["efficientnet-lite0"].card)["weights_sha256"])
    network.forward(np.stack([preprocess(images[0])]))  # warm-up
    started = time.perf_counter()
    for start in range(0, len(images), BATCH_SIZE):
        features, _ = network.forward(np.stack([preprocess(data) for data in images[start:start + BATCH_SIZE]]))
        features / np.linalg.norm(features, axis=1, keepdims=True)
    seconds = time.perf_counter() - started
    return {"batch_size": BATCH_SIZE, "items": len(images), "items_per_second": round(len(images) / seconds, 2)}


def through_cortex(url: str, key: str, images: list[bytes], clients: int) -> dict[str, Any]:
    bodies = [json.dumps({"task": "image_embed", "wait": 30,
                          "inputs": [{"image": base64.b64encode(data).decode()} for data in
                                     images[start:start + BATCH_SIZE]]}).encode()
              for start in range(0, len(images), BATCH_SIZE)]
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()

    def send(body: bytes) -> None:
        request = urllib.request.Request(f"{url}/api/v1/predict", data=body, method="POST", headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        began = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:  # nosec B310 - the bench's own URL
                answer.read()
                ok = answer.status == 200
        except OSError:
            ok = False
        with lock:
            (latencies.append((time.perf_counter() - began) * 1000) if ok else errors.append(1))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    seconds = time.perf_counter() - started
    return {"clients": clients, "items_per_request": BATCH_SIZE, "requests": len(latencies), "errors": len(errors),
            "items_per_second": round(len(latencies) * BATCH_SIZE / seconds, 2), **percentiles(latencies)}


def run(quick: bool) -> dict[str, Any]:
    per_scenario = 64 if quick else 512
    raw = raw_throughput(pictures(per_scenario, seed=1))
    results: dict[str, Any] = {"machine": machine(), "raw": raw}
    with services() as env:
        key = api_key()
        with gateway_and_worker(env) as url:
            through_cortex(url, key, pictures(BATCH_SIZE, seed=2), 1)  # the worker loads the model
            rows = []
            for index, clients in enumerate(CLIENTS):
                row = through_cortex(url, key, pictures(per_scenario, seed=10 + index), clients)
                row["ratio_to_raw"] = round(row["items_per_second"] / raw["items_per_second"], 3)
                rows.append(row)
    results["cortex"] = rows
    for row in rows:
        print(f"image_embed x{row['clients']} clients, {BATCH_SIZE}/request: {row['items_per_second']} items/s "
              f"({row['ratio_to_raw']:.0%} of the raw model's {raw['items_per_second']}), p50 {row['p50_ms']} ms, "
              f"errors {row['errors']}")
    return results
