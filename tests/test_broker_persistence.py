"""Subscriptions written into Mosquitto's persistence file (gateway.broker.persistence,
decision 0031), checked against the real broker: Mosquitto 2.0.11 restores a shared
subscription from the file before it opens its listener, does not save it again, and
refuses to start on a duplicate one, which is why a second write adds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.broker.persistence import (
    MAGIC,
    UnknownPersistenceFormat,
    saved_sessions,
    saved_subscriptions,
    write_subscriptions,
)
from tests.support.mqtt_raw import Mqtt5Client

SHARE = "$share/telematics-gateway/v1/vehicles/+/telemetry"
SESSIONS = {"gw-1": [SHARE]}
TOPIC = "v1/vehicles/1HGCM82633A004352/telemetry"


def _broker(tmp_path: Path) -> MosquittoProcess:
    return MosquittoProcess(BrokerConfig(port=free_port(), data_dir=tmp_path / "broker"))


def _publish(broker: MosquittoProcess, payload: bytes) -> int:
    unit, code = Mqtt5Client.connect(broker.host, broker.port, "unit-1")
    assert code == 0
    try:
        return unit.publish(TOPIC, payload)
    finally:
        unit.disconnect()


def _gateway_receives(broker: MosquittoProcess) -> tuple[str, bytes] | None:
    gateway, code = Mqtt5Client.connect(
        broker.host, broker.port, "gw-1", clean_start=False, session_expiry=3600
    )
    assert code == 0
    try:
        return gateway.receive()
    finally:
        gateway.disconnect()


def test_a_written_shared_subscription_is_there_when_the_first_unit_publishes(
    tmp_path: Path,
) -> None:
    broker = _broker(tmp_path)
    path = broker.config.persistence_path
    path.parent.mkdir(parents=True)
    assert write_subscriptions(path, SESSIONS) == 1  # no file yet: one with only this
    assert saved_sessions(path) == {"gw-1"}  # and a session that outlives a connection
    with broker:
        # the first packet after the start: 0x00, a subscriber took it (0x10: nobody did)
        assert _publish(broker, b"before the gateway") == 0
        assert _gateway_receives(broker) == (TOPIC, b"before the gateway")


def test_the_broker_does_not_save_it_and_a_second_write_adds_nothing(tmp_path: Path) -> None:
    broker = _broker(tmp_path)
    path = broker.config.persistence_path
    with broker:  # a file the broker wrote itself, with the gateway's session in it
        gateway, code = Mqtt5Client.connect(
            broker.host, broker.port, "gw-1", clean_start=False, session_expiry=3600
        )
        assert code == 0
        assert gateway.subscribe(SHARE) == 1
        gateway.disconnect()
    # Mosquitto 2.0.11 saved the session but not its shared subscription
    assert ("gw-1", SHARE) not in saved_subscriptions(path)
    assert write_subscriptions(path, SESSIONS) == 1
    size = path.stat().st_size
    # a start that did not get as far as saving (a crash) leaves ours in the file: a
    # duplicate would keep the broker from starting at all
    assert write_subscriptions(path, SESSIONS) == 0
    assert path.stat().st_size == size
    assert saved_subscriptions(path) >= {("gw-1", SHARE)}
    with broker:
        assert _publish(broker, b"after the restart") == 0
        assert _gateway_receives(broker) == (TOPIC, b"after the restart")


def test_a_partial_chunk_of_an_interrupted_write_is_cut_off(tmp_path: Path) -> None:
    broker = _broker(tmp_path)
    path = broker.config.persistence_path
    path.parent.mkdir(parents=True)
    write_subscriptions(path, {"gw-2": ["$share/g/a/#"]})
    whole = path.read_bytes()
    path.write_bytes(whole + b"\x00\x00\x00\x05\x00\x00\x00\x40partial")
    assert write_subscriptions(path, SESSIONS) == 1
    assert path.read_bytes().startswith(whole)
    assert saved_subscriptions(path) == {("gw-2", "$share/g/a/#"), ("gw-1", SHARE)}
    with broker:  # and the broker reads the result
        assert _publish(broker, b"x") == 0


@pytest.mark.parametrize(
    "content",
    [b"not a mosquitto file at all", MAGIC + b"\x00\x00\x00\x00\x00\x00\x00\x07"],
    ids=["other file", "other version"],
)
def test_a_file_in_another_format_is_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mosquitto.db"
    path.write_bytes(content)
    with pytest.raises(UnknownPersistenceFormat):
        write_subscriptions(path, SESSIONS)
    assert path.read_bytes() == content
