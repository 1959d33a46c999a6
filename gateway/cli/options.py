"""The command-line options several commands share, with their defaults from the
:class:`~gateway.settings.Environment` the composition root read once.

Each option says its variable in its help text (``env TELEMATICS_X``): the README's
Configuration table is tested against these (``tests/test_cli.py``), so flags, variables
and help stay as they are. See docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Final

from gateway.core.ratelimit import (
    DEFAULT_LOGIN_LIMIT,
    DEFAULT_USER_COMMAND_LIMIT,
    DEFAULT_VEHICLE_COMMAND_LIMIT,
)
from gateway.retention import (
    DEFAULT_QUARANTINE_DAYS,
    DEFAULT_QUARANTINE_MAX_ENTRIES,
    DEFAULT_TELEMETRY_DAYS,
)
from gateway.settings import DEFAULT_GATEWAY_NICE, Environment, MqttSettings
from gateway.store.sqlite import DEFAULT_QUARANTINE_PAYLOAD_BYTES

__all__ = [
    "add_auth",
    "add_common",
    "add_fleet_quotas",
    "add_ingest",
    "add_mqtt",
    "add_mqtt_auth",
    "add_offline_after",
    "add_retention",
    "add_signing_key",
    "add_state_db",
    "ensure_signing_key",
    "mqtt_settings",
    "setup_logging",
]

log = logging.getLogger("telematics")


def add_common(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=env.data_dir,
        help="the installation's data directory: the databases (telemetry.db, state.db), "
        "secrets and keys, and the private broker's files; the operator commands (telematics "
        "vehicle, user, account) need the same one (env TELEMATICS_DATA_DIR; default: ./data)",
    )
    p.add_argument(
        "--log-level",
        default=env.log_level,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(env TELEMATICS_LOG_LEVEL; default: INFO)",
    )


#: what ``--mqtt-url`` is for, per command: a newcomer read "broker to use" under ``up``
#: and could not tell that it replaces the private broker, nor what the default was
MQTT_URL_HELP: Final = {
    "up": "an existing broker to use instead of starting the private one (README, "
    "Bringing your own broker: it must be closed like the private one, and the gateway "
    "needs its service account, --mqtt-username and --mqtt-password-file)",
    "api": "the broker of the command service; without it, remote commands are off (their "
    "routes answer 503)",
    "gateway": "the broker to ingest from",
}


def add_mqtt(
    p: argparse.ArgumentParser, env: Environment, *, default: str | None, command: str
) -> None:
    shown = {
        "up": "none: the private broker on --mqtt-port",
        "api": "none",
        "gateway": f"{default}, where telematics up runs its private broker",
    }[command]
    p.add_argument(
        "--mqtt-url",
        default=env.mqtt_url if env.mqtt_url is not None else default,
        metavar="URL",
        help=f"{MQTT_URL_HELP[command]}: mqtt://host[:port] (port 1883 if left out; mqtts:// "
        f"is not supported here yet) (env TELEMATICS_MQTT_URL; default: {shown})",
    )


def add_mqtt_auth(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--mqtt-username",
        default=env.mqtt_username,
        help="the gateway's service account on a broker that refuses anonymous clients "
        "(env TELEMATICS_MQTT_USERNAME; `telematics up` sets it up itself)",
    )
    p.add_argument(
        "--mqtt-password-file",
        type=Path,
        default=env.mqtt_password_file,
        metavar="FILE",
        help="file holding the service account's password (env "
        "TELEMATICS_MQTT_PASSWORD_FILE, or the password itself in TELEMATICS_MQTT_PASSWORD; "
        "never on the command line, where ps would show it)",
    )


def mqtt_settings(args: argparse.Namespace, env: Environment) -> MqttSettings:
    """The broker connection of ``--mqtt-url`` with the service account of
    ``--mqtt-username`` (see :meth:`Environment.mqtt_credentials`)."""
    username, password = env.mqtt_credentials(args.mqtt_username, args.mqtt_password_file)
    return MqttSettings.from_url(args.mqtt_url, username=username, password=password)


def add_store(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--store",
        default=env.store_url,
        metavar="URL",
        help="telemetry store: sqlite:///PATH, or influxdb://[user:password@]host:port/db"
        "[?token=...&rp=...&retention=30d] (influxdbs:// for HTTPS; its local index and "
        "spool go in the data directory) (env TELEMATICS_STORE_URL; default: SQLite file "
        "telemetry.db in the data directory)",
    )


def add_state_db(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--state-db-url",
        default=env.state_db_url,
        help="state database (accounts, vehicles, commands) as an SQLAlchemy URL, e.g. "
        "postgresql+psycopg://user@host/db (env TELEMATICS_STATE_DB_URL; default: SQLite "
        "file state.db in the data directory)",
    )


def add_ingest(p: argparse.ArgumentParser, env: Environment, *, client_id: bool = True) -> None:
    """The gateway's ingest settings; ``client_id=False`` for ``up``, which names its
    gateways itself."""
    if client_id:
        p.add_argument(
            "--client-id",
            default=env.client_id,
            help="MQTT client id, unique and stable per gateway process: the broker keeps its "
            "session and queues its share of messages while it is down "
            "(env TELEMATICS_CLIENT_ID; default: telematics-gateway-1)",
        )
    p.add_argument(
        "--share-group",
        default=env.share_group,
        help="MQTT 5 shared-subscription group; gateways in one group split the stream "
        "(env TELEMATICS_SHARE_GROUP; default: telematics-gateway)",
    )
    p.add_argument(
        "--batch-delay-ms",
        type=float,
        default=env.batch_delay_ms,
        help="longest a message waits for its batch to commit before it is acknowledged "
        "(env TELEMATICS_BATCH_DELAY_MS; default: 50)",
    )
    p.add_argument(
        "--receive-maximum",
        type=int,
        default=env.receive_maximum,
        help="MQTT 5 Receive Maximum: unacknowledged messages in flight to this gateway; "
        "must exceed message rate x batch delay (env TELEMATICS_RECEIVE_MAXIMUM; "
        "default: 20000)",
    )
    p.add_argument(
        "--nice",
        type=int,
        choices=range(20),
        metavar="N",
        default=env.nice,
        help="lower the gateway's CPU priority by this much (0-19, as nice(1)), so that on a "
        "busy machine the API's commands are served before telemetry, which batches and "
        "waits harmlessly (env TELEMATICS_NICE; default: "
        f"{DEFAULT_GATEWAY_NICE}; 0 for the same priority as the API)",
    )


def add_retention(p: argparse.ArgumentParser, env: Environment) -> None:
    for flag, variable, value, default, kind, what in [
        (
            "--telemetry-retention-days",
            "TELEMETRY_RETENTION_DAYS",
            env.telemetry_retention_days,
            DEFAULT_TELEMETRY_DAYS,
            float,
            "delete samples this many days after they arrived (0: keep forever)",
        ),
        (
            "--quarantine-retention-days",
            "QUARANTINE_RETENTION_DAYS",
            env.quarantine_retention_days,
            DEFAULT_QUARANTINE_DAYS,
            float,
            "delete quarantine entries this many days after they arrived (0: keep)",
        ),
        (
            "--quarantine-max-entries",
            "QUARANTINE_MAX_ENTRIES",
            env.quarantine_max_entries,
            DEFAULT_QUARANTINE_MAX_ENTRIES,
            int,
            "keep at most this many quarantine entries, the newest (0: no cap)",
        ),
        (
            "--quarantine-payload-bytes",
            "QUARANTINE_PAYLOAD_BYTES",
            env.quarantine_payload_bytes,
            DEFAULT_QUARANTINE_PAYLOAD_BYTES,
            int,
            "keep at most this many bytes of each refused payload (with its size and SHA-256)",
        ),
    ]:
        p.add_argument(
            flag,
            type=kind,
            default=value,
            help=f"{what} (env TELEMATICS_{variable}; default: {default})",
        )


def add_fleet_quotas(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--fleet-quotas",
        default=env.fleet_quotas,
        metavar="NAME=N,...",
        help="the most fleets, drivers and geofences one account may have, assignments "
        "one driver and one account may have, e.g. 'fleets=500,drivers=10000,geofences=1000,"
        "assignments=10000,account_assignments=1000000' (the defaults; 'off' for none) "
        "(env TELEMATICS_FLEET_QUOTAS)",
    )


def add_offline_after(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--offline-after",
        type=float,
        default=env.offline_after,
        metavar="SECONDS",
        help="show a vehicle offline (reason 'silent') when its status says online but "
        "nothing has come from it for this long; units publish at least every 5 minutes "
        "(env TELEMATICS_OFFLINE_AFTER; default: 600)",
    )


def add_signing_key(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--signing-key",
        type=Path,
        default=env.signing_key,
        metavar="FILE",
        help="Ed25519 private key (PEM) that signs every remote command; created (mode 0600, "
        "with its public key next to it as FILE.pub, to provision units with) if missing "
        "(env TELEMATICS_SIGNING_KEY; default: DATA_DIR/command-signing-key.pem)",
    )


def add_auth(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--admin-email",
        default=env.admin_email,
        help="e-mail address of the first administrator, created when there is none; its "
        "password comes from TELEMATICS_ADMIN_PASSWORD, else one is generated and printed "
        "once (env TELEMATICS_ADMIN_EMAIL; default: admin@localhost)",
    )
    p.add_argument(
        "--auth-secret-file",
        type=Path,
        default=env.auth_secret_file,
        metavar="FILE",
        help="key that signs access tokens, created if missing; every API process of an "
        "installation needs the same one (env TELEMATICS_AUTH_SECRET_FILE; default: "
        "DATA_DIR/auth-secret)",
    )
    p.add_argument(
        "--access-token-ttl",
        type=int,
        default=env.access_token_ttl,
        metavar="SECONDS",
        help="lifetime of access tokens (env TELEMATICS_ACCESS_TOKEN_TTL; default: 900)",
    )
    p.add_argument(
        "--refresh-token-ttl",
        type=int,
        default=env.refresh_token_ttl,
        metavar="SECONDS",
        help="lifetime of refresh tokens (env TELEMATICS_REFRESH_TOKEN_TTL; default: 30 days)",
    )
    _add_limits(p, env)
    p.add_argument(
        "--no-registration",
        action="store_true",
        default=env.no_registration,
        help="refuse POST /v1/auth/register: only administrators and account managers "
        "create users (env TELEMATICS_NO_REGISTRATION=1)",
    )
    _add_unit_broker_urls(p, env)


def _add_limits(p: argparse.ArgumentParser, env: Environment) -> None:
    """The API's rate limits and its bound on users per account."""
    for name, value, default, what in [
        (
            "user-command-limit",
            env.user_command_limit,
            DEFAULT_USER_COMMAND_LIMIT,
            "remote commands per user",
        ),
        (
            "vehicle-command-limit",
            env.vehicle_command_limit,
            DEFAULT_VEHICLE_COMMAND_LIMIT,
            "remote commands per vehicle",
        ),
        (
            "login-limit",
            env.login_limit,
            DEFAULT_LOGIN_LIMIT,
            "password attempts per client address",
        ),
    ]:
        variable = "TELEMATICS_" + name.upper().replace("-", "_")
        p.add_argument(
            f"--{name}",
            default=value,
            metavar="RATE",
            help=f"{what}, e.g. 30/min, 5/s,burst=10 or off (env {variable}; default: {default})",
        )
    p.add_argument(
        "--invitation-limit",
        default=env.invitation_limit,
        metavar="RATE",
        help="invitations to share a vehicle, transfer offers, claims with a pairing code, "
        "API keys created, users created at an address that is taken and an owner's "
        "vehicle changes (vehicles added, MQTT passwords renewed) (each counted apart), per "
        "user; administrators only in invitations and transfer offers "
        "(env TELEMATICS_INVITATION_LIMIT; default: 20/hour,burst=10)",
    )
    p.add_argument(
        "--max-users-per-account",
        type=int,
        default=env.max_users_per_account,
        metavar="N",
        help="the most users one account may have, disabled ones included; creating one "
        "more answers 409 too_many_users (env TELEMATICS_MAX_USERS_PER_ACCOUNT; default: "
        "10000; 0: no limit)",
    )


def add_webhook_targets(p: argparse.ArgumentParser, env: Environment) -> None:
    """Whether webhooks may reach the internal network (``up`` and ``api``)."""
    p.add_argument(
        "--webhook-allow-private-targets",
        action="store_true",
        default=env.webhook_allow_private_targets,
        help="let webhooks POST to private, loopback and link-local addresses (off: a "
        "webhook URL cannot reach the gateway's own network; docs/webhooks.md) "
        "(env TELEMATICS_WEBHOOK_ALLOW_PRIVATE_TARGETS=1)",
    )


def _add_unit_broker_urls(p: argparse.ArgumentParser, env: Environment) -> None:
    """Where provisioning tells units to connect (``up`` and ``api``)."""
    p.add_argument(
        "--unit-broker-url",
        default=env.unit_broker_url,
        help="broker URL told to vehicles at provisioning, as they reach it (env "
        "TELEMATICS_UNIT_BROKER_URL; default: --mqtt-url)",
    )
    p.add_argument(
        "--unit-tls-broker-url",
        default=env.unit_tls_broker_url,
        help="broker URL told instead to vehicles provisioned with a client certificate: "
        "the TLS listener as they reach it, e.g. mqtts://broker.example:8883 (env "
        "TELEMATICS_UNIT_TLS_BROKER_URL; default: under telematics up with --tls-port, "
        "that listener on the host of --unit-broker-url or 127.0.0.1; else --unit-broker-url)",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # gmqtt logs every packet type at INFO; its warnings and errors still show
    for chatty in ("gmqtt", "httpx", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if logging.getLevelName(level) > logging.DEBUG:
        logging.getLogger("gmqtt.mqtt.protocol").addFilter(_lost_connection_in_one_line)


def _lost_connection_in_one_line(record: logging.LogRecord) -> bool:
    """gmqtt logs a lost connection with its traceback (``[EXC: CONN LOST]``): in the demo's
    terminal, a broker restart after a bulk provisioning showed a Python traceback that
    looked like a crash; the reason on one line says as much (DEBUG keeps the traceback)."""
    if record.exc_info and record.msg == "[EXC: CONN LOST]":
        error = record.exc_info[1]
        record.msg = f"[EXC: CONN LOST] {type(error).__name__}: {error}"
        record.exc_info = None
    return True


def ensure_signing_key(path: Path) -> None:
    """Create the command signing key at ``path`` (0600) and its public key at
    ``path.pub`` unless the key exists; the public key is what units are provisioned with."""
    from schemas.signing import generate_keypair, public_key_pem, save_private_key

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    private_key, public_key = generate_keypair()
    save_private_key(path, private_key)
    public_path = path.with_name(path.name + ".pub")
    public_path.write_bytes(public_key_pem(public_key))
    log.info("created the command signing key %s (public key: %s)", path, public_path)
