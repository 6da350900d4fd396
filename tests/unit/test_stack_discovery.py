"""A command that needs the stack, run where none is found, says so in one line (it used to print a 142-line
traceback ending `role "cortex" does not exist`, or wait on the system Redis for "No nodes replied")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from cortex_tasks.cli import main; main()"]
CELERY = [sys.executable, "-m", "celery", "-A", "cortex_tasks"]


def _run(argv: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name not in ("REDIS_URL", "DATABASE_URL")}
    env.update(CORTEX_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(argv, env=env, cwd=data_dir.parent, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [
    [*CLI, "keys", "list"],
    [*CLI, "jobs", "show", "0" * 32],
    [*CLI, "migrate"],
    [*CELERY, "inspect", "ping"],
], ids=["keys", "jobs", "migrate", "celery-inspect"])
def test_no_stack_is_one_clear_line(tmp_path, argv):
    data = tmp_path / "var"
    data.mkdir()
    result = _run(argv, data)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "no running Cortex found in ./var" in lines[0] and "cortex up" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_stack_file_left_by_a_stopped_stack_is_not_a_running_stack(tmp_path):
    data = tmp_path / "var"
    data.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    (data / "stack.json").write_text(json.dumps({"pid": int(finished.stdout), "redis_url": "redis://127.0.0.1:1/0",
                                                 "database_url": "postgresql://cortex@127.0.0.1:1/cortex"}))
    result = _run([*CLI, "keys", "list"], data)
    assert result.returncode != 0 and "no running Cortex found" in result.stderr


def test_help_needs_no_stack(tmp_path):
    data = tmp_path / "var"
    data.mkdir()
    result = _run([*CLI, "keys", "--help"], data)
    assert result.returncode == 0 and "create" in result.stdout


def test_a_taken_flower_port_gives_way_to_a_free_one():
    import socket

    from cortex_tasks.stack.embedded import free_port, port_or_free_one

    with socket.socket() as other_stack:  # another stack's Flower listening on "our" port
        other_stack.bind(("127.0.0.1", 0))
        other_stack.listen()
        taken = other_stack.getsockname()[1]
        chosen = port_or_free_one(taken)
        assert chosen != taken
    free = free_port()
    assert port_or_free_one(free) == free
