"""The numbers every route shares: the largest id, page and response (plain constants, so
models, routes and paging use them without importing the body-limit middleware in
``limits``). See ``gateway.api.limits`` for why every number a client sends is bounded."""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_ID", "MAX_PAGE", "MAX_RESPONSE_BYTES"]

#: the largest id a client may send: 2**53 - 1, the largest integer every JSON client
#: (JavaScript included) represents exactly; every id the state database hands out is far
#: below, and SQLite's and PostgreSQL's 64-bit integers hold it
MAX_ID: Final = 2**53 - 1
#: the largest page any list returns (``limit``)
MAX_PAGE: Final = 1000
#: a list stops adding items once its JSON reaches this size and answers a cursor for the
#: rest, so no page is larger than this plus one item (see gateway.api.paging)
MAX_RESPONSE_BYTES: Final = 1024 * 1024
