"""The first administrator, so a fresh installation can be logged into at all."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from gateway.auth.passwords import check_password, generate_password, hash_password
from gateway.core.policy import Role
from gateway.statedb.accounts import AccountRepository, DuplicateEmail
from gateway.statedb.audit import AuditLog

__all__ = ["FirstAdmin", "ensure_first_admin", "print_first_admin"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FirstAdmin:
    email: str
    #: the generated password; None when it came from the environment
    generated_password: str | None

    def __repr__(self) -> str:
        return f"FirstAdmin({self.email!r})"


def ensure_first_admin(
    accounts: AccountRepository,
    audit: AuditLog,
    *,
    email: str,
    password: str | None,
    now: int,
) -> FirstAdmin | None:
    """Create an administrator when the installation has none; None when it has one.

    ``password`` (from ``TELEMATICS_ADMIN_PASSWORD``) must pass the password rules; without
    it one is generated and returned, for the caller to show once: only its hash is kept.
    Several processes starting at once are safe: the e-mail address is unique, the loser of
    the race finds the winner's admin.
    """
    if accounts.count_users(role=Role.ADMIN) > 0:
        if password is not None:  # a newcomer who set it after the first start: say so
            log.warning(
                "TELEMATICS_ADMIN_PASSWORD is ignored: this installation has an administrator "
                "already (the variable only sets the first one's password); change a "
                "password with: telematics user set-password %s",
                email,
            )
        return None
    if password is not None:
        check_password(password)
    secret = password if password is not None else generate_password()
    try:
        user = accounts.create_user(
            email=email,
            name="Administrator",
            password_hash=hash_password(secret),
            role=Role.ADMIN,
            account_id=None,
            now=now,
        )
    except DuplicateEmail:
        return None
    audit.append(
        at=now,
        actor="system",
        action="user_create",
        target=f"user:{user.id}",
        detail={"email": user.email, "role": Role.ADMIN.value, "first_admin": True},
    )
    log.info("created the first administrator %s", user.email)
    return FirstAdmin(user.email, None if password is not None else secret)


def print_first_admin(admin: FirstAdmin, *, login_url: str | None = None) -> None:
    """Show a generated first-admin password once, on the terminal (never in a log)."""
    if admin.generated_password is None:
        return
    lines = [
        "",
        "  First administrator created (the password is shown only this once):",
        f"    e-mail     {admin.email}",
        f"    password   {admin.generated_password}",
        "  Set TELEMATICS_ADMIN_PASSWORD before the first start to choose it instead.",
    ]
    if login_url is not None:
        lines.append(
            f"  Log in:    curl -s {login_url} -d grant_type=password "
            f"-d username={admin.email} -d password=..."
        )
    print("\n".join([*lines, ""]), file=sys.stdout, flush=True)
