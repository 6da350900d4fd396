"""Preprocessing steps and the offset map back to the text the client sent."""
from __future__ import annotations

import pytest

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.preprocessing import STEP_ORDER, prepare, steps_for

ALL = steps_for("ner")


def original_slice(text: str, start: int, end: int) -> str:
    prepared = prepare(text, ALL)
    mapped_start, mapped_end = prepared.to_original(start, end)
    return text[mapped_start:mapped_end]


def test_clean_text_is_untouched_and_maps_to_itself():
    prepared = prepare("Angela Merkel visited Paris.", ALL)
    assert prepared.text == "Angela Merkel visited Paris."
    assert prepared.starts is None
    assert prepared.to_original(22, 27) == (22, 27)


def test_nfkc_folds_compatibility_forms_and_composes():
    assert prepare("ＡＢＣ ﬁne", ALL).text == "ABC fine"
    assert prepare("cafe\u0301", ALL).text == "café"
    assert prepare("①", ALL).text == "1"


def test_invisible_and_control_characters_are_stripped():
    assert prepare("jo\u200bhn\u00ad.doe\ufeff@example.com", ALL).text == "john.doe@example.com"
    assert prepare("a\x00b\x7fc\u202ed", ALL).text == "abcd"
    # Zero-width joiners touching Latin text go (an evasion trick); inside emoji sequences they stay.
    assert prepare("jo\u200dhn", ALL).text == "john"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert prepare(family, ALL).text == family


def test_html_tags_go_block_tags_leave_a_break_entities_are_decoded():
    prepared = prepare("<p>Hello <b>Jo</b>hn</p><p>Smith &amp; co&#33;</p><script>x()</script>", ALL)
    assert prepared.text == "Hello John\nSmith & co!"


def test_things_that_only_look_like_tags_stay():
    text = "Mail <john@example.com> if a < b and <John Smith> agrees"
    assert prepare(text, ALL).text == text


def test_whitespace_runs_collapse_and_ends_are_trimmed():
    assert prepare("  a \t b\n\n\n c  ", ALL).text == "a b\nc"


def test_lone_surrogates_are_repaired_or_rejected():
    assert prepare("x\ud800y", ALL).text == "x\ufffdy"
    with pytest.raises(ItemError) as rejected:
        prepare("x\ud800y", steps_for("ner", {"encoding": "reject"}))
    assert rejected.value.code == "invalid_encoding"
    # With preprocessing off no model could take them either: the item fails, never the batch.
    with pytest.raises(ItemError):
        prepare("x\udfffy", steps_for("ner", False))


def test_utf8_read_as_windows_1252_is_repaired():
    assert prepare("CafÃ© naÃ¯ve â€“ ok", ALL).text == "Café naïve – ok"
    assert prepare("São Paulo, Âge", ALL).text == "São Paulo, Âge"  # real Latin-1 text stays


@pytest.mark.parametrize("text, word", [
    ("<b>Angela</b> Merkel visited Paris", "Paris"),
    ("ＡＢＣ  visited\u200b Paris", "Paris"),
    ("  Hello &amp;   Paris  ", "Paris"),
    ("CafÃ© in Paris", "Paris"),
])
def test_offsets_map_back_to_the_original_text(text, word):
    prepared = prepare(text, ALL)
    start = prepared.text.index(word)
    assert original_slice(text, start, start + len(word)) == word


def test_a_span_inside_a_replaced_unit_widens_to_the_whole_unit():
    text = "the ﬁrst &amp; last"
    prepared = prepare(text, ALL)
    assert prepared.text == "the first & last"
    assert original_slice(text, 4, 5) == "ﬁ"  # "f" came from the ligature
    assert original_slice(text, 10, 11) == "&amp;"


def test_steps_per_task_and_per_request():
    assert "html" in steps_for("ner")
    assert "html" not in steps_for("embed")
    assert "whitespace" not in steps_for("generate")
    assert steps_for("ner", False).enabled == frozenset()
    assert steps_for("ner", ["nfkc"]).enabled == frozenset({"nfkc"})
    assert "html" not in steps_for("ner", {"html": False})
    assert prepare("<b>x</b>", steps_for("ner", {"html": False})).text == "<b>x</b>"
    assert set(steps_for("ner").enabled) == set(STEP_ORDER)


@pytest.mark.parametrize("setting", [["nfkc", "stemming"], {"stemming": True}, {"html": "yes"}, "all", 3])
def test_bad_preprocess_settings_are_client_errors(setting):
    with pytest.raises(JobInputError) as error:
        steps_for("ner", setting)
    assert error.value.code == "invalid_params"
