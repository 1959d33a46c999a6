"""A Mosquitto broker closed as under ``telematics up`` (dynamic security, the gateway's
service user), and the VINs the broker-auth tests provision on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.broker import (
    BrokerConfig,
    DynsecControl,
    MosquittoProcess,
    free_port,
)
from gateway.broker import auth as broker_auth
from gateway.supervisor import BrokerKeeper, RestartPolicy


class IdentitySource:
    """What the state database provides the broker sync, in memory: a version counter and
    the vehicle list (``fail_with`` makes both raise, as an unreachable database would)."""

    def __init__(self) -> None:
        self.version = 0
        self.vehicles: list[broker_auth.VehicleIdentity] = []
        self.fail_with: Exception | None = None
        self.lock = threading.Lock()

    def get_version(self) -> int:
        with self.lock:
            if self.fail_with is not None:
                raise self.fail_with
            return self.version

    def get_identities(self) -> list[broker_auth.VehicleIdentity]:
        with self.lock:
            if self.fail_with is not None:
                raise self.fail_with
            return list(self.vehicles)

    def set(self, vehicles: list[broker_auth.VehicleIdentity]) -> None:
        with self.lock:
            self.vehicles = vehicles
            self.version += 1


SERVICE_USER = "telematics-gateway"
CONTROL_USER = "telematics-broker-admin"


@dataclass
class ClosedBroker:
    """A private broker that refuses anonymous clients, set up as ``telematics up`` sets it
    up: a password file, the Dynamic Security plugin, a service account with the gateway's
    rights, a control account, and vehicles (user name = VIN) confined to their own topics.
    Changes go through the real :class:`~gateway.broker.auth.BrokerAuthSync`."""

    broker: MosquittoProcess
    files: broker_auth.BrokerAuthFiles
    service: tuple[str, str]
    control: tuple[str, str]
    vehicles: dict[str, str | None]
    source: IdentitySource
    sync: broker_auth.BrokerAuthSync
    keeper: BrokerKeeper | None = None

    def add_vehicle(self, vin: str, *, certificate: bool = False) -> str | None:
        """Provision ``vin`` on the running broker (password, or certificate only) and
        apply it; returns the password (None for a certificate-only vehicle)."""
        password = None if certificate else broker_auth.generate_password()
        self.vehicles[vin] = password
        self.apply()
        return password

    def remove_vehicle(self, vin: str) -> None:
        self.vehicles.pop(vin)
        self.apply()

    def apply(self) -> None:
        """Hand the vehicles to the identity source and sync the running broker."""
        self.source.set(self.identities())
        self.sync.sync_once()

    def identities(self) -> list[broker_auth.VehicleIdentity]:
        """The vehicles with their password hashes (one hash per password, so an unchanged
        password renders an unchanged password file)."""
        for pw in self.vehicles.values():
            if pw is not None and pw not in _HASHES:
                _HASHES[pw] = broker_auth.hash_password(pw)
        return [
            broker_auth.VehicleIdentity(vin, None if pw is None else _HASHES[pw])
            for vin, pw in self.vehicles.items()
        ]


_HASHES: dict[str, str] = {}


def _purger(
    broker: MosquittoProcess, service: tuple[str, str], control: tuple[str, str]
) -> Callable[[Sequence[str]], None]:
    from gateway.installation import CONTROL_USERNAME, SERVICE_USERNAME, _session_purger

    assert (service[0], control[0]) == (SERVICE_USERNAME, CONTROL_USERNAME)
    return _session_purger(broker, service[1], control[1])


def start_closed_broker(
    directory: Path,
    *,
    vehicles: dict[str, str | None] | None = None,
    keeper: bool = False,
    restart_policy: RestartPolicy | None = None,
    prime: Callable[[MosquittoProcess], None] | None = None,
    purge: bool = False,
    vehicle_auth: Path | None = None,
    **config: Any,
) -> ClosedBroker:
    """Render the identities, start the broker and return it, ready to use; stop it with
    ``.broker.stop()`` (or ``.keeper.stop()``). ``config`` goes to
    :class:`~gateway.broker.BrokerConfig`. With ``keeper``, a
    :class:`~gateway.supervisor.BrokerKeeper` owns the broker, as under ``telematics up``:
    the sync reloads and restarts through it. With ``purge``, the sync discards the
    sessions and retained status of VINs removed or passed on, as ``telematics up``'s does
    (:func:`gateway.installation.closed_broker_sync`). With ``vehicle_auth`` (the compiled
    plugin of :mod:`gateway.broker.vehicle_auth`), the vehicles' passwords are in its table
    instead of the password file (decision 0055)."""
    files = broker_auth.BrokerAuthFiles(
        directory / "broker-auth", vehicle_table=vehicle_auth is not None
    )
    if vehicle_auth is not None:
        config.setdefault("vehicle_auth_plugin", vehicle_auth)
        config.setdefault("vehicle_table_file", files.vehicle_table_file)
    service = (SERVICE_USER, "service-password-1")
    control = (CONTROL_USER, "control-password-1")
    services = [
        broker_auth.ServiceIdentity(service[0], broker_auth.hash_password(service[1])),
        broker_auth.ServiceIdentity(
            control[0], broker_auth.hash_password(control[1]), kind="control"
        ),
    ]
    config.setdefault("port", free_port())
    config.setdefault("extra_lines", ("log_type subscribe",))
    broker_config = BrokerConfig(
        data_dir=directory / "mosquitto",
        allow_anonymous=False,
        password_file=files.password_file,
        dynsec_config_file=files.dynsec_file,
        **config,
    )
    source = IdentitySource()

    def make_sync(
        broker: MosquittoProcess, keeper: BrokerKeeper | None
    ) -> broker_auth.BrokerAuthSync:
        return broker_auth.BrokerAuthSync(
            files,
            services=services,
            version=source.get_version,
            identities=source.get_identities,
            control=DynsecControl(broker.host, broker.port, *control),
            reload=broker.reload,
            restart=None if keeper is None else keeper.restart,
            lock=None if keeper is None else keeper.lock,
            interval_s=0.05,
            after_removed=_purger(broker, service, control) if purge else None,
        )

    owner = None
    if keeper:
        owner = BrokerKeeper(
            broker_config,
            sync=lambda k: make_sync(k.process, k),
            prime=prime,
            policy=restart_policy or BrokerKeeper.POLICY,
        )
        broker, sync = owner.process, owner.sync
        assert sync is not None
    else:
        broker = MosquittoProcess(broker_config)
        sync = make_sync(broker, None)
    closed = ClosedBroker(broker, files, service, control, dict(vehicles or {}), source, sync)
    closed.keeper = owner
    source.set(closed.identities())
    if owner is not None:
        owner.start()
    else:
        sync.render()
        broker.start()
    return closed


VIN_A = "1HGCM82633A004352"
VIN_B = "1HGCM82633A004353"
VIN_C = "WVWZZZ1JZXW000001"
