"""The per-vehicle message budget: a Mosquitto plugin of ours, built where it runs
(decision 0048).

Mosquitto 2.0 has no per-client publish limit. One vehicle credential flooding its own
telemetry topic fills the gateway's queue in the broker (``max_queued_bytes``), and from
then on the broker acknowledges and drops every vehicle's QoS 1 messages (security review
6, decision 0043). ``plugin/budget.c`` keeps a token bucket of messages and one of payload
bytes per vehicle (user name = VIN) and refuses a message over either one by closing the
connection **without a PUBACK**: the unit resends it after its reconnect backoff, so an
honest unit loses nothing and a flooder gets no more than its budget through.

The plugin is C, so it is compiled where the installation runs: :func:`ensure_budget_plugin`
compiles the source shipped in this package with the system's C compiler against
Mosquitto's plugin headers (Debian: ``mosquitto-dev`` and ``libmosquitto-dev``, which
``scripts/setup.sh`` installs) into a directory of the caller's, once per source version.
Where that is impossible (no compiler, no headers) it raises
:class:`BudgetPluginUnavailableError` saying what is missing; ``telematics up`` then runs
without the budget and says so (see :mod:`gateway.cli.up`).

Standard library only, like the rest of :mod:`gateway.broker`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError

__all__ = [
    "BUDGET_FIELDS",
    "BUDGET_PLUGIN_SOURCE",
    "DEFAULT_BUDGET",
    "INCLUDE_DIRS",
    "BudgetPluginUnavailableError",
    "MessageBudget",
    "budget_plugin_name",
    "compile_broker_plugin",
    "ensure_budget_plugin",
]

BUDGET_PLUGIN_SOURCE = Path(__file__).with_name("plugin") / "budget.c"
"""The plugin's C source, shipped in the package (package data)."""

INCLUDE_DIRS: tuple[Path, ...] = (Path("/usr/include"), Path("/usr/local/include"))
"""Where ``mosquitto_broker.h`` and ``mosquitto_plugin.h`` are looked for (Debian's
``mosquitto-dev`` installs them in /usr/include, a source build in /usr/local/include).
Read at call time, so tests can monkeypatch it."""

_HEADERS = ("mosquitto_broker.h", "mosquitto_plugin.h", "mosquitto.h")
_INSTALL_HINT = (
    "install a C compiler and Mosquitto's plugin headers: sudo apt-get install -y gcc "
    "libc6-dev mosquitto-dev libmosquitto-dev (Debian/Ubuntu; scripts/setup.sh does)"
)


BUDGET_FIELDS = ("messages_per_s", "burst_messages", "bytes_per_s", "burst_bytes")
"""The budget's settings, in the plugin's and the command line's order."""


class BudgetPluginUnavailableError(GatewayError):
    """The budget plugin cannot be built here; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class MessageBudget:
    """What one vehicle may publish: a token bucket of messages and one of payload bytes.

    A full bucket lets ``burst_messages`` messages (``burst_bytes`` bytes) through at once;
    each refills at ``messages_per_s`` (``bytes_per_s``). A message over either bucket is
    refused by closing the connection without a PUBACK. The defaults (decision 0048): a
    unit's live telemetry is ~1 message a second, far below 200 messages a second. The
    bytes decide what one credential can cost the others: 512 KiB a second of one-signal
    samples is ~8,000 samples a second, a fifth of what one gateway process stores, and a
    burst of 4 MiB ~65,000 samples, ~1.5 s of its CPU; measured, an honest sample after a
    10 s flood of valid telemetry waited seconds with these numbers and minutes with 4 MiB
    a second and bursts of 32 MiB. A store-and-forward upload after days offline (batches
    of up to 1,000 samples) is paced to ~10 minutes for three days of 1 Hz reports. The
    whole fleet's worst case must still fit the gateway's queue (``max_queued_bytes``, 256
    MiB): see :meth:`fleet_bytes_per_s`.
    """

    messages_per_s: int = 200
    burst_messages: int = 2_000
    bytes_per_s: int = 512 * 1024
    burst_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in BUDGET_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"message budget {name} must be a positive integer, got {value!r}")

    def plugin_options(self) -> tuple[tuple[str, int], ...]:
        """The plugin's ``plugin_opt_<name> <value>`` pairs."""
        return tuple((name, int(getattr(self, name))) for name in BUDGET_FIELDS)

    def fleet_bytes_per_s(self, vehicles: int) -> int:
        """The most payload bytes per second ``vehicles`` units may publish together once
        their bursts are spent: what the gateway must read, or its queue in the broker
        grows by the difference."""
        return self.bytes_per_s * vehicles


DEFAULT_BUDGET = MessageBudget()


def _source_digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16]


def budget_plugin_name(source: Path = BUDGET_PLUGIN_SOURCE) -> str:
    """The shared object's file name: one per version of the source, so a changed source
    is compiled again and an old build is never loaded by mistake."""
    return f"telematics_budget-{_source_digest(source)}.so"


def _find_compiler(error: type[GatewayError], hint: str) -> str:
    for name in (os.environ.get("CC") or "", "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    raise error(f"no C compiler (cc, gcc or clang) on PATH; {hint}")


def _find_include_dir(headers: tuple[str, ...], error: type[GatewayError], hint: str) -> Path:
    for directory in INCLUDE_DIRS:
        if all((directory / h).is_file() for h in headers):
            return directory
    searched = ", ".join(str(d) for d in INCLUDE_DIRS)
    raise error(f"the headers {', '.join(headers)} are not all in {searched}; {hint}")


def compile_broker_plugin(
    target: Path,
    source: Path,
    *,
    what: str,
    error: type[GatewayError],
    hint: str,
    headers: tuple[str, ...] = _HEADERS,
    libraries: tuple[str, ...] = (),
) -> Path:
    """Return ``target``, compiling ``source`` into it first if it is missing (the shared
    code of our Mosquitto plugins: this one and :mod:`gateway.broker.vehicle_auth`).

    The compiler writes to a temporary file that is renamed into place, so a broker never
    loads a half-written object and two processes compiling at once both end with a good
    one. Raises ``error`` when there is no compiler, no headers, or the compiler fails (its
    output in the message).
    """
    if target.is_file():
        return target
    compiler = _find_compiler(error, hint)
    include = _find_include_dir(headers, error, hint)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".plugin-", suffix=".so", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = subprocess.run(
            [
                compiler,
                "-shared",
                "-fPIC",
                "-O2",
                "-Wall",
                f"-I{include}",
                "-o",
                str(tmp),
                str(source),
                *(f"-l{name}" for name in libraries),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise error(
                f"compiling {what} ({compiler} {source}) failed with "
                f"status {result.returncode}: {(result.stderr or result.stdout).strip()[-2000:]}"
            )
        tmp.chmod(0o755)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def ensure_budget_plugin(directory: Path, *, source: Path = BUDGET_PLUGIN_SOURCE) -> Path:
    """Return the compiled plugin in ``directory``, compiling it first if it is missing
    (:func:`compile_broker_plugin`). Raises :class:`BudgetPluginUnavailableError` when
    there is no compiler, no headers, or the compiler fails (its output in the message).
    """
    return compile_broker_plugin(
        Path(directory) / budget_plugin_name(source),
        source,
        what="the message budget plugin",
        error=BudgetPluginUnavailableError,
        hint=_INSTALL_HINT,
    )
