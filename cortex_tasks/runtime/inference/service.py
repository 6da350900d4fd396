"""Inference as plain code: preprocess, call the model (or an ensemble) on the whole batch, postprocess."""
from __future__ import annotations

import time
from typing import Any

from cortex_tasks.core.catalogue import TASKS, find_model
from cortex_tasks.core.errors import CortexError, ItemError
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.registry import stats as model_stats
from cortex_tasks.core.vectors.service import store_embeddings
from cortex_tasks.runtime.models import postprocessing, preprocessing
from cortex_tasks.runtime.models.loaded import get_model
from cortex_tasks.runtime.models.preprocessing import Prepared


class RequestInputError(JobInputError, ItemError):
    """A bad request (params, model) found while predicting: it fails every item of the batch.

    Both kinds at once, so that every caller reports it as the client's error: job runners catch
    JobInputError (with details), the dynamic batcher turns ItemError into per-item failures.
    """

    def __init__(self, source: JobInputError) -> None:
        CortexError.__init__(self, source.code, str(source), source.details)


def predict(task: str, model_name: str, inputs: list[Any], params: dict[str, Any]) -> dict[str, Any]:
    """Preprocess, run the model (or an ensemble of models) on the whole batch, postprocess.

    A bad item raises ItemError (the batcher then isolates it); bad params or an unknown model raise
    RequestInputError.
    """
    try:
        return _predict(task, model_name, inputs, params)
    except RequestInputError:
        raise
    except JobInputError as exc:
        raise RequestInputError(exc) from exc


def _predict(task: str, model_name: str, inputs: list[Any], params: dict[str, Any]) -> dict[str, Any]:
    entry = find_model(model_name)
    if entry is None or entry.task != task:
        raise JobInputError("unknown_model", f"model {model_name!r} does not serve task {task!r}")
    started = time.perf_counter()
    steps = preprocessing.steps_for(task, params.get("preprocess"))
    prepared = [preprocessing.prepare(item, steps) if isinstance(item, str) else item for item in inputs]
    preprocessed = time.perf_counter()
    members = postprocessing.read_ensemble(params)
    if members is None:
        model = get_model(model_name)
        with model_stats.observe(model.info.name, model.info.version, items=len(prepared)):
            outputs = _run_model(model, prepared, params)
        model_info: dict[str, Any] = {"name": model.info.name, "version": model.info.version}
    else:
        outputs, model_info = _run_ensemble(task, members, prepared, params)
    inferred = time.perf_counter()
    outputs = postprocessing.apply(task, outputs, params)
    if task in ("embed", "image_embed") and params.get("collection"):
        # Embedding jobs can fill a vector collection (params.collection, params.ids): core/vectors/service.py.

        store_embeddings(model_info, inputs, outputs, params)
    return {
        "task": task,
        "model": model_info,
        "outputs": outputs,
        "timings": {"preprocess_ms": _ms(started, preprocessed), "model_ms": _ms(preprocessed, inferred),
                    "postprocess_ms": _ms(inferred, time.perf_counter())},
    }


def _run_model(model: Any, prepared: list[Any], params: dict[str, Any]) -> list[Any]:
    # Span-producing backends take Prepared texts to report offsets into the original; the rest get
    # the preprocessed text itself.
    if getattr(model, "accepts_prepared", False):
        return model.predict(prepared, params)
    return model.predict([item.text if isinstance(item, Prepared) else item for item in prepared], params)


def _run_ensemble(task: str, members: list[tuple[str, float]], prepared: list[Any],
                  params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    for name, _ in members:
        entry = find_model(name)
        if entry is None or entry.task != task:
            raise JobInputError("unknown_model", f"ensemble model {name!r} does not serve task {task!r}",
                                {"valid": list(TASKS[task].models) if task in TASKS else []})
    # Members score every label: top_k/threshold apply to the average, not to each member.
    member_params = {key: value for key, value in params.items()
                     if key not in ("ensemble", "top_k", "threshold")}
    models = [get_model(name) for name, _ in members]
    member_outputs = [_run_model(model, prepared, member_params) for model in models]
    weights = [weight for _, weight in members]
    outputs = postprocessing.combine_ensemble(task, member_outputs, weights)
    described = [{"name": model.info.name, "version": model.info.version, "weight": weight}
                 for model, weight in zip(models, weights)]
    outputs = [{**output, "ensemble": described} if isinstance(output, dict) else output for output in outputs]
    version = "+".join(f"{model.info.name}@{model.info.version}" for model in models)
    return outputs, {"name": "ensemble", "version": version, "members": described}


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 2)
