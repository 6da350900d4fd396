"""Migration 0007 on real PostgreSQL: the passages of the old Haystack table move into one vector
collection per document collection, searchable and listable there, and a downgrade moves them back.

Runs on a database of its own, created here and dropped after, so that it can start before 0007."""
from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from cortex_tasks.core.storage.migrate import MIGRATIONS_DIR
from cortex_tasks.core.storage.vector_store import VectorStore, VectorStoreError
from tests.support.databases import scratch_database

# Calls this module makes to the stores directly act for the default tenant, as the suite's keys do.
pytestmark = pytest.mark.usefixtures("in_default_tenant")


@pytest.fixture()
def database_url() -> Iterator[str]:
    with scratch_database("cortex_migration") as url:
        yield url


def _alembic(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _vector(seed: int) -> list[float]:
    values = np.random.default_rng(seed).normal(size=384).astype(np.float32)
    return (values / np.linalg.norm(values)).tolist()


def test_passages_move_into_vector_collections_and_back(database_url):
    config = _alembic(database_url)
    command.upgrade(config, "0005")
    engine = create_engine(database_url)
    rows = [  # (id, collection, document, index, text)
        ("p1", "library", "etna", 0, "Mount Etna is in Sicily."),
        ("p2", "library", "etna", 1, "It is 3,357 metres high."),
        ("p3", "library", "coffee", 0, "Brazil grows the most coffee."),
        ("p4", "other", "etna", 0, "Etna is a town in Pennsylvania."),
    ]
    with engine.begin() as conn:
        for seed, (item_id, collection, document, index, content) in enumerate(rows):
            meta = {"collection": collection, "document_id": document, "passage_index": index,
                    "topic": "test", "indexed_at": "2026-01-01T00:00:00+00:00"}
            conn.execute(text("INSERT INTO document_passages (id, embedding, content, meta) "
                              "VALUES (:id, CAST(:embedding AS vector), :content, CAST(:meta AS jsonb))"),
                         {"id": item_id, "embedding": json.dumps(_vector(seed)), "content": content,
                          "meta": json.dumps(meta)})
        # Not searchable in either store: left out.
        conn.execute(text("INSERT INTO document_passages (id, content, meta) VALUES ('p5', 'x', "
                          "'{\"collection\": \"library\", \"document_id\": \"blank\"}')"))

    command.upgrade(config, "heads")
    store = VectorStore(engine, owner="documents")
    assert [item.name for item in store.list_collections(reserved=True)] == [
        "documents:library", "documents:other"]
    assert store.list_collections() == []  # the /vectors API does not see them, nor reach them:
    with pytest.raises(VectorStoreError):
        VectorStore(engine).count("documents:library")
    library = store.get_collection("documents:library")
    assert (library.dimension, library.metric, library.index_state) == (384, "cosine", "ready")
    assert store.count("documents:library") == 3 and store.count("documents:other") == 1
    hit = store.search("documents:library", _vector(1), k=1).hits[0]
    assert hit.id == "p2" and hit.distance == pytest.approx(0.0, abs=1e-5)
    assert hit.metadata == {"collection": "library", "document_id": "etna", "passage_index": 1, "topic": "test",
                            "indexed_at": "2026-01-01T00:00:00+00:00", "passage:content": "It is 3,357 metres high."}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('document_passages')")).scalar() is None

    command.downgrade(config, "0005")
    with engine.connect() as conn:
        # The store reads today's schema (collections per tenant): the catalogue of 0005 is read directly.
        assert conn.execute(text("SELECT count(*) FROM vector_collections WHERE name LIKE 'documents:%'")).scalar() == 0
        back = conn.execute(text("SELECT id, content, meta FROM document_passages ORDER BY id")).all()
    assert [(row.id, row.content) for row in back] == [(item_id, content) for item_id, *_, content in rows]
    assert back[1].meta == {"collection": "library", "document_id": "etna", "passage_index": 1, "topic": "test",
                            "indexed_at": "2026-01-01T00:00:00+00:00"}
    engine.dispose()
