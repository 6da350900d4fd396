"""What `cortex up` prints and passes on holds no secret: service URLs are printed masked, Flower's
password goes in its environment, and a model's load failure is a code and a short message."""
from __future__ import annotations

import pytest

from cortex_tasks.core.worker_records import load_failure, shown_record
from cortex_tasks.stack.flower import flower_environment
from cortex_tasks.stack.up import masked


def test_service_urls_are_printed_without_their_passwords():
    assert masked("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert masked("postgresql://cortex:s3cret@127.0.0.1:5432/cortex") == "postgresql://cortex:***@127.0.0.1:5432/cortex"
    assert masked("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_flowers_password_goes_in_its_environment():
    assert flower_environment("abc-DEF_1") == {"FLOWER_BASIC_AUTH": "admin:abc-DEF_1"}
    with pytest.raises(ValueError, match="comma"):
        flower_environment("a,b")  # Flower would read two user:password pairs


def test_a_load_failure_names_a_code_and_the_exception_type_only():
    failure = load_failure(FileNotFoundError("/secret/path/model.bin: no such file"))
    assert failure["code"] == "model_files_missing"
    assert "FileNotFoundError" in failure["message"] and "/secret" not in failure["message"]
    assert load_failure(RuntimeError("postgresql://cortex:pw@db/x refused"))["code"] == "model_load_failed"
    assert "pw@" not in load_failure(RuntimeError("postgresql://cortex:pw@db/x refused"))["message"]
    assert load_failure(ModuleNotFoundError("no module named x"))["code"] == "dependency_missing"


def test_a_record_from_an_older_worker_is_shown_without_its_exception_text():
    record = {"hostname": "w1", "failed_models": {"m": "OSError: /home/me/.cache/token=abc"}}
    assert shown_record(record)["failed_models"] == {
        "m": {"code": "model_load_failed", "message": "it raised an error; the worker's log has the details"}}
    current = {"failed_models": {"m": load_failure(MemoryError())}}
    assert shown_record(current)["failed_models"]["m"]["code"] == "out_of_memory"


def test_cortex_flower_refuses_to_start_without_a_password(monkeypatch):
    from click.testing import CliRunner

    from cortex_tasks.cli import main

    monkeypatch.delenv("CORTEX_FLOWER_PASSWORD", raising=False)
    monkeypatch.delenv("FLOWER_PASSWORD", raising=False)
    result = CliRunner().invoke(main, ["flower", "--port=5555"])
    assert result.exit_code != 0 and "set CORTEX_FLOWER_PASSWORD" in result.output


def test_the_old_password_name_is_read_with_a_warning(monkeypatch, caplog):
    from cortex_tasks.core.settings import Settings
    from cortex_tasks.stack.flower import warn_if_deprecated_name

    monkeypatch.delenv("CORTEX_FLOWER_PASSWORD", raising=False)
    monkeypatch.setenv("FLOWER_PASSWORD", "old-name")
    assert Settings().flower_password == "old-name"
    with caplog.at_level("WARNING"):
        warn_if_deprecated_name()
    assert "FLOWER_PASSWORD is deprecated" in caplog.text
    monkeypatch.setenv("CORTEX_FLOWER_PASSWORD", "new-name")
    assert Settings().flower_password == "new-name"
