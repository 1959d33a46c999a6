"""The private Mosquitto broker (gateway.broker) against the real ``mosquitto`` binary.

Nothing here sleeps to wait: start-up is awaited by ``MosquittoProcess.start`` (an MQTT
handshake with a deadline), and the clients' own ``-W`` timeouts bound every receive.
The only test double is an emptied PATH for the "not installed" case, since the real
binary cannot be uninstalled for one test.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

import gateway.broker.mosquitto as broker_module
from gateway.broker import (
    BrokerConfig,
    BrokerError,
    BrokerStartError,
    MosquittoNotFoundError,
    MosquittoProcess,
    find_mosquitto,
    parse_mqtt_url,
    probe_mqtt,
    render_config,
)
from gateway.errors import GatewayError
from tests.support.mqtt_raw import Mqtt5Client

CLIENT_TIMEOUT = 15  # seconds; a safety net far above the clients' own -W limits


def _client(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found; install it with: sudo apt-get install -y mosquitto-clients")
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False)


def _address(broker: MosquittoProcess) -> list[str]:
    return ["-h", broker.host, "-p", str(broker.port)]


def _publish_retained(broker: MosquittoProcess, topic: str, payload: str) -> None:
    result = _run(
        [_client("mosquitto_pub"), *_address(broker), "-t", topic, "-m", payload, "-r", "-q", "1"]
    )
    assert result.returncode == 0, result.stderr


def _receive_one(
    broker: MosquittoProcess, topic: str, wait_s: int
) -> subprocess.CompletedProcess[str]:
    """Subscribe, take at most one message, give up after ``wait_s`` (exit status 27)."""
    return _run(
        [_client("mosquitto_sub"), *_address(broker), "-t", topic, "-C", "1", "-W", str(wait_s)]
    )


def _directives(config_text: str) -> list[str]:
    return [ln for ln in config_text.splitlines() if ln.strip() and not ln.startswith("#")]


# --- start-up ---------------------------------------------------------------------------------


def test_started_broker_answers_mqtt_connect(mosquitto: MosquittoProcess) -> None:
    assert mosquitto.is_running()
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert parse_mqtt_url(mosquitto.url) == (mosquitto.host, mosquitto.port)
    assert probe_mqtt(mosquitto.host, mosquitto.port) == 0  # CONNACK: connection accepted


def test_generated_config_is_accepted_and_contains_the_limits(mosquitto: MosquittoProcess) -> None:
    # The fixture's start() succeeded, so the real mosquitto accepted this exact file.
    text = mosquitto.config_path.read_text()
    directives = _directives(text)
    port, data_dir = mosquitto.port, mosquitto.config.data_dir
    # message_size_limit would answer an oversized QoS 1 message with a PUBACK reason MQTT 5
    # forbids (paho-mqtt then resends forever): max_packet_size instead, announced in CONNACK
    assert not any(d.startswith("message_size_limit") for d in directives)
    for expected in [
        "per_listener_settings false",
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {data_dir}/",
        "persistence_file mosquitto.db",
        "max_inflight_messages 20000",
        "max_inflight_bytes 33554432",
        "max_queued_messages 1000000",
        "max_queued_bytes 268435456",
        "queue_qos0_messages false",
        "max_packet_size 1048576",
        "persistent_client_expiration 168h",
        f"log_dest file {mosquitto.log_path}",
        "log_type information",
        "set_tcp_nodelay true",
    ]:
        assert expected in directives
    # Every directive explains itself: the line above it is a comment.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line in directives and not line.startswith("log_type"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"
    log = mosquitto.log_path.read_text()
    assert f"Config loaded from {mosquitto.config_path}" in log
    assert "Error" not in log


def test_render_config_reflects_custom_settings(tmp_path: Path) -> None:
    cfg = BrokerConfig(
        port=18999,
        data_dir=tmp_path,
        max_inflight_messages=7,
        max_queued_messages=9,
        max_queued_bytes=0,
        persistence=False,
        allow_anonymous=False,
        extra_lines=("sys_interval 5",),
    )
    directives = _directives(render_config(cfg))
    assert "max_inflight_messages 7" in directives
    assert "max_queued_messages 9" in directives
    assert "max_queued_bytes 0" in directives
    assert "allow_anonymous false" in directives
    assert "persistence false" in directives
    assert not any(d.startswith("persistence_location") for d in directives)
    assert directives[-1] == "sys_interval 5"


def test_broker_config_rejects_values_that_would_corrupt_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line break"):
        BrokerConfig(port=18999, data_dir=tmp_path, extra_lines=("a 1\nlistener 1883",))
    with pytest.raises(ValueError, match="free_port"):
        BrokerConfig(port=0, data_dir=tmp_path)


# --- persistence and lifecycle ----------------------------------------------------------------


def test_retained_message_survives_restart(mosquitto: MosquittoProcess) -> None:
    topic = "test/broker/retained"
    _publish_retained(mosquitto, topic, "survives-restart")
    old_pid = mosquitto.pid

    mosquitto.restart()

    assert mosquitto.pid != old_pid
    assert mosquitto.config.persistence_path.is_file()
    received = _receive_one(mosquitto, topic, wait_s=5)
    assert received.returncode == 0, received.stderr
    assert received.stdout.strip() == "survives-restart"


def test_without_persistence_a_restart_forgets_retained_messages(
    tmp_path: Path, free_tcp_port: int
) -> None:
    # The control for the test above: proves the restart really loses in-memory state.
    cfg = BrokerConfig(port=free_tcp_port, data_dir=tmp_path, persistence=False)
    with MosquittoProcess(cfg) as broker:
        _publish_retained(broker, "test/broker/volatile", "gone")
        broker.restart()
        received = _receive_one(broker, "test/broker/volatile", wait_s=1)
    assert received.returncode != 0  # timed out: nothing retained
    assert received.stdout == ""


def test_kill_is_a_crash_and_the_broker_starts_again(mosquitto: MosquittoProcess) -> None:
    mosquitto.kill()
    assert not mosquitto.is_running()
    assert mosquitto.returncode == -signal.SIGKILL
    mosquitto.start()  # same port, same data directory
    assert probe_mqtt(mosquitto.host, mosquitto.port) == 0
    assert mosquitto.stop() == 0  # SIGTERM: a clean exit
    assert mosquitto.stop() == 0  # idempotent


# --- failures say how to fix them -------------------------------------------------------------


def test_missing_binary_raises_not_found_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, free_tcp_port: int
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(broker_module, "SEARCH_DIRS", (tmp_path / "empty-sbin",))

    with pytest.raises(MosquittoNotFoundError) as excinfo:
        find_mosquitto()
    message = str(excinfo.value)
    assert "sudo apt-get install -y mosquitto mosquitto-clients" in message
    assert "--mqtt-url mqtt://host:port" in message
    assert isinstance(excinfo.value, BrokerError)
    assert isinstance(excinfo.value, GatewayError)

    broker = MosquittoProcess(BrokerConfig(port=free_tcp_port, data_dir=tmp_path / "b"))
    with pytest.raises(MosquittoNotFoundError):
        broker.start()
    assert not broker.is_running()


def test_refused_config_raises_start_error_with_the_brokers_complaint(
    tmp_path: Path, free_tcp_port: int
) -> None:
    cfg = BrokerConfig(port=free_tcp_port, data_dir=tmp_path, extra_lines=("no_such_option 1",))
    broker = MosquittoProcess(cfg)
    with pytest.raises(BrokerStartError, match='Unknown configuration variable "no_such_option"'):
        broker.start()
    assert not broker.is_running()


def test_port_in_use_raises_start_error(tmp_path: Path, free_tcp_port: int) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_tcp_port))
        squatter.listen()
        broker = MosquittoProcess(BrokerConfig(port=free_tcp_port, data_dir=tmp_path))
        with pytest.raises(BrokerStartError, match="already in use"):
            broker.start()
    assert not broker.is_running()


def test_probe_fails_on_a_port_that_does_not_speak_mqtt(free_tcp_port: int) -> None:
    with socket.socket() as silent:  # accepts TCP (via the backlog) but never answers
        silent.bind(("127.0.0.1", free_tcp_port))
        silent.listen()
        with pytest.raises(TimeoutError):
            probe_mqtt("127.0.0.1", free_tcp_port, timeout=0.2)


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884)),
        ("mqtt://broker.example", ("broker.example", 1883)),
        ("MQTT://localhost:1883/", ("localhost", 1883)),
        ("mqtt://[::1]:1885", ("::1", 1885)),
    ],
)
def test_parse_mqtt_url_accepts(url: str, expected: tuple[str, int]) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "tcp://127.0.0.1:1883",
        "mqtts://127.0.0.1:8883",
        "127.0.0.1:1883",
        "mqtt://:1883",
        "mqtt://host:99999",
        "mqtt://host:0",
        "mqtt://host:abc",
        "mqtt://user:secret@host:1883",
        "mqtt://host:1883/topic",
        "",
    ],
)
def test_parse_mqtt_url_rejects_with_the_expected_form(url: str) -> None:
    with pytest.raises(ValueError, match="expected mqtt://host:port"):
        parse_mqtt_url(url)


# --- packet size (decision 0008) --------------------------------------------------------------


def test_the_broker_announces_its_packet_limit_and_never_answers_with_an_illegal_puback(
    mosquitto: MosquittoProcess,
) -> None:
    """An MQTT 5 client learns the limit from the CONNACK (Maximum Packet Size) and can
    refuse an oversized message itself. One that sends it anyway is disconnected with
    reason 0x95 (packet too large), a code DISCONNECT may carry; the old
    ``message_size_limit`` answered with a PUBACK 0x95, which PUBACK may not carry, and
    paho-mqtt then resent the message forever (issue 11). A message well over the
    gateway's 256 KiB still passes, so the gateway can quarantine it where operators look."""
    client, code = Mqtt5Client.connect(mosquitto.host, mosquitto.port, "big-sender")
    try:
        assert code == 0
        _oversized_packets(client)
    finally:
        client.close()


def _oversized_packets(client: Mqtt5Client) -> None:
    assert client.connack_properties[0x27] == broker_module.MAX_PACKET_SIZE == 1_048_576
    assert client.publish("v1/vehicles/WVWZZZ1JZXW000001/telemetry", b"x" * 600_000) == 0x10
    # Announce a packet over the limit and send only its start: the broker judges the
    # fixed header's length, so its DISCONNECT arrives before the client could have sent
    # the rest (sending all 1.1 MB races the broker closing the socket, and a reset can
    # discard the DISCONNECT before it is read)
    topic = b"v1/vehicles/WVWZZZ1JZXW000001/telemetry"
    variable = len(topic).to_bytes(2, "big") + topic + b"\x00\x01" + b"\x00"
    length = len(variable) + 1_100_000
    header = bytearray([0x32])
    while True:
        byte, length = length % 128, length // 128
        header.append(byte | (0x80 if length else 0))
        if not length:
            break
    client.sock.sendall(bytes(header) + variable + b"x" * 1000)
    with pytest.raises(ConnectionError):  # no PUBACK, the connection ends
        client._wait_for(0x40, 1)
    assert client.disconnect_reason == 0x95
