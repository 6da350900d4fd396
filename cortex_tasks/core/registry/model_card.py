"""The model card of a registry version, generated as Markdown from what the registry knows."""
from __future__ import annotations

import json
from typing import Any


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: dict[str, Any], heading: tuple[str, str]) -> list[str]:
    if not rows:
        return ["_None recorded._"]
    lines = [f"| {heading[0]} | {heading[1]} |", "| --- | --- |"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in sorted(rows.items())]
    return lines


def render_model_card(model: dict[str, Any], version: dict[str, Any],
                      deployments: list[dict[str, Any]] | None = None,
                      stats: dict[str, Any] | None = None) -> str:
    """`model` and `version` are the registry's API dicts; deployments are this version's history."""
    name, number = model["name"], version["version"]
    stage = version["stage"] + (f" ({version['traffic_percent']:g}% of traffic)"
                                if version["stage"] == "canary" and version.get("traffic_percent") is not None
                                else "")
    lines = [
        f"# Model card: {name} version {number}",
        "",
        version.get("description") or model.get("description") or "_No description given._",
        "",
        "## Details",
        "",
        f"- **Model**: `{name}` (pin this version as `{name}@{number}`)",
        f"- **Task**: {version['task']}",
        f"- **Framework**: {version['framework']}",
        f"- **Stage**: {stage}",
        f"- **Created**: {version['created_at']} by {version.get('created_by') or 'unknown'}",
        (f"- **Artifact**: `{version['artifact']['uri']}` ({version['artifact']['size']} bytes, "
         f"sha256 `{version['artifact']['sha256']}`"
         f"{', encrypted at rest' if version['artifact']['encrypted'] else ''})"),
        f"- **Training data fingerprint**: `{version.get('data_fingerprint') or 'not recorded'}`",
        "",
        "## Evaluation metrics",
        "",
        *_table(version.get("metrics") or {}, ("Metric", "Value")),
        "",
        "## Parameters",
        "",
        *_table(version.get("parameters") or {}, ("Parameter", "Value")),
        "",
    ]
    if stats and stats.get("request_count"):
        lines += [
            "## Serving",
            "",
            (f"- Requests: {stats['request_count']}, errors: {stats['error_count']} "
             f"(error rate {stats['error_rate']:.2%})"),
            (f"- Latency: mean {stats['latency_mean_ms']} ms, p50 ~{stats['latency_p50_ms']} ms, "
             f"p95 ~{stats['latency_p95_ms']} ms"),
            "",
        ]
    if deployments:
        lines += ["## Deployment history", "", "| When | Action | Status | Traffic | By |",
                  "| --- | --- | --- | --- | --- |"]
        for item in deployments:
            traffic = "" if item.get("traffic_percent") is None else f"{item['traffic_percent']:g}%"
            lines.append(f"| {item['created_at']} | {item['action']} | {item['status']} | {traffic} | "
                         f"{_cell(item.get('actor') or '')} |")
        lines.append("")
    lines += [
        "## Intended use and limitations",
        "",
        (version.get("parameters") or {}).get("intended_use")
        or f"Serves the `{version['task']}` task through Cortex. Check the evaluation metrics above against "
           "your own data before relying on it; metrics were measured on the held-out split of the training "
           "data identified by the fingerprint.",
        "",
    ]
    return "\n".join(lines)
