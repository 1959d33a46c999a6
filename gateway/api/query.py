"""Unknown query parameters are refused, on every route, from what the route declares.

``GET /v1/alerts?severty=critical`` answered the unfiltered list, which reads as filtered.
:class:`KnownQuery`, a dependency of the whole app, checks every API route's request: the
names a route accepts are those of its declared query parameters (its own and its dependencies',
as FastAPI reads them), and a request naming any other answers ``400
unknown_query_parameter`` saying which, with the accepted ones and, when one is close, the
name probably meant. No route reads the query string other than through its declared
parameters, so nothing is passed through; a route that ever needs to (a proxy) would say
so in :data:`PASS_THROUGH`.
"""

from __future__ import annotations

import difflib
from typing import Any, Final

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from gateway.api.errors import ApiError
from gateway.api.limits import api_routes
from gateway.api.models import ErrorDetail

__all__ = ["PASS_THROUGH", "KnownQuery", "accepted_query"]

#: routes (path templates) that take query parameters they do not declare: none today
PASS_THROUGH: Final[frozenset[str]] = frozenset()


def accepted_query(route: APIRoute) -> frozenset[str]:
    """The query parameters ``route`` declares, its own and its dependencies' (by the name
    a request uses: the alias; a pydantic model as the query, by its fields' names)."""
    names: set[str] = set()
    todo: list[Dependant] = [route.dependant]
    while todo:
        dependant = todo.pop()
        todo.extend(dependant.dependencies)
        for field in dependant.query_params:
            kind = getattr(field, "type_", None)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                names.update(f.alias or name for name, f in kind.model_fields.items())
            else:
                names.add(field.alias)
    return frozenset(names)


def _detail(name: str, accepted: frozenset[str]) -> ErrorDetail:
    close = difflib.get_close_matches(name, sorted(accepted), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ErrorDetail(
        loc=["query", name[:100]],
        msg=f"unknown query parameter {name[:100]!r}{hint}",
        type="unknown_query_parameter",
    )


def _refusal(method: str, path: str, names: list[str], accepted: frozenset[str]) -> ApiError:
    details = [_detail(name, accepted) for name in names[:20]]
    which = "; ".join(d.msg for d in details)
    takes = f"it takes {', '.join(sorted(accepted))}" if accepted else "it takes none"
    return ApiError(
        400,
        "unknown_query_parameter",
        f"{method} {path}: {which}; {takes}. Correct or remove it and retry (it would have "
        "been ignored: a filter with a typo answered the unfiltered list); GET /docs "
        "describes every parameter.",
        details,
    )


class KnownQuery:
    """The app-wide dependency (``FastAPI(dependencies=...)``) that refuses a query
    parameter the route does not declare. It reads the route Starlette matched
    (``scope["route"]``); only the routes of ``gateway.api.routes`` are checked (not the
    dashboard's pages, whose script reads their query, nor the docs page). Each route's
    accepted names are worked out once, at its first request with a query."""

    def __init__(self) -> None:
        self._api: set[tuple[str, Any]] | None = None
        self._accepted: dict[int, frozenset[str] | None] = {}

    def _accepted_for(self, request: Request) -> frozenset[str] | None:
        route = request.scope.get("route")
        if not isinstance(route, APIRoute):
            return None
        key = id(route)
        if key not in self._accepted:
            if self._api is None:
                routes = api_routes(request.app)
                self._api = {(r.path, r.endpoint) for r in routes if isinstance(r, APIRoute)}
            ours = (route.path, route.endpoint) in self._api and route.path not in PASS_THROUGH
            self._accepted[key] = accepted_query(route) if ours else None
        return self._accepted[key]

    async def __call__(self, request: Request) -> None:  # async: no thread-pool hop
        if not request.scope.get("query_string"):
            return
        accepted = self._accepted_for(request)
        if accepted is None:
            return
        # the Request's parsed query, which FastAPI reads the route's parameters from (it
        # is parsed once per request, not again here)
        names = [name for name in dict.fromkeys(request.query_params) if name not in accepted]
        if names:
            raise _refusal(request.method, request.url.path, names, accepted)
