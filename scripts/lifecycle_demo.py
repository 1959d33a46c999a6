"""One car's life against a running demo (`scripts/demo.sh` or `telematics up --demo`), step
by step, through the public API and the broker only: the maker builds and registers it, a
private buyer claims it with its pairing code, its unit reports, the owner shares its
position with roadside assistance, it becomes due for service and goes to a workshop, and
it is sold on to a second owner, whose unit's new credentials replace the first one's
(issue 16; README "Vehicle lifecycle").

    .venv/bin/python scripts/lifecycle_demo.py [--api http://localhost:8080] [--mqtt-port 1884]

The administrator's password comes from TELEMATICS_ADMIN_PASSWORD (or --admin-password).
Each run uses a fresh VIN and fresh accounts, so it can run again and again. The unit
publishes with `mosquitto_pub` (installed with Mosquitto). Exit status 1 when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from typing import Any

import httpx

PASSWORD = "lifecycle-demo-" + secrets.token_hex(4)
ODOMETER = "Vehicle.TraveledDistance"
LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"


class Demo:
    def __init__(self, api: str, mqtt_port: int, admin_password: str) -> None:
        self.http = httpx.Client(base_url=api, timeout=30)
        self.mqtt_port = mqtt_port
        self.admin = self.login("admin@localhost", admin_password)
        self.seq = 0

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """One request, waiting out the API's rate limits (logins from one address are
        limited: a second run soon after the first meets them)."""
        for _ in range(10):
            r = self.http.request(method, url, **kw)
            if r.status_code != 429:
                return r
            time.sleep(min(float(r.headers.get("Retry-After", "1")), 30.0))
        return r

    def call(self, headers: dict[str, str], method: str, url: str, **kw: Any) -> Any:
        r = self.request(method, url, headers=headers, **kw)
        if r.status_code >= 400:
            sys.exit(f"{method} {url} answered {r.status_code}: {r.text}")
        return r.json() if r.content else None

    def login(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        r = self.request(
            "POST",
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
        if r.status_code != 200:
            sys.exit(f"logging in as {email} failed ({r.status_code}): {r.text}")
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def person(self, email: str) -> dict[str, str]:
        body = {"email": email, "password": PASSWORD, "name": email.split("@")[0]}
        self.call({}, "POST", "/v1/auth/register", json=body)
        return self.login(email)

    def organization(self, name: str, manager: str) -> tuple[int, dict[str, str]]:
        org = self.call(self.admin, "POST", "/v1/accounts",
                        json={"kind": "organization", "name": name})  # fmt: skip
        self.call(self.admin, "POST", "/v1/users", json={
            "email": manager, "name": name, "role": "fleet_manager", "password": PASSWORD,
            "account_id": org["id"]})  # fmt: skip
        return org["id"], self.login(manager)

    def publish(self, vin: str, password: str, **signals: float) -> bool:
        """One sample as the car's unit; False when the broker refuses the login."""
        self.seq += 1
        body = {"vin": vin, "seq": self.seq, "ts": int(time.time() * 1000), "signals": signals}
        done = subprocess.run(
            ["mosquitto_pub", "-p", str(self.mqtt_port), "-q", "1", "-i", vin, "-u", vin,
             "-P", password, "-t", f"v1/vehicles/{vin}/telemetry", "-m", json.dumps(body)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return done.returncode == 0


def step(text: str) -> None:
    print(f"\n== {text}")


def show(text: str) -> None:
    print(f"   {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="http://localhost:8080")
    parser.add_argument("--mqtt-port", type=int, default=1884)
    parser.add_argument("--admin-password", default=os.environ.get("TELEMATICS_ADMIN_PASSWORD"))
    args = parser.parse_args()
    if not args.admin_password:
        sys.exit("give the administrator's password: TELEMATICS_ADMIN_PASSWORD or --admin-password")
    demo = Demo(args.api, args.mqtt_port, args.admin_password)
    run = secrets.token_hex(3)
    vin = f"WLCYCLE{secrets.randbelow(10**10):010d}"
    ana, password = sell(demo, vin, run)
    report(demo, vin, ana, password)
    assist(demo, vin, ana)
    service(demo, vin, ana, run)
    sell_on(demo, vin, ana, password, run)
    step("the VIN's history, as the maker sees it")
    for e in demo.call(demo.admin, "GET", f"/v1/vehicles/{vin}/lifecycle")["history"]:
        show(f"{e['at_iso']}  {e['event']:<14} {e['from_state']} -> {e['to_state']}")


def sell(demo: Demo, vin: str, run: str) -> tuple[dict[str, str], str]:
    state = f"/v1/vehicles/{vin}/lifecycle"
    step(f"built: the maker registers {vin} and prints its pairing code for the buyer")
    code = demo.call(demo.admin, "POST", f"{state}/registration")["pairing_code"]
    show(f"state {demo.call(demo.admin, 'GET', state)['state']}, pairing code {code}")

    step("sold and paired: a private buyer claims it with the code (the VIN alone is not enough)")
    ana = demo.person(f"ana-{run}@example.com")
    refused = demo.request("POST", "/v1/vehicles", json={"vin": vin}, headers=ana)
    show(f"claim by VIN alone: {refused.status_code} {refused.json()['error']['code']}")
    claimed = demo.call(ana, "POST", f"/v1/vehicles/{vin}/claim", json={"code": code})
    show(f"claimed with the code: holding period {claimed['tenure']}, unit credentials issued")
    password: str = claimed["mqtt"]["password"]
    return ana, password


def report(demo: Demo, vin: str, ana: dict[str, str], password: str) -> None:
    step("in use: the unit reports (odometer just past 15,000 km, parked in Munich)")
    deadline = time.monotonic() + 20
    sample = {ODOMETER: 15_020_000, LAT: 48.1372, LON: 11.5756, SOC: 64.0}
    while not demo.publish(vin, password, **sample):
        if time.monotonic() > deadline:
            sys.exit("the broker did not admit the new unit within 20 s")
        time.sleep(0.5)  # the broker learns new credentials within a second
    for _ in range(100):
        got = demo.request("GET", f"/v1/vehicles/{vin}", headers=ana)
        if got.status_code == 200 and ODOMETER in got.json().get("state", {}):
            show(f"stored: {got.json()['state'][ODOMETER]['value']} m on the odometer")
            return
        time.sleep(0.2)
    sys.exit("the sample did not reach the API within 20 s")


def assist(demo: Demo, vin: str, ana: dict[str, str]) -> None:
    step("roadside assistance: Ana shares the car's position with a partner for an hour")
    body = {"partner": "Roadside Co", "duration_s": 3600}
    share = demo.call(ana, "POST", f"/v1/vehicles/{vin}/assistance-shares", json=body)
    seen = demo.call({}, "GET", share["partner_path"])["signals"]
    where = f"lat {seen[LAT]['value']}, lon {seen[LON]['value']}"
    show(f"the partner's link (no account) shows {where}")
    demo.call(ana, "DELETE", f"/v1/vehicles/{vin}/assistance-shares/{share['id']}")
    show("Ana ends the share: the link answers 410 from now on")


def service(demo: Demo, vin: str, ana: dict[str, str], run: str) -> None:
    step("due for service: the maker's service plan for this model says every 15,000 km")
    plan = {"name": "demo model", "vin_prefix": "WLCYCLE", "every_km": 15_000,
            "every_months": 24, "fault_codes": ["P03*"]}  # fmt: skip
    demo.call(demo.admin, "PUT", "/v1/service-plans", json=plan)
    demo.call(demo.admin, "POST", "/v1/maintenance/check")
    due = demo.call(ana, "GET", f"/v1/vehicles/{vin}/diagnostics")["maintenance"]["due"]
    show(f"due: {', '.join(d['message'] for d in due)} (Ana got a maintenance.due event)")

    step("in service: Ana takes it to a workshop, which reads diagnostics, never positions")
    workshop, garage = demo.organization(f"Garage {run}", f"garage-{run}@example.com")
    partner = {"account_id": workshop, "name": f"Garage {run}"}
    demo.call(demo.admin, "POST", "/v1/service-partners", json=partner)
    until = int(time.time() * 1000) + 2 * 3600 * 1000
    body = {"workshop_account_id": workshop, "until": until}
    life = demo.call(ana, "POST", f"/v1/vehicles/{vin}/service", json=body)
    diag = demo.call(garage, "GET", f"/v1/vehicles/{vin}/diagnostics")
    show(f"state {life['state']}; the workshop sees {sorted(diag['signals'])} (no position)")
    demo.call(ana, "DELETE", f"/v1/vehicles/{vin}/service")
    after = demo.request("GET", f"/v1/vehicles/{vin}/diagnostics", headers=garage).status_code
    show(f"service ended: the workshop's access is gone ({after}), the due items are done")


def sell_on(demo: Demo, vin: str, ana: dict[str, str], old_password: str, run: str) -> None:
    step("transferred: Ana sells the car to Ben, who accepts; the unit gets new credentials")
    ben = demo.person(f"ben-{run}@example.com")
    body = {"to_email": f"ben-{run}@example.com"}
    offer = demo.call(ana, "POST", f"/v1/vehicles/{vin}/transfers", json=body)
    accepted = demo.call(ben, "POST", f"/v1/transfers/{offer['id']}/accept", json={})
    new_password = accepted["vehicle"]["mqtt"]["password"]
    time.sleep(1.5)  # the broker's sync: within a second
    old = "still work?!" if demo.publish(vin, old_password) else "refused"
    show(f"the old credentials: {old}")
    if old != "refused":
        sys.exit("the old credentials still worked after the transfer")
    if not demo.publish(vin, new_password, **{ODOMETER: 15_021_000}):
        sys.exit("the new holder's unit was refused")
    left = demo.request("GET", f"/v1/vehicles/{vin}", headers=ana).status_code
    show(f"Ben's unit reports; Ana no longer sees the car ({left}), Ben sees only his period")


if __name__ == "__main__":
    main()
