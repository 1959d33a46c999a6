"""The one pagination convention of every list the API returns.

A list answers ``{"items": [...], "next": "<cursor>" | null}``. ``next`` is an opaque
cursor: pass it back as the ``cursor`` query parameter (with the same filters) for the next
page; ``null`` means there is nothing more. ``limit`` (1 to :data:`MAX_PAGE`) is the most
items a page holds, and a page also ends early, with a cursor, once its JSON reaches
:data:`MAX_RESPONSE_BYTES`, so no response is unbounded whatever the items hold.

Cursors are keyset positions (the sort key of the last item returned), not offsets: a page
costs the same however deep it is, and rows added or removed meanwhile never shift an item
onto two pages or off both. A cursor is base64url of ``[kind, *key]``; the kind stops a
cursor of one list from being replayed on another, and a cursor that does not decode
answers 422 ``invalid_request`` like any other bad parameter.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, TypeVar, cast

import orjson
from fastapi import Query
from pydantic import BaseModel

from gateway.api.bounds import MAX_PAGE, MAX_RESPONSE_BYTES
from gateway.api.errors import invalid_request

__all__ = [
    "DEFAULT_PAGE",
    "Cursor",
    "Limit",
    "cursor_key",
    "decode_cursor",
    "encode_cursor",
    "page_of",
]

DEFAULT_PAGE: Final = 100
#: longest cursor accepted (the longest one issued is well under 100 characters)
_MAX_CURSOR: Final = 200

Limit = Annotated[
    int,
    Query(ge=1, le=MAX_PAGE, description=f"Most items on a page (1 to {MAX_PAGE})."),
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=_MAX_CURSOR,
        description="`next` of the previous page (with the same filters); omit for the first.",
    ),
]

KeyPart = int | str
T = TypeVar("T", bound=BaseModel)


def encode_cursor(kind: str, key: Sequence[KeyPart]) -> str:
    raw = orjson.dumps([kind, *key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str | None, types: Sequence[type]) -> tuple[Any, ...] | None:
    """The key in ``cursor`` (None for the first page); 422 unless it is a cursor of this
    list whose parts have ``types``. An empty cursor (``?cursor=``) is the first page."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        value = None
    if (
        isinstance(value, list)
        and len(value) == len(types) + 1
        and value[0] == kind
        and all(type(part) is t for part, t in zip(value[1:], types, strict=True))
        and all(not isinstance(part, int) or abs(part) < 2**63 for part in value[1:])
        # no NUL in a text key: PostgreSQL refuses it in a parameter (a 500, not a 422)
        and all(not isinstance(part, str) or "\x00" not in part for part in value[1:])
    ):
        return tuple(value[1:])
    raise invalid_request(
        ["query", "cursor"],
        "query parameter 'cursor' is not a cursor this list issued; pass the 'next' value "
        "of the previous page unchanged, or omit it for the first page",
        "invalid_cursor",
        cursor,
    )


K = TypeVar("K", int, str)


def cursor_key(kind: str, cursor: str | None, type_: type[K]) -> K | None:
    """The single-part key in ``cursor`` (an id, a VIN); None for the first page."""
    key = decode_cursor(kind, cursor, (type_,))
    return None if key is None else cast(K, key[0])


def page_of(
    items: Sequence[T],
    *,
    limit: int,
    kind: str,
    key: Callable[[T], Sequence[KeyPart]],
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> tuple[list[T], str | None]:
    """The items of one page and its ``next`` cursor.

    ``items`` holds up to ``limit + 1`` items in list order (one more than the page, to
    know whether another page follows). The page ends after ``limit`` items, or after the
    first item that takes its JSON past ``max_bytes`` (at least one item is always given,
    so paging always moves on)."""
    page: list[T] = []
    size = 0
    for item in items[:limit]:
        if page and size >= max_bytes:
            break
        page.append(item)
        size += len(item.__pydantic_serializer__.to_json(item)) + 1
    more = len(page) < len(items)
    return page, encode_cursor(kind, key(page[-1])) if more and page else None
