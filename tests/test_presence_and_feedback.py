"""Two ways the gateway tells what it knows about a unit (issue 11, device contract v1):

* presence: a vehicle whose status says online but that has been silent longer than the
  limit is shown offline with reason ``silent`` (a plain DISCONNECT sends no Last Will);
* feedback: the gateway publishes a notice of each refused message on the vehicle's own
  ``v1/vehicles/{vin}/feedback`` topic, rate-bounded per vehicle.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.api import ApiSettings
from gateway.broker import MosquittoProcess
from gateway.core.feedback import feedback_messages
from gateway.core.presence import presence
from gateway.store import (
    IngestBatch,
    QuarantineEntry,
    StatusChange,
    VehicleSummary,
    open_store,
)
from schemas import Reason, Rejection, Sample, StatusState
from schemas.feedback import (
    FEEDBACK_BURST,
    FeedbackLimiter,
    decode_feedback,
    feedback_topic,
)
from tests.support.api import admin_client
from tests.support.gateway_process import GatewayProcess
from tests.support.ingest import now_ms, publish, telemetry
from tests.support.waiting import wait_until

VIN = "WVWZZZ1JZXW000001"
OTHER = "WVWZZZ1JZXW000002"
T0 = 1_764_230_400_000
LIMIT = 600_000


def summary(online: bool | None, last_seen: int) -> VehicleSummary:
    return VehicleSummary(VIN, online, T0 - 3_600_000, last_seen, T0 - 3_600_000)


# --- presence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("online", "last_seen", "expected"),
    [
        pytest.param(True, T0 - 1_000, (True, None), id="online-and-talking"),
        pytest.param(True, T0 - LIMIT, (True, None), id="at-the-limit"),
        pytest.param(True, T0 - LIMIT - 1, (False, "silent"), id="silent-past-the-limit"),
        pytest.param(False, T0, (False, "status"), id="said-offline"),
        pytest.param(None, T0 - 10 * LIMIT, (None, None), id="never-sent-a-status"),
    ],
)
def test_presence(online: bool | None, last_seen: int, expected: tuple[object, object]) -> None:
    assert presence(online, last_seen, now_ms=T0, silent_after_ms=LIMIT) == expected


def test_api_shows_a_silent_vehicle_offline_with_the_reason(tmp_path: Path) -> None:
    """Issue 11: a plain DISCONNECT without an offline status left the vehicle online
    forever. Its status stays 'online' in the store; the API tells the truth."""
    path = tmp_path / "telemetry.db"
    store = open_store(path)
    try:
        store.commit(
            IngestBatch(
                received_at=T0,
                samples=[Sample(VIN, 1, T0, {"Vehicle.Speed": 1.0})],
                statuses=[
                    StatusChange(VIN, StatusState.ONLINE, T0),
                    StatusChange(OTHER, StatusState.ONLINE, T0),
                ],
                seen={VIN: T0, OTHER: T0 + 400_000},
            )
        )
    finally:
        store.close()
    clock = {"now": T0 + 60_000}
    settings = ApiSettings(path, silent_after_s=LIMIT / 1000, clock_ms=lambda: clock["now"])
    with admin_client(settings) as api:
        assert api.get(f"/v1/vehicles/{VIN}").json()["online"] is True
        assert "telematics_vehicles_online 2.0" in api.get("/metrics").text
        clock["now"] = T0 + LIMIT + 1  # VIN has been silent for longer than the limit
        vehicle = api.get(f"/v1/vehicles/{VIN}").json()
        assert (vehicle["online"], vehicle["offline_reason"]) == (False, "silent")
        other = api.get(f"/v1/vehicles/{OTHER}").json()
        assert (other["online"], other["offline_reason"]) == (True, None)
        listed = {v["vin"]: v["offline_reason"] for v in api.get("/v1/vehicles").json()["items"]}
        assert listed == {VIN: "silent", OTHER: None}
        assert "telematics_vehicles_online 1.0" in api.get("/metrics").text


# --- feedback: the pure parts -----------------------------------------------------------------


def test_limiter_allows_a_burst_then_one_a_second_and_counts_what_it_dropped() -> None:
    limiter = FeedbackLimiter()
    assert [limiter.admit(VIN, T0) for _ in range(FEEDBACK_BURST)] == [0] * FEEDBACK_BURST
    assert [limiter.admit(VIN, T0 + 10) for _ in range(5)] == [None] * 5
    assert limiter.admit(OTHER, T0 + 10) == 0  # per vehicle
    assert limiter.admit(VIN, T0 + 1_010) == 5  # a second later: one more, five were dropped
    assert limiter.admit(VIN, T0 + 1_020) is None


def entry(reason: Reason, vin: str | None = VIN, **kw: Any) -> QuarantineEntry:
    topic = telemetry(vin or "x")
    return QuarantineEntry(T0, topic, b"{}", Rejection(reason, f"{reason.value}!", vin=vin, **kw))


def test_feedback_messages_one_notice_per_refusal_of_a_known_vehicle() -> None:
    messages = feedback_messages(
        [
            entry(Reason.IMPLAUSIBLE_TIMESTAMP, seq=7),
            entry(Reason.WRONG_TYPE, seq=8, signal="Vehicle.Speed"),
            entry(Reason.UNPROVISIONED_VEHICLE),  # nobody may read that vehicle's topics
            entry(Reason.INVALID_TOPIC, vin=None),
        ],
        FeedbackLimiter(),
        T0,
    )
    assert [topic for topic, _ in messages] == [feedback_topic(VIN)] * 2
    first, second = (decode_feedback(payload) for _, payload in messages)
    assert (first.reason, first.seq, first.signal, first.topic) == (
        "implausible_timestamp",
        7,
        None,
        telemetry(VIN),
    )
    assert (second.reason, second.signal, second.suppressed) == ("wrong_type", "Vehicle.Speed", 0)


def test_feedback_detail_is_short() -> None:
    long = QuarantineEntry(T0, telemetry(VIN), b"", Rejection(Reason.WRONG_TYPE, "x" * 5000, VIN))
    ((_, payload),) = feedback_messages([long], FeedbackLimiter(), T0)
    assert len(orjson.loads(payload)["detail"]) == 256
    assert len(payload) < 512


# --- feedback from a real gateway ---------------------------------------------------------------


def test_gateway_tells_the_unit_what_it_refused(
    start_gateway: Callable[..., GatewayProcess], mosquitto: MosquittoProcess
) -> None:
    start_gateway()
    client_id = "feedback-reader"
    reader = subprocess.Popen(
        [
            "mosquitto_sub",
            "-p",
            str(mosquitto.port),
            "-V",
            "mqttv5",
            "-i",
            client_id,
            "-t",
            feedback_topic(VIN),
            "-C",
            "2",
            "-W",
            "30",
        ],
        stdout=subprocess.PIPE,
    )
    wait_until(
        lambda: (
            f"{client_id} 0 {feedback_topic(VIN)}" in mosquitto.log_path.read_text(errors="replace")
        ),
        what="the unit to subscribe to its feedback",
    )
    publish(mosquitto, telemetry(VIN), b'{"vin": "' + VIN.encode() + b'", "seq": 1,')
    bad_ts = {"vin": VIN, "seq": 2, "ts": 0, "signals": {"Vehicle.Speed": 1.0}}
    publish(mosquitto, telemetry(VIN), orjson.dumps(bad_ts))
    good = {"vin": VIN, "seq": 3, "ts": now_ms(), "signals": {"Vehicle.Speed": 1.0}}
    publish(mosquitto, telemetry(VIN), orjson.dumps(good))
    out, _ = reader.communicate(timeout=40)
    notices = [decode_feedback(line) for line in out.splitlines() if line.strip()]
    assert [(n.reason, n.seq) for n in notices] == [
        ("malformed_json", None),
        ("implausible_timestamp", 2),
    ]
    assert all(n.topic == telemetry(VIN) for n in notices)
