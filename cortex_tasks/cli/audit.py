"""`cortex audit`: the audit log from the command line."""
from __future__ import annotations

import json

import click


@click.group()
def audit() -> None:
    """The audit log."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit_verify(as_json: bool) -> None:
    """Recompute every row's hash in id order and check each link of the chain; exit 1 at the first break.

    Prints the chain's head hash too: kept somewhere outside the database, it shows later whether the
    log was rewritten from some row on (which the chain alone cannot show to someone who can rewrite it all).
    """
    from cortex_tasks.core.audit.chain import verify_chain

    report = verify_chain()
    if as_json:
        click.echo(json.dumps(report.to_api(), indent=2))
    else:
        click.echo(report.summary())
        click.echo(f"head: row {report.head_id} {report.head_hash}"
                   + (f"; rows up to {report.start_after_id} removed by retention"
                      if report.start_after_id is not None else ""))
    if not report.ok:
        raise SystemExit(1)
