"""``telematics api``: the HTTP API (with the command service when it has a broker). See
docs/decisions/0013-architecture-step.md."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.options import (
    add_auth,
    add_common,
    add_fleet_quotas,
    add_mqtt,
    add_mqtt_auth,
    add_offline_after,
    add_signing_key,
    add_state_db,
    add_store,
    add_webhook_targets,
    ensure_signing_key,
    mqtt_settings,
)
from gateway.errors import ConfigurationError
from gateway.settings import DEFAULT_API_PORT, Environment

if TYPE_CHECKING:
    from gateway.api.security import AuthSettings

__all__ = ["add_parser", "loopback", "run"]

log = logging.getLogger("telematics")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    api = sub.add_parser(
        "api", help="run the HTTP API", description="Serve the HTTP API (OpenAPI docs at /docs)."
    )
    add_common(api, env)
    api.add_argument(
        "--host",
        default=env.api_host,
        help="(env TELEMATICS_API_HOST; default: 127.0.0.1)",
    )
    api.add_argument(
        "--port",
        type=int,
        default=env.api_port,
        help=f"(env TELEMATICS_API_PORT; default: {DEFAULT_API_PORT})",
    )
    api.add_argument(
        "--cookie-secure",
        action=argparse.BooleanOptionalAction,
        default=env.cookie_secure,
        help="mark the web session cookies Secure (sent over HTTPS only); set it behind a "
        "proxy that terminates TLS (env TELEMATICS_COOKIE_SECURE; default: on, off only "
        "when --host is a loopback address)",
    )
    api.add_argument(
        "--max-streams-per-user",
        type=int,
        default=env.max_streams_per_user,
        metavar="N",
        help="live streams (/v1/stream, /v1/positions/stream, command events) one user may "
        "have open at once in this process; 429 beyond (env TELEMATICS_MAX_STREAMS_PER_USER; "
        "default: 16; 0: no limit)",
    )
    _add_edge_broker_urls(api, env)
    _add_auth_cache(api, env)
    add_mqtt(api, env, default=None, command="api")
    add_mqtt_auth(api, env)
    add_state_db(api, env)
    add_store(api, env)
    add_auth(api, env)
    add_offline_after(api, env)
    api.add_argument(
        "--commands-client-id",
        default=env.commands_client_id,
        help="MQTT client id of this API process's command service: unique and stable per "
        "API process, like a gateway's (env TELEMATICS_COMMANDS_CLIENT_ID; default: "
        "telematics-commands-1)",
    )
    add_signing_key(api, env)
    add_webhook_targets(api, env)
    add_fleet_quotas(api, env)
    api.add_argument(
        "--web-tile-url",
        default=env.web_tile_url,
        help="map tiles of the web dashboard, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png "
        "(env TELEMATICS_WEB_TILE_URL; default: none, a plain background with the demo's "
        "Munich roads; its origin joins the pages' Content-Security-Policy)",
    )
    api.add_argument(
        "--web-tile-attribution",
        default=env.web_tile_attribution,
        help="attribution shown with the tiles (env TELEMATICS_WEB_TILE_ATTRIBUTION)",
    )
    api.add_argument(
        "--no-fleet-worker",
        action="store_true",
        help="do not run the fleet rules and trips worker in this process (another process "
        "runs it, or a benchmark measures ingest without rules)",
    )
    api.set_defaults(handler=run)


def loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name (only this machine reaches it)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _add_auth_cache(api: argparse.ArgumentParser, env: Environment) -> None:
    api.add_argument(
        "--auth-cache-s",
        type=float,
        default=env.auth_cache_s,
        metavar="SECONDS",
        help="how long this process uses again what authenticating a caller read from the "
        "state database; a password change, disabled user or revoked key made through "
        "another process takes effect within this time, through this one at once (env "
        "TELEMATICS_AUTH_CACHE_S; default: 1; 0: read on every request)",
    )


def run(args: argparse.Namespace, env: Environment) -> int:
    import dataclasses

    import uvicorn

    from gateway.api import ApiSettings, create_app
    from gateway.api.settings import WebSettings, parse_fleet_quotas
    from gateway.commands.service import CommandSettings
    from gateway.files import private_directory
    from gateway.notify import NotifySettings
    from gateway.statedb.database import default_url as default_state_db_url
    from gateway.store import resolve_store
    from gateway.supervisor import data_paths

    try:
        fleet_quotas = parse_fleet_quotas(args.fleet_quotas)
    except ValueError as exc:
        raise ConfigurationError(f"--fleet-quotas: {exc}") from None
    private_directory(args.data_dir)
    db_path, _ = data_paths(args.data_dir)
    state_db_url = args.state_db_url or default_state_db_url(args.data_dir)
    signing_key: Path = args.signing_key or args.data_dir / "command-signing-key.pem"
    commands = None
    if args.mqtt_url is not None:
        mqtt = mqtt_settings(args, env)
        ensure_signing_key(signing_key)
        commands = CommandSettings(
            state_db_url=state_db_url,
            mqtt=mqtt,
            client_id=args.commands_client_id,
            signing_key_path=signing_key,
            edge_brokers=len(_edge_urls(args.edge_broker_urls)),
        )
    else:
        log.warning("no --mqtt-url: remote commands are off (their routes answer 503)")
    auth = _auth_settings(args, env, signing_key)
    if args.max_streams_per_user < 0:
        raise ConfigurationError("--max-streams-per-user: give 0 (no limit) or more")
    settings = ApiSettings(
        db_path=db_path,
        store_url=resolve_store(args.store, args.data_dir),
        commands=commands,
        auth=auth,
        state_db_url=state_db_url,
        silent_after_s=args.offline_after,
        notify=NotifySettings(webhook_allow_private_targets=args.webhook_allow_private_targets),
        fleet_quotas=fleet_quotas,
        web=WebSettings(
            tile_url=args.web_tile_url or None, tile_attribution=args.web_tile_attribution
        ),
        trace_file=env.trace_file,
        max_streams_per_user=args.max_streams_per_user or None,
    )
    if args.no_fleet_worker:
        settings = dataclasses.replace(settings, fleet_worker=None)
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def _auth_settings(args: argparse.Namespace, env: Environment, signing_key: Path) -> AuthSettings:
    """The API's authentication settings from its options (each bound checked)."""
    from gateway.api.security import AuthSettings
    from gateway.core.ratelimit import parse_limit

    if not 0 <= args.auth_cache_s <= 60:
        raise ConfigurationError("--auth-cache-s: give 0 (read every time) to 60 seconds")
    if args.max_users_per_account < 0:
        raise ConfigurationError("--max-users-per-account: give 0 (no limit) or more")
    return AuthSettings(
        secret_path=args.auth_secret_file or args.data_dir / "auth-secret",
        access_ttl_s=args.access_token_ttl,
        refresh_ttl_s=args.refresh_token_ttl,
        user_command_limit=parse_limit(args.user_command_limit),
        vehicle_command_limit=parse_limit(args.vehicle_command_limit),
        login_limit=parse_limit(args.login_limit),
        invitation_limit=parse_limit(args.invitation_limit),
        max_users_per_account=args.max_users_per_account or None,
        first_admin_email=args.admin_email,
        first_admin_password=env.admin_password or None,
        open_registration=not args.no_registration,
        broker_url=args.unit_broker_url or args.mqtt_url,
        tls_broker_url=args.unit_tls_broker_url,
        edge_broker_urls=_edge_urls(args.edge_broker_urls),
        signing_public_key_path=signing_key.with_name(signing_key.name + ".pub"),
        cookie_secure=(
            not loopback(args.host) if args.cookie_secure is None else args.cookie_secure
        ),
        auth_cache_s=args.auth_cache_s,
    )


def _add_edge_broker_urls(api: argparse.ArgumentParser, env: Environment) -> None:
    api.add_argument(
        "--edge-broker-urls",
        default=env.edge_broker_urls,
        metavar="URL,URL",
        help="the edge brokers' URLs, edge 1 first: provisioning tells each unit its VIN's "
        "edge instead of --unit-broker-url (decision 0038; telematics up --edge-brokers sets "
        "it) (env TELEMATICS_EDGE_BROKER_URLS; default: none)",
    )


def _edge_urls(text: str) -> tuple[str, ...]:
    """``--edge-broker-urls``: the URLs, each checked."""
    from schemas.broker_url import parse_broker_url

    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    for url in urls:
        try:
            parse_broker_url(url)
        except ValueError as exc:
            raise ConfigurationError(f"--edge-broker-urls: {exc}") from None
    return urls
