"""The API's building blocks on their own: the one mapping from the gateway's exceptions to
HTTP answers, the one VIN check, response models validated from records, and the layout
rule that every route lives in a module-level router (docs/decisions/0013)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.api import ApiSettings, create_app
from gateway.api.deps import vin_or_422
from gateway.api.errors import ApiError, install_error_handlers
from gateway.api.models.accounts import ApiKeyOut, InvitationOut, UserOut
from gateway.commands.service import VehicleMoving, VehicleNotFound
from gateway.statedb.accounts import InvitationClosed
from gateway.statedb.commands import IdempotencyConflict
from schemas.commands import CommandParamsError, CommandType

VIN = "WVWZZZ1JZXW000001"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (VehicleNotFound(VIN), 404, "vehicle_not_found"),
        (VehicleMoving(VIN, CommandType.UNLOCK), 409, "vehicle_moving"),
        (IdempotencyConflict(VIN, "k", "c"), 409, "idempotency_conflict"),
        (InvitationClosed(7, "it has expired"), 409, "invitation_closed"),
        (CommandParamsError(CommandType.UNLOCK, "x", "no"), 422, "invalid_request"),
    ],
)
def test_gateway_exceptions_map_to_one_answer(exc: Exception, status: int, code: str) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise exc

    response = TestClient(app).get("/boom")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_a_closed_invitation_names_itself_and_why() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise InvitationClosed(7, "it has expired")

    message = TestClient(app).get("/boom").json()["error"]["message"]
    assert message == "Invitation 7: it has expired."


@pytest.mark.parametrize(("loc", "hint"), [(["path", "vin"], True), (["body", "vin"], False)])
def test_one_vin_check_for_path_and_body(loc: list[str | int], hint: bool) -> None:
    assert vin_or_422(VIN, loc) == VIN
    with pytest.raises(ApiError) as raised:
        vin_or_422("wvwzzz1jzxw000001", loc)
    assert raised.value.code == "invalid_vin"
    assert raised.value.details[0].loc == loc
    assert ("GET /v1/vehicles" in raised.value.message) is hint


@dataclass(frozen=True)
class _User:
    id: int = 3
    email: str = "ana@example.com"
    name: str = "Ana"
    role: str = "driver"
    account_id: int | None = 1
    created_at: int = 1_000
    disabled_at: int | None = None


def test_response_models_are_validated_from_records() -> None:
    out = UserOut.model_validate(_User(disabled_at=5))
    assert (out.id, out.created_at, out.created_at_iso, out.disabled) == (
        3,
        1_000,
        "1970-01-01T00:00:01.000Z",
        True,
    )


@dataclass(frozen=True)
class _Key:
    id: int = 1
    name: str = "dashboard"
    prefix: str = "abc"
    user_id: int = 3
    created_at: int = 0
    last_used_at: int | None = None
    revoked_at: int | None = None


@dataclass(frozen=True)
class _Invitation:
    id: int = 1
    vin: str = VIN
    email: str = "bo@example.com"
    services: tuple[str, ...] = ("read",)
    status: str = "pending"
    created_at: int = 0
    expires_at: int = 10
    decided_at: int | None = None


def test_derived_fields_of_records() -> None:
    key = ApiKeyOut.model_validate(_Key())
    assert (key.prefix, key.last_used_at_iso) == ("tgk_abc", None)
    pending = InvitationOut.model_validate(_Invitation(), context={"now": 9})
    expired = InvitationOut.model_validate(_Invitation(), context={"now": 10})
    assert (pending.status, expired.status, pending.services) == ("pending", "expired", ["read"])


def test_routes_come_from_module_level_routers(tmp_path: Path) -> None:
    """Every route but the history one (its limit bounds are the app's settings) is defined
    once, in a module-level router of gateway.api.routes: two apps share the endpoints."""
    first = create_app(ApiSettings(tmp_path / "a.db"))
    second = create_app(
        ApiSettings(tmp_path / "b.db", max_history_limit=50, default_history_limit=10)
    )

    def endpoints(app: FastAPI) -> dict[str, object]:
        return {
            f"{sorted(getattr(r, 'methods', []))} {r.path}": getattr(r, "endpoint", None)
            for r in app.state.api_routes
        }

    a, b = endpoints(first), endpoints(second)
    assert a.keys() == b.keys()
    differ = sorted(k for k in a if a[k] is not b[k])
    assert differ == ["['GET'] /v1/vehicles/{vin}/history"]
    for key, endpoint in a.items():
        module = getattr(endpoint, "__module__", "")
        assert module.startswith("gateway.api.routes."), key
