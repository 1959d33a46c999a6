"""The API's composition root: :func:`create_app` builds the FastAPI app from
:class:`~gateway.api.settings.ApiSettings`, includes the routers of ``gateway.api.routes``,
installs the error handlers (``errors.py``), the body limits (``limits.py``) and the docs
page (``docs.py``), and its lifespan opens what the dependencies (``deps.py``) hand out
from ``app.state``: the state database, the authentication context and the command
service. See docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from gateway import package_version
from gateway.accounts.bootstrap import ensure_first_admin, print_first_admin
from gateway.api.accesslog import install as install_access_log_filter
from gateway.api.activity import ActivityStamp, RequestActivity
from gateway.api.docs import install_docs
from gateway.api.errors import install_error_handlers
from gateway.api.head import HeadAsGet
from gateway.api.limits import BodyLimit, document_body_limits
from gateway.api.models import ErrorResponse
from gateway.api.positions import PositionFeed
from gateway.api.query import KnownQuery
from gateway.api.routes import routers
from gateway.api.security import AuthContext
from gateway.api.settings import ApiSettings
from gateway.api.streams import StreamSlots
from gateway.api.web import install_web
from gateway.auth.tokens import load_or_create_secret
from gateway.commands.jobs import JobService
from gateway.commands.service import CommandService
from gateway.errors import StoreError
from gateway.fleet.maintenance import MaintenanceThread, start_maintenance
from gateway.fleet.worker import RulesWorker, WorkerThread
from gateway.notify import EventBus, WebhookWorker
from gateway.notify.mqtt import AlertFanout
from gateway.notify.wake import WAKE_DIR_NAME, WakeListener
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog
from gateway.statedb.commands import CommandRepository
from gateway.statedb.database import StateDatabase
from gateway.statedb.events import EventLog
from gateway.statedb.fleet_log import FleetLog
from gateway.statedb.fleets import FleetRepository
from gateway.statedb.integrations import IntegrationRepository
from gateway.statedb.jobs import JobRepository
from gateway.statedb.webhooks import WebhookRepository
from gateway.store import open_store
from gateway.trace import Trace

__all__ = ["ApiSettings", "create_app"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """
The connected-vehicle telematics gateway: vehicles, their latest state and signal history,
the signal catalog and the quarantine of refused input; remote commands and their
lifecycle; accounts, users, API keys, vehicle provisioning, grants and the audit log; plus
`/healthz` and Prometheus `/metrics`. Every route but `/healthz`, logging in, registering
and logging out needs `Authorization: Bearer <access token or API key>`.

**Times** are integers of milliseconds since the Unix epoch, each paired with an ISO 8601 UTC
twin whose name ends in `_iso` (both null when there is no time). Query parameters take
either form (`1764230400000` or `2025-11-27T08:00:00Z`; an ISO time without offset is UTC;
a number below 10^11, epoch seconds by mistake, answers 422: multiply it by 1000).

**Lists** all answer `{"items": [...], "next": "<cursor>" | null}`: pass `next` back as
`cursor` (with the same filters) for the next page; `limit` is 1 to 1000 (100 by default),
and a page also ends early, with a cursor, once it holds about 1 MiB of JSON.

**Query parameters** a route does not take answer 400 `unknown_query_parameter`, naming
the ones it takes (a misspelt filter is never ignored).

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
    {
        "name": "command-jobs",
        "description": "Bulk commands: one command to many vehicles, with live counts.",
    },
    {
        "name": "notifications",
        "description": "The live event stream (Server-Sent Events) and signed webhooks.",
    },
    {"name": "operations", "description": "Health check and Prometheus metrics."},
]


# --- application ---------------------------------------------------------------------------


def _create_schema(path: str | Path) -> None:
    open_store(path).close()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the telemetry database and its schema if missing, so the API can start before
    the first gateway has run. Failure is logged, not fatal: the API keeps serving, /healthz
    answers 503 with the reason, and requests start working once the database is fixed,
    without a restart loop hiding the cause.

    The state database (accounts, commands) is different: without it nobody can be
    authenticated, so failing to open or migrate it stops the start with the reason."""
    settings: ApiSettings = app.state.settings
    install_access_log_filter()  # after uvicorn configured its loggers
    try:
        await run_in_threadpool(_create_schema, settings.store)
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
    jobs: JobService | None = None
    trace = Trace(settings.trace_file)
    trace.start()
    if settings.commands is not None:
        service = CommandService(
            settings.commands, CommandRepository(state_db), settings.store, trace=trace
        )
        await service.start()
        jobs = JobService(service, JobRepository(state_db))
        await jobs.start()
    app.state.commands, app.state.jobs = service, jobs
    fleet_worker = _fleet(app, settings, state_db)
    _trace_threads(trace, service, fleet_worker)
    bus, webhook_worker = await _notifications(app, settings, state_db)
    wake = await _wake_ups(settings, bus, webhook_worker, fleet_worker)
    app.state.positions = positions = PositionFeed(
        lambda: open_store(settings.store, readonly=True),
        poll_s=settings.web.position_poll_s,
        presence_s=settings.web.presence_poll_s,
        clock_ms=settings.clock_ms,
        silent_after_ms=settings.silent_after_ms,
    )
    await positions.start()
    fanout = await _fanout(app, settings, state_db)
    maintenance = _maintenance(settings, state_db)
    try:
        yield
    finally:
        if maintenance is not None:
            await run_in_threadpool(maintenance.stop)
        if fanout is not None:
            await fanout.stop()
        await positions.stop()
        wake.stop()
        await webhook_worker.stop()
        await bus.stop()
        if jobs is not None:
            await jobs.stop()
        if fleet_worker is not None:
            await run_in_threadpool(fleet_worker.stop)
        if service is not None:
            await service.stop()
        await trace.stop()
        state_db.dispose()


async def _notifications(
    app: FastAPI, settings: ApiSettings, state_db: StateDatabase
) -> tuple[EventBus, WebhookWorker]:
    """The live stream's event bus and the webhook worker, started
    (docs/decisions/0016-command-jobs-and-notifications.md)."""
    bus = EventBus(EventLog(state_db), settings.notify)
    await bus.start()
    app.state.events = bus
    app.state.webhooks = WebhookRepository(state_db)
    app.state.webhook_worker = worker = WebhookWorker(app.state.webhooks, settings.notify)
    await worker.start()
    return bus, worker


async def _wake_ups(
    settings: ApiSettings,
    bus: EventBus,
    webhooks: WebhookWorker,
    fleet_worker: WorkerThread | None,
) -> WakeListener:
    """New events go to the streams and webhooks when stored, not at their next poll: the
    rules thread of this process pokes them after each commit, the fleet-worker processes
    of the data directory through the wake-up socket (decision 0029)."""

    def woken() -> None:
        bus.poke()
        webhooks.poke()

    if fleet_worker is not None:
        loop = asyncio.get_running_loop()

        def from_thread() -> None:
            loop.call_soon_threadsafe(woken)

        fleet_worker.on_commit = from_thread
    wake = WakeListener(settings.db_path.parent / WAKE_DIR_NAME, woken)
    await wake.start()
    return wake


def _trace_threads(
    trace: Trace, service: CommandService | None, fleet_worker: WorkerThread | None
) -> None:
    """The thread ids of the process's busy threads, so a benchmark can tell their CPU
    apart (gateway.trace)."""
    threads = {
        "writer": None if service is None else service.writer.native_id,
        "fleet": None if fleet_worker is None else fleet_worker.native_id,
    }
    for name, tid in threads.items():
        if tid is not None:
            trace.mark("-", "thread", f"{name} {tid}")


async def _fanout(
    app: FastAPI, settings: ApiSettings, state_db: StateDatabase
) -> AlertFanout | None:
    """Integration credentials for the routes, and the MQTT fan-out of alerts when this
    process has the broker's settings (decision 0017)."""
    app.state.integrations = integrations = IntegrationRepository(state_db)
    if settings.commands is None or not settings.notify.mqtt_fanout:
        return None
    fanout = AlertFanout(EventLog(state_db), integrations, settings.commands.mqtt, settings.notify)
    await fanout.start()
    app.state.fanout = fanout
    return fanout


def _fleet(app: FastAPI, settings: ApiSettings, state_db: StateDatabase) -> WorkerThread | None:
    """The fleet repositories for the routes, and the rules worker's thread (decision 0014:
    it runs in the API process, which every installation has exactly one kind of, while
    ingest may run in several; partitions and leases make a second API process safe)."""
    app.state.fleets = fleets = FleetRepository(state_db)
    app.state.fleet_log = log = FleetLog(state_db)
    if settings.fleet_worker is None:
        return None
    store = settings.store
    worker = RulesWorker(
        log, fleets, lambda: open_store(store, readonly=True), settings.fleet_worker
    )
    thread = WorkerThread(worker, busy=app.state.activity.recent)
    thread.start()
    return thread


def _maintenance(settings: ApiSettings, state_db: StateDatabase) -> MaintenanceThread | None:
    """The maintenance check's thread (decision 0026), where the rules worker runs."""
    if settings.fleet_worker is None:
        return None
    return start_maintenance(state_db, settings.store)


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
        version=package_version(),
        openapi_tags=_TAGS,
        lifespan=_lifespan,
        # a query parameter the route does not declare: 400 (gateway.api.query)
        dependencies=[Depends(KnownQuery())],
        responses={
            400: {
                "model": ErrorResponse,
                "description": "A query parameter the route does not take "
                "(`unknown_query_parameter`; `details` names each, with the one probably "
                "meant).",
            },
            401: {
                "model": ErrorResponse,
                "description": "No valid credentials (`not_authenticated`, `invalid_token`, "
                "`token_expired`, `invalid_api_key`).",
            },
            500: {"model": ErrorResponse, "description": "A bug (`internal_error`)."},
        },
    )
    app.state.settings = settings
    app.state.stream_slots = StreamSlots(settings.max_streams_per_user)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    app.state.activity = activity = RequestActivity()
    app.add_middleware(ActivityStamp, activity=activity)
    app.add_middleware(HeadAsGet)
    install_docs(app)
    install_web(app, settings.web)
    included = routers(settings)
    # flat, for the body limits and the Allow header (gateway.api.limits.api_routes)
    app.state.api_routes = [route for router in included for route in router.routes]
    document_body_limits(app.state.api_routes)
    for router in included:
        app.include_router(router)
    return app
