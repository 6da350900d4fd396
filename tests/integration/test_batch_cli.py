"""`cortex batch submit FILE --task embed` against a real gateway over HTTP: JSON Lines, CSV and Parquet
in, a progress bar, results written in input order (more than 1000 inputs become several batches)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cortex_tasks.cli import main
from tests.integration.test_batch_jobs import sentence
from tests.support.serving import served


@pytest.fixture()
def gateway_url(app):
    with served(app) as url:
        yield url


def test_jsonl_in_jsonl_out_with_a_bad_line(tmp_path, gateway_url, keys, workers):
    source = tmp_path / "texts.jsonl"
    lines = [json.dumps(sentence(i)) for i in range(40)]
    lines[7] = json.dumps({"text": ""})
    lines[8] = json.dumps({"text": "an object with a text field"})
    source.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["batch", "submit", str(source), "--task", "embed", "--url", gateway_url,
                                       "--key", keys["inference_user"]])
    assert result.exit_code == 0, result.output
    assert "39 succeeded, 1 failed" in result.output
    rows = [json.loads(line) for line in (tmp_path / "texts.results.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(40))
    assert rows[7]["status"] == "failed" and rows[7]["error"]["code"] == "invalid_input"
    assert rows[8]["input"] == "an object with a text field" and len(rows[8]["output"]) == 384

    again = CliRunner().invoke(main, ["batch", "submit", str(source), "--task", "embed", "--url", gateway_url,
                                      "--key", keys["inference_user"], "--out", str(tmp_path / "again.jsonl")])
    assert again.exit_code == 0  # the same file and request: the same job, found by its idempotency key
    first_job = result.output.split("batch job(s): ")[1].split()[0]
    assert first_job in again.output

    shown = CliRunner().invoke(main, ["jobs", "show", first_job])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["attempts"] == 1  # its one chunk ran once (a batch used to say 0)


def test_csv_and_parquet_in_parquet_out_over_several_batches(tmp_path, gateway_url, keys, workers):
    texts = [sentence(i) for i in range(1205)]
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": list(range(1205)), "body": texts}), source)
    out = tmp_path / "vectors.parquet"
    result = CliRunner().invoke(main, ["batch", "submit", str(source), "--task", "embed", "--column", "body",
                                       "--out", str(out), "--url", gateway_url, "--key", keys["inference_user"]])
    assert result.exit_code == 0, result.output
    assert "as 2 batch job(s)" in result.output
    table = pq.read_table(out)
    # The same columns as every other format, with the file's own ids.
    assert table.column_names == ["id", "index", "input", "status", "output", "error"]
    assert table.column("index").to_pylist() == list(range(1205))
    assert table.column("id").to_pylist() == list(range(1205))
    assert table.column("input")[1204].as_py() == texts[1204]
    assert set(table.column("status").to_pylist()) == {"succeeded"}
    assert len(table.column("output")[1204].as_py()) == 384

    csv_source = tmp_path / "few.csv"
    csv_source.write_text("text\nfirst line\nsecond line\n")
    result = CliRunner().invoke(main, ["batch", "submit", str(csv_source), "--task", "embed", "--out",
                                       str(tmp_path / "few.csv.out.csv"), "--url", gateway_url,
                                       "--key", keys["inference_user"]])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "few.csv.out.csv").read_text().splitlines()[0] == "index,input,status,output,error"


def test_arrow_out_is_the_ipc_file_format_with_every_column(tmp_path, gateway_url, keys, workers):
    import pandas as pd

    source = tmp_path / "labelled.jsonl"
    source.write_text("".join(json.dumps({"id": f"doc-{i}", "text": sentence(i)}) + "\n" for i in range(5))
                      + json.dumps({"id": "doc-empty", "text": ""}) + "\n")
    out = tmp_path / "vectors.arrow"
    result = CliRunner().invoke(main, ["batch", "submit", str(source), "--task", "embed", "--out", str(out),
                                       "--url", gateway_url, "--key", keys["inference_user"]])
    assert result.exit_code == 0, result.output
    with pa.memory_map(str(out)) as handle:
        table = pa.ipc.open_file(handle).read_all()
    assert table.column_names == ["id", "index", "input", "status", "output", "error"]
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(5)] + ["doc-empty"]
    assert table.column("status").to_pylist() == ["succeeded"] * 5 + ["failed"]
    assert json.loads(table.column("error")[5].as_py())["code"] == "invalid_input"
    assert len(pd.read_feather(out)) == 6

    jsonl = tmp_path / "labelled.out.jsonl"
    result = CliRunner().invoke(main, ["batch", "submit", str(source), "--task", "embed", "--out", str(jsonl),
                                       "--url", gateway_url, "--key", keys["inference_user"]])
    assert result.exit_code == 0, result.output
    first = json.loads(jsonl.read_text().splitlines()[0])
    assert list(first) == ["id", "index", "input", "status", "output"]


def test_an_unsupported_out_extension_is_refused_before_anything_is_submitted(tmp_path, gateway_url, keys):
    from sqlalchemy import text

    from cortex_tasks.core.storage.db import get_engine

    source = tmp_path / "texts.jsonl"
    source.write_text('"refused before submitting"\n')

    def batch_jobs() -> int:
        with get_engine().connect() as connection:
            return connection.execute(text("SELECT count(*) FROM jobs WHERE kind = 'batch'")).scalar_one()

    before = batch_jobs()
    result = CliRunner().invoke(main, ["batch", "submit", str(source), "--task", "embed", "--out",
                                       str(tmp_path / "results.xlsx"), "--url", gateway_url,
                                       "--key", keys["inference_user"]])
    assert result.exit_code != 0 and ".arrow" in result.output and "results.xlsx" in result.output
    assert "submitted" not in result.output
    assert batch_jobs() == before


def test_unreadable_input_and_bad_key_are_clear_errors(tmp_path, gateway_url, keys):
    wrong = tmp_path / "inputs.txt"
    wrong.write_text("hello")
    result = CliRunner().invoke(main, ["batch", "submit", str(wrong), "--task", "embed", "--url", gateway_url,
                                       "--key", keys["inference_user"]])
    assert result.exit_code != 0 and ".jsonl" in result.output
    good = tmp_path / "inputs.jsonl"
    good.write_text('"hello"\n')
    result = CliRunner().invoke(main, ["batch", "submit", str(good), "--task", "embed", "--url", gateway_url,
                                       "--key", "ctx_nope_nope"])
    assert result.exit_code != 0 and "401" in result.output
