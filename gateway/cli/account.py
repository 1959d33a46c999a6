"""``telematics account add|list``: accounts (enterprise organizations, private accounts)
on the state database. See docs/decisions/0013-architecture-step.md."""

from __future__ import annotations

import argparse

from gateway.cli.admin import (
    add_admin_common,
    now,
    print_result,
    print_rows,
    record,
    repositories,
)
from gateway.settings import Environment
from gateway.text import check_plain_text

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    parser = sub.add_parser(
        "account",
        help="create and list accounts (organizations, private accounts)",
        description="Accounts: enterprise organizations and private accounts.",
    )
    parser.set_defaults(handler=run)
    actions = parser.add_subparsers(dest="account_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="create an account (an organization or a private one)",
        description="Create an account; its users (telematics user add --account NAME) and "
        "vehicles (telematics vehicle add --account NAME) are added to it by its id or name.",
    )
    add.add_argument(
        "name",
        help="the account's name, e.g. 'Acme Logistics' (names need not be unique; "
        "for one that is not, --account of the other commands takes the id)",
    )
    add.add_argument(
        "--kind",
        choices=["organization", "private"],
        default="organization",
        help="organization: an enterprise's fleet (fleet managers, viewers, drivers); private: "
        "one owner's cars and their drivers (default: organization)",
    )
    add_admin_common(add, env)
    lst = actions.add_parser(
        "list",
        help="list accounts",
        description="List accounts: id, kind (organization or private) and name; give the "
        "id or the name to --account of the other commands (--json for JSON).",
    )
    add_admin_common(lst, env)


def run(args: argparse.Namespace, env: Environment) -> int:
    with repositories(args) as (accounts, audit):
        if args.account_command == "list":
            print_rows(
                args,
                [{"id": a.id, "kind": a.kind, "name": a.name} for a in accounts.list_accounts()],
                ["id", "kind", "name"],
            )
            return 0
        account = accounts.create_account(
            args.kind, check_plain_text(args.name, "the account name"), now=now()
        )
        record(
            audit,
            "account_create",
            account_id=account.id,
            target=f"account:{account.id}",
            detail={"kind": account.kind, "name": account.name},
        )
        print_result(
            args,
            {"id": account.id, "kind": account.kind, "name": account.name},
            f"created {account.kind} account {account.id} {account.name!r}",
        )
        return 0
