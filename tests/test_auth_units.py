"""The pure parts of authentication: rate limits, tokens, the policy."""

from __future__ import annotations

from dataclasses import dataclass

import jwt
import pytest

from gateway.auth.tokens import (
    InvalidToken,
    TokenExpired,
    api_key_prefix,
    decode_access_token,
    issue_access_token,
    new_api_key,
    secrets_match,
)
from gateway.core.policy import (
    AccountKind,
    Principal,
    Role,
    can_change_role_or_disable,
    can_create_user,
    can_manage_account,
    can_manage_user,
    can_read_audit,
    can_see_user,
    fleet_service_allowed,
    vehicle_access,
)
from gateway.core.ratelimit import Limit, RateLimiter, parse_limit

SECRET = b"unit-test-secret-unit-test-secret!!"


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [
        ("30/min", 0.5, 30),
        ("5/s", 5.0, 5),
        ("5/s,burst=10", 5.0, 10),
        ("7200/h", 2.0, 100),
        (" 12/min , burst=3 ", 0.2, 3),
    ],
)
def test_parse_limit(text: str, rate: float, burst: int) -> None:
    limit = parse_limit(text)
    assert limit is not None
    assert limit.rate == pytest.approx(rate)
    assert limit.burst == burst


@pytest.mark.parametrize("text", ["off", "OFF", "none", "0"])
def test_parse_limit_off(text: str) -> None:
    assert parse_limit(text) is None


@pytest.mark.parametrize("text", ["30", "30/day", "-1/s", "x/s", "5/s,bust=3", "5/s,burst=0"])
def test_parse_limit_explains_the_format(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/PERIOD"):
        parse_limit(text)


def test_token_bucket_allows_bursts_then_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(Limit(rate=1.0, burst=3), clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(1.0)
    assert limiter.acquire("b") == 0.0  # keys are independent
    now[0] = 0.5
    assert limiter.peek("a") == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.acquire("a") == 0.0
    limiter.refund("a")
    assert limiter.acquire("a") == 0.0


def test_access_tokens() -> None:
    token, expires = issue_access_token(
        SECRET, user_id=7, role="owner", account_id=3, now=1000, ttl_s=60
    )
    assert expires == 1060
    claims = decode_access_token(SECRET, token, now=1059)
    assert (claims.user_id, claims.role, claims.account_id) == (7, "owner", 3)
    with pytest.raises(TokenExpired):
        decode_access_token(SECRET, token, now=1060)
    with pytest.raises(InvalidToken):
        decode_access_token(b"another-secret-another-secret-xx!!", token, now=1000)
    with pytest.raises(InvalidToken, match="future"):
        decode_access_token(SECRET, token, now=900)
    not_access = jwt.encode(
        {"iss": "telematics-gateway", "sub": "7", "role": "x", "iat": 1000, "exp": 2000},
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(InvalidToken, match="not an access token"):
        decode_access_token(SECRET, not_access, now=1000)
    none_alg = jwt.encode(
        {"iss": "telematics-gateway", "sub": "1", "iat": 1, "exp": 9999, "typ": "access"},
        key=None,  # type: ignore[arg-type]
        algorithm="none",
    )
    with pytest.raises(InvalidToken):
        decode_access_token(SECRET, none_alg, now=10)


def test_api_keys() -> None:
    key, prefix, key_hash = new_api_key()
    assert api_key_prefix(key) == prefix
    assert secrets_match(key, key_hash)
    assert not secrets_match(key + "x", key_hash)
    assert api_key_prefix("tgk_short") is None
    assert api_key_prefix("eyJhbGciOi.x.y") is None


@dataclass(frozen=True)
class V:
    account_id: int
    active: bool = True


@dataclass(frozen=True)
class G:
    services: tuple[str, ...]
    active: bool = True


def who(role: Role, account: int | None = 1) -> Principal:
    return Principal(user_id=9, email="x@example.com", role=role, account_id=account)


def test_vehicle_access_policy() -> None:
    own, foreign, gone = V(1), V(2), V(1, active=False)
    lock = G(("lock",))
    assert vehicle_access(who(Role.ADMIN, None), None, None).may_command("unlock")
    manager = vehicle_access(who(Role.FLEET_MANAGER), own, None)
    assert manager.manage
    assert manager.may_command("immobilize")
    viewer = vehicle_access(who(Role.FLEET_VIEWER), own, None)
    assert viewer.read
    assert not viewer.may_command_anything
    assert not vehicle_access(who(Role.FLEET_MANAGER), foreign, None).read
    assert not vehicle_access(who(Role.OWNER), gone, None).read
    driver = vehicle_access(who(Role.DRIVER), own, lock)
    assert driver.may_command("lock")
    assert not driver.may_command("unlock")
    assert not driver.manage
    assert not vehicle_access(who(Role.DRIVER), own, None).read  # same account, no grant
    assert not vehicle_access(who(Role.DRIVER), own, G(("lock",), active=False)).read
    # a grant adds to what a role gives: a viewer lent a car elsewhere may lock it
    lent = vehicle_access(who(Role.FLEET_VIEWER), foreign, lock)
    assert lent.may_command("lock")


@pytest.mark.parametrize(
    ("creator", "role", "kind", "allowed"),
    [
        (Role.ADMIN, Role.ADMIN, None, True),
        (Role.ADMIN, Role.FLEET_MANAGER, AccountKind.ORGANIZATION, True),
        (Role.ADMIN, Role.FLEET_MANAGER, AccountKind.PRIVATE, False),  # wrong kind
        (Role.FLEET_MANAGER, Role.FLEET_VIEWER, AccountKind.ORGANIZATION, True),
        (Role.FLEET_MANAGER, Role.ADMIN, None, False),
        (Role.OWNER, Role.DRIVER, AccountKind.PRIVATE, True),
        (Role.OWNER, Role.OWNER, AccountKind.PRIVATE, False),
        (Role.FLEET_VIEWER, Role.DRIVER, AccountKind.ORGANIZATION, False),
        (Role.DRIVER, Role.DRIVER, AccountKind.PRIVATE, False),
    ],
)
def test_who_may_create_whom(
    creator: Role, role: Role, kind: AccountKind | None, allowed: bool
) -> None:
    account = None if kind is None else 1
    principal = who(creator, None if creator is Role.ADMIN else 1)
    assert can_create_user(principal, role=role, account_id=account, account_kind=kind) is allowed


@dataclass(frozen=True)
class U:
    id: int
    role: str
    account_id: int | None = 1


@pytest.mark.parametrize(
    ("role", "account", "allowed"),
    [
        (Role.ADMIN, None, True),  # the whole log
        (Role.ADMIN, 2, True),
        (Role.FLEET_MANAGER, 1, True),  # their organization's
        (Role.FLEET_MANAGER, 2, False),
        (Role.FLEET_MANAGER, None, False),  # not the whole log
        # an owner manages their private account but does not read its audit log: the
        # README's role table and decision 0007 give the log to fleet managers only, and
        # GET /v1/audit answers 403 to an owner (tests/test_authz.py)
        (Role.OWNER, 1, False),
        (Role.FLEET_VIEWER, 1, False),
        (Role.DRIVER, 1, False),
    ],
)
def test_who_may_read_the_audit_log(role: Role, account: int | None, allowed: bool) -> None:
    principal = who(role, None if role is Role.ADMIN else 1)
    assert can_read_audit(principal, account) is allowed


def test_managing_an_account_is_not_reading_its_audit_log() -> None:
    owner = who(Role.OWNER)
    assert can_manage_account(owner, 1)
    assert not can_read_audit(owner, 1)


def test_who_may_see_and_manage_users() -> None:
    admin, manager, owner = who(Role.ADMIN, None), who(Role.FLEET_MANAGER), who(Role.OWNER)
    driver, other_owner, stranger = U(2, "driver"), U(3, "owner"), U(4, "driver", 2)
    assert can_see_user(manager, driver)
    assert can_manage_user(manager, driver)
    assert can_see_user(owner, other_owner)  # a user of their account...
    assert not can_manage_user(owner, other_owner)  # ...but owners manage only drivers
    assert can_manage_user(owner, driver)
    assert not can_see_user(manager, stranger)
    assert not can_manage_user(manager, stranger)
    assert can_see_user(admin, stranger)
    assert can_manage_user(admin, stranger)
    myself = U(9, "driver")
    assert can_see_user(who(Role.DRIVER), myself)
    assert can_manage_user(who(Role.DRIVER), myself)
    assert not can_see_user(who(Role.DRIVER), driver)
    assert not can_see_user(who(Role.FLEET_VIEWER), driver)


def test_who_may_change_roles_or_disable() -> None:
    assert can_change_role_or_disable(who(Role.FLEET_MANAGER), U(2, "driver"))
    assert not can_change_role_or_disable(who(Role.FLEET_MANAGER), U(9, "fleet_manager"))
    assert can_change_role_or_disable(who(Role.ADMIN, None), U(9, "admin", None))
    assert not can_change_role_or_disable(who(Role.FLEET_VIEWER), U(2, "driver"))
    assert not can_change_role_or_disable(who(Role.FLEET_MANAGER), U(2, "driver", 2))


def test_fleet_services_are_for_organizations() -> None:
    assert fleet_service_allowed(True, AccountKind.ORGANIZATION)
    assert not fleet_service_allowed(True, AccountKind.PRIVATE)
    assert fleet_service_allowed(True, None)  # not provisioned: only an admin gets here
    assert fleet_service_allowed(False, AccountKind.PRIVATE)
