"""A minimal synchronous MQTT 5 client for tests that talk to the real broker.

Raw packets rather than gmqtt because the broker tests need what a full client library
hides or retries: the exact CONNACK, SUBACK and PUBACK reason codes, the CONNACK's
properties (the broker's Maximum Packet Size), and whether the broker closed the
connection.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import ssl
import time

__all__ = ["NOT_AUTHORIZED", "TIMEOUT", "Mqtt5Client"]

TIMEOUT = 5.0  # seconds; a safety net, far above what any step here takes
NOT_AUTHORIZED = 0x87


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
        #: the properties of each message in :attr:`messages`, in the same order
        self.message_properties: collections.deque[dict[int, int | bytes]] = collections.deque()
        self.disconnect_reason: int | None = None
        self.closed = False
        #: the CONNACK's properties, by identifier (integer ones decoded)
        self.connack_properties: dict[int, int | bytes] = {}
        #: the CONNACK's Session Present flag: the broker kept a session for this client id
        self.session_present = False

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
        clean_start: bool = True,
        session_expiry: int | None = None,
    ) -> tuple[Mqtt5Client, int]:
        """Connect and return (client, CONNACK reason code); 0 is success.

        ``clean_start=False`` with ``session_expiry`` (seconds) asks for a persistent
        session. Raises ``OSError`` (``ssl.SSLError``, ``ConnectionError``) when the
        connection fails or is closed before a CONNACK.
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
            client._send_connect(client_id, username, password, clean_start, session_expiry)
            ptype, body = client._read_packet(time.monotonic() + timeout)
            if ptype != 0x20:
                raise ConnectionError(f"expected CONNACK, got packet type {ptype:#x}")
            client.connack_properties = _properties(body, 2)
            client.session_present = bool(body[0] & 0x01)
        except BaseException:
            client.close()
            raise
        return client, body[1]

    def _send_connect(
        self,
        client_id: str,
        username: str | None,
        password: str | None,
        clean_start: bool,
        session_expiry: int | None,
    ) -> None:
        flags = 0x02 if clean_start else 0x00
        payload = _string(client_id)
        if username is not None:
            flags |= 0x80
            payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
        props = b""
        if session_expiry is not None:
            props = b"\x11" + session_expiry.to_bytes(4, "big")
        variable = _string("MQTT") + bytes([5, flags]) + (30).to_bytes(2, "big")
        self._send(0x10, variable + _varint(len(props)) + props + payload)

    # -- operations

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, correlation: bytes | None = None
    ) -> int:
        """Publish at QoS 1, wait for the PUBACK and return its reason code (< 0x80: ok)."""
        pid = self._packet_id()
        props = b"" if correlation is None else b"\x09" + len(correlation).to_bytes(2, "big")
        props += b"" if correlation is None else correlation
        first = 0x33 if retain else 0x32
        variable = _string(topic) + pid.to_bytes(2, "big") + _varint(len(props)) + props
        self._send(first, variable + payload)
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
        got = self.receive_message(timeout)
        return None if got is None else (got[0], got[1])

    def receive_message(
        self, timeout: float = TIMEOUT
    ) -> tuple[str, bytes, dict[int, int | bytes]] | None:
        """The next delivered message with its properties, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.messages:
            if self.closed or not self._pump(deadline):
                return None
        topic, payload = self.messages.popleft()
        return topic, payload, self.message_properties.popleft()

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
            if self.closed:
                raise ConnectionError(
                    f"the broker disconnected (reason {self.disconnect_reason:#x})"
                )

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
            self.message_properties.append(_properties(body, i))
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


_INT_PROPERTIES = {
    0x01: 1,  # payload format indicator
    0x02: 4,  # message expiry interval
    0x11: 4,  # session expiry interval
    0x13: 2,  # server keep alive
    0x17: 1,  # request problem information
    0x19: 1,  # request response information
    0x21: 2,  # receive maximum
    0x22: 2,  # topic alias maximum
    0x23: 2,  # topic alias
    0x24: 1,  # maximum QoS
    0x25: 1,  # retain available
    0x27: 4,  # maximum packet size
    0x28: 1,  # wildcard subscription available
    0x29: 1,  # subscription identifiers available
    0x2A: 1,  # shared subscription available
}
"""MQTT 5 property identifiers with an integer value, and its size in bytes."""


def _properties(body: bytes, i: int) -> dict[int, int | bytes]:
    """The properties starting at ``body[i]`` (their length first): integers decoded, the
    string and binary ones (and user properties, last one wins) as raw bytes."""
    length, n = _read_varint(body, i)
    i += n
    end = i + length
    out: dict[int, int | bytes] = {}
    while i < end:
        ident = body[i]
        i += 1
        if ident == 0x0B:  # subscription identifier: a variable byte integer
            out[ident], n = _read_varint(body, i)
            i += n
        elif ident in _INT_PROPERTIES:
            size = _INT_PROPERTIES[ident]
            out[ident] = int.from_bytes(body[i : i + size], "big")
            i += size
        elif ident == 0x26:  # user property: two strings
            klen = int.from_bytes(body[i : i + 2], "big")
            vlen = int.from_bytes(body[i + 2 + klen : i + 4 + klen], "big")
            out[ident] = body[i : i + 4 + klen + vlen]
            i += 4 + klen + vlen
        else:  # string or binary data: a two-byte length first
            size = int.from_bytes(body[i : i + 2], "big")
            out[ident] = body[i + 2 : i + 2 + size]
            i += 2 + size
    return out


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
