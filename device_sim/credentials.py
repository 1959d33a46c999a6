"""The unit credentials file: defined in :mod:`schemas.credentials` (the gateway writes it,
units read it, and the gateway must not import the simulator); re-exported here for the
simulator's modules and its users."""

from schemas.credentials import (
    FORMAT,
    UnitCredentials,
    VehicleCredential,
    dump_credentials,
    load_credentials,
    parse_credentials,
    write_credentials,
)

__all__ = [
    "FORMAT",
    "UnitCredentials",
    "VehicleCredential",
    "dump_credentials",
    "load_credentials",
    "parse_credentials",
    "write_credentials",
]
