"""A real Prometheus (the Debian package) scraping a running stack: the gateway and the session's gpu
(threads) and cpu (prefork, multiprocess metrics files) workers, with compose/prometheus.yml's jobs and
compose/alerts.yml's rules. After a prediction on each worker, the series the alerts and the dashboard
read are queried through Prometheus's HTTP API; then every query of the Grafana dashboard is run
against it and every metric it names is checked against what the stack exports."""
from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.support.prometheus_server import COMPOSE_DIR, PrometheusServer, local_config
from tests.support.serving import served

DASHBOARD = COMPOSE_DIR / "grafana" / "dashboards" / "cortex.json"
GPU_TASK, NLP_TASK = "cortex.inference.run_gpu_jobs", "cortex.inference.run_nlp_jobs"
# What a sample name may add to its family's name, by type (the exposition format).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "untyped": ("",), "info": ("_info",),
            "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "unknown": ("",)}


def metrics_port(worker) -> str:
    return worker.env["CORTEX_WORKER_METRICS_PORT"]


@pytest.fixture(scope="module")
def gateway_url(app) -> Iterator[str]:
    with served(app) as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(workers, gateway_url, tmp_path_factory) -> Iterator[PrometheusServer]:
    config = local_config({
        "cortex-gateway": gateway_url.removeprefix("http://"),
        "cortex-worker-gpu": f"127.0.0.1:{metrics_port(workers['gpu'])}",
        # The session's prefork worker serves the nlp worker's queues (and training's).
        "cortex-worker-nlp": f"127.0.0.1:{metrics_port(workers['cpu'])}",
    })
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), config).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def predictions(api_module) -> None:
    """One embed (gpu queue, batched) and one sentiment (nlp queue, prefork child); fresh inputs each run,
    so the gateway's cache cannot answer them."""
    api_module.predict("embed", [f"metrics probe {uuid.uuid4()}", f"second probe {uuid.uuid4()}"])
    api_module.predict("sentiment", [f"what a lovely probe {uuid.uuid4()}"])


@pytest.fixture(scope="module")
def api_module(app, keys):
    from tests.integration.conftest import Api

    return Api(app.test_client(), keys["inference_user"])


def value(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_every_target_is_scraped(prometheus):
    prometheus.wait_for('count(up{job=~"cortex-gateway|cortex-worker-gpu|cortex-worker-nlp"} == 1) == 3')
    targets = prometheus.api("targets")["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "cortex-gateway": "up", "cortex-worker-gpu": "up", "cortex-worker-nlp": "up"}


def test_task_latency_queue_wait_and_batch_size_of_predictions(prometheus, predictions):
    latency = prometheus.wait_for(
        f'cortex_task_duration_seconds_count{{job="cortex-worker-gpu", task="{GPU_TASK}", queue="gpu"}} > 0')
    assert value(latency) >= 1
    # The architecture's buckets, and the wider ones for long tasks.
    buckets = {series["metric"]["le"] for series in prometheus.query(
        f'cortex_task_duration_seconds_bucket{{job="cortex-worker-gpu", task="{GPU_TASK}"}}')}
    assert {"0.01", "0.05", "0.1", "0.5", "1.0", "3600.0", "+Inf"} <= buckets
    p95 = prometheus.query(f'histogram_quantile(0.95, sum by (le) (cortex_task_duration_seconds_bucket'
                           f'{{task="{GPU_TASK}"}}))')
    assert 0 < value(p95) < 3600
    assert value(prometheus.wait_for(
        f'cortex_task_queue_wait_seconds_count{{job="cortex-worker-gpu", task="{GPU_TASK}", queue="gpu"}} > 0')) >= 1
    # One observation per model call, of the items it held (the two inputs of one message: one call).
    batch = prometheus.wait_for('cortex_model_batch_size_count{job="cortex-worker-gpu", model="all-MiniLM-L6-v2"} > 0')
    assert value(batch) >= 1
    sizes = prometheus.query('sum(cortex_model_batch_size_sum{model="all-MiniLM-L6-v2"})')
    assert value(sizes) >= 2
    finished = prometheus.wait_for('sum(cortex_jobs_finished_total{job="cortex-worker-gpu", status="succeeded"}) > 0')
    assert value(finished) >= 1
    # The worker looked the items up in its own cache layer (the gateway had looked in the shared one).
    lookups = prometheus.wait_for('sum(cortex_cache_lookups_total{job="cortex-worker-gpu", layer="l1"}) > 0')
    assert value(lookups) >= 2


def test_prefork_children_metrics_reach_prometheus(prometheus, predictions):
    """The sentiment task ran in a pool child of the prefork worker; its parent answers the scrape."""
    result = prometheus.wait_for(
        f'cortex_task_duration_seconds_count{{job="cortex-worker-nlp", task="{NLP_TASK}", queue="nlp"}} > 0')
    assert value(result) >= 1
    loads = prometheus.wait_for('cortex_model_load_seconds_count{job="cortex-worker-nlp", model="vader"}')
    assert value(loads) >= 1  # each child loads its models once, before its first task


def test_queue_series_come_from_the_gateway_once(prometheus):
    depth = prometheus.wait_for('cortex_queue_depth{queue="gpu"}')
    assert [series["metric"]["job"] for series in depth] == ["cortex-gateway"]
    assert value(depth) >= 0
    assert prometheus.wait_for('cortex_queue_oldest_age_seconds{job="cortex-gateway", queue="nlp"}')
    # Each queue is consumed by one of the session's ready workers (batch by both).
    workers = {s["metric"]["queue"]: float(s["value"][1]) for s in prometheus.wait_for('cortex_queue_workers')}
    assert workers["gpu"] >= 1 and workers["nlp"] >= 1 and workers["batch"] >= 2


def test_machine_use_is_reported_by_each_worker(prometheus):
    cpu = prometheus.wait_for('cortex_resource_utilization_ratio{resource="cpu"}')
    assert {series["metric"]["job"] for series in cpu} == {"cortex-worker-gpu", "cortex-worker-nlp"}
    assert len(prometheus.query('cortex_resource_utilization_ratio{resource="memory"}')) == 2
    # Every ratio, the GPUs' included where there are any (none on a machine without one), is a share.
    for series in prometheus.query('cortex_resource_utilization_ratio'):
        assert 0.0 <= float(series["value"][1]) <= 1.0, series


def test_alert_rules_are_loaded_and_healthy(prometheus):
    prometheus.wait_for('up{job="cortex-gateway"}')
    groups = prometheus.api("rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert {"CortexSlowResponses", "CortexHighErrorRate", "CortexCacheMissRate", "CortexResourceUseHigh",
            "CortexInteractiveQueueBacklog", "CortexQueueWithoutWorker", "CortexWorkerDown"} <= set(rules)
    # Each rule has been evaluated against the live series (after the scrapes began: an evaluation before
    # the first scrape finds no `up` series and makes the absence alerts pending), without an error.
    scraping_since = datetime.now(UTC)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rules = {rule["name"]: rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]}
        if all(_evaluated_after(rule, scraping_since) for rule in rules.values()):
            break
        time.sleep(0.5)
    assert {name: rule["health"] for name, rule in rules.items()} == dict.fromkeys(rules, "ok")
    # A healthy stack with every queue served fires none of the worker alerts.
    firing = {alert["labels"]["alertname"] for alert in prometheus.api("alerts")["alerts"]}
    assert not firing & {"CortexWorkerDown", "CortexGatewayDown"}


def _evaluated_after(rule: dict, moment: datetime) -> bool:
    evaluated = rule.get("lastEvaluation", "")
    if evaluated.startswith("0001"):  # never
        return False
    # Prometheus writes nanoseconds; fromisoformat reads microseconds.
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", evaluated.replace("Z", "+00:00"))
    return datetime.fromisoformat(stamp) > moment


def exported_metric_names(urls: list[str]) -> set[str]:
    """Every sample name the stack's endpoints declare (from their `# TYPE` lines, so metrics with no
    sample yet count too)."""
    names: set[str] = set()
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE):
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
            if kind == "counter" and family.endswith("_total"):
                names.add(family)
    return names


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for row in dashboard["panels"] for panel in [row, *row.get("panels", [])]]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def runnable(expression: str) -> str:
    """A dashboard query as Prometheus runs it: Grafana's interval variables replaced."""
    return expression.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$__interval", "15s")


PROMQL_WORDS = {"sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg",
                "count", "topk", "bottomk", "clamp_min", "clamp_max", "le", "on", "ignoring", "group_left",
                "and", "or", "unless", "vector", "offset", "bool", "abs", "delta", "deriv", "time", "sort_desc",
                "label_replace", "avg_over_time", "max_over_time", "sum_over_time", "absent", "scalar"}


def named_metrics(expression: str) -> set[str]:
    """The metric names in a query: identifiers outside label matchers, strings and ranges that are not
    PromQL's own words."""
    stripped = re.sub(r'"[^"]*"', '""', expression)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?", "", stripped)
    return {word for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped)
            if word not in PROMQL_WORDS}


def test_dashboard_queries_run_and_name_only_exported_metrics(prometheus, predictions, workers, gateway_url):
    expressions = dashboard_expressions()
    assert len(expressions) >= 10
    exported = exported_metric_names([f"{gateway_url}/metrics",
                                      f"http://127.0.0.1:{metrics_port(workers['gpu'])}/metrics",
                                      f"http://127.0.0.1:{metrics_port(workers['cpu'])}/metrics"])
    exported.add("up")  # Prometheus's own, per target
    for title, expression in expressions:
        unknown = named_metrics(expression) - exported
        assert not unknown, f"panel {title!r} queries metrics Cortex does not export: {sorted(unknown)}"
        prometheus.query(runnable(expression))  # raises with Prometheus's parse or evaluation error


def test_named_metrics_reads_queries():
    """The metric-name reader the dashboard test relies on."""
    assert named_metrics('histogram_quantile(0.95, sum by (le) (rate(cortex_http_request_seconds_bucket'
                         '{route!~".*stream.*"}[5m])))') == {"cortex_http_request_seconds_bucket"}
    assert named_metrics('sum(rate(a_total{x="y"}[1m])) / clamp_min(sum(rate(b_total[1m])), 1e-9)') == {
        "a_total", "b_total"}
