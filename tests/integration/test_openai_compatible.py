"""The OpenAI-compatible routes (/v1) driven by clients nobody here wrote: the official `openai` SDK and
LangChain's ChatOpenAI / OpenAIEmbeddings, pointed at a gateway served over real HTTP, with the session's
real gpu worker (MiniLM, SmolLM2) and the local OpenAI-compatible server behind gpt-4o-mini. Each test
acts for a tenant of its own, so the usage ledger it reads holds only its own jobs."""
from __future__ import annotations

import base64
import math
import struct
import uuid
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from cortex_tasks.core.auth.keys import create_key
from tests.support.serving import served
from tests.support.tenants import new_tenant, tenant_keys
from tests.support.waiting import wait_for

EMBEDDER, GENERATOR = "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def gateway_url(app, workers) -> Iterator[str]:
    with served(app) as url:
        yield url


@pytest.fixture()
def tenant_key() -> dict[str, str]:
    return tenant_keys(new_tenant("oai"))


@pytest.fixture()
def client(gateway_url, tenant_key) -> openai.OpenAI:
    # Generation on a busy CPU worker (and a model's first load) can take a while.
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=tenant_key["inference_user"], timeout=300,
                         max_retries=0)


def predict_embeddings(gateway_url: str, key: str, texts: list[str]) -> list[list[float]]:
    answer = httpx.post(f"{gateway_url}/api/v1/predict", headers={"Authorization": f"Bearer {key}"},
                        json={"task": "embed", "model": EMBEDDER, "inputs": texts, "wait": 30}, timeout=300)
    assert answer.status_code == 200, answer.text
    return answer.json()["outputs"]


def usage(gateway_url: str, key: str, **query: str) -> dict:
    answer = httpx.get(f"{gateway_url}/api/v1/usage", headers={"Authorization": f"Bearer {key}"}, params=query)
    assert answer.status_code == 200, answer.text
    return answer.json()


def settled_usage(gateway_url: str, key: str, settled: Callable[[dict], bool], **query: str) -> dict:
    """The ledger once it shows what `settled` expects: a prediction's row and worker time are written just
    after its answer (core/jobs/write_behind.py), so a read at once may come a moment before them."""
    def read() -> dict | None:
        ledger = usage(gateway_url, key, **query)
        return ledger if settled(ledger) else None

    return wait_for(read, 30, "the usage ledger to show the jobs just answered")


def test_models_lists_the_embedding_and_generation_models(client):
    listed = {model.id: model for model in client.models.list()}
    assert {EMBEDDER, GENERATOR, "gpt-4o-mini", "text-embedding-3-small"} <= set(listed)
    assert not {"topic-classifier", "minilm-zero-shot"} & set(listed)  # other tasks are not OpenAI's
    assert listed[EMBEDDER].owned_by == "cortex" and listed["gpt-4o-mini"].owned_by == "openai"


def test_models_honours_the_keys_model_list(gateway_url):
    tenant = new_tenant("oai")
    limited = create_key("inference_user", name="embedder only", tier="unlimited", tenant=tenant,
                         models=[EMBEDDER]).key
    models = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=limited, max_retries=0).models.list()
    assert [model.id for model in models] == [EMBEDDER]


def test_sdk_embeddings_equal_cortexs_own_predict_embeddings(client, gateway_url, tenant_key):
    texts = [f"The ferry to the island leaves at {uuid.uuid4().hex[:6]}.", "Markets opened higher on Monday."]
    expected = predict_embeddings(gateway_url, tenant_key["inference_user"], texts)
    # The SDK asks for base64 unless told otherwise, and decodes it: the float32 round trip is exact to 1e-6.
    answer = client.embeddings.create(model=EMBEDDER, input=texts)
    assert [item.index for item in answer.data] == [0, 1] and answer.model == EMBEDDER
    for got, want in zip(answer.data, expected):
        assert len(got.embedding) == 384 and max(abs(a - b) for a, b in zip(got.embedding, want)) < 1e-6
    floats = client.embeddings.create(model=EMBEDDER, input=texts[0], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(expected[0], abs=1e-9)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == math.ceil(len(texts[0]) / 4)


def test_more_inputs_than_one_job_takes_are_answered_in_order(client, gateway_url, tenant_key):
    # LangChain sends up to 1000 texts at once; /predict takes 32 per job: the route runs several jobs.
    texts = [f"Sentence number {index} about {uuid.uuid4().hex[:6]}." for index in range(70)]
    answer = client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    assert [item.index for item in answer.data] == list(range(70))
    expected = predict_embeddings(gateway_url, tenant_key["inference_user"], [texts[0], texts[33], texts[69]])
    for index, want in zip((0, 33, 69), expected):
        assert answer.data[index].embedding == pytest.approx(want, abs=1e-9)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=EMBEDDER, input=["fine", "x" * 10_001])
    assert refused.value.body["param"] == "input" and "10000" in refused.value.body["message"]


def test_base64_is_little_endian_float32(gateway_url, tenant_key):
    answer = httpx.post(f"{gateway_url}/v1/embeddings", timeout=300,
                        headers={"Authorization": f"Bearer {tenant_key['inference_user']}"},
                        json={"model": EMBEDDER, "input": "A tide table.", "encoding_format": "base64"})
    raw = base64.b64decode(answer.json()["data"][0]["embedding"])
    vector = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(vector) == 384 and abs(sum(v * v for v in vector) - 1) < 1e-4  # MiniLM's vectors are unit length


def test_langchain_openai_embeddings_equal_predict_embeddings(gateway_url, tenant_key):
    from langchain_openai import OpenAIEmbeddings

    texts = ["A lighthouse keeper's log.", f"Rain expected on {uuid.uuid4().hex[:6]}."]
    # check_embedding_ctx_length=False: LangChain sends the texts, not tiktoken token arrays (refused here).
    embeddings = OpenAIEmbeddings(model=EMBEDDER, base_url=f"{gateway_url}/v1",
                                  api_key=tenant_key["inference_user"], check_embedding_ctx_length=False)
    expected = predict_embeddings(gateway_url, tenant_key["inference_user"], texts)
    for got, want in zip(embeddings.embed_documents(texts), expected):
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-6
    assert max(abs(a - b) for a, b in zip(embeddings.embed_query(texts[0]), expected[0])) < 1e-6


def test_token_arrays_are_refused_with_the_reason(client):
    for tokens in ([791, 11013, 13], [[791, 11013], [13]]):
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model=EMBEDDER, input=tokens)
        error = refused.value.body
        assert refused.value.status_code == 400 and error["code"] == "token_arrays_not_supported"
        assert error["param"] == "input" and "check_embedding_ctx_length=False" in error["message"]


def test_bad_key_is_401_in_openais_shape(gateway_url):
    bad = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="ctx_not_a_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.models.list()
    assert refused.value.status_code == 401
    assert refused.value.body == {"message": "The API key is unknown, expired or revoked.",
                                  "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    missing = httpx.post(f"{gateway_url}/v1/embeddings", json={"model": EMBEDDER, "input": "x"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as refused:
        client.embeddings.create(model="no-such-model", input="text")
    assert refused.value.body["code"] == "model_not_found" and refused.value.body["param"] == "model"
    assert EMBEDDER in refused.value.body["message"]
    with pytest.raises(openai.NotFoundError):  # an embedding model is not a chat model
        client.chat.completions.create(model=EMBEDDER, messages=[{"role": "user", "content": "Hi"}])


def test_what_cortex_cannot_do_is_a_400_naming_the_parameter(client):
    hello = [{"role": "user", "content": "Hi"}]
    cases = [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"messages": [{"role": "assistant", "content": "Hello"}]}, "messages"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ]
    for extra, param in cases:
        body = {"model": GENERATOR, "messages": hello, **extra}
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**body)
        assert refused.value.body["param"] == param, (extra, refused.value.body)
        assert refused.value.body["type"] == "invalid_request_error"


def test_rate_limit_is_429_with_retry_after(gateway_url):
    # The default tier: a burst of 5 per (key, model); the 6th request at once is refused.
    key = create_key("inference_user", name=f"oai limits {uuid.uuid4().hex[:6]}", tier="default").key
    statuses = []
    for _ in range(7):
        answer = httpx.post(f"{gateway_url}/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                            json={"model": EMBEDDER, "input": "The same short text."}, timeout=300)
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            break
    assert statuses[-1] == 429, statuses
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json()["error"]["type"] == "rate_limit_error"
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"


def test_chat_completion_by_the_local_generator(client):
    answer = client.chat.completions.create(
        model=GENERATOR, max_tokens=12,
        messages=[{"role": "system", "content": "You answer in one short sentence."},
                  {"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."},
                  {"role": "user", "content": "And of Italy?"}])
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == GENERATOR
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 10 and 0 < answer.usage.completion_tokens <= 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streamed_chunks_join_into_the_full_answer(client, gateway_url, tenant_key):
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    stream = client.chat.completions.create(model=GENERATOR, messages=messages, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert len([piece for piece in pieces if piece]) > 1  # it really streamed
    assert finish in (["stop"], ["length"]) and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    streamed = "".join(pieces)
    # The job's record holds the whole answer the worker generated; the chunks are all of it.
    job_id = chunks[0].id.removeprefix("chatcmpl-")
    job = httpx.get(f"{gateway_url}/api/v1/jobs/{job_id}",
                    headers={"Authorization": f"Bearer {tenant_key['inference_user']}"}).json()
    assert job["status"] == "succeeded" and job["result"]["outputs"][0]["text"] == streamed
    # Greedy decoding: the same answer as without streaming.
    whole = client.chat.completions.create(model=GENERATOR, messages=messages, max_tokens=24)
    assert whole.choices[0].message.content == streamed
    # The streamed job's generating time is in the ledger too, beside the other one's.
    row = next(item for item in usage(gateway_url, tenant_key["inference_user"])["items"]
               if item["model"] == GENERATOR)
    assert row["worker_jobs"] == 2 and row["worker_items"] == 2 and row["worker_seconds"] > 0


def test_langchain_chat_openai_invoke_and_stream(gateway_url, tenant_key):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=GENERATOR, base_url=f"{gateway_url}/v1", api_key=tenant_key["inference_user"],
                      max_tokens=16, temperature=0, timeout=300, max_retries=0)
    question = "Say hello to the reader."
    answer = chat.invoke(question)
    assert answer.content.strip() and answer.usage_metadata["output_tokens"] > 0
    streamed = "".join(str(chunk.content) for chunk in chat.stream(question))
    assert streamed == answer.content


def test_chat_completion_by_a_configured_openai_model(client, fake_openai, gateway_url, tenant_key):
    answer = client.chat.completions.create(model="gpt-4o-mini", max_tokens=20,
                                            messages=[{"role": "user", "content": "Write a haiku about tea."}])
    assert answer.model == "gpt-4o-mini" and answer.choices[0].message.content
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    ledger = usage(gateway_url, tenant_key["inference_user"], group_by="model")
    row = next(item for item in ledger["items"] if item["model"] == "gpt-4o-mini")
    assert row["openai_calls"] == 1 and row["prompt_tokens"] == answer.usage.prompt_tokens
    assert row["worker_seconds"] == 0  # an OpenAI call is billed in tokens, not worker time


def test_usage_ledger_records_worker_seconds_of_v1_and_predict_jobs(client, gateway_url, tenant_key):
    key = tenant_key["inference_user"]
    texts = [f"Ledger line {index} {uuid.uuid4().hex[:8]}" for index in range(5)]
    client.embeddings.create(model=EMBEDDER, input=texts)
    predict_embeddings(gateway_url, key, [f"Another line {uuid.uuid4().hex[:8]}"])
    client.chat.completions.create(model=GENERATOR, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    ledger = settled_usage(gateway_url, key, lambda ledger: sum(
        item["worker_jobs"] for item in ledger["items"] if item["model"] in (EMBEDDER, GENERATOR)) >= 3)
    assert ledger["scope"] == "own_key" and ledger["group_by"] == ["tenant", "key", "model"]
    rows = {item["model"]: item for item in ledger["items"]}
    embedder, generator = rows[EMBEDDER], rows[GENERATOR]
    assert embedder["worker_jobs"] == 2 and embedder["worker_items"] == 6 and embedder["worker_seconds"] > 0
    assert generator["worker_jobs"] == 1 and generator["worker_items"] == 1 and generator["worker_seconds"] > 0
    assert embedder["tenant"] == generator["tenant"] != "default"
    assert ledger["totals"]["worker_seconds"] == pytest.approx(embedder["worker_seconds"] + generator["worker_seconds"])
    # The same texts again: the cache answers, no model time is spent or recorded.
    client.embeddings.create(model=EMBEDDER, input=texts)
    again = {item["model"]: item for item in usage(gateway_url, key)["items"]}
    assert again[EMBEDDER]["worker_items"] == 6 and again[EMBEDDER]["worker_jobs"] == 2


def test_usage_ledger_scopes_and_query_checks(gateway_url, tenant_key, keys):
    user, admin = tenant_key["inference_user"], tenant_key["model_admin"]
    openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=user, max_retries=0, timeout=300).embeddings.create(
        model=EMBEDDER, input=f"scoped {uuid.uuid4().hex}")
    tenant_view = settled_usage(gateway_url, admin, lambda ledger: bool(ledger["items"]), group_by="key")
    assert tenant_view["scope"] == "tenant" and [set(item) >= {"key_id"} for item in tenant_view["items"]]
    assert usage(gateway_url, admin, group_by="")["items"][0]["worker_items"] >= 1  # totals only: one row
    tenant = tenant_view["tenant"]
    # Another tenant's usage is not visible to a model_admin; the platform admin may read it, or every tenant's.
    assert httpx.get(f"{gateway_url}/api/v1/usage", params={"tenant": "default"},
                     headers={"Authorization": f"Bearer {admin}"}).status_code == 404
    assert httpx.get(f"{gateway_url}/api/v1/usage", params={"all_tenants": "true"},
                     headers={"Authorization": f"Bearer {admin}"}).status_code == 403
    platform = usage(gateway_url, keys["platform_admin"], tenant=tenant, group_by="tenant")
    assert [item["tenant"] for item in platform["items"]] == [tenant]
    everyone = usage(gateway_url, keys["platform_admin"], all_tenants="true", group_by="tenant")
    assert everyone["scope"] == "all_tenants" and tenant in {item["tenant"] for item in everyone["items"]}
    # From/to bound the rows: a range in the past holds none of them.
    past = usage(gateway_url, admin, **{"from": "2020-01-01", "to": "2020-02-01"})
    assert past["items"] == [] and past["totals"]["worker_seconds"] == 0
    for bad in ({"group_by": "colour"}, {"group_by": "key,key"}, {"from": "yesterday"},
                {"from": "2030-01-01", "to": "2020-01-01"}):
        answer = httpx.get(f"{gateway_url}/api/v1/usage", params=bad, headers={"Authorization": f"Bearer {admin}"})
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_query", bad


def test_the_usage_ledger_migration_upgrades_and_downgrades():
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, inspect

    from cortex_tasks.core.storage.db import sqlalchemy_url
    from cortex_tasks.core.storage.migrate import MIGRATIONS_DIR
    from tests.support.databases import scratch_database

    with scratch_database("ledger_migration") as url:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        engine = create_engine(sqlalchemy_url(url))
        try:
            command.upgrade(config, "0014")
            columns = {column["name"] for column in inspect(engine).get_columns("worker_usage")}
            assert {"tenant", "job_id", "owner", "model", "worker_kind", "items", "worker_seconds", "cost_usd"} <= columns
            command.downgrade(config, "0010")
            assert "worker_usage" not in inspect(engine).get_table_names()
            command.upgrade(config, "0014")
            assert "worker_usage" in inspect(engine).get_table_names()
        finally:
            engine.dispose()


def test_batch_jobs_record_their_chunks_worker_seconds(gateway_url, tenant_key):
    import time

    headers = {"Authorization": f"Bearer {tenant_key['inference_user']}"}
    texts = [f"Batch ledger item {index} {uuid.uuid4().hex[:8]}" for index in range(150)]
    job_id = httpx.post(f"{gateway_url}/api/v1/batch/submit", headers=headers,
                        json={"task": "embed", "model": EMBEDDER, "inputs": texts}).json()["job_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        progress = httpx.get(f"{gateway_url}/api/v1/batch/progress/{job_id}", headers=headers).json()
        if progress["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert progress["status"] == "succeeded", progress
    row = next(item for item in usage(gateway_url, tenant_key["inference_user"])["items"] if item["model"] == EMBEDDER)
    # Two chunks (CORTEX_BATCH_CHUNK_SIZE 100), each recorded once with the seconds of its items.
    assert row["worker_jobs"] == 2 and row["worker_items"] == 150 and row["worker_seconds"] > 0
