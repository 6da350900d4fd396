"""What Flower is given beside Celery's own configuration: its basic-auth password and, with a RabbitMQ
broker, where RabbitMQ's management HTTP API answers.

Given as `--basic-auth=admin:<password>`, the password would be in the argv of a process that every local
user can list (`ps`, /proc/<pid>/cmdline); Flower reads each of its options from a FLOWER_<OPTION>
variable too, and a process's environment is readable by its own user only. `cortex up`, `cortex flower`
(the Procfile's and compose/'s Flower) all take the password from CORTEX_FLOWER_PASSWORD.

Flower's Broker tab and /api/queues/length read a Redis broker's lists themselves, but a RabbitMQ broker's
queue lengths only through the management API (`--broker_api`): Cortex gives it CORTEX_FLOWER_BROKER_API,
else the API on the broker's host (port 15672, or 15671 over TLS for amqps://). The management API takes
the broker URL's user unless the API URL names another (that user needs the `monitoring` or `management`
tag in RabbitMQ).
"""
from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

from cortex_tasks.core.broker import is_amqp_url
from cortex_tasks.core.settings import get_settings

log = logging.getLogger(__name__)

FLOWER_USER = "admin"
PASSWORD_VARIABLE = "CORTEX_FLOWER_PASSWORD"
# The name the Procfile and compose/ used before; still read (Settings.flower_password), with a warning.
DEPRECATED_PASSWORD_VARIABLE = "FLOWER_PASSWORD"
BROKER_API_VARIABLE = "CORTEX_FLOWER_BROKER_API"
MANAGEMENT_PORTS = {"http": 15672, "https": 15671}  # RabbitMQ's defaults for the management plugin


def warn_if_deprecated_name() -> None:
    if os.environ.get(DEPRECATED_PASSWORD_VARIABLE) and not os.environ.get(PASSWORD_VARIABLE):
        log.warning("%s is deprecated: set %s (the one name `cortex up`, the Procfile and compose/ read)",
                    DEPRECATED_PASSWORD_VARIABLE, PASSWORD_VARIABLE)


def broker_api(broker_url: str, configured: str | None = None) -> str | None:
    """The management API address Flower needs for `broker_url`, or None for a broker whose queues Flower
    reads itself (Redis). Flower appends `queues/<vhost>` to it, so it ends in `/api/`."""
    if not is_amqp_url(broker_url):
        if configured:
            log.warning("%s is for a RabbitMQ broker; Flower reads a Redis broker's queues itself", BROKER_API_VARIABLE)
        return None
    if configured:
        from flower.utils.broker import validate_broker_api

        try:
            validate_broker_api(configured)
        except ValueError as exc:
            raise ValueError(f"{BROKER_API_VARIABLE}: {exc}") from None
        # `.../api` would lose its last segment when Flower joins `queues/<vhost>` to it.
        return configured + "/" if urlparse(configured).path.endswith("/api") else configured
    broker = urlparse(broker_url)
    scheme = "https" if broker.scheme == "amqps" else "http"
    host = broker.hostname or "localhost"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    # No credentials in it: Flower then signs in to the API as the broker URL's user.
    return f"{scheme}://{host}:{MANAGEMENT_PORTS[scheme]}/api/"


def flower_environment(password: str) -> dict[str, str]:
    """The variables that give Flower its basic-auth user and password, and with RabbitMQ its broker API."""
    # Flower splits the variable's value at commas (a list of user:password pairs).
    if "," in password:
        raise ValueError(f"{PASSWORD_VARIABLE} cannot contain a comma (Flower splits FLOWER_BASIC_AUTH at commas)")
    environment = {"FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{password}"}
    settings = get_settings()
    api = broker_api(settings.celery_broker_url, settings.flower_broker_api)
    if api is not None:
        # Through the environment like the password: a configured API URL may carry credentials.
        environment["FLOWER_BROKER_API"] = api
    return environment
