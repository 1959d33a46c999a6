"""The HTTP API against a real SQLite database, through FastAPI's TestClient.

Every test seeds its own database file in tmp_path with the store's own writer
(``SqliteTelemetryStore.commit``), exactly as the ingest process would, then reads it back
over HTTP: no mocks, so the SQL, the JSON shapes and the error handlers are all exercised.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.api import ApiSettings
from gateway.api.params import iso, parse_timestamp, split_signals
from gateway.errors import ConfigurationError
from gateway.store import (
    IngestBatch,
    QuarantineEntry,
    StatusChange,
    open_store,
)
from schemas import CATALOG, Event, EventType, Reason, Rejection, Sample, StatusState
from tests.support.api import admin_client

with warnings.catch_warnings():
    # Starlette >= 1.x asks for ``httpx2`` and warns (an error under our filterwarnings)
    # once, when its test client is first imported with plain ``httpx``; nothing in these
    # tests depends on which of the two is installed.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    from fastapi.testclient import TestClient

# --- data ----------------------------------------------------------------------------------

T0 = 1_764_230_400_000  # 2025-11-27T08:00:00.000Z
VIN_A = "WVWZZZ1JZXW000001"  # online, ten speed samples one second apart
VIN_B = "WVWZZZ1JZXW000002"  # offline, one recent sample
VIN_C = "WVWZZZ1JZXW000003"  # never sent a status message
UNKNOWN_VIN = "WVWZZZ1JZXW999999"
SPEED = "Vehicle.Speed"
LAT = "Vehicle.CurrentLocation.Latitude"
BAD_JSON = b'{"vin": "\xff\xfe'
#: the API's clock for presence: VIN_A was heard from at T0 + 20 s, well within the silence
#: limit (tests/test_presence_and_feedback.py covers the limit itself)
SEEDED_NOW = T0 + 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _merge(*parts: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0.0) + value
    return out


def _rejected(reason: Reason, received_at: int, **kw: Any) -> QuarantineEntry:
    vin = kw.get("vin") or "unknown"
    return QuarantineEntry(
        received_at=received_at,
        topic=f"v1/vehicles/{vin}/telemetry",
        payload=kw.pop("payload", b'{"vin": "%s"}' % vin.encode()),
        rejection=Rejection(reason, f"{reason.value} detail", **kw),
    )


def seed(path: Path) -> None:
    """Two commits, as two ingest batches would make them (the second redelivers one sample
    and one event, so the duplicate counters move)."""
    recent = now_ms() - 10 * 60 * 1000
    samples = [
        Sample(VIN_A, i, T0 + i * 1000, {SPEED: 10.5 + i} | ({LAT: 48.1 + i} if i % 2 == 0 else {}))
        for i in range(10)
    ]
    samples.append(
        Sample(
            VIN_A,
            10,
            T0 + 10_000,
            {"Vehicle.IsMoving": True, "Vehicle.Diagnostics.DTCList": ["P0301"]},
        )
    )
    samples.append(Sample(VIN_B, 1, recent, {SPEED: 99.0}))
    samples.append(Sample(VIN_B, 2, recent - 2 * 60 * 60 * 1000, {SPEED: 1.0}))
    samples.append(Sample(VIN_C, 1, T0, {SPEED: 0.0}))
    quarantine = [
        _rejected(Reason.MALFORMED_JSON, T0 + 1, vin=VIN_A, payload=BAD_JSON),
        _rejected(Reason.UNKNOWN_SIGNAL, T0 + 2, vin=VIN_A, seq=3, signal="Vehicle.Foo"),
        _rejected(Reason.OUT_OF_RANGE, T0 + 3, vin=VIN_B, seq=1, signal=SPEED),
        _rejected(Reason.INVALID_VIN, T0 + 4, vin="bad-vin"),
        _rejected(Reason.INVALID_TOPIC, T0 + 5),
    ]
    counters = _merge(
        {
            (metrics.MESSAGES_RECEIVED, "telemetry"): 14,
            (metrics.MESSAGES_RECEIVED, "status"): 2,
            (metrics.MESSAGES_RECEIVED, "invalid"): 1,
            (metrics.QUARANTINED, Reason.MALFORMED_JSON.value): 1,
            (metrics.QUARANTINED, Reason.UNKNOWN_SIGNAL.value): 1,
            (metrics.QUARANTINED, Reason.OUT_OF_RANGE.value): 1,
            (metrics.QUARANTINED, Reason.INVALID_VIN.value): 1,
            (metrics.QUARANTINED, Reason.INVALID_TOPIC.value): 1,
        },
        metrics.commit_seconds_counters(0.002),
        metrics.commit_seconds_counters(0.02),
    )
    store = open_store(path)
    try:
        store.commit(
            IngestBatch(
                received_at=T0 + 20_000,
                samples=samples,
                events=[Event(VIN_A, 1, T0, EventType.IGNITION_ON)],
                statuses=[
                    StatusChange(VIN_A, StatusState.ONLINE, T0),
                    StatusChange(VIN_B, StatusState.OFFLINE, T0 + 5),
                ],
                quarantine=quarantine,
                seen={VIN_A: T0 + 20_000, VIN_B: T0 + 5, VIN_C: T0},
                counters=counters,
            )
        )
        store.commit(
            IngestBatch(
                received_at=T0 + 30_000,
                samples=[samples[0]],
                events=[
                    Event(VIN_A, 1, T0, EventType.IGNITION_ON),
                    Event(VIN_A, 2, T0 + 1, EventType.DTC_SET, code="P0301"),
                ],
                counters=_merge(
                    {(metrics.MESSAGES_RECEIVED, "telemetry"): 1},
                    metrics.commit_seconds_counters(2.0),
                ),
            )
        )
    finally:
        store.close()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "telemetry.sqlite"


@pytest.fixture
def client(db_path: Path) -> Iterator[TestClient]:
    """The API over a seeded database, with small history limits (default 5, max 50)."""
    seed(db_path)
    settings = ApiSettings(
        db_path, max_history_limit=50, default_history_limit=5, clock_ms=lambda: SEEDED_NOW
    )
    with admin_client(settings) as c:
        yield c


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """Assert the status and the error envelope; return its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], list)
    return error


# --- settings and start-up -----------------------------------------------------------------


def test_settings_reject_default_limit_above_max(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="default_history_limit"):
        ApiSettings(tmp_path / "db", max_history_limit=10, default_history_limit=11)


def test_startup_creates_the_schema_of_a_missing_database(db_path: Path) -> None:
    with admin_client(ApiSettings(db_path)) as c:
        assert db_path.is_file()
        body = c.get("/v1/vehicles").json()
        assert body == {"items": [], "next": None}
        health = c.get("/healthz").json()
        assert (health["status"], health["database"]) == ("ok", "ok")


def test_reads_see_commits_made_after_startup(db_path: Path) -> None:
    with admin_client(ApiSettings(db_path)) as c:
        assert c.get("/v1/vehicles").json()["items"] == []
        seed(db_path)
        assert len(c.get("/v1/vehicles").json()["items"]) == 3


# --- /v1/vehicles --------------------------------------------------------------------------


def test_list_vehicles(client: TestClient) -> None:
    r = client.get("/v1/vehicles")
    assert r.status_code == 200
    body = r.json()
    assert body["next"] is None
    a, b, c = body["items"]
    assert [a["vin"], b["vin"], c["vin"]] == [VIN_A, VIN_B, VIN_C]
    assert [a["online"], b["online"], c["online"]] == [True, False, None]
    assert a == {
        "vin": VIN_A,
        "reported": True,
        "online": True,
        "first_seen": T0 + 20_000,
        "first_seen_iso": "2025-11-27T08:00:20.000Z",
        "last_seen": T0 + 20_000,
        "last_seen_iso": "2025-11-27T08:00:20.000Z",
        "status_changed_at": T0,
        "status_changed_at_iso": "2025-11-27T08:00:00.000Z",
        "offline_reason": None,
        "missing_samples": 0,
        "missing_events": 0,
    }
    assert b["offline_reason"] == "status"
    assert c["offline_reason"] is None
    assert c["status_changed_at"] is None
    assert c["status_changed_at_iso"] is None


def test_list_vehicles_pages(client: TestClient) -> None:
    first = client.get("/v1/vehicles", params={"limit": 2}).json()
    assert [v["vin"] for v in first["items"]] == [VIN_A, VIN_B]
    assert first["next"] is not None
    second = client.get("/v1/vehicles", params={"limit": 2, "cursor": first["next"]}).json()
    assert [v["vin"] for v in second["items"]] == [VIN_C]
    assert second["next"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "W10"}, "cursor"),  # base64 of [], not one of ours
        ({"cursor": "x" * 201}, "cursor"),
    ],
)
def test_list_vehicles_rejects_bad_paging(
    client: TestClient, params: dict[str, int], field: str
) -> None:
    error = error_of(client.get("/v1/vehicles", params=params), 422, "invalid_request")
    assert error["details"][0]["loc"] == ["query", field]
    assert f"'{field}'" in error["message"]


# --- /v1/vehicles/{vin} --------------------------------------------------------------------


def test_vehicle_state(client: TestClient) -> None:
    r = client.get(f"/v1/vehicles/{VIN_A}")
    assert r.status_code == 200
    body = r.json()
    assert body["vin"] == VIN_A
    assert body["online"] is True
    assert body["last_seen_iso"] == "2025-11-27T08:00:20.000Z"
    state = body["state"]
    assert set(state) == {SPEED, LAT, "Vehicle.IsMoving", "Vehicle.Diagnostics.DTCList"}
    assert state[SPEED] == {
        "value": 19.5,
        "ts": T0 + 9000,
        "ts_iso": "2025-11-27T08:00:09.000Z",
        "unit": "km/h",
    }
    assert state[LAT]["value"] == 56.1
    assert state[LAT]["unit"] == CATALOG[LAT].unit == "degrees"
    assert state["Vehicle.IsMoving"] == {
        "value": True,
        "ts": T0 + 10_000,
        "ts_iso": "2025-11-27T08:00:10.000Z",
        "unit": None,
    }
    assert state["Vehicle.Diagnostics.DTCList"]["value"] == ["P0301"]


def test_vehicle_unknown_vin_is_404(client: TestClient) -> None:
    error = error_of(client.get(f"/v1/vehicles/{UNKNOWN_VIN}"), 404, "vehicle_not_found")
    assert UNKNOWN_VIN in error["message"]
    assert "/v1/vehicles" in error["message"]


@pytest.mark.parametrize("vin", [VIN_A.lower(), "WVWZZZ1JZXW00000", "WVWZZZ1JZXW00000O"])
def test_vehicle_malformed_vin_is_422(client: TestClient, vin: str) -> None:
    error = error_of(client.get(f"/v1/vehicles/{vin}"), 422, "invalid_vin")
    assert error["details"] == [
        {
            "loc": ["path", "vin"],
            "msg": error["details"][0]["msg"],
            "type": "invalid_vin",
            "input": vin,
        }
    ]
    assert "17 characters" in error["message"]


# --- /v1/vehicles/{vin}/history ------------------------------------------------------------


def history(client: TestClient, vin: str = VIN_A, /, **params: Any) -> Any:
    return client.get(f"/v1/vehicles/{vin}/history", params=params)


def test_history_time_window_is_start_inclusive_end_exclusive(client: TestClient) -> None:
    r = history(client, signals=SPEED, start=T0 + 2000, end=T0 + 5000)
    assert r.status_code == 200
    body = r.json()
    assert body["vin"] == VIN_A
    assert body["signals"] == [SPEED]
    assert (body["start"], body["end"]) == (T0 + 2000, T0 + 5000)
    assert (body["start_iso"], body["end_iso"]) == (
        "2025-11-27T08:00:02.000Z",
        "2025-11-27T08:00:05.000Z",
    )
    assert body["next"] is None
    assert body["items"] == [
        {"seq": i, "ts": T0 + i * 1000, "ts_iso": iso(T0 + i * 1000), "values": {SPEED: 10.5 + i}}
        for i in (2, 3, 4)
    ]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2025-11-27T08:00:02Z", "2025-11-27T08:00:05.000Z"),
        ("2025-11-27T09:00:02+01:00", "2025-11-27T07:00:05-01:00"),
        ("2025-11-27T08:00:02", str(T0 + 5000)),  # no offset: UTC
    ],
)
def test_history_accepts_iso_timestamps(client: TestClient, start: str, end: str) -> None:
    body = history(client, signals=SPEED, start=start, end=end).json()
    assert (body["start"], body["end"]) == (T0 + 2000, T0 + 5000)
    assert [p["seq"] for p in body["items"]] == [2, 3, 4]


@pytest.mark.parametrize(("field", "value"), [("start", 1765000000), ("end", "99999999999")])
def test_history_refuses_epoch_seconds(client: TestClient, field: str, value: object) -> None:
    # 1765000000 is December 2025 in seconds; read as milliseconds it was January 1970 and
    # the answer was a silently empty history
    r = history(client, signals=SPEED, **{field: value})
    error = error_of(r, 422, "invalid_request")
    assert "milliseconds since the epoch; this looks like seconds, multiply by 1000" in str(error)
    assert error["details"][0]["loc"] == ["query", field]


def test_history_start_zero_still_means_from_the_beginning(client: TestClient) -> None:
    # 0 is the epoch in seconds and milliseconds alike: not refused
    assert history(client, signals=SPEED, start=0, end=T0 + 1000).status_code == 200
    assert history(client, signals=SPEED, start=10**11, end=T0 + 1000).status_code == 200


def test_history_unencoded_plus_in_offset_still_parses(client: TestClient) -> None:
    # a person typing "+01:00" into a URL sends a space; the API puts the "+" back
    r = client.get(
        f"/v1/vehicles/{VIN_A}/history?signals={SPEED}"
        "&start=2025-11-27T09:00:02+01:00&end=2025-11-27T09:00:05+01:00"
    )
    assert r.status_code == 200, r.text
    assert [p["seq"] for p in r.json()["items"]] == [2, 3, 4]


def test_history_defaults_to_the_last_hour(client: TestClient) -> None:
    before = now_ms()
    body = history(client, VIN_B, signals=SPEED).json()
    after = now_ms()
    assert before <= body["end"] <= after
    assert body["end"] - body["start"] == 60 * 60 * 1000
    # the sample 10 minutes ago is in, the one 2 hours ago is not
    assert [(p["seq"], p["values"]) for p in body["items"]] == [(1, {SPEED: 99.0})]


def test_history_start_only_ends_now(client: TestClient) -> None:
    body = history(client, VIN_B, signals=SPEED, start=0).json()
    assert [p["seq"] for p in body["items"]] == [2, 1]  # oldest first


def test_history_signals_repeated_or_comma_separated(client: TestClient) -> None:
    window = {"start": T0, "end": T0 + 4000}
    repeated = client.get(
        f"/v1/vehicles/{VIN_A}/history", params={"signals": [SPEED, LAT], **window}
    ).json()
    commas = history(client, signals=f"{SPEED}, {LAT},{SPEED}", **window).json()
    assert repeated["signals"] == commas["signals"] == [SPEED, LAT]
    assert repeated["items"] == commas["items"]
    assert [p["values"] for p in repeated["items"]] == [
        {SPEED: 10.5, LAT: 48.1},
        {SPEED: 11.5},
        {SPEED: 12.5, LAT: 50.1},
        {SPEED: 13.5},
    ]


def test_history_only_points_carrying_a_requested_signal(client: TestClient) -> None:
    body = history(client, signals=LAT, start=T0, end=T0 + 60_000, limit=50).json()
    assert [p["seq"] for p in body["items"]] == [0, 2, 4, 6, 8]
    assert all(set(p["values"]) == {LAT} for p in body["items"])


def test_history_limit_and_cursor(client: TestClient) -> None:
    window = {"signals": SPEED, "start": T0, "end": T0 + 60_000}
    limited = history(client, **window, limit=3).json()
    assert [p["seq"] for p in limited["items"]] == [0, 1, 2]
    assert limited["next"] is not None
    rest = history(client, **window, limit=50, cursor=limited["next"]).json()
    assert [p["seq"] for p in rest["items"]] == list(range(3, 10))
    assert rest["next"] is None
    exact = history(client, **window, limit=10).json()
    assert len(exact["items"]) == 10
    assert exact["next"] is None
    default = history(client, **window).json()  # settings.default_history_limit
    assert len(default["items"]) == 5
    assert default["next"] is not None
    # a cursor of another list is refused, not misread
    vehicles_cursor = client.get("/v1/vehicles", params={"limit": 1}).json()["next"]
    wrong = history(client, **window, cursor=vehicles_cursor)
    assert error_of(wrong, 422, "invalid_request")["details"][0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize("limit", [0, 51])
def test_history_limit_bounds(client: TestClient, limit: int) -> None:
    r = history(client, signals=SPEED, limit=limit)
    error = error_of(r, 422, "invalid_request")
    assert error["details"][0]["loc"] == ["query", "limit"]


def test_history_unknown_signal_is_422(client: TestClient) -> None:
    r = history(client, signals=f"{SPEED},Vehicle.Sped,vehicle.speed")
    error = error_of(r, 422, "invalid_request")
    assert "'Vehicle.Sped'" in error["message"]
    assert "/v1/catalog" in error["message"]
    assert [(d["loc"], d["type"], d["input"]) for d in error["details"]] == [
        (["query", "signals"], "unknown_signal", "Vehicle.Sped"),
        (["query", "signals"], "unknown_signal", "vehicle.speed"),
    ]


@pytest.mark.parametrize("query", ["", "?signals=", "?signals=,%20,"])
def test_history_requires_signals(client: TestClient, query: str) -> None:
    error = error_of(client.get(f"/v1/vehicles/{VIN_A}/history{query}"), 422, "invalid_request")
    assert error["details"][0]["loc"] == ["query", "signals"]


@pytest.mark.parametrize(
    ("start", "end"),
    [(T0, T0), (T0 + 1, T0), ("2025-11-27T08:00:00Z", "2025-11-27T09:00:00+02:00")],
)
def test_history_start_must_be_before_end(client: TestClient, start: Any, end: Any) -> None:
    error = error_of(history(client, signals=SPEED, start=start, end=end), 422, "invalid_request")
    assert error["details"][0]["loc"] == ["query", "start"]
    assert error["details"][0]["type"] == "time_range"
    assert "must be before end" in error["message"]


@pytest.mark.parametrize(
    ("param", "value"),
    [("start", "yesterday"), ("end", "2025-13-01T00:00:00Z"), ("start", "-5"), ("end", "1e3")],
)
def test_history_bad_time_is_422(client: TestClient, param: str, value: str) -> None:
    error = error_of(history(client, signals=SPEED, **{param: value}), 422, "invalid_request")
    assert error["details"][0]["loc"] == ["query", param]
    assert error["details"][0]["input"] == value


def test_history_unknown_and_malformed_vin(client: TestClient) -> None:
    error_of(history(client, UNKNOWN_VIN, signals=SPEED), 404, "vehicle_not_found")
    error_of(history(client, "nope", signals=SPEED), 422, "invalid_vin")


# --- /v1/catalog ---------------------------------------------------------------------------


def test_catalog(client: TestClient) -> None:
    r = client.get("/v1/catalog")
    assert r.status_code == 200
    body = r.json()
    assert body["contract_version"] == "v1"
    assert body["signals"] == [spec.to_json() for spec in CATALOG.values()]


# --- /v1/quarantine ------------------------------------------------------------------------


def ids(r: Any) -> list[int]:
    assert r.status_code == 200, r.text
    return [e["id"] for e in r.json()["items"]]


def test_quarantine_newest_first_with_raw_payload(client: TestClient) -> None:
    body = client.get("/v1/quarantine").json()
    assert [e["id"] for e in body["items"]] == [5, 4, 3, 2, 1]
    assert body["next"] is None
    oldest = body["items"][-1]
    assert oldest == {
        "id": 1,
        "received_at": T0 + 1,
        "received_at_iso": "2025-11-27T08:00:00.001Z",
        "topic": f"v1/vehicles/{VIN_A}/telemetry",
        "reason": "malformed_json",
        "detail": "malformed_json detail",
        "vin": VIN_A,
        "seq": None,
        "signal": None,
        "payload_text": '{"vin": "\ufffd\ufffd',
        "payload_base64": base64.b64encode(BAD_JSON).decode(),
        "payload_size": len(BAD_JSON),
        "payload_truncated": False,
        "payload_sha256": hashlib.sha256(BAD_JSON).hexdigest(),
    }
    assert base64.b64decode(oldest["payload_base64"]) == BAD_JSON
    signal_level = body["items"][-2]
    assert (signal_level["seq"], signal_level["signal"]) == (3, "Vehicle.Foo")


def test_quarantine_pages_with_a_cursor(client: TestClient) -> None:
    first = client.get("/v1/quarantine", params={"limit": 2}).json()
    assert [e["id"] for e in first["items"]] == [5, 4]
    second = client.get("/v1/quarantine", params={"limit": 2, "cursor": first["next"]}).json()
    assert [e["id"] for e in second["items"]] == [3, 2]
    last = client.get("/v1/quarantine", params={"limit": 2, "cursor": second["next"]}).json()
    assert [e["id"] for e in last["items"]] == [1]
    assert last["next"] is None


def test_quarantine_filters(client: TestClient) -> None:
    assert ids(client.get("/v1/quarantine", params={"reason": "out_of_range"})) == [3]
    assert ids(client.get("/v1/quarantine", params={"reason": "vin_mismatch"})) == []
    assert ids(client.get("/v1/quarantine", params={"vin": VIN_A})) == [2, 1]
    # a malformed VIN is a valid filter: refused input is often about one
    assert ids(client.get("/v1/quarantine", params={"vin": "bad-vin"})) == [4]
    both = client.get("/v1/quarantine", params={"vin": VIN_A, "reason": "unknown_signal"})
    assert ids(both) == [2]


def test_quarantine_unknown_reason_lists_the_valid_ones(client: TestClient) -> None:
    error = error_of(
        client.get("/v1/quarantine", params={"reason": "bogus"}), 422, "invalid_request"
    )
    assert error["details"][0]["loc"] == ["query", "reason"]
    assert error["details"][0]["input"] == "bogus"
    for reason in Reason:
        assert f"'{reason.value}'" in error["message"]


@pytest.mark.parametrize(
    ("params", "field"), [({"cursor": "bogus"}, "cursor"), ({"limit": 1001}, "limit")]
)
def test_quarantine_bad_paging(client: TestClient, params: dict[str, int], field: str) -> None:
    error = error_of(client.get("/v1/quarantine", params=params), 422, "invalid_request")
    assert error["details"][0]["loc"] == ["query", field]


# --- /healthz ------------------------------------------------------------------------------


def test_healthz_ok(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert (body["status"], body["database"]) == ("ok", "ok")
    components = body["components"]
    assert components["telemetry_store"]["status"] == "ok"
    assert components["state_database"]["status"] == "ok"
    # no command service and no gateway reporting here: nothing to say, nothing failed
    assert components["broker"]["status"] == "unknown"
    assert components["ingest"]["status"] == "unknown"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["components"]) == {"telemetry_store", "state_database", "broker"}


def _broken_db(tmp_path: Path, kind: str) -> Path:
    if kind == "directory":
        return tmp_path
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"this is not a database\n" * 512)
    return path


@pytest.mark.parametrize("kind", ["directory", "corrupt"])
def test_healthz_503_when_the_database_is_unreadable(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = _broken_db(tmp_path, kind)
    with (
        caplog.at_level(logging.ERROR, logger="gateway.api"),
        admin_client(ApiSettings(path)) as c,
    ):
        r = c.get("/healthz")
        # the API started despite the database (and said so in the log)
        assert "cannot prepare the telemetry database" in caplog.text
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["database"] == "unavailable"
    assert body["components"]["telemetry_store"]["status"] == "unavailable"
    assert body["error"]["code"] == "database_unavailable"
    assert str(path) in body["error"]["message"]


@pytest.mark.parametrize("kind", ["directory", "corrupt"])
def test_routes_answer_503_when_the_database_is_unreadable(tmp_path: Path, kind: str) -> None:
    with admin_client(ApiSettings(_broken_db(tmp_path, kind))) as c:
        for url in ("/v1/vehicles", f"/v1/vehicles/{VIN_A}", "/v1/quarantine", "/metrics"):
            error = error_of(c.get(url), 503, "database_unavailable")
            assert "/healthz" in error["message"]
        # the catalog needs no database
        assert c.get("/v1/catalog").status_code == 200


# --- /metrics ------------------------------------------------------------------------------


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics(client: TestClient) -> None:
    values = scrape(client)

    def v(name: str, **labels: str) -> float:
        return values[(name, frozenset(labels.items()))]

    received = metrics.MESSAGES_RECEIVED
    assert v(received, channel="telemetry") == 15
    assert v(received, channel="status") == 2
    assert v(received, channel="invalid") == 1
    assert v(received, channel="events") == 0  # never counted: exported as 0
    assert v(metrics.SAMPLES_STORED) == 14
    assert v(metrics.SAMPLES_DUPLICATE) == 1
    assert v(metrics.EVENTS_STORED) == 2
    assert v(metrics.EVENTS_DUPLICATE) == 1
    seeded = {"malformed_json", "unknown_signal", "out_of_range", "invalid_vin", "invalid_topic"}
    for reason in Reason:  # every reason is exported, 0 if never counted
        assert v(metrics.QUARANTINED, reason=reason.value) == (reason in seeded), reason

    hist = metrics.COMMIT_SECONDS
    # commits of 0.002 s, 0.02 s and 2.0 s
    expected_buckets = {
        "0.001": 0,
        "0.0025": 1,
        "0.005": 1,
        "0.01": 1,
        "0.025": 2,
        "0.05": 2,
        "0.1": 2,
        "0.25": 2,
        "0.5": 2,
        "1.0": 2,
        "+Inf": 3,
    }
    for le, count in expected_buckets.items():
        assert v(f"{hist}_bucket", le=le) == count, le
    assert v(f"{hist}_count") == 3
    assert v(f"{hist}_sum") == pytest.approx(2.022)

    assert v("telematics_vehicles") == 3
    assert v("telematics_vehicles_online") == 1


def test_metrics_of_an_empty_database_are_all_zero(db_path: Path) -> None:
    with admin_client(ApiSettings(db_path)) as c:
        values = scrape(c)
    assert values
    assert set(values.values()) == {0.0}
    assert (metrics.QUARANTINED, frozenset({("reason", "wrong_type")})) in values


def test_metrics_openmetrics_on_request(client: TestClient) -> None:
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    assert "telematics_samples_stored_total 14.0" in r.text


# --- documentation -------------------------------------------------------------------------


#: every path of the API (a new one is added here on purpose)
API_PATHS = {
    "/v1/analytics/fault-codes",
    "/v1/assistance/{token}",
    "/v1/maintenance/check",
    "/v1/service-partners",
    "/v1/service-partners/vehicles",
    "/v1/service-plans",
    "/v1/vehicles/{vin}/dealer",
    "/v1/vehicles/{vin}/diagnostics",
    "/v1/vehicles/{vin}/grants/{grant_id}/handover",
    "/v1/integrations",
    "/v1/integrations/{credential_id}",
    "/v1/reports/faults",
    "/v1/reports/utilization",
    "/v1/transfers",
    "/v1/transfers/{transfer_id}",
    "/v1/transfers/{transfer_id}/accept",
    "/v1/transfers/{transfer_id}/cancel",
    "/v1/transfers/{transfer_id}/decline",
    "/v1/vehicles/{vin}/assistance-shares",
    "/v1/vehicles/{vin}/assistance-shares/{share_id}",
    "/v1/vehicles/{vin}/claim",
    "/v1/vehicles/{vin}/decommission",
    "/v1/vehicles/{vin}/lifecycle",
    "/v1/vehicles/{vin}/lifecycle/registration",
    "/v1/vehicles/{vin}/pairing-code",
    "/v1/vehicles/{vin}/service",
    "/v1/vehicles/{vin}/transfers",
    "/v1/vehicles",
    "/v1/vehicles/{vin}",
    "/v1/vehicles/{vin}/history",
    "/v1/catalog",
    "/v1/quarantine",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/vehicles/{vin}/commands",
    "/v1/commands/{command_id}",
    "/v1/commands/{command_id}/cancel",
    "/v1/commands/{command_id}/events",
    "/v1/command-types",
    "/v1/auth/token",
    "/v1/auth/revoke",
    "/v1/auth/register",
    "/v1/me",
    "/v1/api-keys",
    "/v1/api-keys/{key_id}",
    "/v1/accounts",
    "/v1/accounts/{account_id}",
    "/v1/users",
    "/v1/users/{user_id}",
    "/v1/vehicles/{vin}/registration",
    "/v1/vehicles/{vin}/credentials",
    "/v1/vehicles/{vin}/grants",
    "/v1/vehicles/{vin}/grants/{grant_id}",
    "/v1/vehicles/{vin}/invitations",
    "/v1/vehicles/{vin}/invitations/{invitation_id}",
    "/v1/invitations",
    "/v1/invitations/{invitation_id}/accept",
    "/v1/invitations/{invitation_id}/decline",
    "/v1/users/{user_id}/api-keys",
    "/v1/audit",
    # fleet management (issue 13)
    "/v1/vehicles/{vin}/events",
    "/v1/fleets",
    "/v1/fleets/{fleet_id}",
    "/v1/fleets/{fleet_id}/vehicles",
    "/v1/fleets/{fleet_id}/vehicles/{vin}",
    "/v1/accounts/{account_id}/rule-settings",
    "/v1/drivers",
    "/v1/drivers/{driver_id}",
    "/v1/drivers/{driver_id}/assignments",
    "/v1/drivers/{driver_id}/assignments/{assignment_id}",
    "/v1/geofences",
    "/v1/geofences/{geofence_id}",
    "/v1/alerts",
    "/v1/alerts/acknowledge",
    "/v1/alerts/{alert_id}/acknowledge",
    "/v1/alerts/{alert_id}/clear",
    "/v1/trips",
    "/v1/reports/vehicles",
    "/v1/reports/drivers",
    # bulk commands and notifications (issue 13)
    "/v1/command-jobs",
    "/v1/command-jobs/{job_id}",
    "/v1/command-jobs/{job_id}/cancel",
    "/v1/stream",
    "/v1/webhooks",
    # the web dashboard (issue 14): its login and the live map's feed
    "/v1/auth/session",
    "/v1/positions/stream",
    "/v1/webhooks/{webhook_id}",
    "/v1/webhooks/{webhook_id}/deliveries",
    "/v1/webhooks/{webhook_id}/test",
}


def test_docs_and_openapi(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert client.get("/redoc").status_code == 404  # not offered: it would need a CDN
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["info"]["title"] == "Telematics Gateway API"
    assert set(spec["paths"]) == API_PATHS
    error_ref = "#/components/schemas/ErrorResponse"
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op["summary"], path
            assert op["description"], path
            # reads answer 200; a write may answer 201 Created, 202 Accepted (a webhook's
            # test delivery, queued) or 204 No Content instead
            codes = set(op["responses"])
            assert "200" in codes or (method != "get" and codes & {"201", "202", "204"}), path
            assert op["responses"]["500"]["content"]["application/json"]["schema"]["$ref"] == (
                error_ref
            )
            if op.get("parameters"):
                schema = op["responses"]["422"]["content"]["application/json"]["schema"]
                assert schema["$ref"] == error_ref, path
    vehicle = spec["paths"]["/v1/vehicles/{vin}"]["get"]["responses"]
    assert vehicle["404"]["content"]["application/json"]["schema"]["$ref"] == error_ref
    # FastAPI's default error shape is not advertised anywhere
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    history_limit = next(
        p
        for p in spec["paths"]["/v1/vehicles/{vin}/history"]["get"]["parameters"]
        if p["name"] == "limit"
    )
    assert (history_limit["schema"]["default"], history_limit["schema"]["maximum"]) == (5, 50)


# --- generic errors ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/nope", "/v2/vehicles", "/v1/vehicles/WVWZZZ1JZXW000001/nope"])
def test_unknown_route_is_404(client: TestClient, url: str) -> None:
    error = error_of(client.get(url), 404, "not_found")
    assert "/docs" in error["message"]


def test_wrong_method_is_405(client: TestClient) -> None:
    r = client.post("/v1/catalog")
    error = error_of(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET"
    assert "GET" in error["message"]


def test_unexpected_exception_is_500_without_traceback(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed(db_path)
    # damage one stored value so that decoding it fails deep inside the store
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE latest_state SET state = 'not json'")
    db.close()
    with (
        caplog.at_level(logging.ERROR, logger="gateway.api"),
        admin_client(ApiSettings(db_path), raise_server_exceptions=False) as c,
    ):
        r = c.get(f"/v1/vehicles/{VIN_A}")
    error = error_of(r, 500, "internal_error")
    assert error["details"] == []
    assert "Traceback" not in r.text
    assert "JSONDecodeError" not in r.text
    assert f"GET /v1/vehicles/{VIN_A}" in caplog.text
    assert any(record.exc_info for record in caplog.records)


# --- time parameters -----------------------------------------------------------------------


def test_time_helpers() -> None:
    assert iso(T0 + 7) == "2025-11-27T08:00:00.007Z"
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert parse_timestamp(str(T0)) == T0
    assert parse_timestamp("2025-11-27T08:00:00.5Z") == T0 + 500
    assert parse_timestamp("2025-11-27") == T0 - 8 * 60 * 60 * 1000
    assert parse_timestamp(T0) == T0
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_timestamp("soon")
    assert split_signals(["a,b", " c ", "a", ","]) == ["a", "b", "c"]
