"""Roles and the permissions they grant (reader < inference_user < model_admin)."""
from __future__ import annotations

READ = "read"
PREDICT = "predict"
TRAIN = "train"
DEPLOY = "deploy"
ADMIN = "admin"

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "reader": frozenset({READ}),
    "inference_user": frozenset({READ, PREDICT}),
    "model_admin": frozenset({READ, PREDICT, TRAIN, DEPLOY, ADMIN}),
}
ROLES: tuple[str, ...] = tuple(ROLE_PERMISSIONS)
