"""The gateway's settings: every ``TELEMATICS_*`` variable, read once, typed, and the MQTT
connection part that the ingest processes and the command service share.

:func:`read_environment` is called once, by the composition root (``gateway.cli.main``),
which hands the :class:`Environment` down: it is the default of every command-line flag
(the flags win), so no other module reads ``os.environ`` for a setting. A bad value is a
:class:`~gateway.errors.ConfigurationError` naming the variable and what it takes.

:class:`MqttSettings` is the broker connection of a gateway-side client (host, port, TLS,
service account), built from ``--mqtt-url`` with :meth:`MqttSettings.from_url` (the one
URL parser, :mod:`schemas.broker_url`); ``IngestSettings`` and ``CommandSettings`` both
hold one. See docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.broker.budget import DEFAULT_BUDGET
from gateway.core.ratelimit import (
    DEFAULT_LOGIN_LIMIT,
    DEFAULT_USER_COMMAND_LIMIT,
    DEFAULT_VEHICLE_COMMAND_LIMIT,
    Limit,
)
from gateway.errors import ConfigurationError
from gateway.retention import (
    DEFAULT_QUARANTINE_DAYS,
    DEFAULT_QUARANTINE_MAX_ENTRIES,
    DEFAULT_TELEMETRY_DAYS,
)
from gateway.store.sqlite import DEFAULT_QUARANTINE_PAYLOAD_BYTES
from schemas.broker_url import parse_broker_url

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_PRIVATE_BROKER_PORT",
    "ENV_PREFIX",
    "Environment",
    "MqttSettings",
    "read_environment",
]

ENV_PREFIX = "TELEMATICS_"
#: the private broker of ``telematics up``; not 1883, so it does not clash with a system one
DEFAULT_PRIVATE_BROKER_PORT = 1884
#: the gateway's default ``--nice`` (lower CPU priority than the API's; decision 0022)
DEFAULT_GATEWAY_NICE = 5
DEFAULT_API_PORT = 8080

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class MqttSettings(BaseModel):
    """Where and as whom a gateway-side client (an ingest process, the command service)
    connects to the broker."""

    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = 1883
    #: over TLS (``mqtts://``); the gateway's clients do not speak it yet (see from_url)
    tls: bool = False
    #: the gateway's service account on a broker that refuses anonymous clients
    username: str | None = None
    password: str | None = Field(default=None, repr=False)

    @classmethod
    def from_url(
        cls, url: str, *, username: str | None = None, password: str | None = None
    ) -> MqttSettings:
        """From ``mqtt://host[:port]``; ``ValueError`` (showing the accepted form) for
        anything else, ``mqtts`` included, which the gateway's clients cannot speak yet."""
        host, port, tls = parse_broker_url(url, tls=False)
        return cls(host=host, port=port, tls=tls, username=username, password=password)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def _flag(value: Any) -> Any:
    """``TELEMATICS_NO_REGISTRATION=1`` style switches: anything but empty, 0 or false."""
    if isinstance(value, str):
        return value not in ("", "0", "false")
    return value


def _limit(default: Limit) -> str:
    return f"{default.rate * 60:g}/min,burst={default.burst}"


class Environment(BaseSettings):
    """Every ``TELEMATICS_<NAME>`` variable, as field ``<name>``, with the default a flag
    has when the variable is not set. Secrets (``*_PASSWORD``) are variables only, never
    flags: ``ps`` shows command lines to every user."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- every command
    data_dir: Path = Path("data")
    log_level: LogLevel = "INFO"
    state_db_url: str | None = None
    store_url: str | None = None

    # --- the broker
    mqtt_url: str | None = None
    mqtt_port: int = DEFAULT_PRIVATE_BROKER_PORT
    tls_port: int = 0
    mqtt_username: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_password: str | None = Field(default=None, repr=False)
    unit_broker_url: str | None = None
    unit_tls_broker_url: str | None = None
    #: telematics up: gateway processes sharing the subscription
    gateways: int = Field(default=1, ge=1)
    #: telematics up --demo: how many simulated vehicles
    demo_vehicles: int = Field(default=5, ge=1)
    #: unit-facing edge brokers bridged to the core broker (decision 0038; 0: none)
    edge_brokers: int = Field(default=0, ge=0)
    #: the API: the edges' URLs told to units at provisioning, comma-separated, edge order
    edge_broker_urls: str = ""
    #: each vehicle's message budget on the private and edge brokers (decision 0048)
    budget_messages_per_s: int = Field(default=DEFAULT_BUDGET.messages_per_s, ge=1)
    budget_burst_messages: int = Field(default=DEFAULT_BUDGET.burst_messages, ge=1)
    budget_bytes_per_s: int = Field(default=DEFAULT_BUDGET.bytes_per_s, ge=1)
    budget_burst_bytes: int = Field(default=DEFAULT_BUDGET.burst_bytes, ge=1)

    # --- ingest (telematics gateway)
    client_id: str = "telematics-gateway-1"
    share_group: str = "telematics-gateway"
    batch_delay_ms: float = 50.0
    receive_maximum: int = 20_000
    #: how much lower than the API's the gateway's CPU priority is (os.nice): under
    #: telemetry load a person's command is served first (decision 0022)
    nice: int = Field(default=DEFAULT_GATEWAY_NICE, ge=0, le=19)
    require_provisioned: bool = False
    telemetry_retention_days: float = DEFAULT_TELEMETRY_DAYS
    quarantine_retention_days: float = DEFAULT_QUARANTINE_DAYS
    quarantine_max_entries: int = DEFAULT_QUARANTINE_MAX_ENTRIES
    quarantine_payload_bytes: int = DEFAULT_QUARANTINE_PAYLOAD_BYTES

    # --- the API
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    offline_after: float = 600.0
    commands_client_id: str = "telematics-commands-1"
    signing_key: Path | None = None
    admin_email: str = "admin@localhost"
    admin_password: str | None = Field(default=None, repr=False)
    auth_secret_file: Path | None = None
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 24 * 3600
    user_command_limit: str = _limit(DEFAULT_USER_COMMAND_LIMIT)
    vehicle_command_limit: str = _limit(DEFAULT_VEHICLE_COMMAND_LIMIT)
    login_limit: str = _limit(DEFAULT_LOGIN_LIMIT)
    invitation_limit: str = "20/hour,burst=10"
    #: the most users one account may have (0: no limit)
    max_users_per_account: int = Field(default=10_000, ge=0)
    no_registration: bool = False
    #: webhooks may POST to private, loopback and link-local addresses (docs/webhooks.md)
    webhook_allow_private_targets: bool = False
    #: the session cookie's Secure flag; None: on unless the API listens on loopback
    cookie_secure: bool | None = None
    #: live streams (Server-Sent Events) one user may have open at once, per API process
    max_streams_per_user: int = 16
    #: seconds the API uses again what authentication read (gateway.api.authcache)
    auth_cache_s: float = 1.0
    fleet_quotas: str = ""
    # the web dashboard's map tiles (None: a plain background with the demo's Munich roads)
    web_tile_url: str | None = None
    web_tile_attribution: str = ""
    #: the API's trace file (gateway.trace): command stages and event-loop lag, for the
    #: benchmarks; unset: no trace
    trace_file: Path | None = None

    # --- the fleet rules worker (telematics fleet-worker; decision 0029)
    #: how much lower than the API's its CPU priority is (os.nice), like the gateway's
    fleet_nice: int = Field(default=DEFAULT_GATEWAY_NICE, ge=0, le=19)
    #: how long a partition's lease lasts: a dead worker's partitions wait this long
    fleet_lease_seconds: float = Field(default=15.0, gt=0)
    #: fleet-worker processes ``telematics up`` runs (0: the rules run in the API process)
    fleet_workers: int = Field(default=1, ge=0)

    # --- operator commands (telematics user add / set-password)
    user_password: str | None = Field(default=None, repr=False)

    _switches = field_validator(
        "no_registration",
        "require_provisioned",
        "cookie_secure",
        "webhook_allow_private_targets",
        mode="before",
    )(_flag)

    def mqtt_credentials(
        self, username: str | None, password_file: Path | None
    ) -> tuple[str | None, str | None]:
        """The service account of ``--mqtt-username``: its password from
        ``--mqtt-password-file``, else ``TELEMATICS_MQTT_PASSWORD``; (None, None) without a
        user name."""
        if username is None:
            return None, None
        if password_file is not None:
            try:
                return username, Path(password_file).read_text().strip()
            except OSError as exc:
                raise ConfigurationError(f"cannot read --mqtt-password-file: {exc}") from exc
        return username, self.mqtt_password


def read_environment() -> Environment:
    """The environment's settings; a bad value raises :class:`ConfigurationError` naming
    the variable, its value and what it takes."""
    try:
        return Environment()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = ENV_PREFIX + str(error["loc"][0]).upper()
            problems.append(
                f"{variable}={error.get('input')!r}: {error['msg']} (fix or unset {variable})"
            )
        raise ConfigurationError("; ".join(problems)) from None
