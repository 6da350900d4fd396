"""A worker's metrics without a worker: the task signals' observations, the batcher's call sizes, the
endpoint's port and registry, the metrics files of prefork processes, and the machine's use with and
without a GPU (this machine has none: the NVIDIA library is installed and finds no driver; its readings
are mapped from a stand-in of the library's answers)."""
from __future__ import annotations

import os
import socket
import time
import types
import urllib.request
from datetime import UTC
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.jobs.store import JOBS_FINISHED, _count_finished
from cortex_tasks.runtime.inference.batcher import DynamicBatcher
from cortex_tasks.runtime.metrics import exporter, instruments
from cortex_tasks.runtime.metrics.resources import Nvml, ResourceCollector
from workers import PROFILES
from workers.profile import MULTIPROC_DIR_VARIABLE, PORT_VARIABLE


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Request:
    """What Celery's task request context carries that the signals read."""

    def __init__(self, queue: str = "gpu", enqueued_at: float | None = None, eta: str | None = None) -> None:
        self.delivery_info = {"routing_key": queue}
        self.eta = eta
        if enqueued_at is not None:
            self.enqueued_at = enqueued_at


def task(name: str, request: Request) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name, request=request)


def test_a_task_is_timed_and_its_queue_wait_observed_once():
    name = "cortex.test.timed_task"
    running = task(name, Request(enqueued_at=time.time() - 2.0))
    instruments.task_started(running)
    time.sleep(0.02)
    instruments.task_finished(running)
    instruments.task_finished(running)  # a second postrun (none in Celery) observes nothing more
    assert sample("cortex_task_duration_seconds_count", task=name, queue="gpu") == 1
    assert 0.02 <= sample("cortex_task_duration_seconds_sum", task=name, queue="gpu") < 5
    assert sample("cortex_task_queue_wait_seconds_count", task=name, queue="gpu") == 1
    assert 2.0 <= sample("cortex_task_queue_wait_seconds_sum", task=name, queue="gpu") < 10


def test_queue_wait_starts_at_an_eta_and_needs_the_publish_time():
    from datetime import datetime

    name = "cortex.test.delayed_task"
    eta = datetime.fromtimestamp(time.time() - 1.0, tz=UTC).isoformat()
    instruments.task_started(task(name, Request(queue="nlp", enqueued_at=time.time() - 60, eta=eta)))
    # From the ETA, not the publish time. The wait is measured on Redis's clock (core/redis_clock.py), known
    # to within half a round trip, hence the margin below a second.
    assert 0.9 <= sample("cortex_task_queue_wait_seconds_sum", task=name, queue="nlp") < 30
    # A message sent by something other than Cortex has no publish time: no wait is made up.
    instruments.task_started(task("cortex.test.foreign", Request(queue="nlp")))
    assert sample("cortex_task_queue_wait_seconds_count", task="cortex.test.foreign", queue="nlp") == 0


def test_failures_are_counted_by_stable_code():
    class SoftTimeLimitExceeded(Exception):
        pass

    failing = task("cortex.test.failing", Request(queue="training"))
    instruments.task_failed(failing, CortexError("model_not_found", "no such model"))
    instruments.task_failed(failing, SoftTimeLimitExceeded())
    instruments.task_failed(failing, KeyError("secret path /x"))
    for code in ("model_not_found", "time_limit_exceeded", "internal_error"):
        assert sample("cortex_task_failures_total", task="cortex.test.failing", queue="training", code=code) == 1


def test_finished_jobs_are_counted_by_status_and_code():
    before = {key: sample("cortex_jobs_finished_total", status=key[0], code=key[1])
              for key in (("succeeded", ""), ("failed", "invalid_input"), ("failed", "unknown"))}
    outcomes = {"a": ("succeeded", {"outputs": []}), "b": ("failed", {"code": "invalid_input"}),
                "c": ("failed", {"code": "invalid_input"}), "d": ("failed", "no dict"), "e": ("succeeded", {})}
    _count_finished(outcomes, {"a", "b", "c", "d"})  # e was not recorded (finished before): not counted
    assert JOBS_FINISHED is not None
    after = {key: sample("cortex_jobs_finished_total", status=key[0], code=key[1]) for key in before}
    assert {key: after[key] - before[key] for key in before} == {
        ("succeeded", ""): 1, ("failed", "invalid_input"): 2, ("failed", "unknown"): 1}


def test_the_batcher_reports_each_model_call_size_once():
    sizes: list[int] = []
    batcher = DynamicBatcher(lambda values: [v.upper() for v in values], max_batch_size=8, max_wait=0,
                             on_batch=sizes.append)
    assert batcher.submit(["a", "b", "c"]) == ["A", "B", "C"]
    assert sizes == [3]

    def bad(values):  # a failing batch is retried item by item: still one call of three reported
        if len(values) > 1:
            raise RuntimeError("batch refused")
        return values

    sizes.clear()
    DynamicBatcher(bad, max_batch_size=8, max_wait=0, on_batch=sizes.append).submit(["x", "y", "z"])
    assert sizes == [3]


def test_each_kind_has_its_port_found_by_node_name_or_queues():
    assert exporter.default_port("gpu@host", ["gpu", "batch"]) == 9101
    assert exporter.default_port("nlp@host", ["nlp"]) == 9102
    assert exporter.default_port("training@host", ["training"]) == 9103
    # `celery -A cortex_tasks worker -Q gpu` names its node celery@host: its queues say what it is.
    assert exporter.default_port("celery@host", ["gpu"]) == 9101
    assert exporter.default_port("celery@host", ["custom"]) == 0


def test_metrics_environment_of_threads_and_prefork_kinds(tmp_path):
    assert PROFILES["gpu"].metrics_environment({}) == {PORT_VARIABLE: "9101"}
    assert PROFILES["gpu"].metrics_environment({PORT_VARIABLE: "9500"}) == {PORT_VARIABLE: "9500"}
    folder = tmp_path / "nlp-metrics"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"old run")
    (folder / "keep.txt").write_text("not ours")
    env = PROFILES["nlp"].metrics_environment({}, folder)
    assert env == {PORT_VARIABLE: "9102", MULTIPROC_DIR_VARIABLE: str(folder)}
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]  # an earlier run's files only
    made = Path(PROFILES["training"].metrics_environment({})[MULTIPROC_DIR_VARIABLE])
    try:
        assert made.is_dir() and not any(made.iterdir()) and (made.stat().st_mode & 0o077) == 0
    finally:
        made.rmdir()


def test_dead_processes_live_gauges_are_dropped(tmp_path):
    alive, dead = os.getpid(), 2 ** 22 + 12345  # above Linux's pid_max: never a running process
    for name in (f"gauge_livesum_{alive}.db", f"gauge_livesum_{dead}.db", f"counter_{dead}.db"):
        (tmp_path / name).write_bytes(b"")
    exporter.forget_dead_processes(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{dead}.db", f"gauge_livesum_{alive}.db"]


def test_port_zero_is_off_and_a_taken_port_leaves_the_worker_running(caplog):
    assert exporter.start_exporter(0, "127.0.0.1", prefork=False) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert exporter.start_exporter(port, "127.0.0.1", prefork=False) is None
    assert "worker metrics endpoint not started" in caplog.text


def test_the_endpoint_serves_the_process_metrics_and_machine_use(monkeypatch):
    monkeypatch.delenv(MULTIPROC_DIR_VARIABLE, raising=False)
    registered = []
    monkeypatch.setattr(REGISTRY, "register", lambda collector: registered.append(collector))  # once per test
    port = exporter.start_exporter(free_port(), "127.0.0.1", prefork=False)
    assert port is not None
    assert isinstance(registered[0], ResourceCollector)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert "# TYPE cortex_task_duration_seconds histogram" in text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def collected(collector: ResourceCollector) -> dict[str, list]:
    return {family.name: [(s.labels, s.value) for s in family.samples] for family in collector.collect()}


def test_machine_use_without_a_gpu():
    """This machine: nvidia-ml-py is installed and finds no driver; torch has not initialised CUDA."""
    nvml = Nvml()
    assert nvml.devices() == [] and nvml.devices() == []  # tried once, then not again
    families = collected(ResourceCollector(nvml))
    resources = {labels["resource"]: value for labels, value in families["cortex_resource_utilization_ratio"]}
    assert set(resources) == {"cpu", "memory"}
    assert all(0.0 <= value <= 1.0 for value in resources.values())
    assert families["cortex_gpu_memory_bytes"] == []


class StandInNvml:
    """The answers of NVIDIA's library for two devices, as pynvml returns them."""

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=(handle + 1) * 4 * 2 ** 30, total=80 * 2 ** 30, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=(97, 12)[handle], memory=0)


def test_gpu_readings_become_ratios_and_bytes(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", StandInNvml())
    families = collected(ResourceCollector(Nvml()))
    ratios = {(labels["resource"], labels["device"]): value
              for labels, value in families["cortex_resource_utilization_ratio"]}
    assert ratios[("gpu", "0")] == pytest.approx(0.97) and ratios[("gpu", "1")] == pytest.approx(0.12)
    assert ratios[("gpu_memory", "0")] == pytest.approx(4 / 80) and ratios[("gpu_memory", "1")] == pytest.approx(8 / 80)
    memory = {(labels["device"], labels["state"]): value for labels, value in families["cortex_gpu_memory_bytes"]}
    assert memory[("1", "used")] == 8 * 2 ** 30 and memory[("0", "total")] == 80 * 2 ** 30
