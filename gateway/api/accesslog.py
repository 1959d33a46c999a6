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
"""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = ["RedactSecretPaths", "install", "redact_path"]

#: paths whose last segment is a bearer secret
_SECRET_PATHS: Final = re.compile(r"^(/v1/assistance/)[^/?#]+")
_REDACTED: Final = r"\1<redacted>"


def _redact_query(query: str) -> str:
    return "&".join(
        f"{part.partition('=')[0]}=<redacted>" if "=" in part else "<redacted>" if part else ""
        for part in query.split("&")
    )


def redact_path(path: str) -> str:
    """``path`` (with its query, as uvicorn logs it) without a secret segment or query value."""
    path, mark, query = path.partition("?")
    return _SECRET_PATHS.sub(_REDACTED, path) + mark + _redact_query(query)


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
