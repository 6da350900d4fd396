"""The `cortex` command: run the stack, manage keys, look at jobs, start one worker or the gateway."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click


@click.group()
def main() -> None:
    """Cortex: AI jobs on Celery. Commands find a running `cortex up` stack through CORTEX_DATA_DIR."""


@main.command()
@click.option("--port", default=8001, show_default=True, help="Gateway port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway bind address.")
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--web-workers", default=int(os.environ.get("CORTEX_WEB_WORKERS", 1)), show_default=True)
@click.option("--web-threads", default=int(os.environ.get("CORTEX_WEB_THREADS", 64)), show_default=True)
def up(port: int, host: str, flower_port: int, web_workers: int, web_threads: int) -> None:
    """Start everything (embedded Redis/PostgreSQL unless REDIS_URL/DATABASE_URL are set)."""
    from cortex_tasks.settings import data_dir
    from cortex_tasks.stack.up import UpOptions, run_up

    sys.exit(run_up(UpOptions(data_dir(), host, port, flower_port, web_workers, web_threads)))


@main.command()
def migrate() -> None:
    """Apply database migrations."""
    from cortex_tasks.settings import get_settings
    from cortex_tasks.storage.migrate import upgrade_to_head

    upgrade_to_head(get_settings().database_url)
    click.echo("database is at the latest migration")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("profile", type=click.Choice(["gpu", "nlp", "training"]))
@click.pass_context
def worker(ctx: click.Context, profile: str) -> None:
    """Run one worker with its profile (extra arguments go to celery)."""
    from workers import PROFILES

    argv = [sys.executable, "-m", "celery", *PROFILES[profile].celery_argv(), *ctx.args]
    os.execv(sys.executable, argv)


@main.command()
@click.option("--bind", default="127.0.0.1:8001", show_default=True)
@click.option("--workers", "web_workers", default=1, show_default=True)
@click.option("--threads", default=64, show_default=True)
def web(bind: str, web_workers: int, threads: int) -> None:
    """Run the gateway under gunicorn (threads, so many clients can wait at once)."""
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "cortex_web.wsgi:app", "-b", bind,
                              "-k", "gthread", "-w", str(web_workers), "--threads", str(threads),
                              "--timeout", "120", "--access-logfile", "-"])


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(["reader", "inference_user", "model_admin"]))
@click.option("--name", default=None)
@click.option("--expires-in-days", type=float, default=None)
def keys_create(role: str, name: str | None, expires_in_days: float | None) -> None:
    """Create a key; the key itself is printed alone on the last line."""
    from cortex_tasks.auth.keys import create_key

    issued = create_key(role, name, expires_in_days)
    expiry = issued.expires_at.isoformat() if issued.expires_at else "never"
    click.echo(f"key id {issued.key_id}, role {issued.role}, expires {expiry}. Store it now; it is not shown again:",
               err=True)
    click.echo(issued.key)


@keys.command("list")
def keys_list() -> None:
    from cortex_tasks.auth.keys import list_keys

    click.echo(json.dumps(list_keys(), indent=2))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    from cortex_tasks.auth.keys import revoke_key

    if not revoke_key(key_id):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


@main.group()
def jobs() -> None:
    """Jobs."""


@jobs.command("show")
@click.argument("job_id")
def jobs_show(job_id: str) -> None:
    from cortex_tasks.jobs.store import get_job, job_to_api

    job = get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    click.echo(json.dumps(job_to_api(job), indent=2))


if __name__ == "__main__":
    main()
