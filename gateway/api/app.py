"""The FastAPI application: settings, the app factory and the routes.

Database access: each request opens its own read-only :class:`SqliteTelemetryStore` through
the :func:`open_reader` dependency and closes it when the request is done. Opening a SQLite
connection costs tens of microseconds, far less than any query here, and a connection per
request means no connection is ever shared between threads, no cache to invalidate when the
file is replaced, and a database that comes back after a failure is picked up by the next
request. Read-only connections cannot take the write lock, so the API never delays ingest.

Routes are plain ``def`` functions: SQLite calls block, and FastAPI runs sync routes (and
sync dependencies) in its thread pool, which keeps the event loop free.

No ``from __future__ import annotations`` here: the history route's ``limit`` annotation
refers to ``settings`` in the enclosing function, and FastAPI can only resolve string
annotations against module globals.
"""

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import WithJsonSchema
from starlette.concurrency import run_in_threadpool

from gateway.accounts.bootstrap import ensure_first_admin, print_first_admin
from gateway.api.accounts import accounts_router
from gateway.api.commands import commands_router
from gateway.api.docs import install_docs
from gateway.api.errors import (
    ApiError,
    install_error_handlers,
    invalid_request,
)
from gateway.api.health import health_router
from gateway.api.limits import MAX_PAGE, BodyLimit, document_body_limits
from gateway.api.models import (
    Catalog,
    CatalogSignal,
    ErrorDetail,
    ErrorResponse,
    History,
    HistoryPointOut,
    QuarantineOut,
    QuarantinePage,
    Vehicle,
    VehicleDetail,
    VehiclePage,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, decode_cursor, page_of
from gateway.api.params import Timestamp, iso, now_ms, split_signals, unknown_signals
from gateway.api.prometheus import render_metrics
from gateway.api.security import (
    Auth,
    AuthContext,
    AuthSettings,
    Caller,
    readable_data,
    require_admin,
    vehicle_not_found,
)
from gateway.auth.policy import Principal
from gateway.auth.tokens import load_or_create_secret
from gateway.commands.service import CommandService, CommandSettings
from gateway.errors import ConfigurationError, StoreError
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog
from gateway.statedb.commands import CommandRepository
from gateway.statedb.database import StateDatabase, default_url
from gateway.store import SqliteTelemetryStore, TelemetryReader, VehicleState, VehicleSummary
from schemas import CATALOG, CONTRACT_VERSION, VIN_PATTERN, InvalidVinError, Reason, validate_vin

__all__ = ["ApiSettings", "create_app", "open_reader"]

logger = logging.getLogger(__name__)

#: history window when the request gives no start
DEFAULT_WINDOW_MS: Final = 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """What the API needs to run; the CLI builds it from flags and ``TELEMATICS_*``."""

    #: the gateway's SQLite database (created with the schema if missing)
    db_path: Path
    #: the largest ``limit`` /v1/vehicles/{vin}/history accepts (bounds response size)
    max_history_limit: int = MAX_PAGE * 10
    #: the ``limit`` of a history request that gives none
    default_history_limit: int = 1000
    #: remote commands (a broker and a state database); None: the command routes answer 503
    commands: CommandSettings | None = None
    #: accounts, tokens, limits
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: the state database (accounts, commands); default: the commands' one, else the SQLite
    #: file ``state.db`` next to the telemetry database
    state_db_url: str | None = None
    #: a vehicle whose status says online but that sent nothing for this long is shown
    #: offline with reason ``silent`` (``gateway.store.presence``); the contract has units
    #: publish at least every 5 minutes
    silent_after_s: float = 600.0
    #: the clock that decides the silence (tests of it set their own)
    clock_ms: Callable[[], int] = field(default=now_ms, compare=False, repr=False)

    @property
    def silent_after_ms(self) -> int:
        return int(self.silent_after_s * 1000)

    @property
    def resolved_state_db_url(self) -> str:
        if self.state_db_url is not None:
            return self.state_db_url
        if self.commands is not None:
            return self.commands.state_db_url
        return default_url(self.db_path.parent)

    def __post_init__(self) -> None:
        if (
            self.commands is not None
            and self.state_db_url is not None
            and self.commands.state_db_url != self.state_db_url
        ):
            raise ConfigurationError(
                "the API and its command service must use one state database: "
                f"{self.state_db_url!r} != {self.commands.state_db_url!r}"
            )
        if not 1 <= self.default_history_limit <= self.max_history_limit:
            raise ConfigurationError(
                f"default_history_limit ({self.default_history_limit}) must be between 1 and "
                f"max_history_limit ({self.max_history_limit})"
            )


# --- dependencies --------------------------------------------------------------------------


def open_reader(request: Request) -> Iterator[TelemetryReader]:
    """A read-only store for the duration of one request (see the module docstring).

    A database that cannot be opened raises :class:`StoreError`, answered with 503.
    """
    settings: ApiSettings = request.app.state.settings
    reader = SqliteTelemetryStore(settings.db_path, readonly=True)
    try:
        yield reader
    finally:
        reader.close()


Reader = Annotated[TelemetryReader, Depends(open_reader)]


def valid_vin(
    vin: Annotated[
        str,
        PathParam(description="Vehicle Identification Number (ISO 3779), 17 characters."),
        # documents the format without letting FastAPI reject it: a bad VIN deserves its
        # own error code (invalid_vin) and message, not a generic pattern mismatch
        WithJsonSchema({"type": "string", "pattern": VIN_PATTERN, "example": "WVWZZZ1JZXW000001"}),
    ],
) -> str:
    try:
        return validate_vin(vin)
    except InvalidVinError as exc:
        raise ApiError(
            422,
            "invalid_vin",
            f"{exc}. VINs are upper case; GET /v1/vehicles lists the known ones.",
            [ErrorDetail(loc=["path", "vin"], msg=str(exc), type="invalid_vin", input=vin)],
        ) from None


Vin = Annotated[str, Depends(valid_vin)]


def _known_vehicle(
    context: AuthContext, principal: Principal, reader: TelemetryReader, vin: str
) -> tuple[VehicleState | None, int]:
    """The vehicle's stored state in the holding period the caller reads (and that
    period), None if it is provisioned but never reported in it; 404 when the caller may
    not see it, or nobody provisioned it and it never reported; 403 when their grant does
    not include ``read``."""
    tenure, registration = readable_data(context, principal, vin)
    state = reader.vehicle_state(vin, tenure=tenure)
    if state is None and registration is None:
        raise vehicle_not_found(vin)
    return state, tenure


def _vehicle_page(
    context: AuthContext,
    principal: Principal,
    reader: TelemetryReader,
    after: str | None,
    limit: int,
    *,
    now_ms: int,
    silent_after_ms: int,
) -> list[Vehicle]:
    """Up to ``limit`` vehicles the caller sees with VINs after ``after``, in VIN order:
    those provisioned (whether or not they ever reported) and, for an administrator, also
    those the gateway heard from without a registration."""
    visible = context.visible_vins(principal)
    if visible is None:  # an administrator: the union of both databases, one page of each
        registered = context.accounts.registered_vins(after=after, limit=limit)
        # each VIN at the newest holding period the store has of it
        heard = reader.list_vehicles(limit=limit, after=after)
        vins = sorted({*registered, *(v.vin for v in heard)})[:limit]
    else:
        vins = sorted(v for v in visible if after is None or v > after)[:limit]
        # each at the holding period the caller reads: the current one
        heard = reader.list_vehicles(limit=limit, vins={v: visible[v] for v in vins})
    summaries: dict[str, VehicleSummary] = {v.vin: v for v in heard}
    return [
        Vehicle.from_summary(summaries[vin], now_ms=now_ms, silent_after_ms=silent_after_ms)
        if vin in summaries
        else Vehicle.never_reported(vin)
        for vin in vins
    ]


# --- OpenAPI documentation -----------------------------------------------------------------

_ERROR_DOCS: Final[dict[int, str]] = {
    403: "Your role may not do this (`forbidden`).",
    404: "Unknown vehicle (`vehicle_not_found`).",
    422: "Invalid parameter (`invalid_request`, or `invalid_vin` for a malformed VIN); "
    "`details` names each bad parameter in `loc`.",
    503: "The telemetry database cannot be read (`database_unavailable`).",
}


def _errors(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        code: {"model": ErrorResponse, "description": _ERROR_DOCS[code]} for code in status_codes
    }


_DESCRIPTION = """
The connected-vehicle telematics gateway: vehicles, their latest state and signal history,
the signal catalog and the quarantine of refused input; remote commands and their
lifecycle; accounts, users, API keys, vehicle provisioning, grants and the audit log; plus
`/healthz` and Prometheus `/metrics`. Every route but `/healthz`, logging in, registering
and logging out needs `Authorization: Bearer <access token or API key>`.

**Times** are integers of milliseconds since the Unix epoch, each paired with an ISO 8601 UTC
twin whose name ends in `_iso` (both null when there is no time). Query parameters take
either form (`1764230400000` or `2025-11-27T08:00:00Z`; an ISO time without offset is UTC).

**Lists** all answer `{"items": [...], "next": "<cursor>" | null}`: pass `next` back as
`cursor` (with the same filters) for the next page; `limit` is 1 to 1000 (100 by default),
and a page also ends early, with a cursor, once it holds about 1 MiB of JSON.

**Limits**: request bodies are at most 16 KiB unless a route says otherwise
(`x-max-body-bytes`; larger ones answer 413), and every number is bounded as documented.

**Signals** are COVESA VSS paths; `GET /v1/catalog` lists those the gateway accepts.

**Errors** all have the body
`{"error": {"code": "...", "message": "...", "details": [{"loc": [...], "msg": "..."}]}}`:
`code` is stable for programs, `message` says what was wrong and how to fix it.
"""

_TAGS: Final = [
    {"name": "vehicles", "description": "Vehicles, their latest state and signal history."},
    {"name": "contract", "description": "The device contract: the signal catalog."},
    {"name": "quarantine", "description": "Input the gateway refused, with the reason."},
    {
        "name": "commands",
        "description": "Remote services: commands to a vehicle, their "
        "lifecycle (queued, sent, accepted, succeeded, ...) and confirmation by telemetry.",
    },
    {"name": "operations", "description": "Health check and Prometheus metrics."},
]

_CATALOG: Final = Catalog(
    contract_version=CONTRACT_VERSION,
    signals=[CatalogSignal.from_spec(spec) for spec in CATALOG.values()],
)


# --- routes --------------------------------------------------------------------------------


def _router(settings: ApiSettings) -> APIRouter:
    """The routes; built per app because the history limits come from ``settings`` (and so
    appear in the OpenAPI schema)."""
    router = APIRouter()

    @router.get(
        "/v1/vehicles",
        response_model=VehiclePage,
        summary="List vehicles",
        tags=["vehicles"],
        responses=_errors(422, 503),
    )
    def list_vehicles(
        principal: Caller,
        reader: Reader,
        context: Auth,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
    ) -> VehiclePage:
        """Every vehicle you may see, ordered by VIN, with its online status and when it
        was first and last seen; a provisioned vehicle that never reported is listed with
        `reported: false` and null times."""
        after = cursor_key("vehicles", cursor, str)
        vehicles = _vehicle_page(
            context,
            principal,
            reader,
            after,
            limit + 1,
            now_ms=settings.clock_ms(),
            silent_after_ms=settings.silent_after_ms,
        )
        items, following = page_of(vehicles, limit=limit, kind="vehicles", key=lambda v: [v.vin])
        return VehiclePage(items=items, next=following)

    @router.get(
        "/v1/vehicles/{vin}",
        response_model=VehicleDetail,
        summary="One vehicle and its latest state",
        tags=["vehicles"],
        responses=_errors(404, 422, 503),
    )
    def get_vehicle(principal: Caller, vin: Vin, reader: Reader, context: Auth) -> VehicleDetail:
        """The vehicle's summary plus `state`: the newest value of each signal it has
        reported (newest by sample time, so a late store-and-forward upload never hides a
        fresher value), with its sample time and unit. Only what it reported while its
        current holder held it."""
        state, _ = _known_vehicle(context, principal, reader, vin)
        now, silent = settings.clock_ms(), settings.silent_after_ms
        if state is None:
            return VehicleDetail.build(vin, {}, now_ms=now, silent_after_ms=silent)
        return VehicleDetail.build(state.summary, state.latest, now_ms=now, silent_after_ms=silent)

    @router.get(
        "/v1/vehicles/{vin}/history",
        response_model=History,
        summary="Signal history of one vehicle",
        tags=["vehicles"],
        responses=_errors(404, 422, 503),
    )
    def get_history(
        principal: Caller,
        vin: Vin,
        reader: Reader,
        context: Auth,
        signals: Annotated[
            list[str],
            Query(
                description="VSS signal paths, repeated (`signals=a&signals=b`) or "
                "comma-separated (`signals=a,b`). See GET /v1/catalog.",
                examples=[["Vehicle.Speed", "Vehicle.CurrentLocation.Latitude"]],
            ),
        ],
        start: Annotated[
            Timestamp | None,
            Query(description="Inclusive; default: one hour before `end`."),
        ] = None,
        end: Annotated[Timestamp | None, Query(description="Exclusive; default: now.")] = None,
        limit: Annotated[
            int,
            Query(
                ge=1,
                le=settings.max_history_limit,
                description="Most points on a page; `next` says if there are more.",
            ),
        ] = settings.default_history_limit,
        cursor: Cursor = None,
    ) -> History:
        """Samples with `start <= ts < end` (sample time) that carry at least one of
        `signals`, oldest first; each point holds the requested signals it carries. Page
        on with `cursor` = `next` and the same `signals`, `start` and `end`. Only samples
        the vehicle reported while its current holder held it."""
        after = decode_cursor("history", cursor, (int, int))
        _, tenure = _known_vehicle(context, principal, reader, vin)
        names = split_signals(signals)
        if not names:
            raise invalid_request(
                ["query", "signals"],
                "give at least one signal path in 'signals'",
                "missing",
                signals,
            )
        unknown = unknown_signals(names)
        if unknown:
            listed = ", ".join(repr(n) for n in unknown)
            raise ApiError(
                422,
                "invalid_request",
                f"The request is invalid: unknown signal {listed}. Signals are VSS paths "
                "such as 'Vehicle.Speed' (case-sensitive); GET /v1/catalog lists all of them.",
                [
                    ErrorDetail(
                        loc=["query", "signals"],
                        msg=f"{name!r} is not in the signal catalog (GET /v1/catalog)",
                        type="unknown_signal",
                        input=name,
                    )
                    for name in unknown
                ],
            )
        end_ms = now_ms() if end is None else end
        start_ms = max(0, end_ms - DEFAULT_WINDOW_MS) if start is None else start
        if start_ms >= end_ms:
            raise invalid_request(
                ["query", "start"],
                f"start ({iso(start_ms)}) must be before end ({iso(end_ms)}); end defaults "
                "to now and start to one hour before end",
                "time_range",
                start_ms,
            )
        points = reader.history(
            vin,
            names,
            tenure=tenure,
            start=start_ms,
            end=end_ms,
            limit=limit + 1,
            after=(after[0], after[1]) if after is not None else None,
        )
        items, following = page_of(
            [HistoryPointOut.from_point(p) for p in points],
            limit=limit,
            kind="history",
            key=lambda p: [p.ts, p.seq],
        )
        return History(
            vin=vin,
            signals=names,
            start=start_ms,
            start_iso=iso(start_ms),
            end=end_ms,
            end_iso=iso(end_ms),
            items=items,
            next=following,
        )

    @router.get(
        "/v1/catalog",
        response_model=Catalog,
        summary="The signal catalog",
        tags=["contract"],
    )
    def get_catalog(principal: Caller) -> Catalog:
        """Every signal the gateway accepts: VSS path, datatype, unit, bounds and allowed
        values. Anything else a vehicle sends is quarantined as `unknown_signal`."""
        return _CATALOG

    @router.get(
        "/v1/quarantine",
        response_model=QuarantinePage,
        summary="Refused input",
        tags=["quarantine"],
        responses=_errors(403, 422, 503),
    )
    def get_quarantine(
        principal: Caller,
        reader: Reader,
        reason: Annotated[Reason | None, Query(description="Only this reason.")] = None,
        vin: Annotated[
            str | None,
            # not validated as a VIN: refused input is often about a malformed one
            Query(max_length=256, description="Only entries about this VIN, as received."),
        ] = None,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
    ) -> QuarantinePage:
        """Messages, samples and single signals the gateway refused, newest first, with the
        reason, a detail sentence and the raw payload (as text and base64; only its first
        bytes when it was large, with the whole payload's size and SHA-256).
        Administrators only."""
        require_admin(principal, "The quarantine")
        before = cursor_key("quarantine", cursor, int)
        rows = reader.quarantine(
            limit=limit + 1,
            reason=None if reason is None else reason.value,
            vin=vin,
            before_id=before,
        )
        items, following = page_of(
            [QuarantineOut.from_stored(q) for q in rows],
            limit=limit,
            kind="quarantine",
            key=lambda q: [q.id],
        )
        return QuarantinePage(items=items, next=following)

    @router.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics",
        tags=["operations"],
        responses={
            200: {
                "content": {"text/plain": {}, "application/openmetrics-text": {}},
                "description": "Ingest counters, commit latency histogram and vehicle gauges "
                "in the Prometheus text format (or OpenMetrics, if the Accept header asks).",
            },
            **_errors(403, 503),
        },
    )
    def prometheus_metrics(principal: Caller, request: Request, reader: Reader) -> Response:
        """The ingest counters every gateway process persists in the store, so they survive
        restarts and add up across processes; plus vehicle counts. Send
        `Accept: application/openmetrics-text` for the OpenMetrics format. Administrators
        only (give Prometheus an administrator's API key)."""
        require_admin(principal, "Metrics")
        body, content_type = render_metrics(
            reader,
            request.headers.get("accept"),
            heard_since=settings.clock_ms() - settings.silent_after_ms,
        )
        return Response(body, media_type=content_type)

    return router


# --- application ---------------------------------------------------------------------------


def _create_schema(path: Path) -> None:
    SqliteTelemetryStore(path).close()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the telemetry database and its schema if missing, so the API can start before
    the first gateway has run. Failure is logged, not fatal: the API keeps serving, /healthz
    answers 503 with the reason, and requests start working once the database is fixed,
    without a restart loop hiding the cause.

    The state database (accounts, commands) is different: without it nobody can be
    authenticated, so failing to open or migrate it stops the start with the reason."""
    settings: ApiSettings = app.state.settings
    try:
        await run_in_threadpool(_create_schema, settings.db_path)
    except (StoreError, OSError) as exc:  # OSError: its directory cannot be created
        logger.error("cannot prepare the telemetry database: %s", exc)
    state_db = StateDatabase(settings.resolved_state_db_url)
    await run_in_threadpool(state_db.upgrade)
    accounts = AccountRepository(state_db)
    auth = settings.auth
    secret = auth.secret
    if secret is None:
        secret_path = auth.secret_path or settings.db_path.parent / "auth-secret"
        secret = await run_in_threadpool(load_or_create_secret, secret_path)
    app.state.auth = AuthContext(auth, secret, accounts, AuditLog(state_db))
    app.state.state_db = state_db
    if auth.bootstrap_admin:
        await run_in_threadpool(_first_admin, app.state.auth)
    service: CommandService | None = None
    if settings.commands is not None:
        service = CommandService(settings.commands, CommandRepository(state_db), settings.db_path)
        await service.start()
    app.state.commands = service
    try:
        yield
    finally:
        if service is not None:
            await service.stop()
        state_db.dispose()


def _first_admin(context: AuthContext) -> None:
    s = context.settings
    admin = ensure_first_admin(
        context.accounts,
        context.audit,
        email=s.first_admin_email,
        password=s.first_admin_password,
        now=context.now_ms(),
    )
    if admin is not None:
        print_first_admin(admin)


def _version() -> str:
    try:
        return version("telematics-gateway")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def create_app(settings: ApiSettings) -> FastAPI:
    """The API as an ASGI app, e.g. ``uvicorn.run(create_app(ApiSettings(db_path)))``."""
    app = FastAPI(
        # the docs page is served from the package (gateway.api.docs), not from a CDN
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        title="Telematics Gateway API",
        summary="Vehicles, state, history and quarantine of the connected-vehicle gateway.",
        description=_DESCRIPTION,
        version=_version(),
        openapi_tags=_TAGS,
        lifespan=_lifespan,
        responses={
            401: {
                "model": ErrorResponse,
                "description": "No valid credentials (`not_authenticated`, `invalid_token`, "
                "`token_expired`, `invalid_api_key`).",
            },
            500: {"model": ErrorResponse, "description": "A bug (`internal_error`)."},
        },
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    install_docs(app)
    routers = [
        _router(settings),
        health_router(settings.db_path),
        commands_router(),
        accounts_router(),
    ]
    # flat, for the body limits and the Allow header (gateway.api.limits.api_routes)
    app.state.api_routes = [route for router in routers for route in router.routes]
    document_body_limits(app.state.api_routes)
    for router in routers:
        app.include_router(router)
    return app
