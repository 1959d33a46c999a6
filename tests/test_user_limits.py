"""Users per account are bounded (security review 5, "left"): an owner or a fleet manager
created users without end, only a rate limit slowed them. Beyond
``AuthSettings.max_users_per_account`` (``TELEMATICS_MAX_USERS_PER_ACCOUNT``) creating one
more answers 409 ``too_many_users``, on SQLite and PostgreSQL, and two creations at once
cannot both take the last place."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.api import ApiSettings
from gateway.api.security import AuthSettings
from gateway.cli import build_parser
from gateway.settings import read_environment
from gateway.statedb import AccountRepository, StateDatabase, UserLimitReached
from tests.support.api import admin_client, auth_settings_for_tests, bearer

PASSWORD = "a-password-long-enough-1"


def _settings(tmp_path: Path, state_db_url: str, limit: int | None) -> ApiSettings:
    return ApiSettings(
        db_path=tmp_path / "telemetry.db",
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(max_users_per_account=limit),
    )


def _user(client: TestClient, headers: dict[str, str], n: int, **body: object) -> int:
    r = client.post(
        "/v1/users",
        headers=headers,
        json={"email": f"u{n}@example.com", "name": f"u{n}", "password": PASSWORD, **body},
    )
    return r.status_code


def test_a_fleet_manager_and_an_owner_stop_at_the_cap(tmp_path: Path, state_db_url: str) -> None:
    with admin_client(_settings(tmp_path, state_db_url, 3)) as client:
        org = client.post("/v1/accounts", json={"kind": "organization", "name": "o"}).json()
        r = client.post(
            "/v1/users",
            json={
                "email": "boss@example.com",
                "name": "boss",
                "password": PASSWORD,
                "role": "fleet_manager",
                "account_id": org["id"],
            },
        )
        assert r.status_code == 201, r.text
        manager = bearer(r.json()["id"], "fleet_manager", org["id"])
        # the manager is one of the 3: two more, then no more
        codes = [_user(client, manager, n, role="driver") for n in range(4)]
        assert codes == [201, 201, 409, 409]
        r = client.post(
            "/v1/users",
            headers=manager,
            json={"email": "x@example.com", "name": "x", "password": PASSWORD, "role": "driver"},
        )
        error = r.json()["error"]
        assert error["code"] == "too_many_users"
        assert "TELEMATICS_MAX_USERS_PER_ACCOUNT" in error["message"]
        # the administrator is held to the account's cap too
        r = client.post(
            "/v1/users",
            json={
                "email": "y@example.com",
                "name": "y",
                "password": PASSWORD,
                "role": "driver",
                "account_id": org["id"],
            },
        )
        assert r.status_code == 409, r.text
        # ... the refusal is audited
        entries = client.get("/v1/audit", params={"action": "user_create"}).json()["items"]
        assert any(e["outcome"] == "denied" for e in entries)

        # another account's cap is its own: a private owner creates drivers up to it
        private = client.post("/v1/accounts", json={"kind": "private", "name": "p"}).json()
        r = client.post(
            "/v1/users",
            json={
                "email": "olga@example.com",
                "name": "olga",
                "password": PASSWORD,
                "role": "owner",
                "account_id": private["id"],
            },
        )
        assert r.status_code == 201, r.text
        owner = bearer(r.json()["id"], "owner", private["id"])
        codes = [_user(client, owner, 10 + n, role="driver") for n in range(3)]
        assert codes == [201, 201, 409]


def test_no_limit_when_turned_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with admin_client(_settings(tmp_path, url, None)) as client:
        org = client.post("/v1/accounts", json={"kind": "organization", "name": "o"}).json()
        codes = [_user(client, {}, n, role="driver", account_id=org["id"]) for n in range(12)]
        assert set(codes) == {201}


def test_two_creations_at_once_cannot_both_take_the_last_place(state_db_url: str) -> None:
    db = StateDatabase(state_db_url)
    db.upgrade()
    try:
        repo = AccountRepository(db)
        account = repo.create_account("organization", "o", now=1)
        repo.create_user(
            email="a@example.com", name="a", password_hash="x", role="driver",
            account_id=account.id, now=1, limit=2,
        )  # fmt: skip
        start = threading.Barrier(6)
        outcomes: list[str] = []

        def create(n: int) -> None:
            start.wait()
            try:
                repo.create_user(
                    email=f"c{n}@example.com", name="c", password_hash="x", role="driver",
                    account_id=account.id, now=2, limit=2,
                )  # fmt: skip
                outcomes.append("created")
            except UserLimitReached:
                outcomes.append("refused")

        threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(outcomes) == ["created"] + ["refused"] * 5
        assert len(repo.list_users(account_id=account.id)) == 2
    finally:
        db.dispose()


def test_the_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMATICS_MAX_USERS_PER_ACCOUNT", "7")
    env = read_environment()
    assert env.max_users_per_account == 7
    for command in ("api", "up"):
        assert build_parser(env).parse_args([command]).max_users_per_account == 7
    assert AuthSettings().max_users_per_account == 10_000
