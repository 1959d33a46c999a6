"""``open_store(url)``: the one way to a telemetry store, so a second backend (InfluxDB,
``gateway.store.influx``) is a new scheme here, not an edit in every process that opens one.

``sqlite:///path/to/telemetry.db`` (``sqlite:////abs`` or ``sqlite:///rel`` as in
SQLAlchemy; ``sqlite:///`` followed by an absolute path works too) or a plain path is the
embedded SQLite store; ``influxdb://host:port/database`` (``influxdbs://`` over HTTPS) the
InfluxDB store (``gateway.store.influx``, docs/decisions/0015-influxdb-store.md). Anything
else is refused with the schemes this gateway knows. See
docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from gateway.errors import ConfigurationError
from gateway.store.base import TelemetryBackend
from gateway.store.sqlite import DEFAULT_QUARANTINE_PAYLOAD_BYTES, SqliteTelemetryStore, Synchronous

__all__ = ["SUPPORTED_SCHEMES", "open_store", "resolve_store", "store_path"]

#: the URL schemes :func:`open_store` accepts (a plain path is SQLite too)
SUPPORTED_SCHEMES = ("sqlite", "influxdb", "influxdbs")


def store_path(url: str | Path) -> Path:
    """The database file an SQLite store URL (or plain path) names."""
    if isinstance(url, Path):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return Path(url)
    if scheme.lower() != "sqlite":  # influxdb:// has a local index, not a store file
        supported = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        raise ConfigurationError(
            f"unknown telemetry store URL {url!r}: supported are {supported} "
            "(e.g. sqlite:///data/telemetry.db) or a file path"
        )
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            f"invalid telemetry store URL {url!r}: expected sqlite:///PATH, e.g. "
            "sqlite:///data/telemetry.db (relative) or sqlite:////var/lib/telematics/t.db"
        )
    return Path(rest[1:])


def resolve_store(url: str | None, data_dir: Path) -> str | Path:
    """What a process opens for ``--store`` ``url`` and ``--data-dir`` ``data_dir``: the
    SQLite file ``telemetry.db`` there when no URL is given; an InfluxDB URL without an
    ``index=`` gets its local index (and spool) ``influx-index.db`` there, so the gateways
    and the API of one data directory share it."""
    if not url:
        return data_dir / "telemetry.db"
    if url.partition("://")[0].lower() in ("influxdb", "influxdbs") and "index=" not in url:
        index = quote(str((data_dir / "influx-index.db").absolute()))
        return f"{url}{'&' if '?' in url else '?'}index={index}"
    return url


def open_store(
    url: str | Path,
    *,
    readonly: bool = False,
    synchronous: Synchronous = "FULL",
    quarantine_payload_bytes: int = DEFAULT_QUARANTINE_PAYLOAD_BYTES,
) -> TelemetryBackend:
    """Open the telemetry store ``url`` names: a writer (creates or upgrades the schema)
    or, ``readonly``, a reader another process writes. ``synchronous`` is SQLite's
    durability setting (``FULL``: a committed batch survives a power cut), of the InfluxDB
    store's local index too."""
    if isinstance(url, str) and url.partition("://")[0].lower() in ("influxdb", "influxdbs"):
        from gateway.store.influx import InfluxTelemetryStore, parse_influx_url

        return InfluxTelemetryStore(
            parse_influx_url(url),
            readonly=readonly,
            synchronous=synchronous,
            quarantine_payload_bytes=quarantine_payload_bytes,
        )
    return SqliteTelemetryStore(
        store_path(url),
        readonly=readonly,
        synchronous=synchronous,
        quarantine_payload_bytes=quarantine_payload_bytes,
    )
