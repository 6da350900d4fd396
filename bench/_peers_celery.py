"""The plain Celery peer of `python -m bench peers`: what a Celery user writes without Cortex.

A Flask app that sends one Celery task per request and waits for its result, and a Celery app whose
prefork children hold the same bundled all-MiniLM-L6-v2 Cortex serves. Started the usual way:

    gunicorn -k gthread --threads 64 bench._peers_celery:web
    celery -A bench._peers_celery worker -P prefork -c 2 -Q peers

Both read the broker (and result backend) from PEERS_REDIS_URL, else REDIS_URL. Nothing here imports
Cortex: the peer must not borrow its batching, its encode or its reply path.
"""
from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init
from flask import Flask, jsonify, request

from bench._peers_model import embed as embed_texts
from bench._peers_model import load_model

QUEUE = "peers"
EMBED = "peers.embed"
NOOP = "peers.noop"
REPLY_TIMEOUT_SECONDS = 30


def _redis_url() -> str:
    return os.environ.get("PEERS_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


celery_app = Celery("peers", broker=_redis_url(), backend=_redis_url(), set_as_current=False)
celery_app.conf.update(task_default_queue=QUEUE, task_serializer="json", result_serializer="json",
                       accept_content=["json"], result_expires=600)

_model = None


@worker_process_init.connect
def _load_in_child(**_: object) -> None:
    # Each prefork child loads its own copy after the fork (torch's thread pools do not survive a fork)
    # with one torch thread: two children on two cores, the in-process baseline's best layout.
    import torch

    global _model
    torch.set_num_threads(1)
    _model = load_model()


def _loaded():
    global _model
    if _model is None:  # an eager call (tests) or a solo pool: no prefork child was started
        _model = load_model()
    return _model


@celery_app.task(name=EMBED, shared=False)  # shared tasks join every app made in the process (Cortex's too)
def embed(texts: list[str]) -> list[list[float]]:
    return embed_texts(_loaded(), texts)


@celery_app.task(name=NOOP, shared=False)
def noop() -> None:
    return None


web = Flask("peers")


@web.post("/predict")
def predict():
    body = request.get_json(silent=True) or {}
    texts = body.get("inputs")
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        return jsonify(error="inputs must be a non-empty list of strings"), 400
    return jsonify(outputs=embed.delay(texts).get(timeout=REPLY_TIMEOUT_SECONDS))


@web.post("/noop")
def noop_route():
    # The same round trip with a task that returns at once: what Celery itself costs per request.
    return jsonify(outputs=noop.delay().get(timeout=REPLY_TIMEOUT_SECONDS))
