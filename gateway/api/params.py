"""Time formatting and the query-parameter types the routes share.

Every time in the API is an integer of milliseconds since the Unix epoch (what devices send
and the store keeps), paired in responses with an ISO 8601 UTC twin for humans (``ts`` and
``ts_iso``). Query parameters accept either form, so a script can pass what it has and a
person can type a date.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator, Field, WithJsonSchema

from gateway.api.bounds import NOT_A_BOOLEAN
from schemas import CATALOG

__all__ = [
    "MAX_TIMESTAMP_MS",
    "SECONDS_SUSPECT_BELOW_MS",
    "TIME_FORMS",
    "Timestamp",
    "check_range",
    "iso",
    "iso_or_none",
    "now_ms",
    "parse_timestamp",
    "split_signals",
    "unknown_signals",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
#: 9999-12-31T23:59:59.999Z: the last instant an ISO 8601 timestamp (and ``datetime``) can
#: express, so every time a query accepts also has an ISO twin in the response
MAX_TIMESTAMP_MS: Final = 253_402_300_799_999
#: 1973-03-03T09:46:40Z in milliseconds. A number of epoch milliseconds below this (and above
#: 0) is almost surely epoch SECONDS: a present-day time in seconds (1765000000) read as
#: milliseconds is January 1970, and the answer would be silently empty or wrong.
SECONDS_SUSPECT_BELOW_MS: Final = 10**11
_EPOCH_MS_RE: Final = re.compile(r"[+-]?\d+")
# "2025-11-27T08:00:00+01:00" typed into a URL without percent-encoding arrives as
# "2025-11-27T08:00:00 01:00" ("+" means space in a query string): put the "+" back.
_SPACED_OFFSET_RE: Final = re.compile(r"(T[\d:.,]+) (\d{2}(?::?\d{2})?)$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    """``1764230400000`` -> ``"2025-11-27T08:00:00.000Z"``.

    Integer arithmetic (no float seconds), so the millisecond digits are always exact.
    """
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_or_none(ms: int | None) -> str | None:
    return None if ms is None else iso(ms)


def parse_timestamp(value: object) -> object:
    """Turn a query value (epoch milliseconds or ISO 8601) into epoch milliseconds.

    Used as a pydantic ``BeforeValidator``, so a bad value becomes an ordinary validation
    error naming the parameter. An ISO time without an offset is taken as UTC, the only zone
    the API speaks. A number between 0 and ``SECONDS_SUSPECT_BELOW_MS`` (exclusive) is
    refused as epoch seconds given by mistake; 0, the epoch in either unit, stays "from the
    beginning". Other values that are not strings are passed through for pydantic to judge.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return _not_seconds(value)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _EPOCH_MS_RE.fullmatch(text):
        return _not_seconds(int(text))
    try:
        moment = datetime.fromisoformat(_SPACED_OFFSET_RE.sub(r"\1+\2", text))
    except ValueError:
        raise ValueError(
            f"{value!r} is neither epoch milliseconds nor an ISO 8601 timestamp; "
            "use e.g. 1764230400000 or 2025-11-27T08:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


#: How every time parameter is written, for the OpenAPI descriptions.
TIME_FORMS: Final = (
    "Epoch milliseconds or ISO 8601; an ISO time without an offset is UTC. A number from 1 to "
    "10^11 - 1 (before 1973-03-03 as milliseconds) is refused as epoch seconds."
)


def _not_seconds(ms: int) -> int:
    if 0 < ms < SECONDS_SUSPECT_BELOW_MS:
        raise ValueError(
            f"{ms} is before 1973-03-03 as milliseconds since the epoch; this looks like "
            f"seconds, multiply by 1000 ({ms * 1000} is {iso(ms * 1000)})"
        )
    return ms


#: A point in time as a query parameter: epoch milliseconds or an ISO 8601 timestamp.
Timestamp = Annotated[
    int,
    BeforeValidator(parse_timestamp),
    NOT_A_BOOLEAN,
    Field(ge=0, le=MAX_TIMESTAMP_MS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_TIMESTAMP_MS},
                {"type": "string", "format": "date-time"},
            ],
            "description": TIME_FORMS,
            "examples": [1764230400000, "2025-11-27T08:00:00Z"],
        }
    ),
]


def check_range(start: int | None, end: int | None, where: str = "query") -> None:
    """A 422 in the shape of every validation error (``loc`` ``[where, "start"]``, type
    ``invalid_range``, as the reports answer) unless ``start`` is before ``end`` (either may
    be missing). A list asked for the range backwards answered an empty list, which reads
    as "nothing happened" rather than "you swapped the two"."""
    if start is not None and end is not None and not start < end:
        raise RequestValidationError(
            [
                {
                    "loc": (where, "start"),
                    "msg": f"start must be before end (start {iso(start)}, end {iso(end)})",
                    "type": "invalid_range",
                    "input": start,
                }
            ]
        )


def split_signals(raw: list[str]) -> list[str]:
    """``["a,b", "c", "a"]`` -> ``["a", "b", "c"]``: repeated and comma-separated forms both
    work (VSS paths never contain commas); blanks and repeats are dropped, order is kept."""
    out: dict[str, None] = {}
    for item in raw:
        for part in item.split(","):
            name = part.strip()
            if name:
                out[name] = None
    return list(out)


def unknown_signals(signals: list[str]) -> list[str]:
    return [s for s in signals if s not in CATALOG]
