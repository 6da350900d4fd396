"""Per-model permissions: a key (or token) may be limited to named models and/or tasks.

Checked where a request names what it will run (prediction, batch, training, chat, the embedding model of a
vector or document collection), after the role check. A call outside the key's lists is a 403 that says
which list refused it, so the caller knows it is a permission and not a missing model.
"""
from __future__ import annotations

from cortex_tasks.core.auth.keys import Principal
from cortex_tasks.core.errors import CortexError


class NotAllowed(CortexError):
    status = 403


def base_model_name(reference: str) -> str:
    """`name@version` and `name` are the same model for permissions."""
    return reference.split("@", 1)[0]


def check_task_allowed(principal: Principal, task: str) -> None:
    if principal.tasks is not None and task not in principal.tasks:
        raise NotAllowed("task_not_allowed", f"This key may not run the task {task!r}.",
                         {"task": task, "allowed_tasks": sorted(principal.tasks)})


def check_model_allowed(principal: Principal, model: str | None) -> None:
    if principal.models is None or model is None:
        return
    name = base_model_name(model)
    if name not in principal.models:
        raise NotAllowed("model_not_allowed", f"This key may not use the model {name!r}.",
                         {"model": name, "allowed_models": sorted(principal.models)})


def check_allowed(principal: Principal, task: str | None, model: str | None) -> None:
    """Both lists; `model` is the model that will really run (the default one when the request named none)."""
    if task is not None:
        check_task_allowed(principal, task)
    check_model_allowed(principal, model)
