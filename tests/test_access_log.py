"""No secret reaches the HTTP access log: an assistance share's token travels in its link's
path (``/v1/assistance/<token>``) and uvicorn logs paths at INFO (found by an outside
review: the README promises no token is ever logged), and uvicorn logs query strings
verbatim, where a client may put a token or a password (a later outside review)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import httpx

from gateway.api.accesslog import RedactSecretPaths, redact_path
from gateway.broker import free_port
from tests.support.waiting import wait_until

SECRET = "SECRET_SHARE_TOKEN_abc123"
QUERY_TOKEN = "tgk_SECRET_QUERY_TOKEN_xyz789"
QUERY_PASSWORD = "hunter2_in_a_query"


def test_a_share_token_in_a_path_is_redacted() -> None:
    assert redact_path(f"/v1/assistance/{SECRET}") == "/v1/assistance/<redacted>"
    assert redact_path(f"/v1/assistance/{SECRET}?x=1") == "/v1/assistance/<redacted>?x=<redacted>"
    assert redact_path("/v1/vehicles/WVWZZZ1JZXW000001") == "/v1/vehicles/WVWZZZ1JZXW000001"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/v1/assistance/{SECRET}", "1.1", 404),
        None,
    )
    assert RedactSecretPaths().filter(record)
    assert SECRET not in record.getMessage()


def test_a_share_token_in_a_path_the_router_does_not_serve_is_redacted_too() -> None:
    # security review 9 (decision 0061): uvicorn logs the path as sent, 404s included
    for path in (
        f"//v1/assistance/{SECRET}",
        f"/v1/assistance//{SECRET}",
        f"/V1/Assistance/{SECRET}",
        f"/api/v1/assistance/{SECRET}/x",
        f"/v1/./assistance/{SECRET}",
    ):
        assert SECRET not in redact_path(path), path
    # a secret the gateway issues, wherever it is put in a path
    import secrets

    for token in (secrets.token_urlsafe(24), secrets.token_urlsafe(32), secrets.token_hex(32)):
        assert redact_path(f"/v1/invitations/{token}/accept") == (
            "/v1/invitations/<redacted>/accept"
        )
        assert redact_path(f"/{token}") == "/<redacted>"
    # what routes have stays
    for path in ("/v1/vehicles/WVWZZZ1JZXW000001/commands", "/v1/fleets/123/vehicles"):
        assert redact_path(path) == path


def test_every_query_value_is_redacted_and_the_names_stay() -> None:
    assert (
        redact_path(f"/v1/vehicles?access_token={QUERY_TOKEN}&password={QUERY_PASSWORD}")
        == "/v1/vehicles?access_token=<redacted>&password=<redacted>"
    )
    assert redact_path(f"/v1/vehicles?{QUERY_TOKEN}&a=&b") == (
        "/v1/vehicles?<redacted>&a=<redacted>&<redacted>"
    )
    assert redact_path("/v1/vehicles?") == "/v1/vehicles?"
    assert redact_path("/v1/vehicles") == "/v1/vehicles"


def test_the_running_api_logs_no_share_token_and_no_query_secret(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "api", "--data-dir", str(tmp_path / "data")),
                *("--port", str(port), "--log-level", "INFO"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def answers() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(answers, timeout=30, what="the API to answer /healthz")
            assert httpx.get(f"{url}/v1/assistance/{SECRET}", timeout=5).status_code == 404
            query = f"access_token={QUERY_TOKEN}&password={QUERY_PASSWORD}"
            # refused (unknown parameters; their names only in the answer), but logged
            assert httpx.get(f"{url}/v1/vehicles?{query}", timeout=5).status_code == 400
            wait_until(lambda: "/v1/assistance/" in log_path.read_text(), what="the access log")
            wait_until(lambda: "GET /v1/vehicles?" in log_path.read_text(), what="the access log")
        finally:
            process.terminate()
            process.wait(30)
    text = log_path.read_text()
    assert "GET /v1/assistance/<redacted>" in text
    assert "GET /v1/vehicles?access_token=<redacted>&password=<redacted>" in text
    for secret in (SECRET, QUERY_TOKEN, QUERY_PASSWORD):
        assert secret not in text
