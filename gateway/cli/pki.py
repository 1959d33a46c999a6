"""``telematics pki init|client|revoke``: certificates for the broker's TLS listener (the
work is :mod:`gateway.broker.pki`'s; this module is its command line). See
docs/decisions/0013-architecture-step.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.broker.mosquitto import DEFAULT_MQTTS_PORT, render_tls
from gateway.broker.pki import DEFAULT_CA_NAME, DEFAULT_SERVER_HOSTS, Pki, PkiError
from gateway.settings import Environment

__all__ = ["add_arguments", "add_parser", "run", "run_from_args"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
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
    return run_from_args(args, env)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``telematics pki {init,client,revoke}``.

    Each action takes ``--dir`` and ``--data-dir`` (the PKI goes to ``<data-dir>/pki``).
    ``--data-dir`` has no default of its own here (``argparse.SUPPRESS``), so a
    ``--data-dir`` the main parser put on ``pki`` itself is not overwritten; without either,
    :func:`run_from_args` uses the CLI's default (``$TELEMATICS_DATA_DIR`` or ``./data``).
    """
    sub = p.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    dir_help = "the PKI directory (default: <data-dir>/pki)"

    def add_dirs(action: argparse.ArgumentParser) -> None:
        action.add_argument("--dir", type=Path, default=None, help=dir_help)
        action.add_argument(
            "--data-dir",
            type=Path,
            default=argparse.SUPPRESS,
            help="the data directory (env TELEMATICS_DATA_DIR; default: ./data)",
        )

    init = sub.add_parser(
        "init",
        help="create the CA, the broker's server certificate and an empty CRL",
        description="Create a CA (ECDSA P-256, 10 years), a server certificate for the "
        "broker's TLS listener (2 years) and an empty CRL, and print the listener settings.",
    )
    add_dirs(init)
    init.add_argument(
        "--host",
        action="append",
        default=None,
        metavar="NAME",
        help="a DNS name or IP address clients use to reach the broker; repeat for more "
        "(default: localhost and 127.0.0.1)",
    )
    init.add_argument("--ca-name", default=DEFAULT_CA_NAME, help=f"(default: {DEFAULT_CA_NAME})")
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (every certificate it issued stops working)",
    )

    client = sub.add_parser(
        "client",
        help="issue a vehicle's client certificate (CN = VIN)",
        description="Issue a client certificate and key for a vehicle, valid 2 years.",
    )
    client.add_argument("vin", metavar="VIN", help="the vehicle's VIN, the certificate's CN")
    add_dirs(client)

    revoke = sub.add_parser(
        "revoke",
        help="revoke every certificate of a vehicle (adds them to the CRL)",
        description="Add every certificate issued for the VIN to the CRL. Under telematics "
        "up, revoke the vehicle instead (telematics vehicle revoke VIN, or DELETE "
        "/v1/vehicles/{vin}): that does this, reloads the broker and removes the vehicle's "
        "broker identity. With a broker of your own, reload it afterwards (SIGHUP) and remove "
        "the vehicle's identity there, so a connected session loses its rights too.",
    )
    revoke.add_argument("vin", metavar="VIN", help="the vehicle's VIN")
    add_dirs(revoke)


def _directory(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    # the pki parser's default is the environment's data directory (gateway.settings)
    data_dir = getattr(args, "data_dir", None)
    return Path(data_dir if data_dir is not None else "data") / "pki"


def _listener_settings(pki: Pki) -> str:
    lines = ["Mosquitto listener settings (telematics up --tls-port PORT writes them itself):"]
    render_tls(pki.tls_listener(), lambda _why, line: lines.append(f"    {line}"))
    return "\n".join(lines)


def _tls_listener(args: argparse.Namespace, env: Environment | None) -> tuple[str, int]:
    """Where the example connects: the TLS listener ``telematics up --tls-port`` runs for
    this data directory (or the one units are told), else 127.0.0.1 and the usual 8883."""
    from urllib.parse import urlsplit

    from gateway.cli.vehicle import default_unit_broker_url

    if env is None:
        return "127.0.0.1", DEFAULT_MQTTS_PORT
    data_dir = Path(getattr(args, "data_dir", None) or "data")
    url = urlsplit(default_unit_broker_url(data_dir, env, tls=True))
    if url.scheme != "mqtts" or url.hostname is None:
        return "127.0.0.1", DEFAULT_MQTTS_PORT
    return url.hostname, url.port or DEFAULT_MQTTS_PORT


def run_from_args(args: argparse.Namespace, env: Environment | None = None) -> int:
    """Run one ``telematics pki`` action; errors raise :class:`PkiError` (a GatewayError)."""
    pki = Pki(_directory(args))
    if args.pki_command == "init":
        hosts = args.host or list(DEFAULT_SERVER_HOSTS)
        written = pki.init(args.ca_name, hosts, force=args.force)
        print(f"created a CA and a server certificate for {', '.join(hosts)} in {pki.directory}:")
        for path in written:
            print(f"    {path}")
        print(_listener_settings(pki))
        return 0
    if args.pki_command == "client":
        cert, key = pki.client(args.vin)
        host, port = _tls_listener(args, env)
        print(f"issued a client certificate for {args.vin}:")
        print(f"    certificate {cert}")
        print(f"    key         {key}")
        print(f"    CA          {pki.ca_cert_path}")
        print(
            "the vehicle connects to the TLS listener with them (the port of telematics up "
            "--tls-port); its username is its VIN, so it must be provisioned as well "
            "(credentials 'certificate'), e.g.:\n"
            f"    mosquitto_pub -V mqttv5 -h {host} -p {port} --cafile {pki.ca_cert_path} "
            f"--cert {cert} --key {key} -q 1 -r -t v1/vehicles/{args.vin}/status "
            """-m '{"state": "online"}\'"""
        )
        print(_listener_settings(pki))
        return 0
    if args.pki_command == "revoke":
        serials = pki.revoke(args.vin)
        if serials:
            print(f"revoked {len(serials)} certificate(s) of {args.vin} in {pki.crl_path}:")
            for serial in serials:
                print(f"    serial {serial:x}")
        else:
            print(f"every certificate of {args.vin} was already revoked ({pki.crl_path})")
        print(
            "under telematics up, telematics vehicle revoke VIN does this and the rest; with a "
            "broker of your own, reload it (SIGHUP) so new connections see the CRL, and remove "
            "the vehicle's broker identity so a connected session loses its rights"
        )
        print(_listener_settings(pki))
        return 0
    raise PkiError(f"unknown pki action {args.pki_command!r}; use init, client or revoke")
