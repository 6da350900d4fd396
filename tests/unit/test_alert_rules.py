"""compose/: the Prometheus configuration and alert rules pass promtool's checks and the rules' unit tests
(compose/alerts.test.yml makes every rule fire and not fire); every worker kind is scraped on its port;
Grafana's provisioning points at the shipped dashboard, whose JSON parses. The dashboard's queries are run
against a real Prometheus in tests/integration/test_prometheus.py."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.support.prometheus_binaries import prometheus_binaries
from workers import PROFILES

COMPOSE = Path(__file__).resolve().parents[2] / "compose"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([prometheus_binaries().promtool, *args], cwd=COMPOSE, capture_output=True, text=True,
                          timeout=120)


def test_prometheus_config_is_valid():
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_are_valid():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_fire_and_stay_quiet_as_their_unit_tests_say():
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_has_a_unit_test_severity_and_annotations():
    rules = [rule for group in yaml.safe_load((COMPOSE / "alerts.yml").read_text())["groups"]
             for rule in group["rules"]]
    tests = yaml.safe_load((COMPOSE / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case["exp_alerts"]}
    for rule in rules:
        assert rule["alert"] in fired and rule["alert"] in quiet, f"{rule['alert']} needs a firing and a quiet case"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    # The architecture's thresholds.
    expressions = {rule["alert"]: (rule["expr"], rule.get("for")) for rule in rules}
    assert "> 1" in expressions["CortexSlowResponses"][0] and "[5m]" in expressions["CortexSlowResponses"][0]
    assert "> 0.05" in expressions["CortexHighErrorRate"][0] and "[5m]" in expressions["CortexHighErrorRate"][0]
    assert "> 0.4" in expressions["CortexCacheMissRate"][0] and "[15m]" in expressions["CortexCacheMissRate"][0]
    assert expressions["CortexResourceUseHigh"] == ("cortex_resource_utilization_ratio > 0.8", "10m")


def test_every_worker_kind_and_the_gateway_are_scraped():
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    scraped = {(sd["names"][0], sd["port"]) for job in config["scrape_configs"]
               for sd in job.get("dns_sd_configs", [])}
    assert ("gateway", 8001) in scraped
    for profile in PROFILES.values():
        assert (f"worker-{profile.name}", profile.metrics_port) in scraped, profile.name
    ports = [profile.metrics_port for profile in PROFILES.values()]
    assert all(ports) and len(set(ports)) == len(ports)  # kinds sharing a machine never collide


def test_grafana_provisioning_and_dashboard():
    datasource = yaml.safe_load((COMPOSE / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/cortex.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((COMPOSE / "grafana/dashboards/cortex.json").read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
    text = json.dumps(dashboard)
    for wanted in ("cortex_http_requests_total", "cortex_http_request_seconds_bucket", "cortex_queue_depth",
                   "cortex_queue_oldest_age_seconds", "cortex_model_batch_size", "cortex_cache_items_total",
                   "cortex_model_version_errors_total", "cortex_openai_cost_usd_total",
                   "cortex_task_duration_seconds_bucket"):
        assert wanted in text, wanted
