"""Subscriptions written into Mosquitto's persistence file, so that the broker has them from
the moment it opens its listeners (decision 0031).

Why: Mosquitto 2.0 does not save shared subscriptions (``persist__subs_save`` walks the
plain ones only), so after every start the gateways' ``$share/...`` subscriptions are gone
until someone subscribes again, and what units publish meanwhile reaches no subscriber: it
is answered PUBACK 0x10 "no matching subscribers", a *success* code, and dropped. Opening
the sessions over MQTT right after the start (:func:`gateway.broker.control.prime_sessions`)
narrows that gap but cannot close it: the listener that lets the priming client in lets
the units in too, and Mosquitto 2.0 can neither open a listener later (a reload refuses to
add one) nor change its connection limit on a reload. It does, however, *read* shared
subscriptions from the file: a subscription chunk goes through the same ``sub__add`` as a
SUBSCRIBE, which recognises ``$share/<group>/``. And it restores the file before it opens
a single listener (``db__open`` comes before ``listeners__start`` in ``main``). So the
supervisor writes the gateways' subscriptions into the file before every start.

The format (Mosquitto 2.0, database version 6, ``src/persist.h``): a 15-byte magic, a CRC
(unused, 0), the version, then chunks of a big-endian (type, length) header and a body; a
subscription chunk (type 5) is ``PF_sub`` (identifier u32, client id length u16, topic
length u16, QoS u8, options u8, two bytes of padding; big-endian) and then the client id
and the topic. A chunk that is already there must not be written twice: Mosquitto refuses
to start on a duplicate subscription chunk (``MOSQ_ERR_SUB_EXISTS`` fails the restore).
A subscription needs its client's session to be one that outlives a connection: a
subscription chunk alone makes a session with no expiry interval, which the client does
not get back when it connects (``connect__on_authorised`` takes a session over only if its
``session_expiry_interval`` > 0), and what was queued in it is dropped. So a client chunk
(type 6, ``PF_client``: expiry time i64 in *native* byte order, expiry interval u32, last
message id u16, client id length u16, listener port u16, user name length u16, four bytes
of padding; then the client id) is written too for a client id that has none in the file.

Mosquitto itself always replaces the whole file (``mosquitto.db.new``, then a rename), so a
partial chunk at its end can only be an append of ours that was interrupted: it is cut off
before appending again. A file in a format not described here (another magic, another
version) is left alone: :class:`UnknownPersistenceFormat`.

Standard library only, like the rest of :mod:`gateway.broker`.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from gateway.broker.mosquitto import BrokerError

__all__ = [
    "MAGIC",
    "UnknownPersistenceFormat",
    "saved_sessions",
    "saved_subscriptions",
    "write_subscriptions",
]

MAGIC = b"\x00\xb5\x00mosquitto db"
"""The first 15 bytes of a Mosquitto persistence file (``magic`` in ``persist_read.c``)."""

DB_VERSION = 6
"""The persistence format of Mosquitto 2.0 (``MOSQ_DB_VERSION``)."""

_HEADER = struct.Struct(">15sII")  # magic, crc (unused), version
_CHUNK = struct.Struct(">II")  # type, length of the body
_SUB = struct.Struct(">IHHBB2x")  # PF_sub: identifier, id_len, topic_len, qos, options
# PF_client: session_expiry_time (native), then big-endian session_expiry_interval,
# last_mid, id_len, listener_port, username_len, padding
_CLIENT_TIME = struct.Struct("=q")
_CLIENT_REST = struct.Struct(">IHHHH4x")
_CHUNK_SUB = 5
_CHUNK_CLIENT = 6
_CLIENT_SIZE = _CLIENT_TIME.size + _CLIENT_REST.size

SESSION_EXPIRY_S = 7 * 24 * 3600
"""The expiry interval of a session written here (the broker's cap, decision 0004); the
service that takes it over sets its own."""


class UnknownPersistenceFormat(BrokerError):
    """The persistence file is not one this module can read safely (another magic, another
    format version): it is left as it is."""


def _read_header(f: BinaryIO, path: Path) -> None:
    data = f.read(_HEADER.size)
    if len(data) < _HEADER.size:
        raise UnknownPersistenceFormat(f"{path} is shorter than a Mosquitto persistence header")
    magic, _crc, version = _HEADER.unpack(data)
    if magic != MAGIC:
        raise UnknownPersistenceFormat(f"{path} is not a Mosquitto persistence file")
    if version != DB_VERSION:
        raise UnknownPersistenceFormat(
            f"{path} is in persistence format {version}; only {DB_VERSION} (Mosquitto 2.0) "
            "is understood here"
        )


def _walk(path: Path) -> tuple[set[tuple[str, str]], set[str], int]:
    """The (client id, topic) of every subscription chunk, the client id of every client
    chunk, and where the last whole chunk ends."""
    found: set[tuple[str, str]] = set()
    clients: set[str] = set()
    size = path.stat().st_size
    with path.open("rb") as f:
        _read_header(f, path)
        end = _HEADER.size
        while end + _CHUNK.size <= size:
            f.seek(end)
            kind, length = _CHUNK.unpack(f.read(_CHUNK.size))
            if end + _CHUNK.size + length > size:
                break  # a partial chunk: an interrupted append of ours
            if kind == _CHUNK_SUB and length >= _SUB.size:
                body = f.read(length)
                _ident, id_len, topic_len, _qos, _options = _SUB.unpack_from(body)
                client = body[_SUB.size : _SUB.size + id_len]
                topic = body[_SUB.size + id_len : _SUB.size + id_len + topic_len]
                found.add((client.decode("utf-8", "replace"), topic.decode("utf-8", "replace")))
            elif kind == _CHUNK_CLIENT and length >= _CLIENT_SIZE:
                body = f.read(length)
                id_len = _CLIENT_REST.unpack_from(body, _CLIENT_TIME.size)[2]
                client = body[_CLIENT_SIZE : _CLIENT_SIZE + id_len]
                clients.add(client.decode("utf-8", "replace"))
            end += _CHUNK.size + length
    return found, clients, end


def saved_subscriptions(path: Path) -> set[tuple[str, str]]:
    """(client id, topic filter) of every subscription in the persistence file at ``path``
    (empty if there is none). Raises :class:`UnknownPersistenceFormat`."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    return _walk(path)[0]


def saved_sessions(path: Path) -> set[str]:
    """The client id of every session in the persistence file at ``path``."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    return _walk(path)[1]


def _client_chunk(client_id: str) -> bytes:
    cid = client_id.encode()
    if len(cid) > 0xFFFF:
        raise ValueError(f"client id too long for a persistence chunk: {client_id!r}")
    expires = int(time.time()) + SESSION_EXPIRY_S
    body = _CLIENT_TIME.pack(expires) + _CLIENT_REST.pack(SESSION_EXPIRY_S, 0, len(cid), 0, 0)
    return _CHUNK.pack(_CHUNK_CLIENT, len(body) + len(cid)) + body + cid


def _sub_chunk(client_id: str, topic: str, qos: int) -> bytes:
    cid, top = client_id.encode(), topic.encode()
    if len(cid) > 0xFFFF or len(top) > 0xFFFF:
        raise ValueError(f"client id or topic too long for a persistence chunk: {topic!r}")
    body = _SUB.pack(0, len(cid), len(top), qos, 0) + cid + top
    return _CHUNK.pack(_CHUNK_SUB, len(body)) + body


def write_subscriptions(path: Path, sessions: Mapping[str, Sequence[str]], *, qos: int = 1) -> int:
    """Make the persistence file at ``path`` hold a subscription to each topic filter of
    each client id in ``sessions`` (at ``qos``), for a broker about to start; returns how
    many were added (those already there are not written again).

    A missing or empty file is created with only these subscriptions. Raises
    :class:`UnknownPersistenceFormat` (the file untouched) and ``OSError``. Never call it
    while the broker runs: the broker replaces the file when it saves.
    """
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
    wanted = list(dict.fromkeys((c, t) for c, filters in sessions.items() for t in filters))
    if not path.exists() or path.stat().st_size == 0:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER.pack(MAGIC, 0, DB_VERSION) + _chunks(wanted, set(), qos))
            f.flush()
            os.fsync(f.fileno())
        return len(wanted)
    present, clients, end = _walk(path)
    missing = [w for w in wanted if w not in present]
    if not missing and end == path.stat().st_size:
        return 0
    with path.open("r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(_chunks(missing, clients, qos))
        f.flush()
        os.fsync(f.fileno())
    return len(missing)


def _chunks(subscriptions: list[tuple[str, str]], clients: set[str], qos: int) -> bytes:
    """A client chunk for each client id not in ``clients``, then the subscriptions."""
    new_clients = dict.fromkeys(c for c, _ in subscriptions if c not in clients)
    return b"".join(
        [
            *(_client_chunk(c) for c in new_clients),
            *(_sub_chunk(c, t, qos) for c, t in subscriptions),
        ]
    )
