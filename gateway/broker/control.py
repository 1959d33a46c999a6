"""Commands to Mosquitto's Dynamic Security plugin over ``$CONTROL/dynamic-security/v1``.

The plugin is how the closed broker's rights change at run time (a vehicle provisioned or
revoked): it reads its JSON file once at start-up and afterwards takes commands as MQTT
messages from an identity with rights on the control topic, answering each message with
one message on ``$CONTROL/dynamic-security/v1/response`` that holds a response per command
(``{"responses": [{"command": ..., "error": ..., "correlationData": ...}]}``).

Why a few dozen lines of MQTT 3.1.1 here instead of the gateway's MQTT library: the broker
package stays standard-library only (the supervisor, the benchmarks and pytest fixtures use
it without an event loop), and this needs four packet types: CONNECT, SUBSCRIBE, PUBLISH
at QoS 1 out, PUBLISH at QoS 0 in (the plugin answers at QoS 0).

Cost, measured on Mosquitto 2.0.11 (decision 0008): the plugin rewrites its whole JSON file
after *every* command, so a command costs time proportional to the number of clients and
roles it holds (about 20 us per vehicle on the 2-core development machine: 190 ms per
command at 10,000 vehicles), and the broker serves nobody while it does. Batching commands
in one message saves nothing but round trips; :class:`DynsecControl` therefore sends as
many commands per message as fit in a time budget, so the broker answers its other clients
between messages.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.broker.mosquitto import BrokerError

__all__ = [
    "CONTROL_TOPIC",
    "RESPONSE_TOPIC",
    "DynsecCommandError",
    "DynsecControl",
    "clear_retained",
    "login_code",
    "prime_sessions",
    "purge_sessions",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"

_MAX_MESSAGE_BYTES = 200 * 1024
"""Largest control message sent: below the broker's max_packet_size (264 KiB)."""

_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class DynsecCommandError(BrokerError):
    """The plugin answered a command with an error (``"Client not found"``, ...).

    ``failures`` holds every failed (command, error) pair of the message.
    """

    def __init__(self, failures: Sequence[tuple[Mapping[str, Any], str]]) -> None:
        self.failures = list(failures)
        shown = "; ".join(f"{c.get('command')} {_subject(c)}: {e}" for c, e in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"the Dynamic Security plugin refused: {shown}{more}")


def _subject(command: Mapping[str, Any]) -> str:
    for key in ("username", "rolename", "groupname"):
        if key in command:
            return f"{key}={command[key]}"
    return ""


class DynsecControl:
    """Send Dynamic Security commands as ``username`` and collect the plugin's answers.

    One connection per :meth:`execute` call (connect, subscribe to the response topic, send
    the messages one after another, each after the previous one was answered, disconnect):
    changes are rare, and a short connection leaves no session behind to look after.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.client_id = client_id or username
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<DynsecControl {self.username}@{self.host}:{self.port}>"

    def execute(
        self,
        commands: Sequence[Mapping[str, Any]],
        *,
        per_message: int = 1000,
        tolerate: frozenset[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Run ``commands`` in order, at most ``per_message`` in one control message (and no
        more than fits in 200 KiB); return the plugin's responses in the same order.

        Raises :class:`DynsecCommandError` listing every command the plugin refused, after
        all messages were sent, unless its error text is in ``tolerate`` (say ``"Client not
        found"`` when deleting); :class:`BrokerError` when the broker refuses the login or
        does not answer in ``timeout`` seconds; ``OSError`` when it cannot be reached.
        """
        if per_message < 1:
            raise ValueError(f"per_message must be >= 1, got {per_message}")
        tagged = [{**c, "correlationData": str(i)} for i, c in enumerate(commands)]
        responses: dict[str, dict[str, Any]] = {}
        with _Connection.open(self) as conn:
            for chunk in _chunks(tagged, per_message):
                conn.publish(CONTROL_TOPIC, json.dumps({"commands": chunk}).encode())
                wanted = {c["correlationData"] for c in chunk}
                deadline = time.monotonic() + self.timeout
                while not wanted <= responses.keys():
                    for response in conn.responses(deadline):
                        key = response.get("correlationData")
                        if isinstance(key, str) and key in wanted:
                            responses[key] = response
        ordered = [responses[c["correlationData"]] for c in tagged]
        failures = [
            (command, str(r["error"]))
            for command, r in zip(commands, ordered, strict=True)
            if r.get("error") and r["error"] not in tolerate
        ]
        if failures:
            raise DynsecCommandError(failures)
        return ordered


def _chunks(commands: list[dict[str, Any]], per_message: int) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for command in commands:
        length = len(json.dumps(command)) + 2
        if current and (len(current) >= per_message or size + length > _MAX_MESSAGE_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(command)
        size += length
    if current:
        out.append(current)
    return out


def prime_sessions(
    host: str,
    port: int,
    username: str,
    password: str,
    sessions: Mapping[str, Sequence[str]],
    *,
    timeout: float = 10.0,
) -> None:
    """Open a persistent session for each client id in ``sessions`` with its topic filters
    subscribed (QoS 1), and leave it disconnected.

    Why: Mosquitto 2.0.11 does not save shared subscriptions (``persist__subs_save`` walks
    the plain ones only), so after a restart the gateway's ``$share/...`` subscription is
    gone until the gateway reconnects, and what units publish meanwhile reaches no
    subscriber and is dropped (answered PUBACK 0x10). Subscribing the gateway's sessions
    under their own client ids right after the broker starts makes it queue their share
    for them instead; the gateways take their sessions over when they reconnect. Done
    within milliseconds of the broker's start, before units are back (they retry after
    half a second or more), and before the gateways (seconds).
    """
    for client_id, filters in sessions.items():
        control = DynsecControl(
            host, port, username, password, client_id=client_id, timeout=timeout
        )
        with _Connection.open(control, clean=False, subscribe=()) as conn:
            for topic_filter in filters:
                conn._subscribe(topic_filter, qos=1)


def purge_sessions(
    host: str,
    port: int,
    username: str,
    password: str,
    client_ids: Sequence[str],
    *,
    timeout: float = 10.0,
) -> None:
    """Discard the broker's session of each client id: connect under it with a clean
    session (which ends a connection still using it) and leave, so the broker forgets its
    subscriptions and whatever waits in it.

    Why: a revoked vehicle's persistent session keeps the commands published to it while
    its unit was away; without this, the unit of the VIN's next holder, connecting with the
    same client id, would be handed them (signed for that VIN, so it would act on them).
    ``username`` must be an account whose plugin client has no client id of its own (the
    gateway's service account), so it may use the vehicle's."""
    for client_id in client_ids:
        control = DynsecControl(
            host, port, username, password, client_id=client_id, timeout=timeout
        )
        with _Connection.open(control, clean=True, subscribe=()):
            pass


def clear_retained(
    host: str,
    port: int,
    username: str,
    password: str,
    topics: Sequence[str],
    *,
    timeout: float = 10.0,
) -> None:
    """Delete the retained message of each topic: publish an empty retained message there
    (QoS 1, waiting for the broker's PUBACK each time), as MQTT prescribes.

    Why: a vehicle's retained ``status`` (its last ``online``/``offline``, or the Will the
    broker published when the sync cut it off) outlives its holding period; without this
    the broker replays the previous holder's unit's status to every new subscription after
    a transfer, and a decommissioned VIN keeps showing one for ever. ``username`` is the
    broker administrator (its role may publish to ``v1/vehicles/+/status``; it can grant
    itself any right anyway, so this adds none). Subscribers receive the empty message
    (the ingest ignores an empty status)."""
    control = DynsecControl(host, port, username, password, timeout=timeout)
    with _Connection.open(control, clean=True, subscribe=()) as conn:
        for topic in topics:
            pid = conn.publish(topic, b"", retain=True)
            conn.wait_puback(pid, time.monotonic() + timeout)


def login_code(
    host: str, port: int, username: str, password: str, *, client_id: str | None = None
) -> int:
    """The CONNACK return code an MQTT 3.1.1 login gets (0: accepted, 5: not authorized);
    the connection is closed again at once. ``OSError`` when the broker cannot be reached."""
    control = DynsecControl(host, port, username, password, client_id=client_id, timeout=30)
    try:
        with _Connection.open(control, subscribe=()):
            return 0
    except _Refused as refused:
        return refused.code


class _Refused(BrokerError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Connection:
    """A blocking MQTT 3.1.1 session over one socket; every wait has a deadline."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buf = b""
        self._next_id = 1

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        control: DynsecControl,
        *,
        clean: bool = True,
        subscribe: Sequence[str] = (RESPONSE_TOPIC,),
    ) -> Any:
        sock = socket.create_connection((control.host, control.port), timeout=control.timeout)
        conn = cls(sock, control.timeout)
        try:
            conn._connect(control, clean=clean)
            for topic_filter in subscribe:
                conn._subscribe(topic_filter)
            yield conn
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            sock.close()

    def _connect(self, control: DynsecControl, *, clean: bool) -> None:
        flags = 0xC2 if clean else 0xC0  # user name, password, clean session or not
        variable = _string("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big")
        payload = _string(control.client_id) + _string(control.username)
        payload += _string(control._password)
        self._send(0x10, variable + payload)
        ptype, body = self._read(time.monotonic() + self.timeout)
        if ptype != 0x20 or len(body) < 2:
            raise BrokerError(f"{control!r}: expected a CONNACK, got packet type {ptype:#x}")
        if body[1] != 0:
            reason = _CONNACK_REASONS.get(body[1], f"code {body[1]}")
            raise _Refused(
                f"the broker refused {control.username!r} as {control.client_id!r} "
                f"({reason}); is its password file entry and plugin client in place?",
                body[1],
            )

    def _subscribe(self, topic: str, *, qos: int = 0) -> None:
        pid = self._packet_id()
        self._send(0x82, pid.to_bytes(2, "big") + _string(topic) + bytes([qos]))
        deadline = time.monotonic() + self.timeout
        while True:
            ptype, body = self._read(deadline)
            if ptype == 0x90 and body[:2] == pid.to_bytes(2, "big"):
                if body[2] >= 0x80:
                    raise BrokerError(
                        f"the broker refused a subscription to {topic} (the account's plugin "
                        "role must allow it)"
                    )
                return

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """QoS 1; the PUBACK is skipped by :meth:`responses` (the answer is what counts) or
        awaited with :meth:`wait_puback`. Returns the packet id."""
        pid = self._packet_id()
        self._send(0x33 if retain else 0x32, _string(topic) + pid.to_bytes(2, "big") + payload)
        return pid

    def wait_puback(self, pid: int, deadline: float) -> None:
        while True:
            ptype, body = self._read(deadline)
            if ptype == 0x40 and body[:2] == pid.to_bytes(2, "big"):
                return

    def responses(self, deadline: float) -> list[dict[str, Any]]:
        """The responses in the next packet that carries some (may be none)."""
        ptype, body = self._read(deadline)
        if ptype & 0xF0 != 0x30:
            return []  # the PUBACK, or anything else a broker may send
        tlen = int.from_bytes(body[:2], "big")
        start = 2 + tlen + (2 if ptype & 0x06 else 0)
        if body[2 : 2 + tlen].decode("utf-8", "replace") != RESPONSE_TOPIC:
            return []
        try:
            data = json.loads(body[start:])
        except ValueError:
            return []
        found = data.get("responses") if isinstance(data, dict) else None
        return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []

    def _packet_id(self) -> int:
        pid = self._next_id
        self._next_id = pid % 65535 + 1
        return pid

    def _send(self, first_byte: int, body: bytes) -> None:
        self.sock.sendall(bytes([first_byte]) + _varint(len(body)) + body)

    def _read(self, deadline: float) -> tuple[int, bytes]:
        while True:
            packet = _split(self._buf)
            if packet is not None:
                ptype, body, used = packet
                self._buf = self._buf[used:]
                return ptype, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    "the broker did not answer a Dynamic Security command in time; it may be "
                    "busy rewriting the plugin's file (see decision 0008) or down"
                )
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError("the broker closed the Dynamic Security admin connection")
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


def _split(buf: bytes) -> tuple[int, bytes, int] | None:
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
