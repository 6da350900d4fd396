"""A real Prometheus server for integration tests: compose/prometheus.yml with its service names replaced by
the local addresses of the test stack, scraping every second."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from cortex_tasks.stack.embedded import free_port
from tests.support.processes import REPO_ROOT
from tests.support.prometheus_binaries import prometheus_binaries

COMPOSE_DIR = REPO_ROOT / "compose"


def local_config(targets: dict[str, str]) -> dict[str, Any]:
    """compose/prometheus.yml with each job's targets replaced by `targets` ({job name: host:port}); the
    jobs not given (a worker kind the test does not run, Prometheus itself) are left out."""
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job = {key: value for key, value in job.items() if not key.endswith("_sd_configs")}
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            jobs.append(job)
    config["scrape_configs"] = jobs
    return config


class PrometheusServer:
    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(COMPOSE_DIR / "alerts.yml", folder / "alerts.yml")  # rule_files are relative to the config
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        binaries = prometheus_binaries()
        self.log = open(self.folder / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [binaries.prometheus, f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises AssertionError with Prometheus's error otherwise."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as refused:
            body = json.load(refused)
        assert body.get("status") == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        return self.api("query", query=expression)["result"]

    def wait_for(self, expression: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The result of `expression` once it is not empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expression)
            if result:
                return result
            time.sleep(0.5)
        targets = self.api("targets")["activeTargets"]
        raise AssertionError(f"no result for {expression} after {timeout}s; targets: "
                             f"{[(t['labels'].get('job'), t['health'], t.get('lastError')) for t in targets]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "log", None):
            self.log.close()
