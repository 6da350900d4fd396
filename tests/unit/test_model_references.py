"""Tenant-qualified model references (core/registry/references.py) and what keys on them: two tenants' `m@1`
never share a coalescer group, a cache key or a loaded model; bundled models stay shared."""
from __future__ import annotations

import pytest

from cortex_tasks.core.cache.service import keys_for
from cortex_tasks.core.registry.references import plain, plain_model_name, qualify, split_qualified
from cortex_tasks.core.tenancy import tenant_scope
from cortex_web.coalescer import group_for


def test_a_qualified_reference_round_trips():
    assert qualify("team-a", "m@1") == "team-a/m@1"
    assert split_qualified("team-a/m@1") == ("team-a", "m@1")
    assert split_qualified("m@1") == (None, "m@1")
    assert plain("team-a/m@1") == "m@1" and plain("vader") == "vader"
    assert plain_model_name("team-a/m@1") == "m" and plain_model_name("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"


@pytest.mark.parametrize("reference", ["Team-A/m@1", "/m@1", "a b/m@1"])
def test_a_prefix_that_is_no_tenant_id_is_not_a_qualifier(reference):
    assert split_qualified(reference) == (None, reference)


def test_two_tenants_models_of_one_name_have_different_cache_keys_and_groups():
    first, second = qualify("team-a", "m@1"), qualify("team-b", "m@1")
    assert keys_for("classify", first, "1", {}, ["text"]) != keys_for("classify", second, "1", {}, ["text"])
    assert group_for("classify", first, {}, 4, "gpu", "run", tenant="team-a") != \
        group_for("classify", second, {}, 4, "gpu", "run", tenant="team-b")
    # A bundled model: the same key for everyone; still one message per tenant.
    with tenant_scope("team-a"):
        shared = keys_for("embed", "all-MiniLM-L6-v2", "1", {}, ["text"])
    with tenant_scope("team-b"):
        assert keys_for("embed", "all-MiniLM-L6-v2", "1", {}, ["text"]) == shared
    assert group_for("embed", "all-MiniLM-L6-v2", {}, 4, "gpu", "run", tenant="team-a") != \
        group_for("embed", "all-MiniLM-L6-v2", {}, 4, "gpu", "run", tenant="team-b")


def test_a_worker_never_hands_out_another_tenants_loaded_model():
    from cortex_tasks.runtime.models import loaded

    sentinel = object()
    loaded._loaded["team-a/m@1"] = sentinel  # as if team-a's model were loaded in this process
    try:
        with tenant_scope("team-a"):
            assert loaded.get_model("team-a/m@1") is sentinel
        with tenant_scope("team-b"), pytest.raises(KeyError):
            loaded.get_model("team-a/m@1")
    finally:
        del loaded._loaded["team-a/m@1"]
