"""Duplicate member names in a unit's JSON payload: refused, not "last one wins".

RFC 8259 says an object's names SHOULD be unique and leaves parsers to disagree when they
are not: pydantic-core and orjson keep the last value, other parsers the first or an error.
A payload like ``{"signals": {"Vehicle.Speed": 0, "Vehicle.Speed": 250}}`` is a firmware bug
(two writers of one field), and whoever reads the raw bytes later (the quarantine keeps
them) may read another value than the gateway stored. So every decoder of the device
contract refuses it with :attr:`~schemas.payloads.Reason.DUPLICATE_KEY` (decision 0065).

The check must cost next to nothing on the happy path, where the payload has already been
parsed (last one wins) by pydantic-core, which does not report duplicates. In JSON a colon
outside a string is always a name separator, one per member, duplicates included. So the
number of colons in the bytes is at least the number of members written, which is at least
the number of members of the parsed objects; if the two counts are equal, no name can have
occurred twice (and no string holds a colon). That is one ``bytes.count`` of one byte.
Otherwise (a duplicate, or a colon in a string such as ``"12:30"``) :func:`duplicate_key`
parses again with the standard library to find out, and names the key.

Imports: the standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["duplicate_key", "member_count", "unique_at_a_glance"]


def unique_at_a_glance(payload: bytes, members: int) -> bool:
    """True if ``payload`` (valid JSON whose parsed objects have ``members`` members) cannot
    have a name twice in one object; False: maybe (see the module's docstring)."""
    return payload.count(b":") == members


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
