"""The artifact store's disk full while a model trains: the run fails with the reason (no space left), no
version is registered, so nothing half-written can be promoted, and once space is freed the same training
succeeds.

The artifact directory is a small tmpfs mounted for the test (it needs root and a kernel that lets the
container mount one; elsewhere the test is skipped, saying so), then filled to the last byte. A stack of its
own (tests/support/fault_stack.py) with a real training worker."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_training_jobs import topic_rows
from tests.support.fault_stack import FaultStack
from tests.support.full_disk import fill as fill_to_the_last_byte

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def artifacts_mount() -> Iterator[Path]:
    folder = Path(f"/tmp/cortex-faults-disk-{uuid.uuid4().hex[:8]}")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


@pytest.fixture(scope="module")
def stack(artifacts_mount: Path) -> Iterator[FaultStack]:
    stack = FaultStack(env={"CORTEX_ARTIFACT_DIR": str(artifacts_mount), "CORTEX_READY_QUEUES": "training"})
    try:
        stack.start_services()
        stack.start_gateway(workers=1)
        stack.start_worker("training", "training", pool="prefork", concurrency=1)
        yield stack
    finally:
        stack.close()


def fill(folder: Path) -> Path:
    """A file that takes every free byte of the filesystem."""
    filler = folder / "filler"
    fill_to_the_last_byte(filler)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def train(stack: FaultStack, name: str) -> dict:
    answer = stack.call("POST", "/api/v1/training/submit", {
        "kind": "classifier", "model": name, "dataset": {"rows": topic_rows(per_label=12)}, "params": {"epochs": 5}})
    assert answer.status == 202, answer
    job_id = answer.body["job_id"]
    deadline = time.monotonic() + 240
    while True:
        body = stack.call("GET", f"/api/v1/training/status/{job_id}").body
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.5)


def versions(stack: FaultStack, name: str) -> list[dict]:
    answer = stack.call("GET", f"/api/v1/models/{name}")
    return answer.body.get("versions", []) if answer.status == 200 else []


def test_training_on_a_full_disk_fails_cleanly(stack: FaultStack, artifacts_mount: Path) -> None:
    name = f"full-{uuid.uuid4().hex[:6]}"
    filler = fill(artifacts_mount)
    try:
        failed = train(stack, name)
    finally:
        filler.unlink()
    assert failed["status"] == "failed", failed
    assert "No space left on device" in failed["error"]["message"], failed
    assert versions(stack, name) == []  # nothing registered, so nothing to promote
    # No half-written file left behind: neither a temporary one nor any object of the model's.
    stray = [path for path in artifacts_mount.rglob("*")
             if path.is_file() and (path.name.startswith(".") or name in path.as_posix())]
    assert stray == []

    succeeded = train(stack, name)
    assert succeeded["status"] == "succeeded", succeeded
    # The one version there is this run's (the failed run's reserved number stays unused).
    registered = versions(stack, name)
    assert [f"{name}@{version['version']}" for version in registered] == [succeeded["result"]["reference"]]
