"""The embedded store's packed sample encoding (``gateway.store.packing``): exact round trips,
stable signal ids, and what it saves (docs/decisions/0027-compact-sample-encoding.md)."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sim.loadgen import heartbeat_signals
from gateway.store import IngestBatch
from gateway.store.packing import (
    FORMAT,
    SIGNAL_IDS,
    CorruptSample,
    _Reader,
    mask_of,
    merge_state,
    pack,
    read_state,
    unpack,
    unpack_any,
)
from gateway.store.sqlite import SqliteTelemetryStore
from schemas import CATALOG, Sample

VIN = "WVWZZZ1JZXW000001"
T0 = 1_700_000_000_000

#: the ids written to disk by schema 5: a change here makes stored samples unreadable
#: (append new signals to SIGNAL_IDS instead)
IDS_V1_SHA256 = "50f4fb2f3af9f0e582ce2716ee9b59799020cc6f4c840ceba98cdba5f1e9dad2"


def _json_values(int_bits: int) -> st.SearchStrategy[object]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2 ** (int_bits - 1)), max_value=2 ** (int_bits - 1) - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=8,
    )


json_values = _json_values(70)  # packed samples take any integer
paths = st.sampled_from(SIGNAL_IDS) | st.text(min_size=1, max_size=40)


def _same(a: object, b: object) -> bool:
    """Equal with the types and, for floats, every bit (so -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@given(st.dictionaries(paths, json_values, max_size=40))
def test_any_signals_round_trip_exactly_in_order(signals: dict[str, object]) -> None:
    back = unpack(pack(signals))
    assert list(back) == list(signals)
    assert all(_same(back[k], v) for k, v in signals.items())


@given(st.floats(allow_nan=False))
def test_every_float_comes_back_bit_for_bit(value: float) -> None:
    (back,) = unpack(pack({"Vehicle.Speed": value})).values()
    assert _same(back, value)


@pytest.mark.parametrize("value", [0.0, -0.0, 21.0, 48.137154, 1e16, 5e-324, -1.5, 0.1 + 0.2])
def test_edge_floats_and_sizes(value: float) -> None:
    (back,) = unpack(pack({"Vehicle.Speed": value})).values()
    assert _same(back, value)


def test_common_values_are_a_few_bytes() -> None:
    # format byte + per signal: id, tag, value
    assert len(pack({"Vehicle.CurrentLocation.Latitude": 48.137154})) == 1 + 2 + 4
    assert len(pack({"Vehicle.Speed": 21.5})) == 1 + 2 + 2
    assert len(pack({"Vehicle.IsMoving": True})) == 1 + 2
    assert len(pack({"Vehicle.Diagnostics.DTCList": []})) == 1 + 3


def test_a_heartbeat_is_under_a_tenth_of_its_json() -> None:
    signals = heartbeat_signals(123, 456, driving=True)
    assert len(signals) == 28
    packed, text = pack(signals), orjson.dumps(signals)
    assert len(packed) < 130 < len(text) / 9


def test_every_catalog_signal_has_an_id_and_ids_never_move() -> None:
    assert set(CATALOG) <= set(SIGNAL_IDS)
    assert len(set(SIGNAL_IDS)) == len(SIGNAL_IDS) < 255
    first = "\n".join(SIGNAL_IDS[:32]).encode()
    assert hashlib.sha256(first).hexdigest() == IDS_V1_SHA256


@given(
    st.dictionaries(
        paths,
        # a state is JSON, as before schema 5: integers of 64 bits (a signal's are 32)
        st.tuples(_json_values(64), st.integers(min_value=-(2**62), max_value=2**62)),
        max_size=30,
    )
)
def test_a_latest_state_round_trips(state: dict[str, tuple[object, int]]) -> None:
    merged = merge_state(None, state)
    if not state:
        assert merged is None
        return
    assert merged is not None
    back = read_state(merged)
    assert back.keys() == state.keys()
    assert all(_same(back[k][0], v[0]) and back[k][1] == v[1] for k, v in state.items())


def test_a_state_keeps_each_signals_newest_value() -> None:
    stored = merge_state(None, {"Vehicle.Speed": (10.0, 5), "X.Y": (1, 5), "5": ("a", 5)})
    assert merge_state(stored, {"Vehicle.Speed": (9.0, 4)}) is None  # older: nothing changes
    merged = merge_state(stored, {"Vehicle.Speed": (11.0, 5), "X.Y": (0, 3), "5": ("b", 6)})
    assert merged is not None
    assert read_state(merged) == {"Vehicle.Speed": (11.0, 5), "X.Y": (1, 5), "5": ("b", 6)}


def test_masks_are_signed_64_bit_and_name_the_ids() -> None:
    assert mask_of(["Vehicle.Speed"]) == 1
    assert mask_of(["Vehicle.IsMoving", "Vehicle.Speed"]) == 3
    other = mask_of(["Not.A.Catalog.Path"])
    assert other == -(2**63)  # bit 63, as SQLite's signed integer


def test_garbage_is_a_corrupt_sample_error() -> None:
    with pytest.raises(CorruptSample):
        unpack(b"\x02\x00\x01")
    with pytest.raises(CorruptSample):
        unpack(pack({"Vehicle.Speed": 48.137154})[:-1])
    with pytest.raises(CorruptSample):
        read_state(b"not json")
    assert unpack_any('{"Vehicle.Speed": 1.5}') == {"Vehicle.Speed": 1.5}


def test_history_skips_samples_without_the_signal_and_pages_past_them(tmp_path: Path) -> None:
    store = SqliteTelemetryStore(tmp_path / "t.db")
    try:
        samples = [
            Sample(VIN, seq, T0 + seq, {"Vehicle.Speed": 1.0} if seq % 50 else {"X.Y": seq})
            for seq in range(1, 501)
        ]
        store.commit(IngestBatch(received_at=T0, samples=samples))
        points = store.history(VIN, ["X.Y"], tenure=1, start=0, end=T0 * 2, limit=4)
        assert [p.seq for p in points] == [50, 100, 150, 200]
        again = store.history(
            VIN, ["X.Y"], tenure=1, start=0, end=T0 * 2, limit=100, after=(T0 + 200, 200)
        )
        assert [p.seq for p in again] == [250, 300, 350, 400, 450, 500]
        assert [p.values for p in again][:1] == [{"X.Y": 250}]
    finally:
        store.close()


def test_a_version_4_file_is_read_as_it_was_and_grows_packed(tmp_path: Path) -> None:
    """Rows written before schema 5 (JSON text) stay as they are and are read alongside
    packed ones; the upgrade rewrites nothing."""
    path = tmp_path / "t.db"
    store = SqliteTelemetryStore(path)
    store.commit(IngestBatch(received_at=T0, samples=[Sample(VIN, 1, T0, {"Vehicle.Speed": 1.0})]))
    store.close()
    with sqlite3.connect(path) as db:  # make it what version 4 wrote
        db.execute("UPDATE samples SET signals = ?", ('{"Vehicle.Speed": 50.0}',))
        db.execute("ALTER TABLE samples DROP COLUMN mask")
        db.execute("DROP TABLE latest_state")
        db.execute(
            "CREATE TABLE latest (vehicle_id INTEGER NOT NULL, signal TEXT NOT NULL, "
            "value TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (vehicle_id, signal)) "
            "WITHOUT ROWID"
        )
        db.execute(
            "INSERT INTO latest VALUES (1, 'Vehicle.Speed', '50.0', ?), "
            "(1, 'Vehicle.Diagnostics.DTCList', '[\"P0301\"]', ?)",
            (T0, T0),
        )
        db.execute("PRAGMA user_version = 4")
    db.close()
    store = SqliteTelemetryStore(path)
    try:
        store.commit(
            IngestBatch(received_at=T0, samples=[Sample(VIN, 2, T0 + 1, {"Vehicle.Speed": 60.0})])
        )
        points = store.history(VIN, ["Vehicle.Speed"], tenure=1, start=0, end=T0 * 2, limit=9)
        assert [(p.seq, p.values) for p in points] == [
            (1, {"Vehicle.Speed": 50.0}),
            (2, {"Vehicle.Speed": 60.0}),
        ]
        state = store.vehicle_state(VIN, tenure=1)
        assert state is not None
        assert state.latest == {
            "Vehicle.Diagnostics.DTCList": (["P0301"], T0),
            "Vehicle.Speed": (60.0, T0 + 1),
        }
        assert [s.values for s in store.samples_after(0, limit=9)] == [
            {"Vehicle.Speed": 50.0},
            {"Vehicle.Speed": 60.0},
        ]
    finally:
        store.close()
    with sqlite3.connect(path) as check:
        kinds = check.execute("SELECT typeof(signals) FROM samples ORDER BY seq").fetchall()
        (version,) = check.execute("PRAGMA user_version").fetchone()
        tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master")}
    check.close()
    assert kinds == [("text",), ("blob",)]
    assert version == 5
    assert "latest" not in tables
    assert "latest_state" in tables


def _unpack_by_reader(blob: bytes) -> dict[str, object]:
    """The decoding as it was before the numbers were decoded inline (decision 0040):
    every key and value through ``_Reader``."""
    if not blob or blob[0] != FORMAT:
        raise CorruptSample("format")
    reader, out = _Reader(blob), {}
    try:
        while reader.pos < len(blob):
            i = blob[reader.pos]
            reader.pos += 1
            path = SIGNAL_IDS[i] if i != 255 else reader.bytes(reader.varint()).decode()
            out[path] = reader.value()
    except (IndexError, ValueError) as exc:
        raise CorruptSample(str(exc)) from exc
    return out


@given(st.dictionaries(paths, json_values, max_size=12), st.integers(0, 400), st.binary(max_size=3))
def test_any_blob_cut_or_grown_decodes_as_the_reader_does(
    signals: dict[str, object], cut: int, tail: bytes
) -> None:
    """A whole blob, a truncated one and one with bytes appended: the same values, or a
    :class:`CorruptSample` for both."""
    whole = pack(signals)
    for blob in (whole, whole[:cut], whole + tail):
        try:
            expected: object = _unpack_by_reader(blob)
        except CorruptSample:
            expected = CorruptSample
        try:
            got: object = unpack(blob)
        except CorruptSample:
            got = CorruptSample
        assert got == expected
