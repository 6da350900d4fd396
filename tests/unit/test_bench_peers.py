"""`python -m bench peers`: the runner lists it, and its peers' small apps take the load generator's
very request and answer one normalised vector per text (the speed itself is the benchmark's job)."""
from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest

from bench import peers
from bench.__main__ import benchmark_names, load, main
from bench._load import _bodies

TEXTS = ["The harbor station measures the winter budget.", "A violin crosses the meadow."]


def _load_generator_body(texts: list[str]) -> bytes:
    return next(_bodies(texts, len(texts), repeat=False))


def _assert_vectors(vectors, count: int) -> None:
    array = np.asarray(vectors, dtype=np.float32)
    assert array.shape == (count, 384)
    assert np.allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-4)
    if count > 1:
        assert not np.allclose(array[0], array[1])


def test_the_runner_lists_peers(capsys: pytest.CaptureFixture[str]) -> None:
    assert "peers" in benchmark_names()
    assert callable(load("peers").run)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "peers" in capsys.readouterr().out


@pytest.fixture()
def plain_celery_app():
    from bench import _peers_celery

    # Eager: the task runs in this process (the model loaded here), no broker needed for the shapes.
    _peers_celery.celery_app.conf.task_always_eager = True
    try:
        yield _peers_celery
    finally:
        _peers_celery.celery_app.conf.task_always_eager = False


def test_plain_celery_route_answers_the_load_generators_request(plain_celery_app) -> None:
    client = plain_celery_app.web.test_client()
    answer = client.post("/predict", data=_load_generator_body(TEXTS), content_type="application/json")
    assert answer.status_code == 200
    _assert_vectors(answer.get_json()["outputs"], len(TEXTS))
    one = client.post("/predict", data=_load_generator_body(TEXTS[:1]), content_type="application/json")
    assert np.allclose(one.get_json()["outputs"][0], answer.get_json()["outputs"][0], atol=1e-5)


def test_plain_celery_noop_route_round_trips(plain_celery_app) -> None:
    answer = plain_celery_app.web.test_client().post("/noop", data=_load_generator_body(TEXTS[:1]),
                                                     content_type="application/json")
    assert answer.status_code == 200
    assert answer.get_json() == {"outputs": None}


@pytest.mark.parametrize("body", [{}, {"inputs": "one text"}, {"inputs": []}, {"inputs": [3]}])
def test_plain_celery_route_refuses_what_is_not_a_list_of_texts(plain_celery_app, body) -> None:
    answer = plain_celery_app.web.test_client().post("/predict", json=body)
    assert answer.status_code == 400
    assert "inputs" in answer.get_json()["error"]


def test_plain_celery_processes_start_the_apps_this_module_defines() -> None:
    from flask import Flask

    from bench import _peers_celery

    web, worker = peers.plain_celery_commands(8000, "peers-8000@localhost")
    module, _, attribute = web[-1].partition(":")
    assert isinstance(getattr(importlib.import_module(module), attribute), Flask)
    assert web[web.index("-k") + 1] == "gthread"
    assert int(web[web.index("--threads") + 1]) >= max(peers.LEVELS)  # a thread per waiting client
    app = importlib.import_module(worker[worker.index("-A") + 1]).celery_app
    assert {_peers_celery.EMBED, _peers_celery.NOOP} <= set(app.tasks)
    assert worker[worker.index("-Q") + 1] == app.conf.task_default_queue
    assert (worker[worker.index("-P") + 1], worker[worker.index("-c") + 1]) == ("prefork", "2")


def _level(clients: int, rate: float) -> dict:
    return {"clients": clients, "requests": int(rate * 6), "errors": 0, "requests_per_second": rate,
            "ratio_to_limit": round(rate / 200.0, 3), "p50_ms": 1000 * clients / rate, "p99_ms": 3000 * clients / rate}


def _results() -> dict:
    def system(rates: tuple[float, ...]) -> dict:
        return {"levels": [_level(clients, rate) for clients, rate in zip(peers.LEVELS, rates)]}

    return {"machine": {"cores": 2}, "seconds_per_level": 6.0,
            "in_process": {"single_call": {"requests_per_second": 90.0, "p50_ms": 11.0, "p99_ms": 14.0},
                           "limit": {"items_per_second": 200.0, "best": "2x1t/b32"}},
            "celery": system((40.0, 60.0, 60.0)), "cortex": system((30.0, 80.0, 150.0)),
            "bentoml": {"skipped": "bentoml is not installed"},
            "celery_noop": {"clients": 1, "requests": 900, "errors": 0, "p50_ms": 6.0, "p99_ms": 9.0}}


def test_cortex_is_compared_with_each_peer_that_ran_at_each_level() -> None:
    versus = peers.compare(_results())
    assert versus["rate_ratio"] == {"1": {"celery": 0.75}, "16": {"celery": 1.33}, "64": {"celery": 2.5}}
    # 1 client: p50 = 1000 / 30 ms against the raw call's 11 ms and plain Celery's 1000 / 40 ms.
    assert versus["one_client_p50_above_raw_call_ms"] == pytest.approx(22.33, abs=0.01)
    assert versus["one_client_p50_minus_plain_celery_ms"] == pytest.approx(8.33, abs=0.01)


def test_the_table_has_a_row_per_system_and_says_why_one_was_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    results = _results()
    peers.print_table({**results, "cortex_vs_peers": peers.compare(results)})
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 1 + len(peers.SYSTEMS)  # header and rule, the in-process baseline, the systems
    assert "skipped: bentoml is not installed" in next(row for row in rows if "BentoML" in row)
    cortex = next(row for row in rows if row.startswith("| Cortex"))
    assert "150.0 (427 / 1280 ms) 0.75x" in cortex  # 64 clients: rate, p50 / p99, ratio to the limit
    assert "Cortex's req/s at 1 client: 0.75x celery" in out


def test_bentoml_service_answers_the_load_generators_request() -> None:
    bentoml = pytest.importorskip("bentoml")
    from starlette.testclient import TestClient

    from bench._peers_bento import Embedder

    assert isinstance(Embedder, bentoml.Service)
    assert Embedder.apis["predict"].batchable
    service_path = peers.bentoml_command(3000)[peers.bentoml_command(3000).index("serve") + 1]
    module, _, attribute = service_path.partition(":")
    assert getattr(importlib.import_module(module), attribute) is Embedder
    with TestClient(Embedder.to_asgi()) as client:
        answer = client.post("/predict", content=_load_generator_body(TEXTS),
                             headers={"Content-Type": "application/json"})
        assert answer.status_code == 200
        _assert_vectors(answer.json(), len(TEXTS))
        assert client.post("/predict", json={"inputs": "one text"}).status_code == 400
