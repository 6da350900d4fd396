"""The operator's admin key of a `cortex up` data folder: made once, kept in `<data>/admin_key` (0600) and
reused by every later start while it still works, so restarts do not pile up live admin keys.

A new one is made only when the kept one no longer verifies (revoked, expired, or the database was
reset). Keys made here are named UP_KEY_NAME, so `cortex keys list --made-by-up` finds them.
"""
from __future__ import annotations

from pathlib import Path

from cortex_tasks.core.audit.service import cli_actor, record_events
from cortex_tasks.core.auth.keys import create_key, verify_key
from cortex_tasks.core.settings import get_settings
from cortex_tasks.stack.private_files import PRIVATE_FILE, write_private

ADMIN_KEY_FILE = "admin_key"
UP_KEY_NAME = "cortex up admin"
# The name earlier versions gave the key they made at every start.
EARLIER_UP_KEY_NAMES = ("cortex up",)
# The operator administers the platform: tenants, and keys in any tenant (it acts in the default tenant).
ROLE = "platform_admin"


def made_by_up(name: str | None) -> bool:
    return name == UP_KEY_NAME or name in EARLIER_UP_KEY_NAMES


def stack_admin_key(data_dir: Path) -> tuple[str, bool]:
    """(the admin key, whether it was made now)."""
    path = data_dir / ADMIN_KEY_FILE
    if path.exists():
        path.chmod(PRIVATE_FILE)  # written by hand, or copied with another mode
        kept = path.read_text().strip()
        principal = verify_key(kept) if kept else None
        if principal is not None and principal.role == ROLE:
            return kept, False
    # The operator's own key, like CORTEX_ADMIN_KEY: on the admin tier (unlimited by default), so trying
    # Cortex out is not throttled; keys for clients get their tiers from `cortex keys create --tier`.
    issued = create_key(ROLE, name=UP_KEY_NAME, tier=get_settings().admin_key_tier)
    write_private(path, issued.key + "\n")
    record_events([cli_actor("key.create", issued.key_id,
                             {"role": ROLE, "tier": issued.tier, "name": UP_KEY_NAME, "via_up": True})])
    return issued.key, True
