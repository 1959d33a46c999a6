"""Pairing codes: the proof of possession that claims a car the maker registered
(docs/decisions/0021-vehicle-lifecycle.md).

A code is 12 characters of Crockford's base 32 (60 random bits), printed in three groups
(``7KQ2-M9XD-4TBN``); the state database keeps only its hash
(:func:`gateway.statedb.lifecycle.pairing_code_hash`). Wrong guesses are limited per VIN
(:data:`gateway.core.vehicle_lifecycle.PAIRING_LOCKOUT_AFTER`), so 60 bits are far more
than the guesses anyone gets.
"""

from __future__ import annotations

import secrets

from gateway.statedb.lifecycle import PAIRING_ALPHABET

__all__ = ["new_pairing_code"]


def new_pairing_code() -> str:
    """A fresh random code, grouped for reading aloud."""
    raw = "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(12))
    return f"{raw[0:4]}-{raw[4:8]}-{raw[8:12]}"
