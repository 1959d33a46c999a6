"""Section 11's float form of docs/device-contract.md, written again from its text (not from
``schemas.signing``): the independent unit of ``test_device_contract_paho`` and the property
test of ``test_signing_vectors`` both check the gateway against it (decision 0054)."""

from __future__ import annotations

import math


def canonical_float(x: float) -> str:
    """Section 11's float: the shortest round-trip digits (those of Python's repr), plain
    with a point for 0.00001 <= |x| < 10^16 (and 0), else d[.ddd]e+N / d[.ddd]e-N."""
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    if x == 0:
        return sign + "0.0"
    mantissa, _, exponent = repr(abs(x)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # the decimal exponent of the first significant digit
    first = (int(exponent) if exponent else 0) + len(whole) - 1
    first -= len(whole + fraction) - len(digits)
    digits = digits.rstrip("0") or "0"
    if 1e-5 <= abs(x) < 1e16:
        before = first + 1  # digits before the point
        if before <= 0:
            return f"{sign}0.{'0' * -before}{digits}"
        if before >= len(digits):
            return f"{sign}{digits}{'0' * (before - len(digits))}.0"
        return f"{sign}{digits[:before]}.{digits[before:]}"
    point = "." + digits[1:] if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{point}e{'+' if first >= 0 else '-'}{abs(first)}"
