"""A private Mosquitto broker for ``telematics up``, the benchmarks and the tests, and the
identities of the vehicles and services allowed on it.

Layout:
    mosquitto.py  BrokerConfig and render_config (the generated, commented mosquitto.conf,
                  optionally with a password file, the Dynamic Security plugin and a TLS
                  listener: render_tls, which ``telematics pki`` shows too), TlsListener,
                  MosquittoProcess (start / stop / kill / restart / reload a child
                  ``mosquitto -c``, ready only once it answers an MQTT CONNECT),
                  find_mosquitto, find_dynsec_plugin, free_port, probe_mqtt,
                  parse_mqtt_url, and the BrokerError family
    auth.py       vehicle and service identities: Mosquitto password hashes, the password
                  file (who logs in) and the Dynamic Security plugin's file (what each may
                  do: BrokerAuthFiles), and BrokerAuthSync, which keeps the running broker
                  equal to an identity source without a restart
    control.py    DynsecControl: commands to the plugin over $CONTROL/dynamic-security/v1
    persistence.py  write_subscriptions: the gateways' shared subscriptions written into
                  Mosquitto's persistence file before a start (Mosquitto does not save
                  them, but restores them before it opens its listeners; decision 0031)
    pki.py        a small CA for the TLS listener: server and client certificates
                  (CN = VIN), revocation list, and the ``telematics pki`` command

Imports: only the standard library and ``gateway.errors`` (itself stdlib-only), so the
benchmarks and pytest fixtures can start a broker without importing the rest of the
gateway; ``pki`` alone needs ``cryptography`` (and ``schemas.vin`` for its VIN check) and
is therefore not imported here (use ``gateway.broker.pki``). Nothing else in this package
talks MQTT beyond the one-packet readiness probe: the gateway's real client lives in
``gateway.ingest``.
"""

from gateway.broker.auth import (
    BrokerAuthFiles,
    BrokerAuthSync,
    ServiceIdentity,
    VehicleIdentity,
    generate_password,
    hash_password,
    render_dynsec,
    render_password_file,
    verify_mqtt_password,
)
from gateway.broker.control import DynsecControl
from gateway.broker.mosquitto import (
    DEFAULT_MQTT_PORT,
    DEFAULT_MQTTS_PORT,
    INSTALL_HINT,
    BrokerConfig,
    BrokerError,
    BrokerStartError,
    MosquittoNotFoundError,
    MosquittoProcess,
    TlsListener,
    find_dynsec_plugin,
    find_mosquitto,
    free_port,
    parse_mqtt_url,
    probe_mqtt,
    render_config,
)

__all__ = [
    "DEFAULT_MQTTS_PORT",
    "DEFAULT_MQTT_PORT",
    "INSTALL_HINT",
    "BrokerAuthFiles",
    "BrokerAuthSync",
    "BrokerConfig",
    "BrokerError",
    "BrokerStartError",
    "DynsecControl",
    "MosquittoNotFoundError",
    "MosquittoProcess",
    "ServiceIdentity",
    "TlsListener",
    "VehicleIdentity",
    "find_dynsec_plugin",
    "find_mosquitto",
    "free_port",
    "generate_password",
    "hash_password",
    "parse_mqtt_url",
    "probe_mqtt",
    "render_config",
    "render_dynsec",
    "render_password_file",
    "verify_mqtt_password",
]
