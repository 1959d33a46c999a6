"""Secrets out of the HTTP access log.

An assistance share's link carries its token in the path (``/v1/assistance/<token>``: a
partner opens it without an account), and uvicorn logs every request's path at INFO. The
README promises that no token is ever logged, so :class:`RedactSecretPaths`, attached to
the ``uvicorn.access`` logger when the app starts, replaces such a path's secret with
``<redacted>`` before any handler sees the record.

uvicorn also logs the query string verbatim, and a client may put a secret there
(``?access_token=...``, ``?password=...``): every query value is replaced the same way,
only the parameter names stay (a part without ``=`` may itself be the secret, so it goes
whole).

The path is matched loosely (security review 9, decision 0061): uvicorn logs the path a
client sent, also one the router does not serve, so ``//v1/assistance/<token>`` (a base
URL with a trailing slash), ``/v1/assistance//<token>``, ``/V1/Assistance/<token>`` or a
proxy's prefix (``/api/v1/assistance/<token>``) logged the token with a 404. Now the
segment after any ``assistance`` segment goes, in any case, and so does any segment of 32
or more characters of the URL-safe alphabet anywhere in the path: every secret the
gateway issues is at least that long (a share's token is 32, API keys, invitations and
transfers 43 or more), and no route has a segment like it (VINs are 17, ids digits).
"""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = ["RedactSecretPaths", "install", "redact_path"]

#: the segment after an ``assistance`` segment is a share's bearer token
_SECRET_PATHS: Final = re.compile(r"(?i)(/assistance/+)[^/?#]+")
_REDACTED: Final = r"\1<redacted>"
#: a segment that looks like a secret the gateway issued (``secrets.token_urlsafe(24)``
#: and longer): 32 or more characters of the URL-safe alphabet
_SECRET_SEGMENT: Final = re.compile(r"(?<=/)[A-Za-z0-9_-]{32,}(?=/|$)")


def _redact_query(query: str) -> str:
    return "&".join(
        f"{part.partition('=')[0]}=<redacted>" if "=" in part else "<redacted>" if part else ""
        for part in query.split("&")
    )


def redact_path(path: str) -> str:
    """``path`` (with its query, as uvicorn logs it) without a secret segment or query value."""
    path, mark, query = path.partition("?")
    path = _SECRET_SEGMENT.sub("<redacted>", _SECRET_PATHS.sub(_REDACTED, path))
    return path + mark + _redact_query(query)


class RedactSecretPaths(logging.Filter):
    """Rewrites uvicorn's access record (args: client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_path(args[2]), *args[3:])
        return True


def install(logger_name: str = "uvicorn.access") -> None:
    """Attach the filter (once) to the access logger."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactSecretPaths) for f in logger.filters):
        logger.addFilter(RedactSecretPaths())
