"""A small process supervisor: starts named commands, restarts one that dies (with back-off), and stops
them all in reverse order on request. `cortex up` runs the whole embedded stack under one of these."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
KILL = int(signal.SIGKILL)
# Looked up once here: the function below runs in the child between fork and exec, where it must take no
# lock (another thread of the supervisor may have held one at the fork).
_prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_supervisor(supervisor_pid: int):
    """The child's last step before exec: the kernel sends it SIGKILL when the supervisor dies, however it
    dies. Each child has a session of its own (so Ctrl-C reaches only the supervisor, which stops them in
    order), so without this a SIGKILLed `cortex up` left Redis, PostgreSQL, gunicorn and the workers running
    with PPID 1. Their own children follow them: gunicorn's and Celery's workers exit when their parent
    goes, PostgreSQL's backends when the postmaster does. Set after the user change (Popen's `user=`
    changes it first; a change of credentials clears the setting). Linux only: elsewhere a no-op."""

    def set_up() -> None:
        if _prctl is None:
            return
        _prctl(PR_SET_PDEATHSIG, KILL, 0, 0, 0)
        if os.getppid() != supervisor_pid:  # the supervisor died before the setting took hold
            os._exit(1)

    return set_up


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    # Services (databases) stop after everything that uses them.
    is_service: bool = False
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start_at: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            # A new session per child: Ctrl-C in the terminal reaches only the supervisor, which then
            # stops the children in order instead of all of them dying at once.
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            user=self.user,
                                            preexec_fn=_die_with_supervisor(os.getpid()))  # noqa: PLW1509 - see there
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(self, log_dir: Path, base_env: dict[str, str], on_change=None) -> None:
        self.on_change = on_change  # called after any process (re)starts, e.g. to publish pids
        self.log_dir = log_dir
        self.base_env = base_env
        self.processes: list[ManagedProcess] = []
        self.stopping = False

    def add_and_start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None,
                      user: str | None = None, stop_signal: int = signal.SIGTERM,
                      is_service: bool = False) -> ManagedProcess:
        managed = ManagedProcess(name, argv, {**self.base_env, **(extra_env or {})},
                                 self.log_dir / f"{name}.log", user, stop_signal, is_service)
        managed.start()
        self.processes.append(managed)
        log.info("started %s (pid %s)", name, managed.process.pid if managed.process else None)
        if self.on_change:
            self.on_change()
        return managed

    def pids(self) -> dict[str, int]:
        return {m.name: m.process.pid for m in self.processes if m.process is not None}

    def check_once(self) -> list[str]:
        """Restart processes that died; returns the names restarted now."""
        restarted = []
        now = time.monotonic()
        for managed in self.processes:
            if self.stopping or managed.alive:
                continue
            if managed.next_start_at == 0.0:
                # Quick repeated deaths back off up to 30 s, so a broken command does not spin.
                ran_for = now - managed.started_at
                delay = 1.0 if ran_for > 60 else min(30.0, 2.0 ** min(managed.restarts, 5))
                managed.next_start_at = now + delay
                code = managed.process.returncode if managed.process else None
                log.warning("%s exited with code %s; restarting in %.0fs (log: %s)", managed.name, code, delay,
                            managed.log_path)
            elif now >= managed.next_start_at:
                managed.restarts += 1
                managed.next_start_at = 0.0
                managed.start()
                restarted.append(managed.name)
        if restarted and self.on_change:
            self.on_change()
        return restarted

    def stop_all(self, timeout: float = 20.0) -> None:
        self.stopping = True
        self._stop_group([m for m in self.processes if not m.is_service], timeout)
        self._stop_group([m for m in self.processes if m.is_service], timeout)

    @staticmethod
    def _stop_group(group: list[ManagedProcess], timeout: float) -> None:
        for managed in reversed(group):
            if managed.alive and managed.process:
                try:
                    os.killpg(managed.process.pid, managed.stop_signal)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for managed in reversed(group):
            if managed.process is None:
                continue
            try:
                managed.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(managed.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                managed.process.wait(5)
