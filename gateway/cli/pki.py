"""``telematics pki init|client|revoke``: certificates for the broker's TLS listener (the
work is :mod:`gateway.broker.pki`'s). See docs/decisions/0013-architecture-step.md."""

from __future__ import annotations

import argparse

from gateway.settings import Environment

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    from gateway.broker.pki import add_arguments

    parser = sub.add_parser(
        "pki",
        help="certificates for the broker's TLS listener (CA, server, vehicles)",
        description="A small certificate authority: the broker's server certificate and "
        "one client certificate per vehicle (common name = VIN).",
    )
    add_arguments(parser)
    # the actions' --data-dir has no default of its own: this one (the environment's)
    parser.set_defaults(handler=run, data_dir=env.data_dir)


def run(args: argparse.Namespace, env: Environment) -> int:
    from gateway.broker.pki import run_from_args

    return run_from_args(args)
