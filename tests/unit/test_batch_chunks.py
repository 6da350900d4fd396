"""A batch chunk's model calls go through the model's dynamic batcher (the one /predict uses), on a
stand-in model: chunks share calls with each other and with predictions, a bad item fails alone, a model
failure retries the chunk whole while retries are left, and a per-job model sees the chunk as one value."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from cortex_tasks.core.errors import ItemError
from cortex_tasks.runtime.batch import chunks
from cortex_tasks.runtime.inference import runner
from cortex_tasks.runtime.inference.batcher import DynamicBatcher


@dataclass
class Entry:
    batchable: bool = True


class Model:
    def __init__(self, delay: float = 0.0, bad: str | None = None, broken: bool = False) -> None:
        self.calls: list[list[Any]] = []
        self.delay, self.bad, self.broken = delay, bad, broken

    def __call__(self, values: list[Any]) -> list[Any]:
        self.calls.append(list(values))
        time.sleep(self.delay)
        if self.broken:
            raise RuntimeError("CUDA out of memory")
        if any(value == self.bad or (isinstance(value, list) and self.bad in value) for value in values):
            raise ItemError("bad_item", "this item cannot be processed")
        return [[v.upper() for v in value] if isinstance(value, list) else value.upper() for value in values]


def serve(monkeypatch: pytest.MonkeyPatch, model: Model, entry: Entry | None = None) -> DynamicBatcher:
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait=0)
    monkeypatch.setattr(chunks, "find_model", lambda _name: entry or Entry())
    monkeypatch.setattr(runner, "batcher_for", lambda _task, _model, _params: batcher)
    return batcher


def chunk(inputs: list[Any], start_index: int = 0, priority: int = 8) -> chunks.ClaimedChunk:
    return chunks.ClaimedChunk("job", start_index // 100, start_index, inputs, 1, "embed", "stand-in", {},
                               "batch", priority, 100)


def test_concurrent_chunks_and_a_prediction_share_the_models_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Model()
    gate = threading.Event()
    batcher = serve(monkeypatch, model)
    original = model.__call__

    def held_first_call(values: list[Any]) -> list[Any]:
        if values == ["busy"]:
            gate.wait(5)  # the model stays busy until every item below is waiting
        return original(values)

    batcher.run_batch = held_first_call
    results: dict[int, chunks.ChunkResult] = {}
    blocker = threading.Thread(target=batcher.submit, args=(["busy"],))
    blocker.start()
    threads = [threading.Thread(target=lambda i=i: results.update({i: chunks.infer(
        chunk([f"c{i}-{n}" for n in range(5)], start_index=100 * i), whole_chunk_allowed=True)}))
        for i in range(3)]
    for thread in threads:
        thread.start()
    predicted: list[Any] = []
    predictor = threading.Thread(target=lambda: predicted.extend(batcher.submit(["predicted"], priority=0)))
    predictor.start()
    deadline = time.monotonic() + 5
    while len(batcher._heap) < 16 and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for thread in [blocker, predictor, *threads]:
        thread.join()
    assert predicted == ["PREDICTED"]
    for i in range(3):
        assert results[i].outputs == [f"C{i}-{n}" for n in range(5)] and results[i].errors == {}
    # The prediction (priority 0) leads the next call and keeps it to max_batch_size; the chunks' items
    # (priority 8) then share calls larger than it, several chunks in one.
    assert len(model.calls) == 3 and model.calls[1][0] == "predicted" and len(model.calls[1]) == 4
    assert len(model.calls[2]) == 12
    every_chunk_item = sorted(f"c{i}-{n}" for i in range(3) for n in range(5))
    assert sorted(model.calls[1][1:] + model.calls[2]) == every_chunk_item


def test_a_bad_item_fails_alone_without_retrying_the_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Model(bad="poison")
    serve(monkeypatch, model)
    result = chunks.infer(chunk(["good", "poison", "\x07", "fine"], start_index=200),
                          whole_chunk_allowed=True)
    assert result.outputs == ["GOOD", None, None, "FINE"]
    assert result.errors[201]["code"] == "bad_item"
    assert result.errors[202]["code"] == "invalid_input"  # refused before the model, as /predict would
    assert ["\x07"] not in model.calls and all("\x07" not in call for call in model.calls)


def test_a_model_failure_retries_the_chunk_whole_then_fails_item_by_item(
        monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, Model(broken=True))
    with pytest.raises(chunks.ChunkModelFailure, match="CUDA out of memory"):
        chunks.infer(chunk(["a", "b"]), whole_chunk_allowed=True)
    result = chunks.infer(chunk(["a", "b"], start_index=100), whole_chunk_allowed=False)
    assert result.outputs == [None, None]
    assert {index: error["code"] for index, error in result.errors.items()} == {100: "model_error",
                                                                              101: "model_error"}


def test_a_per_job_model_sees_the_chunk_as_one_value_and_a_bad_item_still_fails_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = Model()
    serve(monkeypatch, model, Entry(batchable=False))
    assert chunks.infer(chunk(["a", "b"]), whole_chunk_allowed=True).outputs == ["A", "B"]
    assert model.calls == [[["a", "b"]]]

    model.bad = "poison"
    result = chunks.infer(chunk(["a", "poison", "c"]), whole_chunk_allowed=True)
    assert result.outputs == ["A", None, "C"] and result.errors[1]["code"] == "bad_item"


def test_a_chunk_of_a_removed_model_fails_every_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "find_model", lambda _name: None)
    result = chunks.infer(chunk(["a", "b"]), whole_chunk_allowed=True)
    assert result.outputs == [None, None] and {e["code"] for e in result.errors.values()} == {"unknown_model"}


def test_a_lost_connection_retries_the_task_instead_of_failing_items(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(values: list[Any]) -> list[Any]:
        raise ConnectionError("database unreachable")

    batcher = DynamicBatcher(unreachable, max_batch_size=4, max_wait=0)
    monkeypatch.setattr(chunks, "find_model", lambda _name: Entry())
    monkeypatch.setattr(runner, "batcher_for", lambda _task, _model, _params: batcher)
    with pytest.raises(ConnectionError):  # Celery's autoretry_for (TRANSIENT_ERRORS) takes it from here
        chunks.infer(chunk(["a", "b"]), whole_chunk_allowed=False)
