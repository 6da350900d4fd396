"""One typed settings object, read from the environment.

Service URLs left unset mean "use the embedded stack": `cortex up` writes the URLs of the services it
started into `<CORTEX_DATA_DIR>/stack.json`, and every other process (workers, CLI, Beat) reads them
from there, so that they all find the same stack through the same data folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

STACK_FILE_NAME = "stack.json"


# Readers of one environment variable, for settings.py and the per-area config modules (batch, training,
# chat, openai); an unset or empty variable means the default.
def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def data_dir() -> Path:
    return Path(os.environ.get("CORTEX_DATA_DIR", "./var")).resolve()


def read_stack_file(folder: Path | None = None) -> dict[str, str]:
    path = (folder or data_dir()) / STACK_FILE_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _artifact_key(raw: str | None) -> bytes | None:
    """Decode CORTEX_ARTIFACT_KEY; a key that is set but unusable stops start-up rather than being ignored."""
    if raw in (None, ""):
        return None
    import base64
    import binascii

    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("CORTEX_ARTIFACT_KEY must be base64 (e.g. `openssl rand -base64 32`)") from None
    if len(key) != 32:
        raise ValueError(f"CORTEX_ARTIFACT_KEY must decode to 32 bytes for AES-256-GCM, not {len(key)}")
    return key


@dataclass(frozen=True)
class RateTier:
    """A token bucket per API key, and a narrower one per (key, model) for prediction calls, so that one
    model cannot take a caller's whole budget (architecture document: rate_limits)."""

    requests_per_minute: float
    burst_size: int
    model_requests_per_minute: float | None = None  # None: no per-model bucket
    model_burst_size: int | None = None


UNLIMITED_TIER = "unlimited"
DEFAULT_RATE_TIERS: dict[str, RateTier | None] = {
    # Per model: half the key's budget by default.
    "default": RateTier(60, 10, 30, 5),
    "premium": RateTier(300, 50, 150, 25),
    UNLIMITED_TIER: None,  # internal automation: never limited, and costs no Redis round trip
}


@dataclass(frozen=True)
class AlertRule:
    """Alert when security violations from one key or one IP reach `threshold` within `window_seconds`
    (architecture document: audit_system.alerts)."""

    type: str
    threshold: int
    window_seconds: float


DEFAULT_AUDIT_ALERTS = (AlertRule("security_breach", 3, 300.0), AlertRule("unusual_access", 10, 3600.0))
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str | float) -> float:
    """Seconds from `30`, `30s`, `5m`, `1h` or `90d` (the architecture document's notation)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    text = str(raw).strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    try:
        value = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise ValueError(f"{raw!r} is not a duration (e.g. 30s, 5m, 1h, 90d)") from None
    if value <= 0:
        raise ValueError(f"{raw!r} must be a positive duration")
    return value


def _json_object(variable: str, raw: str | None, of: str) -> dict[str, Any]:
    """The JSON object a settings variable holds (empty if unset); anything else stops start-up."""
    if raw in (None, ""):
        return {}
    try:
        given = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{variable} is not JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ValueError(f"{variable} must be a JSON object of {of}")
    return given


def _rate_tier(name: str, spec: object) -> RateTier | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or not {"requests_per_minute", "burst_size"} <= set(spec):
        raise ValueError(f"CORTEX_RATE_LIMITS[{name!r}] needs requests_per_minute and burst_size (or null)")
    rate, burst = float(spec["requests_per_minute"]), int(spec["burst_size"])
    per_model = spec.get("per_model", {"requests_per_minute": rate / 2, "burst_size": max(1, burst // 2)})
    if per_model is not None and not (isinstance(per_model, dict)
                                      and {"requests_per_minute", "burst_size"} <= set(per_model)):
        raise ValueError(f"CORTEX_RATE_LIMITS[{name!r}].per_model needs requests_per_minute and burst_size")
    tier = RateTier(rate, burst, float(per_model["requests_per_minute"]) if per_model else None,
                    int(per_model["burst_size"]) if per_model else None)
    if tier.requests_per_minute <= 0 or tier.burst_size < 1 or (
            per_model and (tier.model_requests_per_minute <= 0 or tier.model_burst_size < 1)):
        raise ValueError(f"CORTEX_RATE_LIMITS[{name!r}]: rates must be positive and bursts at least 1")
    return tier


def rate_tiers_from(raw: str | None) -> dict[str, RateTier | None]:
    """The architecture's tiers, overridden or extended by CORTEX_RATE_LIMITS, a JSON object
    `{"tier": {"requests_per_minute", "burst_size", "per_model"?: {...} | null} | null}` (null: unlimited)."""
    tiers = dict(DEFAULT_RATE_TIERS)
    given = _json_object("CORTEX_RATE_LIMITS", raw, "tiers")
    tiers.update({str(name): _rate_tier(str(name), spec) for name, spec in given.items()})
    return tiers


@dataclass(frozen=True)
class Batching:
    """How one model's concurrent items are batched (DESIGN.md "Batching"): at most `max_batch_size` items
    per model call (and per message a gateway coalesces), and how long a partial batch may wait for items
    known to be on their way (inference/batcher.py)."""

    max_batch_size: int
    max_wait_seconds: float


_BATCHING_KEYS = {"max_batch_size", "max_wait_ms"}


def _batching(model: str, spec: object, default: Batching) -> Batching:
    where = f"CORTEX_BATCHING_PER_MODEL[{model!r}]"
    if not isinstance(spec, dict) or not spec or not set(spec) <= _BATCHING_KEYS:
        raise ValueError(f"{where} must be an object with max_batch_size and/or max_wait_ms")
    size, wait_ms = spec.get("max_batch_size", default.max_batch_size), spec.get("max_wait_ms")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{where}.max_batch_size must be a whole number of at least 1")
    if wait_ms is not None and (isinstance(wait_ms, bool) or not isinstance(wait_ms, (int, float))
                                or wait_ms < 0):
        raise ValueError(f"{where}.max_wait_ms must be a number of milliseconds, 0 or more")
    return Batching(size, default.max_wait_seconds if wait_ms is None else wait_ms / 1000)


def batching_from(raw: str | None, default: Batching) -> dict[str, Batching]:
    """CORTEX_BATCHING_PER_MODEL: a JSON object `{"model": {"max_batch_size"?, "max_wait_ms"?}}`; what a
    model leaves out is the global setting (MAX_BATCH_SIZE, CORTEX_BATCH_MAX_WAIT_MS)."""
    given = _json_object("CORTEX_BATCHING_PER_MODEL", raw, "models")
    return {str(model): _batching(str(model), spec, default) for model, spec in given.items()}


def audit_alerts_from(raw: str | None) -> tuple[AlertRule, ...]:
    """CORTEX_AUDIT_ALERTS: a JSON list of `{"type", "threshold", "window": "5m"}` replacing the defaults."""
    if raw in (None, ""):
        return DEFAULT_AUDIT_ALERTS
    try:
        given = json.loads(raw)
        rules = tuple(AlertRule(str(rule["type"]), int(rule["threshold"]), parse_duration(rule["window"]))
                      for rule in given)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"CORTEX_AUDIT_ALERTS must be a JSON list of {{type, threshold, window}}: {exc}") from None
    if any(rule.threshold < 1 for rule in rules):
        raise ValueError("CORTEX_AUDIT_ALERTS: thresholds are at least 1")
    return rules


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    redis_url: str
    database_url: str
    artifact_dir: Path
    s3_endpoint: str | None
    s3_access_key: str | None
    s3_secret_key: str | None
    s3_bucket: str
    s3_secure: bool
    admin_key: str | None
    # Request limits (architecture document: input_validation, inference_config).
    max_batch_size: int = 32
    batching_enabled: bool = True
    batch_max_wait_seconds: float = 0.002
    coalesce_max_inflight: int = 4  # for the whole gateway: its processes share it
    gateway_processes: int = 1  # set by gunicorn_conf.py for the processes it starts
    batching_per_model: dict[str, Batching] = field(default_factory=dict)  # overrides of the two above
    # Prediction cache (architecture document: cache_config).
    cache_enabled: bool = True
    cache_l1_max_bytes: int = 256 * 1024 * 1024
    cache_l1_ttl_seconds: float = 300.0
    cache_l2_max_bytes: int = 1024 * 1024 * 1024
    cache_l2_ttl_seconds: int = 3600
    cache_max_item_bytes: int = 1024 * 1024
    # Overload protection (architecture document: load_balancing).
    shed_max_queue_depth: int = 500
    shed_max_queue_age_seconds: float = 0.5
    circuit_error_threshold: float = 0.5
    circuit_min_requests: int = 5
    circuit_reset_timeout_seconds: float = 30.0
    priority_aging_seconds: float = 60.0
    max_text_length: int = 10_000
    max_body_bytes: int = 2 * 1024 * 1024
    max_json_depth: int = 20
    default_wait_seconds: float = 5.0
    max_wait_seconds: float = 30.0
    # Delivery (DESIGN.md "Delivery").
    max_deliveries: int = 3
    result_expires_seconds: int = 3600
    job_retention_days: int = 30
    extra: dict[str, str] = field(default_factory=dict)
    # Object storage (architecture document: minio_config, storage_security). The key is 32 bytes,
    # given base64-encoded in CORTEX_ARTIFACT_KEY; without it artifacts are stored unencrypted.
    s3_region: str = "us-east-1"
    artifact_key: bytes | None = field(default=None, repr=False)
    # Rate limiting (architecture document: rate_limits). A key's tier names one of these.
    rate_limit_tiers: dict[str, RateTier | None] = field(default_factory=lambda: dict(DEFAULT_RATE_TIERS))
    admin_key_tier: str = UNLIMITED_TIER  # CORTEX_ADMIN_KEY is for automation
    max_concurrent_requests: int = 100  # in-flight prediction requests per gateway process
    queue_timeout_seconds: float = 30.0  # how long a request waits for one of those slots
    # Audit log (architecture document: audit_system, storage_security.audit).
    audit_enabled: bool = True
    audit_retention_days: float = 90.0
    audit_flush_seconds: float = 1.0
    audit_alerts: tuple[AlertRule, ...] = DEFAULT_AUDIT_ALERTS
    audit_log_level: str = "INFO"

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_endpoint)

    def batching_for(self, model: str) -> Batching:
        """A model's batching: its own, else its registered name's (`name@3` -> `name`), else the global."""
        own = self.batching_per_model.get(model) or self.batching_per_model.get(model.split("@", 1)[0])
        return own or Batching(self.max_batch_size, self.batch_max_wait_seconds)

    @property
    def coalesce_max_inflight_per_process(self) -> int:
        """Each gateway process's share of the in-flight messages, so that the worker sees the same
        number whatever the number of processes (more, and each message carries fewer items)."""
        return -(-self.coalesce_max_inflight // self.gateway_processes)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    folder = data_dir()
    stack = read_stack_file(folder)
    # Without URLs and without a running `cortex up` stack, fall back to local default ports, as Celery
    # and most tools do; /ready reports clearly if nothing is listening there.
    redis_url = os.environ.get("REDIS_URL") or stack.get("redis_url") or "redis://127.0.0.1:6379/0"
    database_url = (os.environ.get("DATABASE_URL") or stack.get("database_url")
                    or "postgresql://cortex@127.0.0.1:5432/cortex")
    batching = Batching(env_int("MAX_BATCH_SIZE", 32), env_float("CORTEX_BATCH_MAX_WAIT_MS", 2.0) / 1000)
    return Settings(
        data_dir=folder,
        redis_url=redis_url,
        database_url=database_url,
        artifact_dir=Path(os.environ.get("CORTEX_ARTIFACT_DIR") or stack.get("artifact_dir")
                          or folder / "artifacts"),
        s3_endpoint=os.environ.get("MINIO_ENDPOINT") or os.environ.get("S3_ENDPOINT") or None,
        s3_access_key=os.environ.get("MINIO_ACCESS_KEY"),
        s3_secret_key=os.environ.get("MINIO_SECRET_KEY"),
        s3_bucket=os.environ.get("MINIO_BUCKET", "model-artifacts"),
        s3_secure=env_bool("MINIO_SECURE", False),
        s3_region=os.environ.get("MINIO_REGION", "us-east-1"),
        artifact_key=_artifact_key(os.environ.get("CORTEX_ARTIFACT_KEY")),
        admin_key=os.environ.get("CORTEX_ADMIN_KEY") or None,
        max_batch_size=batching.max_batch_size,
        batching_enabled=env_bool("CORTEX_BATCHING", True),
        batch_max_wait_seconds=batching.max_wait_seconds,
        coalesce_max_inflight=max(1, env_int("CORTEX_COALESCE_MAX_INFLIGHT", 4)),
        gateway_processes=max(1, env_int("CORTEX_GATEWAY_PROCESSES", 1)),
        batching_per_model=batching_from(os.environ.get("CORTEX_BATCHING_PER_MODEL"), batching),
        cache_enabled=env_bool("CORTEX_CACHE", True),
        shed_max_queue_depth=env_int("CORTEX_SHED_MAX_DEPTH", 500),
        shed_max_queue_age_seconds=env_float("CORTEX_SHED_MAX_AGE", 0.5),
        circuit_error_threshold=env_float("CORTEX_CIRCUIT_ERROR_THRESHOLD", 0.5),
        circuit_min_requests=env_int("CORTEX_CIRCUIT_MIN_REQUESTS", 5),
        circuit_reset_timeout_seconds=env_float("CORTEX_CIRCUIT_RESET_TIMEOUT", 30.0),
        priority_aging_seconds=env_float("CORTEX_PRIORITY_AGING_SECONDS", 60.0),
        cache_l1_max_bytes=env_int("CORTEX_CACHE_L1_MAX_MB", 256) * 1024 * 1024,
        cache_l1_ttl_seconds=env_float("CORTEX_CACHE_L1_TTL", 300.0),
        cache_l2_max_bytes=env_int("CORTEX_CACHE_L2_MAX_MB", 1024) * 1024 * 1024,
        cache_l2_ttl_seconds=env_int("CORTEX_CACHE_L2_TTL", 3600),
        default_wait_seconds=env_float("CORTEX_DEFAULT_WAIT", 5.0),
        max_deliveries=env_int("CORTEX_MAX_DELIVERIES", 3),
        result_expires_seconds=env_int("CORTEX_RESULT_EXPIRES", 3600),
        rate_limit_tiers=rate_tiers_from(os.environ.get("CORTEX_RATE_LIMITS")),
        admin_key_tier=os.environ.get("CORTEX_ADMIN_KEY_TIER") or UNLIMITED_TIER,
        max_concurrent_requests=env_int("CORTEX_MAX_CONCURRENT_REQUESTS", 100),
        queue_timeout_seconds=parse_duration(os.environ.get("CORTEX_QUEUE_TIMEOUT") or "30s"),
        audit_enabled=env_bool("CORTEX_AUDIT", True),
        audit_retention_days=parse_duration(os.environ.get("CORTEX_AUDIT_RETENTION") or "90d") / 86400,
        audit_flush_seconds=env_float("CORTEX_AUDIT_FLUSH_SECONDS", 1.0),
        audit_alerts=audit_alerts_from(os.environ.get("CORTEX_AUDIT_ALERTS")),
        audit_log_level=(os.environ.get("CORTEX_AUDIT_LOG_LEVEL") or "INFO").upper(),
    )


def reset_settings_cache() -> None:
    get_settings.cache_clear()
