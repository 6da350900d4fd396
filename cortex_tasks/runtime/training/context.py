"""What a trainer sees while it runs: phases, metrics per epoch, checkpoints, and the pause and cancel
requests it must obey (checked between steps, so a cancel stops a run within about a second)."""
from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import Any

from cortex_tasks.core.queues import TRAINING
from cortex_tasks.core.storage.object_store import ObjectNotFound, get_object_store
from cortex_tasks.core.training import runs
from cortex_tasks.core.usage.worker_time import WorkerTime, worker_time

CONTROL_CHECK_SECONDS = 0.25
HISTORY_FLUSH_SECONDS = 0.5


class Paused(Exception):
    """The run was paused at a checkpoint; resuming continues from it."""

    def __init__(self, epoch: int):
        super().__init__(f"paused after epoch {epoch}")
        self.epoch = epoch


class Cancelled(Exception):
    """The run was cancelled; nothing is registered."""


def checkpoint_object_name(run_id: str) -> str:
    return f"training/{run_id}/checkpoint.bin"


class TrainingContext:
    def __init__(self, run_id: str, epochs: int, checkpoint_ref: str | None, checkpoint_epoch: int | None) -> None:
        self.run_id = run_id
        self.epochs = epochs
        self._checkpoint_ref, self._checkpoint_epoch = checkpoint_ref, checkpoint_epoch
        self._pending: list[dict[str, Any]] = []
        self._last_epoch = checkpoint_epoch or 0
        self._flushed_at = 0.0
        self._control_checked_at = 0.0
        self._wall_started = time.monotonic()
        self._cpu_started = time.process_time()
        self.rows = 0  # the dataset rows this run trains on, once loaded: the usage ledger's items

    # --- phases and metrics ---

    def phase(self, name: str, **values: Any) -> None:
        self.flush()
        runs.update_run(self.run_id, phase=name, **values)
        if "epochs" in values:
            self.epochs = int(values["epochs"])
            runs.set_job_total(self.run_id, self.epochs)

    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._pending.append({"epoch": epoch, **{k: _plain(v) for k, v in metrics.items()}})
        self._last_epoch = epoch
        if time.monotonic() - self._flushed_at >= HISTORY_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            runs.append_history(self.run_id, self._pending, self._last_epoch)
            self._pending = []
        self._flushed_at = time.monotonic()

    # --- checkpoints ---

    def resume_state(self) -> tuple[int, bytes] | None:
        """(epoch, trainer state) of the checkpoint this run resumes from, or None for a fresh run."""
        if not self._checkpoint_ref:
            return None
        try:
            return int(self._checkpoint_epoch or 0), get_object_store().get(self._checkpoint_ref)
        except ObjectNotFound:
            return None

    def save_checkpoint(self, epoch: int, state: bytes) -> str:
        name = checkpoint_object_name(self.run_id)
        get_object_store().put(name, state)
        self.flush()
        runs.update_run(self.run_id, checkpoint_ref=name, checkpoint_epoch=epoch)
        self._checkpoint_ref, self._checkpoint_epoch = name, epoch
        return name

    # --- control ---

    def requested(self, force: bool = False) -> str | None:
        now = time.monotonic()
        if not force and now - self._control_checked_at < CONTROL_CHECK_SECONDS:
            return None
        self._control_checked_at = now
        return runs.read_control(self.run_id)

    def obey(self, epoch: int, state: Callable[[], bytes] | None) -> None:
        """Between steps: raise Cancelled, or checkpoint `state()` at `epoch` and raise Paused, when asked.
        A trainer that cannot checkpoint (state None) is paused at its last checkpoint, if any."""
        action = self.requested()
        if action == runs.CANCEL:
            self.flush()
            raise Cancelled()
        if action == runs.PAUSE:
            if state is not None:
                self.save_checkpoint(epoch, state())
            else:
                self.flush()
            raise Paused(epoch if state is not None else int(self._checkpoint_epoch or 0))

    # --- resource use ---

    def worker_time(self, kind: str) -> WorkerTime:
        """The training worker's time on this run since this delivery started it, for the usage ledger:
        each stretch a run spends on a worker (until it pauses, stops or finishes) is charged once."""
        return worker_time(f"training.{kind}", TRAINING, self.rows, time.monotonic() - self._wall_started)

    def resources(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        body: dict[str, Any] = {
            "wall_seconds": round(time.monotonic() - self._wall_started, 3),
            "cpu_seconds": round(time.process_time() - self._cpu_started, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "pid": os.getpid(),
        }
        try:
            import torch

            body["torch_threads"] = torch.get_num_threads()
            body["device"] = "cuda" if torch.cuda.is_available() else "cpu"
            if torch.cuda.is_available():
                body["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        except ImportError:
            body["device"] = "cpu"
        return body


def _plain(value: Any) -> Any:
    """numpy / torch scalars as plain JSON numbers."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value
