"""``telematics user add|set-password|list``: users on the state database, audited like the
API's changes; a password comes from ``$TELEMATICS_USER_PASSWORD`` or is generated and shown
once. See docs/decisions/0013-architecture-step.md."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from gateway.cli.admin import (
    USER_PASSWORD_ENV,
    CliError,
    account_id,
    add_admin_common,
    now,
    print_result,
    print_rows,
    record,
    repositories,
)
from gateway.settings import Environment
from gateway.text import check_plain_text

if TYPE_CHECKING:
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    parser = sub.add_parser(
        "user", help="create and list users, set a password", description="Users and roles."
    )
    parser.set_defaults(handler=run)
    actions = parser.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="create a user",
        description=f"Create a user. The password comes from ${USER_PASSWORD_ENV}; without "
        "it one is generated and printed once.",
    )
    add.add_argument("email", help="the user's e-mail address, their login")
    add.add_argument(
        "--role",
        required=True,
        choices=["admin", "fleet_manager", "fleet_viewer", "owner", "driver"],
        help="what the user may see and do (README, Accounts and access): admin (no "
        "--account), or fleet_manager, fleet_viewer, owner, driver of the --account",
    )
    add.add_argument("--account", help="the account's id or name (not for admins)")
    add.add_argument("--name", help="display name (default: the e-mail address)")
    add_admin_common(add, env)
    reset = actions.add_parser(
        "set-password",
        help="set a user's password, e.g. a lost administrator's (ends their sessions)",
        description=f"Set the password of the user with this e-mail address: from "
        f"${USER_PASSWORD_ENV}, or, without it, a generated one printed once. The user's "
        "sessions end (every refresh token is revoked; access tokens run out within their "
        "lifetime), a lock-out after wrong passwords is lifted, and the change is audited. "
        "Works while the installation runs.",
    )
    reset.add_argument("email", help="the user's e-mail address, e.g. admin@localhost")
    add_admin_common(reset, env)
    lst = actions.add_parser(
        "list",
        help="list users",
        description="List users: id, e-mail address, role, account and whether disabled "
        "(--json for JSON).",
    )
    lst.add_argument("--account", help="only this account's (id or name)")
    add_admin_common(lst, env)


def run(args: argparse.Namespace, env: Environment) -> int:
    with repositories(args) as (accounts, audit):
        if args.user_command == "list":
            users = accounts.list_users(account_id=account_id(accounts, args.account))
            print_rows(
                args,
                [
                    {
                        "id": u.id,
                        "email": u.email,
                        "role": u.role,
                        "account": u.account_id,
                        "disabled": u.disabled_at is not None,
                    }
                    for u in users
                ],
                ["id", "email", "role", "account", "disabled"],
            )
            return 0
        if args.user_command == "set-password":
            return _set_password(args, env, accounts, audit)
        return _add_user(args, env, accounts, audit)


def _new_password(env: Environment) -> tuple[str, bool]:
    """The password to set: from the environment, else generated; (password, generated)."""
    from gateway.auth.passwords import WeakPassword, check_password, generate_password

    password = env.user_password
    if password is None:
        return generate_password(), True
    try:
        check_password(password)
    except WeakPassword as exc:
        raise CliError(f"${USER_PASSWORD_ENV}: {exc}") from None
    return password, False


def _add_user(
    args: argparse.Namespace, env: Environment, accounts: AccountRepository, audit: AuditLog
) -> int:
    from gateway.auth.passwords import hash_password
    from gateway.statedb.accounts import DuplicateEmail

    if (args.role == "admin") != (args.account is None):
        raise CliError("give --account for every role but admin (and none for an admin)")
    account = account_id(accounts, args.account)
    check_plain_text(args.email, "the e-mail address")
    if args.name is not None:
        check_plain_text(args.name, "--name")
    password, generated = _new_password(env)
    try:
        user = accounts.create_user(
            email=args.email,
            name=args.name or args.email,
            password_hash=hash_password(password),
            role=args.role,
            account_id=account,
            now=now(),
        )
    except DuplicateEmail:
        raise CliError(f"there is already a user {args.email}") from None
    record(
        audit,
        "user_create",
        account_id=account,
        target=f"user:{user.id}",
        detail={"email": user.email, "role": user.role},
    )
    shown = [f"  password (shown only now): {password}"] if generated else []
    print_result(
        args,
        {
            "id": user.id,
            "email": user.email,
            "role": user.role,
            "account": user.account_id,
            "password": password if generated else None,
        },
        f"created user {user.id} {user.email} ({user.role})",
        *shown,
    )
    return 0


def _set_password(
    args: argparse.Namespace, env: Environment, accounts: AccountRepository, audit: AuditLog
) -> int:
    """``telematics user set-password EMAIL``: the same change as the API's password change
    (``PATCH /v1/users/{id}``), audited the same way, and it ends what the user is logged in
    with: access tokens, refresh tokens (sessions) and API keys."""
    from gateway.auth.passwords import hash_password

    user = accounts.get_user_by_email(args.email)
    if user is None:
        raise CliError(f"there is no user {args.email}; telematics user list shows them")
    password, generated = _new_password(env)
    at = now()
    accounts.update_user(user.id, password_hash=hash_password(password))
    ended = accounts.end_user_sessions(user.id, now=at)
    accounts.clear_login_throttles(user.id)  # a new password starts without a lock-out
    record(
        audit,
        "user_update",
        account_id=user.account_id,
        target=f"user:{user.id}",
        detail={
            "changed": ["password"],
            "sessions_ended": ended.refresh_sessions,
            "ended_integrations": ended.api_keys,
        },
    )
    shown = [f"  password (shown only now): {password}"] if generated else []
    if user.disabled_at is not None:
        shown.append("  note: this user is disabled (PATCH /v1/users/{id} enables it)")
    print_result(
        args,
        {
            "id": user.id,
            "email": user.email,
            "sessions_ended": ended.refresh_sessions,
            "api_keys_revoked": ended.api_keys,
            "disabled": user.disabled_at is not None,
            "password": password if generated else None,
        },
        f"set the password of user {user.id} {user.email}; {ended.refresh_sessions} "
        f"session(s) ended, {ended.api_keys} API key(s) revoked",
        *shown,
    )
    return 0
