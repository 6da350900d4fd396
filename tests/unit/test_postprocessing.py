"""Classification output shape, top_k, threshold, ensembles; VADER's label distribution."""
from __future__ import annotations

import pytest

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.postprocessing import (
    apply,
    combine_ensemble,
    read_ensemble,
    shape_scores,
    weighted_average,
)
from cortex_tasks.runtime.models.sentiment import label_scores

SCORES = {"sports": 0.1, "business": 0.6, "health": 0.3}


def test_shape_sorts_and_reports_confidence():
    shaped = shape_scores(SCORES)
    assert shaped["label"] == "business"
    assert shaped["score"] == shaped["confidence"] == 0.6
    assert [entry["label"] for entry in shaped["labels"]] == ["business", "health", "sports"]


def test_top_k_and_threshold():
    assert [e["label"] for e in shape_scores(SCORES, top_k=2)["labels"]] == ["business", "health"]
    shaped = shape_scores(SCORES, threshold=0.25)
    assert [e["label"] for e in shaped["labels"]] == ["business", "health"]
    abstained = shape_scores(SCORES, threshold=0.7)
    assert abstained["label"] is None and abstained["labels"] == [] and abstained["score"] == 0.6


def test_multi_label_predicted_uses_threshold_or_half():
    scores = {"a": 0.9, "b": 0.55, "c": 0.2}
    assert shape_scores(scores, multi_label=True)["predicted"] == ["a", "b"]
    assert shape_scores(scores, multi_label=True, threshold=0.6)["predicted"] == ["a"]


def test_apply_reshapes_only_classification_outputs():
    outputs = [shape_scores(SCORES), {"entities": []}, [0.1, 0.2]]
    applied = apply("classify", outputs, {"top_k": 1})
    assert applied[0]["labels"] == [{"label": "business", "score": 0.6}]
    assert applied[1:] == outputs[1:]


def test_apply_adds_confidence_and_keeps_a_tasks_own_score():
    bare = {"label": "x", "labels": [{"label": "x", "score": 0.7}, {"label": "y", "score": 0.3}]}
    assert apply("classify", [bare], {})[0]["confidence"] == 0.7
    sentiment = {**shape_scores({"positive": 0.9, "neutral": 0.1}), "score": 0.82}
    assert apply("sentiment", [sentiment], {"threshold": 0.5})[0]["score"] == 0.82


@pytest.mark.parametrize("params", [{"top_k": 0}, {"top_k": "2"}, {"top_k": True}, {"threshold": 1.5},
                                    {"threshold": "high"}])
def test_bad_top_k_or_threshold_is_a_client_error(params):
    with pytest.raises(JobInputError):
        apply("classify", [shape_scores(SCORES)], params)


def test_weighted_average():
    averaged = weighted_average([{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0, "c": 0.0}], [3, 1])
    assert averaged == {"a": 0.75, "b": 0.25, "c": 0.0}


def test_combine_ensemble_items_and_item_errors():
    first = [shape_scores({"pos": 0.8, "neg": 0.2}), {"index": 1, "error": {"code": "x", "message": "m"}}]
    second = [shape_scores({"pos": 0.2, "neg": 0.8}), shape_scores({"pos": 0.5, "neg": 0.5})]
    combined = combine_ensemble("classify", [first, second], [1.0, 3.0])
    assert combined[0]["label"] == "neg" and combined[0]["score"] == pytest.approx(0.65)
    assert combined[1] == first[1]
    with pytest.raises(JobInputError):
        combine_ensemble("ner", [[{"entities": []}]], [1.0])


@pytest.mark.parametrize("ensemble", [[], "vader", [{"model": 3}], [{"model": "a", "weight": 0}],
                                      [{"model": "a", "weight": -1}], [{"model": "a", "extra": 1}]])
def test_bad_ensembles_are_client_errors(ensemble):
    with pytest.raises(JobInputError):
        read_ensemble({"ensemble": ensemble})


def test_read_ensemble_defaults_weight_to_one():
    assert read_ensemble({"ensemble": [{"model": "a"}, {"model": "b", "weight": 2}]}) == [("a", 1.0), ("b", 2.0)]
    assert read_ensemble({}) is None


@pytest.mark.parametrize("compound, label", [(0.9, "positive"), (0.05, "positive"), (0.0, "neutral"),
                                             (-0.04, "neutral"), (-0.05, "negative"), (-1.0, "negative")])
def test_vader_distribution_follows_vaders_cut_offs(compound, label):
    scores = label_scores(compound)
    assert max(scores, key=scores.get) == label
    assert sum(scores.values()) == pytest.approx(1.0)
    assert all(0.0 <= value <= 1.0 for value in scores.values())
