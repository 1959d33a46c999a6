"""Vehicle identities on the broker (gateway.broker.auth) against the real ``mosquitto``.

Every broker test starts its own Mosquitto on a free port with ``allow_anonymous false``, a
password file and an ACL rendered by the code under test; nothing about the broker is
mocked. The clients are :class:`Mqtt5Client`, a few dozen lines of raw MQTT 5 over a socket,
because these tests need what a full client library hides: the exact CONNACK, SUBACK and
PUBACK reason codes, and whether the broker closed the connection.

Waiting never uses fixed sleeps: "nothing was delivered" is proven by ordering instead. The
broker handles one connection's packets in order and delivers to a subscriber in order, so
when a publisher sends a denied message and then an allowed one, a subscriber that receives
the allowed one has already been sent everything it would ever get of the first.

What Mosquitto 2.0.11 does, as these tests pin down (see gateway/broker/auth.py):

* wrong, unknown or missing credentials: CONNACK 0x87 (not authorized);
* publish outside the ACL: PUBACK 0x87, message dropped;
* subscribe outside the ACL: SUBACK grants it, but nothing is ever delivered;
* reload (SIGHUP) keeps connected clients; a password client whose line was removed is
  disconnected during the reload.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import logging
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.broker import (
    BrokerConfig,
    BrokerError,
    MosquittoProcess,
    TlsListener,
    free_port,
    render_config,
)
from gateway.broker import auth as auth_module
from gateway.broker.auth import (
    BrokerAuthFiles,
    BrokerAuthSync,
    ServiceIdentity,
    VehicleIdentity,
    generate_password,
    hash_password,
    render_acl,
    render_password_file,
    verify_password,
)
from schemas.commands import command_result_topic, command_topic
from schemas.feedback import feedback_topic
from schemas.topics import Channel, topic_for
from schemas.vin import VIN_PATTERN
from tests.conftest import wait_until

TIMEOUT = 5.0  # seconds; a safety net, far above what any step here takes

VIN_A = "1HGCM82633A004352"
VIN_B = "1HGCM82633A004353"
VIN_C = "WVWZZZ1JZXW000001"
SERVICE = "telematics-gateway"
SHARE_FILTER = "$share/telematics-gateway/v1/vehicles/+/telemetry"

NOT_AUTHORIZED = 0x87
_HASH_RE = re.compile(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


# --- a raw MQTT 5 client ----------------------------------------------------------------------


class Mqtt5Client:
    """A minimal synchronous MQTT 5 client over a raw (optionally TLS) socket.

    Raw packets rather than gmqtt because these tests need what a full client hides or
    retries: the exact CONNACK, SUBACK and PUBACK reason codes, and whether the broker
    closed the connection. Every wait has a deadline; nothing sleeps a fixed time.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self._next_id = 1
        self.messages: collections.deque[tuple[str, bytes]] = collections.deque()
        self.disconnect_reason: int | None = None
        self.closed = False

    # -- connect

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = TIMEOUT,
    ) -> tuple[Mqtt5Client, int]:
        """Connect and return (client, CONNACK reason code); 0 is success.

        Raises ``OSError`` (``ssl.SSLError``, ``ConnectionError``) when the connection fails
        or is closed before a CONNACK.
        """
        raw = socket.create_connection((host, port), timeout=timeout)
        sock: socket.socket = raw
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(raw, server_hostname=server_hostname or host)
            except BaseException:
                raw.close()
                raise
        client = cls(sock)
        try:
            client._send_connect(client_id, username, password)
            ptype, body = client._read_packet(time.monotonic() + timeout)
            if ptype != 0x20:
                raise ConnectionError(f"expected CONNACK, got packet type {ptype:#x}")
        except BaseException:
            client.close()
            raise
        return client, body[1]

    def _send_connect(self, client_id: str, username: str | None, password: str | None) -> None:
        flags = 0x02  # clean start
        payload = _string(client_id)
        if username is not None:
            flags |= 0x80
            payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
        variable = _string("MQTT") + bytes([5, flags]) + (30).to_bytes(2, "big") + b"\x00"
        self._send(0x10, variable + payload)

    # -- operations

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1, wait for the PUBACK and return its reason code (< 0x80: ok)."""
        pid = self._packet_id()
        self._send(0x32, _string(topic) + pid.to_bytes(2, "big") + b"\x00" + payload)
        body = self._wait_for(0x40, pid)
        return body[2] if len(body) > 2 else 0

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> int:
        """Subscribe and return the SUBACK reason code (0-2: granted QoS)."""
        pid = self._packet_id()
        self._send(0x82, pid.to_bytes(2, "big") + b"\x00" + _string(topic_filter) + bytes([qos]))
        body = self._wait_for(0x90, pid)
        props_len, n = _read_varint(body, 2)
        return body[2 + n + props_len]

    def receive(self, timeout: float = TIMEOUT) -> tuple[str, bytes] | None:
        """The next delivered message, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.messages:
            if self.closed or not self._pump(deadline):
                return None
        return self.messages.popleft()

    def wait_closed(self, timeout: float = TIMEOUT) -> bool:
        """Wait until the broker closes the connection; False if still open at ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            if not self._pump(deadline):
                return False
        return True

    def disconnect(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                self._send(0xE0, b"\x00")
        self.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    # -- plumbing

    def _packet_id(self) -> int:
        pid = self._next_id
        self._next_id = pid % 65535 + 1
        return pid

    def _send(self, first_byte: int, body: bytes) -> None:
        self.sock.sendall(bytes([first_byte]) + _varint(len(body)) + body)

    def _wait_for(self, ptype: int, pid: int | None, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            got, body = self._read_packet(deadline)
            if got == ptype and (pid is None or int.from_bytes(body[:2], "big") == pid):
                return body
            self._handle(got, body)

    def _pump(self, deadline: float) -> bool:
        """Handle one incoming packet; False if none came before ``deadline``."""
        try:
            got, body = self._read_packet(deadline)
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            self.closed = True
            return True
        self._handle(got, body)
        return True

    def _handle(self, ptype: int, body: bytes) -> None:
        if ptype & 0xF0 == 0x30:
            qos = (ptype >> 1) & 0x03
            tlen = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + tlen].decode()
            i = 2 + tlen
            if qos:
                pid = body[i : i + 2]
                i += 2
                self._send(0x40, pid)
            props_len, n = _read_varint(body, i)
            self.messages.append((topic, body[i + n + props_len :]))
        elif ptype == 0xE0:
            self.disconnect_reason = body[0] if body else 0
            self.close()

    def _read_packet(self, deadline: float) -> tuple[int, bytes]:
        while True:
            packet = _split_packet(self._buf)
            if packet is not None:
                ptype, body, used = packet
                self._buf = self._buf[used:]
                return ptype, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no packet from the broker in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)  # TimeoutError when nothing comes in time
            if not chunk:
                self.closed = True
                raise ConnectionError("the broker closed the connection")
            self._buf += chunk


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift, n = 0, 0, 0
    while True:
        byte = data[i + n]
        value |= (byte & 0x7F) << shift
        n += 1
        if not byte & 0x80:
            return value, n
        shift += 7


def _split_packet(buf: bytes) -> tuple[int, bytes, int] | None:
    if len(buf) < 2:
        return None
    length, shift, i = 0, 0, 1
    while True:
        if i >= len(buf):
            return None
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
    if len(buf) < i + length:
        return None
    return buf[0], buf[i : i + length], i + length


# --- fixtures ---------------------------------------------------------------------------------


@dataclass
class Fleet:
    """A running broker with two provisioned vehicles and one service account."""

    broker: MosquittoProcess
    files: BrokerAuthFiles
    passwords: dict[str, str]
    vehicles: list[VehicleIdentity]
    services: list[ServiceIdentity]
    clients: list[Mqtt5Client]

    def connect(self, username: str | None, client_id: str | None = None) -> Mqtt5Client:
        """Connect with ``username``'s password; fail the test unless it is accepted."""
        client, code = self.try_connect(username, client_id)
        assert code == 0, f"{username} was refused with {code:#x}"
        return client

    def try_connect(
        self, username: str | None, client_id: str | None = None, password: str | None = None
    ) -> tuple[Mqtt5Client, int]:
        if password is None and username is not None:
            password = self.passwords.get(username, "no-such-password")
        client, code = Mqtt5Client.connect(
            self.broker.host,
            self.broker.port,
            client_id or username or "anonymous",
            username=username,
            password=password,
        )
        self.clients.append(client)
        return client, code

    def provision(self, vin: str) -> None:
        self.passwords[vin] = generate_password()
        self.vehicles.append(VehicleIdentity(vin, hash_password(self.passwords[vin])))
        assert self.files.write(self.vehicles, self.services)

    def remove(self, vin: str) -> None:
        self.vehicles = [v for v in self.vehicles if v.vin != vin]
        assert self.files.write(self.vehicles, self.services)

    def service_subscriber(self, topic_filter: str = "v1/#", name: str = "svc-sub") -> Mqtt5Client:
        client = self.connect(SERVICE, name)
        assert client.subscribe(topic_filter) < 0x80
        return client


def _auth_broker_config(tmp_path: Path, files: BrokerAuthFiles, **kwargs: object) -> BrokerConfig:
    return BrokerConfig(
        port=free_port(),
        data_dir=tmp_path / "mosquitto",
        persistence=False,
        allow_anonymous=False,
        password_file=files.password_file,
        acl_file=files.acl_file,
        extra_lines=("log_type subscribe",),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    files = BrokerAuthFiles(tmp_path / "auth")
    passwords = {name: generate_password() for name in (VIN_A, VIN_B, SERVICE)}
    vehicles = [VehicleIdentity(v, hash_password(passwords[v])) for v in (VIN_A, VIN_B)]
    services = [ServiceIdentity(SERVICE, hash_password(passwords[SERVICE]))]
    files.write(vehicles, services)
    broker = MosquittoProcess(_auth_broker_config(tmp_path, files))
    broker.start()
    fleet = Fleet(broker, files, passwords, vehicles, services, [])
    try:
        yield fleet
    finally:
        for client in fleet.clients:
            client.close()
        broker.stop()


def _delivered_in_order(subscriber: Mqtt5Client, expected: list[tuple[str, bytes]]) -> None:
    """The subscriber receives exactly ``expected``, in order, and nothing in between."""
    got = [subscriber.receive() for _ in expected]
    assert got == expected


# --- password hashes --------------------------------------------------------------------------


def test_hash_password_uses_mosquittos_pbkdf2_format() -> None:
    hashed = hash_password("s3cret")
    match = _HASH_RE.fullmatch(hashed)
    assert match is not None, hashed
    iterations, salt, digest = int(match[1]), base64.b64decode(match[2]), base64.b64decode(match[3])
    assert iterations == 101
    assert len(salt) == 12  # Mosquitto drops entries with any other salt length
    assert digest == hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101)
    assert hash_password("s3cret") != hashed  # a new salt every time
    assert hash_password("s3cret", salt=salt) == hashed
    assert hash_password("s3cret", salt=salt, iterations=1000).startswith("$7$1000$")


def test_hash_password_is_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    # part of the mosquitto package scripts/setup.sh installs: missing is a setup failure
    assert tool is not None, "mosquitto_passwd is not installed (package mosquitto)"
    path = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(path), VIN_A, "pässword"], check=True, timeout=10)
    username, reference = path.read_text().strip().split(":", 1)
    assert username == VIN_A
    match = _HASH_RE.fullmatch(reference)
    assert match is not None, reference
    salt = base64.b64decode(match[2])
    assert hash_password("pässword", salt=salt, iterations=int(match[1])) == reference
    assert verify_password("pässword", reference)
    assert not verify_password("password", reference)


def test_verify_password() -> None:
    hashed = hash_password("correct horse")
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horsE", hashed)
    assert not verify_password("", hashed)
    for malformed in ("", "plain", "$7$101$AAAA$BBBB", "$7$0$" + hashed[7:], hashed + "\n"):
        assert not verify_password("correct horse", malformed)
    # the older $6$ (one SHA-512 round) that Mosquitto 2.0 still reads
    salt = bytes(range(12))
    legacy_digest = hashlib.sha512(b"old" + salt).digest()
    legacy = f"$6${base64.b64encode(salt).decode()}${base64.b64encode(legacy_digest).decode()}"
    assert verify_password("old", legacy)
    assert not verify_password("new", legacy)


@pytest.mark.parametrize(
    ("password", "kwargs", "message"),
    [
        ("", {}, "empty"),
        ("a\x00b", {}, "NUL"),
        ("pw", {"salt": b"short"}, "12 bytes"),
        ("pw", {"iterations": 0}, "iterations"),
    ],
)
def test_hash_password_rejects(password: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hash_password(password, **kwargs)  # type: ignore[arg-type]


def test_generate_password_is_long_random_and_url_safe() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    for pw in passwords:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", pw)
        assert len(pw) * 6 >= 128  # bits of entropy: 6 per URL-safe base64 character


# --- identities and rendering -----------------------------------------------------------------


def test_vin_alphabet_is_the_device_contracts() -> None:
    assert f"^{auth_module._VIN_RE.pattern}$" == VIN_PATTERN


def test_vehicle_topics_are_the_device_contracts() -> None:
    write, read = auth_module.vehicle_topics(VIN_A)
    assert set(write) == {
        topic_for(VIN_A, Channel.TELEMETRY),
        topic_for(VIN_A, Channel.EVENTS),
        topic_for(VIN_A, Channel.STATUS),
        command_result_topic(VIN_A),
    }
    assert read == (command_topic(VIN_A), feedback_topic(VIN_A))


@pytest.mark.parametrize(
    "vin",
    [
        "1HGCM82633A00435",  # 16 characters
        "1hgcm82633a004352",  # lower case
        "1HGCM82633A00435I",  # I is not in the VIN alphabet
        "1HGCM82633A00435\n",
        f"{VIN_A}\ntopic readwrite #",
        "",
    ],
)
def test_vehicle_identity_rejects_invalid_vins(vin: str) -> None:
    with pytest.raises(ValueError, match="invalid VIN"):
        VehicleIdentity(vin, None)


@pytest.mark.parametrize(
    "name",
    ["", "with space", "a:b", "gw\ntopic readwrite #", "#comment", "x" * 65, "caf\u00e9"],
)
def test_service_identity_rejects_names_that_could_inject(name: str) -> None:
    with pytest.raises(ValueError, match="invalid service account name"):
        ServiceIdentity(name, hash_password("pw"))


@pytest.mark.parametrize(
    "bad_hash",
    [
        "plain-text",
        "$7$101$AAAA$BBBB",  # decodes, but wrong salt and hash lengths
        hash_password("pw") + "\nintruder:$7$101$x$y",
        hash_password("pw") + ":extra",
    ],
)
def test_identities_reject_malformed_hashes(bad_hash: str) -> None:
    with pytest.raises(ValueError, match="hash"):
        VehicleIdentity(VIN_A, bad_hash)
    with pytest.raises(ValueError, match="hash"):
        ServiceIdentity(SERVICE, bad_hash)


def test_render_password_file_lists_password_identities_sorted() -> None:
    h = {n: hash_password(n) for n in ("a", "b", "s")}
    text = render_password_file(
        [
            VehicleIdentity(VIN_B, h["b"]),
            VehicleIdentity(VIN_C, None),
            VehicleIdentity(VIN_A, h["a"]),
        ],
        [ServiceIdentity("svc", h["s"])],
    )
    entries = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert entries == [f"svc:{h['s']}", f"{VIN_A}:{h['a']}", f"{VIN_B}:{h['b']}"]
    # the certificate-only vehicle has no line: it cannot log in with any password
    assert VIN_C not in text
    # comments must not look like entries to Mosquitto, which splits at the first ':'
    assert all(":" not in ln for ln in text.splitlines() if ln.startswith("#"))


def test_render_acl_gives_each_vehicle_only_its_own_topics() -> None:
    text = render_acl(
        [VehicleIdentity(VIN_B, None), VehicleIdentity(VIN_A, hash_password("a"))],
        [ServiceIdentity(SERVICE, hash_password("s"))],
    )
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert "pattern" not in text
    assert lines[0].startswith("user ")  # nothing applies to anonymous clients
    blocks: dict[str, list[str]] = {}
    for ln in lines:
        if ln.startswith("user "):
            current = blocks.setdefault(ln.removeprefix("user "), [])
        else:
            current.append(ln)
    assert list(blocks) == [SERVICE, VIN_A, VIN_B]
    assert blocks[SERVICE] == ["topic readwrite v1/#"]
    for vin in (VIN_A, VIN_B):
        assert sorted(blocks[vin]) == sorted(
            [
                f"topic write {topic_for(vin, Channel.TELEMETRY)}",
                f"topic write {topic_for(vin, Channel.EVENTS)}",
                f"topic write {topic_for(vin, Channel.STATUS)}",
                f"topic write {command_result_topic(vin)}",
                f"topic read {command_topic(vin)}",
                f"topic read {feedback_topic(vin)}",
            ]
        )


def test_render_refuses_duplicate_usernames() -> None:
    h = hash_password("pw")
    with pytest.raises(ValueError, match="twice"):
        render_acl([VehicleIdentity(VIN_A, h), VehicleIdentity(VIN_A, None)], [])
    with pytest.raises(ValueError, match="twice"):
        render_password_file([VehicleIdentity(VIN_A, h)], [ServiceIdentity(VIN_A, h)])


# --- files ------------------------------------------------------------------------------------


def test_auth_files_ensure_write_and_change_detection(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    files.ensure()
    for path in (files.password_file, files.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert files.password_file.read_text() == render_password_file([], [])
    vehicles = [VehicleIdentity(VIN_A, hash_password("a"))]
    services = [ServiceIdentity(SERVICE, hash_password("s"))]
    assert files.write(vehicles, services) is True
    assert files.write(vehicles, services) is False  # same content: nothing to reload
    files.ensure()  # keeps what is there
    assert VIN_A in files.acl_file.read_text()
    assert files.write([], services) is True
    assert VIN_A not in files.password_file.read_text() + files.acl_file.read_text()
    for path in (files.password_file, files.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in files.directory.iterdir()) == sorted(
        [files.password_file.name, files.acl_file.name]
    )  # no temporary files left behind
    with pytest.raises(ValueError, match="twice"):
        files.write([VehicleIdentity(VIN_A, None)] * 2, services)
    assert files.write([], services) is False  # the failed write changed nothing


# --- configuration ----------------------------------------------------------------------------


def _directives(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_render_config_with_auth_files_and_tls_listener(tmp_path: Path) -> None:
    tls = TlsListener(
        8883,
        Path("pki/ca.crt"),
        tmp_path / "server.crt",
        tmp_path / "server.key",
        crlfile=tmp_path / "crl.pem",
    )
    assert tls.cafile.is_absolute()
    cfg = BrokerConfig(
        port=1884,
        data_dir=tmp_path,
        allow_anonymous=False,
        password_file=Path("auth/pw"),
        acl_file=tmp_path / "acl",
        tls=tls,
    )
    assert cfg.password_file is not None
    assert cfg.password_file.is_absolute()
    text = render_config(cfg)
    directives = _directives(text)
    assert directives.index("listener 1884 127.0.0.1") < directives.index("listener 8883 127.0.0.1")
    tls_block = directives[directives.index("listener 8883 127.0.0.1") :]
    for expected in [
        "allow_anonymous false",
        f"password_file {cfg.password_file}",
        f"acl_file {tmp_path / 'acl'}",
    ]:
        assert expected in directives
    assert tls_block[1:] == [
        f"cafile {tls.cafile}",
        f"certfile {tmp_path / 'server.crt'}",
        f"keyfile {tmp_path / 'server.key'}",
        "require_certificate true",
        "use_identity_as_username true",
        f"crlfile {tmp_path / 'crl.pem'}",
    ]
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line in directives and not line.startswith("log_type"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"
    assert "password_file" not in render_config(BrokerConfig(port=1884, data_dir=tmp_path))


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line break"):
        BrokerConfig(port=1884, data_dir=tmp_path, password_file=Path("a\nlistener 1 x"))
    with pytest.raises(ValueError, match="line break"):
        BrokerConfig(port=1884, data_dir=tmp_path, acl_file=Path("a\rb"))
    files = (tmp_path / "ca", tmp_path / "crt", tmp_path / "key")
    with pytest.raises(ValueError, match="port of its own"):
        BrokerConfig(port=1884, data_dir=tmp_path, tls=TlsListener(1884, *files))
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        TlsListener(0, *files)
    with pytest.raises(ValueError, match="line break"):
        TlsListener(8883, tmp_path / "ca\nx", *files[1:])
    with pytest.raises(ValueError, match="require_certificate"):
        TlsListener(8883, *files, require_certificate=False)
    with pytest.raises(ValueError, match="require_certificate"):
        TlsListener(
            8883,
            *files,
            require_certificate=False,
            use_identity_as_username=False,
            crlfile=tmp_path / "crl",
        )
    assert TlsListener(8883, *files).url == "mqtts://127.0.0.1:8883"


# --- the real broker: authentication ----------------------------------------------------------


def test_broker_starts_with_empty_auth_files_and_refuses_everyone(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    files.ensure()
    with MosquittoProcess(_auth_broker_config(tmp_path, files)) as broker:
        client, code = Mqtt5Client.connect(
            broker.host, broker.port, "someone", username=SERVICE, password="x"
        )
        client.close()
        assert code == NOT_AUTHORIZED


def test_vehicle_logs_in_with_a_hash_made_by_hash_password(fleet: Fleet) -> None:
    fleet.connect(VIN_A)
    fleet.connect(SERVICE)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (VIN_A, "wrong password"),
        (VIN_A, None),  # username without password
        (None, None),  # anonymous
        ("1HGCM82633A009999", "whatever"),  # nobody provisioned that VIN
    ],
)
def test_bad_or_missing_credentials_are_refused(
    fleet: Fleet, username: str | None, password: str | None
) -> None:
    client, code = Mqtt5Client.connect(
        fleet.broker.host, fleet.broker.port, "intruder", username=username, password=password
    )
    fleet.clients.append(client)
    assert code == NOT_AUTHORIZED
    assert client.wait_closed()


def test_vehicle_publishes_to_its_own_topics_only(fleet: Fleet) -> None:
    service = fleet.service_subscriber()
    vehicle = fleet.connect(VIN_A)
    own = [
        topic_for(VIN_A, Channel.TELEMETRY),
        topic_for(VIN_A, Channel.EVENTS),
        topic_for(VIN_A, Channel.STATUS),
        command_result_topic(VIN_A),
    ]
    forbidden = [
        topic_for(VIN_B, Channel.TELEMETRY),  # another vehicle's telemetry
        command_topic(VIN_A),  # forging commands to itself
        command_result_topic(VIN_B),
        "v1/other",
    ]
    for topic in forbidden:
        assert vehicle.publish(topic, b"spoofed") == NOT_AUTHORIZED, topic
    for topic in own:
        assert vehicle.publish(topic, b"genuine") < 0x80, topic
    # in order, and none of the forbidden ones (they were sent first)
    _delivered_in_order(service, [(t, b"genuine") for t in own])
    assert service.receive(timeout=0.2) is None


def test_vehicle_never_receives_another_vehicles_commands(fleet: Fleet) -> None:
    vehicle = fleet.connect(VIN_A)
    # SUBACK grants it: Mosquitto 2.0.11 checks read rights on delivery, not on SUBSCRIBE
    assert vehicle.subscribe(command_topic(VIN_B)) < 0x80
    assert vehicle.subscribe("v1/#") < 0x80
    service = fleet.connect(SERVICE)
    assert service.publish(command_topic(VIN_B), b"unlock B") < 0x80
    assert service.publish(topic_for(VIN_B, Channel.TELEMETRY), b"B's data") < 0x80
    assert service.publish(command_topic(VIN_A), b"lock A") < 0x80
    # A's own command arrives (once per matching subscription), B's never did before it
    assert vehicle.receive() == (command_topic(VIN_A), b"lock A")
    while (message := vehicle.receive(timeout=0.2)) is not None:
        assert message == (command_topic(VIN_A), b"lock A")


def test_service_shared_subscription_receives_vehicle_telemetry(fleet: Fleet) -> None:
    gateway_1 = fleet.service_subscriber(SHARE_FILTER, "gateway-1")
    for vin in (VIN_A, VIN_B):
        vehicle = fleet.connect(vin)
        assert vehicle.publish(topic_for(vin, Channel.TELEMETRY), vin.encode()) < 0x80
    _delivered_in_order(
        gateway_1,
        [(topic_for(v, Channel.TELEMETRY), v.encode()) for v in (VIN_A, VIN_B)],
    )


# --- the real broker: reload ------------------------------------------------------------------


def test_reload_admits_a_new_vehicle_without_dropping_connected_clients(fleet: Fleet) -> None:
    service = fleet.service_subscriber()
    old = fleet.connect(VIN_A)
    assert fleet.try_connect(VIN_C, password="not yet")[1] == NOT_AUTHORIZED

    fleet.provision(VIN_C)
    fleet.broker.reload()

    new = fleet.connect(VIN_C)
    assert new.publish(topic_for(VIN_C, Channel.STATUS), b"new") < 0x80
    # the connections made before the reload still work, with their rights
    assert old.publish(topic_for(VIN_A, Channel.TELEMETRY), b"old") < 0x80
    assert old.publish(topic_for(VIN_C, Channel.TELEMETRY), b"spoof") == NOT_AUTHORIZED
    _delivered_in_order(
        service,
        [(topic_for(VIN_C, Channel.STATUS), b"new"), (topic_for(VIN_A, Channel.TELEMETRY), b"old")],
    )
    assert not old.closed
    assert not service.closed
    assert "Client 1HGCM82633A004352 disconnected" not in fleet.broker.log_path.read_text()


def test_revoked_vehicle_is_cut_off_by_the_reload(fleet: Fleet) -> None:
    service = fleet.service_subscriber()
    revoked = fleet.connect(VIN_A)
    kept = fleet.connect(VIN_B)

    fleet.remove(VIN_A)
    fleet.broker.reload()

    # Mosquitto re-checks connected password clients on reload: A is gone at once
    assert revoked.wait_closed(timeout=TIMEOUT)
    assert fleet.try_connect(VIN_A)[1] == NOT_AUTHORIZED
    assert kept.publish(topic_for(VIN_B, Channel.TELEMETRY), b"still here") < 0x80
    assert service.receive() == (topic_for(VIN_B, Channel.TELEMETRY), b"still here")


def test_reload_reports_what_the_broker_rejected(fleet: Fleet) -> None:
    with fleet.files.password_file.open("a") as f:
        f.write("BROKEN:$7$101$AAAA$BBBB\n")
    with pytest.raises(BrokerError, match="BROKEN, removing entry"):
        fleet.broker.reload()
    fleet.files.write(fleet.vehicles, fleet.services)
    fleet.broker.reload()  # a good file reloads cleanly again
    fleet.connect(VIN_A)


def test_reload_needs_a_running_broker(tmp_path: Path) -> None:
    broker = MosquittoProcess(BrokerConfig(port=free_port(), data_dir=tmp_path))
    with pytest.raises(BrokerError, match="not running"):
        broker.reload()


# --- BrokerAuthSync ---------------------------------------------------------------------------


class IdentitySource:
    """What the state database will provide: a version counter and the vehicle list."""

    def __init__(self) -> None:
        self.version = 0
        self.vehicles: list[VehicleIdentity] = []
        self.fail_with: Exception | None = None
        self.lock = threading.Lock()

    def get_version(self) -> int:
        with self.lock:
            if self.fail_with is not None:
                raise self.fail_with
            return self.version

    def get_identities(self) -> list[VehicleIdentity]:
        with self.lock:
            return list(self.vehicles)

    def set(self, vehicles: list[VehicleIdentity]) -> None:
        with self.lock:
            self.vehicles = vehicles
            self.version += 1


@dataclass
class SyncSetup:
    broker: MosquittoProcess
    source: IdentitySource
    sync: BrokerAuthSync
    reloads: list[int]  # the source's version at each reload
    passwords: dict[str, str]


@pytest.fixture
def sync_setup(tmp_path: Path) -> Iterator[SyncSetup]:
    files = BrokerAuthFiles(tmp_path / "auth")
    files.ensure()
    passwords = {v: generate_password() for v in (VIN_A, VIN_B, SERVICE)}
    broker = MosquittoProcess(_auth_broker_config(tmp_path, files))
    broker.start()
    source = IdentitySource()
    reloads: list[int] = []

    def reload() -> None:
        broker.reload()
        reloads.append(source.version)

    sync = BrokerAuthSync(
        files,
        services=[ServiceIdentity(SERVICE, hash_password(passwords[SERVICE]))],
        version=source.get_version,
        identities=source.get_identities,
        reload=reload,
        interval_s=0.02,
    )
    try:
        yield SyncSetup(broker, source, sync, reloads, passwords)
    finally:
        sync.stop()
        broker.stop()


def _code(broker: MosquittoProcess, username: str, password: str) -> int:
    client, code = Mqtt5Client.connect(
        broker.host, broker.port, username, username=username, password=password
    )
    client.disconnect()
    return code


def test_auth_sync_once_writes_and_reloads_only_on_change(sync_setup: SyncSetup) -> None:
    broker, source, sync, reloads, pw = (
        sync_setup.broker,
        sync_setup.source,
        sync_setup.sync,
        sync_setup.reloads,
        sync_setup.passwords,
    )
    assert _code(broker, SERVICE, pw[SERVICE]) == NOT_AUTHORIZED  # nothing synced yet
    assert sync.sync_once() is True  # first sync: the service account appears
    assert sync.synced_version == 0
    assert _code(broker, SERVICE, pw[SERVICE]) == 0
    assert sync.sync_once() is False  # same version: not even read
    source.set([])  # new version, same content: no reload
    assert sync.sync_once() is False
    assert reloads == [0]
    source.set([VehicleIdentity(VIN_A, hash_password(pw[VIN_A]))])
    assert sync.sync_once() is True
    assert _code(broker, VIN_A, pw[VIN_A]) == 0
    assert reloads == [0, 2]


def test_auth_sync_retries_a_failed_reload(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    attempts: list[str] = []

    def flaky_reload() -> None:
        attempts.append("reload")
        if len(attempts) == 1:
            raise BrokerError("broker restarting")

    sync = BrokerAuthSync(
        files, services=[], version=lambda: 7, identities=list, reload=flaky_reload
    )
    with pytest.raises(BrokerError):
        sync.sync_once()
    assert sync.synced_version is None
    # the files are already written, so nothing "changes"; the reload is still owed
    assert sync.sync_once() is True
    assert attempts == ["reload", "reload"]
    assert sync.sync_once() is False


def test_auth_sync_thread_follows_the_source_and_survives_errors(
    sync_setup: SyncSetup, caplog: pytest.LogCaptureFixture
) -> None:
    broker, source, sync, reloads, pw = (
        sync_setup.broker,
        sync_setup.source,
        sync_setup.sync,
        sync_setup.reloads,
        sync_setup.passwords,
    )
    caplog.set_level(logging.WARNING, logger="gateway.broker.auth")
    sync.start()
    with pytest.raises(RuntimeError, match="already running"):
        sync.start()
    wait_until(lambda: sync.synced_version == 0, timeout=TIMEOUT, what="first sync")

    source.fail_with = ConnectionError("state database unavailable")
    wait_until(
        lambda: "broker identity sync failed" in caplog.text, timeout=TIMEOUT, what="error log"
    )
    with source.lock:
        source.fail_with = None
        source.vehicles = [VehicleIdentity(VIN_A, hash_password(pw[VIN_A]))]
        source.version += 1
    wait_until(lambda: sync.synced_version == 1, timeout=TIMEOUT, what="sync after the error")
    assert _code(broker, VIN_A, pw[VIN_A]) == 0

    source.set([VehicleIdentity(VIN_B, hash_password(pw[VIN_B]))])  # A revoked, B added
    wait_until(lambda: sync.synced_version == 2, timeout=TIMEOUT, what="revocation sync")
    assert _code(broker, VIN_A, pw[VIN_A]) == NOT_AUTHORIZED
    assert _code(broker, VIN_B, pw[VIN_B]) == 0
    sync.stop()
    assert reloads == [0, 1, 2]
