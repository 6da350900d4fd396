"""The key pairs that sign Cortex's access tokens, kept in PostgreSQL so that every gateway process, on
every host, signs and verifies with the same keys, and a restart keeps them.

Rotation without downtime: a new key pair is created and signs every token issued from then on; the pair
it replaces is retired but still verifies (and stays in the JWKS) until every token it may have signed
has expired. A key is replaced when it is older than CORTEX_TOKEN_KEY_ROTATION (checked as tokens are
issued) or at once by `cortex tokens rotate`; `--drop-retired` also forgets the old ones, for a key that
leaked (its tokens then stop working).

Each process keeps a copy of the key set for RELOAD_SECONDS. A process whose copy is older than a rotation
made elsewhere goes on signing with the retired key for at most that long, which RETIRED_GRACE_SECONDS
covers; a token whose kid the copy lacks (just issued by another process) reloads the set, at most once a
second, so made-up kids cost at most one query a second.

The private keys are stored as unencrypted PEM: whoever can read this table can sign tokens for any key,
so read access to the database must be guarded as closely as the keys themselves.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm
from sqlalchemy import delete, func, select, update

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import TokenSigningKey

ALGORITHM = "ES256"  # P-256: small tokens, fast keys, supported by every JOSE library
ROTATION_LOCK = 0x7C0A80  # pg_advisory_xact_lock key: one rotation at a time across processes
RELOAD_SECONDS = 60.0
MIN_RELOAD_SECONDS = 1.0
RETIRED_GRACE_SECONDS = 2 * RELOAD_SECONDS + 300  # stale copies, clock skew, leeway


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: ec.EllipticCurvePrivateKey
    verifier: PyJWK  # bound to `algorithm`: a token naming another algorithm does not verify with it
    public_jwk: dict[str, Any]
    created_at: datetime
    retired_at: datetime | None


def _thumbprint(jwk: dict[str, Any]) -> str:
    """The key's RFC 7638 thumbprint, as its kid: derived from the key, so it cannot name another one."""
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"),
                           sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _new_row(now: datetime) -> TokenSigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    kid = _thumbprint(jwk)
    jwk.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
    return TokenSigningKey(kid=kid, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk, created_at=now)


def _from_row(row: TokenSigningKey) -> SigningKey:
    private = serialization.load_pem_private_key(row.private_pem.encode(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return SigningKey(row.kid, row.algorithm, private, PyJWK(row.public_jwk, algorithm=row.algorithm),
                      dict(row.public_jwk), row.created_at, row.retired_at)


def _verifies_until(key: SigningKey) -> datetime | None:
    """When a retired key stops verifying: after the last token it could have signed has expired."""
    if key.retired_at is None:
        return None
    return key.retired_at + timedelta(seconds=get_settings().tokens.lifetime_seconds + RETIRED_GRACE_SECONDS)


def rotate(*, only_if_older_than: float | None = None, drop_retired: bool = False) -> str:
    """Make a new signing key and retire the current one; returns the kid that signs now.

    With `only_if_older_than` (seconds), rotate only if the current key is older (or there is none): the
    check runs under the lock, so processes that find the key old at the same moment make one new key."""
    now = datetime.now(timezone.utc)
    with session_scope() as session:
        session.execute(select(func.pg_advisory_xact_lock(ROTATION_LOCK)))
        current = session.scalars(select(TokenSigningKey).where(TokenSigningKey.retired_at.is_(None))
                                  .order_by(TokenSigningKey.created_at.desc())).first()
        if (only_if_older_than is not None and current is not None
                and (now - current.created_at).total_seconds() < only_if_older_than):
            return current.kid
        row = _new_row(now)
        session.execute(update(TokenSigningKey).where(TokenSigningKey.retired_at.is_(None)).values(retired_at=now))
        if drop_retired:
            session.execute(delete(TokenSigningKey))
        else:
            keep = timedelta(seconds=get_settings().tokens.lifetime_seconds + RETIRED_GRACE_SECONDS)
            session.execute(delete(TokenSigningKey).where(TokenSigningKey.retired_at < now - keep))
        session.add(row)
        kid = row.kid
    KEY_RING.forget()
    return kid


def list_signing_keys() -> list[dict[str, str | None]]:
    return [{"kid": key.kid, "algorithm": key.algorithm, "created_at": key.created_at.isoformat(),
             "retired_at": key.retired_at.isoformat() if key.retired_at else None}
            for key in KEY_RING.keys(reload=True)]


class KeyRing:
    """This process's copy of the key set (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at = float("-inf")

    def forget(self) -> None:
        with self._lock:
            self._loaded_at = float("-inf")

    def _load(self) -> None:
        with session_scope() as session:
            rows = session.scalars(select(TokenSigningKey).order_by(TokenSigningKey.created_at)).all()
            self._keys = {row.kid: _from_row(row) for row in rows}
        self._loaded_at = time.monotonic()

    def keys(self, reload: bool = False) -> list[SigningKey]:
        with self._lock:
            if reload or time.monotonic() - self._loaded_at > RELOAD_SECONDS:
                self._load()
            return list(self._keys.values())

    def signing_key(self) -> SigningKey:
        """The key that signs now; a new one first when there is none or it is older than the rotation age."""
        rotation = get_settings().tokens.key_rotation_seconds
        for _ in range(2):
            current = [key for key in self.keys() if key.retired_at is None]
            newest = max(current, key=lambda key: key.created_at, default=None)
            if newest is not None and (datetime.now(timezone.utc) - newest.created_at).total_seconds() < rotation:
                return newest
            rotate(only_if_older_than=rotation)
        raise RuntimeError("no signing key after rotating")  # the clock moved backwards by a rotation age

    def verification_key(self, kid: str) -> SigningKey | None:
        """The key with this kid while it may verify tokens, else None."""
        with self._lock:
            now = time.monotonic()
            if now - self._loaded_at > RELOAD_SECONDS or (
                    kid not in self._keys and now - self._loaded_at >= MIN_RELOAD_SECONDS):
                self._load()
            key = self._keys.get(kid)
        if key is None:
            return None
        until = _verifies_until(key)
        return key if until is None or datetime.now(timezone.utc) < until else None

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public keys that may verify tokens now, newest first (the JWKS document)."""
        now = datetime.now(timezone.utc)
        keys = sorted(self.keys(), key=lambda key: key.created_at, reverse=True)
        return {"keys": [key.public_jwk for key in keys
                         if (until := _verifies_until(key)) is None or now < until]}


KEY_RING = KeyRing()
