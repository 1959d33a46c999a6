"""The API's test settings: the first administrator, signing secrets, bearer headers and an
in-process client logged in as the administrator.

The API refuses anonymous callers. Tests that are not about authentication use an app with
a known token secret and first admin, and call it as that admin (user 1 of a fresh state
database) with a real signed token; tests/test_auth*.py exercise the login flows.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi.testclient import TestClient

from gateway.api import ApiSettings, create_app
from gateway.api.security import AuthSettings
from gateway.auth.tokens import issue_access_token

TEST_ADMIN_EMAIL = "admin@test.local"
TEST_ADMIN_PASSWORD = "admin-password-for-tests"
TEST_TOKEN_SECRET = b"0123456789abcdef0123456789abcdef-tests"


def auth_settings_for_tests(**overrides: Any) -> AuthSettings:
    """Known secret and first admin; no rate limits (tests that need them set them)."""
    values: dict[str, Any] = {
        "secret": TEST_TOKEN_SECRET,
        "first_admin_email": TEST_ADMIN_EMAIL,
        "first_admin_password": TEST_ADMIN_PASSWORD,
        "user_command_limit": None,
        "vehicle_command_limit": None,
        "login_limit": None,
        "invitation_limit": None,
        "refusal_audit_limit": None,
        # the TestClient speaks plain HTTP (tests of the flag set it)
        "cookie_secure": False,
    }
    values.update(overrides)
    return AuthSettings(**values)


def bearer(
    user_id: int = 1,
    role: str = "admin",
    account_id: int | None = None,
    *,
    ttl_s: int = 3600,
) -> dict[str, str]:
    """An Authorization header with a real access token signed by TEST_TOKEN_SECRET."""
    token, _ = issue_access_token(
        TEST_TOKEN_SECRET,
        user_id=user_id,
        role=role,
        account_id=account_id,
        now=int(time.time()),
        ttl_s=ttl_s,
    )
    return {"Authorization": f"Bearer {token}"}


def admin_client(settings: ApiSettings, **client_kwargs: Any) -> TestClient:
    """A TestClient of the app for ``settings`` (with the test auth settings unless it has
    its own), calling as the first administrator."""
    if settings.auth == AuthSettings():
        settings = dataclasses.replace(settings, auth=auth_settings_for_tests())
    client = TestClient(create_app(settings), **client_kwargs)
    client.headers.update(bearer())
    return client
