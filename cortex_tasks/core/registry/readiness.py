"""Is a registry version ready to serve? The check a promotion waits for before switching traffic.

Always: the artifact is fetched from the object store and verified against the digest recorded at
registration (and decrypted, when encrypted at rest). Then, if a probe is registered for the version's
framework, it loads the artifact the way serving will (the training code registers probes for the
frameworks it produces: `register_probe("sklearn-head", load_fn)`). A probe that raises fails the
promotion; the previous production version keeps serving.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cortex_tasks.core.registry import artifacts
from cortex_tasks.core.registry.service import VersionRecord

Probe = Callable[[VersionRecord, Path], Any]
_probes: dict[str, Probe] = {}


def register_probe(framework: str, probe: Probe) -> None:
    _probes[framework] = probe


def check_ready(record: VersionRecord) -> dict[str, Any]:
    started = time.perf_counter()
    local = artifacts.fetch_artifact(record)
    probe = _probes.get(record.framework)
    if probe is not None:
        probe(record, local)
    return {"artifact_verified": True, "probe": record.framework if probe else None,
            "seconds": round(time.perf_counter() - started, 3)}
