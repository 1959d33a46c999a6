"""The broker URL: ``mqtt://host[:port]`` or ``mqtts://host[:port]``, the one parser of it.

The URL is part of what an installation tells its units (the unit credentials file carries
it), so the gateway (``--mqtt-url``, ``--broker-url``) and the simulator read it with this
one function: before, the two disagreed about ``mqtts``. Ports default by scheme (IANA:
1883 MQTT, 8883 MQTT over TLS). Credentials in the URL are refused: a URL ends up in
banners, logs and child processes' command lines, a password must not. A client that
cannot speak TLS parses with ``tls=False`` and gets a clear refusal of ``mqtts`` instead of
a plain connection to a TLS port. Standard library only. See
docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

from typing import Final, NamedTuple
from urllib.parse import urlsplit

__all__ = ["SCHEME_PORTS", "BrokerAddress", "parse_broker_url"]

#: default port per URL scheme (IANA: 1883 MQTT, 8883 MQTT over TLS)
SCHEME_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}

_EXAMPLE: Final = "mqtt://127.0.0.1:1883"


class BrokerAddress(NamedTuple):
    """Where to connect: host, port, and whether over TLS (``mqtts``)."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str, *, tls: bool = True) -> BrokerAddress:
    """Parse ``mqtt://host[:port]`` or (``tls``: the caller can speak TLS) also
    ``mqtts://host[:port]``; anything else raises ``ValueError`` saying what is wrong and
    showing the accepted form, because the URL usually comes straight from a command line.
    """
    if tls:
        expected = f"expected mqtt://host[:port] or mqtts://host[:port], e.g. {_EXAMPLE}"
    else:
        expected = f"expected mqtt://host:port (port defaults to 1883), e.g. {_EXAMPLE}"
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEME_PORTS or (scheme == "mqtts" and not tls):
        hint = " (TLS is not supported here yet)" if scheme in {"mqtts", "ssl"} else ""
        raise ValueError(f"invalid MQTT URL {url!r}: {expected}{hint}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"invalid MQTT URL {url!r}: no credentials in the URL (it ends up in logs and "
            f"command lines; give them separately); {expected}"
        )
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError(f"invalid MQTT URL {url!r}: no path or query allowed; {expected}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"invalid MQTT URL {url!r}: the port must be 1..65535; {expected}")
    if not parts.hostname:
        raise ValueError(f"invalid MQTT URL {url!r}: the host is missing; {expected}")
    return BrokerAddress(
        parts.hostname, SCHEME_PORTS[scheme] if port is None else port, scheme == "mqtts"
    )
