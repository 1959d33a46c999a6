"""What the operator commands on the state database share (``telematics vehicle``,
``user``, ``account``: one module each next to this one).

They work without a running API (first set-up, scripts, recovery: ``telematics user
set-password`` for a lost administrator password) and write the same audit entries the API
writes, with the operating-system user as the actor. Passwords shown here are shown once; a
password to set is read from the environment, never from the command line (``ps`` would
show it to every user of the machine). An account is given by its id or its name
(``--account 'Demo Fleet'``). See docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.settings import Environment

if TYPE_CHECKING:  # the state database (SQLAlchemy) loads when a command runs, not for --help
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog

__all__ = [
    "USER_PASSWORD_ENV",
    "CliError",
    "account_id",
    "add_admin_common",
    "now",
    "print_result",
    "print_rows",
    "record",
    "repositories",
]

#: environment variable with the password of ``telematics user add`` and ``set-password``
USER_PASSWORD_ENV = "TELEMATICS_USER_PASSWORD"


class CliError(GatewayError):
    pass


def add_admin_common(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=env.data_dir,
        help="the installation's data directory (env TELEMATICS_DATA_DIR; default: ./data)",
    )
    p.add_argument(
        "--state-db-url",
        default=env.state_db_url,
        help="state database URL (env TELEMATICS_STATE_DB_URL; default: SQLite state.db in "
        "the data directory)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


#: actions that only make sense on an installation that exists (they read or change what
#: is there): on a data directory without one they say so instead of creating an empty one
_NEEDS_AN_INSTALLATION = frozenset({"list", "revoke", "set-password"})


def _action(args: argparse.Namespace) -> str | None:
    for name in ("vehicle_command", "user_command", "account_command"):
        action = getattr(args, name, None)
        if action is not None:
            return str(action)
    return None


@contextmanager
def repositories(args: argparse.Namespace) -> Iterator[tuple[AccountRepository, AuditLog]]:
    """The state database of ``args`` (``--state-db-url``, else ``state.db`` in
    ``--data-dir``). Run in a directory that holds no installation (an operator command
    typed in the wrong directory), a command that needs one says where it looked and how to
    point it at the right one; one that creates (``add``) creates it and says so."""
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog
    from gateway.statedb.database import StateDatabase, default_url

    state_file = Path(args.data_dir) / "state.db"
    fresh = not args.state_db_url and not state_file.exists()
    if fresh and _action(args) in _NEEDS_AN_INSTALLATION:
        raise CliError(
            f"there is no installation in {args.data_dir} (no {state_file.name} there): run "
            "this in the directory you ran telematics up in, or give its data directory "
            "with --data-dir (env TELEMATICS_DATA_DIR)"
        )
    db = StateDatabase(args.state_db_url or default_url(args.data_dir))
    try:
        db.upgrade()
        if fresh:
            print(
                f"note: {args.data_dir} held no installation; created a new state database "
                f"{state_file} (to use an existing installation, run this in the directory "
                "you ran telematics up in, or give --data-dir)",
                file=sys.stderr,
            )
        yield AccountRepository(db), AuditLog(db)
    finally:
        db.dispose()


def _no_account(account: int) -> CliError:
    return CliError(f"there is no account {account}; telematics account list shows them")


def account_id(accounts: AccountRepository, ref: str | None) -> int | None:
    """The id of the account ``ref`` names: its id, or its name (which must be unique)."""
    if ref is None:
        return None
    if ref.strip().isdigit():
        found = int(ref)
        if accounts.get_account(found) is None:
            raise _no_account(found)
        return found
    named = [a for a in accounts.list_accounts() if a.name == ref]
    if not named:
        raise CliError(f"there is no account named {ref!r}; telematics account list shows them")
    if len(named) > 1:
        ids = ", ".join(str(a.id) for a in named)
        raise CliError(f"{len(named)} accounts are named {ref!r} (ids {ids}): give the id")
    return named[0].id


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def record(audit: AuditLog, action: str, **entry: Any) -> None:
    """An audit entry by the operating-system user running this command, now."""
    audit.append(at=now(), actor=_actor(), action=action, **entry)


def now() -> int:
    return time.time_ns() // 1_000_000


def print_result(args: argparse.Namespace, result: dict[str, object], *lines: str) -> None:
    """What a command did: ``result`` as JSON with ``--json`` (its help promises it), else
    ``lines`` for people."""
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for line in lines:
        print(line)


def print_rows(args: argparse.Namespace, rows: list[dict[str, object]], columns: list[str]) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print(
            "  ".join(
                str(r.get(c, "") if r.get(c) is not None else "-").ljust(widths[c]) for c in columns
            )
        )
