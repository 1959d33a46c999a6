"""Provisioning a vehicle: its registry entry and its broker identity, in one place.

Used by ``POST /v1/vehicles`` and ``telematics vehicle add``. The vehicle's MQTT user name
is its VIN; its password is random, returned once and stored only as a Mosquitto password
hash (:mod:`gateway.broker.auth`), from which the broker-side sync renders the broker's
password file and ACL. A vehicle provisioned for client certificates only gets no password
(its certificate's common name is its VIN; ``telematics pki client VIN`` issues it).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.broker.auth import generate_password, hash_password
from gateway.errors import GatewayError
from gateway.statedb.accounts import (
    AccountRepository,
    VehicleAlreadyProvisioned,
    VehicleRecord,
    VehicleRevoked,
)

__all__ = ["Provisioned", "provision_or_rotate", "provision_vehicle", "rotate_vehicle_password"]


@dataclass(frozen=True, slots=True)
class Provisioned:
    vehicle: VehicleRecord
    #: the MQTT password, shown once; None for certificate-only vehicles
    mqtt_password: str | None

    def __repr__(self) -> str:  # never print the password by accident
        return f"Provisioned({self.vehicle.vin}, account {self.vehicle.account_id})"


def provision_vehicle(
    accounts: AccountRepository,
    *,
    vin: str,
    account_id: int,
    label: str | None,
    provisioned_by: int | None,
    now: int,
    password: bool = True,
    by_operator: bool = True,
) -> Provisioned:
    """Register ``vin`` in ``account_id`` with fresh broker credentials.

    Raises ``VehicleAlreadyProvisioned`` for an active vehicle (a revoked one is
    re-provisioned with new credentials), ``LifecycleRefused`` for a decommissioned VIN
    and, unless ``by_operator``, for one the maker registered (it needs its pairing code).
    """
    secret = generate_password() if password else None
    record = accounts.provision_vehicle(
        vin=vin,
        account_id=account_id,
        label=label,
        mqtt_password_hash=None if secret is None else hash_password(secret),
        provisioned_by=provisioned_by,
        now=now,
        by_operator=by_operator,
    )
    return Provisioned(record, secret)


def rotate_vehicle_password(accounts: AccountRepository, vin: str) -> Provisioned | None:
    """New MQTT password for an active vehicle (the old one stops working at the broker's
    next reload); None if there is no such active vehicle."""
    secret = generate_password()
    try:
        record = accounts.set_mqtt_password(vin, hash_password(secret))
    except VehicleRevoked:
        return None
    return None if record is None else Provisioned(record, secret)


def provision_or_rotate(
    accounts: AccountRepository,
    *,
    vin: str,
    account_id: int,
    label: str | None,
    provisioned_by: int | None,
    now: int,
    password: bool = True,
) -> Provisioned:
    """:func:`provision_vehicle`, or for a vehicle already provisioned a new password
    (it stays in its account): for tools that hand credentials to units and must be able
    to hand them out again."""
    try:
        return provision_vehicle(
            accounts,
            vin=vin,
            account_id=account_id,
            label=label,
            provisioned_by=provisioned_by,
            now=now,
            password=password,
        )
    except VehicleAlreadyProvisioned:
        rotated = rotate_vehicle_password(accounts, vin)
        if rotated is None:  # revoked in between
            raise GatewayError(f"{vin} could not be given new credentials") from None
        return rotated
