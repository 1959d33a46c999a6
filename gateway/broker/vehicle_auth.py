"""Vehicle passwords without a broker-wide reload: a Mosquitto plugin of ours (decision 0055).

With vehicle passwords in Mosquitto's password file, every provisioning, revocation or new
password meant a SIGHUP, and Mosquitto 2.0.11 then checks the password of every connected
client again in its one thread (seconds at 20,000 units, every PUBACK waiting; decision
0049). ``plugin/vehicle_auth.c`` checks the vehicles' passwords from a table of its own
(:func:`gateway.broker.auth.render_vehicle_table`, the same ``$7$`` hashes), re-reads it
when the gateway replaces it, and disconnects exactly the units whose entry went or
changed. The password file keeps the service accounts and integrations. It also answers
the vehicles' rights (client id = VIN, their own topics only) from the same table, so the
Dynamic Security plugin holds no vehicle and a bulk change is one table swap (decision
0060).

Compiled where the broker runs, like the message budget (:mod:`gateway.broker.budget`),
and also against OpenSSL's ``libcrypto`` (PBKDF2-HMAC-SHA512; Debian's ``libssl-dev``).
Where it cannot be built, :func:`ensure_vehicle_auth_plugin` raises
:class:`VehicleAuthPluginUnavailableError` and ``telematics up`` keeps the vehicles in
the password file with a reload per change, as before, and says so.

Standard library only, like the rest of :mod:`gateway.broker`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from gateway.broker.budget import compile_broker_plugin
from gateway.errors import GatewayError

__all__ = [
    "VEHICLE_AUTH_PLUGIN_SOURCE",
    "VehicleAuthPluginUnavailableError",
    "ensure_vehicle_auth_plugin",
    "vehicle_auth_plugin_name",
]

VEHICLE_AUTH_PLUGIN_SOURCE = Path(__file__).with_name("plugin") / "vehicle_auth.c"
"""The plugin's C source, shipped in the package (package data)."""

_HEADERS = ("mosquitto_broker.h", "mosquitto_plugin.h", "mosquitto.h", "openssl/evp.h")
_INSTALL_HINT = (
    "install a C compiler, Mosquitto's plugin headers and OpenSSL's: sudo apt-get install -y "
    "gcc libc6-dev mosquitto-dev libmosquitto-dev libssl-dev (Debian/Ubuntu; "
    "scripts/setup.sh does)"
)


class VehicleAuthPluginUnavailableError(GatewayError):
    """The vehicle password plugin cannot be built here; the message says what is missing."""


def vehicle_auth_plugin_name(source: Path = VEHICLE_AUTH_PLUGIN_SOURCE) -> str:
    """The shared object's file name, one per version of the source."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return f"telematics_vehicle_auth-{digest}.so"


def ensure_vehicle_auth_plugin(
    directory: Path, *, source: Path = VEHICLE_AUTH_PLUGIN_SOURCE
) -> Path:
    """Return the compiled plugin in ``directory``, compiling it first if it is missing.
    Raises :class:`VehicleAuthPluginUnavailableError` when there is no compiler, no
    headers, or the compiler fails (its output in the message)."""
    return compile_broker_plugin(
        Path(directory) / vehicle_auth_plugin_name(source),
        source,
        what="the vehicle password plugin",
        error=VehicleAuthPluginUnavailableError,
        hint=_INSTALL_HINT,
        headers=_HEADERS,
        libraries=("crypto",),
    )
