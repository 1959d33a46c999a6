"""Which edge broker a vehicle's unit connects to, when an installation runs several.

With ``telematics up --edge-brokers N`` units do not connect to the broker the gateways
use (the core) but to one of N unit-facing brokers ("edges", decision 0038), each bridged
to the core. A VIN belongs to exactly one edge, and only that edge knows its login. The
assignment is a pure function of the VIN and N, so the installation, provisioning and a
load generator agree on it without asking each other: the first 8 bytes of the VIN's
SHA-256 modulo N. Changing N moves most vehicles to another edge (their units must be
told their new URL), so N is chosen once per installation.
"""

from __future__ import annotations

import hashlib

__all__ = ["EDGE_TOPIC_ROOT", "edge_index", "edge_prefix", "routed_topic"]

EDGE_TOPIC_ROOT = "edges"
"""On the core broker, what the installation sends a unit (its ``commands`` and
``feedback``) is published under ``edges/<i>/`` + the device contract's topic, ``i`` its
edge: edge i's bridge subscribes to its own prefix only and strips it, so each edge gets
the messages of its own vehicles and the unit sees the contract's topic (decision 0038)."""


def edge_index(vin: str, edges: int) -> int:
    """The edge (1..``edges``) that holds ``vin``'s login."""
    if edges < 1:
        raise ValueError(f"edges must be >= 1, got {edges}")
    digest = hashlib.sha256(vin.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % edges + 1


def edge_prefix(edge: int) -> str:
    """The core's topic prefix of what goes to edge ``edge``'s units (``edges/<i>/``)."""
    if edge < 1:
        raise ValueError(f"edges are numbered from 1, got {edge}")
    return f"{EDGE_TOPIC_ROOT}/{edge}/"


def routed_topic(topic: str, vin: str, edges: int) -> str:
    """Where to publish ``topic`` (a unit's ``commands`` or ``feedback`` topic of ``vin``)
    on the core broker of an installation with ``edges`` edge brokers; 0 edges (the units
    connect to the core): ``topic`` itself."""
    if edges <= 0:
        return topic
    return edge_prefix(edge_index(vin, edges)) + topic
