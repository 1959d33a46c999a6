"""The one JSON line a benchmark prints with ``--json``: strict JSON.

Python's ``json.dumps`` writes a float that was not measured (NaN) or is unbounded as
``NaN`` / ``Infinity``, which are not JSON: ``jq``, JavaScript's ``JSON.parse`` and most
other parsers refuse the whole line. A figure that is not a number is written as ``null``
("not measured"), and ``allow_nan=False`` makes any other path to NaN an error here rather
than in the reader (decision 0065).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["finite_or_null", "strict_json"]


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def strict_json(value: Any) -> str:
    """``value`` as strict JSON (RFC 8259): not-a-number figures as ``null``."""
    return json.dumps(finite_or_null(value), allow_nan=False)
