"""Authentication's state-database reads, kept for a moment (gateway.api.authcache,
decision 0035): a revocation still takes effect at once through this process and within
the cache's time through another.

The API tests run with a cache time of a minute, so that only the cache's invalidation, not
its expiry, can make a revocation work: each fails if a revoking method stops counting its
change. The other process is real where it matters: ``telematics user set-password`` run as
a child process against the API's data directory.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api import ApiSettings, create_app
from gateway.api.authcache import AuthReads
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.database import StateDatabase
from tests.support.api import TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, auth_settings_for_tests
from tests.support.waiting import wait_until

PASSWORD = "a-good-password-1"


class Api:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.admin = self.token(TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)

    @property
    def reads(self) -> AuthReads:
        reads: AuthReads = self.client.app.state.auth.reads  # type: ignore[attr-defined]
        return reads

    def token(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        form = {"grant_type": "password", "username": email, "password": password}
        r = self.client.post("/v1/auth/token", data=form)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def register(self, email: str) -> dict[str, str]:
        body = {"email": email, "password": PASSWORD, "name": "Ana"}
        r = self.client.post("/v1/auth/register", json=body)
        assert r.status_code == 202, r.text
        return self.token(email)

    def me(self, headers: dict[str, str]) -> Any:
        return self.client.get("/v1/me", headers=headers)

    def cached(self, headers: dict[str, str]) -> None:
        """Call twice; the second call must be answered from the cache."""
        assert self.me(headers).status_code == 200
        hits = self.reads.hits
        assert self.me(headers).status_code == 200
        assert self.reads.hits == hits + 1


def refused(r: Any, code: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == code


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The API with reads kept for a minute, on DATA/state.db (where the CLI looks)."""
    data = tmp_path / "data"
    data.mkdir()
    settings = ApiSettings(
        db_path=data / "telemetry.db",
        state_db_url=f"sqlite:///{data / 'state.db'}",
        auth=auth_settings_for_tests(auth_cache_s=60.0),
        fleet_worker=None,
    )
    with TestClient(create_app(settings)) as client:
        yield Api(client)


def test_a_revoked_api_key_is_refused_at_once(api: Api) -> None:
    created = api.client.post("/v1/api-keys", json={"name": "k"}, headers=api.admin).json()
    key = {"X-API-Key": created["key"]}
    api.cached(key)
    r = api.client.delete(f"/v1/api-keys/{created['id']}", headers=api.admin)
    assert r.status_code == 200, r.text
    refused(api.me(key), "invalid_api_key")


def test_disabling_a_user_and_changing_a_role_take_effect_at_once(api: Api) -> None:
    ana = api.register("ana@example.com")
    api.cached(ana)
    assert api.me(ana).json()["user"]["role"] == "owner"
    r = api.client.patch("/v1/users/2", json={"role": "driver"}, headers=api.admin)
    assert r.status_code == 200, r.text
    assert api.me(ana).json()["user"]["role"] == "driver"
    r = api.client.patch("/v1/users/2", json={"disabled": True}, headers=api.admin)
    assert r.status_code == 200, r.text
    refused(api.me(ana), "invalid_token")


def test_a_password_change_ends_the_access_tokens_at_once(api: Api) -> None:
    ana = api.register("ana@example.com")
    api.cached(ana)
    body = {"password": "another-password-2", "current_password": PASSWORD}
    assert api.client.patch("/v1/users/2", json=body, headers=ana).status_code == 200
    refused(api.me(ana), "invalid_token")
    assert api.me(api.token("ana@example.com", "another-password-2")).status_code == 200


def test_logging_out_ends_a_dashboard_session_at_once(api: Api) -> None:
    body = {"email": TEST_ADMIN_EMAIL, "password": TEST_ADMIN_PASSWORD}
    r = api.client.post("/v1/auth/session", json=body)
    assert r.status_code == 200, r.text
    session = {"Authorization": f"Bearer {api.client.cookies['tg_session']}"}
    csrf = {"X-CSRF-Token": api.client.cookies["tg_csrf"]}
    api.client.cookies.clear()
    api.cached(session)
    api.client.cookies.set("tg_session", session["Authorization"].split()[1])
    assert api.client.delete("/v1/auth/session", headers=csrf).status_code == 204
    api.client.cookies.clear()
    refused(api.me(session), "session_ended")


def test_a_dashboard_session_expires_on_time_though_its_read_is_kept(tmp_path: Path) -> None:
    clock = _Clock()
    settings = ApiSettings(
        tmp_path / "t.db",
        auth=auth_settings_for_tests(auth_cache_s=60.0, clock=clock, session_ttl_s=3600),
        fleet_worker=None,
    )
    with TestClient(create_app(settings)) as client:
        body = {"email": TEST_ADMIN_EMAIL, "password": TEST_ADMIN_PASSWORD}
        assert client.post("/v1/auth/session", json=body).status_code == 200
        session = {"Authorization": f"Bearer {client.cookies['tg_session']}"}
        client.cookies.clear()
        assert client.get("/v1/me", headers=session).status_code == 200
        clock.now += 3601
        refused(client.get("/v1/me", headers=session), "session_ended")


def test_a_password_set_by_another_process_ends_access_within_the_cache_time(
    tmp_path: Path,
) -> None:
    """The default cache time (a second), a real second process: its change is not counted
    here, so the read kept from before it is what expires."""
    data = tmp_path / "data"
    data.mkdir()
    settings = ApiSettings(
        db_path=data / "telemetry.db",
        state_db_url=f"sqlite:///{data / 'state.db'}",
        auth=auth_settings_for_tests(),
        fleet_worker=None,
    )
    with TestClient(create_app(settings)) as client:
        api = Api(client)
        ana = api.register("ana@example.com")
        assert api.reads.ttl_s == 1.0
        api.cached(ana)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMATICS_")}
        env["TELEMATICS_USER_PASSWORD"] = "set-by-the-operator-3"
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "user", "set-password", "ana@example.com",
             "--data-dir", str(data)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        wait_until(lambda: api.me(ana).status_code == 401, timeout=30, what="the token refused")
        refused(api.me(ana), "invalid_token")


# --- the cache itself, on a real state database ---------------------------------------------


class _Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[tuple[AccountRepository, Path]]:
    path = tmp_path / "state.db"
    with StateDatabase(f"sqlite:///{path}") as db:
        db.upgrade()
        repo = AccountRepository(db)
        repo.create_user(email="a@example.com", name="A", password_hash="x", role="admin",
                         account_id=None, now=1)  # fmt: skip
        yield repo, path


def _disable_from_outside(path: Path, user_id: int) -> None:
    """What another process's change looks like to this one: a committed row, no count."""
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute("UPDATE users SET disabled_at = 5 WHERE id = ?", (user_id,))
    finally:
        db.close()


def test_a_read_is_kept_for_its_time_and_no_longer(
    accounts: tuple[AccountRepository, Path],
) -> None:
    repo, path = accounts
    clock = _Clock()
    reads = AuthReads(repo, 1.0, clock=clock)
    first = reads.user(1)
    assert first is not None
    assert first.disabled_at is None
    _disable_from_outside(path, 1)
    clock.now += 0.9
    kept = reads.user(1)
    assert kept is not None
    assert kept.disabled_at is None
    assert (reads.reads, reads.hits) == (1, 1)
    clock.now += 0.1
    again = reads.user(1)
    assert again is not None
    assert again.disabled_at == 5
    assert reads.reads == 2


def test_a_change_through_this_process_drops_every_kept_read(
    accounts: tuple[AccountRepository, Path],
) -> None:
    repo, path = accounts
    reads = AuthReads(repo, 3600.0, clock=_Clock())
    assert reads.user(1) is not None
    _disable_from_outside(path, 1)
    # any repository of this process, not only the cache's own: the count is per process
    with StateDatabase(f"sqlite:///{path}") as other:
        AccountRepository(other).update_user(1, name="B")
    user = reads.user(1)
    assert user is not None
    assert user.disabled_at == 5
    assert user.name == "B"


def test_no_cache_time_reads_every_time_and_unknowns_are_not_kept(
    accounts: tuple[AccountRepository, Path],
) -> None:
    repo, _ = accounts
    uncached = AuthReads(repo, 0.0)
    for _ in range(3):
        assert uncached.user(1) is not None
    assert (uncached.reads, uncached.hits) == (3, 0)
    reads = AuthReads(repo, 60.0)
    assert reads.user(99) is None
    assert reads.user(99) is None
    assert reads.api_key("nosuchkey") is None
    assert (reads.reads, reads.hits) == (3, 0)
