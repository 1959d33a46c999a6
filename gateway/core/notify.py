"""Notifications, decided without IO: who may see an event, which webhook wants it, how a
delivery is signed and checked, when a failed one is tried again, and which webhook URLs
are acceptable.

Pure functions (the clock and the resolved addresses are arguments), so the live stream
(``gateway.api.routes.stream``), the webhook worker (``gateway.notify``) and a receiver's
documentation all share one definition. See docs/decisions/0016-command-jobs-and-notifications.md.

**Signature** (the scheme of Stripe's ``Stripe-Signature``): header
``Telematics-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``. The
timestamp is signed with the body, so a captured delivery replayed later fails the
tolerance check (:data:`DEFAULT_TOLERANCE_S`, 5 minutes); a receiver that must not act
twice also remembers the event id (``id`` in the body) for that long.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from gateway.core.policy import Principal, Role

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "EventScope",
    "UnacceptableUrl",
    "check_webhook_url",
    "is_public_address",
    "next_attempt_delay_s",
    "sign",
    "signature_header",
    "type_matches",
    "verify_signature",
    "visible_to",
]

SIGNATURE_HEADER: Final = "Telematics-Signature"
#: how old a delivery's timestamp may be (either way: clocks differ) before it is refused
DEFAULT_TOLERANCE_S: Final = 300
#: the event types a webhook may ask for (decision 0016; alerts and trips: decision 0017).
#: ``alert.raised``: the rules opened an alert; ``alert.updated``: it got markedly worse
#: (a higher peak, a critical level); ``alert.ended``: its condition cleared by itself;
#: ``alert.acknowledged`` and ``alert.cleared``: a person's actions; ``trip.finished``: a
#: trip was stored; ``trip.updated``: a late upload changed a stored trip (recomputed);
#: ``maintenance.due``: a vehicle's service plan found a service due (issue 16, decision 0026)
EVENT_TYPES: Final = (
    "command.updated",
    "command_job.created",
    "command_job.finished",
    "alert.raised",
    "alert.updated",
    "alert.ended",
    "alert.acknowledged",
    "alert.cleared",
    "trip.finished",
    "trip.updated",
    "maintenance.due",
)


# --- scope -----------------------------------------------------------------------------------

_ACCOUNT_READERS: Final = frozenset({Role.FLEET_MANAGER, Role.FLEET_VIEWER, Role.OWNER})


@dataclass(frozen=True, slots=True)
class EventScope:
    """Who an event concerns: the account it belongs to (None: administrators only) and
    the user who caused it (they see it even without reading the whole account)."""

    account_id: int | None
    actor_user_id: int | None


def visible_to(principal: Principal, scope: EventScope) -> bool:
    """May ``principal`` see an event: administrators every one; fleet managers, viewers
    and owners every event of their account; anyone the events they caused themselves
    (a driver's own commands). Nothing of another account, ever."""
    if principal.is_admin:
        return True
    if scope.actor_user_id is not None and scope.actor_user_id == principal.user_id:
        return True
    return (
        principal.account_id is not None
        and scope.account_id == principal.account_id
        and principal.role in _ACCOUNT_READERS
    )


def type_matches(patterns: Iterable[str], event_type: str) -> bool:
    """Does a webhook that asked for ``patterns`` (exact types, ``command.*``, or ``*``)
    want ``event_type``?"""
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


# --- signing ---------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of the ``Telematics-Signature`` header of a delivery."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify_signature(
    header: str,
    body: bytes,
    secret: str,
    *,
    now_s: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """The receiver's check (documented in docs/webhooks.md): the header parses, its
    timestamp is within ``tolerance_s`` of ``now_s``, and one of its ``v1`` signatures
    equals the HMAC of the exact bytes received (compared in constant time)."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures or abs(now_s - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


# --- retries ---------------------------------------------------------------------------------


def next_attempt_delay_s(
    attempts: int, *, base_s: float, cap_s: float, max_attempts: int
) -> float | None:
    """After ``attempts`` failed attempts, how long until the next one (``base_s``,
    doubled each time, at most ``cap_s``); None when ``max_attempts`` are spent."""
    if attempts >= max_attempts:
        return None
    return float(min(cap_s, base_s * 2 ** (attempts - 1)))


# --- webhook URLs ----------------------------------------------------------------------------


class UnacceptableUrl(ValueError):
    """A webhook URL the gateway will not call; the message says why."""


def is_public_address(address: str) -> bool:
    """Is ``address`` (an IP literal) a globally routable unicast address? Loopback,
    private, link-local (cloud metadata at 169.254.169.254), shared, multicast, reserved and
    unspecified addresses are not."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _IPV6_REFUSED):
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


#: IPv6 ranges refused outright: deprecated site-local (fec0::/10), the IPv4-compatible
#: (::/96) and IPv4-translated (::ffff:0:0:0/96) forms, which some stacks still route to
#: the IPv4 address inside
_IPV6_REFUSED: Final = tuple(
    ipaddress.IPv6Network(n) for n in ("fec0::/10", "::/96", "::ffff:0:0:0/96")
)
#: NAT64 prefixes (RFC 6052, RFC 8215): the last 32 bits are the IPv4 address reached
_NAT64: Final = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches: IPv4-mapped (::ffff:a.b.c.d), 6to4
    (2002:aabb:ccdd::) or NAT64 (64:ff9b::a.b.c.d); None for a plain IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def check_webhook_url(url: str, *, resolved: Sequence[str] | None, allow_private: bool) -> None:
    """:class:`UnacceptableUrl` unless ``url`` is http(s) with a host, no credentials, and
    (unless ``allow_private``) every address it resolves to (``resolved``; None: not
    resolved yet, only an IP literal host is checked) is public."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise UnacceptableUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnacceptableUrl("only http and https URLs are accepted")
    if not host:
        raise UnacceptableUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnacceptableUrl("credentials in the URL are not accepted (the signature proves us)")
    if allow_private:
        return
    addresses = list(resolved) if resolved is not None else []
    if resolved is None:
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            return  # a name: checked when it is resolved, at each delivery
    for address in addresses:
        if not is_public_address(address):
            # the address itself is not named: the answer would map internal DNS
            raise UnacceptableUrl(
                f"{host} is (or resolves to) a private, loopback or link-local address; "
                "the operator must allow private webhook targets for that"
            )
