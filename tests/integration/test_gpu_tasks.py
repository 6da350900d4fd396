"""The gpu-queue tasks beyond embed (classify, zero_shot, generate, reduce) through POST /api/v1/predict,
answered by the real gpu worker with the bundled models."""
from __future__ import annotations

import json
import math
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ZERO_SHOT_BATCHING, ZERO_SHOT_MODEL

# First requests load models in the worker: the topic head is fitted (~10 s), SmolLM2 is dequantized
# and cached (~15 s), UMAP compiles its numba kernels (~10 s); far longer on a busy machine.
POLL_SECONDS = 300
DATASET = Path(__file__).resolve().parents[2] / "cortex_tasks" / "runtime" / "data" / "topics.jsonl"
# Measured 65/66 = 98.5% on the held-out single-label rows; the bar leaves room for numeric noise.
HELD_OUT_ACCURACY = 0.90


def predict(api, task: str, inputs: list[Any], **extra: Any) -> dict[str, Any]:
    return api.predict(task, inputs, poll_seconds=POLL_SECONDS, **extra)


def rejected(api, task: str, inputs: list[Any], params: dict[str, Any]) -> dict[str, Any]:
    """A request the worker refuses: 422 with the error (the model is warm, so it answers in time)."""
    response = api.post("/api/v1/predict", {"task": task, "inputs": inputs, "params": params, "wait": 30})
    assert response.status_code == 422, response.get_json()
    return response.get_json()["error"]


def scores_of(output: dict[str, Any]) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in output["labels"]}


# --- classify: the default topic classifier ------------------------------------------------------------

def held_out_rows() -> list[dict[str, Any]]:
    """Recomputed here, independently of the service code: crc32 of the UTF-8 text, modulo 5, is 0."""
    rows = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if zlib.crc32(row["text"].encode("utf-8")) % 5 == 0]


def test_topic_classifier_scores_above_the_bar_on_the_held_out_split(api, workers):
    held_out = [row for row in held_out_rows() if len(row["labels"]) == 1]
    assert len(held_out) >= 50
    outputs: list[dict[str, Any]] = []
    for start in range(0, len(held_out), 32):
        body = predict(api, "classify", [row["text"] for row in held_out[start:start + 32]])
        assert body["model"]["name"] == "topic-classifier"
        outputs.extend(body["outputs"])
    correct = sum(output["label"] == row["labels"][0] for output, row in zip(outputs, held_out))
    accuracy = correct / len(held_out)
    assert accuracy >= HELD_OUT_ACCURACY, f"held-out accuracy {accuracy:.3f} ({correct}/{len(held_out)})"
    for output in outputs:
        assert math.isclose(sum(scores_of(output).values()), 1.0, abs_tol=1e-4)
        assert len(output["labels"]) == 6 and output["confidence"] == output["score"]


def test_served_topic_head_was_fitted_without_the_held_out_texts(api, workers):
    """The head the worker fitted and cached (the one it serves) lists the texts it was trained on."""
    import hashlib

    import numpy as np

    from cortex_tasks.core.settings import data_dir

    predict(api, "classify", ["Make sure the head exists."])
    [head_file] = (data_dir() / "model-cache" / "topic-classifier").glob("head-*.npz")
    with np.load(head_file, allow_pickle=False) as arrays:
        metadata = json.loads(str(arrays["metadata"]))
    trained_on = set(metadata["training_text_sha256_16"])
    held_out = {hashlib.sha256(row["text"].encode()).hexdigest()[:16] for row in held_out_rows()}
    all_rows = DATASET.read_text(encoding="utf-8").strip().splitlines()
    assert not trained_on & held_out
    assert metadata["training_rows"] == len(trained_on) == len(all_rows) - len(held_out)


def test_multi_label_gives_independent_scores(api, workers):
    texts = ["Shares in the football club soared after a billionaire investor bought it.",
             "The goalkeeper saved two penalties in the shootout."]
    both, sport = predict(api, "classify", texts, params={"multi_label": True})["outputs"]
    assert scores_of(both)["sports"] > 0.5 and scores_of(both)["business"] > 0.5
    assert sum(scores_of(both).values()) > 1.2  # not a distribution
    assert set(both["predicted"]) == {"sports", "business"}
    assert sport["predicted"] == ["sports"]
    single = predict(api, "classify", texts[:1])["outputs"][0]
    assert math.isclose(sum(scores_of(single).values()), 1.0, abs_tol=1e-4)


def test_classify_top_k_and_bad_params(api, workers):
    output = predict(api, "classify", ["The senate passed the budget bill."], params={"top_k": 2})["outputs"][0]
    assert output["label"] == "politics" and len(output["labels"]) == 2
    error = rejected(api, "classify", ["x"], {"multi_label": "sometimes"})
    assert error["code"] == "invalid_params"


# --- classify: a user's Hugging Face folder ------------------------------------------------------------

TICKETS = {"greeting": ["hello there friend", "good morning to you", "hi how are you", "hello and welcome"],
           "complaint": ["my order arrived broken", "the screen is broken again", "refund my broken parcel",
                         "this is terrible and broken"]}


def build_tiny_distilbert(folder: Path) -> None:
    """A 2-layer, 32-wide DistilBERT with a word-level tokenizer, fitted on eight sentences in a second:
    enough that its answers prove the trained weights (not a fresh initialisation) were loaded."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    words = sorted({word for texts in TICKETS.values() for text in texts for word in text.split()})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=64)
    labels = sorted(TICKETS)
    config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, pad_token_id=0, num_labels=len(labels),
                              id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(config)
    texts = [text for label in labels for text in TICKETS[label]]
    targets = torch.tensor([labels.index(label) for label in labels for _ in TICKETS[label]])
    encoded = fast(texts, padding=True, return_tensors="pt")
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(40):
        loss = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], labels=targets).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_tickets_model() -> str:
    from cortex_tasks.core.catalogue.user_models import models_dir

    # Written into the models folder the running worker and gateway already use: folders are found at
    # lookup time, so no restart is needed.
    build_tiny_distilbert(models_dir() / "tiny-tickets")
    return "tiny-tickets"


def test_hugging_face_folder_loads_through_classify(api, workers, tiny_tickets_model):
    body = predict(api, "classify", ["hello friend", "my parcel arrived broken"], model=tiny_tickets_model)
    assert body["model"]["name"] == "tiny-tickets" and body["model"]["version"].startswith("local-")
    greeting, complaint = body["outputs"]
    assert greeting["label"] == "greeting" and complaint["label"] == "complaint"
    assert set(scores_of(greeting)) == {"greeting", "complaint"}
    assert math.isclose(sum(scores_of(greeting).values()), 1.0, abs_tol=1e-4)
    multi = predict(api, "classify", ["hello friend"], model=tiny_tickets_model,
                    params={"multi_label": True})["outputs"][0]
    assert multi["predicted"] == ["greeting"]


def test_unknown_classifier_lists_bundled_and_folder_models(api, workers, tiny_tickets_model):
    response = api.post("/api/v1/predict", {"task": "classify", "inputs": ["x"], "model": "no-such-model"})
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "unknown_model"
    assert {"topic-classifier", tiny_tickets_model} <= set(error["details"]["valid"])


# --- zero_shot --------------------------------------------------------------------------------------------

def test_zero_shot_picks_the_obvious_label_and_scores_sum_to_one(api, workers):
    texts = ["The striker scored a hat-trick in the cup final.",
             "Preheat the oven to 200 degrees and knead the dough for ten minutes.",
             "The central bank raised interest rates by half a point."]
    labels = ["sports", "cooking", "finance"]
    body = predict(api, "zero_shot", texts, params={"labels": labels})
    assert body["model"]["name"] == "minilm-zero-shot"
    assert [output["label"] for output in body["outputs"]] == labels
    for output in body["outputs"]:
        assert output["method"] == "embedding-similarity"  # says it is not an NLI model
        assert set(scores_of(output)) == set(labels)
        assert math.isclose(sum(scores_of(output).values()), 1.0, abs_tol=1e-4)


def test_zero_shot_uses_label_descriptions(api, workers):
    # Opaque label names: only the descriptions say which is which.
    output = predict(api, "zero_shot", ["Terrible service, the food was cold and the waiter was rude."],
                     params={"labels": ["A", "B"], "descriptions": {"A": "A happy, positive review.",
                                                                    "B": "An angry, negative complaint."}})
    assert output["outputs"][0]["label"] == "B"


def test_zero_shot_is_batched_as_configured_for_it(api, workers):
    """The session's gpu worker batches minilm-zero-shot at most 3 items per model call
    (CORTEX_BATCHING_PER_MODEL, conftest.py), other models as the global settings say."""
    from cortex_tasks.core.registry import stats

    health = api.get(f"/api/v1/health/model/{ZERO_SHOT_MODEL}").get_json()
    assert health["batching"][workers["gpu"].hostname] == ZERO_SHOT_BATCHING  # 3 items, 7 ms
    embed = api.get("/api/v1/health/model/all-MiniLM-L6-v2").get_json()
    assert embed["batching"][workers["gpu"].hostname] == {"max_batch_size": 32, "max_wait_ms": 2.0}

    before = stats.read(ZERO_SHOT_MODEL, "1")
    texts = [f"Batching check {uuid.uuid4().hex}" for _ in range(10)]  # new texts: the cache has none
    body = predict(api, "zero_shot", texts, params={"labels": ["sports", "cooking"]})
    assert len(body["outputs"]) == 10
    # Model calls are counted by a helper thread of the worker, a moment after the answer.
    deadline = time.monotonic() + 10
    while (after := stats.read(ZERO_SHOT_MODEL, "1"))["item_count"] < before["item_count"] + 10:
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.1)
    assert after["item_count"] - before["item_count"] == 10
    assert after["request_count"] - before["request_count"] == 4  # 3 + 3 + 3 + 1


def test_zero_shot_needs_two_to_twenty_labels(api, workers):
    predict(api, "zero_shot", ["warm up"], params={"labels": ["a", "b"]})
    assert rejected(api, "zero_shot", ["x"], {"labels": ["only"]})["code"] == "invalid_params"
    assert rejected(api, "zero_shot", ["x"], {"labels": [str(i) for i in range(21)]})["code"] == "invalid_params"
    assert rejected(api, "zero_shot", ["x"], {})["code"] == "invalid_params"


# --- generate ---------------------------------------------------------------------------------------------

def test_generate_respects_max_tokens(api, workers):
    body = predict(api, "generate", ["Write a short sentence about the sea."],
                   params={"max_tokens": 8, "temperature": 0})
    assert body["model"]["name"] == "SmolLM2-135M-Instruct"
    output = body["outputs"][0]
    assert output["text"].strip()
    assert 1 <= output["generated_tokens"] <= 8
    assert output["finish_reason"] in ("length", "stop")


def test_generate_stops_at_a_stop_sequence(api, workers):
    body = predict(api, "generate", ["Write a short sentence about the sea."],
                   params={"max_tokens": 16, "temperature": 0, "stop": [","]})
    output = body["outputs"][0]
    assert output["text"].strip() and "," not in output["text"]
    assert output["finish_reason"] == "stop"


def test_generate_rejects_bad_params(api, workers):
    predict(api, "generate", ["Hi"], params={"max_tokens": 1})
    assert rejected(api, "generate", ["Hi"], {"max_tokens": 100_000})["code"] == "invalid_params"
    assert rejected(api, "generate", ["Hi"], {"temperature": -1})["code"] == "invalid_params"


# --- reduce -----------------------------------------------------------------------------------------------

def test_reduce_pca_of_vectors(api, workers):
    vectors = [[float(i), 2.0 * i + (i % 2), 0.5, -float(i), (i * 7) % 3] for i in range(8)]
    body = predict(api, "reduce", vectors, params={"method": "pca", "n_components": 2})
    assert body["model"]["name"] == "vector-reducer"
    coordinates = body["outputs"]
    assert len(coordinates) == 8 and all(len(point) == 2 for point in coordinates)
    first, second = zip(*coordinates)
    assert sum(x * x for x in first) > sum(y * y for y in second) > 0  # principal axis first
    three = predict(api, "reduce", vectors, params={"n_components": 3})["outputs"]
    assert all(len(point) == 3 for point in three)


def test_reduce_embeds_texts_first(api, workers):
    texts = ["The cat sat on the mat.", "A kitten slept on the rug.", "Stocks fell sharply today.",
             "Markets tumbled on Wall Street."]
    coordinates = predict(api, "reduce", texts, params={"n_components": 2})["outputs"]
    assert [len(point) for point in coordinates] == [2, 2, 2, 2]

    def distance(a: list[float], b: list[float]) -> float:
        return math.dist(a, b)

    # Paraphrases stay closer together than unrelated texts, in 2 dimensions too.
    assert distance(coordinates[0], coordinates[1]) < distance(coordinates[0], coordinates[2])
    assert distance(coordinates[2], coordinates[3]) < distance(coordinates[1], coordinates[3])


def test_reduce_umap_separates_clusters(api, workers):
    cluster_a = [[0.1 * ((i * j) % 3), 0.1 * (i % 2), 0.0, 0.05 * j, 0.0, 0.1] for i, j in zip(range(6), range(1, 7))]
    cluster_b = [[5 + value for value in point] for point in cluster_a]
    coordinates = predict(api, "reduce", cluster_a + cluster_b,
                          params={"method": "umap", "n_components": 2, "n_neighbors": 3})["outputs"]
    assert len(coordinates) == 12 and all(len(point) == 2 for point in coordinates)
    inside = max(math.dist(p, q) for group in (coordinates[:6], coordinates[6:]) for p in group for q in group)
    across = min(math.dist(p, q) for p in coordinates[:6] for q in coordinates[6:])
    assert across > inside


def test_reduce_rejects_ragged_vectors_and_bad_params(api, workers):
    predict(api, "reduce", [[1.0, 2.0], [3.0, 4.5]], params={"n_components": 1})
    error = rejected(api, "reduce", [[1.0, 2.0, 3.0], [1.0, 2.0]], {"method": "pca"})
    assert error["code"] == "ragged_vectors" and "inputs[1]" in error["message"]
    assert rejected(api, "reduce", [[1.0, 2.0], [3.0, 4.0]], {"n_components": 5})["code"] == "invalid_params"
    assert rejected(api, "reduce", [[1.0, 2.0], [3.0, 4.0]], {"method": "tsne"})["code"] == "invalid_params"
