"""The simulator's scripted misbehaviour (issue 13, point 9): the seeded scenario
``device_sim/scenarios/misbehaving-van.toml`` played through a real Mosquitto, a real
gateway process and the rules worker of the API raises every kind of fleet alert.

The van leaves the depot out of hours and pulling away hard, speeds in the old town's
30 km/h zone, brakes hard, idles 22 minutes, raises and clears a trouble code, runs low on
fuel and goes silent; some of its messages are malformed (a seq gap); the electric car
runs low on charge. The scenario's 40 minutes play in 20 seconds (time acceleration 120):
the rules measure durations in the samples' time, except "offline", which is the gateway's
clock (2.5 s here). The depot and the zone are the demo installation's
(``gateway.installation.DEMO_GEOFENCES``); the scenario's start is in the past, which the
gateway takes (only the future is refused), so the same seed gives the same drive.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from device_sim.scenario import load, play
from gateway.api import ApiSettings
from gateway.broker import MosquittoProcess
from gateway.core.fleet.rules import AlertKind
from gateway.fleet.worker import WorkerSettings
from gateway.installation import DEMO_GEOFENCES
from tests.support.api import admin_client
from tests.support.gateway_process import GatewayProcess
from tests.support.waiting import wait_until

SCENARIO = Path(__file__).resolve().parent.parent / "device_sim/scenarios/misbehaving-van.toml"
#: sample-time thresholds as an organization sets them ("idles for 20 minutes"); the
#: gateway-clock ones short, for a scenario played 120 times faster than real time
RULES = {"idle_after_ms": 20 * 60_000, "offline_after_ms": 2_500, "seq_gap_grace_ms": 1_000}
#: the depot's hours: the scenario leaves it at 08:00 local time, out of them
DEPOT_HOURS = {"start": "20:00", "end": "21:00", "tz": "Europe/Berlin"}


def _play(mosquitto: MosquittoProcess) -> int:
    async def run() -> int:
        return await play(
            load(SCENARIO), host=mosquitto.host, port=mosquitto.port, stop=asyncio.Event()
        )

    return asyncio.run(run())


def _vins() -> list[str]:
    return [v.vin for v in load(SCENARIO).fleet()]


def test_the_misbehaving_van_raises_every_kind_of_alert(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    gateway = GatewayProcess(mosquitto, data, "gateway-1")
    worker = WorkerSettings(partitions=4, settle_ms=1_000, tick_ms=300, poll_s=0.05)
    with admin_client(ApiSettings(db_path=data / "telemetry.db", fleet_worker=worker)) as api:
        org = api.post("/v1/accounts", json={"kind": "organization", "name": "Vans"}).json()["id"]
        for vin in _vins():
            r = api.post("/v1/vehicles", json={"vin": vin, "account_id": org})
            assert r.status_code == 201, r.text
        r = api.put(f"/v1/accounts/{org}/rule-settings", json={"rules": RULES, "trips": {}})
        assert r.status_code == 200, r.text
        for fence in DEMO_GEOFENCES:
            body = {**fence, "properties": dict(fence["properties"])}
            if "active_window" in body["properties"]:
                body["properties"]["active_window"] = DEPOT_HOURS
            r = api.post(f"/v1/geofences?account_id={org}", json=body)
            assert r.status_code == 201, r.text
        gateway.start()
        try:
            published = _play(mosquitto)
            assert published > 4_000  # two units, a sample a simulated second for 40 minutes

            def kinds() -> Counter[str]:
                seen: Counter[str] = Counter()
                for vin in _vins():
                    page = api.get("/v1/alerts", params={"vin": vin, "limit": 1000}).json()
                    seen.update(a["kind"] for a in page["items"])
                return seen

            every = {k.value for k in AlertKind}
            wait_until(lambda: set(kinds()) >= every, timeout=30, what="every kind of alert")
        finally:
            gateway.stop()
        seen = kinds()
        assert set(seen) == every, seen
        van = _vins()[0]
        alerts = api.get("/v1/alerts", params={"vin": van, "limit": 1000}).json()["items"]
        by_kind = {a["kind"]: a for a in alerts}
        # the ones the script made: the zone's limit, the depot's hours, the scripted code
        assert by_kind["overspeed"]["detail"]["limit_kmh"] == 30.0
        assert by_kind["geofence_exit_out_of_hours"]["severity"] == "critical"
        fault = next(a for a in alerts if a["detail"].get("code") == "P0300")
        assert fault["end_at"] is not None  # set and cleared
        assert by_kind["harsh_braking"]["detail"]["mps2"] >= 4.0
