"""A private Mosquitto broker for ``telematics up``, the benchmarks and the tests.

Layout:
    mosquitto.py  BrokerConfig and render_config (the generated, commented mosquitto.conf),
                  MosquittoProcess (start / stop / kill / restart a child ``mosquitto -c``,
                  ready only once it answers an MQTT CONNECT), find_mosquitto, free_port,
                  probe_mqtt, parse_mqtt_url, and the BrokerError family

Imports: only the standard library and ``gateway.errors`` (itself stdlib-only), so the
benchmarks and pytest fixtures can start a broker without importing the rest of the
gateway. Nothing else in this package talks MQTT beyond the one-packet readiness probe: the
gateway's real client lives in ``gateway.ingest``.
"""

from gateway.broker.mosquitto import (
    DEFAULT_MQTT_PORT,
    INSTALL_HINT,
    BrokerConfig,
    BrokerError,
    BrokerStartError,
    MosquittoNotFoundError,
    MosquittoProcess,
    find_mosquitto,
    free_port,
    parse_mqtt_url,
    probe_mqtt,
    render_config,
)

__all__ = [
    "DEFAULT_MQTT_PORT",
    "INSTALL_HINT",
    "BrokerConfig",
    "BrokerError",
    "BrokerStartError",
    "MosquittoNotFoundError",
    "MosquittoProcess",
    "find_mosquitto",
    "free_port",
    "parse_mqtt_url",
    "probe_mqtt",
    "render_config",
]
