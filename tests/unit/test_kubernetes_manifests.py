"""deploy/kubernetes: every object validates against the Kubernetes JSON schemas (strict: an unknown or
misspelt field fails) of the oldest and newest versions the `kubernetes-validate` package ships; the KEDA
ScaledObjects validate against KEDA's CRD schema (tests/data/schemas) and their redis triggers watch the
Redis lists that really hold each worker kind's messages, found by publishing through Cortex's own Celery
app; probes, commands, ports and selectors agree with the CLI, the worker profiles and each other.

No cluster is reachable here: `kubectl kustomize` (where kubectl is installed) renders the kustomization
offline, and nothing is applied."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from kubernetes_validate.utils import all_versions, latest_version

from cortex_tasks.cli import main as cli
from cortex_tasks.core.queues import PRIORITY_STEPS
from cortex_tasks.core.settings import SETTINGS_GROUPS, variable_names
from workers import PROFILES

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy/kubernetes"
KEDA_SCHEMA = yaml.safe_load((ROOT / "tests/data/schemas/keda-scaledobject-v1alpha1.yaml").read_text())
KUBERNETES_VERSIONS = sorted({min(all_versions(), key=lambda v: tuple(map(int, v.split(".")))), latest_version()})

WORKER_KINDS = ("gpu", "nlp", "training", "stream")
# The stream profile and its queue come with the streams work; until then its manifest is checked
# against what that profile declares (`cortex worker stream`: queue streams, metrics port 9104).
STREAM_PROFILE = {"queues": ("streams",), "metrics_port": 9104}
# KEDA's redis scaler's metadata (keda.sh docs, scalers/redis-lists) and TriggerAuthentication parameters.
REDIS_SCALER_METADATA = {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "listName",
                         "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
                         "usernameFromEnv", "passwordFromEnv"}
REDIS_AUTH_PARAMETERS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key"}


def load_objects() -> list[dict]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
    return [doc for name in listed for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


OBJECTS = load_objects()


def objects(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == kind}


def queues_of(kind: str) -> tuple[str, ...]:
    return PROFILES[kind].queues if kind in PROFILES else STREAM_PROFILE["queues"]


def metrics_port_of(kind: str) -> int:
    return PROFILES[kind].metrics_port if kind in PROFILES else STREAM_PROFILE["metrics_port"]


def only_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("obj", [o for o in OBJECTS if not o["apiVersion"].startswith("keda.sh/")],
                         ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_objects_validate_against_the_kubernetes_schemas(obj: dict, version: str):
    kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_catches_a_misspelt_field():
    broken = copy.deepcopy(objects("Deployment")["cortex-gateway"])
    only_container(broken)["readinesProbe"] = only_container(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def closed(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists the fields (a CRD prunes them silently,
    which would hide a misspelt field until KEDA ignores it)."""
    schema = copy.deepcopy(schema)
    if "properties" in schema:
        schema.setdefault("additionalProperties", False)
        for name, sub in schema["properties"].items():
            if name != "metadata":
                schema["properties"][name] = closed(sub)
    if isinstance(schema.get("items"), dict):
        schema["items"] = closed(schema["items"])
    return schema


KEDA_VALIDATOR = jsonschema.Draft7Validator(closed(KEDA_SCHEMA))


@pytest.mark.parametrize("name", sorted(objects("ScaledObject")))
def test_scaled_objects_validate_against_kedas_crd_schema(name: str):
    scaled = objects("ScaledObject")[name]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in KEDA_VALIDATOR.iter_errors(scaled)]
    assert not errors, errors


def test_the_keda_check_catches_a_misspelt_field():
    broken = copy.deepcopy(objects("ScaledObject")["cortex-worker-nlp"])
    broken["spec"]["maxReplicas"] = broken["spec"].pop("maxReplicaCount")
    assert not KEDA_VALIDATOR.is_valid(broken)


@pytest.mark.parametrize("kind", WORKER_KINDS)
def test_each_worker_kind_scales_on_every_priority_list_of_its_queues(kind: str):
    scaled = objects("ScaledObject")[f"cortex-worker-{kind}"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": f"cortex-worker-{kind}"}
    assert f"cortex-worker-{kind}" in objects("Deployment")
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    authentications = objects("TriggerAuthentication")
    lists = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis"
        assert set(trigger["metadata"]) <= REDIS_SCALER_METADATA, trigger["metadata"]
        assert int(trigger["metadata"]["listLength"]) > 0
        assert trigger["authenticationRef"]["name"] in authentications
        lists.add(trigger["metadata"]["listName"])
    assert len(lists) == len(spec["triggers"])
    assert lists == {queue if step == 0 else f"{queue}:{step}" for queue in queues_of(kind) for step in PRIORITY_STEPS}


def test_the_trigger_authentication_reads_the_redis_secret():
    for auth in objects("TriggerAuthentication").values():
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        assert set(auth["spec"]) == {"secretTargetRef"}
        for ref in auth["spec"]["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
            assert ref["parameter"] in REDIS_AUTH_PARAMETERS
        assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} >= {"address"}


def test_the_listed_names_are_the_redis_lists_celery_publishes_to():
    """Publish one message per queue and priority step through Cortex's Celery app (its broker settings,
    its transport) and find the Redis list each lands in: it must be a list a ScaledObject watches."""
    from cortex_tasks import app as celery_app

    watched = {trigger["metadata"]["listName"]: name for name, scaled in objects("ScaledObject").items()
               for trigger in scaled["spec"]["triggers"]}
    # A database of its own: in a whole-suite run the session's workers consume these queues in the main one.
    probe_url = urlunparse(urlparse(os.environ["REDIS_URL"])._replace(path="/7"))
    client = redis.Redis.from_url(probe_url)
    consumed = {queue for kind in WORKER_KINDS if kind in PROFILES for queue in PROFILES[kind].queues}
    task_name = f"cortex.tests.never_run_{uuid.uuid4().hex}"
    for queue in sorted(consumed):
        for step in PRIORITY_STEPS:
            before = {key: client.llen(key) for key in client.scan_iter(match=f"{queue}*") if client.type(key) == b"list"}
            with celery_app.connection_for_write(probe_url) as connection:
                celery_app.send_task(task_name, queue=queue, priority=step, ignore_result=True,
                                     connection=connection)
            after = {key: client.llen(key) for key in client.scan_iter(match=f"{queue}*") if client.type(key) == b"list"}
            grown = [key.decode() for key, length in after.items() if length > before.get(key, 0)]
            assert len(grown) == 1, (queue, step, grown)
            assert grown[0] in watched, f"priority {step} of {queue} waits in {grown[0]!r}, which no trigger watches"
            client.lrem(grown[0], 0, next(raw for raw in client.lrange(grown[0], 0, -1) if task_name.encode() in raw))


@pytest.mark.parametrize("kind", WORKER_KINDS)
def test_worker_deployments_run_the_profile_and_are_ready_by_its_own_check(kind: str):
    deployment = objects("Deployment")[f"cortex-worker-{kind}"]
    pod = deployment["spec"]["template"]
    container = only_container(deployment)
    assert container["command"] == ["cortex", "worker", kind]
    ready = ["cortex", "worker-ready", kind]
    assert container["readinessProbe"]["exec"]["command"] == ready
    assert container["startupProbe"]["exec"]["command"] == ready
    port = metrics_port_of(kind)
    assert container["ports"] == [{"name": "metrics", "containerPort": port}]
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                                              "prometheus.io/path": "/metrics"}
    # The worker's metrics folder, when it has one, is private to its container.
    assert "PROMETHEUS_MULTIPROC_DIR" not in {env["name"] for env in container.get("env", [])}


def test_only_the_gpu_worker_asks_for_a_gpu_on_a_gpu_node():
    for name, deployment in objects("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        limits = only_container(deployment)["resources"]["limits"]
        if name == "cortex-worker-gpu":
            assert limits["nvidia.com/gpu"] == 1
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert only_container(deployment)["image"].endswith("-cuda")
        else:
            assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod
            assert not only_container(deployment)["image"].endswith("-cuda")


def test_every_container_has_requests_and_a_memory_limit_and_runs_unprivileged():
    pods = [d["spec"]["template"]["spec"] for d in objects("Deployment").values()]
    pods += [j["spec"]["template"]["spec"] for j in objects("Job").values()]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
            assert "memory" in container["resources"]["limits"], container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_gateway_is_ready_on_ready_alive_on_health_and_behind_its_service():
    deployment = objects("Deployment")["cortex-gateway"]
    container = only_container(deployment)
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"name": "http", "containerPort": 8001} in container["ports"]
    assert "0.0.0.0:8001" in container["command"] and container["command"][:2] == ["cortex", "web"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8001"


def test_services_select_the_pods_of_a_deployment_and_their_named_ports():
    deployments = objects("Deployment")
    for name, service in objects("Service").items():
        selected = [d for d in deployments.values()
                    if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, name
        port_names = {p["name"] for p in only_container(selected[0]).get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names, name


def test_beat_is_a_single_replica_replaced_not_rolled():
    beat = objects("Deployment")["cortex-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert only_container(beat)["command"][:4] == ["celery", "-A", "cortex_tasks", "beat"]
    assert not any(s["spec"]["scaleTargetRef"]["name"] == "cortex-beat" for s in objects("ScaledObject").values())


def test_the_migration_job_runs_the_clis_migrate_command():
    job = objects("Job")["cortex-migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["cortex", "migrate"]


def test_every_cortex_command_in_the_manifests_exists():
    commands = [only_container(d)["command"] for d in objects("Deployment").values()]
    commands += [c["command"] for j in objects("Job").values() for c in j["spec"]["template"]["spec"]["containers"]]
    commands += [only_container(d)[probe]["exec"]["command"] for d in objects("Deployment").values()
                 for probe in ("readinessProbe", "startupProbe") if "exec" in only_container(d).get(probe, {})]
    for argv in commands:
        if argv[0] != "cortex":
            continue
        assert argv[1] in cli.commands, argv
        if argv[1] == "worker-ready":
            assert argv[2] in cli.commands["worker-ready"].params[0].type.choices


def test_configuration_comes_from_the_config_map_and_the_secret():
    config = objects("ConfigMap")["cortex-config"]
    declared = {name for group in SETTINGS_GROUPS for names in variable_names(group).values() for name in names}
    assert set(config["data"]) - {"HF_HUB_OFFLINE"} <= declared
    containers = [only_container(d) for d in objects("Deployment").values()]
    containers += [c for j in objects("Job").values() for c in j["spec"]["template"]["spec"]["containers"]]
    for container in containers:
        assert container["envFrom"] == [{"configMapRef": {"name": "cortex-config"}}, {"secretRef": {"name": "cortex"}}]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (its kustomize renders)")
def test_kubectl_kustomize_renders_the_same_objects():
    rendered = subprocess.run(["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=120,
                              check=False)
    assert rendered.returncode == 0, rendered.stderr
    names = sorted((o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(rendered.stdout) if o)
    assert names == sorted((o["kind"], o["metadata"]["name"]) for o in OBJECTS)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (its kustomize renders)")
def test_the_cpu_only_overlay_runs_the_gpu_worker_without_a_gpu():
    rendered = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy/kubernetes-cpu-only")], capture_output=True,
                              text=True, timeout=120, check=False)
    assert rendered.returncode == 0, rendered.stderr
    overlaid = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in overlaid) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in OBJECTS)
    for obj in overlaid:
        if not obj["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(obj, latest_version(), strict=True)
    gpu_worker = next(o for o in overlaid if o["metadata"]["name"] == "cortex-worker-gpu" and o["kind"] == "Deployment")
    pod = gpu_worker["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in only_container(gpu_worker)["resources"]["limits"]
    assert only_container(gpu_worker)["image"] == only_container(objects("Deployment")["cortex-gateway"])["image"]
    assert only_container(gpu_worker)["command"] == ["cortex", "worker", "gpu"]
