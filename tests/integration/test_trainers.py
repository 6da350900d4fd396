"""The other trainers, run as the training worker runs them (service code, real registry, real object
store), then served through the registry loaders: a DistilBERT-architecture classifier fine-tuned from a
local folder (a tiny model initialised here), spaCy NER for custom labels, Prophet/ARIMA forecasting."""
from __future__ import annotations

import math
import uuid

import pytest

from cortex_tasks.core.training import runs
from cortex_tasks.core.training.submission import TrainingRequest, submit_training
from cortex_tasks.runtime.models.loaded import get_model
from cortex_tasks.runtime.training.service import run_training

# These tests also read and write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_default_tenant")]

POSITIVE = ["I loved this film, the acting was wonderful", "A delightful and charming story",
            "Great soundtrack and a brilliant cast", "One of the best movies this year",
            "Warm, funny and beautifully shot", "An excellent and moving performance",
            "I enjoyed every minute of it", "A wonderful surprise, highly recommended",
            "Brilliant direction and a great script", "Charming, clever and delightful"]
NEGATIVE = ["I hated this film, the acting was terrible", "A boring and tedious story",
            "Awful soundtrack and a weak cast", "One of the worst movies this year",
            "Cold, dull and badly shot", "A dreadful and lifeless performance",
            "I regretted every minute of it", "A terrible letdown, avoid it",
            "Clumsy direction and a poor script", "Tedious, silly and boring"]


def train_now(kind: str, model: str, rows: list, params: dict) -> dict:
    job_id = submit_training(TrainingRequest(owner="trainer-test", kind=kind, model=model,
                                             dataset={"rows": rows}, params=params, priority=4), send=False)
    outcome = run_training(job_id)
    assert outcome["status"] == "succeeded", outcome
    return outcome["result"]


def sentiment_rows() -> list[dict]:
    return ([{"text": text, "label": "positive"} for text in POSITIVE]
            + [{"text": text, "label": "negative"} for text in NEGATIVE])


def test_distilbert_fine_tuned_from_a_local_folder_is_served(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from cortex_tasks.core.catalogue.user_models import models_dir
    from cortex_tasks.runtime.training.trainers.transformer import build_tokenizer

    base = f"tiny-distilbert-{uuid.uuid4().hex[:6]}"
    folder = models_dir() / base
    folder.mkdir(parents=True)
    tokenizer = build_tokenizer(POSITIVE + NEGATIVE, vocab_size=300, max_length=64)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id, num_labels=2)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    name = f"reviews-{uuid.uuid4().hex[:6]}"
    result = train_now("transformer", name, sentiment_rows(),
                       {"base_model": base, "epochs": 3, "learning_rate": 0.003, "auto_promote": False})
    assert result["framework"] == "transformers-sequence-classification"
    assert result["stage"] == "staging" and 0 <= result["metrics"]["accuracy"] <= 1
    run = runs.get_run(runs.runs_of_model(name)[0].id)
    assert [epoch["epoch"] for epoch in run.history] == [1, 2, 3]

    served = get_model(f"{name}@1")
    outputs = served.predict(["A wonderful and charming film", "A dull and boring film"], {})
    assert {output["label"] for output in outputs} <= {"positive", "negative"}
    assert all(math.isclose(sum(item["score"] for item in output["labels"]), 1, abs_tol=1e-3) for output in outputs)

    initialised = train_now("transformer", f"fresh-{uuid.uuid4().hex[:6]}", sentiment_rows(),
                            {"init": {"dim": 16, "layers": 1, "heads": 2, "vocab_size": 200}, "epochs": 1,
                             "auto_promote": False})
    assert initialised["version"] == 1


def ner_rows() -> list[dict]:
    cities = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quito", "Dakar", "Riga", "Perth", "Accra"]
    carriers = ["Maersk", "Cosco", "Evergreen", "Hapag", "Zim"]
    rows = []
    for i in range(30):
        city, carrier = cities[i % len(cities)], carriers[i % len(carriers)]
        text = f"Order {100 + i} shipped to {city} with {carrier} on Monday."
        start_city = text.index(city)
        start_carrier = text.index(carrier)
        rows.append({"text": text, "entities": [[start_city, start_city + len(city), "CITY"],
                                                {"start": start_carrier, "end": start_carrier + len(carrier),
                                                 "label": "CARRIER"}]})
    return rows


def test_spacy_ner_learns_custom_labels_and_serves_offsets():
    name = f"shipping-ner-{uuid.uuid4().hex[:6]}"
    result = train_now("ner", name, ner_rows(), {"epochs": 15, "auto_promote": False})
    assert result["framework"] == "spacy-ner"
    assert set(result["metrics"]["per_label"]) <= {"CITY", "CARRIER"} and result["metrics"]["f1"] > 0.5

    served = get_model(f"{name}@1")
    text = "Order 777 shipped to Oslo with Maersk on Monday."
    entities = served.predict([text], {})[0]["entities"]
    assert {"label": "CITY", "text": "Oslo", "start": 21, "end": 25} in entities


def test_ner_validation_reports_misaligned_and_overlapping_spans():
    from cortex_tasks.core.jobs.store import get_job

    rows = ner_rows()
    rows[0]["entities"] = [[0, 3, "CITY"]]  # "Ord": not a token
    rows[1]["entities"] = [[0, 5, "CITY"], [2, 9, "CITY"]]
    job_id = submit_training(TrainingRequest(owner="trainer-test", kind="ner", model=f"bad-ner-{uuid.uuid4().hex[:6]}",
                                             dataset={"rows": rows}, params={}, priority=4), send=False)
    assert run_training(job_id)["status"] == "failed"
    problems = get_job(job_id).error["details"]["validation"]["errors"]
    assert [problem["row"] for problem in problems] == [0, 1]
    assert "token boundaries" in problems[0]["problem"] and "overlaps" in problems[1]["problem"]


def test_forecast_searches_prophet_and_arima_and_serves_the_best():
    rows = [{"ds": f"2024-01-{day:02d}" if day <= 31 else None, "y": None} for day in range(1, 2)]
    import datetime

    start = datetime.date(2024, 1, 1)
    rows = [{"ds": (start + datetime.timedelta(days=i)).isoformat(),
             "y": round(50 + 0.3 * i + 6 * math.sin(2 * math.pi * i / 7), 3)} for i in range(84)]
    name = f"demand-{uuid.uuid4().hex[:6]}"
    result = train_now("forecast", name, rows, {"method": "auto", "horizon": 14})
    assert result["framework"] in ("prophet", "statsmodels-arima")
    assert result["metrics"]["smape"] < 0.2 and result["metrics"]["candidates"] == 19
    assert result["gate"] is None  # an error metric has no default gate

    forecast = get_model(f"{name}@1").predict([7], {})[0]
    assert len(forecast["yhat"]) == 7 and forecast["ds"][0].startswith("2024-03-25")
    assert all(low <= mid <= high for low, mid, high in zip(forecast["yhat_lower"], forecast["yhat"],
                                                             forecast["yhat_upper"]))


def test_forecast_validation_rejects_bad_points():
    from cortex_tasks.core.jobs.store import get_job

    rows = [{"ds": f"2024-02-{day:02d}", "y": day * 1.5} for day in range(1, 20)]
    rows[3]["y"] = "lots"
    rows[5]["ds"] = "not a date"
    rows.append({"ds": "2024-02-01", "y": 3})
    job_id = submit_training(TrainingRequest(owner="trainer-test", kind="forecast", model=f"bad-fc-{uuid.uuid4().hex[:6]}",
                                             dataset={"rows": rows}, params={"method": "arima"}, priority=4), send=False)
    assert run_training(job_id)["status"] == "failed"
    problems = get_job(job_id).error["details"]["validation"]["errors"]
    assert (3, "y") in {(p["row"], p["field"]) for p in problems}
    assert (5, "ds") in {(p["row"], p["field"]) for p in problems}
    assert any("duplicate" in p["problem"] for p in problems)
