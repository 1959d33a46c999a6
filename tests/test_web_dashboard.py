"""The web dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
running ``telematics up --demo`` stack: two simulated vehicles of the organization "Demo
Fleet", its fleet manager, and a private owner who was invited to one of them.

Screenshots land in test-artifacts/web/ (gitignored)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from gateway.broker import free_port
from tests.support.up import Up, start
from tests.support.waiting import wait_until
from tests.support.web import (
    AXE,
    chromium,
    fleet_password,
    log_in,
    screenshot,
    session,
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
        assert r.status_code == 201, r.text
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
    for path in ("/", "/login", f"/vehicles/{stack['vins'][0]}", "/alerts", "/reports"):
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


def test_owner_sees_only_the_vehicle_shared_with_them(stack: dict[str, Any], browser: Any) -> None:
    context, page, console = log_in(browser, stack["up"], OWNER, OWNER_PASSWORD)
    try:
        page.wait_for_function("() => document.querySelectorAll('path.vehicle-marker').length >= 1")
        time.sleep(1.5)  # a second vehicle would have arrived by now with the snapshot
        assert _table_vins(page) == [stack["vins"][0]]
        assert page.locator("path.vehicle-marker").count() == 1
        assert OWNER in page.locator("#who").inner_text()
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


def _vehicle_with(client: httpx.Client, vins: list[str], moving: bool, timeout: float) -> str:
    found: list[str] = []

    def look() -> bool:
        for vin, state in _positioned(client).items():
            speed = state.get("Vehicle.Speed", {}).get("value") or 0
            if vin in vins and (speed > 3 if moving else speed == 0):
                found.append(vin)
                return True
        return False

    wait_until(look, timeout=timeout, what=f"a {'moving' if moving else 'parked'} vehicle")
    return found[0]


def test_lock_a_parked_vehicle_and_see_it_succeed(stack: dict[str, Any], browser: Any) -> None:
    up: Up = stack["up"]
    context, page, console = log_in(browser, up, FLEET, fleet_password(up))
    try:
        outcomes: list[str] = []  # each attempt's status or notice, for the failure message
        for _attempt in range(4):  # a parked car may drive off between the look and the click
            vin = _vehicle_with(stack["fleet"], stack["vins"], moving=False, timeout=120)
            page.goto(f"{up.api}/vehicles/{vin}")
            page.wait_for_selector("body[data-ready='1']")
            before = page.eval_on_selector_all(
                "#commands tbody tr", "rows => rows.map((r) => r.dataset.command)"
            )
            page.click("button[data-command='lock']")
            # this click's own row, not the newest row: the click returns before the API
            # answers, and an earlier command's row (an earlier attempt's, or another
            # test's, 'succeeded' or 'refused') was the newest until then (CI, under load)
            page.wait_for_function(
                """(before) => {
                    const notice = document.getElementById("notice");
                    const row = document.querySelector("#commands tbody tr");
                    return !notice.hidden || (row && !before.includes(row.dataset.command));
                }""",
                arg=before,
                timeout=30_000,
            )
            if not page.locator("#notice").is_hidden():
                outcomes.append(page.locator("#notice").inner_text())
                continue
            mine = page.locator("#commands tbody tr").first.get_attribute("data-command")
            status = page.locator(f"#commands tbody tr[data-command='{mine}'] .command-status")
            page.wait_for_selector(
                f"#commands tbody tr[data-command='{mine}'] "
                ".command-status:text-matches('succeeded|failed|rejected|expired|timed_out|cancelled')",
                timeout=30_000,
            )
            outcomes.append(status.inner_text())
            if "succeeded" in outcomes[-1]:
                break
        assert "succeeded" in outcomes[-1], outcomes
        # then confirmed by the car's telemetry, live, and the state panel read again
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
    context, page, _ = log_in(browser, up, FLEET, fleet_password(up))
    try:
        for _attempt in range(4):
            vin = _vehicle_with(stack["fleet"], stack["vins"], moving=True, timeout=120)
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
        screenshot(page, "alerts")
        assert console.errors == []
    finally:
        context.close()


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
        assert header.startswith("key,day,trips,distance_m"), header
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
    context = browser.new_context(bypass_csp=True, color_scheme=scheme)
    page = context.new_page()
    try:
        page.goto(f"{up.api}/login")
        found = {"login": _axe(page)}
        page.fill("#email", FLEET)
        page.fill("#password", fleet_password(up))
        page.click("#submit")
        page.wait_for_selector("body[data-ready='1']")
        vehicle = f"/vehicles/{stack['vins'][0]}"
        pages = [("map", "/"), ("vehicle", vehicle), ("alerts", "/alerts"), ("reports", "/reports")]
        for name, path in pages:
            page.goto(f"{up.api}{path}")
            page.wait_for_selector("body[data-ready='1']")
            found[name] = _axe(page)
        assert found == {name: [] for name in found}
    finally:
        context.close()


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
        page.fill("#email", OWNER)
        page.fill("#password", OWNER_PASSWORD)
        page.click("#submit")
        page.wait_for_selector("body[data-ready='1']")
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


def test_usable_on_a_phone_sized_screen(stack: dict[str, Any], browser: Any) -> None:
    up: Up = stack["up"]
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(f"{up.api}/login")
        page.fill("#email", FLEET)
        page.fill("#password", fleet_password(up))
        page.click("#submit")
        page.wait_for_selector("body[data-ready='1']")
        for path in ("/", f"/vehicles/{stack['vins'][0]}", "/alerts", "/reports"):
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
