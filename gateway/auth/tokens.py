"""Access tokens (JWT), refresh tokens and API keys.

* **Access tokens** are JWTs (HS256) valid for minutes: the API checks them without a
  database round trip for the signature, and they expire before a stolen one is worth
  much. Claims: ``sub`` (user id), ``role``, ``acc`` (account id), ``ver`` (the user's
  token version), ``iat``, ``exp``, ``jti``, ``typ: access``. The API still loads the user
  on every request, so a disabled user or a changed role takes effect at once, not after
  the token expires, and a token whose ``ver`` is below the user's (their password changed
  since, or they were disabled) is refused.
* **Refresh tokens** are opaque random strings (256 bits) whose SHA-256 is stored; each use
  returns a new one and retires the old one (rotation, with reuse detection in the
  repository).
* **API keys** look like ``tgk_<prefix>_<secret>``: the prefix (public, 12 hex digits) finds
  the row, the whole key's SHA-256 is compared in constant time. Shown once at creation.

Expiry is checked against a clock the caller passes in, not by PyJWT against the real one,
so tests can move time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt

from gateway.errors import ConfigurationError, GatewayError
from gateway.files import write_private_file

__all__ = [
    "API_KEY_PREFIX",
    "WEB_SESSION_PREFIX",
    "AccessClaims",
    "InvalidToken",
    "TokenExpired",
    "api_key_prefix",
    "decode_access_token",
    "hash_secret",
    "is_web_session",
    "issue_access_token",
    "load_or_create_secret",
    "new_api_key",
    "new_refresh_token",
    "new_web_session",
    "secrets_match",
]

_ALGORITHM: Final = "HS256"
_ISSUER: Final = "telematics-gateway"
API_KEY_PREFIX: Final = "tgk_"
_API_KEY_RE: Final = re.compile(r"^tgk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")


class InvalidToken(GatewayError):
    """A token that is malformed, forged, or not an access token."""


class TokenExpired(InvalidToken):
    """A well-formed, correctly signed access token past its ``exp``."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    role: str
    account_id: int | None
    issued_at: int
    expires_at: int
    token_id: str
    #: the user's token version when it was issued (0 in tokens from before versions)
    token_version: int = 0


def load_or_create_secret(path: Path) -> bytes:
    """The token-signing secret at ``path``, created (32 random bytes, hex, mode 0600) if
    missing. Every API process of an installation must read the same file."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        value = secrets.token_hex(32)
        write_private_file(path, value + "\n", replace=False)
        return value.encode()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the token secret {path}: {exc}") from exc
    if len(text) < 32:
        raise ConfigurationError(
            f"the token secret in {path} is too short ({len(text)} characters, need >= 32); "
            "delete the file to have a new one generated (this logs everybody out)"
        )
    return text.encode()


def issue_access_token(
    secret: bytes,
    *,
    user_id: int,
    role: str,
    account_id: int | None,
    now: int,
    ttl_s: int,
    token_version: int = 0,
) -> tuple[str, int]:
    """(token, expires_at) for the user; ``now`` and ``expires_at`` in epoch seconds;
    ``token_version``: the user's, as stored."""
    expires_at = now + ttl_s
    claims = {
        "iss": _ISSUER,
        "sub": str(user_id),
        "role": role,
        "acc": account_id,
        "ver": token_version,
        "iat": now,
        "exp": expires_at,
        "jti": str(uuid.uuid4()),
        "typ": "access",
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM), expires_at


def decode_access_token(secret: bytes, token: str, *, now: int) -> AccessClaims:
    """The claims of a valid access token; :class:`TokenExpired` or :class:`InvalidToken`."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            issuer=_ISSUER,
            # time claims are checked below against the caller's clock, not PyJWT's
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": ["exp", "iat", "sub", "iss"],
            },
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"the access token is invalid ({exc})") from None
    if claims.get("typ") != "access":
        raise InvalidToken("not an access token")
    try:
        user_id = int(claims["sub"])
        expires_at = int(claims["exp"])
        issued_at = int(claims["iat"])
        account = claims.get("acc")
        account_id = None if account is None else int(account)
        role = str(claims["role"])
        token_version = int(claims.get("ver", 0))
    except (KeyError, TypeError, ValueError):
        raise InvalidToken("the access token's claims are malformed") from None
    if now >= expires_at:
        raise TokenExpired("the access token has expired")
    if issued_at > now + 60:  # from the future: another clock, or forged
        raise InvalidToken("the access token was issued in the future")
    return AccessClaims(
        user_id=user_id,
        role=role,
        account_id=account_id,
        issued_at=issued_at,
        expires_at=expires_at,
        token_id=str(claims.get("jti", "")),
        token_version=token_version,
    )


def hash_secret(value: str) -> str:
    """SHA-256 (hex) of a random token or key: what the database keeps instead of it."""
    return hashlib.sha256(value.encode()).hexdigest()


def secrets_match(value: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(value), stored_hash)


def new_refresh_token() -> tuple[str, str, str]:
    """(token, its hash, a new family id) for a fresh login."""
    token = secrets.token_urlsafe(32)
    return token, hash_secret(token), str(uuid.uuid4())


def new_api_key() -> tuple[str, str, str]:
    """(key, prefix, hash): the key is shown once, prefix and hash are stored."""
    prefix = secrets.token_hex(6)
    key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_secret(key)


#: what starts a web dashboard session token (the ``tg_session`` cookie)
WEB_SESSION_PREFIX: Final = "tgs_"
_WEB_SESSION_RE: Final = re.compile(r"^tgs_[A-Za-z0-9_-]{43}$")


def new_web_session() -> tuple[str, str]:
    """(token, its hash) for a dashboard login: 256 random bits, only the hash is stored."""
    token = f"{WEB_SESSION_PREFIX}{secrets.token_urlsafe(32)}"
    return token, hash_secret(token)


def is_web_session(value: str) -> bool:
    """Whether ``value`` is shaped like a dashboard session token (else it is not one)."""
    return _WEB_SESSION_RE.match(value) is not None


def api_key_prefix(value: str) -> str | None:
    """The prefix of a well-formed API key, else None (then it is not an API key)."""
    match = _API_KEY_RE.match(value)
    return None if match is None else match.group(1)
