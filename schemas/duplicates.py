"""Duplicate member names in a unit's JSON payload: refused, not "last one wins".

RFC 8259 says an object's names SHOULD be unique and leaves parsers to disagree when they
are not: pydantic-core and orjson keep the last value, other parsers the first or an error.
A payload like ``{"signals": {"Vehicle.Speed": 0, "Vehicle.Speed": 250}}`` is a firmware bug
(two writers of one field), and whoever reads the raw bytes later (the quarantine keeps
them) may read another value than the gateway stored. So every decoder of the device
contract refuses it with :attr:`~schemas.payloads.Reason.DUPLICATE_KEY` (decision 0065).

The check must cost next to nothing on the happy path, where the payload has already been
parsed (last one wins) by pydantic-core, which does not report duplicates. Every member
name in the raw bytes is a string followed by optional whitespace and a colon. When no
quote is followed by whitespace and a colon (compact JSON, and the usual ``{"a": 1}``),
every name's closing quote is directly followed by the colon, so ``'":'`` occurs at least
once per name (more only inside a string that holds a quote and a colon). If that count
equals the number of members of the parsed objects, no name can have occurred twice: two
C scans of the bytes (``bytes.count`` and one regular-expression search). Otherwise
:func:`duplicate_key` parses again with the standard library to find out, and names the
key.

Imports: the standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["duplicate_key", "member_count", "unique_at_a_glance"]

_QUOTE_SPACE_COLON: Final = re.compile(rb'"[ \t\n\r]+:')


def unique_at_a_glance(payload: bytes, members: int) -> bool:
    """True if ``payload`` (valid JSON whose parsed objects have ``members`` members) cannot
    have a name twice in one object; False: maybe (see the module's docstring)."""
    return payload.count(b'":') == members and _QUOTE_SPACE_COLON.search(payload) is None


def member_count(value: Any) -> int:
    """How many members the objects in a parsed JSON value have, all levels."""
    if isinstance(value, dict):
        return len(value) + sum(member_count(v) for v in value.values() if _nested(v))
    if isinstance(value, list):
        return sum(member_count(v) for v in value if _nested(v))
    return 0


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list)


class _Duplicate(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _pairs(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _Duplicate(name)
        out[name] = value
    return out


def duplicate_key(payload: bytes, members: int) -> str | None:
    """The first member name that occurs twice in one object of ``payload``, or None.

    ``members`` is :func:`member_count` of what a last-one-wins parser made of ``payload``
    (pass the already parsed value's count: the check then costs one regular-expression
    scan unless the count differs). ``payload`` must be valid JSON.
    """
    if unique_at_a_glance(payload, members):
        return None
    try:
        json.loads(payload, object_pairs_hook=_pairs)
    except _Duplicate as dup:
        return dup.name
    except ValueError:  # not JSON: not for this check to say
        return None
    return None
