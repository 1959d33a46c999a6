"""The web dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
running ``telematics up --demo`` stack: two simulated vehicles of the organization "Demo
Fleet", its fleet manager, and a private owner who was invited to one of them.

Screenshots land in test-artifacts/web/ (gitignored)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from device_sim.city import MUNICH
from device_sim.vehicle import SimulatedVehicle, VehicleProfile
from gateway.broker import free_port
from tests.support.unit_thread import At, UnitThread
from tests.support.up import ADMIN_PASSWORD, Up, start
from tests.support.waiting import wait_until
from tests.support.web import (
    AXE,
    chromium,
    fleet_password,
    log_in,
    screenshot,
    session,
    submit_login,
)

FLEET = "fleet@demo.local"
OWNER = "owner@web.test"
OWNER_PASSWORD = "owner-password-web-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo stack with both demo vehicles reporting positions, and an owner invited
    (read and lock) to the first one."""
    up = start(tmp_path_factory.mktemp("web"), 1, (free_port(), free_port(), free_port()))
    clients: list[httpx.Client] = []
    try:
        fleet = session(up, FLEET, fleet_password(up))
        clients.append(fleet)
        wait_until(lambda: len(_positioned(fleet)) == 2, timeout=90, what="two demo positions")
        vins = sorted(_positioned(fleet))
        r = httpx.post(
            f"{up.api}/v1/auth/register",
            json={"email": OWNER, "password": OWNER_PASSWORD, "name": "Web Owner"},
        )
        assert r.status_code == 202, r.text
        r = fleet.post(
            f"/v1/vehicles/{vins[0]}/invitations",
            json={"email": OWNER, "services": ["read", "lock", "unlock"]},
            headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]},
        )
        assert r.status_code == 201, r.text
        owner = session(up, OWNER, OWNER_PASSWORD)
        clients.append(owner)
        r = owner.post(
            f"/v1/invitations/{r.json()['id']}/accept",
            headers={"X-CSRF-Token": owner.cookies["tg_csrf"]},
        )
        assert r.status_code == 201, r.text
        yield {"up": up, "fleet": fleet, "owner": owner, "vins": vins}
    finally:
        for client in clients:
            client.close()
        up.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as running:
        yield running


def _positioned(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """The caller's vehicles that reported a position, by VIN (their state)."""
    out = {}
    for v in client.get("/v1/vehicles").json()["items"]:
        state = client.get(f"/v1/vehicles/{v['vin']}").json()["state"]
        if "Vehicle.CurrentLocation.Latitude" in state:
            out[v["vin"]] = state
    return out


def _table_vins(page: Any) -> list[str]:
    rows = page.locator("#vehicles tbody tr")
    return sorted(rows.nth(i).get_attribute("data-vin") for i in range(rows.count()))


def _position_cell(page: Any, vin: str) -> str:
    text: str = page.locator(f"tr[data-vin='{vin}'] .position").inner_text()
    return text


# --- the session cookie, as an attacker -----------------------------------------------------


def test_a_change_with_the_cookie_but_no_csrf_token_is_refused(stack: dict[str, Any]) -> None:
    fleet: httpx.Client = stack["fleet"]
    vin = stack["vins"][1]
    r = fleet.post(f"/v1/vehicles/{vin}/commands", json={"type": "horn_and_lights"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "csrf_failed"
    wrong = fleet.post(
        f"/v1/vehicles/{vin}/commands",
        json={"type": "horn_and_lights"},
        headers={"X-CSRF-Token": "A" * 43},
    )
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "csrf_failed"
    # logging out is a change too
    assert fleet.delete("/v1/auth/session").status_code == 403
    # with the session's token the same request goes through (the cookie alone was refused)
    ok = fleet.post(
        f"/v1/vehicles/{vin}/commands",
        json={"type": "horn_and_lights"},
        headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]},
    )
    assert ok.status_code == 201, ok.text


def test_the_login_refuses_other_sites_and_forms(stack: dict[str, Any]) -> None:
    up: Up = stack["up"]
    body = {"email": OWNER, "password": OWNER_PASSWORD}
    r = httpx.post(
        f"{up.api}/v1/auth/session", json=body, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403
    assert "tg_session" not in r.cookies
    # what a cross-site HTML form can send
    r = httpx.post(f"{up.api}/v1/auth/session", data=body)
    assert r.status_code == 422
    assert "tg_session" not in r.cookies
    r = httpx.post(f"{up.api}/v1/auth/session", json={**body, "password": "wrong-password-1"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_grant"


def test_a_cookie_of_another_account_sees_nothing_of_this_one(stack: dict[str, Any]) -> None:
    owner: httpx.Client = stack["owner"]
    shared, other = stack["vins"]
    assert [v["vin"] for v in owner.get("/v1/vehicles").json()["items"]] == [shared]
    assert owner.get(f"/v1/vehicles/{other}").status_code == 404
    r = owner.post(
        f"/v1/vehicles/{other}/commands",
        json={"type": "lock"},
        headers={"X-CSRF-Token": owner.cookies["tg_csrf"]},
    )
    assert r.status_code == 404
    # nor on the live map's feed: its snapshot has only the shared vehicle
    with owner.stream("GET", "/v1/positions/stream", timeout=10) as stream:
        lines = stream.iter_lines()
        snapshot = next(line for line in lines if line.startswith("data: "))
    assert re.findall(r'"vin":"(\w+)"', snapshot) == [shared]


def test_pages_carry_a_strict_content_security_policy(stack: dict[str, Any]) -> None:
    up: Up = stack["up"]
    for path in (
        "/",
        "/login",
        f"/vehicles/{stack['vins'][0]}",
        "/alerts",
        "/reports",
        "/jobs",
        "/quarantine",
        "/health",
        "/sharing",
        "/fleets",
    ):
        r = httpx.get(f"{up.api}{path}")
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp
        assert "'unsafe-inline'" not in csp
        assert "frame-ancestors 'none'" in csp
        assert "<script>" not in r.text  # no inline script
    assert httpx.get(f"{up.api}/vehicles/not-a-vin").status_code == 422


# --- in the browser -------------------------------------------------------------------------


def test_fleet_manager_sees_the_fleet_move_live(stack: dict[str, Any], browser: Any) -> None:
    up: Up = stack["up"]
    context, page, console = log_in(browser, up, FLEET, fleet_password(up), scheme="dark")
    try:
        page.wait_for_function(
            "() => document.querySelectorAll('path.vehicle-marker').length === 2"
        )
        assert _table_vins(page) == stack["vins"]
        markers = {
            vin: page.locator(f"path.vehicle-marker[data-vin='{vin}']").element_handle()
            for vin in stack["vins"]
        }
        before = {vin: m.get_attribute("d") for vin, m in markers.items()}
        cells = {vin: _position_cell(page, vin) for vin in before}
        # a vehicle moves: its marker (the same element, never re-created) and its row follow
        page.wait_for_function(
            """([before]) => [...document.querySelectorAll('path.vehicle-marker')]
                 .some(m => m.getAttribute('d') !== before[m.dataset.vin])""",
            arg=[before],
            timeout=60_000,
        )
        for vin, marker in markers.items():
            assert marker.evaluate("m => m.isConnected"), f"the marker of {vin} was re-created"
        assert page.locator("path.vehicle-marker").count() == 2
        moved = [vin for vin in cells if _position_cell(page, vin) != cells[vin]]
        assert moved, "the table's positions did not change with the markers"
        assert page.locator("path.roads").count() > 50  # the offline base layer
        assert page.locator(".leaflet-control-scale").count() == 1
        screenshot(page, "fleet-map")
        assert console.errors == []
    finally:
        context.close()


def test_the_map_filters_by_fleet_and_keeps_the_filter_through_live_updates(
    stack: dict[str, Any], browser: Any
) -> None:
    """Issue 14: a fleet manager filters the map by fleet (the selector lists the API's
    fleets, names as text), combined with the status filter; the markers are hidden and
    shown, never re-created, and a vehicle outside the fleet stays hidden as its new
    positions arrive."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    csrf = {"X-CSRF-Token": fleet.cookies["tg_csrf"]}
    inside, outside = stack["vins"][1], stack["vins"][0]
    name = '<b id="injected-by-fleet-name">North</b> depot'
    r = fleet.post("/v1/fleets", json={"name": name}, headers=csrf)
    assert r.status_code == 201, r.text
    fleet_id = r.json()["id"]
    added = fleet.put(f"/v1/fleets/{fleet_id}/vehicles/{inside}", headers=csrf)
    assert added.status_code == 204, added.text
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))

    def marker(vin: str) -> Any:
        return page.locator(f"path.vehicle-marker[data-vin='{vin}']")

    def row(vin: str) -> Any:
        return page.locator(f"#vehicles tbody tr[data-vin='{vin}']")

    try:
        page.wait_for_function(
            "() => document.querySelectorAll('path.vehicle-marker').length === 2"
        )
        page.wait_for_selector(f"#fleet-filter option[value='{fleet_id}']", state="attached")
        handles = {vin: marker(vin).element_handle() for vin in stack["vins"]}
        assert marker(inside).is_visible()
        assert marker(outside).is_visible()
        # the name someone typed is the option's text, not markup
        assert page.evaluate("document.getElementById('injected-by-fleet-name')") is None
        shown = page.locator(f"#fleet-filter option[value='{fleet_id}']").text_content()
        assert shown == name
        page.select_option("#fleet-filter", str(fleet_id))
        page.wait_for_function(
            "(vin) => document.querySelector(`path.vehicle-marker[data-vin='${vin}']`)"
            ".classList.contains('hidden-marker')",
            arg=outside,
        )
        assert marker(outside).is_hidden()
        assert row(outside).is_hidden()
        assert marker(inside).is_visible()
        assert row(inside).is_visible()
        # with the status filter: whatever status is chosen, the other fleet's car stays hidden
        for status in ("moving", "parked", "offline", "all"):
            page.select_option("#status-filter", status)
            assert marker(outside).is_hidden(), status
        assert marker(inside).is_visible()
        # the hidden car's new positions arrive (its row's "last seen" changes) and it
        # stays hidden
        seen = row(outside).locator(".seen").text_content()
        page.wait_for_function(
            "([vin, seen]) => document.querySelector(`#vehicles tr[data-vin='${vin}'] .seen`)"
            ".textContent !== seen",
            arg=[outside, seen],
            timeout=60_000,
        )
        assert marker(outside).is_hidden()
        assert row(outside).is_hidden()
        assert marker(inside).is_visible()
        screenshot(page, "fleet-filter")
        # all fleets: both again, the same elements (hidden and shown, never re-created)
        page.select_option("#fleet-filter", "all")
        page.wait_for_function("() => !document.querySelector('path.vehicle-marker.hidden-marker')")
        assert marker(inside).is_visible()
        assert marker(outside).is_visible()
        assert _table_vins(page) == stack["vins"]
        assert all(row(vin).is_visible() for vin in stack["vins"])
        for vin, handle in handles.items():
            assert handle.evaluate("m => m.isConnected"), f"the marker of {vin} was re-created"
        assert page.locator("path.vehicle-marker").count() == 2
        assert console.errors == []
    finally:
        context.close()
        fleet.delete(f"/v1/fleets/{fleet_id}", headers=csrf)


def test_owner_sees_only_the_vehicle_shared_with_them(stack: dict[str, Any], browser: Any) -> None:
    owner: httpx.Client = stack["owner"]
    # the owner's account has no fleets or groups (the fleet manager's are not theirs)
    assert owner.get("/v1/fleets").json()["items"] == []
    context, page, console = log_in(browser, stack["up"], OWNER, OWNER_PASSWORD)
    try:
        page.wait_for_function("() => document.querySelectorAll('path.vehicle-marker').length >= 1")
        time.sleep(1.5)  # a second vehicle would have arrived by now with the snapshot
        assert _table_vins(page) == [stack["vins"][0]]
        assert page.locator("path.vehicle-marker").count() == 1
        assert OWNER in page.locator("#who").inner_text()
        # the fleet selector follows the API's list of fleets: none, so no selector
        page.wait_for_selector(".legend[data-fleets='0']", state="attached")
        assert page.locator("#fleet-filter").count() == 0
        screenshot(page, "owner-map")
        # the vehicle was shared for reading, lock and unlock: those are the buttons
        page.goto(f"{stack['up'].api}/vehicles/{stack['vins'][0]}")
        page.wait_for_selector("body[data-ready='1']")
        offered = page.locator(".buttons button").evaluate_all(
            "buttons => buttons.map(b => b.dataset.command)"
        )
        assert offered == ["lock", "unlock"]
        assert console.errors == []
        # and the other vehicle's page says it is not visible, in words (the API's 404)
        page.goto(f"{stack['up'].api}/vehicles/{stack['vins'][1]}")
        page.wait_for_selector("#notice:text('is visible to you')")
    finally:
        context.close()


@contextmanager
def _own_car(stack: dict[str, Any]) -> Iterator[tuple[str, UnitThread]]:
    """A car of the demo fleet that only this test drives: provisioned through the API, its
    unit the simulator's (on a thread) with the car parked and held until the test sends it
    off. The demo's own cars drive and park at random (for minutes), so a test that needs a
    parked or a moving car waited for chance (and a slow machine once waited 120 s in vain)."""
    fleet: httpx.Client = stack["fleet"]
    csrf = {"X-CSRF-Token": fleet.cookies["tg_csrf"]}
    vin = "WWEBC" + uuid.uuid4().hex[:12].upper()
    r = fleet.post("/v1/vehicles", json={"vin": vin}, headers=csrf)
    assert r.status_code == 201, r.text
    car = SimulatedVehicle(
        vin,
        VehicleProfile.ELECTRIC_CAR,
        MUNICH,
        random.Random(11),
        "Marienplatz",
        start_ms=time.time_ns() // 1_000_000,
        initial_level_pct=60.0,
    )
    car.hold()
    unit = UnitThread(
        At("127.0.0.1", stack["up"].mqtt_port),
        car,
        username=vin,
        password=r.json()["mqtt"]["password"],
    )
    try:
        unit.start()
        wait_until(lambda: vin in _positioned(fleet), timeout=30, what=f"{vin}'s first position")
        yield vin, unit
    finally:
        if unit.unit is not None:
            unit.stop()
        fleet.delete(f"/v1/vehicles/{vin}", headers=csrf)


def _speed(client: httpx.Client, vin: str) -> float:
    state = client.get(f"/v1/vehicles/{vin}").json()["state"]
    return float(state.get("Vehicle.Speed", {}).get("value") or 0)


def _command(client: httpx.Client, vin: str, kind: str) -> None:
    """Send ``kind`` through the API and wait until the car has done it."""
    r = client.post(
        f"/v1/vehicles/{vin}/commands",
        json={"type": kind},
        headers={"X-CSRF-Token": client.cookies["tg_csrf"]},
    )
    assert r.status_code == 201, r.text
    command = r.json()["id"]

    def done() -> bool:
        status = client.get(f"/v1/commands/{command}").json()["status"]
        assert status in ("queued", "sent", "accepted", "succeeded"), status
        return bool(status == "succeeded")

    wait_until(done, timeout=30, what=f"{kind} to succeed on {vin}")


def test_lock_a_parked_vehicle_and_see_it_succeed(stack: dict[str, Any], browser: Any) -> None:
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    with _own_car(stack) as (vin, _unit):
        # unlocked first (through the API), so that the lock below changes what the car reports
        _command(fleet, vin, "unlock")
        context, page, console = log_in(browser, up, FLEET, fleet_password(up))
        try:
            page.goto(f"{up.api}/vehicles/{vin}")
            page.wait_for_selector("body[data-ready='1']")
            page.wait_for_selector("dd[data-field='Locked']:text-is('unlocked')", timeout=10_000)
            before = page.eval_on_selector_all(
                "#commands tbody tr", "rows => rows.map((r) => r.dataset.command)"
            )
            page.click("button[data-command='lock']")
            # this click's own row, not the newest row: the click returns before the API
            # answers, and the unlock's row was the newest until then
            page.wait_for_function(
                """(before) => {
                    const row = document.querySelector("#commands tbody tr");
                    return row && !before.includes(row.dataset.command);
                }""",
                arg=before,
                timeout=30_000,
            )
            assert page.locator("#notice").is_hidden(), page.locator("#notice").inner_text()
            mine = page.locator("#commands tbody tr").first.get_attribute("data-command")
            # succeeded, then confirmed by the car's telemetry, live, and the state panel read again
            page.wait_for_selector(
                f"#commands tbody tr[data-command='{mine}'] "
                ".command-status:text('succeeded, confirmed')",
                timeout=30_000,
            )
            page.wait_for_selector("dd[data-field='Locked']:text-is('locked')", timeout=10_000)
            screenshot(page, "vehicle")
            assert console.errors == []
        finally:
            context.close()


def test_unlock_on_a_moving_vehicle_says_why_not(stack: dict[str, Any], browser: Any) -> None:
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    with _own_car(stack) as (vin, unit):
        unit.drive(lambda car: car.go_to("Hohenzollernplatz"))  # nine streets away
        context, page, _ = log_in(browser, up, FLEET, fleet_password(up))
        try:
            for _attempt in range(4):  # a car on its way may stand at a junction for a moment
                wait_until(lambda: _speed(fleet, vin) > 3, timeout=60, what=f"{vin} to drive")
                page.goto(f"{up.api}/vehicles/{vin}")
                page.wait_for_selector("body[data-ready='1']")
                page.click("button[data-command='unlock']")
                page.wait_for_selector("#notice:not([hidden]), #commands tbody tr", timeout=15_000)
                if page.locator("#notice:not([hidden])").count():
                    break
            text = page.locator("#notice").inner_text()
            assert "unlock was refused" in text
            assert "moving" in text
        finally:
            context.close()


def test_acknowledge_an_alert(stack: dict[str, Any], browser: Any) -> None:
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    # a real path to an alert: a speed limit of 5 km/h that any driving demo car exceeds
    me = fleet.get("/v1/me").json()
    r = fleet.put(
        f"/v1/accounts/{me['account']['id']}/rule-settings",
        json={"rules": {"speed_limit_kmh": 5, "overspeed_min_ms": 1000}},
        headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]},
    )
    assert r.status_code == 200, r.text
    wait_until(lambda: bool(fleet.get("/v1/alerts").json()["items"]), timeout=120, what="an alert")
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        page.goto(f"{up.api}/alerts")
        page.wait_for_selector("body[data-ready='1']")
        button = page.locator("button[data-ack]").first
        alert_id = button.get_attribute("data-ack")
        button.click()
        row = page.locator(f"tr[data-alert='{alert_id}']")
        # functions, never bare expressions: the pages' CSP forbids eval, which Playwright
        # uses for an expression
        page.wait_for_function(
            "(id) => !document.querySelector(`tr[data-alert='${id}'] button`)", arg=alert_id
        )
        assert row.locator(".acknowledged").inner_text() != "no"
        stored = fleet.get("/v1/alerts").json()["items"]
        assert next(a for a in stored if str(a["id"]) == alert_id)["acknowledged_at"] is not None
        # the work list: what nobody acknowledged yet leaves out the one just acknowledged
        page.select_option("#alert-state", "unacknowledged")
        page.wait_for_function(
            "(id) => !document.querySelector(`tr[data-alert='${id}']`)", arg=alert_id
        )
        shown = page.locator("tr[data-alert] .acknowledged").all_inner_texts()
        assert set(shown) <= {"no"}, shown
        screenshot(page, "alerts")
        assert console.errors == []
    finally:
        context.close()


def test_vehicle_page_charts_trips_and_alerts(stack: dict[str, Any], browser: Any) -> None:
    """Issue 14: a vehicle's page charts its speed and charge over a chosen range (SVG
    drawn from the history API), draws its trail and trips on its map and lists its
    alerts. Trips end after 10 s parked here; the test's own car drives one street and parks,
    so its trip ends within the test."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    csrf = {"X-CSRF-Token": fleet.cookies["tg_csrf"]}
    account = fleet.get("/v1/me").json()["account"]["id"]
    stored = fleet.get(f"/v1/accounts/{account}/rule-settings").json()
    trips = {**stored["trips"], "parking_ms": 10_000, "min_duration_ms": 0, "min_distance_m": 0}
    r = fleet.put(
        f"/v1/accounts/{account}/rule-settings",
        json={"rules": stored["rules"], "trips": trips},
        headers=csrf,
    )
    assert r.status_code == 200, r.text
    with _own_car(stack) as (vin, unit):
        unit.drive(lambda car: car.go_to("Isartor"))  # one street from Marienplatz, then parked
        tripped: list[dict[str, Any]] = []

        def a_trip() -> bool:
            tripped[:] = fleet.get("/v1/trips", params={"vin": vin, "limit": 5}).json()["items"]
            return bool(tripped)

        wait_until(a_trip, timeout=180, what=f"the trip of {vin} to end")
        trip = tripped[0]
        context, page, console = log_in(browser, up, FLEET, fleet_password(up))
        try:
            page.goto(f"{up.api}/vehicles/{vin}")
            page.wait_for_selector("body[data-ready='1'][data-history='60']")
            speed = page.locator("svg#chart-speed")
            assert int(speed.get_attribute("data-points") or 0) > 20
            assert "Speed from" in (speed.get_attribute("aria-label") or "")
            assert page.locator("svg#chart-speed polyline.series").count() == 1
            assert page.locator("svg#chart-energy polyline.series").count() == 1
            label = page.locator("#charts figcaption").nth(1).inner_text()
            assert label in ("Charge", "Fuel")
            # the trip: a row, and its path on the map over the trail
            assert page.locator(f"#trips tr[data-trip='{trip['id']}']").count() == 1
            assert page.locator(f"path.trip[data-trip='{trip['id']}']").count() == 1
            assert page.locator("path.trail").count() == 1
            # alerts: the API's, for this vehicle only
            listed = fleet.get("/v1/alerts", params={"vin": vin, "limit": 20}).json()["items"]
            shown = page.locator("#vehicle-alerts tbody tr[data-alert]").count()
            assert shown == len(listed)
            # another range reads again (the stack is younger than 15 minutes: the samples
            # are the same, the range the chart says it covers is not)
            hour = speed.get_attribute("aria-label")
            page.select_option("#range", "15")
            page.wait_for_selector("body[data-history='15']")
            quarter = page.locator("svg#chart-speed")
            assert int(quarter.get_attribute("data-points") or 0) > 20
            assert quarter.get_attribute("aria-label") != hour
            screenshot(page, "vehicle-history")
            assert console.errors == []
        finally:
            context.close()


def test_acknowledge_every_alert_shown_at_once(stack: dict[str, Any], browser: Any) -> None:
    """Issue 13: a fleet manager acknowledged a morning's alerts one button at a time; the
    alerts page's "Acknowledge all shown" acknowledges what it lists, in one request
    (``POST /v1/alerts/acknowledge``)."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    me = fleet.get("/v1/me").json()
    r = fleet.put(
        f"/v1/accounts/{me['account']['id']}/rule-settings",
        json={"rules": {"speed_limit_kmh": 5, "overspeed_min_ms": 1000}},
        headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]},
    )
    assert r.status_code == 200, r.text

    def unacknowledged() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = fleet.get(
            "/v1/alerts", params={"acknowledged": "false", "limit": 200}
        ).json()["items"]
        return items

    wait_until(lambda: len(unacknowledged()) >= 2, timeout=180, what="two alerts")
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        page.goto(f"{up.api}/alerts")
        page.wait_for_selector("body[data-ready='1']")
        page.select_option("#alert-state", "unacknowledged")
        page.wait_for_function("() => document.querySelectorAll('button[data-ack]').length >= 2")
        shown = page.eval_on_selector_all(
            "button[data-ack]", "(buttons) => buttons.map((b) => Number(b.dataset.ack))"
        )
        page.click("#ack-all")
        page.wait_for_function(
            "() => /alerts acknowledged/.test(document.getElementById('notice').textContent)"
        )
        stored = {
            a["id"]: a for a in fleet.get("/v1/alerts", params={"limit": 1000}).json()["items"]
        }
        assert all(stored[i]["acknowledged_at"] is not None for i in shown), shown
        # the list shown again: none of those is left
        for alert_id in shown:
            assert page.locator(f"button[data-ack='{alert_id}']").count() == 0
        screenshot(page, "alerts-acknowledge-all")
        assert console.errors == []
    finally:
        context.close()


def test_the_vehicle_page_shows_the_trip_under_way(stack: dict[str, Any], browser: Any) -> None:
    """Issue 13: while a vehicle drives, its page listed only finished trips; it now shows
    the trip under way first, marked in progress, with distance and duration so far (the
    trips list's ``in_progress``)."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    with _own_car(stack) as (vin, unit):
        unit.drive(lambda car: car.go_to("Hohenzollernplatz"))  # nine streets away
        running: list[dict[str, Any]] = []

        def under_way() -> bool:
            page = fleet.get("/v1/trips", params={"vin": vin}).json()
            running[:] = [page["in_progress"]] if page.get("in_progress") else []
            return bool(running) and running[0]["distance_m"] > 0

        wait_until(under_way, timeout=120, what=f"{vin}'s trip under way")
        assert running[0]["in_progress"] is True
        context, page, console = log_in(browser, up, FLEET, fleet_password(up))
        try:
            page.goto(f"{up.api}/vehicles/{vin}")
            page.wait_for_selector("body[data-ready='1'][data-history='60']")
            row = page.locator("#trips tr[data-trip='in-progress']")
            assert row.count() == 1
            cells = row.locator("td").all_inner_texts()
            assert cells[1].startswith("in progress, ")
            assert re.fullmatch(r"in progress, \d+ (s|min) so far", cells[1]), cells
            assert cells[2].endswith(" km so far")
            assert cells[4] == "in progress"
            # first, above the finished ones
            first = page.locator("#trips tbody tr").first.get_attribute("data-trip")
            assert first == "in-progress"
            screenshot(page, "vehicle-trip-in-progress")
            assert console.errors == []
        finally:
            context.close()


def test_manage_fleets_and_the_alert_rules_in_the_browser(
    stack: dict[str, Any], browser: Any
) -> None:
    """Issue 13: fleets (create, add and remove vehicles) and the account's rule thresholds
    were the API's only; the "Fleets and rules" page does both, and what it saves is what
    the API then answers."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    vin = stack["vins"][0]
    name = "Web vans " + uuid.uuid4().hex[:6]
    account = fleet.get("/v1/me").json()["account"]["id"]
    before = fleet.get(f"/v1/accounts/{account}/rule-settings").json()
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        page.goto(f"{up.api}/fleets")
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#fleet-name", name)
        page.click("#fleet-create")
        made = page.locator("section.fleet", has_text=name)
        made.wait_for()
        fleet_id = made.get_attribute("data-fleet")
        made.locator("select").select_option(vin)
        made.locator("button[data-add]").click()
        page.locator(f"section[data-fleet='{fleet_id}'] tr[data-vin='{vin}']").wait_for()
        members = fleet.get(f"/v1/fleets/{fleet_id}/vehicles").json()["items"]
        assert [v["vin"] for v in members] == [vin]
        page.locator(f"section[data-fleet='{fleet_id}'] button[data-remove='{vin}']").click()
        page.locator(f"section[data-fleet='{fleet_id}'] tr[data-vin='{vin}']").wait_for(
            state="detached"
        )
        assert fleet.get(f"/v1/fleets/{fleet_id}/vehicles").json()["items"] == []
        # a threshold and an alert kind, changed and saved
        page.fill("#rule-idle_after_ms", "120000")
        page.uncheck("#rule-enabled input[value='ignition']")
        page.click("#rules-save")
        page.wait_for_function(
            "() => /Rules saved/.test(document.getElementById('notice').textContent)"
        )
        stored = fleet.get(f"/v1/accounts/{account}/rule-settings").json()
        assert stored["effective_rules"]["idle_after_ms"] == 120_000
        assert "ignition" not in stored["effective_rules"]["enabled"]
        assert page.input_value("#rule-idle_after_ms") == "120000"
        # a value the API refuses is said in words, and nothing changes
        page.fill("#rule-idle_after_ms", "-5")
        page.click("#rules-save")
        page.wait_for_function(
            "() => /not saved/.test(document.getElementById('notice').textContent)"
        )
        again = fleet.get(f"/v1/accounts/{account}/rule-settings").json()
        assert again["effective_rules"] == stored["effective_rules"]
        screenshot(page, "fleets-and-rules")
        assert console.errors == [] or all("422" in e for e in console.errors), console.errors
    finally:
        context.close()
        fleet.put(f"/v1/accounts/{account}/rule-settings",
                  json={"rules": before["rules"], "trips": before["trips"]},
                  headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]})  # fmt: skip


def test_draw_a_geofence_and_find_it_persisted(stack: dict[str, Any], browser: Any) -> None:
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        before = page.locator("path.geofence").count()
        page.click("#fence-draw")
        box = page.locator("#map").bounding_box()
        assert box is not None
        for dx, dy in [(0.3, 0.3), (0.6, 0.3), (0.5, 0.7)]:
            page.mouse.click(box["x"] + box["width"] * dx, box["y"] + box["height"] * dy)
        page.fill("#fence-name", "Drawn in the browser")
        page.click("#fence-save")
        page.wait_for_selector("#notice:text('Geofence saved.')")
        fences = fleet.get("/v1/geofences").json()["items"]
        drawn = [f for f in fences if f["properties"]["name"] == "Drawn in the browser"]
        assert len(drawn) == 1
        ring = drawn[0]["geometry"]["coordinates"][0]
        assert len(ring) == 4
        assert ring[0] == ring[-1]
        assert all(11.3 < lon < 11.9 and 48.0 < lat < 48.3 for lon, lat in ring)  # Munich
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_function(
            "(n) => document.querySelectorAll('path.geofence').length > n", arg=before
        )
        assert console.errors == []
    finally:
        context.close()


def test_rename_reshape_and_delete_a_geofence_on_the_map(
    stack: dict[str, Any], browser: Any
) -> None:
    """Issue 14: a fleet manager selects a geofence on the map, renames it, draws its
    shape again and deletes it; each change is the API's (read back through it)."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    ring = [[11.55, 48.13], [11.57, 48.13], [11.56, 48.145], [11.55, 48.13]]
    body = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"name": "Edit me", "speed_limit_kmh": 30},
    }
    r = fleet.post("/v1/geofences", json=body, headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]})
    assert r.status_code == 201, r.text
    fence_id = r.json()["id"]
    circle = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [11.60, 48.15]},
        "properties": {"name": "Round", "radius_m": 300},
    }
    r = fleet.post("/v1/geofences", json=circle, headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]})
    assert r.status_code == 201, r.text
    circle_id = r.json()["id"]
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    page.on("dialog", lambda dialog: dialog.accept())  # "Delete the geofence ...?"
    try:
        fence = page.locator(f"path.geofence[data-fence='{fence_id}']")
        fence.wait_for()
        # a circular fence is drawn as a circle (a path), not as a pin
        assert page.locator(f"path.geofence[data-fence='{circle_id}']").count() == 1
        assert page.locator("img.leaflet-marker-icon").count() == 0
        fence.click()
        page.fill("#fence-edit-name", "Renamed on the map")
        page.click("#fence-rename")
        page.wait_for_selector("#notice:text('Geofence renamed.')")
        stored = fleet.get(f"/v1/geofences/{fence_id}").json()
        assert stored["properties"]["name"] == "Renamed on the map"
        assert stored["properties"]["speed_limit_kmh"] == 30  # the rest kept
        # a new shape: four corners
        page.click("#fence-reshape")
        box = page.locator("#map").bounding_box()
        assert box is not None
        for dx, dy in [(0.2, 0.2), (0.4, 0.2), (0.4, 0.4), (0.2, 0.4)]:
            page.mouse.click(box["x"] + box["width"] * dx, box["y"] + box["height"] * dy)
        assert page.input_value("#fence-name") == "Renamed on the map"
        page.click("#fence-save")
        page.wait_for_selector("#notice:text('Geofence saved.')")
        stored = fleet.get(f"/v1/geofences/{fence_id}").json()
        assert len(stored["geometry"]["coordinates"][0]) == 5
        assert stored["properties"]["name"] == "Renamed on the map"
        assert page.locator(f"path.geofence[data-fence='{fence_id}']").count() == 1
        screenshot(page, "geofence-edit")
        # and delete it
        page.locator(f"path.geofence[data-fence='{fence_id}']").click()
        page.click("#fence-delete")
        page.wait_for_selector("#notice:text('Geofence deleted.')")
        assert fleet.get(f"/v1/geofences/{fence_id}").status_code == 404
        assert page.locator(f"path.geofence[data-fence='{fence_id}']").count() == 0
        assert console.errors == []
    finally:
        context.close()


def test_send_a_command_to_a_fleet_and_watch_the_job(stack: dict[str, Any], browser: Any) -> None:
    """Issue 14: a fleet manager sends horn and lights to a fleet; the job's row follows
    its commands live (the event stream) until it is finished, without a reload."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    csrf = {"X-CSRF-Token": fleet.cookies["tg_csrf"]}
    r = fleet.post("/v1/fleets", json={"name": "Web job fleet"}, headers=csrf)
    assert r.status_code == 201, r.text
    fleet_id = r.json()["id"]
    for vin in stack["vins"]:
        added = fleet.put(f"/v1/fleets/{fleet_id}/vehicles/{vin}", headers=csrf)
        assert added.status_code == 204, added.text
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        page.goto(f"{up.api}/jobs")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("#live[data-state='live']")
        page.select_option("#job-fleet", str(fleet_id))
        page.select_option("#job-type", "horn_and_lights")
        page.click("#job-send")
        page.wait_for_selector("#notice:text('sent to 2 vehicle(s)')")
        job_id = page.locator("#jobs tbody tr").first.get_attribute("data-job")
        row = f"#jobs tbody tr[data-job='{job_id}']"
        first = page.locator(f"{row} .job-progress").inner_text()
        page.wait_for_selector(f"{row}[data-status='finished']", timeout=60_000)
        progress = page.locator(f"{row} .job-progress").inner_text()
        assert progress != first
        stored = fleet.get(f"/v1/command-jobs/{job_id}").json()
        assert stored["status"] == "finished"
        words = " · ".join(
            f"{k.replace('_', ' ')} {n}" for k, n in stored["counts"].items() if n > 0
        )
        assert progress == words
        screenshot(page, "fleet-job")
        assert console.errors == []
    finally:
        context.close()


def test_a_geofence_name_is_shown_as_text_never_as_markup(
    stack: dict[str, Any], browser: Any
) -> None:
    """Security review 2 (decision 0023): the map's fence tooltips handed the name to
    Leaflet as a string, which Leaflet sets as HTML: anyone who may name a fence (a fleet
    manager, a self-registered owner) put markup into the page of everyone who sees the
    fence, administrators included (the CSP stops scripts, not markup: fake links and
    forms, images)."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    name = '<img id="injected-by-name" src="data:,">Depot <b id="bold-by-name">north</b>'
    ring = [[11.3, 48.0], [11.9, 48.0], [11.9, 48.3], [11.3, 48.3], [11.3, 48.0]]
    body = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"name": name},
    }
    r = fleet.post("/v1/geofences", json=body, headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]})
    assert r.status_code == 201, r.text
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        page.wait_for_selector("path.geofence")
        fences = page.locator("path.geofence")
        for i in range(fences.count()):
            fences.nth(i).dispatch_event("mouseover")
        page.wait_for_function(
            "(n) => [...document.querySelectorAll('.leaflet-tooltip')]"
            ".some(t => t.textContent.includes(n))",
            arg="Depot",
        )
        assert page.evaluate("document.getElementById('injected-by-name')") is None
        assert page.evaluate("document.getElementById('bold-by-name')") is None
        shown = page.evaluate(
            "[...document.querySelectorAll('.leaflet-tooltip')].map(t => t.textContent)"
        )
        assert name in shown, shown
        assert console.errors == []
    finally:
        context.close()
        fleet.delete(
            f"/v1/geofences/{r.json()['id']}",
            headers={"X-CSRF-Token": fleet.cookies["tg_csrf"]},
        )


def test_download_the_report_as_csv(stack: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    up: Up = stack["up"]
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        page.goto(f"{up.api}/reports")
        page.wait_for_selector("body[data-ready='1']")
        with page.expect_download() as download:
            page.click("#csv")
        path = tmp_path / "report.csv"
        download.value.save_as(path)
        header = path.read_text().splitlines()[0]
        assert header.startswith("key,name,day,trips,distance_m"), header
        screenshot(page, "reports")
        assert console.errors == []
    finally:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_serious_accessibility_violations(
    stack: dict[str, Any], browser: Any, scheme: str
) -> None:
    """axe-core (from npm, tests/data/axe) on each page, in both themes: no serious or
    critical finding (contrast included). The check is injected as a script, which the
    pages' CSP forbids: this one context bypasses the CSP to run it."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    csrf = {"X-CSRF-Token": fleet.cookies["tg_csrf"]}
    r = fleet.post("/v1/fleets", json={"name": f"Axe fleet {scheme}"}, headers=csrf)
    assert r.status_code == 201, r.text  # the map's fleet selector is checked too
    context = browser.new_context(bypass_csp=True, color_scheme=scheme)
    page = context.new_page()
    try:
        page.goto(f"{up.api}/login")
        found = {"login": _axe(page)}
        submit_login(page, FLEET, fleet_password(up))
        vehicle = f"/vehicles/{stack['vins'][0]}"
        pages = [
            *(("map", "/"), ("vehicle", vehicle), ("alerts", "/alerts")),
            *(("reports", "/reports"), ("jobs", "/jobs"), ("quarantine", "/quarantine")),
            *(("sharing", "/sharing"), ("fleets", "/fleets")),
        ]
        for name, path in pages:
            page.goto(f"{up.api}{path}")
            page.wait_for_selector("body[data-ready='1']")
            if name == "map":
                page.wait_for_selector("#fleet-filter")
            found[name] = _axe(page)
        assert found == {name: [] for name in found}
    finally:
        context.close()
        fleet.delete(f"/v1/fleets/{r.json()['id']}", headers=csrf)


def _axe(page: Any) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize(
    ("next_path", "lands_on"),
    [
        ("/alerts", "/alerts"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        # the URL parser drops tabs and newlines: "/<tab>/host" is "//host"
        ("/\t/evil.example", "/"),
        ("https://evil.example/", "/"),
    ],
)
def test_the_login_returns_only_to_a_page_of_this_site(
    stack: dict[str, Any], browser: Any, next_path: str, lands_on: str
) -> None:
    up: Up = stack["up"]
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{up.api}/login?next={quote(next_path, safe='')}")
        submit_login(page, OWNER, OWNER_PASSWORD)
        assert page.url == f"{up.api}{lands_on}"
    finally:
        context.close()


def test_a_session_the_api_no_longer_accepts_says_log_in_again(
    stack: dict[str, Any], browser: Any
) -> None:
    up: Up = stack["up"]
    context, page, _ = log_in(browser, up, OWNER, OWNER_PASSWORD)
    try:
        # what an expired or ended session looks like to the API: a token it refuses
        cookie = next(c for c in context.cookies() if c["name"] == "tg_session")
        context.add_cookies([{**cookie, "value": cookie["value"][:-4] + "AAAA"}])
        page.goto(f"{up.api}/alerts")
        page.wait_for_url(re.compile(r"/login\?expired=1"))
        page.wait_for_selector("#notice:text('Your session has expired: log in again.')")
    finally:
        context.close()


def test_logging_out_in_the_browser_ends_a_stolen_copy_of_the_cookie(
    stack: dict[str, Any], browser: Any
) -> None:
    """The session lives on the server: the "Log out" button ends it there, so a copy of
    the cookie taken before (by malware, a shared computer, a proxy log) stops working."""
    up: Up = stack["up"]
    context, page, console = log_in(browser, up, OWNER, OWNER_PASSWORD)
    try:
        stolen = next(c["value"] for c in context.cookies() if c["name"] == "tg_session")
        with httpx.Client(base_url=up.api, cookies={"tg_session": stolen}) as thief:
            assert thief.get("/v1/me").status_code == 200
            page.click("#logout")
            page.wait_for_url(re.compile(r"/login$"))
            r = thief.get("/v1/me")
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "session_ended"
            bearer = {"Authorization": f"Bearer {stolen}"}
            assert httpx.get(f"{up.api}/v1/me", headers=bearer).status_code == 401
        # and the browser itself is logged out
        page.goto(f"{up.api}/alerts")
        page.wait_for_url(re.compile(r"/login\?"))
        assert console.errors == []
    finally:
        context.close()


def test_usable_on_a_phone_sized_screen(stack: dict[str, Any], browser: Any) -> None:
    up: Up = stack["up"]
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(f"{up.api}/login")
        submit_login(page, FLEET, fleet_password(up))
        for path in (
            *("/", f"/vehicles/{stack['vins'][0]}", "/alerts", "/reports", "/jobs"),
            *("/quarantine", "/sharing", "/fleets"),
        ):
            page.goto(f"{up.api}{path}")
            page.wait_for_selector("body[data-ready='1']")
            # nothing wider than the screen but tables, which scroll in their own box
            wide = page.evaluate(
                """() => document.documentElement.scrollWidth - window.innerWidth"""
            )
            assert wide <= 0, f"{path} is {wide} px wider than the phone's screen"
        page.goto(f"{up.api}/")
        page.wait_for_selector("body[data-ready='1']")
        screenshot(page, "phone-map")
    finally:
        context.close()


# --- live status and a restarted API (these change the stack: they come last) --------------


class _Unit:
    """A telematics unit of the owner's own (paho-mqtt, docs/device-contract.md): it says
    online, reports a position, and can say offline as its Last Will would."""

    def __init__(self, up: Up, vin: str, password: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.vin = vin
        self.prefix = f"v1/vehicles/{vin}/"
        self.seq = 0
        self.connected = False
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=vin, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(vin, password)

        def on_connect(*args: Any) -> None:
            self.connected = not args[3].is_failure

        self.client.on_connect = on_connect

        def attempt() -> bool:  # the broker lets a new car in within a second or so
            self.client.connect("127.0.0.1", up.mqtt_port, 30)
            self.client.loop_start()
            deadline = time.monotonic() + 3
            while not self.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.connected:
                self.client.loop_stop()
                self.client.disconnect()
            return self.connected

        wait_until(attempt, timeout=30, what=f"{vin} to be let in")

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        info = self.client.publish(self.prefix + topic, json.dumps(body), qos=1, retain=False)
        info.wait_for_publish(15)

    def status(self, state: str) -> None:
        info = self.client.publish(
            self.prefix + "status", json.dumps({"state": state}), qos=1, retain=True
        )
        info.wait_for_publish(15)

    def position(self, lat: float, lon: float) -> None:
        self.seq += 1
        signals = {
            "Vehicle.CurrentLocation.Latitude": lat,
            "Vehicle.CurrentLocation.Longitude": lon,
            "Vehicle.Speed": 0.0,
        }
        ts = time.time_ns() // 1_000_000
        self.publish("telemetry", {"vin": self.vin, "seq": self.seq, "ts": ts, "signals": signals})

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_vehicle_that_goes_offline_turns_grey_without_a_reload(
    stack: dict[str, Any], browser: Any
) -> None:
    """Issue 14: its marker and row on the map, and its page, grey out live when the
    vehicle says offline (its Last Will, as a unit losing its connection sends)."""
    up: Up = stack["up"]
    owner: httpx.Client = stack["owner"]
    csrf = {"X-CSRF-Token": owner.cookies["tg_csrf"]}
    vin = "WWEBX" + uuid.uuid4().hex[:12].upper()
    r = owner.post("/v1/vehicles", json={"vin": vin}, headers=csrf)
    assert r.status_code == 201, r.text
    unit = _Unit(up, vin, r.json()["mqtt"]["password"])
    context = None
    try:
        unit.status("online")
        unit.position(48.14, 11.56)
        wait_until(
            lambda: owner.get(f"/v1/vehicles/{vin}").json().get("online") is True,
            timeout=30,
            what="the new car online in the API",
        )
        context, page, console = log_in(browser, up, OWNER, OWNER_PASSWORD)
        marker = f"path.vehicle-marker[data-vin='{vin}']"
        page.wait_for_selector(f"{marker}[data-status='parked']")
        row = page.locator(f"tr[data-vin='{vin}'] .status")
        assert row.inner_text() == "parked"
        element = page.locator(marker).element_handle()
        grey = page.evaluate(
            "() => getComputedStyle(document.documentElement).getPropertyValue('--off').trim()"
        )
        vehicle_page = context.new_page()
        vehicle_page.goto(f"{up.api}/vehicles/{vin}")
        vehicle_page.wait_for_selector("body[data-ready='1']")
        vehicle_page.wait_for_selector("dd[data-field='Online']:text-is('yes')")
        vehicle_page.wait_for_selector("#live[data-state='live']")

        unit.status("offline")

        page.wait_for_selector(f"{marker}[data-status='offline']", timeout=15_000)
        assert row.inner_text() == "offline"
        assert element.evaluate("m => m.isConnected")  # the same marker, greyed
        assert page.locator(marker).get_attribute("stroke") == grey
        vehicle_page.wait_for_selector("dd[data-field='Online']:text-is('no')", timeout=15_000)
        screenshot(page, "offline-greyed")
        # and back online when it says so
        unit.status("online")
        page.wait_for_selector(f"{marker}[data-status='parked']", timeout=15_000)
        vehicle_page.wait_for_selector("dd[data-field='Online']:text-is('yes')", timeout=15_000)
        assert console.errors == []
    finally:
        if context is not None:
            context.close()
        unit.stop()
        owner.delete(f"/v1/vehicles/{vin}", headers=csrf)


def test_a_vehicle_that_never_reported_is_never_seen_not_offline(
    stack: dict[str, Any], browser: Any
) -> None:
    """Decision 0065: the API says ``online: null`` for a vehicle it never heard from; the
    map's table and the vehicle's page said "offline" (and "no"), as if it had gone away."""
    up: Up = stack["up"]
    owner: httpx.Client = stack["owner"]
    csrf = {"X-CSRF-Token": owner.cookies["tg_csrf"]}
    vin = "WNEWX" + uuid.uuid4().hex[:12].upper()
    r = owner.post("/v1/vehicles", json={"vin": vin}, headers=csrf)
    assert r.status_code == 201, r.text
    context = None
    try:
        state = owner.get(f"/v1/vehicles/{vin}").json()
        assert (state["online"], state["reported"]) == (None, False)
        context, page, console = log_in(browser, up, OWNER, OWNER_PASSWORD)
        row = page.locator(f"tr[data-vin='{vin}']")
        row.wait_for()
        assert row.locator(".status").inner_text() == "never seen"
        assert row.get_attribute("data-status") == "never seen"
        assert page.locator(".legend").inner_text().count("never seen") >= 1
        page.select_option("#status-filter", "offline")
        assert row.is_hidden()
        page.select_option("#status-filter", "never seen")
        assert row.is_visible()
        page.goto(f"{up.api}/vehicles/{vin}")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("dd[data-field='Online']:text-is('never seen')")
        screenshot(page, "never-seen")
        assert console.errors == []
    finally:
        if context is not None:
            context.close()
        owner.delete(f"/v1/vehicles/{vin}", headers=csrf)


def test_the_map_comes_back_by_itself_after_the_api_restarts(
    stack: dict[str, Any], browser: Any
) -> None:
    """The API process dies (SIGKILL) and the supervisor starts it again: the open page
    says it is reconnecting, then shows new positions without a reload. While it is down
    the stream's address answers 502, as a reverse proxy in front of it does: the browser's
    EventSource gives up for good on such an answer (it retries only a dropped
    connection), so the page opens a new one itself."""
    up: Up = stack["up"]
    context, page, _ = log_in(browser, up, FLEET, fleet_password(up))
    try:
        page.wait_for_function("() => (window.tgStats.snapshots || 0) >= 1")
        page.wait_for_selector("#live[data-state='live']")
        stream = re.compile(r"/v1/positions/stream$")
        page.route(stream, lambda route: route.fulfill(status=502, body="Bad Gateway"))
        api = _part(up, "api")
        os.kill(api["pid"], signal.SIGKILL)
        page.wait_for_selector("#live[data-state='reconnecting']", timeout=15_000)
        wait_until(
            lambda: _part(up, "api")["pid"] != api["pid"] and _healthy(up),
            timeout=90,
            what="the API started again",
        )
        page.wait_for_function("() => (window.tgStats.reopened || 0) >= 1", timeout=30_000)
        page.unroute(stream)
        # a new connection (a new snapshot), then live positions on it, in the same page
        page.wait_for_function("() => window.tgStats.snapshots >= 2", timeout=60_000)
        page.wait_for_selector("#live[data-state='live']")
        before = page.eval_on_selector_all(
            "path.vehicle-marker",
            "ms => Object.fromEntries(ms.map(m => [m.dataset.vin, m.getAttribute('d')]))",
        )
        page.wait_for_function(
            """([before]) => [...document.querySelectorAll('path.vehicle-marker')]
                 .some(m => m.getAttribute('d') !== before[m.dataset.vin])""",
            arg=[before],
            timeout=60_000,
        )
        assert page.locator("path.vehicle-marker").count() == 2
    finally:
        context.close()


def _part(up: Up, name: str) -> dict[str, Any]:
    status = json.loads((up.data / "health" / "supervisor.json").read_text())
    part: dict[str, Any] = next(p for p in status["parts"] if p["name"] == name)
    return part


def _healthy(up: Up) -> bool:
    try:
        return httpx.get(f"{up.api}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_quarantine_of_your_own_vehicles_and_the_admin_health_page(
    stack: dict[str, Any], browser: Any
) -> None:
    """Issue 14: a fleet manager reads the quarantine of their vehicles (not of anyone
    else's), an owner is refused in words, and an administrator sees everything and the
    gateway's health: components, ingest rate and the quarantine by reason."""
    up: Up = stack["up"]
    units: list[tuple[httpx.Client, str, _Unit]] = []
    try:
        for client in (stack["fleet"], stack["owner"]):
            csrf = {"X-CSRF-Token": client.cookies["tg_csrf"]}
            vin = "WWEBK" + uuid.uuid4().hex[:12].upper()
            r = client.post("/v1/vehicles", json={"vin": vin}, headers=csrf)
            assert r.status_code == 201, r.text
            unit = _Unit(up, vin, r.json()["mqtt"]["password"])
            units.append((client, vin, unit))
            unit.status("online")
            unit.seq += 1  # a speed no car drives: refused and quarantined
            ts = time.time_ns() // 1_000_000
            unit.publish(
                "telemetry",
                {"vin": vin, "seq": unit.seq, "ts": ts, "signals": {"Vehicle.Speed": 9999.0}},
            )
        fleet_vin, owner_vin = units[0][1], units[1][1]
        admin = session(up, "admin@localhost", ADMIN_PASSWORD)
        try:

            def both_quarantined() -> bool:
                items = admin.get("/v1/quarantine", params={"limit": 100}).json()["items"]
                return {fleet_vin, owner_vin} <= {q["vin"] for q in items}

            wait_until(both_quarantined, timeout=30, what="both refused samples")
        finally:
            admin.close()
        # the fleet manager: their vehicle's entry, not the owner's
        context, page, console = log_in(browser, up, FLEET, fleet_password(up))
        try:
            page.goto(f"{up.api}/quarantine")
            page.wait_for_selector("body[data-ready='1']")
            shown = page.eval_on_selector_all(
                "#quarantine tbody tr[data-entry]", "rows => rows.map(r => r.dataset.vin)"
            )
            assert fleet_vin in shown
            assert owner_vin not in shown
            assert set(shown) <= set(stack["vins"]) | {fleet_vin}
            row = page.locator(f"#quarantine tr[data-vin='{fleet_vin}'] .reason").first
            assert "out of range" in row.inner_text()
            screenshot(page, "quarantine")
            assert console.errors == []
        finally:
            context.close()
        # an owner: refused, in words
        context, page, _ = log_in(browser, up, OWNER, OWNER_PASSWORD)
        try:
            page.goto(f"{up.api}/quarantine")
            page.wait_for_selector("body[data-ready='1']")
            page.wait_for_selector("#notice:text('by fleet managers and fleet viewers')")
            assert page.locator("#quarantine tbody tr[data-entry]").count() == 0
        finally:
            context.close()
        _admin_sees_the_health_page(up, browser)
    finally:
        for client, vin, unit in units:
            unit.stop()
            client.delete(
                f"/v1/vehicles/{vin}", headers={"X-CSRF-Token": client.cookies["tg_csrf"]}
            )


def _admin_sees_the_health_page(up: Up, browser: Any) -> None:
    """An administrator's health page: components, a measured ingest rate, the
    quarantine by reason (the two samples refused above among them)."""
    context, page, console = log_in(browser, up, "admin@localhost", ADMIN_PASSWORD)
    try:
        assert page.locator("#nav-health").is_visible()
        page.goto(f"{up.api}/health")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("body[data-rate='1']", timeout=20_000)  # two reads
        components = page.eval_on_selector_all(
            "#components tbody tr", "rows => rows.map(r => r.dataset.component)"
        )
        assert {"telemetry_store", "state_database", "broker", "ingest"} <= set(components)
        rate = page.locator("dd[data-figure='Samples stored']").inner_text()
        assert rate.endswith("/s")
        assert float(rate.removesuffix("/s")) > 0  # the demo cars report every second
        refused = page.locator("td[data-reason='out_of_range']").inner_text()
        assert int(refused) >= 2
        screenshot(page, "health")
        assert console.errors == []
    finally:
        context.close()


def test_an_owner_adds_a_driver_and_shares_a_car_then_stops(
    stack: dict[str, Any], browser: Any
) -> None:
    """Issue 14: an owner's drivers and grants pages: add a driver, share a car of
    their own with them (some services), and stop sharing; the driver's access follows."""
    up: Up = stack["up"]
    owner: httpx.Client = stack["owner"]
    csrf = {"X-CSRF-Token": owner.cookies["tg_csrf"]}
    vin = "WWEBS" + uuid.uuid4().hex[:12].upper()
    r = owner.post("/v1/vehicles", json={"vin": vin}, headers=csrf)
    assert r.status_code == 201, r.text
    driver_email = f"driver-{uuid.uuid4().hex[:8]}@web.test"
    context, page, console = log_in(browser, up, OWNER, OWNER_PASSWORD)
    try:
        page.goto(f"{up.api}/sharing")
        page.wait_for_selector("body[data-ready='1']")
        # only the owner's own car is theirs to share, not the one shared with them
        sections = page.eval_on_selector_all(
            "#shared-vehicles section", "s => s.map(x => x.dataset.vin)"
        )
        assert sections == [vin]
        page.fill("#driver-name", "Dana Driver")
        page.fill("#driver-email", driver_email)
        page.click("#driver-add")
        page.wait_for_selector("#notice:text('shown only now')")
        password = page.locator("#notice").inner_text().rsplit(": ", 1)[1]
        page.wait_for_selector(f"#drivers td:text-is('{driver_email}')")
        # share: read and lock only
        page.select_option(f"#grant-user-{vin}", label=driver_email)
        page.uncheck(f"#grant-{vin}-unlock")
        page.click(f"button[data-grant-vin='{vin}']")
        page.wait_for_selector(f"#notice:text('is shared with {driver_email}')")
        cell = page.locator(f"section[data-vin='{vin}'] tr[data-grant] .services")
        assert sorted(cell.inner_text().split(", ")) == ["lock", "read"]
        driver = session(up, driver_email, password)
        try:
            assert [v["vin"] for v in driver.get("/v1/vehicles").json()["items"]] == [vin]
            refused = driver.post(
                f"/v1/vehicles/{vin}/commands",
                json={"type": "unlock"},
                headers={"X-CSRF-Token": driver.cookies["tg_csrf"]},
            )
            assert refused.status_code == 403, refused.text
            screenshot(page, "sharing")
            page.click(f"section[data-vin='{vin}'] button[data-revoke]")
            page.wait_for_selector("#notice:text('is no longer shared with')")
            assert driver.get(f"/v1/vehicles/{vin}").status_code == 404
        finally:
            driver.close()
        assert page.locator(f"section[data-vin='{vin}'] tr[data-grant]").count() == 0
        assert console.errors == []
    finally:
        context.close()
        owner.delete(f"/v1/vehicles/{vin}", headers=csrf)


def test_a_fleet_manager_sees_and_adds_the_drivers_of_trips_and_alerts(
    stack: dict[str, Any], browser: Any
) -> None:
    """Found by a fleet manager's trial: the drivers page listed only driver logins and
    said "No drivers yet" to a manager whose drivers (POST /v1/drivers, named on trips,
    alerts and reports) came from the API; it now lists them with the vehicle each drives,
    and adds one assigned to a vehicle from now on."""
    up: Up = stack["up"]
    fleet: httpx.Client = stack["fleet"]
    csrf = {"X-CSRF-Token": fleet.cookies["tg_csrf"]}
    vin = stack["vins"][0]
    made = fleet.post("/v1/drivers", json={"name": "From the API"}, headers=csrf)
    assert made.status_code == 201, made.text
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        page.goto(f"{up.api}/sharing")
        page.wait_for_selector("body[data-ready='1']")
        listed = page.locator(f"#fleet-drivers tr[data-driver='{made.json()['id']}']")
        assert listed.locator("td").first.inner_text() == "From the API"
        page.fill("#fleet-driver-name", "Added in the browser")
        page.select_option("#fleet-driver-vin", vin)
        page.click("#fleet-driver-add")
        row = page.locator("#fleet-drivers tr", has_text="Added in the browser")
        row.wait_for()
        assert row.locator(".drives").inner_text() == vin
        # a user keeps the newest 20 logins (MAX_WEB_SESSIONS): by now the module's browser
        # log-ins as the fleet manager may have ended the stack's older session, so read
        # through a login of this test's own
        api = session(up, FLEET, fleet_password(up))
        try:
            listed_now = api.get("/v1/drivers")
            assert listed_now.status_code == 200, listed_now.text
            (driver,) = [
                d for d in listed_now.json()["items"] if d["name"] == "Added in the browser"
            ]
            (assignment,) = api.get(f"/v1/drivers/{driver['id']}/assignments").json()["items"]
        finally:
            api.close()
        assert (assignment["vin"], assignment["end_at"]) == (vin, None)
        screenshot(page, "fleet-drivers")
        assert console.errors == []
    finally:
        context.close()
