"""The simulator against the real gateway: a coverage gap (tunnel, parking garage) is
uploaded as ordered batches on reconnect and the gateway stores every sample exactly once."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.broker import MosquittoProcess
from tests.support.gateway_process import GatewayProcess
from tests.support.unit_thread import VIN, UnitThread, parked_ev
from tests.support.waiting import wait_until


def stored(gateway: GatewayProcess) -> list[tuple[int, int]]:
    """(seq, ts) of the vehicle's stored samples, by seq."""
    if not gateway.db_path.exists():
        return []
    db = sqlite3.connect(f"file:{gateway.db_path}?mode=ro", uri=True)
    try:
        rows: list[tuple[int, int]] = db.execute(
            "SELECT s.seq, s.ts FROM samples s JOIN vehicles v ON v.id = s.vehicle_id "
            "WHERE v.vin = ? ORDER BY s.seq",
            (VIN,),
        ).fetchall()
    finally:
        db.close()
    return rows


def stored_seqs(gateway: GatewayProcess) -> list[int]:
    return [seq for seq, _ in stored(gateway)]


def test_coverage_gap_is_uploaded_in_order_and_stored_exactly_once(
    mosquitto: MosquittoProcess, start_gateway: Callable[..., GatewayProcess]
) -> None:
    gateway = start_gateway()
    unit = UnitThread(mosquitto, parked_ev()).start()
    try:
        wait_until(lambda: len(stored_seqs(gateway)) >= 3, what="live samples")
        assert unit.unit is not None
        unit.unit.force_offline()  # a tunnel: samples are taken and buffered
        wait_until(lambda: unit.stats().buffered >= 15, what="a buffered gap")
        unit.unit.restore()
        wait_until(lambda: unit.stats().pending == 0, what="the buffer to be uploaded")
        after = unit.stats()
        assert after.batches >= 1
        wait_until(lambda: len(stored_seqs(gateway)) >= after.published, what="every sample")
    finally:
        unit.stop()
    final = unit.stats()
    seqs = stored_seqs(gateway)
    # every sample the unit took is stored once, with no gap in its seq numbers
    assert len(seqs) == len(set(seqs)) == final.samples
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert final.dropped == 0
    # the buffered samples kept the time they were taken: time rises with seq throughout
    times = [ts for _, ts in stored(gateway)]
    assert times == sorted(times)
    assert len(set(times)) == len(times)
