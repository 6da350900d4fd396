"""Roles and the permissions they grant (reader < inference_user < model_admin < platform_admin).

A key acts within its tenant; model_admin manages its tenant (models, deletions, its keys); only
platform_admin creates tenants and keys in any tenant.
"""
from __future__ import annotations

READ = "read"
PREDICT = "predict"
TRAIN = "train"
DEPLOY = "deploy"
ADMIN = "admin"
PLATFORM = "platform"

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "reader": frozenset({READ}),
    "inference_user": frozenset({READ, PREDICT}),
    "model_admin": frozenset({READ, PREDICT, TRAIN, DEPLOY, ADMIN}),
    "platform_admin": frozenset({READ, PREDICT, TRAIN, DEPLOY, ADMIN, PLATFORM}),
}
ROLES: tuple[str, ...] = tuple(ROLE_PERMISSIONS)
PLATFORM_ADMIN = "platform_admin"
