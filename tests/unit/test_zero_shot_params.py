"""Zero-shot request parameters and scoring (models/zero_shot.py), without MiniLM."""
from __future__ import annotations

import numpy as np
import pytest

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.zero_shot import TEMPERATURE, hypotheses_from_params, similarity_scores


def test_labels_become_hypotheses_and_descriptions_replace_them():
    labels, hypotheses = hypotheses_from_params({"labels": ["sports", "cooking"],
                                                 "descriptions": {"cooking": "recipes and kitchens"}})
    assert labels == ["sports", "cooking"]
    assert hypotheses == ["This text is about sports.", "recipes and kitchens"]


def test_custom_template_is_filled_without_format_fields():
    _, hypotheses = hypotheses_from_params({"labels": ["a", "b"], "hypothesis_template": "Topic: {label} {0}"})
    assert hypotheses == ["Topic: a {0}", "Topic: b {0}"]


@pytest.mark.parametrize("params", [
    {},
    {"labels": ["only one"]},
    {"labels": [f"l{i}" for i in range(21)]},
    {"labels": ["a", "a"]},
    {"labels": ["a", ""]},
    {"labels": ["a", 3]},
    {"labels": "a,b"},
    {"labels": ["a", "b"], "descriptions": {"c": "not a label"}},
    {"labels": ["a", "b"], "descriptions": ["a"]},
    {"labels": ["a", "b"], "descriptions": {"a": ""}},
    {"labels": ["a", "b"], "hypothesis_template": "no placeholder"},
])
def test_bad_params_are_client_errors(params):
    with pytest.raises(JobInputError) as raised:
        hypotheses_from_params(params)
    assert raised.value.code == "invalid_params"


def test_scores_are_a_softmax_over_similarities():
    texts = np.array([[1.0, 0.0], [0.0, 1.0]])
    hypotheses = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    scores = similarity_scores(texts, hypotheses)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    assert list(scores.argmax(axis=1)) == [0, 2]
    # A softer temperature spreads the scores.
    assert similarity_scores(texts, hypotheses, TEMPERATURE * 10)[0, 0] < scores[0, 0]
