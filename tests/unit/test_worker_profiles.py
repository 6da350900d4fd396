"""Worker profiles: the pool shape each kind of work needs, and the arguments they give celery."""
from __future__ import annotations

from pathlib import Path

from workers import PROFILES


def test_profiles_shape():
    gpu, nlp, training = PROFILES["gpu"], PROFILES["nlp"], PROFILES["training"]
    assert gpu.pool in ("threads", "solo") and gpu.queues[0] == "gpu"
    assert nlp.pool == "prefork" and "nlp" in nlp.queues
    assert training.concurrency == 1 and "training" in training.queues
    assert all(profile.prefetch_multiplier == 1 for profile in PROFILES.values())


def test_celery_argv_consumes_the_profile_queues():
    argv = PROFILES["gpu"].celery_argv()
    assert argv[:3] == ["-A", "cortex_tasks", "worker"]
    assert argv[argv.index("-Q") + 1] == "gpu,batch"  # batch chunks share the gpu worker's loaded models
    assert argv[argv.index("-P") + 1] == "threads"


def test_procfile_starts_every_profile():
    procfile = (Path(__file__).resolve().parents[2] / "Procfile").read_text()
    for name in PROFILES:
        assert f"cortex worker {name}" in procfile
    for process in ("web:", "beat:", "flower:"):
        assert process in procfile
