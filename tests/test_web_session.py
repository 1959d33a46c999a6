"""The web dashboard's session and pages, in process (fast; the browser tests are in
tests/test_web_dashboard.py): the cookies' attributes, the CSRF check, the CSP with a tile
server, and the settings that refuse a tile URL that is not one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.api import ApiSettings, create_app
from gateway.api.settings import WebSettings
from gateway.api.web import content_security_policy
from gateway.errors import ConfigurationError
from tests.support.api import TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, auth_settings_for_tests


@pytest.fixture
def https_client(tmp_path: Path) -> Iterator[TestClient]:
    auth = auth_settings_for_tests(cookie_secure=True)  # the default outside tests
    settings = ApiSettings(tmp_path / "t.db", auth=auth, fleet_worker=None)
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        yield client


def _log_in(client: TestClient) -> None:
    r = client.post(
        "/v1/auth/session", json={"email": TEST_ADMIN_EMAIL, "password": TEST_ADMIN_PASSWORD}
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"


def test_the_session_cookie_is_httponly_strict_and_secure_when_configured(
    https_client: TestClient,
) -> None:
    r = https_client.post(
        "/v1/auth/session", json={"email": TEST_ADMIN_EMAIL, "password": TEST_ADMIN_PASSWORD}
    )
    set_cookies = [v.lower() for k, v in r.headers.multi_items() if k == "set-cookie"]
    session = next(c for c in set_cookies if c.startswith("tg_session="))
    csrf = next(c for c in set_cookies if c.startswith("tg_csrf="))
    assert "httponly" in session
    assert "samesite=strict" in session
    assert "secure" in session
    assert "httponly" not in csrf  # the page's script echoes it
    assert "samesite=strict" in csrf
    assert r.json()["csrf_token"] == https_client.cookies["tg_csrf"]


def test_the_cookie_authenticates_reads_and_csrf_guards_changes(
    https_client: TestClient,
) -> None:
    _log_in(https_client)
    assert https_client.get("/v1/me").json()["user"]["email"] == TEST_ADMIN_EMAIL
    body = {"email": "x@example.com", "name": "X", "role": "viewer", "password": "p" * 12}
    r = https_client.post("/v1/users", json=body)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "csrf_failed"
    token = https_client.cookies["tg_csrf"]
    r = https_client.delete("/v1/auth/session", headers={"X-CSRF-Token": token})
    assert r.status_code == 204
    https_client.cookies.clear()
    assert https_client.get("/v1/me").status_code == 401


def test_logging_out_ends_the_session_for_every_copy_of_the_cookie(
    https_client: TestClient,
) -> None:
    """The session lives on the server: a copy taken before logging out (a stolen cookie)
    is refused afterwards, sent as a cookie or as a bearer token."""
    _log_in(https_client)
    stolen = https_client.cookies["tg_session"]
    assert stolen.startswith("tgs_")
    bearer = {"Authorization": f"Bearer {stolen}"}
    assert https_client.get("/v1/me", headers=bearer).status_code == 200
    csrf = {"X-CSRF-Token": https_client.cookies["tg_csrf"]}
    assert https_client.delete("/v1/auth/session", headers=csrf).status_code == 204
    https_client.cookies.clear()
    https_client.cookies.set("tg_session", stolen)
    r = https_client.get("/v1/me")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "session_ended"
    https_client.cookies.clear()
    assert https_client.get("/v1/me", headers=bearer).status_code == 401


def test_a_password_change_ends_every_dashboard_session(https_client: TestClient) -> None:
    _log_in(https_client)
    first = https_client.cookies["tg_session"]
    https_client.cookies.clear()
    _log_in(https_client)
    me = https_client.get("/v1/me").json()["user"]
    r = https_client.patch(
        f"/v1/users/{me['id']}",
        json={"password": "a-new-password-12", "current_password": TEST_ADMIN_PASSWORD},
        headers={"X-CSRF-Token": https_client.cookies["tg_csrf"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()  # the change answered before the session ended
    for session in (first, https_client.cookies["tg_session"]):
        r = https_client.get("/v1/me", headers={"Authorization": f"Bearer {session}"})
        assert r.status_code == 401, session


def test_a_user_keeps_a_bounded_number_of_logins(https_client: TestClient) -> None:
    from gateway.api.routes.session import MAX_WEB_SESSIONS

    sessions = []
    for _ in range(MAX_WEB_SESSIONS + 1):
        https_client.cookies.clear()
        _log_in(https_client)
        sessions.append(https_client.cookies["tg_session"])
    https_client.cookies.clear()
    live = [
        https_client.get("/v1/me", headers={"Authorization": f"Bearer {s}"}).status_code == 200
        for s in sessions
    ]
    assert live == [False] + [True] * MAX_WEB_SESSIONS  # the oldest ended


def test_a_csrf_token_of_another_session_does_not_fit(https_client: TestClient) -> None:
    _log_in(https_client)
    first = https_client.cookies["tg_csrf"]
    https_client.cookies.clear()
    _log_in(https_client)  # a new session (another jti): another token
    assert https_client.cookies["tg_csrf"] != first
    r = https_client.delete("/v1/auth/session", headers={"X-CSRF-Token": first})
    assert r.status_code == 403


def test_pages_are_served_without_data_and_with_their_policy(tmp_path: Path) -> None:
    web = WebSettings(tile_url="https://{s}.tile.example.org/{z}/{x}/{y}.png")
    settings = ApiSettings(
        tmp_path / "t.db", auth=auth_settings_for_tests(), fleet_worker=None, web=web
    )
    with TestClient(create_app(settings)) as client:
        r = client.get("/")
        assert r.status_code == 200
        assert (
            "img-src 'self' data: https://*.tile.example.org;"
            in r.headers["content-security-policy"]
        )
        assert 'content="https://{s}.tile.example.org/{z}/{x}/{y}.png"' in r.text
        assert client.get("/web/static/vendor/leaflet/leaflet.js").status_code == 200
        assert client.get("/web/static/app.js").status_code == 200
    assert "img-src 'self' data:;" in content_security_policy(WebSettings())


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "https://tiles.example.org/tile.png",
        "//x/{z}/{x}/{y}",
        "ftp://a/{z}/{x}/{y}",
    ],
)
def test_a_tile_url_must_be_a_tile_template(url: str) -> None:
    with pytest.raises(ConfigurationError):
        WebSettings(tile_url=url)


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://testserver", 200),
        # behind a proxy that terminates TLS the API may see the other scheme: same host
        ("http://testserver", 200),
        ("https://evil.example", 403),
        ("https://testserver.evil.example", 403),
        ("null", 403),
    ],
)
def test_the_login_checks_the_origin_host(
    https_client: TestClient, origin: str, status: int
) -> None:
    r = https_client.post(
        "/v1/auth/session",
        json={"email": TEST_ADMIN_EMAIL, "password": TEST_ADMIN_PASSWORD},
        headers={"Origin": origin},
    )
    assert r.status_code == status, r.text
    assert ("tg_session" in r.cookies) == (status == 200)
