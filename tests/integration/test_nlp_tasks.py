"""The nlp-queue tasks (ner, pii_detect, pii_mask, language, sentiment) through POST /api/v1/predict,
answered by the real prefork worker with the bundled models."""
from __future__ import annotations

from typing import Any

import pytest

# A fresh pool child loads spaCy (~5 s) or lingua (~3 s) on its first request, longer on a busy machine.
POLL_SECONDS = 180


def predict(api, task: str, inputs: list[Any], **extra: Any) -> dict[str, Any]:
    return api.predict(task, inputs, poll_seconds=POLL_SECONDS, **extra)


def entities_by(outputs: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {entity[key]: entity for entity in outputs["entities"]}


# --- ner --------------------------------------------------------------------------------------------

def test_ner_finds_person_and_city_with_offsets(api, workers):
    sentence = "Angela Merkel visited Paris last week."
    # Markup and stray whitespace are cleaned before the model, but offsets stay in the sent text.
    marked_up = "<p><b>Angela Merkel</b> visited   Paris last week.</p>"
    body = predict(api, "ner", [sentence, marked_up])
    assert body["model"]["name"] == "spacy-en-core-web-sm"
    plain, html = body["outputs"]
    person, place = entities_by(plain, "label")["PERSON"], entities_by(plain, "label")["GPE"]
    assert (person["text"], person["start"], person["end"]) == ("Angela Merkel", 0, 13)
    assert (place["text"], place["start"], place["end"]) == ("Paris", 22, 27)
    for entity in html["entities"]:
        assert marked_up[entity["start"]:entity["end"]] == entity["text"]
    assert {e["text"] for e in html["entities"] if e["label"] in ("PERSON", "GPE")} == {"Angela Merkel", "Paris"}


def test_ner_labels_filter_and_unknown_label(api, workers):
    body = predict(api, "ner", ["Angela Merkel visited Paris last week."], params={"labels": ["GPE"]})
    assert [e["label"] for e in body["outputs"][0]["entities"]] == ["GPE"]
    response = api.post("/api/v1/predict", {"task": "ner", "inputs": ["x"], "wait": 30,
                                            "params": {"labels": ["VILLAIN"]}})
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid_params"
    assert "VILLAIN" in error["message"] and "PERSON" in error["message"]  # says what is valid


# --- pii --------------------------------------------------------------------------------------------

def test_pii_detect_patterns_and_luhn(api, workers):
    body = predict(api, "pii_detect", [
        "Card 4111 1111 1111 1111 works.",
        "Card 4111 1111 1111 1112 does not.",
        "Pay to DE89 3704 0044 0532 0130 00 from 192.168.1.20 or call +1 212-555-0123.",
    ])
    valid_card, invalid_card, mixed = body["outputs"]
    card = entities_by(valid_card, "type")["CREDIT_CARD"]
    assert (card["text"], card["start"], card["end"]) == ("4111 1111 1111 1111", 5, 24)
    assert card["score"] >= 0.85
    assert "CREDIT_CARD" not in entities_by(invalid_card, "type")
    found = {entity["type"]: entity["text"] for entity in mixed["entities"]}
    assert found["IBAN"] == "DE89 3704 0044 0532 0130 00"
    assert found["IP_ADDRESS"] == "192.168.1.20"
    assert found["PHONE"] == "+1 212-555-0123"


def test_pii_mask_rules(api, workers):
    body = predict(api, "pii_mask", [
        "Contact john.doe@example.com",
        "Call +1 212-555-0123 today.",
        "John Smith lives at 221B Baker Street, London, United Kingdom.",
        "Card 4111 1111 1111 1111.",
    ])
    email, phone, address, card = body["outputs"]
    assert email["text"] == "Contact j***@example.com"
    assert email["entities"][0] | {"score": None} == {
        "type": "EMAIL", "start": 8, "end": 28, "score": None, "rule": "partial",
        "replacement": "j***@example.com", "masked_start": 8, "masked_end": 24}
    assert phone["text"] == "Call +* ***-***-0123 today."
    assert address["text"] == "[PERSON] lives at United Kingdom."
    assert card["text"] == "Card [CREDIT_CARD]."
    # The masked answer never carries the values it masked.
    assert "john" not in str(email) and "Baker" not in str(address) and "4111" not in str(card)


def test_pii_mask_rules_and_threshold_per_request(api, workers):
    text = "Write to john.doe@example.com, John Smith."
    body = predict(api, "pii_mask", [text], params={"rules": {"EMAIL": "redact", "person": "keep"}})
    assert body["outputs"][0]["text"] == "Write to [EMAIL], John Smith."
    strict = predict(api, "pii_mask", [text], params={"confidence_threshold": 0.95})
    assert strict["outputs"][0]["text"] == "Write to j***@example.com, John Smith."  # NER (0.85) left out
    response = api.post("/api/v1/predict", {"task": "pii_mask", "inputs": [text], "wait": 30,
                                            "params": {"rules": {"PHONE": "partial"}}})
    assert response.status_code == 422, response.get_json()


def test_pattern_only_pii_model(api, workers):
    body = predict(api, "pii_mask", ["Mail john.doe@example.com, Angela Merkel."], model="presidio-patterns-mask")
    assert body["model"]["name"] == "presidio-patterns-mask"
    assert body["outputs"][0]["text"] == "Mail j***@example.com, Angela Merkel."


# --- language ---------------------------------------------------------------------------------------

def test_language_tells_english_german_french(api, workers):
    body = predict(api, "language", [
        "The weather is lovely today, so we are going for a long walk in the park.",
        "Das Wetter ist heute herrlich, deshalb machen wir einen langen Spaziergang im Park.",
        "Il fait très beau aujourd'hui, alors nous allons faire une longue promenade au parc.",
    ], params={"top_k": 2})
    detected = [(output["language"], output["name"]) for output in body["outputs"]]
    assert detected == [("en", "English"), ("de", "German"), ("fr", "French")]
    for output in body["outputs"]:
        assert 0.5 < output["confidence"] <= 1.0
        assert len(output["alternatives"]) == 2
        assert all(alt["confidence"] <= output["confidence"] for alt in output["alternatives"])


# --- sentiment --------------------------------------------------------------------------------------

def test_sentiment_sign_label_and_confidence(api, workers):
    body = predict(api, "sentiment", ["I absolutely love this phone, it is wonderful!",
                                      "This was the worst service ever, truly awful.",
                                      "The meeting is at ten."])
    positive, negative, neutral = body["outputs"]
    assert positive["label"] == "positive" and positive["score"] > 0.5
    assert negative["label"] == "negative" and negative["score"] < -0.5
    assert neutral["label"] == "neutral"
    for output in body["outputs"]:
        assert -1 <= output["score"] <= 1
        assert output["confidence"] == output["labels"][0]["score"]
        assert sum(entry["score"] for entry in output["labels"]) == pytest.approx(1.0, abs=1e-4)


def test_sentiment_top_k_threshold_and_ensemble(api, workers):
    text = ["I absolutely love this phone, it is wonderful!"]
    top = predict(api, "sentiment", text, params={"top_k": 1})["outputs"][0]
    assert [entry["label"] for entry in top["labels"]] == ["positive"]
    strict = predict(api, "sentiment", text, params={"threshold": 0.99})["outputs"][0]
    assert strict["label"] is None and strict["labels"] == []
    ensemble = predict(api, "sentiment", text,
                       params={"ensemble": [{"model": "vader", "weight": 2}, {"model": "vader", "weight": 1}]})
    assert ensemble["outputs"][0]["label"] == "positive"
    assert [member["weight"] for member in ensemble["outputs"][0]["ensemble"]] == [2.0, 1.0]


# --- preprocessing through the API ------------------------------------------------------------------

def test_broken_unicode_is_repaired_or_rejected_per_request(api, workers):
    text = "Angela Merkel\ud800 visited Paris."
    body = predict(api, "ner", [text])
    assert {e["text"] for e in body["outputs"][0]["entities"]} >= {"Angela Merkel", "Paris"}
    response = api.post("/api/v1/predict", {"task": "ner", "inputs": [text], "wait": 30,
                                            "params": {"preprocess": {"encoding": "reject"}}})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_encoding"
