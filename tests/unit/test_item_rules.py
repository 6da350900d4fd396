"""The shared item rules (core/validation/items.py) and the batch worker's use of them."""
from __future__ import annotations

import pytest

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.validation.items import MAX_VECTOR_VALUES, check_text, check_vector, max_text_chars


@pytest.mark.parametrize("text", ["", "   ", "x" * (max_text_chars() + 1), "bell\x07", "nul\x00", "del\x7f"])
def test_bad_texts_are_invalid_input(text: str) -> None:
    with pytest.raises(ItemError) as caught:
        check_text(text, "inputs[0]", {"index": 0})
    assert caught.value.code == "invalid_input" and caught.value.details["index"] == 0
    assert caught.value.message.startswith("inputs[0] ")


@pytest.mark.parametrize("text", ["plain", "tab\tnew\nline\r", "x" * max_text_chars(), "ünïcode ✓"])
def test_good_texts_pass(text: str) -> None:
    assert check_text(text, "t") == text


@pytest.mark.parametrize("vector", [[], [0.5] * (MAX_VECTOR_VALUES + 1), [1.0, float("nan")], [float("inf")],
                                    [1, True], [1, "2"]])
def test_bad_vectors_are_invalid_input(vector: list) -> None:
    with pytest.raises(ItemError) as caught:
        check_vector(vector, "v")
    assert caught.value.code == "invalid_input"


def test_good_vectors_pass() -> None:
    assert check_vector([1, 2.5, -3e30], "v") == [1, 2.5, -3e30]
    assert len(check_vector([0.0] * MAX_VECTOR_VALUES, "v")) == MAX_VECTOR_VALUES


def test_a_batch_item_meets_the_same_rules_as_predict() -> None:
    from cortex_tasks.runtime.batch.chunks import item_problem

    # Before the shared rules, batch chunks accepted non-finite and over-long vectors that /predict refused.
    assert item_problem("reduce", [1.0, float("inf")])["code"] == "invalid_input"
    assert item_problem("reduce", [0.5] * (MAX_VECTOR_VALUES + 1))["code"] == "invalid_input"
    assert item_problem("reduce", [1.0, 2.0]) is None
    assert item_problem("embed", "bell\x07")["code"] == "invalid_input"
    assert item_problem("embed", "x" * (max_text_chars() + 1))["code"] == "invalid_input"
    assert item_problem("embed", [1.0])["code"] == "invalid_input"  # embed takes texts only
    assert item_problem("embed", "fine") is None


def test_check_finite_looks_at_every_depth() -> None:
    from cortex_tasks.core.validation.items import check_finite

    assert check_finite({"rows": [[1.0, 2]], "name": "x"}, "i") == {"rows": [[1.0, 2]], "name": "x"}
    for bad in (float("inf"), [1.0, [float("-inf")]], {"a": {"b": float("nan")}}):
        with pytest.raises(ItemError):
            check_finite(bad, "i")
