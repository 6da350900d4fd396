"""Values PostgreSQL refuses (NUL, lone surrogates) are replaced before an audit event is written."""
from __future__ import annotations

import json

from cortex_tasks.core.audit.service import AuditRecord
from cortex_tasks.core.storage.storable import REPLACEMENT, storable


def test_nul_and_lone_surrogates_are_replaced_everywhere_in_a_value():
    value = {"a\x00b": ["x\ud800y", {"z": "ok\udfff"}], "n": 3, "none": None}
    assert storable(value) == {f"a{REPLACEMENT}b": [f"x{REPLACEMENT}y", {"z": f"ok{REPLACEMENT}"}], "n": 3,
                               "none": None}
    json.dumps(storable(value)).encode("utf-8")  # encodable now: a lone surrogate was not


def test_an_audit_row_keeps_its_shape_without_unstorable_characters():
    record = AuditRecord("security_violations", "POST /api/v1/keys\x00", "denied", actor_key_id="k\ud800",
                         resource="/api/v1/vectors/a\x00b", details={"body": {"name": "\x00"}})
    row = record.row()
    flat = json.dumps(row, default=str, ensure_ascii=False)
    assert "\x00" not in flat and "\\u0000" not in flat
    row_text = json.dumps({k: v for k, v in row.items() if k != "at"})
    assert "\\ud800" not in row_text
    assert row["resource"] == f"/api/v1/vectors/a{REPLACEMENT}b"
    assert row["details"] == {"body": {"name": REPLACEMENT}}


def test_the_first_unstorable_place_is_named_by_its_path():
    from cortex_tasks.core.storage.storable import first_unstorable

    assert first_unstorable({"a": [1, "fine", {"b": "x\x00"}]}, "params") == "params.a[2].b"
    assert first_unstorable({"k\ud800": 1}, "params") == f"params.k{REPLACEMENT}"
    assert first_unstorable({"a": ["ok", {"b": 2.5}], "c": None}, "params") is None
