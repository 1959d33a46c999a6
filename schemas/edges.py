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

__all__ = ["edge_index"]


def edge_index(vin: str, edges: int) -> int:
    """The edge (1..``edges``) that holds ``vin``'s login."""
    if edges < 1:
        raise ValueError(f"edges must be >= 1, got {edges}")
    digest = hashlib.sha256(vin.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % edges + 1
