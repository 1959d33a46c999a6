"""The numbers every route shares: the largest id, page and response (plain constants, so
models, routes and paging use them without importing the body-limit middleware in
``limits``). See ``gateway.api.limits`` for why every number a client sends is bounded."""

from __future__ import annotations

from typing import Final

from pydantic import BeforeValidator

__all__ = ["MAX_ID", "MAX_PAGE", "MAX_RESPONSE_BYTES", "NOT_A_BOOLEAN", "ONLY_A_NUMBER"]

#: the largest id a client may send: 2**53 - 1, the largest integer every JSON client
#: (JavaScript included) represents exactly; every id the state database hands out is far
#: below, and SQLite's and PostgreSQL's 64-bit integers hold it
MAX_ID: Final = 2**53 - 1
#: the largest page any list returns (``limit``)
MAX_PAGE: Final = 1000
#: a list stops adding items once its JSON reaches this size and answers a cursor for the
#: rest, so no page is larger than this plus one item (see gateway.api.paging)
MAX_RESPONSE_BYTES: Final = 1024 * 1024


def _only_a_number(value: object) -> object:
    if isinstance(value, bool | str):  # pydantic would take true as 1 and "5" as 5
        raise ValueError("a JSON number, not a boolean or a string")
    return value


def _not_a_boolean(value: object) -> object:
    if isinstance(value, bool):  # pydantic would take true as 1
        raise ValueError("a number or a time, not a boolean")
    return value


#: for every number in a request body: JSON ``true`` and ``"5"`` are refused, not taken as
#: 1 and 5 (a whole float such as ``60.0`` stays a number, as JSON has no integer type)
ONLY_A_NUMBER: Final = BeforeValidator(_only_a_number)
#: for a number that may also be written as text (a time: epoch ms or ISO 8601)
NOT_A_BOOLEAN: Final = BeforeValidator(_not_a_boolean)
