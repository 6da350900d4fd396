"""A wrong value for a CLI option says what is wrong, suggests the nearest valid value and lists them all."""
from __future__ import annotations

from click.testing import CliRunner

from cortex_tasks.cli import main
from cortex_tasks.cli.choices import suggestion


def test_a_wrong_role_suggests_the_nearest_one_and_lists_all(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # a stack is "found": the option fails first
    monkeypatch.setenv("DATABASE_URL", "postgresql://cortex@127.0.0.1:1/cortex")
    result = CliRunner().invoke(main, ["keys", "create", "--role", "admin"])
    assert result.exit_code == 2
    assert "did you mean 'model_admin'?" in result.output
    assert "reader, inference_user, model_admin, platform_admin" in result.output


def test_a_wrong_tier_is_refused_before_anything_is_written(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://cortex@127.0.0.1:1/cortex")  # unreachable: never used
    result = CliRunner().invoke(main, ["keys", "create", "--role", "reader", "--tier", "premum"])
    assert result.exit_code == 2
    assert "did you mean 'premium'?" in result.output and "default, premium, unlimited" in result.output


def test_no_near_value_still_lists_every_valid_one():
    assert suggestion("gold", ["default", "premium", "unlimited"], "rate-limit tier") == (
        "'gold' is not a rate-limit tier. Valid: default, premium, unlimited.")
    assert suggestion("gp", ["gpu", "nlp", "training"], "worker profile").startswith(
        "'gp' is not a worker profile; did you mean 'gpu'?")
