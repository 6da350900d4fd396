"""Worker profiles, one per worker kind."""
from workers import gpu, nlp, stream, training
from workers.profile import WorkerProfile

PROFILES: dict[str, WorkerProfile] = {p.name: p for p in (gpu.PROFILE, nlp.PROFILE, training.PROFILE, stream.PROFILE)}
