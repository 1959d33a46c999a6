"""The telematics gateway: MQTT ingest, telemetry store, HTTP API, and the tools to run them.

Layout (docs/decisions/0013-architecture-step.md): a pure core, adapters around it, and one
composition root.

    core/         pure decisions, no IO: command admission and lifecycle, the access policy,
                  ingest batching, rate limits, lockout, presence, seq gaps, fleet rules
    ingest/       MQTT subscriber: decode -> batch -> commit -> acknowledge (adapter)
    commands/     the command service: MQTT, timers, confirmation (adapter)
    store/        telemetry stores behind ``open_store(url)`` (SQLite embedded)
    statedb/      the state database: accounts, vehicles, commands, audit (SQLAlchemy, Alembic)
    accounts/     account jobs that need the state database (first admin, provisioning)
    auth/         passwords, tokens and API keys (no database)
    broker/       a private Mosquitto, its identities and rights, its PKI
    api/          HTTP API (FastAPI): routes/ one module per resource, deps, errors, audit
    cli/          the ``telematics`` command, one module per command; the composition root
    settings.py   ``TELEMATICS_*`` settings, typed and read once (pydantic-settings)
    installation.py, supervisor.py, runner.py, health.py, retention.py: running ``up``
    bench/        benchmarks (``telematics bench ...``)
    errors.py     the exception tree
    files.py      private (0600) files and directories
    text.py       what free text (names, labels) may contain; untrusted text made safe to log

Imports ``schemas`` (the device contract). Only ``bench`` imports ``device_sim``; ``up --demo``
and ``telematics sim`` run the simulator by module name. ``pyproject.toml``'s import
contracts enforce the direction.
"""


def package_version() -> str:
    """The installed distribution's version ("0+unknown" in a source tree that is not
    installed): what ``telematics --version`` and the API's OpenAPI document say."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("telematics-gateway")
    except PackageNotFoundError:
        return "0+unknown"
