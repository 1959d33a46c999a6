"""Signed remote commands (Ed25519): the pure signing functions, the unit's rule book, and
units over a real Mosquitto that hold the gateway's public key, fed forged, tampered,
replayed, expired and other vehicles' commands, and signed commands from the command
service."""

from __future__ import annotations

import dataclasses
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from device_sim.unit import UnitSettings, wall_clock_ms
from gateway.broker import MosquittoProcess
from gateway.cli import ensure_signing_key
from schemas.commands import (
    CommandMessage,
    CommandType,
    ResultReason,
    ResultStatus,
    decode_command,
    encode_command,
    unit_decision,
)
from schemas.signing import (
    DOMAIN_TAG,
    Ed25519PrivateKey,
    canonical_command_bytes,
    generate_keypair,
    load_private_key,
    load_public_key_pem,
    public_key_pem,
    save_private_key,
    sign_command,
    verify_command,
)
from tests.support.broker import ClosedBroker
from tests.support.commands_api import Api, get, wait_status
from tests.support.gateway_process import GatewayProcess
from tests.support.sim_commands import (
    OTHER_VIN,
    VIN,
    Gateway,
    Watcher,
    answered,
    parked,
    start_unit,
)
from tests.support.unit_harness import run
from tests.support.unit_harness import settings as unit_settings
from tests.support.unit_thread import VIN as UNITS_VIN
from tests.support.unit_thread import UnitThread, known_and_online, parked_ev
from tests.support.waiting import wait_until

C = CommandType
NOW = 1_764_230_400_000


def command(**overrides: Any) -> CommandMessage:
    values: dict[str, Any] = {
        "command_id": str(uuid.uuid4()),
        "vin": VIN,
        "type": C.CLIMATE_START,
        "params": {"target_temperature_c": 21.5},
        "issued_at": NOW,
        "expires_at": NOW + 60_000,
        "counter": NOW,
    }
    values.update(overrides)
    return CommandMessage(**values)


def signed(message: CommandMessage, key: Ed25519PrivateKey) -> CommandMessage:
    return dataclasses.replace(message, signature=sign_command(message, key))


# --- pure ---------------------------------------------------------------------------------------


def test_sign_verify_round_trip_and_wire_form() -> None:
    private_key, public_key = generate_keypair()
    message = signed(command(), private_key)
    assert message.signature is not None
    assert len(message.signature) == 86  # 64 bytes, unpadded base64url
    assert verify_command(message, message.signature, public_key)
    assert canonical_command_bytes(message).startswith(DOMAIN_TAG)
    # the canonical bytes do not depend on the signature, nor on the parameters' key order
    assert canonical_command_bytes(message) == canonical_command_bytes(
        dataclasses.replace(message, signature=None)
    )
    decoded = decode_command(encode_command(message))
    assert decoded == message
    assert isinstance(decoded, CommandMessage)
    assert verify_command(decoded, message.signature, public_key)


def test_unsigned_messages_encode_and_decode_as_before() -> None:
    plain = command(counter=None)
    wire = encode_command(plain)
    assert b"counter" not in wire
    assert b"signature" not in wire
    assert decode_command(wire) == plain


def test_counter_and_signature_are_strictly_typed() -> None:
    message = command()
    for bad in (b'"counter":"5"', b'"counter":-1', b'"counter":null', b'"signature":7'):
        wire = encode_command(message)[:-1] + b"," + bad + b"}"
        wire = wire.replace(f'"counter":{NOW},'.encode(), b"")
        assert not isinstance(decode_command(wire), CommandMessage), bad


@pytest.mark.parametrize(
    "change",
    [
        {"vin": OTHER_VIN},
        {"command_id": str(uuid.uuid4())},
        {"type": C.LOCK, "params": {}},
        {"params": {"target_temperature_c": 22.0}},
        {"issued_at": NOW + 1},
        {"expires_at": NOW + 60_001},
        {"counter": NOW + 1},
    ],
)
def test_any_field_change_breaks_the_signature(change: dict[str, Any]) -> None:
    private_key, public_key = generate_keypair()
    message = signed(command(), private_key)
    assert message.signature is not None
    changed = dataclasses.replace(message, **change)
    assert not verify_command(changed, message.signature, public_key)


def test_wrong_key_and_malformed_signatures_fail() -> None:
    private_key, _ = generate_keypair()
    _, other_public = generate_keypair()
    message = signed(command(), private_key)
    assert message.signature is not None
    assert not verify_command(message, message.signature, other_public)
    public_key = private_key.public_key()
    for bad in ("", "not base64!", message.signature[:-4], "A" * 86):
        assert not verify_command(message, bad, public_key)
    with pytest.raises(ValueError, match="counter"):
        sign_command(command(counter=None), private_key)


def test_pem_save_and_load_with_mode_0600(tmp_path: Path) -> None:
    private_key, public_key = generate_keypair()
    path = tmp_path / "key.pem"
    save_private_key(path, private_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        save_private_key(path, private_key)
    loaded = load_private_key(path)
    message = signed(command(), loaded)
    assert message.signature is not None
    again = load_public_key_pem(public_key_pem(public_key))
    assert verify_command(message, message.signature, again)
    assert public_key_pem(loaded) == public_key_pem(public_key)
    with pytest.raises(ValueError, match=r"."):
        load_public_key_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match=r"."):
        UnitSettings(gateway_public_key=b"not a key")

    created = tmp_path / "data" / "command-signing-key.pem"
    ensure_signing_key(created)
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    pub = load_public_key_pem((tmp_path / "data" / "command-signing-key.pem.pub").read_bytes())
    assert public_key_pem(load_private_key(created)) == public_key_pem(pub)
    ensure_signing_key(created)  # exists: kept as it is
    assert public_key_pem(load_private_key(created)) == public_key_pem(pub)


def test_unit_decision_rule_order() -> None:
    private_key, public_key = generate_keypair()
    forger, _ = generate_keypair()

    def reason(message: CommandMessage, *, now: int = NOW, last: int | None = None) -> Any:
        result = unit_decision(
            message, vin=VIN, now_ms=now, is_moving=True, public_key=public_key, last_counter=last
        )
        return None if result is None else result.reason

    good = signed(command(), private_key)
    assert reason(good) is None
    assert reason(good, last=NOW - 1) is None
    assert reason(good, last=NOW) is ResultReason.REPLAYED
    assert reason(command()) is ResultReason.BAD_SIGNATURE  # unsigned
    no_counter = dataclasses.replace(good, counter=None)
    assert reason(no_counter) is ResultReason.BAD_SIGNATURE
    # the signature is checked first: a forged command for another vehicle, expired and
    # replayed, is a bad signature
    forged = signed(command(vin=OTHER_VIN), forger)
    assert reason(forged, now=NOW + 120_000, last=NOW) is ResultReason.BAD_SIGNATURE
    # then wrong_vin, expired, replayed, the rest
    other = signed(command(vin=OTHER_VIN), private_key)
    assert reason(other, now=NOW + 120_000, last=NOW) is ResultReason.WRONG_VIN
    assert reason(good, now=NOW + 60_000, last=NOW) is ResultReason.EXPIRED
    unlock = signed(command(type=C.UNLOCK, params={}), private_key)
    assert reason(unlock, last=NOW) is ResultReason.REPLAYED
    assert reason(unlock) is ResultReason.VEHICLE_MOVING
    # without a key nothing about signatures or counters is checked (as before)
    result = unit_decision(
        command(counter=None), vin=VIN, now_ms=NOW, is_moving=False, last_counter=NOW
    )
    assert result is None


# --- units on a real broker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "closed",
    [False, True],
    ids=["anonymous broker", "closed broker, injected with the gateway's service account"],
)
def test_unit_with_the_public_key_rejects_forged_tampered_replayed_expired_and_stray(
    request: pytest.FixtureRequest, closed: bool
) -> None:
    """Someone who got into the broker, even with the gateway's own privileged account,
    still cannot make the car run a command: it checks the signature."""
    private_key, public_key = generate_keypair()
    forger, _ = generate_keypair()
    service: tuple[str, str] | None = None
    unit_login: dict[str, Any] = {}
    if closed:
        closed_broker: ClosedBroker = request.getfixturevalue("closed_broker")
        mosquitto = closed_broker.broker
        service = closed_broker.service
        unit_login = {"username": VIN, "password": closed_broker.add_vehicle(VIN)}
    else:
        mosquitto = request.getfixturevalue("mosquitto")

    async def scenario() -> None:
        async with Watcher(mosquitto, service) as watcher, Gateway(mosquitto, service) as gateway:
            settings = unit_settings(
                mosquitto, gateway_public_key=public_key_pem(public_key), **unit_login
            )
            running = await start_unit(parked(), settings)
            unit = running.unit

            def inject(message: CommandMessage) -> str:
                return gateway.send(
                    message.type,
                    dict(message.params),
                    vin=message.vin,
                    command_id=message.command_id,
                    issued_at=message.issued_at,
                    ttl_ms=message.expires_at - message.issued_at,
                    payload=encode_command(message),
                )

            def fresh(**overrides: Any) -> CommandMessage:
                now = wall_clock_ms()
                values: dict[str, Any] = {
                    "type": C.CHARGE_LIMIT,
                    "params": {"percent": 80},
                    "issued_at": now,
                    "expires_at": now + 30_000,
                    "counter": now,
                }
                values.update(overrides)
                return command(**values)

            async def outcome(message: CommandMessage) -> list[tuple[Any, Any]]:
                command_id = inject(message)
                await answered(watcher, command_id, count=1)
                return [(r.status, r.reason) for r in watcher.decoded(command_id)]

            good = signed(fresh(), private_key)
            good_id = inject(good)
            await answered(watcher, good_id, count=2)
            assert watcher.statuses(good_id) == [ResultStatus.ACCEPTED, ResultStatus.SUCCEEDED]
            rejected = ResultStatus.REJECTED
            base = good.counter
            assert base is not None

            forged = signed(fresh(counter=base + 10), forger)
            assert await outcome(forged) == [(rejected, ResultReason.BAD_SIGNATURE)]

            honest = signed(fresh(counter=base + 20), private_key)
            tampered = dataclasses.replace(honest, params={"percent": 50})
            assert await outcome(tampered) == [(rejected, ResultReason.BAD_SIGNATURE)]

            # a new command id, properly signed, but the counter already taken
            replay = signed(fresh(counter=base), private_key)
            assert await outcome(replay) == [(rejected, ResultReason.REPLAYED)]

            past = wall_clock_ms() - 120_000
            expired = signed(
                fresh(issued_at=past, expires_at=past + 60_000, counter=base + 30),
                private_key,
            )
            assert await outcome(expired) == [(rejected, ResultReason.EXPIRED)]

            stray = signed(fresh(vin=OTHER_VIN, counter=base + 40), private_key)
            assert await outcome(stray) == [(rejected, ResultReason.WRONG_VIN)]

            # the rejected ones spent no counter: the next honest command still runs
            later = signed(fresh(counter=base + 1), private_key)
            later_id = inject(later)
            await answered(watcher, later_id, count=2)
            assert watcher.statuses(later_id) == [ResultStatus.ACCEPTED, ResultStatus.SUCCEEDED]

            stats = unit.stats()
            assert (stats.commands_accepted, stats.commands_rejected) == (2, 5)
            await running.finish()

    run(scenario())


# --- through the gateway's command service -----------------------------------------------------


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    path = tmp_path / "command-signing-key.pem"
    ensure_signing_key(path)
    return path


@pytest.fixture
def signed_api(
    start_gateway: Any, mosquitto: MosquittoProcess, tmp_path: Path, signing_key: Path
) -> Iterator[TestClient]:
    gateway: GatewayProcess = start_gateway()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with Api(gateway.db_path, mosquitto, url, signing_key_path=signing_key) as client:
        yield client


def test_service_signs_commands_that_a_verifying_unit_runs(
    signed_api: TestClient, mosquitto: MosquittoProcess, signing_key: Path
) -> None:
    pem = (signing_key.parent / (signing_key.name + ".pub")).read_bytes()
    unit = UnitThread(mosquitto, parked_ev(), gateway_public_key=pem).start()
    known_and_online(signed_api)
    try:
        ids = []
        for body in (
            {"type": "climate_start", "params": {"target_temperature_c": 21}},
            {"type": "lock"},
            {"type": "unlock"},
        ):
            created = signed_api.post(f"/v1/vehicles/{UNITS_VIN}/commands", json=body)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        for command_id in ids:
            done = wait_status(signed_api, command_id, "succeeded")
            assert [t["status"] for t in done["transitions"]] == [
                "queued",
                "sent",
                "accepted",
                "succeeded",
            ]
        wait_until(lambda: unit.stats().commands_succeeded == 3, what="three commands run")
        assert unit.stats().commands_rejected == 0
        assert get(signed_api, ids[0])["status"] == "succeeded"
    finally:
        unit.stop()
