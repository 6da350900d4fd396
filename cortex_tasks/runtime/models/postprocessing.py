"""Postprocessing of classification-like outputs: one shape, confidences, top_k, threshold, ensembles.

The shape every classification-like task answers with (classify, zero_shot, sentiment, ...):

    {"label": "positive", "score": 0.93, "confidence": 0.93,
     "labels": [{"label": "positive", "score": 0.93}, {"label": "neutral", "score": 0.07}, ...]}

`labels` is sorted by score, highest first. `confidence` is always the score of `label`; `score` is the
task's headline number, the same as `confidence` except where a task defines its own (sentiment: the
polarity in [-1, 1]). Backends return the full distribution; `apply` then honours the request:
  params.top_k      keep only the k best entries of `labels`
  params.threshold  drop entries of `labels` scoring below it; `label` becomes null when even the best
                    one is below it (the model abstains), its score stays visible
An ensemble (`params.ensemble: [{"model": name, "weight": w}, ...]`) runs several models of one task
and averages their `labels` distributions, weighted (`weighted_average`), before `apply`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError

DECIMALS = 6
MAX_ENSEMBLE_MEMBERS = 8
# Tasks whose headline `score` is not the probability of `label`.
OWN_SCORE_TASKS = frozenset({"sentiment"})
# Tasks whose outputs are not label scores: their models read params.threshold themselves (anomaly:
# a z-score cut-off, not a probability), so nothing here applies.
NOT_LABEL_TASKS = frozenset({"anomaly", "forecast", "decompose", "image_embed", "image_classify"})


def read_top_k(params: Mapping[str, Any], name: str = "top_k") -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise JobInputError("invalid_params", f"params.{name} must be a whole number of at least 1")
    return value


def read_threshold(params: Mapping[str, Any], name: str = "threshold",
                   default: float | None = None) -> float | None:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise JobInputError("invalid_params", f"params.{name} must be a number between 0 and 1")
    return float(value)


def shape_scores(scores: Mapping[str, float], *, top_k: int | None = None, threshold: float | None = None,
                 multi_label: bool = False) -> dict[str, Any]:
    """The API shape for a {label: score} mapping (probabilities, or independent scores if multi_label).

    multi_label adds `predicted`: every label whose score clears the threshold (0.5 when none is given).
    """
    ranked = sorted(((label, float(score)) for label, score in scores.items()), key=lambda pair: -pair[1])
    if not ranked:
        return {"label": None, "score": 0.0, "confidence": 0.0, "labels": []}
    best_label, best_score = ranked[0]
    kept = [(label, score) for label, score in ranked if threshold is None or score >= threshold]
    if top_k is not None:
        kept = kept[:top_k]
    shaped: dict[str, Any] = {
        "label": best_label if threshold is None or best_score >= threshold else None,
        "score": round(best_score, DECIMALS),
        "confidence": round(best_score, DECIMALS),
        "labels": [{"label": label, "score": round(score, DECIMALS)} for label, score in kept],
    }
    if multi_label:
        cut = 0.5 if threshold is None else threshold
        shaped["predicted"] = [label for label, score in ranked if score >= cut]
    return shaped


def distribution(output: Any) -> dict[str, float] | None:
    """The {label: score} distribution of a classification-like output, None for other outputs."""
    if not isinstance(output, dict) or not isinstance(output.get("labels"), list):
        return None
    scores: dict[str, float] = {}
    for entry in output["labels"]:
        if not isinstance(entry, dict) or "label" not in entry or "score" not in entry:
            return None
        scores[str(entry["label"])] = float(entry["score"])
    return scores


def apply(task: str, outputs: list[Any], params: Mapping[str, Any]) -> list[Any]:
    """Apply params.top_k / params.threshold to every classification-like output; others pass through."""
    if task in NOT_LABEL_TASKS:
        return outputs
    top_k = read_top_k(params)
    threshold = read_threshold(params)
    multi_label = bool(params.get("multi_label"))
    if top_k is None and threshold is None:
        return [_with_confidence(output) for output in outputs]
    shaped_outputs = []
    for output in outputs:
        scores = distribution(output)
        if scores is None:
            shaped_outputs.append(output)
            continue
        shaped = shape_scores(scores, top_k=top_k, threshold=threshold, multi_label=multi_label)
        extra = {key: value for key, value in output.items() if key not in shaped}
        if task in OWN_SCORE_TASKS:
            shaped["score"] = output.get("score", shaped["score"])
        shaped_outputs.append({**shaped, **extra})
    return shaped_outputs


def _with_confidence(output: Any) -> Any:
    # Every classification-like answer says how sure it is, whoever built it.
    if isinstance(output, dict) and "confidence" not in output:
        scores = distribution(output)
        if scores:
            output = {**output, "confidence": round(max(scores.values()), DECIMALS)}
    return output


# --- ensembles --------------------------------------------------------------------------------------

def read_ensemble(params: Mapping[str, Any]) -> list[tuple[str, float]] | None:
    """`params.ensemble` as [(model, weight), ...]; None when the request has no ensemble."""
    members = params.get("ensemble")
    if members is None:
        return None
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_ENSEMBLE_MEMBERS:
        raise JobInputError("invalid_params", "params.ensemble must be a list of 1 to "
                            f"{MAX_ENSEMBLE_MEMBERS} {{\"model\": name, \"weight\": number}} objects")
    parsed: list[tuple[str, float]] = []
    for index, member in enumerate(members):
        if not isinstance(member, dict) or not isinstance(member.get("model"), str) \
                or set(member) - {"model", "weight"}:
            raise JobInputError("invalid_params", f"params.ensemble[{index}] must be "
                                '{"model": name, "weight": number}')
        weight = member.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight <= 0:
            raise JobInputError("invalid_params", f"params.ensemble[{index}].weight must be a positive number")
        parsed.append((member["model"], float(weight)))
    return parsed


def weighted_average(distributions: Sequence[Mapping[str, float]], weights: Sequence[float]) -> dict[str, float]:
    """Weighted mean of score distributions; a label a model did not score counts as 0 for that model."""
    if len(distributions) != len(weights) or not distributions:
        raise ValueError("one weight per distribution, at least one")
    total = float(sum(weights))
    labels: dict[str, float] = {}
    for scores, weight in zip(distributions, weights):
        for label, score in scores.items():
            labels[label] = labels.get(label, 0.0) + weight * float(score)
    return {label: value / total for label, value in labels.items()}


def combine_ensemble(task: str, member_outputs: Sequence[Sequence[Any]],
                     weights: Sequence[float]) -> list[Any]:
    """One output per item from each member's outputs (members in order, same items in the same order).

    Items that failed in any member fail in the ensemble (the first member's error is kept).
    """
    combined: list[Any] = []
    for item_outputs in zip(*member_outputs):
        failed = next((output for output in item_outputs if _is_item_error(output)), None)
        if failed is not None:
            combined.append(failed)
            continue
        scores = [distribution(output) for output in item_outputs]
        if any(entry is None for entry in scores):
            raise JobInputError("ensemble_not_supported",
                                f"task {task!r} does not produce label scores that can be averaged")
        shaped = shape_scores(weighted_average(scores, weights))  # type: ignore[arg-type]
        if task in OWN_SCORE_TASKS:
            own = [output.get("score") for output in item_outputs]
            if all(isinstance(value, (int, float)) for value in own):
                shaped["score"] = round(sum(w * v for w, v in zip(weights, own)) / sum(weights), DECIMALS)
        combined.append(shaped)
    return combined


def _is_item_error(output: Any) -> bool:
    return isinstance(output, dict) and set(output) == {"index", "error"}
