"""A live stream lasts no longer than the credential that opened it (found by an outside
review: a stolen token's stream kept streaming after a password change ended the token).
Both live streams check the caller's credential again every ``_RECHECK_S`` (30 s; shortened
here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.api import ApiSettings
from gateway.api.routes import positions, stream
from tests.support.api import admin_client
from tests.support.waiting import stream_ends_within

PASSWORD = "correct horse battery staple 1"


@pytest.mark.parametrize("path", ["/v1/stream", "/v1/positions/stream"])
def test_a_stream_ends_when_a_password_change_ends_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    for module in (stream, positions):
        monkeypatch.setattr(module, "_RECHECK_S", 0.2)
        monkeypatch.setattr(module, "_KEEP_ALIVE_S", 0.2)
    with admin_client(ApiSettings(db_path=tmp_path / "telemetry.db")) as client:
        email = "mallory@example.com"
        body = {"email": email, "password": PASSWORD, "name": "M"}
        assert client.post("/v1/auth/register", json=body).status_code == 202
        login = {"grant_type": "password", "username": email, "password": PASSWORD}
        token = client.post("/v1/auth/token", data=login).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        me = client.get("/v1/me", headers=headers).json()["user"]
        with client.stream("GET", path, headers=headers) as live:
            assert live.status_code == 200
            lines = live.iter_lines()
            next(lines)  # the stream is open
            change = {"current_password": PASSWORD, "password": PASSWORD + "x"}
            r = client.patch(f"/v1/users/{me['id']}", json=change, headers=headers)
            assert r.status_code == 200, r.text
            assert client.get("/v1/me", headers=headers).status_code == 401
            ended = stream_ends_within(lines, 10)
        assert ended, f"{path} kept streaming after the token was ended"
