"""The telematics gateway: MQTT ingest, telemetry store, HTTP API, and the tools to run them.

Layout (one subpackage per job):
    ingest/     MQTT subscriber and the batching pipeline (decode -> dedupe -> commit -> ack)
    store/      telemetry store interface and its embedded SQLite implementation
    api/        HTTP API (FastAPI): vehicles, state, history, quarantine, health, metrics
    broker/     a private Mosquitto as a child process with a generated configuration
    bench/      benchmarks (``telematics bench ...``)
    cli.py      the ``telematics`` command (``up``, ``gateway``, ``api``, ``bench``)
    config.py   settings (environment variables ``TELEMATICS_*`` and command-line flags)
    errors.py   the exception tree
    text.py     what free text (names, labels) may contain; untrusted text made safe to log

Imports ``schemas`` (the device contract); never imports ``device_sim`` except in the CLI's
demo and benchmark commands, which start the simulator as a separate part.
"""
