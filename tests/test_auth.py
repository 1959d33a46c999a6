"""Logging in, tokens, API keys, throttling, rate limits and the audit log, through the API.

The clock is a test double (``AuthSettings.clock``), so token expiry and lockouts are
checked without waiting; everything else is real: argon2 hashes, signed JWTs, the state
database, the audit triggers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api import ApiSettings
from gateway.core.ratelimit import Limit
from gateway.store import IngestBatch, open_store
from schemas import Sample
from tests.support.api import (
    TEST_ADMIN_EMAIL,
    TEST_ADMIN_PASSWORD,
    admin_client,
    auth_settings_for_tests,
)

VIN = "WAUTH000000000001"
OTHER_VIN = "WAUTH000000000002"
PASSWORD = "a-good-password-1"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    client: TestClient
    clock: Clock
    admin: dict[str, str]

    def login(self, email: str, password: str) -> Any:
        return self.client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )

    def token(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        r = self.login(email, password)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        """The audit log, read as the admin with a fresh token (the clock may have moved)."""
        self.admin = self.token(TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)
        r = self.client.get("/v1/audit", params={"limit": 1000, **params}, headers=self.admin)
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()["items"]
        return entries


def make(tmp_path: Path, **auth: Any) -> Iterator[Setup]:
    clock = Clock()
    settings = ApiSettings(
        db_path=tmp_path / "telemetry.db",
        auth=auth_settings_for_tests(clock=clock, **auth),
    )
    store = open_store(settings.db_path)
    store.commit(
        IngestBatch(
            received_at=1,
            samples=[Sample(v, 1, 1, {"Vehicle.Speed": 3.0}) for v in (VIN, OTHER_VIN)],
        )
    )
    store.close()
    with admin_client(settings) as client:
        client.headers.pop("Authorization")
        setup = Setup(client, clock, {})
        setup.admin = setup.token(TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)
        yield setup


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Setup]:
    yield from make(tmp_path)


def error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert body["code"] == code, body
    return body


def owner(s: Setup, email: str = "ana@example.com") -> dict[str, str]:
    r = s.client.post(
        "/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Ana"}
    )
    assert r.status_code == 202, r.text
    return s.token(email)


# --- logging in ----------------------------------------------------------------------------


def test_login_wrong_password_and_unknown_user_look_the_same(s: Setup) -> None:
    wrong = error(s.login(TEST_ADMIN_EMAIL, "not-the-password"), 401, "invalid_grant")
    unknown = error(s.login("nobody@example.com", "whatever-password"), 401, "invalid_grant")
    assert wrong["message"] == unknown["message"]
    entries = s.audit(action="login")
    failed = [e for e in entries if e["outcome"] == "failed"]
    assert len(failed) == 2
    assert all(e["remote_addr"] == "testclient" for e in entries)
    assert {e["actor"] for e in failed} == {"anonymous", f"user:1 {TEST_ADMIN_EMAIL}"}


def test_a_json_login_is_told_to_send_a_form(s: Setup) -> None:
    r = s.client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": TEST_ADMIN_EMAIL, "password": "x"},
    )
    body = error(r, 422, "invalid_request")
    assert "form body, not JSON" in body["message"]
    assert "application/x-www-form-urlencoded" in body["message"]


def test_a_lone_surrogate_in_a_field_is_a_422_not_a_500(s: Setup) -> None:
    """Found by an outside tester: the error body sends the input back, and a lone
    surrogate could not be encoded as UTF-8 (a 500 on every route with a text field)."""
    body = b'{"email": "x@example.com", "password": "long-enough-pass", "name": "\\ud800"}'
    r = s.client.post(
        "/v1/auth/register", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"


def test_register_then_login_and_me(s: Setup) -> None:
    headers = owner(s)
    me = s.client.get("/v1/me", headers=headers).json()
    assert me["user"]["role"] == "owner"
    assert me["account"]["kind"] == "private"
    weak = s.client.post(
        "/v1/auth/register", json={"email": "b@example.com", "password": "short", "name": "b"}
    )
    assert error(weak, 422, "invalid_request")["details"][0]["type"] == "weak_password"
    assert [e["outcome"] for e in s.audit(action="register")] == ["ok"]


def test_registration_answers_the_same_whether_or_not_the_address_has_an_account(
    s: Setup,
) -> None:
    """Security review 3, finding 1: a registration for an address that has an account
    answered 409 `email_taken`, so anyone could find out who uses the installation. Both
    answer 202 with the same body; only a new address gets an account, and the refused
    one is audited for the operator (the installation sends no mail to tell the owner)."""
    owner(s)
    taken = s.client.post(
        "/v1/auth/register",
        json={"email": "ANA@example.com", "password": "another-password-2", "name": "x"},
    )
    new = s.client.post(
        "/v1/auth/register",
        json={"email": "carl@example.com", "password": "another-password-2", "name": "x"},
    )
    assert (taken.status_code, new.status_code) == (202, 202), (taken.text, new.text)
    assert taken.json() == new.json()
    assert set(taken.headers) == set(new.headers)
    # the existing account is untouched: its password still works, the other does not
    assert s.login("ana@example.com", PASSWORD).status_code == 200
    error(s.login("ana@example.com", "another-password-2"), 401, "invalid_grant")
    assert s.login("carl@example.com", "another-password-2").status_code == 200
    entries = s.audit(action="register")
    assert sorted(e["outcome"] for e in entries) == ["failed", "ok", "ok"]
    refused = next(e for e in entries if e["outcome"] == "failed")
    assert refused["detail"]["error"] == "email_taken"


def test_registration_can_be_closed(tmp_path: Path) -> None:
    for s in make(tmp_path, open_registration=False):
        r = s.client.post(
            "/v1/auth/register", json={"email": "a@example.com", "password": PASSWORD, "name": "a"}
        )
        error(r, 403, "forbidden")


def test_repeated_wrong_passwords_lock_the_account_with_retry_after(tmp_path: Path) -> None:
    for s in make(tmp_path, lockout_after=3):
        owner(s)
        for _ in range(3):
            error(s.login("ana@example.com", "wrong-password-x"), 401, "invalid_grant")
        # locked: even the right password waits, and is not even checked
        locked = s.login("ana@example.com", PASSWORD)
        error(locked, 429, "login_locked")
        assert locked.headers["retry-after"] == "1"
        s.clock.now += 1.5
        error(s.login("ana@example.com", "wrong-password-x"), 401, "invalid_grant")
        assert s.login("ana@example.com", PASSWORD).headers["retry-after"] == "2"  # doubles
        s.clock.now += 2.5
        assert s.login("ana@example.com", PASSWORD).status_code == 200
        # success resets the count
        error(s.login("ana@example.com", "wrong-password-x"), 401, "invalid_grant")
        assert s.login("ana@example.com", PASSWORD).status_code == 200
        outcomes = [e["outcome"] for e in s.audit(action="login", actor_user_id=2)]
        assert "denied" in outcomes
        assert outcomes.count("failed") == 5


def test_wrong_passwords_lock_out_alike_whether_or_not_the_address_has_an_account(
    tmp_path: Path,
) -> None:
    """Security review 4: wrong passwords were counted per (user, client address) for
    addresses with an account only, so the fourth attempt (the sixth by default) answered
    429 `login_locked` for a user and 401 for anyone else: logging in wrongly a few times
    told who uses the installation, as registration did before review 3. An address
    without an account is now counted and locked out the same way (in the API process)."""
    for s in make(tmp_path, lockout_after=3):
        owner(s)
        known, unknown = _answers(s, "ana@example.com"), _answers(s, "nobody@example.com")
        assert (429, "login_locked", "1") in known
        assert unknown == known
        # a disabled user's failures count too: it locks out like any other address
        owner(s, "dis@example.com")
        users = s.client.get("/v1/users", headers=s.token(TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD))
        dis = next(u["id"] for u in users.json()["items"] if u["email"] == "dis@example.com")
        admin = s.token(TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)
        r = s.client.patch(f"/v1/users/{dis}", json={"disabled": True}, headers=admin)
        assert r.status_code == 200, r.text
        assert _answers(s, "dis@example.com") == known


def _answers(s: Setup, email: str) -> list[tuple[int, str, str | None]]:
    """Six wrong logins half a second apart: (status, error code, Retry-After) of each."""
    seen = []
    for _ in range(6):
        r = s.login(email, "wrong-password-x")
        seen.append((r.status_code, r.json()["error"]["code"], r.headers.get("retry-after")))
        s.clock.now += 0.5
    return seen


def test_password_attempts_are_limited_per_address(tmp_path: Path) -> None:
    for s in make(tmp_path, login_limit=Limit(rate=1 / 60, burst=3)):
        for _ in range(2):  # the admin's login in make() took one
            error(s.login("x@example.com", "wrong-password"), 401, "invalid_grant")
        r = s.login(TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)
        error(r, 429, "too_many_attempts")
        assert int(r.headers["retry-after"]) == 60
        s.clock.now += 60
        assert s.login(TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).status_code == 200


# --- tokens --------------------------------------------------------------------------------


def test_access_token_expires_and_refresh_rotates(s: Setup) -> None:
    owner(s)
    tokens = s.login("ana@example.com", PASSWORD).json()
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert s.client.get("/v1/me", headers=headers).status_code == 200
    s.clock.now += 901
    expired = s.client.get("/v1/me", headers=headers)
    error(expired, 401, "token_expired")
    assert "refresh_token" in expired.json()["error"]["message"]

    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    renewed = s.client.post("/v1/auth/token", data=refresh)
    assert renewed.status_code == 200, renewed.text
    new = renewed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    headers = {"Authorization": f"Bearer {new['access_token']}"}
    assert s.client.get("/v1/me", headers=headers).status_code == 200

    # the old refresh token was used once: using it again means it was stolen, and the
    # whole login is ended, the new refresh token included
    error(s.client.post("/v1/auth/token", data=refresh), 401, "invalid_grant")
    again = {"grant_type": "refresh_token", "refresh_token": new["refresh_token"]}
    error(s.client.post("/v1/auth/token", data=again), 401, "invalid_grant")
    reasons = [e["detail"]["reason"] for e in s.audit(action="token_refresh") if e["detail"]]
    assert "reused" in reasons


def test_refresh_token_expires(s: Setup) -> None:
    owner(s)
    tokens = s.login("ana@example.com", PASSWORD).json()
    s.clock.now += 30 * 24 * 3600 + 1
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    body = error(s.client.post("/v1/auth/token", data=refresh), 401, "invalid_grant")
    assert "expired" in body["message"]


def test_logout_revokes_the_refresh_token(s: Setup) -> None:
    owner(s)
    tokens = s.login("ana@example.com", PASSWORD).json()
    r = s.client.post("/v1/auth/revoke", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 204
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    error(s.client.post("/v1/auth/token", data=refresh), 401, "invalid_grant")
    assert [e["outcome"] for e in s.audit(action="logout")] == ["ok"]


@pytest.mark.parametrize(
    "credential",
    ["garbage", "eyJhbGciOiJIUzI1NiJ9.e30.x", "tgk_0123456789ab_" + "A" * 43],
)
def test_invalid_credentials_are_401(s: Setup, credential: str) -> None:
    r = s.client.get("/v1/me", headers={"Authorization": f"Bearer {credential}"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] in {"invalid_token", "invalid_api_key"}
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_forged_token_is_refused(s: Setup) -> None:
    import jwt

    forged = jwt.encode(
        {
            "iss": "telematics-gateway",
            "sub": "1",
            "role": "admin",
            "iat": 0,
            "exp": 2**40,
            "typ": "access",
        },
        "not-the-secret-but-long-enough-for-hs256",
        algorithm="HS256",
    )
    error(
        s.client.get("/v1/me", headers={"Authorization": f"Bearer {forged}"}), 401, "invalid_token"
    )


def test_an_owner_asking_for_an_administrator_is_told_why_not(s: Setup) -> None:
    """An outside review: the 403 said "roles of a missing account: none" to an owner whose
    account exists (an administrator belongs to no account, so none was looked up)."""
    body = {"email": "root@example.com", "name": "Root", "role": "admin"}
    refused = error(s.client.post("/v1/users", json=body, headers=owner(s)), 403, "forbidden")
    assert "missing" not in refused["message"]
    assert "only administrators create administrators" in refused["message"]


def test_disabling_a_user_ends_their_access_at_once(s: Setup) -> None:
    headers = owner(s)
    r = s.client.patch("/v1/users/2", json={"disabled": True}, headers=s.admin)
    assert r.status_code == 200, r.text
    error(s.client.get("/v1/me", headers=headers), 401, "invalid_token")
    error(s.login("ana@example.com", PASSWORD), 401, "invalid_grant")
    (change,) = s.audit(action="user_update")
    assert change["target"] == "user:2"
    assert change["actor"] == f"user:1 {TEST_ADMIN_EMAIL}"
    assert change["detail"] == {
        "changed": ["disabled"],
        "disabled": True,
        "ended_logins": 1,
        "ended_integrations": 0,
        "ended_web_sessions": 0,
    }


def test_changing_your_password_needs_the_current_one(s: Setup) -> None:
    headers = owner(s)
    body = {"password": "another-password-2"}
    error(s.client.patch("/v1/users/2", json=body, headers=headers), 403, "forbidden")
    body["current_password"] = PASSWORD
    assert s.client.patch("/v1/users/2", json=body, headers=headers).status_code == 200
    error(s.login("ana@example.com", PASSWORD), 401, "invalid_grant")
    assert s.login("ana@example.com", "another-password-2").status_code == 200


# --- API keys ------------------------------------------------------------------------------


def test_api_key_is_shown_once_works_and_revocation_is_immediate(s: Setup) -> None:
    created = s.client.post("/v1/api-keys", json={"name": "dashboard"}, headers=s.admin)
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("tgk_")
    listed = s.client.get("/v1/api-keys", headers=s.admin).json()["items"]
    assert [k["prefix"] for k in listed] == [created.json()["prefix"]]
    assert key not in str(listed)
    for header in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        me = s.client.get("/v1/me", headers=header)
        assert me.status_code == 200, me.text
        assert me.json()["user"]["email"] == TEST_ADMIN_EMAIL
    assert (
        s.client.get("/v1/api-keys", headers=s.admin).json()["items"][0]["last_used_at"] is not None
    )
    revoked = s.client.delete(f"/v1/api-keys/{created.json()['id']}", headers=s.admin)
    assert revoked.json()["revoked_at"] is not None
    error(s.client.get("/v1/me", headers={"X-API-Key": key}), 401, "invalid_api_key")
    actions = [e["action"] for e in s.audit(target=f"api_key:{created.json()['id']}")]
    assert actions == ["api_key_revoke", "api_key_create"]


def test_api_keys_are_created_at_a_bounded_rate_per_user(tmp_path: Path) -> None:
    """Security review 4: any user, a self-registered owner too, could create API keys
    without limit (300 in 7 s against the deployed API, each a row kept for ever, revoked
    or not): a way to fill the state database. Creating keys now uses the caller's
    invitation limit (own bucket); administrators are not limited."""
    for s in make(tmp_path, invitation_limit=Limit(rate=1 / 3600, burst=3)):
        ana = owner(s)
        made = [
            s.client.post("/v1/api-keys", json={"name": f"k{i}"}, headers=ana) for i in range(3)
        ]
        assert [r.status_code for r in made] == [201, 201, 201]
        refused = s.client.post("/v1/api-keys", json={"name": "k4"}, headers=ana)
        error(refused, 429, "api_key_rate_limited")
        assert int(refused.headers["retry-after"]) > 0
        assert [e["outcome"] for e in s.audit(action="api_key_create")].count("denied") == 1
        # administrators are not limited
        for _ in range(5):
            r = s.client.post("/v1/api-keys", json={"name": "a"}, headers=s.admin)
            assert r.status_code == 201, r.text
        s.clock.now += 3600  # a token back in the bucket (and a fresh access token)
        r = s.client.post("/v1/api-keys", json={"name": "k5"}, headers=s.token("ana@example.com"))
        assert r.status_code == 201, r.text


def test_an_owner_changes_the_brokers_identities_at_a_bounded_rate(tmp_path: Path) -> None:
    """Security review 7: every vehicle added and every new MQTT password makes the broker
    re-check the password of every connected unit (a reload, in its one thread), and any
    self-registered owner may claim any VIN nobody holds: one account claimed 100 VINs in
    13 s against the deployed API and renewed its car's password as fast as the broker
    took it. An owner's additions and new passwords now share one bucket of their
    invitation limit; fleet managers (bulk provisioning) and administrators are not
    limited."""
    for s in make(tmp_path, invitation_limit=Limit(rate=1 / 3600, burst=3)):
        ana = owner(s)
        vins = [f"WAUTH0000000001{i:02d}" for i in range(3)]
        made = [s.client.post("/v1/vehicles", json={"vin": v}, headers=ana) for v in vins[:2]]
        assert [r.status_code for r in made] == [201, 201], made[-1].text
        renewed = s.client.post(f"/v1/vehicles/{vins[0]}/credentials", headers=ana)
        assert renewed.status_code == 200, renewed.text
        refused = s.client.post("/v1/vehicles", json={"vin": vins[2]}, headers=ana)
        error(refused, 429, "vehicle_change_rate_limited")
        assert int(refused.headers["retry-after"]) > 0
        again = s.client.post(f"/v1/vehicles/{vins[0]}/credentials", headers=ana)
        error(again, 429, "vehicle_change_rate_limited")
        denied = [e for e in s.audit() if e["outcome"] == "denied"]
        assert {e["action"] for e in denied} == {"vehicle_provision", "vehicle_credentials_rotate"}
        # a fleet manager provisions in bulk, an administrator runs the installation
        r = s.client.post("/v1/accounts", json={"name": "Vans", "kind": "organization"},
                          headers=s.admin)  # fmt: skip
        assert r.status_code == 201, r.text
        account = r.json()["id"]
        r = s.client.post(
            "/v1/users",
            json={"email": "fm@example.com", "name": "FM", "role": "fleet_manager",
                  "account_id": account, "password": PASSWORD},
            headers=s.admin,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        fm = s.token("fm@example.com")
        for i in range(5):
            r = s.client.post("/v1/vehicles", json={"vin": f"WAUTH0000000002{i:02d}"}, headers=fm)
            assert r.status_code == 201, r.text
            r = s.client.post(
                "/v1/vehicles", json={"vin": f"WAUTH0000000003{i:02d}", "account_id": account},
                headers=s.admin,
            )  # fmt: skip
            assert r.status_code == 201, r.text
        s.clock.now += 3600  # a token back in the owner's bucket (and a fresh access token)
        r = s.client.post("/v1/vehicles", json={"vin": vins[2]}, headers=s.token("ana@example.com"))
        assert r.status_code == 201, r.text


def test_refused_attempts_fill_the_audit_log_at_a_bounded_rate(tmp_path: Path) -> None:
    """Security review 5: every refused attempt is audited (decision 0007) and the log is
    append-only, so a self-registered owner sending commands to a car it cannot see wrote
    a row for good per request (200 in 2.4 s against the deployed API; a rate limit's 429
    was audited too; claims with a wrong pairing code the same, 200 in a row). Beyond the
    caller's bound an attempt is counted, not written, and the caller's next entry says how
    many were left out."""
    for s in make(tmp_path, refusal_audit_limit=Limit(rate=1.0, burst=5)):
        _refusals_are_audited_at_a_bounded_rate(s)


def _refusals_are_audited_at_a_bounded_rate(s: Setup) -> None:
    ana = owner(s)
    claim = {"code": "AAAA-BBBB-CCCC"}

    def refused(headers: dict[str, str]) -> None:
        r = s.client.post(f"/v1/vehicles/{VIN}/claim", json=claim, headers=headers)
        assert r.status_code in (403, 429), r.text  # a wrong code, then locked out

    def denied() -> list[dict[str, Any]]:
        return [e for e in s.audit(action="vehicle_claim") if e["outcome"] != "ok"]

    for _ in range(40):
        refused(ana)
    assert len(denied()) == 5
    s.clock.now += 10  # ten more in the bucket
    ana = s.token("ana@example.com")
    refused(ana)
    entries = denied()
    assert len(entries) == 6
    assert entries[0]["detail"]["left_out_before"] == 35  # newest first
    # another caller has a bound of its own; what succeeds is always written
    refused(owner(s, "bo@example.com"))
    assert len(denied()) == 7
    for i in range(8):
        r = s.client.post("/v1/api-keys", json={"name": f"k{i}"}, headers=ana)
        assert r.status_code == 201, r.text
    assert len(s.audit(action="api_key_create")) == 8


def test_a_wrong_secret_with_a_valid_prefix_is_refused(s: Setup) -> None:
    key = s.client.post("/v1/api-keys", json={"name": "k"}, headers=s.admin).json()["key"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    error(s.client.get("/v1/me", headers={"X-API-Key": forged}), 401, "invalid_api_key")


# --- command rate limits -------------------------------------------------------------------


def test_command_limits_per_user_and_per_vehicle_answer_429_with_retry_after(
    tmp_path: Path, mosquitto: Any
) -> None:
    from gateway.commands.service import CommandSettings
    from gateway.settings import MqttSettings
    from tests.support.waiting import wait_until

    clock = Clock()
    settings = ApiSettings(
        db_path=tmp_path / "telemetry.db",
        commands=CommandSettings(
            state_db_url=f"sqlite:///{tmp_path / 'state.db'}",
            mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        ),
        auth=auth_settings_for_tests(
            clock=clock,
            user_command_limit=Limit(rate=1 / 60, burst=3),
            vehicle_command_limit=Limit(rate=1 / 60, burst=2),
        ),
    )
    store = open_store(settings.db_path)
    store.commit(
        IngestBatch(
            received_at=1,
            samples=[Sample(v, 1, 1, {"Vehicle.Speed": 0.0}) for v in (VIN, OTHER_VIN)],
        )
    )
    store.close()
    with admin_client(settings) as c:
        wait_until(c.app.state.commands.connected.is_set)  # type: ignore[attr-defined]

        def send(vin: str) -> Any:
            return c.post(f"/v1/vehicles/{vin}/commands", json={"type": "lock"})

        assert send(VIN).status_code == 201
        assert send(VIN).status_code == 201
        per_vehicle = send(VIN)
        error(per_vehicle, 429, "vehicle_rate_limited")
        assert per_vehicle.headers["retry-after"] == "60"
        assert send(OTHER_VIN).status_code == 201  # the refused one cost the user nothing
        per_user = send(OTHER_VIN)
        error(per_user, 429, "user_rate_limited")
        assert int(per_user.headers["retry-after"]) == 60
        clock.now += 60
        assert send(OTHER_VIN).status_code == 201
        denied = c.get("/v1/audit", params={"action": "command_create", "limit": 100}).json()[
            "items"
        ]
        reasons = [e["detail"].get("reason") for e in denied if e["outcome"] == "denied"]
        assert sorted(reasons) == ["user_rate_limited", "vehicle_rate_limited"]


# --- audit ---------------------------------------------------------------------------------


def test_audit_log_is_scoped_for_fleet_managers(s: Setup) -> None:
    org = s.client.post(
        "/v1/accounts", json={"kind": "organization", "name": "Org"}, headers=s.admin
    ).json()
    s.client.post(
        "/v1/users",
        json={
            "email": "fm@example.com",
            "name": "fm",
            "role": "fleet_manager",
            "account_id": org["id"],
            "password": PASSWORD,
        },
        headers=s.admin,
    )
    owner(s)  # another account's activity
    fm = s.token("fm@example.com")
    s.client.post("/v1/vehicles", json={"vin": VIN}, headers=fm)
    entries = s.client.get("/v1/audit", headers=fm).json()["items"]
    assert entries
    assert {e["account_id"] for e in entries} == {org["id"]}
    assert {"vehicle_provision", "login", "user_create", "account_create"} <= {
        e["action"] for e in entries
    }
    foreign = s.client.get("/v1/audit", params={"account_id": 999}, headers=fm)
    error(foreign, 404, "account_not_found")


def test_audit_entries_cannot_be_changed(s: Setup) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    context = s.client.app.state.auth  # type: ignore[attr-defined]
    engine = context.accounts._db.engine
    with pytest.raises(DBAPIError), engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET outcome = 'ok'"))
    with pytest.raises(DBAPIError), engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log"))


def test_secrets_never_reach_the_logs(s: Setup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = s.login(TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).json()
    key = s.client.post("/v1/api-keys", json={"name": "k"}, headers=s.admin).json()["key"]
    provisioned = s.client.post(
        "/v1/vehicles", json={"vin": VIN, "account_id": _account(s)}, headers=s.admin
    ).json()
    s.client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": TEST_ADMIN_EMAIL, "password": "wrong-one-here"},
    )
    secrets = [
        TEST_ADMIN_PASSWORD,
        "wrong-one-here",
        tokens["access_token"],
        tokens["refresh_token"],
        key,
        provisioned["mqtt"]["password"],
    ]
    logged = caplog.text
    audited = str(s.audit())
    for secret in secrets:
        assert secret not in logged
        assert secret not in audited


def _account(s: Setup) -> int:
    r = s.client.post("/v1/accounts", json={"kind": "organization", "name": "o"}, headers=s.admin)
    account_id: int = r.json()["id"]
    return account_id


def test_provisioning_tells_a_unit_the_url_of_its_edge_broker(tmp_path: Path) -> None:
    """With edge brokers (decision 0038) a unit's login exists at one edge only, so it is
    told that edge's URL; which one is the shared pure function of its VIN."""
    from schemas.edges import edge_index

    edges = ("mqtt://e.example:2001", "mqtt://e.example:2002", "mqtt://e.example:2003")
    for s in make(tmp_path, broker_url="mqtt://core.example:2000", edge_broker_urls=edges):
        account = _account(s)
        for vin in (VIN, OTHER_VIN):
            r = s.client.post(
                "/v1/vehicles", json={"vin": vin, "account_id": account}, headers=s.admin
            )
            assert r.status_code == 201, r.text
            assert r.json()["mqtt"]["url"] == edges[edge_index(vin, 3) - 1]


def test_identical_successful_actions_are_audited_once_a_minute(tmp_path: Path) -> None:
    """Security review 8 (decision 0053): successful actions were audited without a bound,
    so a token refresh loop wrote a row for good per refresh (64 in 5 s from one
    connection against the deployed API). An entry exactly like one written less than a
    minute ago is counted instead, and the next one written says how many were; anything
    that differs (a fleet manager's bulk work: another target each time) is written."""
    for s in make(tmp_path):
        account = s.client.get("/v1/me", headers=owner(s)).json()["user"]["account_id"]
        r = s.login("ana@example.com", PASSWORD)
        refresh = r.json()["refresh_token"]
        for _ in range(20):
            r = s.client.post(
                "/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}
            )
            assert r.status_code == 200, r.text
            refresh = r.json()["refresh_token"]

        (first,) = _refreshes(s)
        s.clock.now += 61
        r = s.client.post(
            "/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}
        )
        assert r.status_code == 200, r.text
        latest, earlier = _refreshes(s)
        assert earlier["id"] == first["id"]
        assert (latest["detail"] or {}).get("repeats_before") == 19
        # the administrator's bulk work: every vehicle another target, every one written
        vins = [f"WAUTH0000000004{i:02d}" for i in range(12)]
        for vin in vins:
            body = {"vin": vin, "account_id": account}
            r = s.client.post("/v1/vehicles", json=body, headers=s.admin)
            assert r.status_code == 201, r.text
        written = {e["target"] for e in s.audit() if e["action"] == "vehicle_provision"}
        assert {f"vehicle:{v}" for v in vins} <= written


def test_a_repeat_is_counted_only_right_after_the_same_action(tmp_path: Path) -> None:
    """Security review 9 (decision 0061): the coalescing of decision 0053 counted an action
    alike one written within the minute even with other actions in between, and compared
    only what the entry says. "Add a car to a fleet, remove it, add it again" wrote the add
    and the removal and counted the second add (the log said the car was out of the fleet
    while it was in); a geofence replaced by another shape within the minute was counted as
    a repeat of the first replacement (the entry names no shape). Now only a repeat of the
    caller's previous action is counted, and what an update set tells repeats apart."""
    for s in make(tmp_path):
        me = owner(s)
        account = s.client.get("/v1/me", headers=me).json()["user"]["account_id"]
        r = s.client.post("/v1/vehicles", json={"vin": VIN, "account_id": account}, headers=s.admin)
        assert r.status_code == 201, r.text
        r = s.client.post("/v1/fleets", json={"name": "family"}, headers=me)
        assert r.status_code == 201, r.text
        fleet = r.json()["id"]
        member = f"/v1/fleets/{fleet}/vehicles/{VIN}"
        for call in (s.client.put, s.client.delete, s.client.put):
            r = call(member, headers=me)
            assert r.status_code == 204, r.text
        moves = [e["action"] for e in reversed(s.audit()) if e["target"] == f"fleet:{fleet}"]
        assert moves[-3:] == ["fleet_vehicle_add", "fleet_vehicle_remove", "fleet_vehicle_add"]

        def fence(lon: float) -> dict[str, Any]:
            ring = [[lon, 48.0], [lon + 0.01, 48.0], [lon + 0.01, 48.01], [lon, 48.0]]
            return {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"name": "home"},
            }

        r = s.client.post("/v1/geofences", json=fence(11.0), headers=me)
        assert r.status_code == 201, r.text
        path = f"/v1/geofences/{r.json()['id']}"
        for lon in (11.1, 11.1, 11.2):  # a repeat, then another shape
            r = s.client.put(path, json=fence(lon), params={"confirm_far": "true"}, headers=me)
            assert r.status_code == 200, r.text
        updates = [e for e in s.audit(action="geofence_update") if e["outcome"] == "ok"]
        assert len(updates) == 2, updates
        # the exact repeat is still counted: a loop of the same action writes one row
        for _ in range(5):
            r = s.client.put(path, json=fence(11.2), params={"confirm_far": "true"}, headers=me)
            assert r.status_code == 200, r.text
        assert len([e for e in s.audit(action="geofence_update") if e["outcome"] == "ok"]) == 2


def _refreshes(s: Setup) -> list[dict[str, Any]]:
    """The successful token refreshes in the audit log, newest first."""
    return [
        e
        for e in s.audit(action="token_refresh")
        if e["action"] == "token_refresh" and e["outcome"] == "ok"
    ]
