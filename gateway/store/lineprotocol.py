"""InfluxDB line protocol for telemetry samples, and the InfluxQL quoting the reader needs.

Pure functions, no IO. Written by hand rather than with ``influxdb-client``'s ``Point``:
for the same 20,000 four-signal samples, measured back to back on this machine (best of 3),
the library built 55,000 lines/s (one ``Point`` object per sample, its fields sorted, each
value checked), this module 352,000 (field keys escaped once per signal path, series keys
once per request body, a type switch per value). The gateway's whole ingest budget is
40,000 samples/s on 2 cores (docs/decisions/0015-influxdb-store.md). The format is small
and fixed: measurement, tags, fields, timestamp, with the escaping rules below from the
line protocol reference.

How a sample becomes a point (the schema, decision 0015):

* measurement :data:`MEASUREMENT`; tags ``vin`` and ``tenure`` (the holding period, see
  ``gateway.store.base``); the series is one (VIN, tenure);
* fields: ``seq`` as an integer, every signal under its VSS path: numbers as floats (a
  field's type is fixed per shard in InfluxDB, and a speed sent once as ``12`` and once
  as ``12.5`` would otherwise be refused; integer signals are turned back into ints by the
  catalog on reading), booleans as booleans, strings as strings, string arrays as their
  JSON text in a string field (the catalog says which signals are arrays);
* timestamp in nanoseconds: the sample's millisecond time plus ``seq`` modulo 1,000,000
  in the sub-millisecond digits (:func:`point_time`). InfluxDB keeps one point per series
  and timestamp, the later write overwriting the earlier: so a redelivered sample lands
  on itself (idempotent), and two samples of one vehicle in the same millisecond stay two
  points.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import orjson

from schemas import CATALOG, Datatype, SignalValue

__all__ = [
    "MEASUREMENT",
    "decode_value",
    "lines",
    "point_time",
    "quote_ident",
    "quote_string",
    "sample_line",
    "split_point_time",
]

MEASUREMENT = "telemetry"
_SUB_MS = 1_000_000

_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_FIELD_STRING = str.maketrans({'"': '\\"', "\\": "\\\\"})


def point_time(ts_ms: int, seq: int) -> int:
    """The point's nanosecond timestamp for the sample (vin, tenure, seq) at ``ts_ms``."""
    return ts_ms * _SUB_MS + seq % _SUB_MS


def split_point_time(ns: int) -> int:
    """The sample's millisecond time back from its point's timestamp."""
    return ns // _SUB_MS


def _escape_key(text: str) -> str:
    """Tag keys, tag values and field keys: comma, equals and space escaped. A backslash
    at the end would escape the separator after it, so it is doubled there."""
    escaped = text.translate(_KEY)
    return escaped + "\\" if escaped.endswith("\\") else escaped


_INFINITY = float("inf")
#: signal path -> its escaped field key and "=": the catalog's few dozen paths, computed once
_FIELD_KEYS: dict[str, str] = {}


def _field(value: SignalValue) -> str | None:
    kind = type(value)
    if kind is float:
        number = cast(float, value)
    elif kind is bool:
        return "true" if value else "false"
    elif kind is int:
        number = float(cast(int, value))
    elif kind is str:
        return '"' + cast(str, value).translate(_FIELD_STRING) + '"'
    elif isinstance(value, list):
        return '"' + orjson.dumps(value).decode().translate(_FIELD_STRING) + '"'
    else:
        return _field_of_subclass(value)
    # NaN and infinities: line protocol has no spelling for them
    return repr(number) if -_INFINITY < number < _INFINITY else None


def _field_of_subclass(value: SignalValue) -> str | None:
    """A value of a subclass of bool, int, float or str (an enum, say): as its base."""
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return _field(base(value))
    raise TypeError(f"not a signal value: {value!r}")


def _field_key(path: str) -> str:
    key = _FIELD_KEYS.get(path)
    if key is None:
        key = _FIELD_KEYS[path] = _escape_key(path) + "="
        if len(_FIELD_KEYS) > 10_000:  # unknown paths cannot grow it without bound
            _FIELD_KEYS.clear()
    return key


def _series(vin: str, tenure: int) -> str:
    return f"{MEASUREMENT},tenure={int(tenure)},vin={_escape_key(vin)} "


def _fields(seq: int, signals: Mapping[str, SignalValue]) -> str:
    fields = [f"seq={int(seq)}i"]
    for path, value in signals.items():
        encoded = _field(value)
        if encoded is not None:
            fields.append(_field_key(path) + encoded)
    return ",".join(fields)


def sample_line(
    vin: str, tenure: int, seq: int, ts_ms: int, signals: Mapping[str, SignalValue]
) -> str:
    """One sample as one line (no newline)."""
    return f"{_series(vin, tenure)}{_fields(seq, signals)} {point_time(ts_ms, seq)}"


def lines(rows: Iterable[tuple[str, int, int, int, Mapping[str, SignalValue]]]) -> bytes:
    """The request body for (vin, tenure, seq, ts, signals) rows (each series key built
    once per body)."""
    series: dict[tuple[str, int], str] = {}
    out = []
    for vin, tenure, seq, ts_ms, signals in rows:
        head = series.get((vin, tenure))
        if head is None:
            head = series[(vin, tenure)] = _series(vin, tenure)
        out.append(f"{head}{_fields(seq, signals)} {ts_ms * _SUB_MS + seq % _SUB_MS}")
    return "\n".join(out).encode()


def decode_value(path: str, value: object) -> SignalValue:
    """A field value as InfluxDB returns it (JSON), as the sample carried it: integers
    and string arrays by the catalog."""
    spec = CATALOG.get(path)
    integer = spec is not None and spec.datatype.is_integer
    if integer and isinstance(value, float | int) and not isinstance(value, bool):
        return int(value)
    if spec is not None and spec.datatype is Datatype.STRING_ARRAY and isinstance(value, str):
        decoded: list[str] = orjson.loads(value)
        return decoded
    if isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"unexpected value for {path!r}: {value!r}")


def quote_ident(name: str) -> str:
    """An InfluxQL identifier (measurement, tag or field key) in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(text: str) -> str:
    """An InfluxQL string literal (a tag value) in single quotes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
