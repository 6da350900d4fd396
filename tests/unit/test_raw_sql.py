"""One way to reach the database in services: SQLAlchemy constructs on the tables of
`core/storage/tables.py`. A module that writes a raw SQL string with sqlalchemy's `text(...)` must be listed
here with its reason, so new raw SQL is a decision, not a habit."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cortex_tasks", "cortex_web")

# Folders whose every module may use text(): schema migrations are DDL, written against the schema of their
# own revision rather than today's tables.
ALLOWED_FOLDERS = ("cortex_tasks/core/storage/migrations/",)

ALLOWED = {
    "cortex_tasks/core/storage/tables.py": "partial unique indexes' WHERE predicates are DDL",
    "cortex_tasks/core/storage/probes.py": "the readiness probe's SELECT 1",
    "cortex_tasks/core/jobs/store.py": "prediction path; per-call constructs cost ~20x text() (see begin_attempt)",
}


def raw_sql_calls(source: str) -> list[int]:
    """The lines of the source that call sqlalchemy's `text`, by whatever name it was imported."""
    tree = ast.parse(source)
    text_names: set[str] = set()  # `from sqlalchemy import text [as name]`
    module_names: set[str] = set()  # `import sqlalchemy [as name]`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "sqlalchemy":
            text_names |= {alias.asname or alias.name for alias in node.names if alias.name == "text"}
        elif isinstance(node, ast.Import):
            module_names |= {alias.asname or alias.name for alias in node.names if alias.name == "sqlalchemy"}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        by_name = isinstance(function, ast.Name) and function.id in text_names
        by_module = (isinstance(function, ast.Attribute) and function.attr == "text"
                     and isinstance(function.value, ast.Name) and function.value.id in module_names)
        if by_name or by_module:
            lines.append(node.lineno)
    return sorted(lines)


def _modules() -> list[str]:
    return sorted(path.relative_to(ROOT).as_posix() for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_the_check_finds_text_by_any_name():
    assert raw_sql_calls("from sqlalchemy import text\ntext('SELECT 1')\n") == [2]
    assert raw_sql_calls("from sqlalchemy import text as t\n\nt('SELECT 1')\n") == [3]
    assert raw_sql_calls("import sqlalchemy as sa\nsa.text('SELECT 1')\n") == [2]
    assert raw_sql_calls("import sqlalchemy\nsqlalchemy.text('SELECT 1')\n") == [2]
    # Not sqlalchemy's: a path's read_text, a local function of the same name.
    assert raw_sql_calls("path.read_text()\nsomething.text('x')\n") == []
    assert raw_sql_calls("def text(x): return x\ntext('x')\n") == []


def test_only_listed_modules_write_raw_sql():
    modules = _modules()
    assert "cortex_tasks/core/jobs/store.py" in modules
    unlisted = [f"{module}:{line}" for module in modules
                if module not in ALLOWED and not module.startswith(ALLOWED_FOLDERS)
                for line in raw_sql_calls((ROOT / module).read_text(encoding="utf-8"))]
    assert not unlisted, (f"raw SQL with text(...) in {unlisted}: write it with SQLAlchemy constructs on the "
                          "tables of core/storage/tables.py, or list the module in ALLOWED with its reason")


def test_every_listed_module_still_needs_its_place():
    # A module converted to constructs leaves the list, so the list says where raw SQL really is.
    stale = [module for module in ALLOWED if not raw_sql_calls((ROOT / module).read_text(encoding="utf-8"))]
    assert not stale, f"{stale} no longer call text(...): take them off ALLOWED"
