"""Cortex spread over "hosts" (docs/scaling.md): a gateway, a training worker and two gpu workers, each a
process with a data folder, model caches and HF_HOME of its own, sharing only the broker and Redis, the
PostgreSQL database and an S3 server for artifacts. Work spreads over both gpu workers; a classifier that
the training worker trained and registered (its artifact in S3) is served by both; SIGKILLing one gpu
worker loses no job.

It runs twice: with the Redis broker and with RabbitMQ (CORTEX_BROKER_URL). The cluster uses a Redis
database of its own (and a RabbitMQ virtual host of the session's own), so that the session's workers never
take its messages. With Redis its visibility timeout is shortened to 20 s (shipped: hours,
tests/unit/test_celery_config.py) so that the message the killed worker held comes back within the test;
RabbitMQ gives it back when the dead worker's connection drops.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
import redis
import requests

from cortex_tasks.core.worker_records import READY_KEY_PREFIX
from cortex_tasks.stack.embedded import free_port
from tests.support.processes import REPO_ROOT, WorkerProcess
from tests.support.s3_server import running_s3_server
from tests.support.tenants import new_tenant, tenant_keys
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

TOPICS = REPO_ROOT / "cortex_tasks" / "runtime" / "data" / "topics.jsonl"
SENTENCES = {
    "sports": "The goalkeeper saved a penalty in the last minute of the cup final.",
    "politics": "Parliament passed the budget bill after a long debate between the parties.",
    "health": "Doctors recommend regular exercise and a balanced diet to lower blood pressure.",
}


def topic_rows(per_label: int = 24) -> list[dict]:
    picked: dict[str, list[dict]] = {label: [] for label in SENTENCES}
    for line in TOPICS.read_text().splitlines():
        row = json.loads(line)
        first = row["labels"][0]
        if first in picked and len(picked[first]) < per_label and len(row["labels"]) == 1:
            picked[first].append({"text": row["text"], "label": first})
    return [row for rows in picked.values() for row in rows]


class Host:
    """One machine's share: its own data folder (artifact and model caches), HF_HOME and logs."""

    def __init__(self, root: Path, name: str, shared_env: dict[str, str]) -> None:
        self.name, self.folder = name, root / name
        (self.folder / "hf").mkdir(parents=True)
        self.env = {**shared_env, "CORTEX_DATA_DIR": str(self.folder / "data"), "HF_HOME": str(self.folder / "hf"),
                    "CORTEX_ARTIFACT_DIR": str(self.folder / "data" / "artifacts")}
        self.worker: WorkerProcess | None = None

    def start_worker(self, queues: str, pool: str, concurrency: int) -> WorkerProcess:
        self.worker = WorkerProcess(queues, pool=pool, concurrency=concurrency, name=self.name, env=self.env,
                                    log_dir=self.folder / "logs").start(wait_ready=False)
        return self.worker

    def served_messages(self) -> int:
        assert self.worker is not None
        return self.worker.log_tail(100_000).count("Task cortex.inference.run_gpu_jobs[")

    def cached_artifacts(self) -> set[str]:
        folder = self.folder / "data" / "artifact-cache"
        return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def _wait_ready(client: redis.Redis, worker: WorkerProcess, timeout: float = 600) -> None:
    def ready() -> bool:
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
        return bool(client.get(READY_KEY_PREFIX + worker.hostname))

    wait_for(ready, timeout, f"{worker.hostname} to be ready", interval=0.5)


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[dict]:
    broker_url = request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else ""
    root = tmp_path_factory.mktemp("hosts")
    redis_url = urlunparse(urlparse(os.environ["REDIS_URL"])._replace(path="/5"))
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with running_s3_server() as s3:
        shared = {
            "REDIS_URL": redis_url, "DATABASE_URL": os.environ["DATABASE_URL"], "CORTEX_BROKER_URL": broker_url,
            "MINIO_ENDPOINT": s3.endpoint, "MINIO_ACCESS_KEY": s3.access_key, "MINIO_SECRET_KEY": s3.secret_key,
            "MINIO_BUCKET": s3.new_bucket_name(), "HF_HUB_OFFLINE": "1",
            # Every host seals and opens sensitive values with the same keys (docs/scaling.md).
            "CORTEX_DATA_KEYS": (Path(os.environ["CORTEX_DATA_DIR"]) / "data-keys").read_text(),
            "CORTEX_VISIBILITY_TIMEOUT": "20", "CORTEX_UNACKED_RESTORE_INTERVAL": "1",
        }
        hosts = {name: Host(root, name, shared) for name in ("gateway", "trainer", "gpu-a", "gpu-b")}
        port = free_port()
        gateway_log = open(root / "gateway.log", "wb")
        gateway = subprocess.Popen(
            [sys.executable, "-c", "from cortex_tasks.cli import main; main(prog_name='cortex')", "web", "--bind", f"127.0.0.1:{port}", "--workers", "1",
             "--threads", "32"], env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **hosts["gateway"].env},
            cwd=REPO_ROOT, stdout=gateway_log, stderr=subprocess.STDOUT, start_new_session=True)
        workers = [hosts["trainer"].start_worker("training", "prefork", 1),
                   hosts["gpu-a"].start_worker("gpu", "threads", 2),
                   hosts["gpu-b"].start_worker("gpu", "threads", 2)]
        try:
            url = f"http://127.0.0.1:{port}"

            def gateway_up() -> bool:
                assert gateway.poll() is None, (root / "gateway.log").read_text()
                try:
                    return requests.get(f"{url}/health", timeout=2).status_code == 200
                except requests.RequestException:
                    return False

            wait_for(gateway_up, 120, "the gateway host")
            for worker in workers:
                _wait_ready(client, worker)
            keys = tenant_keys(new_tenant("hosts"))
            yield {"url": url, "hosts": hosts, "redis": client, "key": keys["model_admin"], "root": root}
        finally:
            for worker in workers:
                worker.stop()
            if gateway.poll() is None:
                os.killpg(gateway.pid, signal.SIGTERM)
                gateway.wait(60)
            gateway_log.close()
            client.flushdb()


def _call(cluster: dict, method: str, path: str, body: dict | None = None) -> requests.Response:
    return requests.request(method, cluster["url"] + path, json=body, timeout=120,
                            headers={"Authorization": f"Bearer {cluster['key']}"})


def _train(cluster: dict) -> tuple[str, dict]:
    name = f"hosts-topics-{uuid.uuid4().hex[:6]}"
    submitted = _call(cluster, "POST", "/api/v1/training/submit", {
        "kind": "classifier", "model": name, "dataset": {"rows": topic_rows()},
        "params": {"epochs": 40, "learning_rate": 0.05}})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]

    def done() -> dict | None:
        body = _call(cluster, "GET", f"/api/v1/training/status/{job_id}").json()
        assert body["status"] not in ("failed", "cancelled"), body
        return body if body["status"] == "succeeded" else None

    wait_for(done, 300, "the training host to train and register the model", interval=0.5)
    version = _call(cluster, "GET", f"/api/v1/models/{name}/versions/1").json()
    return name, version


def _predict(cluster: dict, model: str, wait: float) -> requests.Response:
    # Distinct inputs every time: no answer comes from the cache, each one is a model call on a gpu host.
    tag = uuid.uuid4().hex[:8]
    return _call(cluster, "POST", "/api/v1/predict", {
        "task": "classify", "model": model, "wait": wait,
        "inputs": [f"{sentence} ({tag})" for sentence in SENTENCES.values()]})


def _labels(outputs: list[dict]) -> list[str]:
    return [output["label"] for output in outputs]


def test_work_spreads_over_both_gpu_hosts_and_both_serve_the_trained_model(cluster):
    hosts = cluster["hosts"]
    name, version = _train(cluster)
    # The training host put the artifact in the shared S3 store, not on its own disk.
    assert version["artifact"]["uri"].startswith("s3://"), version
    model = f"{name}@1"
    rounds = 0
    with ThreadPoolExecutor(8) as pool:
        while rounds < 10 and not all(hosts[h].served_messages() and hosts[h].cached_artifacts()
                                      for h in ("gpu-a", "gpu-b")):
            answers = list(pool.map(lambda _: _predict(cluster, model, 30), range(16)))
            for answer in answers:
                assert answer.status_code == 200, answer.text
                assert _labels(answer.json()["outputs"]) == list(SENTENCES), answer.json()
            rounds += 1
    for host in ("gpu-a", "gpu-b"):
        assert hosts[host].served_messages() > 0, f"{host} served nothing in {rounds} rounds"
        # Each gpu host fetched the trained model from S3 into its own cache, verified by its digest.
        assert version["artifact"]["sha256"] in hosts[host].cached_artifacts(), host
    assert not hosts["gateway"].cached_artifacts()  # the gateway never loads a model


def test_killing_a_gpu_host_loses_no_job(cluster):
    hosts = cluster["hosts"]
    name, _ = _train(cluster)
    model = f"{name}@1"
    assert _predict(cluster, model, 30).status_code == 200  # both hosts may now hold the model
    doomed, survivor = hosts["gpu-b"], hosts["gpu-a"]
    served_before = doomed.served_messages()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _predict(cluster, model, 0), range(40)))
    job_ids = [answer.json()["job_id"] for answer in answers]
    assert all(answer.status_code == 202 for answer in answers), [a.text for a in answers]
    wait_for(lambda: doomed.served_messages() > served_before, 120, "the doomed host to take work")
    assert doomed.worker is not None
    doomed.worker.kill(signal.SIGKILL)
    # Redis: messages taken and not acknowledged, the dead host's among them (RabbitMQ keeps no such list).
    held = cluster["redis"].hlen("unacked")

    def all_finished() -> list[dict] | None:
        jobs = [_call(cluster, "GET", f"/api/v1/jobs/{job_id}").json() for job_id in job_ids]
        return jobs if all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs) else None

    jobs = wait_for(all_finished, 240, f"every job to finish on the surviving host ({held} were unacknowledged)",
                    interval=1)
    assert [job["status"] for job in jobs] == ["succeeded"] * len(jobs), [j for j in jobs if j["status"] != "succeeded"]
    assert all(_labels(job["result"]["outputs"]) == list(SENTENCES) for job in jobs)
    assert survivor.worker is not None and survivor.worker.process.poll() is None
