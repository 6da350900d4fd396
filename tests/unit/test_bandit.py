"""bandit over the shipped code finds nothing of high severity: each finding is fixed, or accepted on its
line with `# nosec B<number> - <the reason>` (the configuration is [tool.bandit] in pyproject.toml)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["cortex_tasks", "cortex_web", "workers", "gunicorn_conf.py", "bench"]


def bandit(*arguments: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "-c", "pyproject.toml", "-f", "json", "-q", *arguments],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def test_no_high_severity_finding():
    report = bandit("-r", *TARGETS, "-lll")
    assert report["errors"] == []
    findings = [f"{item['filename']}:{item['line_number']} {item['test_id']} {item['issue_text']}"
                for item in report["results"]]
    assert findings == [], "fix these, or accept one with `# nosec B<number> - <the reason>` on its line"
    assert report["metrics"]["_totals"]["loc"] > 10_000  # it read the project, not an empty folder


def test_the_scan_does_find_a_high_severity_finding(tmp_path):
    (tmp_path / "shell.py").write_text("import subprocess\n\n"
                                       "def run(command):\n    subprocess.run(command, shell=True)\n")
    report = bandit("-r", str(tmp_path), "-lll")
    assert [item["test_id"] for item in report["results"]] == ["B602"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://gateway", "gateway:8001"])
def test_the_batch_client_reaches_a_gateway_over_http_only(url):
    # What bandit's B310 (urlopen opens any scheme) led to: the URL given with --url is checked first.
    from cortex_tasks.cli.batch_client import BatchClientError, Gateway

    with pytest.raises(BatchClientError, match="http:// or https://"):
        Gateway(url, "ctx_key")
    assert Gateway("https://gateway.example:8443", "ctx_key").url.startswith("https://")
