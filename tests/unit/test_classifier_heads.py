"""Embedding heads (models/classifier.py) and the shipped topics dataset, without a worker or MiniLM."""
from __future__ import annotations

import zlib
from collections import Counter

import numpy as np
import pytest

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.classifier import (
    DATASET_PATH,
    EmbeddingHead,
    fit_head,
    is_held_out,
    load_labelled_rows,
    multi_label_param,
    shape_scores,
    split_rows,
)

TOPICS = {"sports", "business", "technology", "health", "politics", "entertainment"}


def test_shipped_dataset_is_varied_labelled_and_split_by_crc32():
    rows = load_labelled_rows()
    texts = [row.text for row in rows]
    assert len(texts) == len(set(texts)) >= 300
    single = Counter(row.labels[0] for row in rows if len(row.labels) == 1)
    assert set(single) == TOPICS and min(single.values()) >= 40
    assert sum(len(row.labels) > 1 for row in rows) >= 30
    assert all(set(row.labels) <= TOPICS for row in rows)
    train, held_out = split_rows(rows)
    assert len(train) + len(held_out) == len(rows)
    # The rule is simple enough to recompute anywhere (the integration test does, independently).
    assert [row.text for row in held_out] == [t for t in texts if zlib.crc32(t.encode()) % 5 == 0]
    assert not {row.text for row in train} & {row.text for row in held_out}
    assert set(Counter(row.labels[0] for row in held_out if len(row.labels) == 1)) == TOPICS
    assert is_held_out(held_out[0].text) and not is_held_out(train[0].text)


def clustered(seed: int = 0) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Three separable clusters in 8 dimensions, plus rows that belong to two clusters."""
    rng = np.random.default_rng(seed)
    centres = {"a": np.eye(8)[0], "b": np.eye(8)[1], "c": np.eye(8)[2]}
    vectors, labels = [], []
    for label, centre in centres.items():
        for _ in range(20):
            vectors.append(centre + rng.normal(0, 0.1, 8))
            labels.append((label,))
    for _ in range(10):
        vectors.append((centres["a"] + centres["b"]) / 2 + rng.normal(0, 0.05, 8))
        labels.append(("a", "b"))
    return np.array(vectors), labels


def test_fit_head_softmax_sums_to_one_and_one_vs_rest_is_independent():
    vectors, labels = clustered()
    head = fit_head(vectors, labels, metadata={"note": "test"})
    assert head.labels == ("a", "b", "c")
    single = head.scores(np.eye(8)[:3], multi_label=False)
    np.testing.assert_allclose(single.sum(axis=1), 1.0, atol=1e-9)
    assert list(single.argmax(axis=1)) == [0, 1, 2]
    both = head.scores(((np.eye(8)[0] + np.eye(8)[1]) / 2)[None, :], multi_label=True)[0]
    assert both[0] > 0.5 and both[1] > 0.5 and both[2] < 0.5
    assert both.sum() > 1.0  # independent sigmoid scores, not a distribution
    assert head.metadata["note"] == "test" and head.metadata["labels"] == ["a", "b", "c"]


def test_two_label_head_gives_a_proper_softmax():
    vectors, labels = clustered()
    keep = [i for i, label_set in enumerate(labels) if label_set in (("a",), ("b",))]
    head = fit_head(vectors[keep], [labels[i] for i in keep])
    scores = head.scores(np.eye(8)[:2], multi_label=False)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-9)
    assert list(scores.argmax(axis=1)) == [0, 1]


def test_head_round_trips_through_npz_without_pickle(tmp_path):
    vectors, labels = clustered()
    head = fit_head(vectors, labels, metadata={"training_rows": 70})
    path = tmp_path / "heads" / "head.npz"
    head.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["head.npz"]  # no temporary file left behind
    loaded = EmbeddingHead.load(path)
    assert loaded.labels == head.labels and loaded.metadata == head.metadata
    probe = np.random.default_rng(1).normal(size=(4, 8))
    for multi_label in (False, True):
        np.testing.assert_array_equal(loaded.scores(probe, multi_label), head.scores(probe, multi_label))
    with np.load(path, allow_pickle=False) as arrays:  # loadable with pickle disabled
        assert set(arrays.files) >= {"softmax_weights", "ovr_weights", "labels", "metadata"}


def test_fit_head_refuses_a_label_without_negatives():
    vectors = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(ValueError, match="positive and negative"):
        fit_head(vectors, [("x", "y")] * 3 + [("x",)] * 3)
    with pytest.raises(ValueError, match="two labels"):
        fit_head(vectors, [("x",)] * 6)


def test_shape_scores_ranks_labels_and_multi_label_predicts_above_half():
    [single] = shape_scores(["a", "b", "c"], np.array([[0.2, 0.7, 0.1]]))
    assert single["label"] == "b" and single["score"] == pytest.approx(0.7)
    assert [entry["label"] for entry in single["labels"]] == ["b", "a", "c"]
    [multi] = shape_scores(["a", "b", "c"], np.array([[0.9, 0.6, 0.1]]), multi_label=True)
    assert multi["predicted"] == ["a", "b"]


def test_multi_label_param_must_be_boolean():
    assert multi_label_param({}) is False
    assert multi_label_param({}, default=True) is True
    assert multi_label_param({"multi_label": True}) is True
    with pytest.raises(JobInputError):
        multi_label_param({"multi_label": "yes"})


def test_dataset_path_is_packaged_data():
    assert DATASET_PATH.name == "topics.jsonl" and DATASET_PATH.parent.name == "data"
