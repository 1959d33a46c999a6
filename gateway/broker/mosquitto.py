"""A private Mosquitto broker run as a child process with a generated configuration.

Why a private broker: ``telematics up``, the benchmarks and the tests all need an MQTT broker
whose limits suit the gateway, and a system-wide Mosquitto (``/etc/mosquitto``) has the
defaults (20 messages in flight, 1000 queued per client) that silently drop telemetry under
load. So we render our own configuration into a data directory, start ``mosquitto -c FILE``
on a port of our choosing, and wait until it really speaks MQTT before handing it out.

The child stays in our process group on purpose: Ctrl-C in a terminal, or a supervisor that
signals the group, stops the broker together with us. Brokers still running at interpreter
exit are stopped by an ``atexit`` hook. (A SIGKILL of the Python process cannot be caught;
Linux's parent-death signal would cover it, but it fires when the *thread* that started the
child exits, which would kill a broker started from a worker thread, so it is not used.)

Identities and TLS: a ``password_file`` authenticates (rendered by :mod:`gateway.broker.auth`),
the Dynamic Security plugin (``dynsec_config_file``) authorizes, and a second, TLS listener
(:class:`TlsListener`, certificates from :mod:`gateway.broker.pki`) takes client
certificates. :meth:`MosquittoProcess.reload` sends SIGHUP, which makes Mosquitto re-read the
password file, the CRL and the certificates without restarting (the plugin is *not*
re-read: it changes at run time through ``$CONTROL``, see :mod:`gateway.broker.control`).
What Mosquitto 2.0.11 does on that reload, found by experiment (``tests/test_broker_auth.py``,
``tests/test_pki.py``):

* connected clients stay connected, with their rights;
* a client that logged in with a password is re-checked against the new password file: if
  its line is gone or its password changed, the broker closes the connection during the
  reload (no DISCONNECT packet, the socket just closes) and refuses it from then on;
* a client identified by its certificate (``use_identity_as_username``) is *not*
  disconnected, even when its certificate is in the new CRL: the established TLS session is
  not re-verified. New handshakes check the new CRL. Deleting its Dynamic Security client
  (what revocation does) disconnects it and leaves it without any right should it come back.

Limits that protect the broker from its clients (decision 0008): ``max_packet_size``
(announced to MQTT 5 clients in the CONNACK, so they refuse an oversized message locally)
and ``persistent_client_expiration`` (a cap on every session's expiry).

Everything here is synchronous and uses only the standard library, so the CLI, the
benchmarks and pytest fixtures can use it without an event loop or extra dependencies.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.broker.budget import MessageBudget
from gateway.errors import GatewayError
from gateway.files import write_private_file
from schemas.broker_url import parse_broker_url

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_MQTTS_PORT",
    "DEFAULT_MQTT_PORT",
    "DYNSEC_PLUGIN_GLOBS",
    "INSTALL_HINT",
    "LOG_FILE_NAME",
    "MAX_INFLIGHT_BYTES",
    "MAX_PACKET_SIZE",
    "MAX_QUEUED_BYTES",
    "PERSISTENCE_FILE_NAME",
    "QUEUE_DROP_LINE",
    "SEARCH_DIRS",
    "SESSION_EXPIRY_CAP_S",
    "BrokerConfig",
    "BrokerError",
    "BrokerStartError",
    "MosquittoNotFoundError",
    "MosquittoProcess",
    "TlsListener",
    "find_dynsec_plugin",
    "find_mosquitto",
    "free_port",
    "parse_mqtt_url",
    "probe_mqtt",
    "render_config",
    "render_tls",
    "scan_queue_drops",
]

DEFAULT_MQTT_PORT = 1883
"""The IANA port for unencrypted MQTT; what ``mqtt://host`` means without a port."""

DEFAULT_MQTTS_PORT = 8883
"""The IANA port for MQTT over TLS."""

CONFIG_FILE_NAME = "mosquitto.conf"
LOG_FILE_NAME = "mosquitto.log"
PERSISTENCE_FILE_NAME = "mosquitto.db"

SEARCH_DIRS: tuple[Path, ...] = (Path("/usr/sbin"), Path("/usr/local/sbin"))
"""Where to look besides PATH: Debian installs the broker in /usr/sbin, which is not on a
normal user's PATH; a source build goes to /usr/local/sbin. Read at call time, so tests can
monkeypatch it."""

DYNSEC_PLUGIN_GLOBS: tuple[str, ...] = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
)
"""Where the Dynamic Security plugin is looked for: Debian and Ubuntu ship it in the
``mosquitto`` package under the multiarch directory (``/usr/lib/x86_64-linux-gnu/`` on
amd64, ``/usr/lib/aarch64-linux-gnu/`` on arm64); a source build installs it to
``/usr/local/lib``. Read at call time, so tests can monkeypatch it."""

MAX_PACKET_SIZE = 1024 * 1024
"""Largest MQTT packet the broker accepts, in bytes (1 MiB). Mosquitto announces it in the
CONNACK (Maximum Packet Size), so an MQTT 5 client may refuse a bigger message locally; a
payload between the gateway's 256 KiB limit and this still reaches the gateway, is
acknowledged and quarantined as ``payload_too_large``, where an operator sees it. Not
smaller: paho-mqtt 2.2 ignores the announced limit, and a packet over it disconnects the
sender, which then reconnects and resends it forever. See decisions 0008 and 0011."""

MAX_INFLIGHT_BYTES = 32 * 1024 * 1024
"""Most bytes of QoS 1/2 messages in flight per client (``max_inflight_bytes``), in each
direction. Towards a client it is what the gateway holds unacknowledged until its batch
commits (a batch of thousands of small messages is a few MB; a bigger backlog waits in the
queue, bounded by ``max_queued_messages``, nothing is dropped). From a client it bounds the
QoS 2 messages the broker keeps until their sender's PUBREL: without it (0), one vehicle
sending 1 MB messages and never releasing them grew the broker by 1 MB a message until
memory ran out (security review 4, decision 0039)."""

MAX_QUEUED_BYTES = 256 * 1024 * 1024
"""Most bytes of messages queued per client beyond those in flight (``max_queued_bytes``),
QoS 0 to a connected client included. Without it (0) only ``max_queued_messages`` (a
million) bounded a queue, whatever the messages' size: one vehicle writing 1 MB messages to
its own telemetry topic faster than the gateway took them grew the broker by ~200 MB a
second (4 GB in 18 s, measured on ``telematics up``) until the machine's memory would run
out and take the broker, and every vehicle with it, down (security review 5, decision
0042). 256 MiB is what a million of the fleet's messages (~250 bytes each) take, so the
gateway's backlog while it restarts is bounded by the message count as before; a flood
beyond it is dropped (the seq-gap counters show what was lost)."""

SESSION_EXPIRY_CAP_S = 7 * 24 * 3600
"""Longest any session outlives its connection (``persistent_client_expiration``): a client
asking for more (an MQTT 5 session expiry of years, or an MQTT 3.1.1 persistent session,
which would never expire) gets this. Mosquitto 2.0 has one cap for everybody, so it is the
gateway's own need: its persistent sessions queue the fleet's messages through a week of
gateway downtime (decision 0004)."""

INSTALL_HINT = (
    "install it with: sudo apt-get install -y mosquitto mosquitto-clients (Debian/Ubuntu), "
    "or pass --mqtt-url mqtt://host:port to use an existing broker"
)

QUEUE_DROP_LINE = "Outgoing messages are being dropped for client "
"""What Mosquitto 2.0.11 logs (notice) when a client's queue is full and it starts dropping
what it would queue for it (``db__message_insert`` in ``src/database.c``): only the first
time in each connection of that client (``is_dropping`` is reset by its next CONNECT,
``src/handle_connect.c``), so later drops in the same connection are not logged again.
A QoS 1 message dropped so was acknowledged to its sender already: :func:`scan_queue_drops`
finds the line, the broker keeper logs it as an error (decision 0048)."""

_SCAN_MAX_BYTES = 1024 * 1024

_MQTT_MAX_PACKET = 268_435_455  # the largest MQTT remaining length, 256 MiB - 1
_LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 64 * 1024
_RELOAD_LINE = "Reloading config."
"""What Mosquitto 2.0 logs (type information) when it starts handling a SIGHUP."""


# --------------------------------------------------------------------------- errors


class BrokerError(GatewayError):
    """Base of the errors raised by :mod:`gateway.broker`; the message says how to fix it."""


class MosquittoNotFoundError(BrokerError):
    """The ``mosquitto`` executable is neither on PATH nor in :data:`SEARCH_DIRS`."""


class BrokerStartError(BrokerError):
    """The broker exited, refused its configuration, or did not answer MQTT in time.

    The message carries the tail of the broker's own output (its log file, which also
    receives its stderr), because that is where Mosquitto says what it disliked.
    """


# --------------------------------------------------------------------------- configuration


def _check_line(what: str, text: str) -> None:
    # The config file is line-based: a newline in a path or an extra line would inject a
    # directive we did not mean to write.
    if "\n" in text or "\r" in text:
        raise ValueError(f"broker {what} must not contain a line break: {text!r}")


def _check_host(what: str, host: str) -> None:
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"broker {what} must be a non-empty name or address, got {host!r}")


def _check_port(what: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(
            f"broker {what} must be 1..65535, got {port} (use free_port() for a free one)"
        )


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A second listener that speaks MQTT over TLS, for vehicles with client certificates.

    ``cafile`` verifies the clients' certificates, ``certfile``/``keyfile`` are the server's
    own (:class:`gateway.broker.pki.Pki` makes all of them). With ``require_certificate``
    a client without a certificate from that CA fails the TLS handshake; with
    ``use_identity_as_username`` the certificate's CN (the VIN) becomes the MQTT username,
    so the vehicle's rights apply and no password is needed (nor checked: the password file
    and the plugin's password check do not apply to this listener's clients).
    ``use_username_as_clientid`` makes the client id that username too: the plugin's client
    id binding only runs with a password, so without it a certificate could connect under
    another vehicle's client id and take over its session. ``crlfile`` is a PEM CRL signed
    by the CA: Mosquitto 2.0.11 refuses the handshake of a revoked certificate and re-reads
    the file on SIGHUP (new connections only; an established TLS session is not
    re-verified, which is why revocation also deletes the vehicle's broker identity).

    Paths are made absolute on construction, like :attr:`BrokerConfig.data_dir`.
    """

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    host: str = "127.0.0.1"
    require_certificate: bool = True
    use_identity_as_username: bool = True
    crlfile: Path | None = None
    use_username_as_clientid: bool = True

    def __post_init__(self) -> None:
        for name in ("cafile", "certfile", "keyfile", "crlfile"):
            value = getattr(self, name)
            if value is not None:
                path = Path(value).absolute()
                _check_line(f"TLS {name}", str(path))
                object.__setattr__(self, name, path)
        _check_port("TLS port", self.port)
        _check_host("TLS host", self.host)
        if self.use_identity_as_username and not self.require_certificate:
            raise ValueError(
                "use_identity_as_username needs require_certificate: without a certificate "
                "there is no identity to use as the username"
            )
        if self.crlfile is not None and not self.require_certificate:
            raise ValueError("a crlfile only has an effect with require_certificate")
        if self.use_username_as_clientid and not self.use_identity_as_username:
            raise ValueError(
                "use_username_as_clientid needs use_identity_as_username: the username it "
                "copies is the certificate's common name"
            )

    @property
    def url(self) -> str:
        """``mqtts://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtts://{host}:{self.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerConfig:
    """Everything :func:`render_config` needs; immutable so a running broker's settings are
    exactly what was rendered.

    Keyword-only because most fields are integers whose order nobody remembers. Paths are
    made absolute on construction: Mosquitto resolves relative paths against its own
    working directory, and the generated file should be readable on its own.

    ``password_file`` and ``dynsec_config_file`` (see
    :class:`gateway.broker.auth.BrokerAuthFiles`) must exist when the broker starts;
    Mosquitto re-reads the password file on :meth:`MosquittoProcess.reload`, the Dynamic
    Security plugin reads its file once and then saves it after every ``$CONTROL`` change.
    ``dynsec_plugin`` is the plugin's shared object (None: :func:`find_dynsec_plugin` at
    start). ``acl_file`` is Mosquitto's plain ACL file, which does not check subscriptions
    (see :mod:`gateway.broker.auth`); the closed installation does not use it. ``tls`` adds
    a second listener for MQTT over TLS. ``message_size_limit`` 0 renders nothing: the
    limit is ``max_packet_size`` (decision 0008).
    """

    host: str = "127.0.0.1"
    port: int
    data_dir: Path
    max_inflight_messages: int = 20_000
    #: bytes of QoS 1/2 messages in flight per client and direction (0: no limit)
    max_inflight_bytes: int = MAX_INFLIGHT_BYTES
    max_queued_messages: int = 1_000_000
    #: bytes of messages queued per client beyond those in flight (0: no limit)
    max_queued_bytes: int = MAX_QUEUED_BYTES
    persistence: bool = True
    allow_anonymous: bool = True
    autosave_interval: int = 30
    #: 0 (off): Mosquitto answers an oversized QoS 1 message with PUBACK reason 0x95, which
    #: MQTT 5 does not allow on a PUBACK and drives paho-mqtt into a resend loop
    message_size_limit: int = 0
    #: largest MQTT packet accepted, announced to MQTT 5 clients in CONNACK (0: no limit)
    max_packet_size: int = MAX_PACKET_SIZE
    session_expiry_cap_s: int | None = SESSION_EXPIRY_CAP_S
    max_keepalive: int = 120
    password_file: Path | None = None
    acl_file: Path | None = None
    dynsec_config_file: Path | None = None
    dynsec_plugin: Path | None = None
    #: the per-vehicle message budget and the compiled plugin that enforces it
    #: (:mod:`gateway.broker.budget`); both or neither
    budget: MessageBudget | None = None
    budget_plugin: Path | None = None
    #: vehicle passwords checked by our plugin from a table it re-reads by itself, with no
    #: reload (:mod:`gateway.broker.vehicle_auth`, decision 0055); both or neither
    vehicle_auth_plugin: Path | None = None
    vehicle_table_file: Path | None = None
    tls: TlsListener | None = None
    extra_lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).absolute())
        for name in (
            "password_file",
            "acl_file",
            "dynsec_config_file",
            "dynsec_plugin",
            "budget_plugin",
            "vehicle_auth_plugin",
            "vehicle_table_file",
        ):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).absolute())
        _check_port("port", self.port)
        _check_host("host", self.host)
        for what, text in [
            ("data_dir", str(self.data_dir)),
            ("password_file", str(self.password_file or "")),
            ("acl_file", str(self.acl_file or "")),
            ("dynsec_config_file", str(self.dynsec_config_file or "")),
            ("dynsec_plugin", str(self.dynsec_plugin or "")),
            ("budget_plugin", str(self.budget_plugin or "")),
            ("vehicle_auth_plugin", str(self.vehicle_auth_plugin or "")),
            ("vehicle_table_file", str(self.vehicle_table_file or "")),
            *(("extra_lines", x) for x in self.extra_lines),
        ]:
            _check_line(what, text)
        if (self.budget is None) != (self.budget_plugin is None):
            raise ValueError(
                "a message budget needs its plugin and the plugin a budget: give both "
                "budget and budget_plugin (gateway.broker.budget.ensure_budget_plugin), "
                "or neither"
            )
        if (self.vehicle_auth_plugin is None) != (self.vehicle_table_file is None):
            raise ValueError(
                "the vehicle password plugin needs its table and the table its plugin: give "
                "both vehicle_auth_plugin and vehicle_table_file "
                "(gateway.broker.vehicle_auth.ensure_vehicle_auth_plugin), or neither"
            )
        if self.budget is not None and self.dynsec_config_file is None:
            raise ValueError(
                "the message budget needs the Dynamic Security plugin (dynsec_config_file): "
                "the budget's ACL check defers, and with nobody else to answer Mosquitto "
                "refuses every vehicle message (decision 0059)"
            )
        if self.vehicle_auth_plugin is not None and self.dynsec_config_file is None:
            raise ValueError(
                "the vehicle password plugin needs the Dynamic Security plugin before it "
                "(dynsec_config_file): that one binds a vehicle's client id to its VIN"
            )
        if self.tls is not None and self.tls.port == self.port:
            raise ValueError(
                f"the TLS listener needs a port of its own, not the plain listener's {self.port}"
            )
        for name in (
            "max_inflight_messages",
            "max_inflight_bytes",
            "max_queued_messages",
            "max_queued_bytes",
            "message_size_limit",
            "max_packet_size",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"broker {name} must be >= 0 (0 means unlimited)")
        if self.autosave_interval < 0:
            raise ValueError("broker autosave_interval must be >= 0 (0 saves only on exit)")
        if not 10 <= self.max_keepalive <= 65535:
            raise ValueError("broker max_keepalive must be 10..65535 seconds (Mosquitto's range)")
        if self.max_packet_size != 0 and not 20 <= self.max_packet_size <= _MQTT_MAX_PACKET:
            raise ValueError(
                f"broker max_packet_size must be 20..{_MQTT_MAX_PACKET} bytes, or 0 for "
                "MQTT's own limit"
            )
        cap = self.session_expiry_cap_s
        if cap is not None and (cap <= 0 or cap % 3600):
            raise ValueError(
                "broker session_expiry_cap_s must be a positive number of whole hours "
                f"(Mosquitto's persistent_client_expiration unit), got {cap}"
            )

    @property
    def config_path(self) -> Path:
        """Where :meth:`MosquittoProcess.start` writes the rendered configuration."""
        return self.data_dir / CONFIG_FILE_NAME

    @property
    def log_path(self) -> Path:
        """The broker's log file; its stdout and stderr are appended there too."""
        return self.data_dir / LOG_FILE_NAME

    @property
    def persistence_path(self) -> Path:
        """The persistence database Mosquitto saves on exit and every autosave interval."""
        return self.data_dir / PERSISTENCE_FILE_NAME

    @property
    def url(self) -> str:
        """``mqtt://host:port``, the form ``--mqtt-url`` and :func:`parse_mqtt_url` take."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _current_user() -> str | None:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (some containers): not root, no effect
        return None


#: adds one directive to a configuration being rendered: (why, the directive's line)
_Add = Callable[[str, str], None]


def render_config(cfg: BrokerConfig) -> str:
    """Return a Mosquitto 2.0 configuration file for ``cfg``, each directive commented.

    Comments sit on their own lines because Mosquitto has no trailing comments: anything
    after a value is read as part of it. All directives were checked against Mosquitto
    2.0.11, which refuses unknown ones. ``extra_lines`` go last, verbatim.
    """
    out: list[str] = [
        "# Generated by gateway.broker.render_config; rewritten on every start, do not edit.",
        "",
    ]

    def add(why: str, line: str) -> None:
        out.extend(f"# {w}" for w in why.splitlines())
        out.append(line)
        out.append("")

    _render_access(cfg, add)
    _render_persistence(cfg, add)
    _render_queues(cfg, add)
    _render_logging(cfg, add)
    _render_connections(cfg, add)
    if cfg.tls is not None:
        render_tls(cfg.tls, add)
    if cfg.extra_lines:
        out.append("# Extra directives from BrokerConfig.extra_lines, verbatim.")
        out.extend(cfg.extra_lines)
        out.append("")
    return "\n".join(out)


def _render_plugins(cfg: BrokerConfig, add: _Add) -> None:
    """The plugins, in the order Mosquitto asks them: our message budget (it charges
    every write, a publish or a Last Will, in the ACL check and defers; decision 0059),
    Dynamic Security (rights, and the client id binding), our vehicle password check."""
    if cfg.budget is not None and cfg.budget_plugin is not None:
        add(
            "Per-vehicle message budget (decision 0048): a token bucket of messages and one\n"
            "of payload bytes per user name that is a VIN. A message over either closes the\n"
            "connection without a PUBACK, so the unit resends it after its backoff; without\n"
            "it one vehicle's flood filled the gateway's queue and the broker acknowledged\n"
            "and dropped every vehicle's messages. Service accounts, bridges and anonymous\n"
            "clients are not limited. Charged in the write ACL check, so a Last Will is\n"
            "charged too (decision 0059); first, because the first ACL answer that is not\n"
            "DEFER wins: under budget it defers to Dynamic Security.",
            f"plugin {cfg.budget_plugin}",
        )
        add(
            "Messages and bytes a second each vehicle's buckets refill by, and their sizes.",
            "\n".join(f"plugin_opt_{k} {v}" for k, v in cfg.budget.plugin_options()),
        )
    if cfg.dynsec_config_file is not None:
        plugin = cfg.dynsec_plugin or find_dynsec_plugin()
        _check_line("dynsec plugin", str(plugin))
        add(
            "Dynamic Security plugin: every right of every client, subscriptions included\n"
            "(gateway.broker.auth renders its file before each start; it changes at run time\n"
            "through $CONTROL/dynamic-security/v1). Asked before the password file: it\n"
            "binds each vehicle's client id to its user name, then defers the password\n"
            "check to the password file.",
            f"plugin {plugin}",
        )
        add(
            "The plugin's clients, roles and ACLs; it rewrites this file after every change.",
            f"plugin_opt_config_file {cfg.dynsec_config_file}",
        )
    if cfg.vehicle_auth_plugin is not None and cfg.vehicle_table_file is not None:
        add(
            "Vehicle passwords (decision 0055): our plugin checks the user names of its own\n"
            "table, re-reads it when the gateway replaces it (no reload, nobody else\n"
            "re-checked) and disconnects exactly the vehicles whose entry went or changed.\n"
            "After the Dynamic Security plugin (the client id binding), before the password\n"
            "file (which keeps the service accounts and integrations).",
            f"plugin {cfg.vehicle_auth_plugin}",
        )
        add(
            "The vehicles' user names and password hashes.",
            f"plugin_opt_table_file {cfg.vehicle_table_file}",
        )


def _render_access(cfg: BrokerConfig, add: _Add) -> None:
    """The listener, who may connect (anonymous, passwords, the Dynamic Security plugin)
    and the user the broker runs as."""
    add(
        "One set of security settings for all listeners (the 2.0 default, stated so a\n"
        "second listener added later does not silently get different auth rules).",
        "per_listener_settings false",
    )
    add(
        "Our own port and interface only; loopback by default so a dev broker is not\n"
        "reachable from the network.",
        f"listener {cfg.port} {cfg.host}",
    )
    if cfg.allow_anonymous:
        add(
            "Anonymous clients allowed: a local development broker, the benchmarks and most\n"
            "tests. Mosquitto 2.0 refuses them by default once a listener is configured.",
            "allow_anonymous true",
        )
    else:
        add(
            "No anonymous clients: every vehicle and service has an identity (password or\n"
            "client certificate).",
            "allow_anonymous false",
        )
    if cfg.password_file is not None:
        add(
            "Usernames and PBKDF2-SHA512 password hashes of vehicles and service accounts\n"
            "(gateway.broker.auth); re-read on SIGHUP without dropping connections.",
            f"password_file {cfg.password_file}",
        )
    if cfg.acl_file is not None:
        add(
            "Per-user topic rights for publishing and delivery (Mosquitto 2.0's ACL file does\n"
            "not check subscriptions); re-read on SIGHUP.",
            f"acl_file {cfg.acl_file}",
        )
    _render_plugins(cfg, add)
    user = _current_user()
    if user is not None:
        add(
            "Keep running as the user who started us. Run as root, Mosquitto would switch\n"
            "to the 'mosquitto' user, which cannot write the data directory, and would then\n"
            "run with no log and no persistence. No effect when not started as root.",
            f"user {user}",
        )


def _render_persistence(cfg: BrokerConfig, add: _Add) -> None:
    """Whether and where the broker saves sessions and retained messages."""
    if cfg.persistence:
        add(
            "Messages queued for a stopped gateway wait in its persistent session and\n"
            "retained messages must outlive a broker restart, so save state to disk.",
            "persistence true",
        )
        add(
            "The database lives in our data directory (the trailing slash is required).",
            f"persistence_location {cfg.data_dir}/",
        )
        add(
            "The database file name inside persistence_location.",
            f"persistence_file {PERSISTENCE_FILE_NAME}",
        )
        add(
            "Save every N seconds as well as on a clean exit, so a broker crash loses at most\n"
            "this much queued telemetry; each save rewrites the whole database, so not less.",
            f"autosave_interval {cfg.autosave_interval}",
        )
    else:
        add(
            "No persistence: state is lost when the broker stops (tests, benchmarks).",
            "persistence false",
        )


def _render_queues(cfg: BrokerConfig, add: _Add) -> None:
    """How many messages the broker holds per client, and the largest packet it takes."""
    add(
        "QoS 1/2 messages in flight to one client. The MQTT 5 gateway acknowledges only\n"
        "after a batch commit, so a whole batch (thousands) is unacknowledged at once; the\n"
        "default of 20 would stall delivery to a trickle.",
        f"max_inflight_messages {cfg.max_inflight_messages}",
    )
    add(
        "Bytes of QoS 1/2 messages in flight per client, each way. From a client this is\n"
        "what a QoS 2 sender can leave waiting for its PUBREL: without a limit one vehicle\n"
        "sending big messages it never released filled the broker's memory. Towards the\n"
        "gateway more waits in the queue (nothing is dropped).",
        f"max_inflight_bytes {cfg.max_inflight_bytes}",
    )
    add(
        "Messages queued per client beyond those in flight. Messages for a stopped gateway\n"
        "wait in its persistent session; the default of 1000 would drop telemetry after a\n"
        "few seconds of a fleet's traffic. Beyond this limit messages are dropped.",
        f"max_queued_messages {cfg.max_queued_messages}",
    )
    add(
        "Bytes queued per client beyond those in flight, QoS 0 to a connected client too.\n"
        "Without it one vehicle writing 1 MB messages faster than the gateway takes them\n"
        "grew the broker until memory ran out (security review 5). A million of the\n"
        "fleet's messages fit; what a flood sends beyond it is dropped.",
        f"max_queued_bytes {cfg.max_queued_bytes}",
    )
    add(
        "QoS 0 telemetry is fire-and-forget by contract; do not queue it for offline clients\n"
        "(the MQTT spec's behaviour), so it cannot crowd out QoS 1 messages.",
        "queue_qos0_messages false",
    )
    if cfg.max_packet_size:
        add(
            "Largest MQTT packet accepted (the whole packet, not just the payload), announced\n"
            "to MQTT 5 clients as Maximum Packet Size in CONNACK so they refuse a bigger one\n"
            "themselves. A client that sends one anyway is disconnected. Not\n"
            "message_size_limit: it answers an oversized QoS 1 message with PUBACK reason\n"
            "0x95, which MQTT 5 does not allow on a PUBACK, and paho-mqtt then reconnects and\n"
            "resends forever. Payloads between the gateway's own limit (256 KiB) and this one\n"
            "reach the gateway, which quarantines them as payload_too_large and acknowledges.",
            f"max_packet_size {cfg.max_packet_size}",
        )
    if cfg.message_size_limit:
        add(
            "Largest accepted publish payload in bytes (see max_packet_size above).",
            f"message_size_limit {cfg.message_size_limit}",
        )
    if cfg.session_expiry_cap_s is not None:
        add(
            "Longest a session outlives its connection, whatever the client asks for (an MQTT\n"
            "3.1.1 persistent session would otherwise never expire): the gateway's own\n"
            "sessions need a week; nobody gets more.",
            f"persistent_client_expiration {cfg.session_expiry_cap_s // 3600}h",
        )


def _render_logging(cfg: BrokerConfig, add: _Add) -> None:
    """The log file and what goes into it."""
    add(
        "Log to a file in the data directory (start-up errors read its tail).",
        f"log_dest file {cfg.log_path}",
    )
    # One type per line: Mosquitto 2.0.11 reads only the first word of a log_type line, so
    # "log_type error warning ..." would silently log errors only.
    add(
        "Errors, warnings, notices and connection events; one type per line because\n"
        "Mosquitto reads only the first type on a log_type line.",
        "\n".join(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
    )
    add("Readable timestamps instead of epoch seconds.", "log_timestamp_format %Y-%m-%dT%H:%M:%S")


def _render_connections(cfg: BrokerConfig, add: _Add) -> None:
    """TCP and keepalive settings of every connection."""
    add(
        "Disable Nagle's algorithm: small PUBACKs and telemetry messages go out at once\n"
        "instead of waiting up to 40 ms to be coalesced.",
        "set_tcp_nodelay true",
    )
    add(
        "MQTT 5 clients asking for a longer keepalive are told to use this one, so a\n"
        "silently dead gateway connection is noticed within 1.5x this many seconds.",
        f"max_keepalive {cfg.max_keepalive}",
    )


def render_tls(tls: TlsListener, add: Callable[[str, str], None]) -> None:
    """The TLS listener's block. Last before extra_lines because Mosquitto applies listener
    options (cafile, certfile, ...) to the ``listener`` line above them; the global options
    rendered before it are unaffected by where a listener starts."""
    add(
        "Second listener: MQTT over TLS for vehicles with client certificates. The options\n"
        "below belong to it (listener options apply to the listener line above them).",
        f"listener {tls.port} {tls.host}",
    )
    add("The CA that issued the clients' certificates.", f"cafile {tls.cafile}")
    add(
        "The broker's own certificate (its SANs name the hosts clients connect to) and\n"
        "its key; both are re-read on SIGHUP.",
        f"certfile {tls.certfile}",
    )
    add("The private key of certfile (unencrypted, mode 0600).", f"keyfile {tls.keyfile}")
    add(
        "Clients must present a certificate from cafile, or the handshake fails.",
        f"require_certificate {_bool(tls.require_certificate)}",
    )
    add(
        "The certificate's CN (the VIN) is the MQTT username: its rights apply and the\n"
        "password file is not consulted for this listener's clients.",
        f"use_identity_as_username {_bool(tls.use_identity_as_username)}",
    )
    if tls.use_username_as_clientid:
        add(
            "The client id is the username (the VIN), whatever the client sent: a\n"
            "certificate can only ever take over its own vehicle's session.",
            "use_username_as_clientid true",
        )
    if tls.crlfile is not None:
        add(
            "Revoked client certificates (a CRL signed by the CA); re-read on SIGHUP, checked\n"
            "on new connections only.",
            f"crlfile {tls.crlfile}",
        )


# --------------------------------------------------------------------------- helpers


def find_mosquitto() -> Path:
    """Return the path of the ``mosquitto`` executable.

    Looks on PATH first (so a user's own build wins), then in :data:`SEARCH_DIRS`.
    Raises :class:`MosquittoNotFoundError` with the install command otherwise.
    """
    found = shutil.which("mosquitto")
    if found is not None:
        return Path(found)
    for directory in SEARCH_DIRS:
        candidate = directory / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    searched = ", ".join(str(d) for d in SEARCH_DIRS)
    raise MosquittoNotFoundError(
        f"the Mosquitto broker was not found on PATH or in {searched}; {INSTALL_HINT}"
    )


def find_dynsec_plugin() -> Path:
    """Return the path of Mosquitto's Dynamic Security plugin (``mosquitto_dynamic_security.so``).

    Looks in :data:`DYNSEC_PLUGIN_GLOBS` (Debian's multiarch directory for any architecture,
    then the source-install locations). Raises :class:`MosquittoNotFoundError` with the
    install command otherwise: the closed broker cannot refuse subscriptions without it.
    """
    for pattern in DYNSEC_PLUGIN_GLOBS:
        for candidate in sorted(glob.glob(pattern)):
            path = Path(candidate)
            if path.is_file():
                return path
    searched = ", ".join(DYNSEC_PLUGIN_GLOBS)
    raise MosquittoNotFoundError(
        f"Mosquitto's Dynamic Security plugin (mosquitto_dynamic_security.so) was not found "
        f"in {searched}; it comes with Mosquitto 2.0: {INSTALL_HINT}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that the kernel had free a moment ago.

    There is a small window before the broker binds it; :meth:`MosquittoProcess.start`
    re-checks and fails clearly if someone else took it meanwhile.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """Split ``mqtt://host[:port]`` into ``(host, port)``; the port defaults to 1883. The
    gateway's own connections do not speak TLS yet, so ``mqtts`` is refused with that
    reason (:func:`schemas.broker_url.parse_broker_url`, the one parser, says the rest)."""
    host, port, _ = parse_broker_url(url, tls=False)
    return host, port


def scan_queue_drops(log_path: Path, offset: int) -> tuple[int, list[str]]:
    """The clients the broker's log at ``log_path`` says it started dropping messages for
    (:data:`QUEUE_DROP_LINE`) after byte ``offset``, and the offset to scan from next time.

    Reads whole lines only, at most 1 MiB a call (the rest next time); a log shorter than
    ``offset`` (replaced) is read from its start. An unreadable log reports nothing.
    """
    try:
        with log_path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            if size == offset:
                return offset, []
            f.seek(offset)
            data = f.read(_SCAN_MAX_BYTES)
    except OSError:
        return offset, []
    end = data.rfind(b"\n")
    if end < 0:
        # no whole line yet; a line longer than the read is skipped rather than re-read forever
        return (offset + len(data), []) if len(data) == _SCAN_MAX_BYTES else (offset, [])
    clients = [
        line.split(QUEUE_DROP_LINE, 1)[1].removesuffix(".")
        for line in data[:end].decode("utf-8", "replace").splitlines()
        if QUEUE_DROP_LINE in line
    ]
    return offset + end + 1, clients


def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, 10 s keepalive, no credentials)."""
    cid = client_id.encode()
    variable_header = b"\x00\x04MQTT" + b"\x04" + b"\x02" + (10).to_bytes(2, "big")
    body = variable_header + len(cid).to_bytes(2, "big") + cid
    assert len(body) < 128, "remaining length must fit in one byte"
    return bytes([0x10, len(body)]) + body


_DISCONNECT = b"\xe0\x00"


def probe_mqtt(host: str, port: int, *, timeout: float = 1.0) -> int:
    """Do one MQTT 3.1.1 CONNECT/CONNACK handshake and return the CONNACK return code.

    0 means accepted; 1-5 are the MQTT refusals (5: not authorized), which still prove an
    MQTT broker is answering. A TCP connect alone is not enough: the port may belong to
    something else, or the broker may accept TCP before it is ready. Raises ``OSError``
    (``ConnectionError``, ``TimeoutError``) when no valid CONNACK arrives in ``timeout``.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_connect_packet(f"gw-probe-{os.getpid()}"))
        reply = b""
        while len(reply) < 4:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(4 - len(reply))
            if not chunk:
                raise ConnectionError(f"{host}:{port} closed the connection before a CONNACK")
            reply += chunk
        if reply[0] != 0x20 or reply[1] != 0x02:
            raise ConnectionError(f"{host}:{port} did not answer like an MQTT broker: {reply!r}")
        return_code = reply[3]
        if return_code == 0:
            with contextlib.suppress(OSError):
                sock.sendall(_DISCONNECT)  # a clean goodbye keeps the broker log quiet
        return return_code


def _raise_open_file_limit(pid: int) -> None:
    """Let the broker at ``pid`` hold as many connections as the hard limit on open files
    allows (one connection is one descriptor; the soft limit is often 1024).

    Set on the running child with prlimit(2) right after it starts, before it accepts a
    single connection: a ``preexec_fn`` would do it before exec, but is not safe in a
    process with threads (the API and the tests have some). Best effort: where prlimit is
    missing or refused, the broker keeps the limit it inherited.
    """
    prlimit = getattr(resource, "prlimit", None)
    if prlimit is None:  # not Linux
        return
    with contextlib.suppress(OSError, ValueError):
        soft, hard = prlimit(pid, resource.RLIMIT_NOFILE)
        if soft != hard:
            prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))


def _check_port_free(host: str, port: int) -> None:
    """Fail fast if something already listens on ``host:port``.

    Without this, the readiness probe could talk to the *other* broker during the moment
    before ours fails to bind. SO_REUSEADDR (as Mosquitto uses) ignores TIME_WAIT leftovers
    of our previous run, so a restart on the same port passes.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise BrokerStartError(f"cannot bind {host}:{port}: {exc}") from exc
            raise BrokerStartError(
                f"port {port} on {host} is already in use; pick another port "
                f"(free_port() finds one) or pass --mqtt-url mqtt://{host}:{port} "
                "to use the broker that is already there"
            ) from exc


# Brokers still running when the interpreter exits are stopped, so none outlives us on a
# normal exit (including an uncaught exception). Strong references: a MosquittoProcess
# dropped without stop() must not leave an unreachable child behind.
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    for proc in list(_LIVE):
        proc.terminate()
    for proc in list(_LIVE):
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _LIVE.clear()


# --------------------------------------------------------------------------- the process


class MosquittoProcess:
    """One private Mosquitto broker: start, stop, kill, restart, and where it listens.

    ``start()`` returns only once the broker answers an MQTT handshake, so callers can
    connect immediately. Usable as a context manager (starts if needed, stops on exit).
    Not thread-safe: one owner drives it.
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        executable: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        """``executable`` defaults to :func:`find_mosquitto` at start time."""
        self.config = config
        self.executable = executable
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        #: held by a reload while it reads the log from an offset, and by :meth:`cut_log`
        self._log_lock = threading.Lock()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<MosquittoProcess {self.url} {state}>"

    # -- where it is

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def url(self) -> str:
        """``mqtt://host:port``, accepted by :func:`parse_mqtt_url` and ``--mqtt-url``."""
        return self.config.url

    @property
    def log_path(self) -> Path:
        return self.config.log_path

    @property
    def config_path(self) -> Path:
        return self.config.config_path

    @property
    def pid(self) -> int | None:
        """The broker's process id while one was started (also after it exited)."""
        return None if self._proc is None else self._proc.pid

    @property
    def log_start_offset(self) -> int:
        """The size of the log file before the latest start: what that start wrote is after."""
        return self._log_offset

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited (negative: killed by that signal), else None."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle

    def start(self) -> None:
        """Write the configuration, start the broker and wait until it answers MQTT.

        Raises :class:`MosquittoNotFoundError` if there is no broker executable and
        :class:`BrokerStartError` (with the tail of the broker's log) if the port is taken,
        the broker exits, or it does not answer within ``startup_timeout`` seconds.
        """
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running; use restart() to restart it")
        executable = self.executable or find_mosquitto()
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # private (0600): an edge broker's file holds its bridge's password (decision 0038)
        write_private_file(cfg.config_path, render_config(cfg))
        _check_port_free(cfg.host, cfg.port)

        # Errors found while reading the configuration go to stderr before the log file is
        # open, so stderr is appended to the same file: one place holds everything. Only
        # the part written by this start is reported on failure.
        self._log_offset = cfg.log_path.stat().st_size if cfg.log_path.exists() else 0
        with cfg.log_path.open("ab") as log:
            try:
                self._proc = subprocess.Popen(
                    [str(executable), "-c", str(cfg.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cfg.data_dir,
                    # Ctrl-C in a terminal signals the whole foreground process group at
                    # once; the broker must outlive the gateways so they can acknowledge
                    # what they committed, so it gets a session of its own and is stopped
                    # last, by stop() (or the exit hook above)
                    start_new_session=True,
                )
            except OSError as exc:  # not executable, wrong architecture, ...
                raise BrokerStartError(f"cannot run {executable}: {exc}; {INSTALL_HINT}") from exc
        _LIVE.add(self._proc)
        _raise_open_file_limit(self._proc.pid)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        interval = 0.005
        last_error: OSError | None = None
        while True:
            if proc.poll() is not None:
                self._forget()
                raise BrokerStartError(
                    f"mosquitto exited with status {proc.returncode} during start-up "
                    f"(config {self.config_path}){self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                probe_mqtt(self.host, self.port, timeout=min(1.0, remaining))
            except OSError as exc:
                last_error = exc
            else:
                return
            # Wait for the child to exit *or* the interval to pass: exits are seen at once,
            # and the growing interval keeps the polling cheap on a slow machine.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=min(interval, max(deadline - time.monotonic(), 0)))
            interval = min(interval * 2, 0.1)
        self.stop()
        raise BrokerStartError(
            f"mosquitto did not answer an MQTT CONNECT on {self.host}:{self.port} within "
            f"{self.startup_timeout:g} s (last error: {last_error}; config {self.config_path})"
            f"{self._log_tail()}"
        )

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop the broker: SIGTERM (it saves its database), then SIGKILL after ``timeout``.

        Returns the exit status (None if it was never started). Safe to call twice.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: nothing is saved since the last autosave."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget()

    def save(self) -> None:
        """Ask the broker to write its persistence database now (SIGUSR1), on top of its
        periodic autosave; it does so in the next turn of its main loop. No effect without
        persistence or when it is not running."""
        proc = self._proc
        if self.config.persistence and proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)

    def restart(self) -> None:
        """Stop (cleanly) and start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def cut_log(self, max_bytes: int) -> int:
        """Keep the broker's log file under about ``max_bytes``: once it is larger, its
        content moves to ``<log>.1`` (replacing the previous one) and the file is emptied in
        place (security review 9, decision 0061). Returns the bytes moved (0: nothing done).

        Why: Mosquitto 2.0.11 has no bound on its log file, and one vehicle credential
        connecting and disconnecting in a loop makes it write ~270 bytes a connection,
        ~0.5 MB/s (tens of GB a day) into the data directory; a TCP connection without
        any credential writes ~140. Emptied in place, not renamed: the broker and its
        stdout/stderr write with O_APPEND ("at", "ab"), so they go on at the new end, and
        a rename would need a SIGHUP (a reload) to reopen it. Lines the broker writes
        between the copy and the emptying (microseconds) are lost. Skipped while a
        :meth:`reload` reads the log from an offset (it would wait for a line no longer
        there); the next call does it.
        """
        if not self._log_lock.acquire(blocking=False):
            return 0
        try:
            path = self.log_path
            try:
                if path.stat().st_size <= max_bytes:
                    return 0
                kept = path.with_name(path.name + ".1")
                tmp = path.with_name(path.name + ".1.tmp")
                with path.open("rb") as src, tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                    moved = dst.tell()
                    os.truncate(path, 0)
                tmp.replace(kept)
            except OSError:
                return 0
            self._log_offset = 0
            return moved
        finally:
            self._log_lock.release()

    def reload(self, timeout: float = 5.0) -> None:
        """Make the broker re-read its password file, ACL, CRL and certificates (SIGHUP), and
        return once it has. Connected clients stay connected, except password clients whose
        line is gone (see the module docstring for exactly what a reload does to them).

        How we know it happened: Mosquitto logs "Reloading config." (log type information,
        always rendered) and then reloads everything inside the same turn of its
        single-threaded main loop, before it reads any socket again. So once the line is in
        the log, an MQTT handshake answered afterwards proves the reload is complete.
        Errors the broker logged while reloading (say, a password-file entry it dropped)
        raise :class:`BrokerError` after the reload; the broker keeps running either way.

        The configuration file is not re-rendered (the config is immutable): Mosquitto
        re-reads the same file, and new listener settings need :meth:`restart` anyway.
        ``timeout`` bounds the whole wait. Callable from another thread than the owner's
        (:class:`gateway.broker.auth.BrokerAuthSync` does), as long as the broker is not
        being stopped at the same time.

        The log is held meanwhile (:meth:`cut_log` waits for the next turn).
        """
        with self._log_lock:
            self._reload(timeout)

    def _reload(self, timeout: float) -> None:
        """The body of :meth:`reload`, with the log held."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise BrokerError(f"cannot reload {self!r}: it is not running; start() it first")
        log_path = self.log_path
        offset = log_path.stat().st_size if log_path.exists() else 0
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        interval = 0.002
        while _RELOAD_LINE not in self._log_since(offset):
            if proc.poll() is not None:
                self._forget()
                raise BrokerError(
                    f"mosquitto exited with status {proc.returncode} while reloading"
                    f"{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto did not log {_RELOAD_LINE!r} within {timeout:g} s of SIGHUP "
                    f"(is log_type information enabled? log {log_path}){self._log_tail()}"
                )
            time.sleep(interval)
            interval = min(interval * 2, 0.05)
        try:
            probe_mqtt(self.host, self.port, timeout=max(deadline - time.monotonic(), 0.5))
        except OSError as exc:
            raise BrokerError(
                f"mosquitto stopped answering MQTT after a reload: {exc}{self._log_tail()}"
            ) from exc
        text = self._log_since(offset)
        # "Error: ..." is how Mosquitto words configuration and security errors; TLS
        # failures of clients say "OpenSSL Error[0]:" and are not the reload's concern
        errors = [
            ln
            for ln in text[text.index(_RELOAD_LINE) :].splitlines()
            if ln.startswith("Error: ") or ": Error: " in ln
        ]
        if errors:
            lines = "\n".join(f"    {ln}" for ln in errors[:_LOG_TAIL_LINES])
            raise BrokerError(f"mosquitto reported errors while reloading:\n{lines}")

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _forget(self) -> None:
        if self._proc is not None:
            _LIVE.discard(self._proc)

    def _log_tail(self) -> str:
        """The last lines this start wrote to the log, formatted for an error message."""
        path = self.log_path
        try:
            with path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - _LOG_TAIL_BYTES))
                data = f.read()
        except OSError as exc:
            return f"; could not read {path}: {exc}"
        lines = data.decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
        if not lines:
            return f"; {path} is empty"
        body = "\n".join(f"    {line}" for line in lines)
        return f"; last lines of {path}:\n{body}"

    # -- context manager

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
