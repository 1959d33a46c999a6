"""Vehicle and service identities on the private broker: password file, ACL, and their sync.

Why Mosquitto's own files and not a plugin: the password file and the ACL file are built into
Mosquitto 2.0, re-read on SIGHUP without dropping a connection, and need nothing compiled.
The gateway renders both from its list of vehicles (the state database, behind plain
callables here) and reloads the broker when that list changes (:class:`BrokerAuthSync`).

Password file
    One ``username:hash`` line per identity in Mosquitto 2.0's ``$7$`` format
    (PBKDF2-HMAC-SHA512, what ``mosquitto_passwd`` writes): ``$7$<iterations>$<base64 salt>$
    <base64 hash>``, standard base64 with padding, a salt of exactly 12 bytes and a 64-byte
    hash; Mosquitto 2.0.11 drops (with an error in its log) any entry whose salt or hash has
    another length. :func:`hash_password` computes it with :mod:`hashlib`, so provisioning
    thousands of vehicles needs no ``mosquitto_passwd`` subprocess per vehicle.

ACL
    One explicit ``user <VIN>`` block per vehicle, never ``pattern`` lines: a pattern would
    give rights to *any* authenticated client whose name looks like a VIN, including one
    that was removed but still holds a valid client certificate (certificate identities do
    not need a password-file line). With per-user blocks, a removed vehicle has no block and
    so no rights at all. Lines before the first ``user`` line would apply to anonymous
    clients; there are none, and ``allow_anonymous false`` refuses them anyway. A vehicle
    writes its ``telemetry``, ``events``, ``status`` and ``commands/result`` and reads its
    ``commands`` and ``feedback`` (the gateway's notices of what it refused), nothing else.

How Mosquitto 2.0.11 applies this (checked by experiment, see ``tests/test_broker_auth.py``):

* PUBLISH is checked against ``write`` rights. A denied QoS 1 publish is acknowledged with
  PUBACK reason code 0x87 (*Not authorized*) to an MQTT 5 client and dropped.
* SUBSCRIBE is *not* checked by the acl_file (the broker grants every subscription; its
  source says "FIXME - implement ACL subscription strings"). ``read`` rights are checked when
  a message is delivered, against the message's own topic. So a vehicle subscribing to
  another VIN's commands gets a granted SUBACK and then nothing, ever.
* Shared subscriptions (``$share/<group>/v1/vehicles/+/telemetry``) are therefore allowed to
  everyone, and each delivered message is checked against ``read`` on its real topic
  (``v1/vehicles/<VIN>/telemetry``): ``topic readwrite v1/#`` is all a service account needs;
  no ``$share`` line is required (an ACL topic starting with ``$share`` would never match).
* On SIGHUP the broker re-reads both files and re-checks every connected client: a
  password client whose line is gone (or whose password changed) is disconnected at once;
  every client gets the rights of its new ``user`` block, or none. A client authenticated
  by certificate (``use_identity_as_username``) stays connected but loses all rights when
  its block is removed: its publishes are refused (PUBACK 0x87) and nothing is delivered
  to it. Messages it published *retained* before the revocation stay retained (Mosquitto
  does not re-check stored retained messages); the gateway must not trust a retained
  status of a revoked vehicle.

Everything here is synchronous and uses only the standard library.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ACL_FILE_NAME",
    "DEFAULT_ITERATIONS",
    "PASSWORD_FILE_NAME",
    "SALT_BYTES",
    "BrokerAuthFiles",
    "BrokerAuthSync",
    "ServiceIdentity",
    "VehicleIdentity",
    "generate_password",
    "hash_password",
    "render_acl",
    "render_password_file",
    "vehicle_topics",
    "verify_password",
]

log = logging.getLogger(__name__)

PASSWORD_FILE_NAME = "mosquitto.passwd"
ACL_FILE_NAME = "mosquitto.acl"

DEFAULT_ITERATIONS = 101
"""``mosquitto_passwd``'s default. Low on purpose: the broker pays it on every CONNECT, and a
fleet reconnects all at once after an outage. The iteration count protects guessable human
passwords; vehicles and services get :func:`generate_password` secrets (192 random bits),
which no iteration count makes easier or harder to brute-force."""

SALT_BYTES = 12
"""Mosquitto 2.0 accepts exactly 12 bytes of salt (and a 64-byte hash), nothing else."""

_HASH_BYTES = 64  # SHA-512

_VIN_RE = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
"""Same alphabet as :data:`schemas.vin.VIN_PATTERN` (a test keeps them equal); repeated here
so this package stays importable without pydantic."""

_SERVICE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

_B64 = r"[A-Za-z0-9+/]+={0,2}"
_HASH_RE = re.compile(rf"\$7\$[1-9][0-9]{{0,8}}\${_B64}\${_B64}|\$6\${_B64}\${_B64}")

_VEHICLE_WRITE = ("telemetry", "events", "status", "commands/result")
_VEHICLE_READ = ("commands", "feedback")


# --------------------------------------------------------------------------- passwords


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_password(password: str) -> bytes:
    if not password:
        raise ValueError("a broker password must not be empty")
    if "\x00" in password:
        # Mosquitto hashes strlen(password): the broker would see a shorter password
        raise ValueError("a broker password must not contain a NUL character")
    return password.encode("utf-8")


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """Return ``password`` hashed for a Mosquitto 2.0 password file (the part after ``:``).

    ``$7$<iterations>$<base64 salt>$<base64 hash>``, PBKDF2-HMAC-SHA512 over the UTF-8
    bytes, exactly what ``mosquitto_passwd -b`` writes. ``salt`` defaults to 12 random bytes
    (pass one only to reproduce a known hash).
    """
    raw = _check_password(password)
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if len(salt) != SALT_BYTES:
        raise ValueError(f"the salt must be {SALT_BYTES} bytes (Mosquitto's), got {len(salt)}")
    if not 1 <= iterations <= 999_999_999:
        raise ValueError(f"iterations must be 1..999999999, got {iterations}")
    digest = hashlib.pbkdf2_hmac("sha512", raw, salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def _decode_hash(hashed: str) -> tuple[int | None, bytes, bytes]:
    """Split a ``$7$`` (or legacy ``$6$``) hash into (iterations or None, salt, digest).

    Raises ``ValueError`` for anything Mosquitto 2.0.11 would drop from its password file.
    """
    if _HASH_RE.fullmatch(hashed) is None:
        raise ValueError(
            "not a Mosquitto password hash ($7$<iterations>$<salt>$<hash>; "
            "make one with hash_password())"
        )
    parts = hashed.split("$")
    iterations = int(parts[2]) if parts[1] == "7" else None
    try:
        salt = base64.b64decode(parts[-2], validate=True)
        digest = base64.b64decode(parts[-1], validate=True)
    except binascii.Error:
        raise ValueError("the salt or hash of a Mosquitto password hash is not base64") from None
    if len(salt) != SALT_BYTES or len(digest) != _HASH_BYTES:
        raise ValueError(
            f"a Mosquitto password hash needs a {SALT_BYTES}-byte salt and a "
            f"{_HASH_BYTES}-byte hash (Mosquitto drops other entries); got "
            f"{len(salt)} and {len(digest)} bytes"
        )
    return iterations, salt, digest


def verify_password(password: str, hashed: str) -> bool:
    """Whether Mosquitto would accept ``password`` for ``hashed``; False if malformed.

    Constant-time comparison. Also understands the older ``$6$`` (one SHA-512 round over
    password and salt) that Mosquitto 2.0 still accepts.
    """
    try:
        raw = _check_password(password)
        iterations, salt, digest = _decode_hash(hashed)
    except ValueError:
        return False
    if iterations is None:
        computed = hashlib.sha512(raw + salt).digest()
    else:
        computed = hashlib.pbkdf2_hmac("sha512", raw, salt, iterations)
    return hmac.compare_digest(computed, digest)


def generate_password() -> str:
    """A new random secret for a vehicle or service: 192 bits, URL-safe (32 characters).

    URL-safe so it survives environment variables, URLs and config files unquoted.
    """
    return secrets.token_urlsafe(24)


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True, slots=True)
class VehicleIdentity:
    """A vehicle allowed on the broker, its username being its VIN.

    ``password_hash`` is a :func:`hash_password` value, or None for a vehicle that
    authenticates by client certificate only (TLS listener with
    ``use_identity_as_username``, certificate CN = VIN): such a vehicle has no password-file
    line, so it cannot log in with a password at all, but it does get its ACL block.
    """

    vin: str
    password_hash: str | None = None

    def __post_init__(self) -> None:
        # validated here, not at render time, so a bad record fails where it was made
        if not isinstance(self.vin, str) or _VIN_RE.fullmatch(self.vin) is None:
            raise ValueError(
                f"invalid VIN {self.vin!r} for a broker identity: expected 17 characters "
                "from 0-9 and A-Z without I, O or Q"
            )
        if self.password_hash is not None:
            _decode_hash(self.password_hash)


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """One of the gateway's own accounts (ingest, command service): all of ``v1/#``.

    Names are 1-64 of ``A-Z a-z 0-9 . _ -``: nothing that could start a comment, split a
    ``user:hash`` line or end an ACL line.
    """

    username: str
    password_hash: str

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or _SERVICE_RE.fullmatch(self.username) is None:
            raise ValueError(
                f"invalid service account name {self.username!r}: use 1-64 characters "
                "from A-Z, a-z, 0-9, '.', '_' and '-'"
            )
        _decode_hash(self.password_hash)


def vehicle_topics(vin: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The topics a vehicle may (write, read): its own ``v1/vehicles/<VIN>/...`` only.

    Spelled out here (not imported from :mod:`schemas.topics`) to keep this package free of
    pydantic; a test checks they are the device contract's topics.
    """
    prefix = f"v1/vehicles/{vin}/"
    return (
        tuple(prefix + t for t in _VEHICLE_WRITE),
        tuple(prefix + t for t in _VEHICLE_READ),
    )


def _check_unique(vehicles: Sequence[VehicleIdentity], services: Sequence[ServiceIdentity]) -> None:
    seen: set[str] = set()
    for name in [*(v.vin for v in vehicles), *(s.username for s in services)]:
        if name in seen:
            raise ValueError(
                f"broker username {name!r} appears twice; each vehicle and service account "
                "needs its own name (Mosquitto would silently use only one of them)"
            )
        seen.add(name)


_PASSWORD_HEADER = (
    "# Generated by gateway.broker.auth (vehicles and service accounts); rewritten on every\n"
    "# change and re-read by the broker on SIGHUP, do not edit. Format username then hash\n"
    "# ($7$ = PBKDF2-SHA512, as mosquitto_passwd writes).\n"
)


def render_password_file(
    vehicles: Iterable[VehicleIdentity], services: Iterable[ServiceIdentity]
) -> str:
    """The password file: services first, then vehicles with a password, sorted by name.

    Sorted so the same identities always give the same bytes, which is how
    :meth:`BrokerAuthFiles.write` knows that nothing changed and no reload is needed.
    """
    vehicles, services = list(vehicles), list(services)
    _check_unique(vehicles, services)
    lines = [_PASSWORD_HEADER]
    lines.extend(f"{s.username}:{s.password_hash}\n" for s in sorted(services, key=_svc_key))
    lines.extend(
        f"{v.vin}:{v.password_hash}\n"
        for v in sorted(vehicles, key=_vin_key)
        if v.password_hash is not None
    )
    return "".join(lines)


def _svc_key(s: ServiceIdentity) -> str:
    return s.username


def _vin_key(v: VehicleIdentity) -> str:
    return v.vin


def render_acl(vehicles: Iterable[VehicleIdentity], services: Iterable[ServiceIdentity]) -> str:
    """The ACL file: one ``user`` block per service account and per vehicle, sorted.

    Certificate-only vehicles get their block too (the broker uses the certificate's CN as
    the username). With no identities at all the file holds only comments, which Mosquitto
    2.0 treats as "deny everything" (since the fix of CVE-2018-12550).
    """
    vehicles, services = list(vehicles), list(services)
    _check_unique(vehicles, services)
    out = [
        "# Generated by gateway.broker.auth; rewritten on every change and re-read by the\n"
        "# broker on SIGHUP, do not edit. No lines before the first user line: anonymous\n"
        "# clients get no rights (and allow_anonymous false refuses them).\n",
    ]
    for s in sorted(services, key=_svc_key):
        out.append(
            "\n# service account: reads and writes the whole contract, including through\n"
            "# shared subscriptions ($share/<group>/v1/..., checked against the real topic)\n"
            f"user {s.username}\n"
            "topic readwrite v1/#\n"
        )
    for v in sorted(vehicles, key=_vin_key):
        write, read = vehicle_topics(v.vin)
        out.append(f"\nuser {v.vin}\n")
        out.extend(f"topic write {t}\n" for t in write)
        out.extend(f"topic read {t}\n" for t in read)
    return "".join(out)


# --------------------------------------------------------------------------- files


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a reader (the broker on SIGHUP) sees the old file or
    the new one, never a half-written or missing one: a missing password file on reload
    would make Mosquitto disconnect every password client. The temporary file has ``mode``
    from the start, so a key is never readable by others, not even for a moment."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode != 0o600:  # what mkstemp creates
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # the rename itself must survive a crash too
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class BrokerAuthFiles:
    """The broker's password file and ACL file in one directory (mode 0600 each).

    Point :class:`~gateway.broker.BrokerConfig` at :attr:`password_file` and
    :attr:`acl_file`, call :meth:`ensure` before starting the broker (it refuses to start
    when a configured file is missing), then :meth:`write` and reload on every change.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()

    def __repr__(self) -> str:
        return f"<BrokerAuthFiles {self.directory}>"

    @property
    def password_file(self) -> Path:
        return self.directory / PASSWORD_FILE_NAME

    @property
    def acl_file(self) -> Path:
        return self.directory / ACL_FILE_NAME

    def _mkdir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def ensure(self) -> None:
        """Create files that are missing as valid files with no identities (deny everyone),
        so the broker can start before anything is provisioned. Existing files are kept."""
        self._mkdir()
        for path, text in [
            (self.password_file, render_password_file((), ())),
            (self.acl_file, render_acl((), ())),
        ]:
            if not path.exists():
                atomic_write(path, text)

    def write(
        self, vehicles: Iterable[VehicleIdentity], services: Iterable[ServiceIdentity]
    ) -> bool:
        """Render both files and replace those whose content changed; True if any did.

        Both are rendered before either is written, so invalid identities change nothing.
        The password file goes first: between the two replacements a new vehicle can log in
        but has no rights yet, never the other way round (a reload only happens after both).
        """
        vehicles, services = list(vehicles), list(services)
        wanted = [
            (self.password_file, render_password_file(vehicles, services)),
            (self.acl_file, render_acl(vehicles, services)),
        ]
        self._mkdir()
        changed = False
        for path, text in wanted:
            try:
                current: str | None = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                current = None
            if current != text:
                atomic_write(path, text)
                changed = True
        return changed


# --------------------------------------------------------------------------- sync


class BrokerAuthSync:
    """Keeps the broker's files equal to the identity source and reloads it on change.

    ``version()`` is cheap and changes whenever the identities change (for instance a
    counter in the state database bumped by every provisioning and revocation);
    ``identities()`` is the full list, read only when the version moved. ``reload()`` makes
    the broker re-read the files (:meth:`MosquittoProcess.reload
    <gateway.broker.MosquittoProcess.reload>`, or a SIGHUP to a broker we do not own).

    A version is only recorded as synced once its files are written *and* the reload
    succeeded, so a failure (database briefly unavailable, broker restarting) is retried
    on the next tick instead of being forgotten.
    """

    def __init__(
        self,
        files: BrokerAuthFiles,
        *,
        services: Sequence[ServiceIdentity],
        version: Callable[[], int],
        identities: Callable[[], Sequence[VehicleIdentity]],
        reload: Callable[[], None],
        interval_s: float = 0.5,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.files = files
        self.services = tuple(services)
        self.interval_s = interval_s
        self._version = version
        self._identities = identities
        self._reload = reload
        self._synced: int | None = None
        self._reload_pending = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def synced_version(self) -> int | None:
        """The version whose identities the broker has loaded (None before the first sync)."""
        return self._synced

    def sync_once(self) -> bool:
        """Write the files if the version moved, reload if they changed; True if reloaded.

        The version is read *before* the identities: if they change in between, the newer
        list is written under the older version and the next call writes it again (no
        change, no reload) instead of ever recording a version newer than the files.
        """
        with self._lock:
            version = self._version()
            if version == self._synced and not self._reload_pending:
                return False
            vehicles = list(self._identities())
            if self.files.write(vehicles, self.services):
                self._reload_pending = True
            reloaded = False
            if self._reload_pending:
                self._reload()
                self._reload_pending = False
                reloaded = True
            self._synced = version
            return reloaded

    def start(self) -> None:
        """Sync now and then every ``interval_s`` in a daemon thread, until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("BrokerAuthSync is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="broker-auth-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waits for a sync in progress, up to ``timeout``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                self.sync_once()
            except Exception:
                # log the first failure with its traceback, the repeats quietly
                log.log(
                    logging.DEBUG if self._failing else logging.WARNING,
                    "broker identity sync failed; retrying every %g s",
                    self.interval_s,
                    exc_info=True,
                )
                self._failing = True
            else:
                if self._failing:
                    log.info("broker identity sync works again (version %s)", self._synced)
                self._failing = False
            if self._stop.wait(self.interval_s):
                return
