"""The ``telematics`` command, and the composition root: :func:`main` reads the
environment once (:func:`gateway.settings.read_environment`), builds the parser with it as
every flag's default, and hands both to the command's handler.

``telematics up [--demo]``   broker + gateway + API (+ simulated fleet), supervised (``up``,
                             its plan in ``up_plan``)
``telematics gateway``       one ingest process (run several to scale out) (``gateway``)
``telematics api``           the HTTP API (``api``)
``telematics fleet-worker``  the fleet rules and trips worker (run several to share the
                             work) (``fleet_worker``)
``telematics sim``           the device simulator (speaks only the public device contract)
``telematics vehicle|user|account``  operator commands on the state database (``vehicle``,
                             ``user``, ``account``; what they share in ``admin``)
``telematics pki``           certificates for the broker's TLS listener (``pki``)
``telematics bench ...``     benchmarks (ingest, commands, sim, identities) (``bench``)

One module per command, each owning its subparser (``add_parser``) and its handler
(``run(args, env)``); the options several commands share are in ``options``. Every option
can also be set by an environment variable, named in its help text. See
docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

import argparse
import errno
import os
import sqlite3
import sys
from collections.abc import Sequence

from gateway import package_version
from gateway.cli import account, api, bench, fleet_worker, pki, sim, up, user, vehicle
from gateway.cli import gateway as gateway_command
from gateway.cli.options import ensure_signing_key, setup_logging
from gateway.cli.up import check_up_ports
from gateway.errors import GatewayError
from gateway.settings import Environment, read_environment

__all__ = ["build_parser", "check_up_ports", "ensure_signing_key", "main"]

#: in the order ``telematics --help`` lists them
_COMMANDS = (up, gateway_command, api, fleet_worker, vehicle, user, account, pki, sim, bench)


def build_parser(env: Environment | None = None) -> argparse.ArgumentParser:
    """The whole command line; flag defaults from ``env`` (read now if not given)."""
    env = read_environment() if env is None else env
    parser = argparse.ArgumentParser(
        prog="telematics",
        description="Connected-vehicle telematics gateway: ingests vehicle telemetry from "
        "MQTT, validates it against a VSS signal catalog, stores it, and serves it over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub, env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``telematics`` with ``argv`` (default: the process's arguments); returns the exit
    status (``--help`` and usage errors exit, as argparse does)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        return sim.run_simulator(argv[1:])
    try:
        env = read_environment()
    except GatewayError as exc:
        print(f"telematics: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(env).parse_args(argv)
    # commands without --log-level (vehicle, user, account, pki) print their own results
    setup_logging(args.log_level if hasattr(args, "log_level") else "WARNING")
    try:
        status = int(args.handler(args, env))
        sys.stdout.flush()  # here, so that a reader gone (| head) is caught below
        return status
    except (GatewayError, ValueError) as exc:
        print(f"telematics: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of the output went away (telematics vehicle list | head): stop quietly,
        # as other command-line tools do, not with a traceback; the output is discarded
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        data_dir = getattr(args, "data_dir", None)
        where = f"the data directory {data_dir.resolve()}" if data_dir else "the data directory"
        print(
            f"telematics: error: {problem}: {where} must be writable and have room: free "
            f"space there, or choose another with --data-dir DIR (env TELEMATICS_DATA_DIR)",
            file=sys.stderr,
        )
        return 2


#: what a file system that is read-only, full or closed to us answers
_STORAGE_ERRNOS = frozenset(
    {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOTDIR}
)
#: SQLite's words for the same
_SQLITE_STORAGE = ("disk is full", "readonly database", "unable to open database file")


def storage_problem(exc: BaseException) -> str | None:
    """What is wrong with the storage if ``exc`` (or what caused it) is a read-only, full or
    inaccessible file system, in a few words; None for any other error (decision 0054: those
    were tracebacks)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
            return f"{seen.strerror}: {seen.filename}" if seen.filename else str(seen.strerror)
        if isinstance(seen, sqlite3.Error) and any(m in str(seen) for m in _SQLITE_STORAGE):
            return f"SQLite: {seen}"
        seen = seen.__cause__ or seen.__context__
    return None
