"""Prometheus and promtool for the tests: the Debian package `prometheus`, installed when missing.

No maintained PyPI package ships the Prometheus server and promtool (checked when this was written: the
packages named after Prometheus are clients and exporters), so the suite takes Debian's build, the one
the README's test command can install on its own: as root, `apt-get install prometheus` (bounded in
time; it waits a while for another apt to finish). Only where apt itself is not available (not Debian,
not root) are the tests that need the binaries skipped, with a message saying what to install; an apt
that fails fails them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass

import pytest

PACKAGE = "prometheus"
INSTALL_TIMEOUT_SECONDS = 600
_lock = threading.Lock()
_outcome: PrometheusBinaries | tuple[str, str] | None = None


@dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: str
    promtool: str


def _found() -> PrometheusBinaries | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    return PrometheusBinaries(prometheus, promtool) if prometheus and promtool else None


def _install() -> tuple[str, str] | None:
    """Install the Debian package; returns ("skip" or "fail", why) where it could not be, else None."""
    if shutil.which("apt-get") is None:
        return "skip", "apt-get is not available (not a Debian-based system)"
    if os.geteuid() != 0:
        return "skip", "installing a Debian package needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt run (a second test session, an administrator) holds the lock: wait for it a while.
    lock_wait = ["-o", "DPkg::Lock::Timeout=120"]
    steps = [["apt-get", *lock_wait, "update", "-q"],
             ["apt-get", *lock_wait, "install", "-y", "-q", "--no-install-recommends", PACKAGE]]
    for step in steps:
        try:
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return "fail", f"`{' '.join(step)}` took more than {INSTALL_TIMEOUT_SECONDS} s"
        if done.returncode != 0:
            return "fail", f"`{' '.join(step)}` failed: {(done.stderr or done.stdout).strip()[-800:]}"
    if _found() is None:
        return "fail", f"the {PACKAGE} package installed no prometheus/promtool on the PATH"
    return None


def prometheus_binaries() -> PrometheusBinaries:
    """The binaries, installing the package the first time they are missing. Skips the calling test where
    apt is not available; fails it where the install failed."""
    global _outcome
    with _lock:
        if _outcome is None:
            _outcome = _found() or _install() or _found()
    if isinstance(_outcome, tuple):
        outcome, why = _outcome
        message = f"Prometheus is needed (Debian package `{PACKAGE}`): {why}"
        if outcome == "skip":
            pytest.skip(message)
        pytest.fail(message)
    assert isinstance(_outcome, PrometheusBinaries)
    return _outcome
