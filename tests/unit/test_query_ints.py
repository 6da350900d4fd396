"""Query integers (?page=, ?size=): ASCII digits, positive, at most MAX_QUERY_INT; never a 500 (a page of
10^35 overflowed the SQL OFFSET, "²" and 5,000 digits made int() raise)."""
from __future__ import annotations

import pytest
from flask import Flask

from cortex_web.errors import ApiError
from cortex_web.request_body import MAX_QUERY_INT, positive_int_arg

app = Flask(__name__)


@pytest.mark.parametrize("raw,expected", [("1", 1), ("007", 7), (str(MAX_QUERY_INT), MAX_QUERY_INT)])
def test_ok(raw, expected):
    with app.test_request_context(f"/?page={raw}"):
        assert positive_int_arg("page", 1) == expected


@pytest.mark.parametrize("raw", ["0", "000", "-1", "1.5", "²", "x", str(MAX_QUERY_INT + 1), "9" * 5000,
                                 "10" * 20])
def test_refused(raw):
    with app.test_request_context("/", query_string={"page": raw}):
        with pytest.raises(ApiError) as refused:
            positive_int_arg("page", 1)
        assert refused.value.status == 422 and refused.value.code == "invalid_query"
