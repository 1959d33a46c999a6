"""Password hashing (argon2id) and the password rules.

argon2id with argon2-cffi's defaults (RFC 9106 "low memory" profile: 3 passes, 64 MiB,
4 lanes) is the OWASP recommendation. One hash costs ~40-60 ms of one core here, which is
the point: a stolen database must be slow to crack. Logins are rare and throttled, so that
cost is paid seldom; API keys and refresh tokens are random 256-bit values and use SHA-256
instead (:mod:`gateway.auth.tokens`).
"""

from __future__ import annotations

import secrets
from functools import cache
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.errors import GatewayError

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "WeakPassword",
    "check_password",
    "generate_password",
    "hash_password",
    "needs_rehash",
    "verify_nothing",
    "verify_password",
]

#: NIST SP 800-63B: at least 8; we ask 10 because these accounts can unlock cars
MIN_PASSWORD_LENGTH: Final = 10
#: argon2 takes any length, but a megabyte "password" is a denial-of-service attempt
MAX_PASSWORD_LENGTH: Final = 256


class WeakPassword(GatewayError):
    """A password that breaks the rules; the message says which."""


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


def check_password(password: str) -> None:
    """Raise :class:`WeakPassword` unless ``password`` is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    if len(set(password)) < 4:
        raise WeakPassword("the password must not be one or two characters repeated")


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` in PHC string format (salt included)."""
    return _hasher().hash(password)


def verify_password(*, password: str, password_hash: str) -> bool:
    """Whether ``password`` matches the argon2 ``password_hash`` (constant time in the
    password). Keyword-only: both are strings, and a swap must not go unnoticed (the broker's
    Mosquitto hashes have :func:`gateway.broker.auth.verify_mqtt_password`)."""
    try:
        return _hasher().verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def verify_nothing(password: str) -> None:
    """Spend the time a real verification takes, for an unknown user name, so the answer's
    timing does not tell which e-mail addresses have accounts."""
    verify_password(password=password, password_hash=_dummy_hash())


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's (rehash on login)."""
    try:
        return _hasher().check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def generate_password() -> str:
    """A random password for a generated account (first admin, demo users): 128 bits."""
    return secrets.token_urlsafe(16)
