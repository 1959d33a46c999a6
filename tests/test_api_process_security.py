"""Security review 2 (docs/decisions/0023-security-review-2.md) against a real ``telematics
api`` process (uvicorn, real connections and disconnects):

* every live stream (``/v1/stream``, ``/v1/positions/stream``, a command's events) held a
  connection and a task for as long as the client liked, with no bound per user: one
  account could open thousands. Now ``--max-streams-per-user`` (default 16) open at once,
  429 ``too_many_streams`` beyond, and a slot is free again when its stream ends;
* the session cookie was ``Secure`` only when the request looked like HTTPS, which behind a
  proxy depends on a forwarded header. It is explicit now: ``--cookie-secure`` /
  ``--no-cookie-secure`` (env ``TELEMATICS_COOKIE_SECURE``), on unless the API listens on
  loopback.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.broker import free_port
from tests.support.processes import serving
from tests.support.waiting import wait_until

ADMIN_PASSWORD = "review-admin-password-1"
PASSWORD = "review-user-password-1"


@dataclass
class ApiProcess:
    process: subprocess.Popen[bytes]
    url: str


@contextlib.contextmanager
def api_process(tmp_path: Path, *args: str, **env: str) -> Iterator[ApiProcess]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "api", "--data-dir", str(tmp_path / "data"),
         "--port", str(port), "--log-level", "WARNING", *args],
        env={**os.environ, "TELEMATICS_ADMIN_PASSWORD": ADMIN_PASSWORD, **env},
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    api = ApiProcess(process, f"http://127.0.0.1:{port}")
    with serving(process, api.url):
        yield api


def owner(client: httpx.Client, email: str) -> dict[str, str]:
    r = client.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "x"})
    assert r.status_code == 202, r.text
    r = client.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@contextlib.contextmanager
def opened(client: httpx.Client, url: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
    """A stream, open until the block ends (its first bytes read: the server started it).
    The chunk iterator stays referenced: a dropped one closes the connection."""
    with client.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200, r.read()
        chunks = r.iter_raw()
        assert next(chunks).startswith(b"retry:")
        yield r
        del chunks


def test_live_streams_are_capped_per_user_and_freed_when_they_end(tmp_path: Path) -> None:
    with (
        api_process(tmp_path, "--max-streams-per-user", "2") as api,
        httpx.Client(base_url=api.url, timeout=10) as client,
    ):
        ana, bob = owner(client, "ana@example.com"), owner(client, "bob@example.com")
        with contextlib.ExitStack() as streams:
            first = streams.enter_context(opened(client, "/v1/stream", ana))
            streams.enter_context(opened(client, "/v1/positions/stream", ana))
            # a third, of either kind: refused with the limit and what to do
            for url in ("/v1/stream", "/v1/positions/stream"):
                r = client.get(url, headers=ana)
                assert r.status_code == 429, r.text
                error = r.json()["error"]
                assert error["code"] == "too_many_streams"
                assert "2" in error["message"]
                assert "--max-streams-per-user" in error["message"]
                assert int(r.headers["Retry-After"]) > 0
            # the cap is per user: another user is not held up
            streams.enter_context(opened(client, "/v1/stream", bob))
            # a stream that ends (the client goes away) frees its slot
            first.close()

            def reopened() -> bool:
                with client.stream("GET", "/v1/stream", headers=ana) as r:
                    return r.status_code == 200

            wait_until(reopened, timeout=10, what="a closed stream's slot to be free again")


def _session_cookie(api: ApiProcess, **headers: str) -> str:
    r = httpx.post(
        f"{api.url}/v1/auth/session",
        json={"email": "admin@localhost", "password": ADMIN_PASSWORD},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    cookies = [v for k, v in r.headers.multi_items() if k == "set-cookie"]
    session = [c for c in cookies if c.startswith("tg_session=")]
    assert len(session) == 1, cookies
    return session[0]


@pytest.mark.parametrize(
    ("args", "env", "secure"),
    [
        ((), {}, False),  # loopback: a browser on this host speaks plain HTTP to it
        (("--cookie-secure",), {}, True),
        ((), {"TELEMATICS_COOKIE_SECURE": "1"}, True),
        (("--host", "0.0.0.0"), {}, True),  # reachable from elsewhere: secure by default
        (("--host", "0.0.0.0", "--no-cookie-secure"), {}, False),
    ],
)
def test_the_session_cookies_secure_flag_is_configuration_not_a_header(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], secure: bool
) -> None:
    with api_process(tmp_path, *args, **env) as api:
        for headers in ({}, {"X-Forwarded-Proto": "https"}, {"X-Forwarded-Proto": "http"}):
            cookie = _session_cookie(api, **headers)
            assert ("; secure" in cookie.lower()) is secure, (headers, cookie)
