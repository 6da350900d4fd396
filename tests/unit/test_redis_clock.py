"""The shared clock (core/redis_clock.py) and token times checked on it, with stand-ins for Redis's TIME."""
from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec

from cortex_tasks.core import redis_clock
from cortex_tasks.core.auth.tokens import TokenError, decode_verified


class RedisAt:
    """Answers TIME as a Redis whose clock is `offset` seconds off this host's; counts the calls."""

    def __init__(self, offset: float, port: int, failing: bool = False) -> None:
        self.offset, self.failing, self.calls = offset, failing, 0
        self.connection_pool = redis.ConnectionPool(host="127.0.0.1", port=port)

    def time(self) -> tuple[int, int]:
        self.calls += 1
        if self.failing:
            raise redis.ConnectionError("away")
        now = time.time() + self.offset
        return int(now), int(now % 1 * 1e6)


def test_now_follows_the_servers_clock_and_asks_it_once_per_refresh() -> None:
    ahead = RedisAt(180, port=1)
    assert abs(redis_clock.now(ahead) - (time.time() + 180)) < 0.5  # type: ignore[arg-type]
    assert abs(redis_clock.now(ahead) - (time.time() + 180)) < 0.5  # type: ignore[arg-type]
    assert ahead.calls == 1
    behind = RedisAt(-180, port=2)  # another server, another offset
    assert abs(redis_clock.now(behind) - (time.time() - 180)) < 0.5  # type: ignore[arg-type]


def test_without_redis_the_local_clock_and_no_retry_at_every_stamp() -> None:
    away = RedisAt(0, port=3, failing=True)
    for _ in range(5):
        assert abs(redis_clock.now(away) - time.time()) < 0.5  # type: ignore[arg-type]
    assert away.calls == 1  # the next try waits RETRY_SECONDS


KEY = ec.generate_private_key(ec.SECP256R1())


def token(**claims: Any) -> tuple[str, dict[str, Any]]:
    payload = {"iss": "cortex", "aud": "cortex-api", "sub": "k", **claims}
    encoded = jwt.encode(payload, KEY, algorithm="ES256", headers={"kid": "k1"})
    return encoded, jwt.get_unverified_header(encoded)


def check(encoded: str, header: dict[str, Any], now: float) -> dict[str, Any]:
    verifier = jwt.PyJWK(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), algorithm="ES256")
    return decode_verified(encoded, header, verifier, algorithms=("ES256",), issuer="cortex",
                           audience="cortex-api", required=("exp", "sub"), leeway=5, now=now)


def test_token_times_are_checked_on_the_shared_clock_not_this_hosts() -> None:
    shared = time.time() + 180  # this host is three minutes behind the others
    encoded, header = token(iat=int(shared), nbf=int(shared), exp=int(shared) + 20)
    assert check(encoded, header, now=shared)["sub"] == "k"  # PyJWT alone: "not valid yet" here
    with pytest.raises(TokenError) as refused:
        check(encoded, header, now=shared + 26)
    assert refused.value.details["reason"] == "expired"
    with pytest.raises(TokenError) as refused:
        check(encoded, header, now=shared - 6)
    assert refused.value.details["reason"] == "not_yet_valid"
    encoded, header = token(exp="soon")
    with pytest.raises(TokenError) as refused:
        check(encoded, header, now=shared)
    assert refused.value.details["reason"] == "invalid"
