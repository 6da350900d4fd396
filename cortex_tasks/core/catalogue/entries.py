"""The two kinds of catalogue entry: a model (what it serves, how a worker loads it) and a task."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    version: str
    loader: str  # "module:ClassName", imported only in workers
    description: str
    batchable: bool = True
    # How its calls share the worker's cores (runtime/inference/compute.py): "lanes" (one call per core; the
    # backend is safe to call from several threads at once), "exclusive" (one call at a time) or "remote"
    # (the work runs elsewhere and takes no core).
    compute: str = "exclusive"
    # Facts for its model card, as (name, value) pairs: where its weights come from and their sha256, which
    # the loader checks before loading them.
    card: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TaskEntry:
    name: str
    queue: str
    default_model: str
    fallback_model: str | None
    description: str
    cacheable: bool = True
    models: tuple[str, ...] = field(default=())
    # Its inputs and results are personal data by nature: every job of it is sensitive (never cached,
    # sealed or not kept at rest; core/storage/sealing.py), whatever the request says.
    sensitive: bool = False
    # "text"; "text_or_vector" for tasks that also take number lists; "series" (a list of numbers or of
    # {"ds", "y"} points, see core/validation/timeseries.py); "series_or_rows" (a series or feature rows)
    # "image": {"image": "<base64>"} or {"image_ref": "<object name>"} (core/images/intake.py), staged by the
    # gateway before anything is queued; "audio": {"audio": "<base64>", "filename"?} (core/audio/intake.py).
    input_kind: str = "text"
