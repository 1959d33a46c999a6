"""Edge brokers: unit-facing Mosquitto processes bridged to the core broker (decision 0038).

One Mosquitto process holds one descriptor per connection, and a process may have only so
many (20,000 in the container this was built in, not raisable without CAP_SYS_RESOURCE).
So ``telematics up --edge-brokers N`` runs N more brokers that the units connect to, each
with the logins and rights of the vehicles assigned to it (:func:`schemas.edges.edge_index`),
and each bridged to the core broker, which the gateways, the API and the fleet workers use
and which no vehicle can log in to.

The bridge (Mosquitto's own, configured by :func:`bridge_lines`):

* out: what units write (``telemetry``, ``events``, ``status``, ``commands/result``), in:
  what the installation sends them (``commands``, ``feedback``), all at QoS 1, retained
  flags kept; in, only what is published on the core under this edge's prefix
  (``edges/<i>/v1/vehicles/...``, :func:`schemas.edges.routed_topic`: the command service
  and the gateways route by VIN), the prefix stripped, so an edge gets its own vehicles'
  commands and no other's, and no restart is needed when a vehicle is provisioned;
* MQTT 5 to the core (``bridge_protocol_version mqttv50``), so a command's message expiry
  and properties reach the unit as the command service set them;
* ``cleansession false``: the core keeps the bridge's session (its subscription to the
  commands, and what was queued while the edge was away) and the edge keeps the bridge's
  queue of what units sent while the core was away; both brokers persist them;
* it logs in to the core as ``telematics-edge-<i>`` (client id bound to that name) with a
  password only the edges' configuration files hold (``secrets/mqtt-edge-bridge.password``);
  its rights there are :data:`gateway.broker.auth.BRIDGE_ACLS`; the edges themselves do not
  know that account, so it is refused on every unit listener;
* ``notifications false``: no ``$SYS/broker/connection/...`` state messages, which the
  core would refuse anyway.

Found by experiment on Mosquitto 2.0.11 (``tests/test_edge_brokers.py``): the bridge's
local subscriptions exist when a unit's first publish arrives, also while the core is
down (a fresh edge, the core down: PUBACK reason 0, forwarded later, not "no matching
subscribers"); messages queued on the edge while the core is down
outlive a clean restart of the edge; the bridge is not subject to the edge's Dynamic
Security rules (Mosquitto skips ACL checks for bridge connections).
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.edges import edge_prefix

__all__ = [
    "BRIDGE_IN",
    "BRIDGE_OUT",
    "BRIDGE_PASSWORD_FILE",
    "bridge_lines",
    "bridge_username",
    "edge_port",
]

BRIDGE_PASSWORD_FILE = "mqtt-edge-bridge.password"
"""The edges' bridge password in the installation's secrets directory."""

BRIDGE_OUT: tuple[str, ...] = tuple(
    f"v1/vehicles/+/{t}" for t in ("telemetry", "events", "status", "commands/result")
)
"""What the bridge forwards from an edge to the core: everything a unit may write."""

BRIDGE_IN: tuple[str, ...] = ("v1/vehicles/+/commands", "v1/vehicles/+/feedback")
"""What the bridge forwards from the core to an edge: everything a unit may read, of the
edge's own vehicles (under its prefix on the core, :func:`schemas.edges.edge_prefix`)."""


def bridge_username(edge: int) -> str:
    """The core's account (and client id) of edge ``edge``'s bridge."""
    if edge < 1:
        raise ValueError(f"edges are numbered from 1, got {edge}")
    return f"telematics-edge-{edge}"


def edge_port(core_port: int, edge: int) -> int:
    """Edge ``edge``'s port: the ports right after the core broker's."""
    return core_port + edge


def bridge_lines(
    edge: int, *, core_host: str, core_port: int, password: str, restart_s: Sequence[int] = (1, 5)
) -> tuple[str, ...]:
    """The bridge section of edge ``edge``'s configuration (``BrokerConfig.extra_lines``)."""
    if any(ch.isspace() for ch in password) or not password:
        raise ValueError("the bridge password must be non-empty and without white space")
    name = bridge_username(edge)
    host = f"[{core_host}]" if ":" in core_host else core_host
    low, high = restart_s
    return (
        f"connection {name}",
        f"address {host}:{core_port}",
        f"remote_clientid {name}",
        f"remote_username {name}",
        f"remote_password {password}",
        f"local_clientid {name}-local",
        "bridge_protocol_version mqttv50",
        "cleansession false",
        "notifications false",
        "bridge_outgoing_retain true",
        f"restart_timeout {low} {high}",
        "keepalive_interval 30",
        *(f"topic {t} out 1" for t in BRIDGE_OUT),
        # only this edge's vehicles': the core's publishers route by VIN (edge_prefix)
        *(f'topic {t} in 1 "" {edge_prefix(edge)}' for t in BRIDGE_IN),
    )
