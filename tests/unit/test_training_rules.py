"""The training rules the gateway applies before anything is written, run comparison and the host's
memory report: pure functions of their inputs, checked without a database."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from cortex_tasks.core.tenancy import tenant_scope

from cortex_tasks.core import machine_resources
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.training.comparison import compare_runs
from cortex_tasks.core.training.intake import (
    RetrainingSchedule,
    check_dataset,
    check_schedule,
    training_kind,
)


def _refusal(call, *args) -> CortexError:
    with pytest.raises(CortexError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize("dataset", [{}, {"rows": [], "object": "x"}, {"rows": []}, {"object": ""},
                                     {"uri": 5}, {"rows": [{"text": "a"}], "extra": 1}])
def test_a_malformed_dataset_is_refused_with_422(dataset):
    error = _refusal(check_dataset, dataset)
    assert (error.status, error.code) == (422, "invalid_dataset")


def test_a_dataset_of_rows_or_one_reference_is_accepted():
    check_dataset({"rows": [{"text": "a", "label": "x"}]})
    with tenant_scope("team-a"):
        check_dataset({"object": "train/x.jsonl", "format": "jsonl"})


def test_a_dataset_reference_reads_only_the_tenants_own_datasets_in_cortexs_store(tmp_path, monkeypatch):
    from cortex_tasks.core.settings import reset_settings_cache
    from cortex_tasks.core.training.datasets import dataset_location

    monkeypatch.setenv("CORTEX_ARTIFACT_DIR", str(tmp_path))
    reset_settings_cache()
    with tenant_scope("team-a"):
        # `object` lies in the tenant's folder whatever it names: another tenant's folder is a folder of its own.
        assert dataset_location({"object": "datasets/team-b/x.jsonl"})[1] == "datasets/team-a/datasets/team-b/x.jsonl"
        assert dataset_location({"uri": f"file://{tmp_path}/datasets/team-a/x.csv"})[1] == "datasets/team-a/x.csv"
        for elsewhere in ("datasets/team-b/x.csv", "models/team-b/m/1/model.bin", "batches/j/results.parquet"):
            error = _refusal(check_dataset, {"uri": f"file://{tmp_path}/{elsewhere}"})
            assert (error.status, error.code) == (422, "invalid_dataset"), elsewhere
            assert "datasets/team-a/" in error.message


def test_an_unknown_kind_names_the_valid_ones():
    error = _refusal(training_kind, "nope")
    assert (error.status, error.code) == (422, "unknown_kind")
    assert "classifier" in error.details["valid"]


@pytest.mark.parametrize("schedule", [RetrainingSchedule(None, None, None),
                                      RetrainingSchedule(None, "accuracy", None),
                                      RetrainingSchedule("* * *", None, None)])
def test_an_incomplete_or_malformed_schedule_is_refused(schedule):
    error = _refusal(check_schedule, schedule)
    assert (error.status, error.code) == (422, "invalid_schedule")


def test_a_cron_or_a_metric_with_a_threshold_is_a_schedule():
    check_schedule(RetrainingSchedule("0 3 * * *", None, None))
    check_schedule(RetrainingSchedule(None, "accuracy", 0.8))


def _run(run_id: str, accuracy: float | None, params: dict, phase: str = "succeeded") -> SimpleNamespace:
    return SimpleNamespace(id=run_id, kind="classifier", phase=phase, registered_version=int(run_id[-1]),
                           metrics=None if accuracy is None else {"accuracy": accuracy},
                           data_fingerprint="f" + run_id, config={"params": params})


def test_runs_are_compared_oldest_first_against_the_best():
    newest_first = [_run("r3", 0.7, {"epochs": 3}), _run("r2", 0.9, {"epochs": 5}),
                    _run("r9", None, {}, phase="failed"), _run("r1", 0.8, {"epochs": 5})]
    comparison = compare_runs(newest_first)
    assert comparison["metric"] == "accuracy" and comparison["runs_compared"] == 3
    assert [row["run_id"] for row in comparison["by_run"]] == ["r1", "r2", "r3"]
    assert [row["change"] for row in comparison["by_run"]] == [None, 0.1, -0.2]
    assert comparison["best"]["run_id"] == "r2" and comparison["latest"]["run_id"] == "r3"
    assert comparison["params_changed_since_best"] == {"epochs": {"best": 5, "latest": 3}}


def test_no_finished_run_means_nothing_compared():
    assert compare_runs([_run("r1", None, {}, phase="training")]) == {"runs_compared": 0}


def test_memory_is_read_from_meminfo_in_mib(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8192000 kB\nMemFree:         1024000 kB\nMemAvailable:    2048000 kB\n")
    monkeypatch.setattr(machine_resources, "MEMINFO_PATH", str(meminfo))
    assert machine_resources.memory_use() == {"total_mb": 8000, "available_mb": 2000, "used_percent": 75.0}


def test_memory_is_empty_where_meminfo_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.setattr(machine_resources, "MEMINFO_PATH", str(tmp_path / "absent"))
    assert machine_resources.memory_use() == {}
