"""Text PostgreSQL cannot keep (the NUL character, a lone UTF-16 surrogate) in any field that is stored or
compared with stored values: a 4xx naming the field, decided before anything is queued or written. It
was a 500 or 502 with the database's own text, and for batch params a job ran that had no row."""
from __future__ import annotations

import pytest

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Job
from cortex_web.dispatch import queue_depths

pytestmark = pytest.mark.usefixtures("in_default_tenant")

NUL, SURROGATE = "a\x00b", "a\ud800b"

CASES = [
    ("batch params", "/api/v1/batch/submit", {"task": "embed", "inputs": ["x"], "params": {"note": NUL}}, "params"),
    ("batch params key", "/api/v1/batch/submit", {"task": "embed", "inputs": ["x"], "params": {SURROGATE: 1}},
     "params"),
    ("batch input NUL", "/api/v1/batch/submit", {"task": "embed", "inputs": ["fine", NUL]}, "inputs"),
    ("batch input surrogate", "/api/v1/batch/submit", {"task": "embed", "inputs": [SURROGATE]}, "inputs"),
    ("training params", "/api/v1/training/submit",
     {"kind": "classifier", "model": "reliability-test", "dataset": {"rows": [{"text": "a", "label": "x"}]},
      "params": {"note": SURROGATE}}, "params"),
    ("training rows", "/api/v1/training/submit",
     {"kind": "classifier", "model": "reliability-test", "dataset": {"rows": [{"text": NUL, "label": "x"}]}},
     "dataset"),
    ("vector metadata", "/api/v1/vectors/reliability",
     {"items": [{"id": "1", "vector": [1.0, 2.0, 3.0], "metadata": {"tag": NUL}}]}, "metadata"),
    ("vector metadata key", "/api/v1/vectors/reliability",
     {"items": [{"id": "1", "vector": [1.0, 2.0, 3.0], "metadata": {SURROGATE: "x"}}]}, "metadata"),
    ("search filter", "/api/v1/vectors/reliability/search", {"vector": [1.0, 2.0, 3.0], "filter": {"tag": NUL}},
     "filter"),
    ("search filter surrogate", "/api/v1/vectors/reliability/search",
     {"vector": [1.0, 2.0, 3.0], "filter": {SURROGATE: "x"}}, "filter"),
    ("document metadata", "/api/v1/documents", {"documents": [{"content": "text", "meta": {"tag": SURROGATE}}]},
     "meta"),
    ("qa filters", "/api/v1/qa", {"question": "what?", "filters": {"tag": NUL}}, "filters"),
    ("predict params", "/api/v1/predict", {"task": "embed", "inputs": ["x"], "params": {"x": [SURROGATE]}}, "params"),
]


@pytest.fixture()
def nothing_written(app):
    def counts():
        with session_scope() as session:
            jobs = session.query(Job).count()
        return jobs, queue_depths(app.extensions["cortex_redis"])

    before = counts()
    yield
    assert counts() == before


@pytest.mark.parametrize("name,path,body,field", CASES, ids=[case[0] for case in CASES])
def test_unstorable_text_is_refused_naming_the_field(admin_api, nothing_written, name, path, body, field):
    response = admin_api.post(path, body)
    assert response.status_code == 422, response.get_data(as_text=True)[:500]
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["message"], error
    assert "cannot be stored" in error["message"], error
    assert "psycopg" not in str(error) and "invalid byte sequence" not in str(error)


def test_unstorable_count_filter_is_refused(admin_api):
    response = admin_api.get('/api/v1/vectors/reliability/count?filter={"tag": "a\\u0000b"}')
    assert response.status_code == 400, response.get_data(as_text=True)[:500]
    assert response.get_json()["error"]["code"] == "invalid_filter"
    assert "filter.tag" in response.get_json()["error"]["message"]
