"""Vehicle Identification Numbers (ISO 3779): the one ID a vehicle carries through every system."""

from __future__ import annotations

import re

__all__ = ["VIN_PATTERN", "InvalidVinError", "is_valid_vin", "validate_vin"]

#: 17 characters from the VIN alphabet: digits and capital letters except I, O and Q
#: (they read like 1 and 0). The check digit (position 9) is mandatory only in North
#: America, so it is not enforced here.
VIN_PATTERN = r"^[A-HJ-NPR-Z0-9]{17}$"
_VIN_RE = re.compile(VIN_PATTERN)


class InvalidVinError(ValueError):
    """Raised by :func:`validate_vin` when a string is not a well-formed VIN."""

    def __init__(self, vin: str) -> None:
        self.vin = vin
        super().__init__(
            f"invalid VIN {vin!r}: expected 17 characters from 0-9 and A-Z without I, O or Q"
        )


def is_valid_vin(vin: str) -> bool:
    return _VIN_RE.fullmatch(vin) is not None


def validate_vin(vin: str) -> str:
    """Return ``vin`` unchanged if it is well formed, else raise :class:`InvalidVinError`."""
    if not is_valid_vin(vin):
        raise InvalidVinError(vin)
    return vin
