"""``ApiSettings``: what the API process needs to run, built by the CLI (or a test) and
handed to :func:`gateway.api.app.create_app`, which keeps it in ``app.state.settings``
where the dependencies (``gateway.api.deps``) read it.

Its own module so that the app factory, the dependencies and the routes can all import
it without importing each other (docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.api.bounds import MAX_PAGE
from gateway.api.params import now_ms
from gateway.api.security import AuthSettings
from gateway.commands.service import CommandSettings
from gateway.errors import ConfigurationError
from gateway.fleet.worker import WorkerSettings
from gateway.notify.settings import NotifySettings
from gateway.statedb.database import default_url

__all__ = ["ApiSettings", "FleetQuotas", "WebSettings", "parse_fleet_quotas"]

#: how an operator raises a quota (named in the 409 that refuses a request over one)
QUOTA_OPTION = "--fleet-quotas (env TELEMATICS_FLEET_QUOTAS)"


@dataclass(frozen=True, slots=True)
class FleetQuotas:
    """The most fleets (and groups), drivers and geofences one account may have, and
    assignments one driver and all drivers of one account may have: a self-registered
    account must not be able to fill the state database (or slow every rule evaluation of
    its vehicles with a million fences). The defaults are far above a large fleet's
    needs: a few hundred fleets and groups, a driver per van and shift, a depot and zones
    per city, a shift a day for 27 years, and for a whole account a shift a day for a
    year for each of 2,700 drivers (the per-driver quota alone allowed 10^8 rows, decision
    0023). ``None``: no quota."""

    fleets: int | None = 500
    drivers: int | None = 10_000
    geofences: int | None = 1_000
    assignments: int | None = 10_000
    account_assignments: int | None = 1_000_000


def parse_fleet_quotas(text: str) -> FleetQuotas:
    """``"fleets=500,drivers=10000,geofences=1000,assignments=10000,
    account_assignments=1000000"`` (any of them; ``off``
    for none) over the defaults; ValueError naming what is wrong."""
    values: dict[str, int | None] = {}
    names = FleetQuotas.__dataclass_fields__
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or name not in names:
            raise ValueError(f"{part!r}: give NAME=N with NAME one of {', '.join(names)}")
        if raw == "off":
            values[name] = None
        elif raw.isdigit() and 1 <= int(raw) <= 10**9:
            values[name] = int(raw)
        else:
            raise ValueError(f"{part!r}: N is an integer from 1 to 1000000000, or off")
    return FleetQuotas(**values)


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The built-in web dashboard (``gateway.api.web``)."""

    #: map tiles, e.g. ``https://tile.openstreetmap.org/{z}/{x}/{y}.png`` (its origin is
    #: added to the pages' Content-Security-Policy); None: no tiles, a plain background
    #: with the simulator's Munich roads drawn as the base layer
    tile_url: str | None = None
    #: attribution shown under the tiles (required by most tile services)
    tile_attribution: str = ""
    #: how often the positions feed reads new samples (the live map's latency)
    position_poll_s: float = 0.5
    #: how often it reads whether its vehicles are online (a vehicle that goes offline
    #: turns grey on the map within this)
    presence_poll_s: float = 2.0

    def __post_init__(self) -> None:
        url = self.tile_url
        if url is not None and not (
            url.startswith(("https://", "http://")) and "{z}" in url and "{x}" in url
        ):
            raise ConfigurationError(
                f"the tile URL must be http(s) with {{z}}, {{x}} and {{y}}: {url!r}"
            )
        if not 0.05 <= self.position_poll_s <= 60:
            raise ConfigurationError("position_poll_s must be between 0.05 and 60 seconds")
        if not 0.1 <= self.presence_poll_s <= 600:
            raise ConfigurationError("presence_poll_s must be between 0.1 and 600 seconds")


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """What the API needs to run; the CLI builds it from flags and ``TELEMATICS_*``."""

    #: the gateway's SQLite database (created with the schema if missing)
    db_path: Path
    #: the telemetry store to open (``gateway.store.resolve_store``); None: ``db_path``
    store_url: str | Path | None = None
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
    #: offline with reason ``silent`` (``gateway.core.presence``); the contract has units
    #: publish at least every 5 minutes
    silent_after_s: float = 600.0
    #: the fleet rules and trips worker run in this process (decision 0014); None: not
    #: here (another process of the installation runs it)
    fleet_worker: WorkerSettings | None = field(default_factory=WorkerSettings)
    #: the live stream and webhooks (docs/decisions/0016-command-jobs-and-notifications.md)
    notify: NotifySettings = field(default_factory=NotifySettings)
    #: the most vehicles in one bulk command (at most the schema's 10,000)
    max_job_vehicles: int = 10_000
    #: bulk commands an organization may have running at once (429 beyond)
    max_running_jobs: int = 5
    #: the most fleets, drivers and geofences per account, assignments per driver (409)
    fleet_quotas: FleetQuotas = field(default_factory=FleetQuotas)
    #: the web dashboard (docs/decisions/0019-web-dashboard.md)
    web: WebSettings = field(default_factory=WebSettings)
    #: command stages and event-loop lag written here (gateway.trace; benchmarks); None: off
    trace_file: Path | None = None
    #: live streams one user may have open at once in this process (429 beyond; decision
    #: 0023); None: no limit
    max_streams_per_user: int | None = 16
    #: the clock that decides the silence (tests of it set their own)
    clock_ms: Callable[[], int] = field(default=now_ms, compare=False, repr=False)

    @property
    def store(self) -> str | Path:
        """What the API opens as its telemetry store."""
        return self.db_path if self.store_url is None else self.store_url

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
