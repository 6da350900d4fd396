"""Flower's basic-auth password, given to Flower without the command line.

Given as `--basic-auth=admin:<password>`, the password would be in the argv of a process that every local
user can list (`ps`, /proc/<pid>/cmdline); Flower reads each of its options from a FLOWER_<OPTION>
variable too, and a process's environment is readable by its own user only. `cortex up`, `cortex flower`
(the Procfile's and compose/'s Flower) all take the password from CORTEX_FLOWER_PASSWORD.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

FLOWER_USER = "admin"
PASSWORD_VARIABLE = "CORTEX_FLOWER_PASSWORD"
# The name the Procfile and compose/ used before; still read (Settings.flower_password), with a warning.
DEPRECATED_PASSWORD_VARIABLE = "FLOWER_PASSWORD"


def warn_if_deprecated_name() -> None:
    if os.environ.get(DEPRECATED_PASSWORD_VARIABLE) and not os.environ.get(PASSWORD_VARIABLE):
        log.warning("%s is deprecated: set %s (the one name `cortex up`, the Procfile and compose/ read)",
                    DEPRECATED_PASSWORD_VARIABLE, PASSWORD_VARIABLE)


def flower_environment(password: str) -> dict[str, str]:
    """The variables that give Flower its basic-auth user and password."""
    # Flower splits the variable's value at commas (a list of user:password pairs).
    if "," in password:
        raise ValueError(f"{PASSWORD_VARIABLE} cannot contain a comma (Flower splits FLOWER_BASIC_AUTH at commas)")
    return {"FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{password}"}
