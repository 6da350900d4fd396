"""The `cortex` command: run the stack, manage keys and token signing keys, look at jobs, start one worker
or the gateway.

Each command imports what it uses inside its own function: `cortex up` becomes the supervisor of every
other process and should hold neither the database layer nor the Celery app, `cortex keys list` should
not pay for the batch client's pyarrow, and `cortex --help` answers at once.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from cortex_tasks.cli import audit as audit_commands
from cortex_tasks.cli.choices import SuggestingChoice, one_of
from cortex_tasks.core.auth.roles import ROLES

# The commands that talk to the stack's Redis or PostgreSQL (`up` starts one; `batch` talks to a gateway).
NEEDS_STACK = frozenset({"migrate", "worker", "worker-ready", "web", "flower", "keys", "tenants", "tokens", "jobs", "audit"})


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Cortex: AI jobs on Celery. Commands find a running `cortex up` stack through CORTEX_DATA_DIR."""
    if ctx.invoked_subcommand in NEEDS_STACK and "--help" not in sys.argv:
        from cortex_tasks.core.settings import stack_not_found

        if (missing := stack_not_found()) is not None:
            raise click.ClickException(missing)


@main.command()
@click.option("--port", default=8001, show_default=True, help="Gateway port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway bind address.")
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--web-workers", type=int, help="Gateway processes [default: CORTEX_WEB_WORKERS, else 2]")
@click.option("--web-threads", type=int,
              help="Threads per gateway process [default: CORTEX_WEB_THREADS, else 64]")
def up(port: int, host: str, flower_port: int, web_workers: int | None, web_threads: int | None) -> None:
    """Start everything (embedded Redis/PostgreSQL unless REDIS_URL/DATABASE_URL are set)."""
    from cortex_tasks.core.settings import data_dir
    from cortex_tasks.stack.up import UpOptions, run_up

    sys.exit(run_up(UpOptions(data_dir(), host, port, flower_port, web_workers, web_threads)))


@main.command()
def migrate() -> None:
    """Apply database migrations."""
    from cortex_tasks.core.settings import get_settings
    from cortex_tasks.core.storage.migrate import upgrade_to_head

    upgrade_to_head(get_settings().database_url)
    click.echo("database is at the latest migration")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("profile", type=SuggestingChoice(["gpu", "nlp", "training", "stream"], "worker profile"))
@click.pass_context
def worker(ctx: click.Context, profile: str) -> None:
    """Run one worker with its profile (extra arguments go to celery). Its Prometheus endpoint listens on
    CORTEX_WORKER_METRICS_PORT, else the profile's port (docs/metrics.md)."""
    from workers import PROFILES

    argv = [sys.executable, "-m", "celery", *PROFILES[profile].celery_argv(), *ctx.args]
    os.execve(sys.executable, argv, {**os.environ, **PROFILES[profile].metrics_environment(os.environ)})


@main.command("worker-ready")
@click.argument("kind", type=SuggestingChoice(["gpu", "nlp", "training", "stream"], "worker kind"))
@click.option("--hostname", help="The worker's host name [default: this machine's, as the worker's -n <kind>@%h]")
def worker_ready(kind: str, hostname: str | None) -> None:
    """Exit 0 when the worker of KIND on this host has loaded its models (its readiness record in Redis),
    else 1: the health check of compose and the readiness probe of deploy/kubernetes."""
    from cortex_tasks.cli.worker_ready import check
    from cortex_tasks.core.settings import get_settings

    found = check(get_settings().redis_url, kind, hostname)
    click.echo(found.message, err=not found.ready)
    if not found.ready:
        sys.exit(1)


@main.command()
@click.option("--bind", default="127.0.0.1:8001", show_default=True)
@click.option("--workers", "web_workers", type=int, help="Processes [default: CORTEX_WEB_WORKERS, else 2]")
@click.option("--threads", type=int, help="Threads per process [default: CORTEX_WEB_THREADS, else 64]")
def web(bind: str, web_workers: int | None, threads: int | None) -> None:
    """Run the gateway under gunicorn (threads, so many clients can wait at once; gunicorn_conf.py)."""
    from gunicorn_conf import ACCESS_LOG_TO_STDOUT, command

    os.execv(sys.executable, command(bind, web_workers, threads, *ACCESS_LOG_TO_STDOUT))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def flower(ctx: click.Context) -> None:
    """Run Flower behind basic auth (user admin, password CORTEX_FLOWER_PASSWORD); extra arguments go to
    flower. The password reaches Flower through its environment, never its command line; with a RabbitMQ
    broker, so does the management API it reads queue lengths from (CORTEX_FLOWER_BROKER_API)."""
    from cortex_tasks.core.settings import get_settings
    from cortex_tasks.stack.flower import PASSWORD_VARIABLE, flower_environment, warn_if_deprecated_name

    warn_if_deprecated_name()
    password = get_settings().flower_password
    if not password:
        raise click.ClickException(f"set {PASSWORD_VARIABLE}: Flower is not started without a password")
    try:
        environment = flower_environment(password)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    argv = [sys.executable, "-m", "celery", "-A", "cortex_tasks", "flower", *ctx.args]
    os.execve(sys.executable, argv, {**os.environ, **environment})


@main.group()
def tenants() -> None:
    """Tenants: every key and every stored resource belongs to one (the operator's commands)."""


@tenants.command("create")
@click.argument("tenant")
@click.option("--name", default=None, help="A name for people.")
def tenants_create(tenant: str, name: str | None) -> None:
    from cortex_tasks.core.audit.service import cli_actor, record_events
    from cortex_tasks.core.auth.keys import create_tenant

    try:
        created = create_tenant(tenant, name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not created:
        raise click.ClickException(f"the tenant {tenant} exists already")
    record_events([cli_actor("tenant.create", tenant, {"name": name})])
    click.echo(f"created tenant {tenant}")


@tenants.command("list")
def tenants_list() -> None:
    from cortex_tasks.core.auth.keys import list_tenants

    click.echo(json.dumps(list_tenants(), indent=2))


def _names(value: str | None) -> list[str] | None:
    """--models a,b / --tasks x,y: a comma-separated list (absent: no limit)."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise click.BadParameter("name at least one, separated by commas")
    return names


@main.group()
def keys() -> None:
    """API keys."""


def _tiers() -> list[str]:
    from cortex_tasks.core.settings import get_settings

    return list(get_settings().rate_limit_tiers)


@keys.command("create")
@click.option("--role", required=True, type=SuggestingChoice(ROLES, "role"))
@click.option("--tenant", default="default", show_default=True, help="The tenant the key belongs to (it must exist).")
@click.option("--models", default=None, help="Only these model names, comma-separated (default: any).")
@click.option("--tasks", default=None, help="Only these tasks, comma-separated (default: any).")
@click.option("--name", default=None)
@click.option("--expires-in-days", type=float, default=None)
@click.option("--tier", default="default", show_default=True, callback=one_of(_tiers, "rate-limit tier"),
              help="Rate-limit tier: default, premium, unlimited, or one set in CORTEX_RATE_LIMITS.")
def keys_create(role: str, tenant: str, models: str | None, tasks: str | None, name: str | None,
                expires_in_days: float | None, tier: str) -> None:
    """Create a key; the key itself is printed alone on the last line."""
    from cortex_tasks.core.audit.service import cli_actor, record_events
    from cortex_tasks.core.auth.keys import create_key

    try:
        issued = create_key(role, name, expires_in_days, tier=tier, tenant=tenant, models=_names(models),
                            tasks=_names(tasks))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    record_events([cli_actor("key.create", issued.key_id, {"role": role, "tier": tier, "name": name,
                                                          "tenant": tenant})])
    expiry = issued.expires_at.isoformat() if issued.expires_at else "never"
    limits = "".join(f", {label} {','.join(values)}" for label, values in
                     (("models", issued.models), ("tasks", issued.tasks)) if values is not None)
    click.echo(f"key id {issued.key_id}, tenant {issued.tenant}, role {issued.role}, tier {issued.tier}{limits}, "
               f"expires {expiry}. Store it now; it is not shown again:", err=True)
    click.echo(issued.key)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys (default: every tenant's).")
@click.option("--made-by-up", is_flag=True, help="Only the admin keys `cortex up` made (named 'cortex up admin').")
def keys_list(tenant: str | None, made_by_up: bool) -> None:
    """Every key (never its secret); `cortex up`'s own are named 'cortex up admin' ('cortex up' before)."""
    from cortex_tasks.core.auth.keys import list_keys
    from cortex_tasks.stack.admin_key import made_by_up as is_up_key

    listed = list_keys(tenant)
    if made_by_up:
        listed = [key for key in listed if is_up_key(key.get("name"))]
    click.echo(json.dumps(listed, indent=2))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    from cortex_tasks.core.audit.service import cli_actor, record_events
    from cortex_tasks.core.auth.keys import revoke_key

    if not revoke_key(key_id):
        raise click.ClickException(f"no active key {key_id}")
    record_events([cli_actor("key.revoke", key_id)])
    click.echo(f"revoked {key_id}")


@main.group("data-keys")
def data_keys() -> None:
    """Keys that seal sensitive inputs and results at rest (CORTEX_DATA_KEYS)."""


@data_keys.command("new")
@click.argument("kid")
def data_keys_new(kid: str) -> None:
    """Print a fresh `kid:base64` entry: put it first in CORTEX_DATA_KEYS, keep the old ones after it."""
    from cortex_tasks.core.storage.sealing import new_key_line

    click.echo(new_key_line(kid))


@data_keys.command("reseal")
def data_keys_reseal() -> None:
    """Re-seal every stored value under the first (current) key, so older keys can be retired."""
    from cortex_tasks.core.storage.resealing import reseal_all

    try:
        report = reseal_all()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report.as_dict(), indent=2))
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} values could not be opened (listed above)")


@main.group()
def tokens() -> None:
    """The keys that sign access tokens (POST /api/v1/oauth/token)."""


@tokens.command("rotate")
@click.option("--drop-retired", is_flag=True,
              help="Also forget the retired keys at once, ending their tokens (for a key that leaked).")
def tokens_rotate(drop_retired: bool) -> None:
    """Sign new tokens with a new key; tokens signed before keep working until they expire."""
    from cortex_tasks.core.audit.service import cli_actor, record_events
    from cortex_tasks.core.auth.signing_keys import rotate

    kid = rotate(drop_retired=drop_retired)
    record_events([cli_actor("token.rotate", kid, {"drop_retired": drop_retired})])
    click.echo(f"new tokens are signed with key {kid}")


@tokens.command("keys")
def tokens_keys() -> None:
    """The signing keys: the one signing now (retired_at null) and the retired ones that still verify."""
    from cortex_tasks.core.auth.signing_keys import list_signing_keys

    click.echo(json.dumps(list_signing_keys(), indent=2))


@main.group()
def jobs() -> None:
    """Jobs."""


@jobs.command("show")
@click.argument("job_id")
def jobs_show(job_id: str) -> None:
    from cortex_tasks.core.jobs.store import get_job, job_to_api
    from cortex_tasks.core.tenancy import all_tenants

    with all_tenants():  # the operator's command: a job of any tenant
        job = get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    click.echo(json.dumps(job_to_api(job), indent=2))


@main.group()
def batch() -> None:
    """Batch jobs through the gateway (JSON Lines, JSON, CSV or Parquet in; a result file out)."""


def _gateway_url(url: str | None) -> str:
    from cortex_tasks.core.settings import read_stack_file

    gateway = url or read_stack_file().get("gateway_url")
    if not gateway:
        raise click.ClickException("no running Cortex found (no stack.json in CORTEX_DATA_DIR); start one with "
                                   "`cortex up` or name a gateway with --url")
    return gateway


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", required=True, help="The task to run on every input (embed, classify, ner, ...).")
@click.option("--model", default=None, help="A model name, or name@version.")
@click.option("--params", "params_json", default="{}", help="Task params as a JSON object.")
@click.option("--priority", type=SuggestingChoice(["high", "normal", "low"], "priority"), default="normal",
              show_default=True)
@click.option("--column", default=None, help="Which column / field holds the inputs (default: text or input).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Result file: .jsonl (default), .parquet, .csv or .arrow.")
@click.option("--url", default=None, help="Gateway URL (default: the running stack's, from stack.json).")
@click.option("--key", envvar="CORTEX_API_KEY", required=True, help="API key (or set CORTEX_API_KEY).")
def batch_submit(file: Path, task: str, model: str | None, params_json: str, priority: str, column: str | None,
                 out: Path | None, url: str | None, key: str) -> None:
    """Submit FILE as batch jobs, show progress until they finish, and write the results."""
    from cortex_tasks.cli import batch_client as client

    try:
        params = json.loads(params_json)
    except ValueError as exc:
        raise click.BadParameter(f"--params must be a JSON object ({exc})") from None
    if not isinstance(params, dict):
        raise click.BadParameter("--params must be a JSON object")
    out = out or file.with_name(file.stem + ".results.jsonl")
    try:
        client.check_output_path(out)
        source = client.read_inputs(file, column)
        inputs = source.inputs
        if not inputs:
            raise click.ClickException(f"{file.name} holds no inputs")
        gateway = client.Gateway(_gateway_url(url), key)
        parts = client.submit_all(gateway, inputs, task, model, params, priority)
        click.echo(f"submitted {len(inputs)} inputs as {len(parts)} batch job(s): "
                   + ", ".join(part.job_id for part in parts), err=True)
        with click.progressbar(length=len(inputs), label=f"{task}", show_pos=True, file=sys.stderr) as bar:
            shown = [0]

            def advance(processed: int) -> None:
                bar.update(processed - shown[0])
                shown[0] = processed

            client.wait_all(gateway, parts, advance)
        failed_jobs = [part for part in parts if part.status != "succeeded"]
        table = client.collect(gateway, [part for part in parts if part.status == "succeeded"]) \
            if len(failed_jobs) < len(parts) else None
        if table is not None:
            client.write_results(table, source, out)
    except client.BatchClientError as exc:
        raise click.ClickException(str(exc)) from None
    done, failed = sum(part.done for part in parts), sum(part.failed for part in parts)
    click.echo(f"{done} succeeded, {failed} failed" + (f"; results in {out}" if table is not None else ""))
    if failed_jobs:
        raise click.ClickException(f"{len(failed_jobs)} batch job(s) did not succeed: "
                                   + ", ".join(f"{part.job_id} ({part.status})" for part in failed_jobs))


main.add_command(audit_commands.audit)

if __name__ == "__main__":
    main()
