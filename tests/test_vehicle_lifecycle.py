"""The vehicle lifecycle through the API (issue 16), on SQLite and PostgreSQL: registration
and pairing codes, claims with proof of possession and the attacks on them, how the old
claim-by-VIN maps onto the registry, transfers between accounts, service and
decommissioning, the history and the audit log. The same against a real broker and
gateway is tests/test_vehicle_lifecycle_e2e.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from gateway.api import ApiSettings, create_app
from gateway.store import IngestBatch, Tenure, open_store
from schemas import Sample
from tests.support.api import auth_settings_for_tests, bearer

VIN = "WLYFE000000000001"
OTHER_VIN = "WLYFE000000000002"
PASSWORD = "lifecycle-password-1"


@dataclass
class Clock:
    """The API's clock, moved by the tests (starting now: the tokens are real)."""

    now: float = field(default_factory=lambda: float(int(time.time())))

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    client: TestClient
    clock: Clock
    admin: dict[str, str]

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
        """A self-registered private owner: (account id, headers)."""
        r = self.client.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD, "name": email}
        )
        assert r.status_code == 202, r.text
        headers = self.login(email)
        me = self.as_(headers, "GET", "/v1/me").json()
        return me["account"]["id"], headers

    def organization(self, name: str, manager: str) -> tuple[int, dict[str, str]]:
        r = self.as_(
            self.admin, "POST", "/v1/accounts", json={"kind": "organization", "name": name}
        )
        assert r.status_code == 201, r.text
        account: int = r.json()["id"]
        body = {"email": manager, "name": manager, "role": "fleet_manager", "password": PASSWORD}
        r = self.as_(self.admin, "POST", "/v1/users", json={**body, "account_id": account})
        assert r.status_code == 201, r.text
        return account, self.login(manager)

    def register_built(self, vin: str = VIN) -> str:
        r = self.as_(self.admin, "POST", f"/v1/vehicles/{vin}/lifecycle/registration")
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "built"
        code: str = r.json()["pairing_code"]
        return code

    def claim(self, headers: dict[str, str], code: str, vin: str = VIN) -> Response:
        return self.as_(headers, "POST", f"/v1/vehicles/{vin}/claim", json={"code": code})

    def state(self, vin: str = VIN) -> dict[str, Any]:
        r = self.as_(self.admin, "GET", f"/v1/vehicles/{vin}/lifecycle")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def audit(self, action: str) -> list[dict[str, Any]]:
        r = self.as_(self.admin, "GET", "/v1/audit", params={"action": action, "limit": 100})
        assert r.status_code == 200, r.text
        return [e for e in r.json()["items"] if e["action"] == action]


@pytest.fixture
def api(tmp_path: Path, state_db_url: str) -> Iterator[Api]:
    clock = Clock()
    settings = ApiSettings(
        tmp_path / "telemetry.db",
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(clock=clock),
    )
    with TestClient(create_app(settings)) as client:
        yield Api(client, clock, bearer())


def error(r: Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    return body["error"]


# --- proof of possession ----------------------------------------------------------------------


def test_a_registered_car_is_claimed_with_its_code_once(api: Api) -> None:
    code = api.register_built()
    account, owner = api.owner("ana@example.com")
    # the old first-come-first-served claim by VIN is refused for a registered car
    refused = api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN})
    error(refused, 409, "vehicle_not_claimable")
    # the code claims it (any spelling of it), with the unit's credentials
    claimed = api.claim(owner, code.lower().replace("-", " "))
    assert claimed.status_code == 201, claimed.text
    body = claimed.json()
    assert (body["account_id"], body["tenure"], body["mqtt"]["username"]) == (account, 1, VIN)
    assert body["mqtt"]["password"]
    assert api.state()["state"] == "active"
    assert api.state()["pairing_code_open"] is False
    # used up: the holder releases the car, and the same code does not claim it again
    assert api.as_(owner, "DELETE", f"/v1/vehicles/{VIN}").status_code == 200
    assert api.state()["state"] == "built"
    _, thief = api.owner("thief@example.com")
    error(api.claim(thief, code), 403, "pairing_code_wrong")
    error(api.as_(thief, "POST", "/v1/vehicles", json={"vin": VIN}), 409, "vehicle_not_claimable")
    # a held car: the code is no use to anyone else either
    fresh = api.as_(api.admin, "POST", f"/v1/vehicles/{VIN}/pairing-code").json()["pairing_code"]
    assert api.claim(owner, fresh).status_code == 201
    error(api.claim(thief, fresh), 403, "pairing_code_wrong")  # says nothing of the car
    history = api.state()["history"]
    assert [(e["event"], e["from_state"], e["to_state"]) for e in history] == [
        ("register", "unregistered", "built"),
        ("claim", "built", "active"),
        ("release", "active", "built"),
        ("issue_code", "built", "built"),
        ("claim", "built", "active"),
    ]
    assert [e["tenure"] for e in history] == [None, 1, 1, None, 2]
    # in the audit log too, failures included
    claims = api.audit("vehicle_claim")
    assert sorted(e["outcome"] for e in claims) == ["failed", "failed", "ok", "ok"]


def test_wrong_codes_lock_out_the_guessing_account_not_the_buyer(api: Api) -> None:
    """Security review 2 (decision 0023): wrong codes count per (account, VIN), so whoever
    knows a VIN cannot keep its buyer out by failing on purpose."""
    code = api.register_built()
    start = int(api.clock.now * 1000)
    _, attacker = api.owner("attacker@example.com")
    buyer_account, buyer = api.owner("buyer@example.com")
    for i in range(5):
        error(api.claim(attacker, f"WRONG-CODE-{i:04d}"), 403, "pairing_code_wrong")
    # the attacker waits: even the right code is not looked at for them
    locked = api.claim(attacker, code)
    error(locked, 429, "pairing_locked")
    assert locked.headers["Retry-After"] == "1"
    # the wait doubles with each further wrong code of that account
    api.clock.now += 1.0
    error(api.claim(attacker, "WRONG-CODE-0005"), 403, "pairing_code_wrong")
    error(api.claim(attacker, code), 429, "pairing_locked")
    assert api.as_(attacker, "GET", "/v1/me").status_code == 200
    # the buyer, who holds the code, is not held up at all
    claimed = api.claim(buyer, code)
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["account_id"] == buyer_account
    assert api.state()["pairing_locked_until"] is None
    assert int(api.clock.now * 1000) == start + 1000


def test_many_accounts_guesses_hit_the_vins_ceiling_but_not_the_codes_holder(api: Api) -> None:
    """The global ceiling: after PAIRING_VIN_LOCKOUT_AFTER wrong codes for one VIN from
    any accounts, every account that already guessed wrong waits; an account that never
    guessed wrong (the buyer typing the code) is still looked at."""
    from gateway.core.vehicle_lifecycle import PAIRING_LOCKOUT_AFTER, PAIRING_VIN_LOCKOUT_AFTER

    code = api.register_built()
    per_account = PAIRING_LOCKOUT_AFTER - 1  # stay below each account's own lock-out
    accounts = [
        api.owner(f"sybil{i}@example.com")[1]
        for i in range(-(-PAIRING_VIN_LOCKOUT_AFTER // per_account))
    ]
    guesses = 0
    for headers in accounts:
        for _ in range(per_account):
            if guesses < PAIRING_VIN_LOCKOUT_AFTER:
                error(api.claim(headers, f"WRONG-{guesses:04d}-XXXX"), 403, "pairing_code_wrong")
                guesses += 1
    assert api.state()["pairing_locked_until"] is not None
    # every account that guessed wrong is held by the VIN's lock-out, right code or not
    for headers in accounts:
        error(api.claim(headers, code), 429, "pairing_locked")
    # a fresh account gets one guess: wrong, and it waits like the others
    _, late = api.owner("late-sybil@example.com")
    error(api.claim(late, "WRONG-LATE-XXXX"), 403, "pairing_code_wrong")
    error(api.claim(late, code), 429, "pairing_locked")
    # the holder of the code, who never guessed wrong, claims it
    _, buyer = api.owner("buyer@example.com")
    assert api.claim(buyer, code).status_code == 201


def test_claims_answer_the_same_for_a_car_that_exists_or_not(api: Api) -> None:
    """Security review 2: a claim by someone who does not hold the car says nothing about
    it: a VIN never registered, one held by another account, one decommissioned and one
    with a code open all answer a wrong code the same way (and count towards the same
    lock-out)."""
    _, holder = api.owner("holder@example.com")
    _, prober = api.owner("prober@example.com")
    held, scrapped, built, unknown = (f"WPRBE000000000{i:03d}" for i in range(4))
    api.claim(holder, api.register_built(held), held)
    assert api.state(held)["state"] == "active"
    api.register_built(scrapped)
    body = {"reason": "scrapped"}
    assert api.as_(api.admin, "POST", f"/v1/vehicles/{scrapped}/decommission", json=body).is_success
    api.register_built(built)
    answers = []
    for vin in (held, scrapped, built, unknown):
        r = api.claim(prober, "AAAA-BBBB-CCCC", vin)
        answers.append((r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]))
    assert {(status, code) for status, code, _ in answers} == {(403, "pairing_code_wrong")}
    vins = (held, scrapped, built, unknown)
    pairs = zip(answers, vins, strict=True)
    messages = {message.replace(vin, "VIN") for (_, _, message), vin in pairs}
    assert len(messages) == 1, messages
    # the holder is told about their own car
    error(api.claim(holder, "AAAA-BBBB-CCCC", held), 409, "vehicle_already_provisioned")


def test_claims_by_vin_answer_the_same_for_a_built_held_or_scrapped_car(api: Api) -> None:
    """Security review 3, finding 2: POST /v1/vehicles answered `pairing_code_required`,
    `vehicle_held_by_another_account` or `vehicle_decommissioned`, so anyone could tell a
    VIN the maker registered from one somebody holds (and probe who). For everyone but
    administrators these answer one 409 `vehicle_not_claimable` with one message; the
    holder is still told about their own car, an administrator the reason."""
    _, holder = api.owner("holder@example.com")
    _, prober = api.owner("prober@example.com")
    held, claimed, scrapped, built = (f"WPRBV000000000{i:03d}" for i in range(4))
    assert api.as_(holder, "POST", "/v1/vehicles", json={"vin": held}).status_code == 201
    api.claim(holder, api.register_built(claimed), claimed)
    api.register_built(scrapped)
    body = {"reason": "scrapped"}
    assert api.as_(api.admin, "POST", f"/v1/vehicles/{scrapped}/decommission", json=body).is_success
    api.register_built(built)
    answers = set()
    for vin in (held, claimed, scrapped, built):
        r = api.as_(prober, "POST", "/v1/vehicles", json={"vin": vin})
        err = r.json()["error"]
        answers.add((r.status_code, err["code"], err["message"].replace(vin, "VIN")))
    assert len(answers) == 1, answers
    assert {(status, code) for status, code, _ in answers} == {(409, "vehicle_not_claimable")}
    error(
        api.as_(holder, "POST", "/v1/vehicles", json={"vin": held}),
        409,
        "vehicle_already_provisioned",
    )
    # the audit log keeps the real reason for the operator
    reasons = {
        e["detail"]["error"] for e in api.audit("vehicle_provision") if e["outcome"] == "failed"
    }
    assert {"held by another account", "pairing_code_required", "vehicle_decommissioned"} <= reasons


def test_another_cars_code_is_useless(api: Api) -> None:
    code = api.register_built(VIN)
    other = api.register_built(OTHER_VIN)
    _, owner = api.owner("owner@example.com")
    error(api.claim(owner, other, VIN), 403, "pairing_code_wrong")
    error(api.claim(owner, code, OTHER_VIN), 403, "pairing_code_wrong")
    assert api.claim(owner, code, VIN).status_code == 201
    assert api.claim(owner, other, OTHER_VIN).status_code == 201


def test_claims_and_registrations_refused_with_a_reason(api: Api) -> None:
    _, owner = api.owner("owner@example.com")
    # a VIN the maker never registered has no code to claim it with (answered as a wrong
    # code: a claim tells nobody which VINs exist)
    error(api.claim(owner, "AAAA-BBBB-CCCC"), 403, "pairing_code_wrong")
    # only administrators register cars and issue codes
    error(api.as_(owner, "POST", f"/v1/vehicles/{VIN}/lifecycle/registration"), 403, "forbidden")
    api.register_built()
    error(
        api.as_(api.admin, "POST", f"/v1/vehicles/{VIN}/lifecycle/registration"),
        409,
        "vehicle_already_registered",
    )
    error(api.as_(owner, "POST", f"/v1/vehicles/{VIN}/pairing-code"), 403, "forbidden")
    # the history is the administrator's; nobody else sees a car they do not hold
    error(api.as_(owner, "GET", f"/v1/vehicles/{VIN}/lifecycle"), 404, "vehicle_not_found")
    # bad input answers 422, not 500
    too_long = api.as_(owner, "POST", f"/v1/vehicles/{VIN}/claim", json={"code": "X" * 65})
    error(too_long, 422, "invalid_request")
    error(api.claim(owner, "AAAA", "not-a-vin"), 422, "invalid_vin")


def test_operators_keep_provisioning_by_vin(api: Api) -> None:
    """Old flows: an administrator provisions any VIN without a code, a registered one too;
    a VIN the maker never registered is still claimed by VIN, first come first served."""
    account, owner = api.owner("owner@example.com")
    api.register_built()
    r = api.as_(api.admin, "POST", "/v1/vehicles", json={"vin": VIN, "account_id": account})
    assert r.status_code == 201, r.text
    assert api.state()["state"] == "active"
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": OTHER_VIN}).status_code == 201
    other = api.state(OTHER_VIN)
    assert (other["state"], other["registered_at"]) == ("active", None)
    assert [e["event"] for e in other["history"]] == ["provision"]


# --- transfer -----------------------------------------------------------------------------------


def test_a_private_owner_transfers_to_another(api: Api) -> None:
    code = api.register_built()
    seller_account, seller = api.owner("seller@example.com")
    buyer_account, buyer = api.owner("buyer@example.com")
    _, stranger = api.owner("stranger@example.com")
    first = api.claim(seller, code).json()
    # the buyer cannot take what is not offered
    offered = api.as_(
        seller,
        "POST",
        f"/v1/vehicles/{VIN}/transfers",
        json={"to_email": "Buyer@Example.com", "note": "sold on 6 Dec"},
    )
    assert offered.status_code == 201, offered.text
    transfer = offered.json()
    assert (transfer["status"], transfer["from_account_id"]) == ("pending", seller_account)
    # visible to both sides, to nobody else
    assert [t["id"] for t in api.as_(seller, "GET", "/v1/transfers").json()["items"]] == [
        transfer["id"]
    ]
    assert [t["id"] for t in api.as_(buyer, "GET", "/v1/transfers").json()["items"]] == [
        transfer["id"]
    ]
    assert api.as_(stranger, "GET", "/v1/transfers").json()["items"] == []
    tid = transfer["id"]
    error(api.as_(stranger, "GET", f"/v1/transfers/{tid}"), 404, "transfer_not_found")
    error(
        api.as_(stranger, "POST", f"/v1/transfers/{tid}/accept", json={}), 404, "transfer_not_found"
    )
    error(api.as_(seller, "POST", f"/v1/transfers/{tid}/accept", json={}), 403, "forbidden")
    # accepted: a new holding period with new credentials
    accepted = api.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={"label": "Mine"})
    assert accepted.status_code == 200, accepted.text
    car = accepted.json()["vehicle"]
    assert (car["account_id"], car["tenure"], car["label"]) == (buyer_account, 2, "Mine")
    assert car["mqtt"]["password"] not in (None, first["mqtt"]["password"])
    assert accepted.json()["transfer"]["status"] == "accepted"
    # the seller no longer sees the car; both see the transfer as accepted
    error(api.as_(seller, "GET", f"/v1/vehicles/{VIN}"), 404, "vehicle_not_found")
    for side in (seller, buyer):
        assert api.as_(side, "GET", f"/v1/transfers/{tid}").json()["status"] == "accepted"
    # used: accepting again is refused
    error(api.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={}), 409, "transfer_closed")
    state = api.state()
    assert (state["state"], state["account_id"], state["tenure"]) == ("active", buyer_account, 2)
    event = state["history"][-1]
    assert event["event"] == "transfer"
    assert event["detail"] == {"transfer_id": tid, "from_account_id": seller_account}
    assert len(api.audit("vehicle_transfer_accept")) == 1
    # the buyer reads their own period's history, which names no other account
    own = api.as_(buyer, "GET", f"/v1/vehicles/{VIN}/lifecycle").json()["history"]
    assert [(e["event"], e["detail"]) for e in own] == [("transfer", None)]
    # and cannot offer the car to their own account (security review 3: the offer was
    # made, and only its acceptance refused)
    back = api.as_(
        buyer, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "BUYER@example.com"}
    )
    error(back, 409, "same_holder")
    assert api.as_(buyer, "GET", "/v1/transfers").json()["items"][0]["id"] == tid


def test_an_offer_to_an_address_without_an_account_needs_its_claim_token(api: Api) -> None:
    """Security review 2 (decision 0023): an offer to an address nobody had was taken by
    whoever registered that address first. Now the offerer gets a one-time claim token to
    pass on, and an offer to an address without an account is accepted only with it; an
    offer to a registered address is bound to that user."""
    _, seller = api.owner("seller@example.com")
    assert api.as_(seller, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    offered = api.as_(
        seller, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "new@example.com"}
    )
    assert offered.status_code == 201, offered.text
    token = offered.json()["claim_token"]
    assert len(token) >= 32
    tid = offered.json()["id"]
    # the token is shown once: not in the transfer as read later
    assert "claim_token" not in api.as_(seller, "GET", f"/v1/transfers/{tid}").json()
    # someone registers the address first: without the token the car is not theirs
    _, squatter = api.owner("new@example.com")
    accept = f"/v1/transfers/{tid}/accept"
    error(api.as_(squatter, "POST", accept, json={}), 403, "claim_token_required")
    wrong = {"claim_token": "x" * 43}
    error(api.as_(squatter, "POST", accept, json=wrong), 403, "claim_token_required")
    # nor can they turn the seller's buyer away by declining it
    decline = f"/v1/transfers/{tid}/decline"
    error(api.as_(squatter, "POST", decline), 403, "claim_token_required")
    assert api.as_(seller, "GET", f"/v1/transfers/{tid}").json()["status"] == "pending"
    # the buyer the seller gave the token to (here the address's owner) takes it
    r = api.as_(squatter, "POST", accept, json={"claim_token": token})
    assert r.status_code == 200, r.text
    # an offer to a registered address is bound to its user (a token is not needed)
    buyer_account, buyer = api.owner("buyer@example.com")
    _, new_owner = api.login("new@example.com"), api.login("new@example.com")
    again = api.as_(
        new_owner, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "buyer@example.com"}
    )
    assert again.status_code == 201, again.text
    assert "claim_token" in again.json()  # the same answer whether the address has an account
    r = api.as_(buyer, "POST", f"/v1/transfers/{again.json()['id']}/accept", json={})
    assert r.status_code == 200, r.text
    assert r.json()["vehicle"]["account_id"] == buyer_account


def test_claims_with_a_code_are_rate_limited_per_user(tmp_path: Path, state_db_url: str) -> None:
    """Security review 2, attacker pass: since a claim of any VIN counts as a wrong code
    (item 6), each one stores a row; unlimited, one account could claim a million made-up
    VINs and fill the state database. Claims share the invitations' limit per user, in
    their own bucket."""
    from gateway.core.ratelimit import parse_limit

    clock = Clock()
    settings = ApiSettings(
        tmp_path / "telemetry.db",
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(clock=clock, invitation_limit=parse_limit("2/hour")),
    )
    with TestClient(create_app(settings)) as client:
        api = Api(client, clock, bearer())
        _, prober = api.owner("prober@example.com")
        for i in range(2):
            error(
                api.claim(prober, "AAAA-BBBB-CCCC", f"WMADEUP00000000{i:02d}"),
                403,
                "pairing_code_wrong",
            )
        limited = api.claim(prober, "AAAA-BBBB-CCCC", "WMADEUP0000000099")
        error(limited, 429, "claim_rate_limited")
        assert int(limited.headers["Retry-After"]) > 0
        denied = [e for e in api.audit("vehicle_claim") if e["detail"] == {"error": "rate limited"}]
        assert len(denied) == 1


def test_an_invitation_to_an_address_without_an_account_needs_its_token(api: Api) -> None:
    """Security review 2, attacker pass (decision 0023): an invitation to share a car
    (unlock included) went to whoever registered the invited address first, like transfers
    did. It is bound to the user who had the address when it was made, or, when nobody
    had it, accepted only with the one-time token its inviter was given."""
    _, holder = api.owner("holder@example.com")
    assert api.as_(holder, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    url = f"/v1/vehicles/{VIN}/invitations"
    sent = api.as_(
        holder, "POST", url, json={"email": "friend@example.com", "services": ["unlock"]}
    )
    assert sent.status_code == 201, sent.text
    token = sent.json()["accept_token"]
    iid = sent.json()["id"]
    listed = api.as_(holder, "GET", url).json()["items"]
    assert all("accept_token" not in i for i in listed)  # shown once
    _, squatter = api.owner("friend@example.com")
    accept = f"/v1/invitations/{iid}/accept"
    error(api.as_(squatter, "POST", accept), 403, "invitation_token_required")
    error(
        api.as_(squatter, "POST", accept, json={"token": "y" * 43}),
        403,
        "invitation_token_required",
    )
    decline = f"/v1/invitations/{iid}/decline"
    error(api.as_(squatter, "POST", decline), 403, "invitation_token_required")
    assert api.as_(squatter, "GET", f"/v1/vehicles/{VIN}").status_code == 404
    r = api.as_(squatter, "POST", accept, json={"token": token})
    assert r.status_code == 201, r.text
    # to a registered address: bound to that user, no token needed
    _, known = api.owner("known@example.com")
    sent = api.as_(holder, "POST", url, json={"email": "known@example.com", "services": ["read"]})
    assert "accept_token" in sent.json()  # the same answer either way
    r = api.as_(known, "POST", f"/v1/invitations/{sent.json()['id']}/accept")
    assert r.status_code == 201, r.text


def test_transfer_offers_are_rate_limited_per_user(tmp_path: Path, state_db_url: str) -> None:
    """Security review 2: offers were not limited (each one a row, a pending offer
    withdrawn, an audit entry); they share the invitations' limit per user
    (``--invitation-limit``), in their own bucket."""
    from gateway.core.ratelimit import parse_limit

    clock = Clock()
    settings = ApiSettings(
        tmp_path / "telemetry.db",
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(clock=clock, invitation_limit=parse_limit("2/hour")),
    )
    with TestClient(create_app(settings)) as client:
        api = Api(client, clock, bearer())
        _, seller = api.owner("seller@example.com")
        assert api.as_(seller, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
        url = f"/v1/vehicles/{VIN}/transfers"
        for _ in range(2):
            ok = api.as_(seller, "POST", url, json={"to_email": "b@example.com"})
            assert ok.status_code == 201, ok.text
        limited = api.as_(seller, "POST", url, json={"to_email": "b@example.com"})
        error(limited, 429, "transfer_rate_limited")
        assert int(limited.headers["Retry-After"]) > 0
        denied = [e for e in api.audit("vehicle_transfer_offer") if e["outcome"] == "denied"]
        assert len(denied) == 1
        # invitations have their own bucket
        invite = {"email": "friend@example.com", "services": ["read"]}
        r = api.as_(seller, "POST", f"/v1/vehicles/{VIN}/invitations", json=invite)
        assert r.status_code == 201, r.text


def test_a_fleet_sells_a_used_van_to_a_private_buyer(api: Api) -> None:
    org, manager = api.organization("Vans Ltd", "fleet@vans.example")
    assert api.as_(manager, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    grantee = api.as_(
        manager,
        "POST",
        "/v1/users",
        json={"email": "driver@vans.example", "name": "d", "role": "driver", "password": PASSWORD},
    )
    assert grantee.status_code == 201, grantee.text
    grant = api.as_(
        manager,
        "POST",
        f"/v1/vehicles/{VIN}/grants",
        json={"user_id": grantee.json()["id"], "services": ["read", "lock"]},
    )
    assert grant.status_code == 201, grant.text
    buyer_account, buyer = api.owner("buyer@example.com")
    tid = api.as_(
        manager, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "buyer@example.com"}
    ).json()["id"]
    r = api.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={})
    assert r.status_code == 200, r.text
    # the fleet's driver lost the van with the fleet; the buyer's list of grants is empty
    driver = api.login("driver@vans.example")
    error(api.as_(driver, "GET", f"/v1/vehicles/{VIN}"), 404, "vehicle_not_found")
    assert api.as_(buyer, "GET", f"/v1/vehicles/{VIN}/grants").json()["items"] == []
    assert api.as_(buyer, "GET", f"/v1/vehicles/{VIN}").status_code == 200
    tenures = api.state()["history"]
    assert [(e["event"], e["account_id"]) for e in tenures] == [
        ("provision", org),
        ("transfer", buyer_account),
    ]


def test_transfers_are_cancelled_declined_expired_and_refused_in_service(api: Api) -> None:
    _, seller = api.owner("seller@example.com")
    workshop, _ = api.organization("Workshop", "boss@workshop.example")
    _, buyer = api.owner("buyer@example.com")
    assert api.as_(seller, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201

    def offer(expires_in_s: int = 3600) -> int:
        r = api.as_(
            seller,
            "POST",
            f"/v1/vehicles/{VIN}/transfers",
            json={"to_email": "buyer@example.com", "expires_in_s": expires_in_s},
        )
        assert r.status_code == 201, r.text
        tid: int = r.json()["id"]
        return tid

    tid = offer()
    error(api.as_(buyer, "POST", f"/v1/transfers/{tid}/cancel"), 403, "forbidden")
    assert api.as_(seller, "POST", f"/v1/transfers/{tid}/cancel").json()["status"] == "cancelled"
    error(api.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={}), 409, "transfer_closed")
    tid = offer()
    assert api.as_(buyer, "POST", f"/v1/transfers/{tid}/decline").json()["status"] == "declined"
    tid = offer(60)
    api.clock.now += 61
    assert api.as_(buyer, "GET", f"/v1/transfers/{tid}").json()["status"] == "expired"
    error(api.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={}), 409, "transfer_closed")
    # a newer offer withdraws the pending one
    first, second = offer(), offer()
    assert api.as_(seller, "GET", f"/v1/transfers/{first}").json()["status"] == "withdrawn"
    # the end of the workshop's access must be a real future time: one past year 9999 once
    # answered 500 after committing, and the vehicle's lifecycle then answered 500 for good
    service = f"/v1/vehicles/{VIN}/service"
    for bad, code in ((2**53, "invalid_request"), (int(api.clock.now * 1000), "invalid_until")):
        body = {"workshop_account_id": workshop, "until": bad}
        error(api.as_(seller, "POST", service, json=body), 422, code)
    assert api.as_(seller, "GET", f"/v1/vehicles/{VIN}/lifecycle").status_code == 200
    # the workshop must be a service partner the installation registered: any other account
    # (an unregistered organization, a private owner, one that does not exist) is refused,
    # the same way for each, and the message says how to fix it
    until = int(api.clock.now * 1000) + 86_400_000
    buyer_account = api.as_(buyer, "GET", "/v1/me").json()["account"]["id"]
    for account in (workshop, buyer_account, 2**53 - 1):
        body = {"workshop_account_id": account, "until": until}
        refusal = error(api.as_(seller, "POST", service, json=body), 422, "workshop_not_partner")
        assert "POST /v1/service-partners" in refusal["message"]
    assert api.as_(seller, "GET", f"/v1/vehicles/{VIN}/lifecycle").json()["state"] == "active"
    partner = {"account_id": workshop, "name": "Workshop"}
    assert api.as_(api.admin, "POST", "/v1/service-partners", json=partner).status_code == 201
    # in service: no transfer until the service ends, and an offer made before cannot be taken
    started = api.as_(
        seller,
        "POST",
        f"/v1/vehicles/{VIN}/service",
        json={"workshop_account_id": workshop, "until": until, "reason": "brakes"},
    )
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "in_service"
    error(
        api.as_(
            seller, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "buyer@example.com"}
        ),
        409,
        "vehicle_in_service",
    )
    error(
        api.as_(buyer, "POST", f"/v1/transfers/{second}/accept", json={}), 409, "vehicle_in_service"
    )
    assert api.as_(seller, "DELETE", f"/v1/vehicles/{VIN}/service").json()["state"] == "active"
    error(api.as_(seller, "DELETE", f"/v1/vehicles/{VIN}/service"), 409, "vehicle_not_in_service")
    # a revocation withdraws the pending offer
    assert api.as_(seller, "DELETE", f"/v1/vehicles/{VIN}").status_code == 200
    assert api.as_(seller, "GET", f"/v1/transfers/{second}").json()["status"] == "withdrawn"


# --- decommissioning -----------------------------------------------------------------------------


def test_a_decommissioned_vin_is_never_held_again(api: Api) -> None:
    code = api.register_built()
    account, owner = api.owner("owner@example.com")
    assert api.claim(owner, code).status_code == 201
    error(
        api.as_(owner, "POST", f"/v1/vehicles/{VIN}/decommission", json={"reason": "x"}),
        403,
        "forbidden",
    )
    r = api.as_(
        api.admin,
        "POST",
        f"/v1/vehicles/{VIN}/decommission",
        json={"reason": "written off after flood"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["account_id"]) == ("decommissioned", None)
    # nobody gets it back: not by VIN, not by code, not even an administrator
    error(api.as_(owner, "GET", f"/v1/vehicles/{VIN}"), 404, "vehicle_not_found")
    error(api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}), 409, "vehicle_not_claimable")
    error(
        api.as_(api.admin, "POST", "/v1/vehicles", json={"vin": VIN, "account_id": account}),
        409,
        "vehicle_decommissioned",
    )
    error(api.claim(owner, code), 403, "pairing_code_wrong")
    error(
        api.as_(api.admin, "POST", f"/v1/vehicles/{VIN}/pairing-code"),
        409,
        "vehicle_decommissioned",
    )
    error(
        api.as_(api.admin, "POST", f"/v1/vehicles/{VIN}/decommission", json={"reason": "again"}),
        409,
        "vehicle_decommissioned",
    )
    # the registration stays, off the broker and without a password
    reg = api.as_(api.admin, "GET", f"/v1/vehicles/{VIN}/registration").json()
    assert reg["revoked_at"] is not None
    assert reg["credentials"] == "certificate"  # no password hash left
    last = api.state()["history"][-1]
    assert (last["event"], last["reason"], last["tenure"]) == (
        "decommission",
        "written off after flood",
        1,
    )
    assert api.audit("vehicle_decommission")[0]["detail"] == {"reason": "written off after flood"}


# --- roadside assistance ---------------------------------------------------------------------

LAT = "Vehicle.CurrentLocation.Latitude"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
FAN = "Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed"


def reported(api: Api, db_path: Path, tenure: int, **signals: float) -> None:
    """The car's sample, as the gateway would store it, in period ``tenure``."""
    now = int(api.clock.now * 1000)
    store = open_store(db_path)
    try:
        store.commit(
            IngestBatch(
                received_at=now,
                samples=[Sample(VIN, tenure, now + 1, signals)],
                tenures={VIN: Tenure(tenure, now - 1000)},
            )
        )
    finally:
        store.close()


def test_a_roadside_share_works_until_it_expires_is_ended_or_the_car_is_sold(
    api: Api, tmp_path: Path
) -> None:
    _, owner = api.owner("owner@example.com")
    _, stranger = api.owner("stranger@example.com")
    assert api.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    reported(api, tmp_path / "telemetry.db", 1, **{LAT: 48.1, SOC: 12.0, FAN: 3.0})
    shares = f"/v1/vehicles/{VIN}/assistance-shares"

    def share(duration_s: int = 3600) -> tuple[int, str]:
        r = api.as_(owner, "POST", shares, json={"partner": "ADAC", "duration_s": duration_s})
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["partner_path"]

    share_id, path = share(60)
    # the partner reads without an account: position and energy, not the cabin
    seen = api.client.get(path)
    assert seen.status_code == 200, seen.text
    assert {n: s["value"] for n, s in seen.json()["signals"].items()} == {LAT: 48.1, SOC: 12.0}
    reads = api.audit("assistance_share_read")
    assert [(e["actor"], e["detail"]["partner"]) for e in reads] == [("anonymous", "ADAC")]
    assert reads[0]["detail"]["signals"] == sorted([LAT, SOC])
    # nobody else lists or ends it
    error(api.as_(stranger, "GET", shares), 404, "vehicle_not_found")
    error(api.as_(stranger, "DELETE", f"{shares}/{share_id}"), 404, "vehicle_not_found")
    # it stops at its expiry
    api.clock.now += 61
    error(api.client.get(path), 410, "share_ended")
    # and when the owner ends it
    share_id, path = share()
    assert api.client.get(path).status_code == 200
    assert api.as_(owner, "DELETE", f"{shares}/{share_id}").json()["ended_at"] is not None
    error(api.client.get(path), 410, "share_ended")
    # and when the car changes hands
    _, path = share()
    _, buyer = api.owner("buyer@example.com")
    tid = api.as_(
        owner, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "buyer@example.com"}
    ).json()["id"]
    assert api.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={}).status_code == 200
    error(api.client.get(path), 410, "share_ended")
    assert api.as_(buyer, "GET", shares).json()["items"] == []
    # a token that is no share's
    error(api.client.get("/v1/assistance/not-a-token"), 404, "share_not_found")
    error(api.client.get("/v1/assistance/" + "x" * 65), 404, "share_not_found")


def test_a_share_lasts_no_longer_than_its_makers_access_and_is_bounded(
    api: Api, tmp_path: Path
) -> None:
    """Found by an outside review: a driver's share kept working after the grant ended, any
    number of shares could be open, and every anonymous read appended an audit row."""
    _, manager = api.organization("Vans Ltd", "fleet@vans.example")
    assert api.as_(manager, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    reported(api, tmp_path / "telemetry.db", 1, **{LAT: 48.1, SOC: 12.0})
    body = {"email": "driver@vans.example", "name": "d", "role": "driver", "password": PASSWORD}
    driver_id = api.as_(manager, "POST", "/v1/users", json=body).json()["id"]
    grant = api.as_(
        manager,
        "POST",
        f"/v1/vehicles/{VIN}/grants",
        json={"user_id": driver_id, "services": ["read"]},
    ).json()
    driver = api.login("driver@vans.example")
    shares = f"/v1/vehicles/{VIN}/assistance-shares"
    made = api.as_(driver, "POST", shares, json={"partner": "ADAC", "duration_s": 3600})
    assert made.status_code == 201, made.text
    path = made.json()["partner_path"]
    for _ in range(3):
        assert api.client.get(path).status_code == 200
    # three reads within a minute: one audit entry
    assert len(api.audit("assistance_share_read")) == 1
    revoked = api.as_(manager, "DELETE", f"/v1/vehicles/{VIN}/grants/{grant['id']}")
    assert revoked.status_code in (200, 204), revoked.text
    error(api.client.get(path), 410, "share_ended")
    # at most five open shares per vehicle (the driver's, unusable now, still counts until
    # its expiry or its end)
    for _ in range(4):
        r = api.as_(manager, "POST", shares, json={"partner": "ADAC", "duration_s": 3600})
        assert r.status_code == 201, r.text
    r = api.as_(manager, "POST", shares, json={"partner": "ADAC", "duration_s": 3600})
    error(r, 409, "too_many_shares")


def test_creating_users_cannot_probe_addresses_unbounded(tmp_path: Path, state_db_url: str) -> None:
    """Security review 3, attacker pass: with registration silent about taken addresses
    (finding 1), any self-registered owner could still ask POST /v1/users for a driver
    with an address and read 409 `email_taken`. Such refusals now use up the caller's
    invitation limit (own bucket); past it every address answers 429 alike, audited."""
    from gateway.core.ratelimit import parse_limit

    clock = Clock()
    settings = ApiSettings(
        tmp_path / "telemetry.db",
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(clock=clock, invitation_limit=parse_limit("2/hour")),
    )
    with TestClient(create_app(settings)) as client:
        api = Api(client, clock, bearer())
        api.owner("victim@example.com")
        _, prober = api.owner("prober@example.com")
        driver = {"name": "d", "role": "driver", "password": PASSWORD}
        for _ in range(2):
            r = api.as_(prober, "POST", "/v1/users", json={**driver, "email": "victim@example.com"})
            error(r, 409, "email_taken")
        taken = api.as_(prober, "POST", "/v1/users", json={**driver, "email": "victim@example.com"})
        free = api.as_(prober, "POST", "/v1/users", json={**driver, "email": "free@example.com"})
        for r in (taken, free):
            error(r, 429, "user_create_rate_limited")
            assert int(r.headers["Retry-After"]) > 0
        denied = [e for e in api.audit("user_create") if e["outcome"] == "denied"]
        assert len(denied) == 2
        # a new address goes through once the hour is over
        clock.now += 3600
        prober = api.login("prober@example.com")
        r = api.as_(prober, "POST", "/v1/users", json={**driver, "email": "free@example.com"})
        assert r.status_code == 201, r.text
