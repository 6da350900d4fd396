"""Discovery of user model folders (models/user_models.py) and their catalogue entries: torch-free."""
from __future__ import annotations

import json
import os

import pytest

from cortex_tasks.core.catalogue import TASKS, UnknownName, find_model, model_entry, task_model_names
from cortex_tasks.core.catalogue.user_models import find_user_model, list_user_models, models_dir
from cortex_tasks.core.settings import reset_settings_cache


def write_model(folder, architecture="DistilBertForSequenceClassification", labels=("neg", "pos"),
                weights="model.safetensors", tokenizer="tokenizer.json"):
    folder.mkdir(parents=True)
    config = {"architectures": [architecture], "id2label": {str(i): label for i, label in enumerate(labels)}}
    (folder / "config.json").write_text(json.dumps(config))
    if weights:
        (folder / weights).write_bytes(b"weights")
    if tokenizer:
        (folder / tokenizer).write_text("{}")
    return folder


@pytest.fixture()
def models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEX_MODELS_DIR", str(tmp_path / "models"))
    reset_settings_cache()
    return tmp_path / "models"


def test_models_dir_defaults_to_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("CORTEX_MODELS_DIR", raising=False)
    monkeypatch.setenv("CORTEX_DATA_DIR", str(tmp_path))
    reset_settings_cache()
    assert models_dir() == tmp_path.resolve() / "models"


def test_a_sequence_classifier_folder_is_found_with_its_labels(models_folder):
    write_model(models_folder / "reviews", labels=("negative", "positive"))
    found = find_user_model("reviews")
    assert found is not None
    assert (found.task, found.architecture, found.labels) == (
        "classify", "DistilBertForSequenceClassification", ("negative", "positive"))
    assert found.version.startswith("local-")
    entry = find_model("reviews")
    assert entry is not None and entry.task == "classify" and entry.version == found.version
    assert entry.loader == "cortex_tasks.runtime.models.hf_classifier:HFSequenceClassifier"
    assert str(models_folder) not in entry.description  # server paths are not shown to clients


def test_incomplete_or_other_folders_are_ignored(models_folder):
    write_model(models_folder / "no-weights", weights=None)
    write_model(models_folder / "no-tokenizer", tokenizer=None)
    write_model(models_folder / "a-generator", architecture="LlamaForCausalLM")
    (models_folder / "broken").mkdir()
    (models_folder / "broken" / "config.json").write_text("{not json")
    (models_folder / "stray-file.txt").write_text("x")
    write_model(models_folder / "roberta-ok", architecture="RobertaForSequenceClassification",
                weights="pytorch_model.bin", tokenizer="vocab.json")
    assert [model.name for model in list_user_models()] == ["roberta-ok"]
    assert find_user_model("no-weights") is None and find_model("a-generator") is None


def test_names_cannot_escape_the_models_folder(models_folder, tmp_path):
    write_model(tmp_path / "outside")
    for name in ("../outside", "/etc", ".hidden", "", "a/b"):
        assert find_user_model(name) is None


def test_version_changes_when_weights_are_replaced(models_folder):
    folder = write_model(models_folder / "reviews")
    before = find_user_model("reviews").version
    (folder / "model.safetensors").write_bytes(b"new weights, another size")
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert find_user_model("reviews").version != before


def test_catalogue_lookup_lists_user_models_and_keeps_tasks_apart(models_folder):
    write_model(models_folder / "reviews")
    classify = TASKS["classify"]
    assert model_entry(classify, "reviews").name == "reviews"
    assert task_model_names(classify) == [*classify.models, "reviews"]
    with pytest.raises(UnknownName) as raised:
        model_entry(TASKS["embed"], "reviews")  # a classifier folder does not serve embed
    assert "reviews" not in raised.value.valid
    with pytest.raises(UnknownName) as raised:
        model_entry(classify, "missing")
    assert raised.value.valid == ["topic-classifier", "reviews"]


def test_a_folder_named_like_a_bundled_model_does_not_shadow_it(models_folder):
    write_model(models_folder / "topic-classifier")
    assert find_model("topic-classifier").loader.endswith(":TopicClassifier")
    assert task_model_names(TASKS["classify"]) == ["topic-classifier"]
