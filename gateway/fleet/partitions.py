"""Which partition of the rules worker a VIN belongs to.

``crc32(VIN) mod count``: stable across processes and Python runs (``hash()`` of a string
is salted per process, so two workers would disagree), cheap, and even enough for VINs.
Every process of an installation must use the same ``count`` (the partitions' cursors are
stored per number; changing it needs the worker stopped, see ``worker``).
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = ["DEFAULT_PARTITIONS", "partition_of"]

#: enough for a few workers to share the load; each is one row in the state database
DEFAULT_PARTITIONS: Final = 16


def partition_of(vin: str, count: int) -> int:
    return zlib.crc32(vin.encode("ascii")) % count
