"""Routes stay thin: a blueprint parses, authorizes, calls a service and shapes the answer. The database
is reached through the core's services only, so no blueprint imports SQLAlchemy or the session module, or
writes a SQL statement with `text(...)`."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

BLUEPRINTS = Path(__file__).resolve().parents[2] / "cortex_web" / "blueprints"
FORBIDDEN_MODULES = ("sqlalchemy", "cortex_tasks.core.storage.db")


def _is_forbidden(module: str) -> bool:
    return any(module == forbidden or module.startswith(forbidden + ".") for forbidden in FORBIDDEN_MODULES)


def database_access(source: str) -> list[str]:
    """Each line of the source that imports a forbidden module or calls `text(...)`, as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {alias.name}" for alias in node.names if _is_forbidden(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_forbidden(node.module or ""):
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module == "cortex_tasks.core.storage":
            found += [f"{node.lineno}: from cortex_tasks.core.storage import db"
                      for alias in node.names if alias.name == "db"]
        elif isinstance(node, ast.Call):
            function = node.func
            name = function.id if isinstance(function, ast.Name) else (
                function.attr if isinstance(function, ast.Attribute) else None)
            if name == "text":
                found.append(f"{node.lineno}: text(...)")
    return found


def test_the_blueprints_folder_is_where_this_test_looks():
    assert (BLUEPRINTS / "predict.py").is_file()


@pytest.mark.parametrize("path", sorted(BLUEPRINTS.glob("*.py")), ids=lambda path: path.name)
def test_a_blueprint_reaches_no_database_itself(path: Path):
    assert database_access(path.read_text()) == [], f"{path.name} reaches the database; use a core service"


@pytest.mark.parametrize("source", [
    "import sqlalchemy",
    "import sqlalchemy.orm as orm",
    "from sqlalchemy import select",
    "from sqlalchemy.orm import Session",
    "from cortex_tasks.core.storage.db import session_scope",
    "from cortex_tasks.core.storage import db",
    "rows = session.execute(text('SELECT 1'))",
    "rows = session.execute(sqlalchemy.text('SELECT 1'))",
])
def test_the_check_catches_each_way_in(source: str):
    assert database_access(source) != []


def test_the_check_lets_core_services_through():
    assert database_access("from cortex_tasks.core.storage.object_store import ObjectStoreError\n"
                           "from cortex_tasks.core.batch.progress import failed_items\n"
                           "items = failed_items(job_id)\n") == []
