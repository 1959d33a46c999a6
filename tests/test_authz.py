"""The authorization table: every route x every role x own or foreign resource.

The table is keyed by the app's routes and a test fails when a route has no row, so a new
route cannot ship without deciding who may call it. Each cell is what the caller must get:

* ``OK``: the route does its job (2xx; for cancel, 409 "not cancellable" also counts: the
  caller was let through to the command's state);
* ``403``: the caller can see the resource but their role may not do this;
* ``404``: the caller may not see the resource at all, answered exactly like a resource that
  does not exist, so ids cannot be probed.

Anonymous callers get 401 on every route but the public ones (log in, register, revoke a
refresh token, health check, the OpenAPI pages).

The world: organizations A and B, a private account P. A has a fleet manager and a fleet
viewer, B a fleet manager, P an owner and a driver (a family member) whose grant on P's car
allows only ``read``, ``lock`` and ``locate``. "Own" resources are in the caller's account (for the
driver: the car granted to them); "foreign" ones are in organization B. Everybody logs in
through the real token endpoint; commands go through a real broker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from httpx2 import Response

from tests.support.api import TEST_ADMIN_EMAIL
from tests.support.authz import (
    PASSWORD,
    SPEED,
    WEBHOOK_URL,
    World,
    fresh_vin,
    open_world,
)

OK, FORBIDDEN, NOT_FOUND = "ok", 403, 404
PERSONAS = ("admin", "fleet_manager", "fleet_viewer", "owner", "driver")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(tmp_path_factory.mktemp("authz")) as opened:
        yield opened


# --- the table -----------------------------------------------------------------------------

Call = Callable[[World, str | None, bool], Response]


@dataclass(frozen=True)
class Row:
    call: Call
    #: persona -> (expected for an own resource, for a foreign one); None: public route
    expect: dict[str, tuple[Any, Any]] | None


def same(own: Any, foreign: Any | None = None) -> dict[str, tuple[Any, Any]]:
    """Every non-admin persona gets (own, foreign); the admin gets OK for both."""
    other = own if foreign is None else foreign
    return {p: (OK, OK) if p == "admin" else (own, other) for p in PERSONAS}


def cells(**by_persona: tuple[Any, Any]) -> dict[str, tuple[Any, Any]]:
    assert set(by_persona) == set(PERSONAS)
    return dict(by_persona)


READ = same(OK, NOT_FOUND)  # everyone sees their own vehicle, only the admin a foreign one
ADMIN_ONLY = same(FORBIDDEN)
EVERYONE = same(OK)
MANAGE = cells(
    admin=(OK, OK),
    fleet_manager=(OK, NOT_FOUND),
    fleet_viewer=(FORBIDDEN, NOT_FOUND),
    owner=(OK, NOT_FOUND),
    driver=(FORBIDDEN, NOT_FOUND),
)

INTEGRATIONS = cells(
    admin=(OK, OK),
    fleet_manager=(OK, NOT_FOUND),
    fleet_viewer=(FORBIDDEN, NOT_FOUND),
    owner=(FORBIDDEN, NOT_FOUND),
    driver=(FORBIDDEN, NOT_FOUND),
)


def get(path: Callable[[World, str, bool], str], **kw: Any) -> Call:
    def call(w: World, persona: str | None, own: bool) -> Response:
        return w.client.get(path(w, persona or "admin", own), headers=w.as_(persona), **kw)

    return call


def post(
    path: Callable[[World, str, bool], str],
    body: Callable[[World, str, bool], Any] | None = None,
    **kw: Any,
) -> Call:
    def call(w: World, persona: str | None, own: bool) -> Response:
        p = persona or "admin"
        payload = body(w, p, own) if body is not None else None
        return w.client.post(path(w, p, own), json=payload, headers=w.as_(persona), **kw)

    return call


def method(verb: str, path: Callable[[World, str, bool], str], body: Any = None) -> Call:
    def call(w: World, persona: str | None, own: bool) -> Response:
        p = persona or "admin"
        return w.client.request(verb, path(w, p, own), json=body, headers=w.as_(persona))

    return call


def stream(path: Callable[[World, str, bool], str]) -> Call:
    def call(w: World, persona: str | None, own: bool) -> Response:
        url = path(w, persona or "admin", own)
        with w.client.stream("GET", url, headers=w.as_(persona)) as r:
            if r.status_code != 200:
                r.read()  # an error: a JSON body to check
            return r

    return call


def vin_of(w: World, p: str, own: bool) -> str:
    return w.vehicle(p, own)


def api_key_of(w: World, p: str, own: bool) -> str:
    owner = p if own else "admin"
    if not own and p == "admin":
        owner = "fleet_manager"
    r = w.client.post("/v1/api-keys", json={"name": "k"}, headers=w.headers[owner])
    assert r.status_code == 201, r.text
    return f"/v1/api-keys/{r.json()['id']}"


TABLE: dict[tuple[str, str], Row] = {
    # vehicles and telemetry
    ("GET", "/v1/vehicles"): Row(get(lambda w, p, own: "/v1/vehicles"), EVERYONE),
    ("GET", "/v1/vehicles/{vin}"): Row(
        get(lambda w, p, own: f"/v1/vehicles/{vin_of(w, p, own)}"), READ
    ),
    ("GET", "/v1/vehicles/{vin}/history"): Row(
        get(lambda w, p, own: f"/v1/vehicles/{vin_of(w, p, own)}/history?signals={SPEED}&start=0"),
        READ,
    ),
    ("GET", "/v1/catalog"): Row(get(lambda w, p, own: "/v1/catalog"), EVERYONE),
    # fleet roles read their vehicles' entries (a foreign VIN's: none, tested in the
    # dashboard's browser test with real units); the others are refused
    ("GET", "/v1/quarantine"): Row(
        get(lambda w, p, own: f"/v1/quarantine?vin={w.vehicle(p, own)}"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, OK),
            fleet_viewer=(OK, OK),
            owner=(FORBIDDEN, FORBIDDEN),
            driver=(FORBIDDEN, FORBIDDEN),
        ),
    ),
    ("GET", "/healthz"): Row(get(lambda w, p, own: "/healthz"), None),
    ("GET", "/readyz"): Row(get(lambda w, p, own: "/readyz"), None),
    ("GET", "/metrics"): Row(get(lambda w, p, own: "/metrics"), ADMIN_ONLY),
    # commands
    ("POST", "/v1/vehicles/{vin}/commands"): Row(
        post(
            lambda w, p, own: f"/v1/vehicles/{vin_of(w, p, own)}/commands",
            lambda *_: {"type": "lock"},
        ),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, NOT_FOUND),
            fleet_viewer=(FORBIDDEN, NOT_FOUND),
            owner=(OK, NOT_FOUND),
            driver=(OK, NOT_FOUND),  # lock is in the driver's grant
        ),
    ),
    ("GET", "/v1/vehicles/{vin}/commands"): Row(
        get(lambda w, p, own: f"/v1/vehicles/{vin_of(w, p, own)}/commands"), READ
    ),
    ("GET", "/v1/commands/{command_id}"): Row(
        get(lambda w, p, own: f"/v1/commands/{w.command(vin_of(w, p, own))}"), READ
    ),
    ("POST", "/v1/commands/{command_id}/cancel"): Row(
        post(lambda w, p, own: f"/v1/commands/{w.command(vin_of(w, p, own))}/cancel"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, NOT_FOUND),
            fleet_viewer=(FORBIDDEN, NOT_FOUND),
            owner=(OK, NOT_FOUND),
            driver=(OK, NOT_FOUND),
        ),
    ),
    ("GET", "/v1/commands/{command_id}/events"): Row(
        stream(lambda w, p, own: f"/v1/commands/{w.command(vin_of(w, p, own))}/events"), READ
    ),
    ("GET", "/v1/command-types"): Row(get(lambda w, p, own: "/v1/command-types"), EVERYONE),
    # bulk commands: per vehicle as a single command; a job is its account's and creator's
    ("POST", "/v1/command-jobs"): Row(
        post(
            lambda w, p, own: "/v1/command-jobs",
            lambda w, p, own: {"type": "lock", "vins": [vin_of(w, p, own)]},
        ),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, NOT_FOUND),
            fleet_viewer=(FORBIDDEN, NOT_FOUND),
            owner=(OK, NOT_FOUND),
            driver=(OK, NOT_FOUND),
        ),
    ),
    ("GET", "/v1/command-jobs"): Row(get(lambda w, p, own: "/v1/command-jobs"), EVERYONE),
    ("GET", "/v1/command-jobs/{job_id}"): Row(
        get(lambda w, p, own: f"/v1/command-jobs/{w.job(p, own)}"), READ
    ),
    ("POST", "/v1/command-jobs/{job_id}/cancel"): Row(
        post(lambda w, p, own: f"/v1/command-jobs/{w.job(p, own)}/cancel"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, NOT_FOUND),
            fleet_viewer=(FORBIDDEN, NOT_FOUND),
            owner=(OK, NOT_FOUND),
            driver=(OK, NOT_FOUND),
        ),
    ),
    # notifications: the stream is scoped, never refused; webhooks are the managers'
    ("GET", "/v1/stream"): Row(stream(lambda w, p, own: "/v1/stream"), EVERYONE),
    ("POST", "/v1/webhooks"): Row(
        post(
            lambda w, p, own: "/v1/webhooks",
            lambda w, p, own: {"url": WEBHOOK_URL, "account_id": w.account(p, own)},
        ),
        MANAGE,
    ),
    ("GET", "/v1/webhooks"): Row(
        get(lambda w, p, own: "/v1/webhooks"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, OK),
            fleet_viewer=(FORBIDDEN, FORBIDDEN),
            owner=(OK, OK),
            driver=(FORBIDDEN, FORBIDDEN),
        ),
    ),
    ("DELETE", "/v1/webhooks/{webhook_id}"): Row(
        method("DELETE", lambda w, p, own: f"/v1/webhooks/{w.webhook(p, own)}"), MANAGE
    ),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): Row(
        get(lambda w, p, own: f"/v1/webhooks/{w.webhook(p, own)}/deliveries"), MANAGE
    ),
    ("POST", "/v1/webhooks/{webhook_id}/test"): Row(
        post(lambda w, p, own: f"/v1/webhooks/{w.webhook(p, own)}/test"), MANAGE
    ),
    # MQTT integration credentials: the organization's fleet managers (and the admin) only
    ("POST", "/v1/integrations"): Row(
        post(
            lambda w, p, own: "/v1/integrations",
            lambda w, p, own: {"account_id": w.account(p, own)},
        ),
        INTEGRATIONS,
    ),
    ("GET", "/v1/integrations"): Row(
        get(lambda w, p, own: "/v1/integrations"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, OK),
            fleet_viewer=(FORBIDDEN, FORBIDDEN),
            owner=(FORBIDDEN, FORBIDDEN),
            driver=(FORBIDDEN, FORBIDDEN),
        ),
    ),
    ("DELETE", "/v1/integrations/{credential_id}"): Row(
        method("DELETE", lambda w, p, own: f"/v1/integrations/{w.integration(p, own)}"),
        INTEGRATIONS,
    ),
    # authentication
    ("POST", "/v1/auth/token"): Row(
        lambda w, p, own: w.client.post("/v1/auth/token", data={"grant_type": "password"}), None
    ),
    # the web dashboard's login (cookies) and logout; its live map's feed is scoped
    ("POST", "/v1/auth/session"): Row(
        lambda w, p, own: w.client.post(
            "/v1/auth/session", json={"email": "nobody@example.com", "password": "wrong-1"}
        ),
        None,
    ),
    ("DELETE", "/v1/auth/session"): Row(
        method("DELETE", lambda w, p, own: "/v1/auth/session"), EVERYONE
    ),
    ("GET", "/v1/positions/stream"): Row(
        stream(lambda w, p, own: "/v1/positions/stream"), EVERYONE
    ),
    ("POST", "/v1/auth/revoke"): Row(
        lambda w, p, own: w.client.post("/v1/auth/revoke", json={"refresh_token": "x"}), None
    ),
    ("POST", "/v1/auth/register"): Row(
        lambda w, p, own: w.client.post(
            "/v1/auth/register",
            json={
                "email": f"r{fresh_vin().lower()}@example.com",
                "password": PASSWORD,
                "name": "r",
            },
        ),
        None,
    ),
    ("GET", "/v1/me"): Row(get(lambda w, p, own: "/v1/me"), EVERYONE),
    ("POST", "/v1/api-keys"): Row(
        post(lambda w, p, own: "/v1/api-keys", lambda *_: {"name": "k"}), EVERYONE
    ),
    ("GET", "/v1/api-keys"): Row(get(lambda w, p, own: "/v1/api-keys"), EVERYONE),
    ("DELETE", "/v1/api-keys/{key_id}"): Row(method("DELETE", api_key_of), same(OK, NOT_FOUND)),
    ("GET", "/v1/users/{user_id}/api-keys"): Row(
        get(lambda w, p, own: f"/v1/users/{w.user_in(p, own)}/api-keys"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, NOT_FOUND),
            fleet_viewer=(NOT_FOUND, NOT_FOUND),
            owner=(OK, NOT_FOUND),
            driver=(NOT_FOUND, NOT_FOUND),
        ),
    ),
    # accounts and users
    ("POST", "/v1/accounts"): Row(
        post(lambda w, p, own: "/v1/accounts", lambda *_: {"kind": "organization", "name": "n"}),
        ADMIN_ONLY,
    ),
    ("GET", "/v1/accounts"): Row(get(lambda w, p, own: "/v1/accounts"), EVERYONE),
    ("GET", "/v1/accounts/{account_id}"): Row(
        get(lambda w, p, own: f"/v1/accounts/{w.account(p, own)}"), same(OK, NOT_FOUND)
    ),
    ("POST", "/v1/users"): Row(
        post(
            lambda w, p, own: "/v1/users",
            lambda w, p, own: {
                "email": f"n{fresh_vin().lower()}@example.com",
                "name": "n",
                "role": "driver",
                "account_id": w.account(p, own),
                "password": PASSWORD,
            },
        ),
        MANAGE,
    ),
    ("GET", "/v1/users"): Row(
        get(lambda w, p, own: "/v1/users"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, OK),
            fleet_viewer=(FORBIDDEN, FORBIDDEN),
            owner=(OK, OK),
            driver=(FORBIDDEN, FORBIDDEN),
        ),
    ),
    ("GET", "/v1/users/{user_id}"): Row(
        get(lambda w, p, own: f"/v1/users/{w.user_in(p, own)}"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, NOT_FOUND),
            fleet_viewer=(NOT_FOUND, NOT_FOUND),
            owner=(OK, NOT_FOUND),
            driver=(NOT_FOUND, NOT_FOUND),
        ),
    ),
    ("PATCH", "/v1/users/{user_id}"): Row(
        lambda w, p, own: w.client.patch(
            f"/v1/users/{w.user_in(p or 'admin', own)}", json={"name": "renamed"}, headers=w.as_(p)
        ),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, NOT_FOUND),
            fleet_viewer=(NOT_FOUND, NOT_FOUND),
            owner=(OK, NOT_FOUND),
            driver=(NOT_FOUND, NOT_FOUND),
        ),
    ),
    # provisioning and grants
    ("POST", "/v1/vehicles"): Row(
        post(
            lambda w, p, own: "/v1/vehicles",
            lambda w, p, own: {"vin": fresh_vin(), "account_id": w.account(p, own)},
        ),
        MANAGE,
    ),
    ("GET", "/v1/vehicles/{vin}/registration"): Row(
        get(lambda w, p, own: f"/v1/vehicles/{vin_of(w, p, own)}/registration"), READ
    ),
    ("DELETE", "/v1/vehicles/{vin}"): Row(
        method("DELETE", lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}"),
        MANAGE,
    ),
    ("POST", "/v1/vehicles/{vin}/credentials"): Row(
        post(lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/credentials"),
        MANAGE,
    ),
    ("POST", "/v1/vehicles/{vin}/grants"): Row(
        post(
            lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/grants",
            lambda w, p, own: {"user_id": w.member_of(p, own), "services": ["locate"]},
        ),
        MANAGE,
    ),
    ("GET", "/v1/vehicles/{vin}/grants"): Row(
        get(lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/grants"), MANAGE
    ),
    ("DELETE", "/v1/vehicles/{vin}/grants/{grant_id}"): Row(
        lambda w, p, own: _delete_grant(w, p, own), MANAGE
    ),
    ("POST", "/v1/vehicles/{vin}/invitations"): Row(
        post(
            lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/invitations",
            lambda *_: {"email": "friend@example.com", "services": ["read", "locate"]},
        ),
        MANAGE,
    ),
    ("GET", "/v1/vehicles/{vin}/invitations"): Row(
        get(lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/invitations"),
        MANAGE,
    ),
    ("DELETE", "/v1/vehicles/{vin}/invitations/{invitation_id}"): Row(
        lambda w, p, own: _withdraw_invitation(w, p, own), MANAGE
    ),
    # invitations to the caller: "own" is one addressed to them, "foreign" one to another
    ("GET", "/v1/invitations"): Row(get(lambda w, p, own: "/v1/invitations"), EVERYONE),
    ("POST", "/v1/invitations/{invitation_id}/accept"): Row(
        post(lambda w, p, own: f"/v1/invitations/{w.invitation_to(p, own)}/accept"),
        dict.fromkeys(PERSONAS, (OK, NOT_FOUND)),
    ),
    ("POST", "/v1/invitations/{invitation_id}/decline"): Row(
        post(lambda w, p, own: f"/v1/invitations/{w.invitation_to(p, own)}/decline"),
        dict.fromkeys(PERSONAS, (OK, NOT_FOUND)),
    ),
    # audit
    ("GET", "/v1/audit"): Row(
        get(lambda w, p, own: "/v1/audit"),
        cells(
            admin=(OK, OK),
            fleet_manager=(OK, OK),
            fleet_viewer=(FORBIDDEN, FORBIDDEN),
            owner=(FORBIDDEN, FORBIDDEN),
            driver=(FORBIDDEN, FORBIDDEN),
        ),
    ),
}


# --- fleet management (issue 13) -----------------------------------------------------------

#: an account's fleet setup (fleets, drivers, geofences, rule settings, driver reports):
#: fleet readers and the owner of their own account; a driver sees none of it
SETUP_READ = cells(
    admin=(OK, OK),
    fleet_manager=(OK, NOT_FOUND),
    fleet_viewer=(OK, NOT_FOUND),
    owner=(OK, NOT_FOUND),
    driver=(NOT_FOUND, NOT_FOUND),
)
SETUP_MANAGE = cells(
    admin=(OK, OK),
    fleet_manager=(OK, NOT_FOUND),
    fleet_viewer=(FORBIDDEN, NOT_FOUND),
    owner=(OK, NOT_FOUND),
    driver=(NOT_FOUND, NOT_FOUND),
)
FENCE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [11.5755, 48.1374]},
    "properties": {"name": "depot", "radius_m": 200},
}


def _fleet_of(w: World, p: str, own: bool) -> int:
    r = w.admin(
        "POST", "/v1/fleets", json={"name": f"f{fresh_vin()}", "account_id": w.account(p, own)}
    )
    fleet_id: int = r.json()["id"]
    return fleet_id


def _driver_of(w: World, p: str, own: bool) -> int:
    r = w.admin("POST", "/v1/drivers", json={"name": "d", "account_id": w.account(p, own)})
    driver_id: int = r.json()["id"]
    return driver_id


def _geofence_of(w: World, p: str, own: bool) -> int:
    r = w.admin("POST", f"/v1/geofences?account_id={w.account(p, own)}", json=FENCE)
    fence_id: int = r.json()["id"]
    return fence_id


def _alert_of(w: World, p: str, own: bool) -> int:
    """An open alert of the persona's own (or the foreign) vehicle, as the worker stores
    it."""
    from gateway.statedb.models import FleetAlertRow

    vin = w.vehicle(p, own)
    db = w.client.app.state.state_db  # type: ignore[attr-defined]
    account = w.client.app.state.auth.accounts.get_vehicle(vin)  # type: ignore[attr-defined]
    with db.write() as session:
        row = FleetAlertRow(
            account_id=account.account_id,
            vin=vin,
            tenure=account.tenure,
            kind="overspeed",
            key="overspeed",
            severity="warning",
            start_at=1,
            end_at=None,
            detail={},
            updated_at=1,
        )
        session.add(row)
        session.flush()
        alert_id: int = row.id
    return alert_id


def _remove_member(w: World, p: str | None, own: bool) -> Response:
    p_ = p or "admin"
    fleet, vin = _fleet_of(w, p_, own), w.vehicle(p_, own)
    w.admin("PUT", f"/v1/fleets/{fleet}/vehicles/{vin}")
    return w.client.delete(f"/v1/fleets/{fleet}/vehicles/{vin}", headers=w.as_(p))


def _unassign(w: World, p: str | None, own: bool) -> Response:
    p_ = p or "admin"
    driver = _driver_of(w, p_, own)
    body = {"vin": w.vehicle(p_, own), "valid_from": 0}
    assignment = w.admin("POST", f"/v1/drivers/{driver}/assignments", json=body).json()["id"]
    return w.client.delete(f"/v1/drivers/{driver}/assignments/{assignment}", headers=w.as_(p))


TABLE.update(
    {
        ("GET", "/v1/vehicles/{vin}/events"): Row(
            get(lambda w, p, own: f"/v1/vehicles/{vin_of(w, p, own)}/events"), READ
        ),
        ("POST", "/v1/fleets"): Row(
            post(
                lambda w, p, own: "/v1/fleets",
                lambda w, p, own: {"name": f"n{fresh_vin()}", "account_id": w.account(p, own)},
            ),
            SETUP_MANAGE,
        ),
        ("GET", "/v1/fleets"): Row(
            get(lambda w, p, own: f"/v1/fleets?account_id={w.account(p, own)}"), SETUP_READ
        ),
        ("GET", "/v1/fleets/{fleet_id}"): Row(
            get(lambda w, p, own: f"/v1/fleets/{_fleet_of(w, p, own)}"), SETUP_READ
        ),
        ("PATCH", "/v1/fleets/{fleet_id}"): Row(
            lambda w, p, own: w.client.patch(
                f"/v1/fleets/{_fleet_of(w, p or 'admin', own)}",
                json={"speed_limit_kmh": 80},
                headers=w.as_(p),
            ),
            SETUP_MANAGE,
        ),
        ("DELETE", "/v1/fleets/{fleet_id}"): Row(
            method("DELETE", lambda w, p, own: f"/v1/fleets/{_fleet_of(w, p, own)}"), SETUP_MANAGE
        ),
        ("GET", "/v1/fleets/{fleet_id}/vehicles"): Row(
            get(lambda w, p, own: f"/v1/fleets/{_fleet_of(w, p, own)}/vehicles"), SETUP_READ
        ),
        ("PUT", "/v1/fleets/{fleet_id}/vehicles/{vin}"): Row(
            method(
                "PUT",
                lambda w, p, own: f"/v1/fleets/{_fleet_of(w, p, own)}/vehicles/{vin_of(w, p, own)}",
            ),
            SETUP_MANAGE,
        ),
        ("DELETE", "/v1/fleets/{fleet_id}/vehicles/{vin}"): Row(_remove_member, SETUP_MANAGE),
        ("GET", "/v1/accounts/{account_id}/rule-settings"): Row(
            get(lambda w, p, own: f"/v1/accounts/{w.account(p, own)}/rule-settings"), SETUP_READ
        ),
        ("PUT", "/v1/accounts/{account_id}/rule-settings"): Row(
            method(
                "PUT",
                lambda w, p, own: f"/v1/accounts/{w.account(p, own)}/rule-settings",
                {"rules": {"idle_after_ms": 600000}},
            ),
            SETUP_MANAGE,
        ),
        ("POST", "/v1/drivers"): Row(
            post(
                lambda w, p, own: "/v1/drivers",
                lambda w, p, own: {"name": "n", "account_id": w.account(p, own)},
            ),
            SETUP_MANAGE,
        ),
        ("GET", "/v1/drivers"): Row(
            get(lambda w, p, own: f"/v1/drivers?account_id={w.account(p, own)}"), SETUP_READ
        ),
        ("GET", "/v1/drivers/{driver_id}"): Row(
            get(lambda w, p, own: f"/v1/drivers/{_driver_of(w, p, own)}"), SETUP_READ
        ),
        ("PATCH", "/v1/drivers/{driver_id}"): Row(
            lambda w, p, own: w.client.patch(
                f"/v1/drivers/{_driver_of(w, p or 'admin', own)}",
                json={"name": "renamed"},
                headers=w.as_(p),
            ),
            SETUP_MANAGE,
        ),
        ("POST", "/v1/drivers/{driver_id}/assignments"): Row(
            post(
                lambda w, p, own: f"/v1/drivers/{_driver_of(w, p, own)}/assignments",
                lambda w, p, own: {"vin": vin_of(w, p, own), "valid_from": 0},
            ),
            SETUP_MANAGE,
        ),
        ("GET", "/v1/drivers/{driver_id}/assignments"): Row(
            get(lambda w, p, own: f"/v1/drivers/{_driver_of(w, p, own)}/assignments"), SETUP_READ
        ),
        ("DELETE", "/v1/drivers/{driver_id}/assignments/{assignment_id}"): Row(
            _unassign, SETUP_MANAGE
        ),
        ("POST", "/v1/geofences"): Row(
            post(
                lambda w, p, own: f"/v1/geofences?account_id={w.account(p, own)}",
                lambda *_: FENCE,
            ),
            SETUP_MANAGE,
        ),
        ("GET", "/v1/geofences"): Row(
            get(lambda w, p, own: f"/v1/geofences?account_id={w.account(p, own)}"), SETUP_READ
        ),
        ("GET", "/v1/geofences/{geofence_id}"): Row(
            get(lambda w, p, own: f"/v1/geofences/{_geofence_of(w, p, own)}"), SETUP_READ
        ),
        ("PUT", "/v1/geofences/{geofence_id}"): Row(
            method("PUT", lambda w, p, own: f"/v1/geofences/{_geofence_of(w, p, own)}", FENCE),
            SETUP_MANAGE,
        ),
        ("DELETE", "/v1/geofences/{geofence_id}"): Row(
            method("DELETE", lambda w, p, own: f"/v1/geofences/{_geofence_of(w, p, own)}"),
            SETUP_MANAGE,
        ),
        # alerts, trips and vehicle reports go with the vehicle's data (a driver's grant
        # with read included); acknowledging and clearing with managing the vehicle
        ("GET", "/v1/alerts"): Row(
            get(lambda w, p, own: f"/v1/alerts?vin={vin_of(w, p, own)}"), READ
        ),
        ("POST", "/v1/alerts/{alert_id}/acknowledge"): Row(
            post(lambda w, p, own: f"/v1/alerts/{_alert_of(w, p, own)}/acknowledge"), MANAGE
        ),
        ("POST", "/v1/alerts/acknowledge"): Row(
            post(
                lambda *_: "/v1/alerts/acknowledge",
                lambda w, p, own: {"ids": [_alert_of(w, p, own)]},
            ),
            MANAGE,
        ),
        ("POST", "/v1/alerts/{alert_id}/clear"): Row(
            post(lambda w, p, own: f"/v1/alerts/{_alert_of(w, p, own)}/clear"), MANAGE
        ),
        ("GET", "/v1/trips"): Row(
            get(lambda w, p, own: f"/v1/trips?vin={vin_of(w, p, own)}"), READ
        ),
        ("GET", "/v1/reports/vehicles"): Row(
            get(lambda w, p, own: f"/v1/reports/vehicles?vin={vin_of(w, p, own)}"), READ
        ),
        ("GET", "/v1/reports/drivers"): Row(
            get(lambda w, p, own: f"/v1/reports/drivers?account_id={w.account(p, own)}"),
            SETUP_READ,
        ),
        ("GET", "/v1/reports/utilization"): Row(
            get(lambda w, p, own: f"/v1/reports/utilization?vin={vin_of(w, p, own)}"), READ
        ),
        ("GET", "/v1/reports/faults"): Row(
            get(lambda w, p, own: f"/v1/reports/faults?account_id={w.account(p, own)}"),
            SETUP_READ,
        ),
    }
)


# --- the vehicle lifecycle, transfers and assistance shares (issue 16) -----------------------

#: when a workshop's access ends: must be in the future (2**42 ms is in the year 2109)
SERVICE_UNTIL = 2**42

#: a transfer to the caller: "own" is one addressed to them, "foreign" one to someone else
TO_ME = cells(
    admin=(OK, FORBIDDEN),
    fleet_manager=(OK, NOT_FOUND),
    fleet_viewer=(FORBIDDEN, NOT_FOUND),
    owner=(OK, NOT_FOUND),
    driver=(FORBIDDEN, NOT_FOUND),
)
TABLE.update(
    {
        ("POST", "/v1/vehicles/{vin}/lifecycle/registration"): Row(
            post(lambda w, p, own: f"/v1/vehicles/{fresh_vin()}/lifecycle/registration"),
            ADMIN_ONLY,
        ),
        ("POST", "/v1/vehicles/{vin}/pairing-code"): Row(
            post(lambda w, p, own: f"/v1/vehicles/{_built(w)[0]}/pairing-code"), ADMIN_ONLY
        ),
        ("POST", "/v1/vehicles/{vin}/claim"): Row(lambda w, p, own: _claim(w, p, own), MANAGE),
        ("GET", "/v1/vehicles/{vin}/lifecycle"): Row(
            get(lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/lifecycle"),
            MANAGE,
        ),
        ("POST", "/v1/vehicles/{vin}/service"): Row(
            post(
                lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/service",
                lambda w, p, own: {"workshop_account_id": _workshop(w), "until": SERVICE_UNTIL},
            ),
            MANAGE,
        ),
        ("DELETE", "/v1/vehicles/{vin}/service"): Row(
            method("DELETE", lambda w, p, own: f"/v1/vehicles/{_in_service(w, p, own)}/service"),
            MANAGE,
        ),
        ("POST", "/v1/vehicles/{vin}/decommission"): Row(
            post(
                lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/decommission",
                lambda *_: {"reason": "scrapped"},
            ),
            ADMIN_ONLY,
        ),
        ("POST", "/v1/vehicles/{vin}/transfers"): Row(
            post(
                lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/transfers",
                lambda *_: {"to_email": "buyer@example.com"},
            ),
            MANAGE,
        ),
        ("GET", "/v1/transfers"): Row(get(lambda w, p, own: "/v1/transfers"), EVERYONE),
        ("GET", "/v1/transfers/{transfer_id}"): Row(
            get(lambda w, p, own: f"/v1/transfers/{_transfer_to(w, p, own)}"),
            {p: (OK, OK) if p == "admin" else (OK, NOT_FOUND) for p in PERSONAS},
        ),
        ("POST", "/v1/transfers/{transfer_id}/accept"): Row(
            post(
                lambda w, p, own: f"/v1/transfers/{_transfer_to(w, p, own)}/accept",
                lambda w, p, own: {"account_id": w.own_account(p)},
            ),
            TO_ME,
        ),
        ("POST", "/v1/transfers/{transfer_id}/decline"): Row(
            post(lambda w, p, own: f"/v1/transfers/{_transfer_to(w, p, own)}/decline"),
            {p: (OK, FORBIDDEN) if p == "admin" else (OK, NOT_FOUND) for p in PERSONAS},
        ),
        # a transfer of the caller's vehicle ("own") or of one of organization B: only the
        # holder's managers (and administrators) see and cancel it
        ("POST", "/v1/transfers/{transfer_id}/cancel"): Row(
            post(lambda w, p, own: f"/v1/transfers/{_transfer_from(w, p, own)}/cancel"),
            cells(
                admin=(OK, OK),
                fleet_manager=(OK, NOT_FOUND),
                fleet_viewer=(NOT_FOUND, NOT_FOUND),
                owner=(OK, NOT_FOUND),
                driver=(NOT_FOUND, NOT_FOUND),
            ),
        ),
        ("POST", "/v1/vehicles/{vin}/assistance-shares"): Row(
            post(
                lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/assistance-shares",
                lambda *_: {"partner": "Roadside Co"},
            ),
            READ,
        ),
        ("GET", "/v1/vehicles/{vin}/assistance-shares"): Row(
            get(lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/assistance-shares"),
            READ,
        ),
        ("DELETE", "/v1/vehicles/{vin}/assistance-shares/{share_id}"): Row(
            lambda w, p, own: _end_share(w, p, own), READ
        ),
        # the partner's view: no account, the share's token is the key
        ("GET", "/v1/assistance/{token}"): Row(
            get(lambda w, p, own: f"/v1/assistance/{_share(w, p, own)[2]}"), None
        ),
    }
)


# --- service partners, dealer consent, diagnostics, maintenance (issue 16, decision 0026) --

TABLE.update(
    {
        ("POST", "/v1/service-partners"): Row(
            post(
                lambda w, p, own: "/v1/service-partners",
                lambda w, p, own: {"account_id": w.accounts["B"], "name": "B"},
            ),
            ADMIN_ONLY,
        ),
        ("GET", "/v1/service-partners"): Row(
            get(lambda w, p, own: "/v1/service-partners"), EVERYONE
        ),
        ("GET", "/v1/service-partners/vehicles"): Row(
            get(lambda w, p, own: "/v1/service-partners/vehicles"), EVERYONE
        ),
        ("PUT", "/v1/vehicles/{vin}/dealer"): Row(
            lambda w, p, own: _consent(w, p, own, "PUT"), MANAGE
        ),
        ("GET", "/v1/vehicles/{vin}/dealer"): Row(
            lambda w, p, own: _consent(w, p, own, "GET"), READ
        ),
        ("DELETE", "/v1/vehicles/{vin}/dealer"): Row(
            lambda w, p, own: _consent(w, p, own, "DELETE"), MANAGE
        ),
        ("GET", "/v1/vehicles/{vin}/diagnostics"): Row(
            get(lambda w, p, own: f"/v1/vehicles/{w.disposable_vehicle(p, own)}/diagnostics"),
            READ,
        ),
        ("PUT", "/v1/service-plans"): Row(
            method(
                "PUT",
                lambda w, p, own: "/v1/service-plans",
                {"name": "authz", "vin_prefix": "WAUTHZ", "every_km": 15000},
            ),
            ADMIN_ONLY,
        ),
        ("GET", "/v1/service-plans"): Row(get(lambda w, p, own: "/v1/service-plans"), ADMIN_ONLY),
        ("POST", "/v1/maintenance/check"): Row(
            post(lambda w, p, own: "/v1/maintenance/check"), ADMIN_ONLY
        ),
        ("GET", "/v1/analytics/fault-codes"): Row(
            get(lambda w, p, own: "/v1/analytics/fault-codes"), ADMIN_ONLY
        ),
        # the vehicle's managers and the grant's own driver
        ("GET", "/v1/vehicles/{vin}/grants/{grant_id}/handover"): Row(
            get(lambda w, p, own: _handover(w, p, own)),
            cells(
                admin=(OK, OK),
                fleet_manager=(OK, NOT_FOUND),
                fleet_viewer=(FORBIDDEN, NOT_FOUND),
                owner=(OK, NOT_FOUND),
                driver=(OK, NOT_FOUND),
            ),
        ),
    }
)


def _handover(w: World, persona: str, own: bool) -> str:
    """A grant on the persona's vehicle (for the driver: their own grant; for the viewer:
    one to its fleet manager) or on one of B's, as the report's path."""
    vin = w.disposable_vehicle(persona, own)
    if own and persona == "driver":
        grant = w.admin("GET", f"/v1/vehicles/{vin}/grants").json()["items"][0]["id"]
    else:
        user = w.users["fleet_manager"] if own and persona == "fleet_viewer" else None
        body = {"user_id": user or w.member_of(persona, own), "services": ["read"]}
        grant = w.admin("POST", f"/v1/vehicles/{vin}/grants", json=body).json()["id"]
    return f"/v1/vehicles/{vin}/grants/{grant}/handover"


def _consent(w: World, persona: str | None, own: bool, verb: str) -> Response:
    """A vehicle of the persona (or of B) whose holder consented to dealer B (for GET and
    DELETE; PUT gives the consent)."""
    vin = w.disposable_vehicle(persona or "admin", own)
    w.admin("POST", "/v1/service-partners", json={"account_id": w.accounts["B"], "name": "B"})
    body = {"dealer_account_id": w.accounts["B"]}
    if verb != "PUT":
        w.admin("PUT", f"/v1/vehicles/{vin}/dealer", json=body)
    return w.client.request(
        verb,
        f"/v1/vehicles/{vin}/dealer",
        json=body if verb == "PUT" else None,
        headers=w.as_(persona),
    )


def _email(persona: str) -> str:
    return TEST_ADMIN_EMAIL if persona == "admin" else f"{persona}@example.com"


def _built(w: World) -> tuple[str, str]:
    """A fresh VIN the maker registered, and its pairing code."""
    vin = fresh_vin()
    code = w.admin("POST", f"/v1/vehicles/{vin}/lifecycle/registration").json()["pairing_code"]
    return vin, code


def _claim(w: World, persona: str | None, own: bool) -> Response:
    vin, code = _built(w)
    body = {"code": code, "account_id": w.account(persona or "admin", own)}
    return w.client.post(f"/v1/vehicles/{vin}/claim", json=body, headers=w.as_(persona))


def _workshop(w: World) -> int:
    """Organization B, registered as a service partner (only partners can be workshops)."""
    w.admin("POST", "/v1/service-partners", json={"account_id": w.accounts["B"], "name": "B"})
    return w.accounts["B"]


def _in_service(w: World, persona: str, own: bool) -> str:
    vin = w.disposable_vehicle(persona, own)
    body = {"workshop_account_id": _workshop(w), "until": SERVICE_UNTIL}
    w.admin("POST", f"/v1/vehicles/{vin}/service", json=body)
    return vin


def _offer(w: World, vin: str, email: str) -> int:
    transfer: int = w.admin(
        "POST", f"/v1/vehicles/{vin}/transfers", json={"to_email": email}
    ).json()["id"]
    return transfer


def _transfer_to(w: World, persona: str, own: bool) -> int:
    vin = w.disposable_vehicle("fleet_manager", False)
    return _offer(w, vin, _email(persona) if own else "someone-else@example.com")


def _transfer_from(w: World, persona: str, own: bool) -> int:
    return _offer(w, w.disposable_vehicle(persona, own), "buyer@example.com")


def _share(w: World, persona: str, own: bool) -> tuple[str, int, str]:
    vin = w.disposable_vehicle(persona, own)
    body = {"partner": "Roadside Co"}
    share = w.admin("POST", f"/v1/vehicles/{vin}/assistance-shares", json=body).json()
    return vin, share["id"], share["token"]


def _end_share(w: World, persona: str | None, own: bool) -> Response:
    vin, share, _ = _share(w, persona or "admin", own)
    return w.client.delete(f"/v1/vehicles/{vin}/assistance-shares/{share}", headers=w.as_(persona))


def _delete_grant(w: World, persona: str | None, own: bool) -> Response:
    p = persona or "admin"
    vin = w.disposable_vehicle(p, own)
    grant = w.admin(
        "POST",
        f"/v1/vehicles/{vin}/grants",
        json={"user_id": w.member_of(p, own), "services": ["read"]},
    ).json()
    return w.client.delete(f"/v1/vehicles/{vin}/grants/{grant['id']}", headers=w.as_(persona))


def _withdraw_invitation(w: World, persona: str | None, own: bool) -> Response:
    p = persona or "admin"
    vin = w.disposable_vehicle(p, own)
    invitation = w.invitation(vin, "friend@example.com")
    return w.client.delete(f"/v1/vehicles/{vin}/invitations/{invitation}", headers=w.as_(persona))


def test_every_route_has_a_row(world: World) -> None:
    # every route the app serves is in its OpenAPI document (none is hidden from it)
    spec = world.client.app.openapi()  # type: ignore[attr-defined]
    routes = {(verb.upper(), path) for path, ops in spec["paths"].items() for verb in ops}
    assert routes == set(TABLE), (
        f"routes without a row: {sorted(routes - set(TABLE))}; "
        f"rows without a route: {sorted(set(TABLE) - routes)}"
    )


_README_ROW = re.compile(r"^\| `([A-Z]+) (/[^`?]*)[^`]*` \| (.*) \|$", re.MULTILINE)
_OTHER_ROLES = ("fleet manager", "viewer", "owner", "driver")


def test_the_readme_says_administrators_only_where_the_route_is() -> None:
    """An outside review: the HTTP API table said "(administrators)" for GET /v1/quarantine,
    which fleet managers and viewers read too (their vehicles' entries). A row that names
    administrators and no other role must be a route this table refuses to all others."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    claimed = [
        (verb, path)
        for verb, path, text in _README_ROW.findall(readme)
        if "(administrators" in text and not any(role in text for role in _OTHER_ROLES)
    ]
    assert claimed  # /metrics at least
    wrong = [
        route
        for route in claimed
        if (expect := TABLE[route].expect) is not None
        and any(OK in expect[p] for p in PERSONAS if p != "admin")
    ]
    assert wrong == []


#: how a 403 names each role that may
_ROLE_WORDS = {
    "admin": "administrators",
    "fleet_manager": "fleet managers",
    "fleet_viewer": "fleet viewers",
    "owner": "owners",
    "driver": "drivers",
}


def test_the_quarantine_refusal_names_every_role_that_may_read_it(world: World) -> None:
    """Decision 0065: the 403 said "for administrators and fleet managers", and fleet
    viewers read it too (this table). It names exactly the roles the table lets in."""
    row = TABLE[("GET", "/v1/quarantine")]
    assert row.expect is not None
    allowed = [p for p in PERSONAS if row.expect[p][0] == OK]
    refused = [p for p in PERSONAS if row.expect[p][0] == FORBIDDEN]
    assert refused
    for persona in refused:
        r = row.call(world, persona, True)
        assert r.status_code == 403, r.text
        message = r.json()["error"]["message"]
        for role in allowed:
            assert _ROLE_WORDS[role] in message, (role, message)
        may = message.split(";")[0]
        for role in refused:
            assert _ROLE_WORDS[role] not in may, (role, message)


def _outcome(r: Response, route: tuple[str, str]) -> Any:
    if r.status_code < 300 or (route[1].endswith("/cancel") and r.status_code == 409):
        return OK
    return r.status_code


CASES = [
    pytest.param(
        route, persona, own, id=f"{route[0]} {route[1]} {persona} {'own' if own else 'foreign'}"
    )
    for route, row in TABLE.items()
    if row.expect is not None
    for persona in PERSONAS
    for own in (True, False)
]


@pytest.mark.parametrize(("route", "persona", "own"), CASES)
def test_authorization_table(world: World, route: tuple[str, str], persona: str, own: bool) -> None:
    row = TABLE[route]
    assert row.expect is not None
    expected = row.expect[persona][0 if own else 1]
    r = row.call(world, persona, own)
    assert _outcome(r, route) == expected, f"{r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"}, body
        assert body["error"]["message"], body
    if r.status_code == 404:
        # indistinguishable from a resource that does not exist
        assert body["error"]["code"].endswith("_not_found"), body


@pytest.mark.parametrize("route", list(TABLE), ids=[f"{m} {p}" for m, p in TABLE])
def test_anonymous_callers_are_refused(world: World, route: tuple[str, str]) -> None:
    row = TABLE[route]
    r = row.call(world, None, True)
    if row.expect is None:  # public
        assert r.status_code != 401 or r.json()["error"]["code"] == "invalid_grant", r.text
    else:
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "not_authenticated"
        assert r.headers["www-authenticate"] == "Bearer"


def test_lists_show_only_what_the_caller_may_see(world: World) -> None:
    for persona in PERSONAS:
        own, foreign = world.vehicles[persona]
        listed = {
            v["vin"]
            for v in world.client.get(
                "/v1/vehicles", params={"limit": 1000}, headers=world.headers[persona]
            ).json()["items"]
        }
        assert own in listed, persona
        assert (foreign in listed) == (persona == "admin"), persona
