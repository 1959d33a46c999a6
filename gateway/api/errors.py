"""One error format for every failure, and the handlers that enforce it.

Every error response, whoever raised it (a route, FastAPI's request validation, Starlette's
router, the store, a bug), has the body::

    {"error": {"code": "vehicle_not_found",
               "message": "No vehicle with VIN ... has reported to this gateway. ...",
               "details": [{"loc": ["path", "vin"], "msg": "...", "type": "...", "input": ...}]}}

``code`` is stable and meant for programs; ``message`` is a sentence for people that says
what was wrong and how to fix it; ``details`` lists the specific problems (one per invalid
parameter), and is empty when there is nothing more to say. FastAPI's own handlers answer in
other shapes (``{"detail": ...}``, plain text), so :func:`install_error_handlers` replaces
them. Unexpected exceptions become a bare 500 ``internal_error``: the traceback goes to the
log, never to the client.

The gateway's own exceptions that mean the same answer wherever they come from (an unknown
vehicle or a moving one for a command, a reused idempotency key, bad command parameters, a
closed invitation, an unreadable store) are mapped to their status here, once
(:data:`GATEWAY_ERRORS`, ``StoreError``), so routes let them through instead of catching
them; an exception whose answer depends on the route (a duplicate e-mail address, a VIN
held by another account) is answered by the route.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import JsonValue
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gateway.api.limits import api_routes
from gateway.api.models import ErrorDetail, ErrorInfo, ErrorResponse
from gateway.commands.service import VehicleMoving, VehicleNotFound
from gateway.errors import StoreError
from gateway.statedb.accounts import InvitationClosed
from gateway.statedb.commands import IdempotencyConflict
from schemas.commands import CommandParamsError

__all__ = [
    "ApiError",
    "error_info",
    "error_response",
    "install_error_handlers",
    "invalid_request",
    "store_unavailable",
]

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by routes and dependencies to answer with a specific error."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Sequence[ErrorDetail] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = dict(headers) if headers else None


def invalid_request(loc: list[str | int], msg: str, type_: str, input_: Any = None) -> ApiError:
    """A validation error found by a route (rather than by FastAPI), in the same shape."""
    return ApiError(
        422,
        "invalid_request",
        f"The request is invalid: {msg}.",
        [ErrorDetail(loc=loc, msg=msg, type=type_, input=input_)],
    )


def error_info(code: str, message: str, details: Iterable[ErrorDetail] = ()) -> ErrorInfo:
    return ErrorInfo(code=code, message=message, details=list(details))


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Iterable[ErrorDetail] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=error_info(code, message, details))
    return _AsciiJSONResponse(
        body.model_dump(mode="json"), status_code=status_code, headers=headers
    )


class _AsciiJSONResponse(JSONResponse):
    """An error body, in ASCII JSON when it cannot be UTF-8. What a request sent comes back
    in ``details[].input``, and a lone surrogate (``"\\ud800"``: valid JSON text, not UTF-8)
    made the default encoding raise, so the bad request got a 500 instead of its 422."""

    def render(self, content: object) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def store_unavailable(exc: StoreError, path: Path | None = None) -> ErrorInfo:
    """The error for a database that cannot be opened or read (503 everywhere)."""
    what = "The telemetry database" if path is None else f"The telemetry database {path}"
    return error_info(
        "database_unavailable",
        f"{what} cannot be read ({exc}). Check that the API's database path points at the "
        "gateway's SQLite file and that it is readable, then retry; GET /healthz reports "
        "the database status.",
    )


# --- handlers ------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


def _describe_loc(loc: Sequence[str | int]) -> str:
    if len(loc) >= 2 and loc[0] in ("query", "path", "header", "cookie"):
        name = ".".join(str(part) for part in loc[1:])
        return f"{loc[0]} parameter {name!r}"
    return ".".join(str(part) for part in loc) or "request"


def _json_input(value: Any) -> JsonValue:
    """The offending input if it is a plain JSON scalar or list of them, else None (some
    validation errors carry Python objects that must not leak into the response)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and Infinity are refused input, and no JSON number
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return [_json_input(v) for v in value]
    return None


#: error types pydantic reports when a body is not the JSON object a route expects
_NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type", "json_invalid", "model_type"})


def _body_hint(request: Request, errors: Sequence[Any]) -> str:
    """What to send instead, when the body as a whole was not what the route reads (sent
    as a form, as text, without a Content-Type, or not at all)."""
    whole_body = any(
        tuple(err.get("loc", ())) in (("body",), ("body", 0))
        and err.get("type") in _NOT_AN_OBJECT | {"missing"}
        for err in errors
    )
    if not whole_body:
        return ""
    sent = request.headers.get("content-type") or "no Content-Type"
    return (
        f" This route takes a JSON object with 'Content-Type: application/json' (the request "
        f"sent {sent})."
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        details.append(
            ErrorDetail(
                loc=list(err.get("loc", ())),
                msg=msg,
                type=err.get("type"),
                input=_json_input(err.get("input")),
            )
        )
    problems = "; ".join(f"{_describe_loc(d.loc)}: {d.msg}" for d in details)
    return error_response(
        422,
        "invalid_request",
        f"The request is invalid: {problems}.{_body_hint(request, exc.errors())} Fix the "
        "listed parameters and retry; GET /docs describes every parameter.",
        details,
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path (Starlette's own 405 names only
    the first route that matched the path, so ``PUT /v1/vehicles`` said ``Allow: GET``
    though ``POST`` is there too)."""
    scope = {**request.scope, "method": "\0"}  # matches no route fully: every partial match
    methods: set[str] = set()
    for route in api_routes(request.app):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Errors Starlette and FastAPI raise themselves: no route (404), wrong method (405), a
    body that does not decode (400, answered as the 422 of every other bad input)."""
    assert isinstance(exc, StarletteHTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return error_response(
            404,
            "not_found",
            f"There is no resource at {request.url.path}. GET /docs lists the API's routes "
            "(note the /v1 prefix).",
            headers=exc.headers,
        )
    if exc.status_code == 400:  # FastAPI: a body it could not decode (not UTF-8 JSON)
        sent = request.headers.get("content-type") or "no Content-Type"
        return error_response(
            422,
            "invalid_request",
            f"The request body could not be read ({exc.detail}): send a JSON object encoded "
            f"as UTF-8 with 'Content-Type: application/json' (the request sent {sent}).",
            [ErrorDetail(loc=["body"], msg=str(exc.detail), type="body_unreadable")],
        )
    if exc.status_code == 405:
        allowed = ", ".join(allowed_methods(request))
        return error_response(
            405,
            "method_not_allowed",
            f"{where} is not supported; this resource allows {allowed or 'other methods'}.",
            headers={**(exc.headers or {}), "Allow": allowed},
        )
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "HTTP error"
    return error_response(
        exc.status_code,
        phrase.lower().replace(" ", "_").replace("-", "_"),
        f"{where} failed: {exc.detail}.",
        headers=exc.headers,
    )


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    logger.error("%s %s: %s", request.method, request.url.path, exc)
    body = ErrorResponse(error=store_unavailable(exc))
    return JSONResponse(body.model_dump(mode="json"), status_code=503)


def _command_params(exc: CommandParamsError) -> ApiError:
    return ApiError(
        422,
        "invalid_request",
        f"{exc}",
        [ErrorDetail(loc=["body", "params", exc.field], msg=str(exc), type="invalid_param")],
    )


#: the gateway's exceptions that mean the same answer wherever a route lets them through:
#: one place maps each to its status, code and message (the rest are answered by the route
#: that knows more, or as a 500)
GATEWAY_ERRORS: Final[dict[type[Exception], Callable[[Any], ApiError]]] = {
    VehicleNotFound: lambda exc: ApiError(404, "vehicle_not_found", f"{exc}."),
    VehicleMoving: lambda exc: ApiError(409, "vehicle_moving", f"{exc}."),
    IdempotencyConflict: lambda exc: ApiError(409, "idempotency_conflict", f"{exc}"),
    InvitationClosed: lambda exc: ApiError(
        409, "invitation_closed", f"Invitation {exc.invitation_id}: {exc.why}."
    ),
    CommandParamsError: _command_params,
}


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    for kind, answer in GATEWAY_ERRORS.items():
        if isinstance(exc, kind):
            return await _api_error(request, answer(exc))
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500,
        "internal_error",
        "The API failed unexpectedly while handling this request. This is a bug, not a "
        "problem with the request; the server log has the details.",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Replace FastAPI's default handlers so that every error uses :class:`ErrorResponse`.

    ``Exception`` is special in Starlette: its handler runs in the outermost middleware, and
    the exception is re-raised afterwards so the server can log it too.
    """
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreError, _store_error)
    for kind in GATEWAY_ERRORS:
        app.add_exception_handler(kind, _gateway_error)
    app.add_exception_handler(Exception, _unexpected_error)


# --- documentation -------------------------------------------------------------------------

#: what the telemetry routes' errors mean, for their OpenAPI ``responses``
_ERROR_DOCS: Final[dict[int, str]] = {
    403: "Your role may not do this (`forbidden`).",
    404: "Unknown vehicle (`vehicle_not_found`).",
    422: "Invalid parameter (`invalid_request`, or `invalid_vin` for a malformed VIN); "
    "`details` names each bad parameter in `loc`.",
    503: "The telemetry database cannot be read (`database_unavailable`).",
}


def documented(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: each status answers an :class:`ErrorResponse`."""
    return {code: {"model": ErrorResponse} for code in status_codes}


def described(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of the telemetry routes: an :class:`ErrorResponse` with what
    each status means there."""
    return {
        code: {"model": ErrorResponse, "description": _ERROR_DOCS[code]} for code in status_codes
    }
