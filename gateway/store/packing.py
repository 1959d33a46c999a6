"""The compact encoding of a sample's signals in the embedded store (schema version 5).

A 28-signal report was ~1,300 bytes of JSON per row, almost all of it the signal paths
(``Vehicle.Powertrain.TractionBattery.StateOfCharge.Current`` is 56 bytes for a 4-byte
value). Here a signal is a one-byte id (its position in :data:`SIGNAL_IDS`) and a value of
one to a few bytes: ~110 bytes for the same report (docs/decisions/0027-compact-sample-
encoding.md). The encoding is exact: :func:`unpack` gives back the values :func:`pack` was
given, type for type (an integer stays an integer, ``21.0`` stays a float, a float's every
bit), in the same order, so the history API answers as it did from JSON.

Layout: one format byte (:data:`FORMAT`), then per signal a key and a value.

* key: the signal's id (0-254), or 255, the path's UTF-8 length (varint) and the path, for
  a path that has no id (the store never refuses to keep a value it was given);
* value: a tag byte, then what it says: ``0`` false, ``1`` true, ``3`` an integer
  (zigzag varint), ``0x10 + k`` a float equal to ``m / 10**k`` for the zigzag varint ``m``
  that follows (``k`` 0-9, used only when that division gives back the very same float,
  so ``48.137154`` is 4 bytes, ``21.5`` 2), ``4`` any other float (8 bytes, little-endian
  IEEE 754), ``5`` a string (varint length, UTF-8), ``6`` a list (varint count, values),
  ``7`` anything else as JSON (varint length, bytes).

:func:`mask` is a 63-bit set of the ids present (bit 63: a path without an id), stored
beside the blob so SQLite can skip samples without the signals a history query asks for.

**Ids are on disk: never reorder or remove an entry of** :data:`SIGNAL_IDS`; a new catalog
signal is appended (``tests/test_store_packing.py`` checks every catalog path has an id).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

__all__ = [
    "FORMAT",
    "SIGNAL_IDS",
    "CorruptSample",
    "mask",
    "mask_of",
    "merge_state",
    "pack",
    "read_state",
    "unpack",
    "unpack_any",
]

#: the first byte of every packed blob; another encoding would take another number
FORMAT: Final = 1

#: signal path -> id is the position here. Append only (see the module docstring).
SIGNAL_IDS: Final[tuple[str, ...]] = (
    "Vehicle.Speed",
    "Vehicle.IsMoving",
    "Vehicle.TraveledDistance",
    "Vehicle.TraveledDistanceSinceStart",
    "Vehicle.CurrentLocation.Latitude",
    "Vehicle.CurrentLocation.Longitude",
    "Vehicle.CurrentLocation.Heading",
    "Vehicle.CurrentLocation.Altitude",
    "Vehicle.CurrentLocation.HorizontalAccuracy",
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
    "Vehicle.Powertrain.TractionBattery.Charging.IsCharging",
    "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit",
    "Vehicle.Powertrain.Range",
    "Vehicle.Powertrain.FuelSystem.RelativeLevel",
    "Vehicle.Powertrain.FuelSystem.IsFuelLevelLow",
    "Vehicle.Powertrain.CombustionEngine.Speed",
    "Vehicle.Powertrain.CombustionEngine.IsRunning",
    "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure",
    "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked",
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row1.DriverSide.Window.Position",
    "Vehicle.Cabin.HVAC.AmbientAirTemperature",
    "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature",
    "Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed",
    "Vehicle.Body.Lights.Hazard.IsSignaling",
    "Vehicle.Body.Horn.IsActive",
    "Vehicle.Exterior.AirTemperature",
    "Vehicle.LowVoltageSystemState",
    "Vehicle.LowVoltageBattery.CurrentVoltage",
    "Vehicle.Diagnostics.DTCCount",
    "Vehicle.Diagnostics.DTCList",
)
_ID: Final[dict[str, int]] = {path: i for i, path in enumerate(SIGNAL_IDS)}
#: the key bytes of each path (an id byte, or the escape and the path)
_KEY: Final[dict[str, bytes]] = {path: bytes((i,)) for path, i in _ID.items()}
_NAMED: Final = 255
#: bit of :func:`mask` for a path without an id (or an id beyond the first 63)
OTHER_BIT: Final = 1 << 63
_MASK_IDS: Final = 63

_FALSE, _TRUE, _NULL, _INT, _F64, _STR, _LIST, _JSON, _DEC = 0, 1, 2, 3, 4, 5, 6, 7, 0x10
_MAX_SCALE: Final = 9
_POW10: Final = tuple(10.0**k for k in range(_MAX_SCALE + 1))
_EXACT: Final = 2**53
_F64_LE: Final = struct.Struct("<d")


class CorruptSample(ValueError):
    """A stored blob this module cannot read: damaged data, a defect (an HTTP 500), not an
    unavailable store (a :class:`~gateway.errors.StoreError`, 503)."""


def _varint(n: int, out: bytearray) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _key(path: str) -> bytes:
    key = _KEY.get(path)
    if key is None:
        raw = path.encode()
        out = bytearray((_NAMED,))
        _varint(len(raw), out)
        key = bytes(out + raw)
    return key


def _float(v: float, out: bytearray) -> None:
    """``repr`` is the shortest decimal that reads back as ``v``, so its digits ``m`` and
    their scale ``k`` give ``m / 10**k == v`` exactly (int / int rounds correctly)."""
    r = repr(v)
    if "e" not in r and "n" not in r and r != "-0.0":  # not 1e+16, inf, nan, nor -0.0
        whole, _, frac = r.partition(".")
        if frac == "0":
            frac = ""
        m = int(whole + frac)
        if len(frac) <= _MAX_SCALE and -_EXACT < m < _EXACT:
            out.append(_DEC + len(frac))
            _varint(m * 2 if m >= 0 else -m * 2 - 1, out)
            return
    out.append(_F64)
    out += _F64_LE.pack(v)


def _value(v: Any, out: bytearray) -> None:
    t = type(v)
    if t is float:
        _float(v, out)
    elif t is bool:
        out.append(_TRUE if v else _FALSE)
    elif t is int:
        out.append(_INT)
        _varint(v * 2 if v >= 0 else -v * 2 - 1, out)
    elif t is str:
        raw = v.encode()
        out.append(_STR)
        _varint(len(raw), out)
        out += raw
    elif t is list:
        out.append(_LIST)
        _varint(len(v), out)
        for item in v:
            _value(item, out)
    elif v is None:
        out.append(_NULL)
    else:
        raw = orjson.dumps(v)
        out.append(_JSON)
        _varint(len(raw), out)
        out += raw


def pack(signals: Mapping[str, Any]) -> bytes:
    """The packed form of one sample's signals (path -> JSON value)."""
    out = bytearray((FORMAT,))
    keys = _KEY
    for path, value in signals.items():
        key = keys.get(path)
        out += key if key is not None else _key(path)
        _value(value, out)
    return bytes(out)


def mask_of(paths: Iterable[str]) -> int:
    """The bits of these paths: SQLite's 64-bit integers are signed, so the result is made
    a signed value (bit 63 is the sign)."""
    bits = 0
    for path in paths:
        i = _ID.get(path)
        bits |= OTHER_BIT if i is None or i >= _MASK_IDS else 1 << i
    return bits - (1 << 64) if bits & OTHER_BIT else bits


def mask(signals: Mapping[str, Any]) -> int:
    """The set of signal ids in a sample, for :func:`mask_of`'s queries."""
    return mask_of(signals)


class _Reader:
    __slots__ = ("blob", "pos")

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.pos = 1

    def varint(self) -> int:
        blob, pos = self.blob, self.pos
        n = shift = 0
        while True:
            b = blob[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                return n
            shift += 7

    def bytes(self, n: int) -> bytes:
        start = self.pos
        self.pos = start + n
        if self.pos > len(self.blob):
            raise IndexError("truncated")
        return self.blob[start : self.pos]

    def value(self) -> Any:
        tag = self.blob[self.pos]
        self.pos += 1
        if tag >= _DEC:
            z = self.varint()
            m = z >> 1 if not z & 1 else -(z >> 1) - 1
            return m / _POW10[tag - _DEC]
        if tag == _INT:
            z = self.varint()
            return z >> 1 if not z & 1 else -(z >> 1) - 1
        if tag == _TRUE:
            return True
        if tag == _FALSE:
            return False
        if tag == _F64:
            return _F64_LE.unpack(self.bytes(8))[0]
        if tag == _STR:
            return self.bytes(self.varint()).decode()
        if tag == _LIST:
            return [self.value() for _ in range(self.varint())]
        if tag == _NULL:
            return None
        if tag == _JSON:
            return orjson.loads(self.bytes(self.varint()))
        raise ValueError(f"unknown value tag {tag}")


def unpack(blob: bytes) -> dict[str, Any]:
    """The signals :func:`pack` was given, in their order."""
    if not blob or blob[0] != FORMAT:
        raise CorruptSample(f"unknown sample encoding {blob[:1]!r}")
    reader = _Reader(blob)
    out: dict[str, Any] = {}
    end = len(blob)
    pos, ids, pow10 = 1, SIGNAL_IDS, _POW10
    try:
        while pos < end:
            i = blob[pos]
            pos += 1
            if i == _NAMED:
                reader.pos = pos
                path = reader.bytes(reader.varint()).decode()
                pos = reader.pos
            else:
                path = ids[i]
            tag = blob[pos]
            # the numbers (most values) decoded here, as _Reader.value does, without its
            # calls per value: the rules worker decodes every sample it evaluates
            if tag >= _DEC or tag == _INT:
                pos += 1
                z = shift = 0
                while True:
                    b = blob[pos]
                    pos += 1
                    z |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                m = z >> 1 if not z & 1 else -(z >> 1) - 1
                out[path] = m if tag == _INT else m / pow10[tag - _DEC]
            else:
                reader.pos = pos
                out[path] = reader.value()
                pos = reader.pos
    except (IndexError, ValueError) as exc:
        raise CorruptSample(f"a damaged sample: {exc}") from exc
    return out


def _state_key(path: str) -> str:
    i = _ID.get(path)
    return str(i) if i is not None else "." + path


#: path -> its key in a state object
_STATE_KEY: Final[dict[str, str]] = {path: str(i) for path, i in _ID.items()}


def merge_state(stored: bytes | str | None, new: Mapping[str, tuple[Any, int]]) -> bytes | None:
    """A vehicle's latest state with ``new`` (path -> (value, ts of its sample)) merged in,
    a value replaced only by one at least as new; None if nothing changed. The state is
    JSON (orjson parses and writes it in C: merging a 28-signal report costs ~5 us where
    a packed form cost ~60 us of Python), an object of key -> [value, ts], the key a
    signal's id in decimal, or ``.`` and the path for a path without one."""
    state: dict[str, list[Any]] = orjson.loads(stored) if stored is not None else {}
    keys = _STATE_KEY
    changed = False
    for path, (value, ts) in new.items():
        key = keys.get(path)
        if key is None:
            key = _state_key(path)
        held = state.get(key)
        if held is None or ts >= held[1]:
            state[key] = [value, ts]
            changed = True
    return orjson.dumps(state) if changed else None


def read_state(stored: bytes | str) -> dict[str, tuple[Any, int]]:
    """The state :func:`merge_state` wrote: path -> (value, ts)."""
    try:
        state = orjson.loads(stored)
        return {
            (key[1:] if key[0] == "." else SIGNAL_IDS[int(key)]): (value, ts)
            for key, (value, ts) in state.items()
        }
    except (IndexError, ValueError, TypeError) as exc:
        raise CorruptSample(f"a damaged latest state: {exc}") from exc


def unpack_any(stored: bytes | str) -> dict[str, Any]:
    """A stored sample's signals: packed (schema 5 on), or the JSON text written by
    earlier versions (rows written before the upgrade are read as they are)."""
    if isinstance(stored, str):
        return dict(orjson.loads(stored))
    return unpack(stored)
