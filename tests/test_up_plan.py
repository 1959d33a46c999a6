"""``telematics up`` as a plan (:func:`gateway.cli.up_plan.plan_up`): what it would start,
with which command lines, decided without IO. Nothing here starts a process, opens a port
or writes a file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.cli.up_plan import BrokerMode, UpPlan, banner, plan_up
from gateway.errors import ConfigurationError, GatewayError
from gateway.settings import Environment

DATA = Path("/srv/telematics")


def _plan(*argv: str, env: Environment | None = None) -> UpPlan:
    env = env or Environment()
    args = build_parser(env).parse_args(["up", *argv])
    return plan_up(args, env, data_dir=DATA)


def _argv(plan: UpPlan, name: str) -> tuple[str, ...]:
    (child,) = [c for c in plan.children if c.name == name]
    return child.argv


def _value(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_the_default_is_a_closed_private_broker_one_gateway_the_api_and_a_fleet_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TELEMATICS_MQTT_URL", "TELEMATICS_STATE_DB_URL", "TELEMATICS_MQTT_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    plan = _plan("--mqtt-port", "2884", "--api-port", "9080")
    assert plan.broker.mode is BrokerMode.CLOSED
    assert plan.broker.url == "mqtt://127.0.0.1:2884"
    assert plan.broker.directory == DATA / "broker"
    assert [c.name for c in plan.children] == ["gateway-1", "api", "fleet-worker-1"]
    gateway = _argv(plan, "gateway-1")
    assert gateway[:4] == (sys.executable, "-m", "gateway", "gateway")
    assert _value(gateway, "--mqtt-url") == "mqtt://127.0.0.1:2884"
    assert _value(gateway, "--client-id") == "telematics-gateway-1"
    assert _value(gateway, "--mqtt-username") == "telematics-gateway"
    assert _value(gateway, "--mqtt-password-file") == str(DATA / "secrets/mqtt-service.password")
    assert _value(gateway, "--state-db-url") == f"sqlite:///{DATA / 'state.db'}"
    assert "--require-provisioned" in gateway
    assert _value(gateway, "--nice") == "5"  # below the API's priority (decision 0022)
    api = _argv(plan, "api")
    assert _value(api, "--port") == "9080"
    assert _value(api, "--signing-key") == str(DATA / "command-signing-key.pem")
    assert "--state-db-url" not in api  # the API finds the default state database itself
    assert "--no-fleet-worker" in api  # the rules run in their own process (decision 0029)
    worker = _argv(plan, "fleet-worker-1")
    assert worker[:4] == (sys.executable, "-m", "gateway", "fleet-worker")
    assert _value(worker, "--data-dir") == str(DATA)
    assert _value(worker, "--nice") == "5"
    assert "--state-db-url" not in worker
    assert plan.listeners == (
        ("the API", "127.0.0.1", 9080, "--api-port PORT (env TELEMATICS_API_PORT)"),
        ("the private broker", "127.0.0.1", 2884, "--mqtt-port PORT (env TELEMATICS_MQTT_PORT)"),
    )
    assert plan.demo is None


def test_gateways_get_their_own_client_ids_and_the_primed_group() -> None:
    plan = _plan("--gateways", "3", "--share-group", "g2")
    assert [c.name for c in plan.children][:4] == ["gateway-1", "gateway-2", "gateway-3", "api"]
    assert plan.gateway_client_ids == tuple(f"telematics-gateway-{i}" for i in (1, 2, 3))
    assert plan.share_group == "g2"
    for i in (1, 2, 3):
        assert _value(_argv(plan, f"gateway-{i}"), "--share-group") == "g2"


def test_fleet_workers_are_processes_or_the_apis_thread() -> None:
    plan = _plan("--fleet-workers", "2", "--fleet-nice", "7", "--state-db-url", "sqlite:///x.db")
    names = [c.name for c in plan.children]
    assert names == ["gateway-1", "api", "fleet-worker-1", "fleet-worker-2"]
    for name in names[2:]:
        assert _value(_argv(plan, name), "--nice") == "7"
        assert _value(_argv(plan, name), "--state-db-url") == "sqlite:///x.db"
    one_process = _plan("--fleet-workers", "0")
    assert [c.name for c in one_process.children] == ["gateway-1", "api"]
    assert "--no-fleet-worker" not in _argv(one_process, "api")
    with pytest.raises(ConfigurationError, match="--fleet-workers"):
        _plan("--fleet-workers", "-1")


def test_the_demo_runs_the_simulator_by_module_name_with_unit_credentials() -> None:
    plan = _plan("--demo", "--vehicles", "7")
    assert plan.demo is not None
    assert plan.demo.vehicles == 7
    assert plan.demo.credentials == DATA / "secrets/demo-units.json"
    assert plan.demo.public_key == DATA / "command-signing-key.pem.pub"
    simulator = plan.children[-1]
    assert simulator.name == "simulator"
    assert simulator.optional
    assert simulator.argv[1:3] == ("-m", "device_sim")
    assert _value(simulator.argv, "--vehicles") == "7"
    assert _value(simulator.argv, "--credentials") == str(DATA / "secrets/demo-units.json")
    # the units' seq counters survive a restart of the demo (decision 0065)
    assert _value(simulator.argv, "--seq-state") == str(DATA / "simulator/seq-state.json")


def test_an_anonymous_broker_needs_no_credentials_and_refuses_tls() -> None:
    plan = _plan("--anonymous-broker", "--demo")
    assert plan.broker.mode is BrokerMode.ANONYMOUS
    assert not plan.broker.closed
    assert "--mqtt-username" not in _argv(plan, "gateway-1")
    assert "--require-provisioned" not in _argv(plan, "gateway-1")
    assert plan.demo is not None
    assert plan.demo.credentials is None
    assert "--credentials" not in _argv(plan, "simulator")
    with pytest.raises(GatewayError, match="--tls-port needs the closed broker"):
        _plan("--anonymous-broker", "--tls-port", "8883")


def test_an_external_broker_is_used_as_given() -> None:
    plan = _plan("--mqtt-url", "mqtt://broker.example:1883", "--tls-port", "8883")
    assert plan.broker.mode is BrokerMode.EXTERNAL
    assert plan.broker.url == "mqtt://broker.example:1883"
    assert len(plan.listeners) == 1  # only the API listens here
    assert "--mqtt-username" not in _argv(plan, "api")
    with_account = _plan(
        "--mqtt-url",
        "mqtt://broker.example",
        "--mqtt-username",
        "svc",
        "--mqtt-password-file",
        "/etc/telematics/pw",
    )
    gateway = _argv(with_account, "gateway-1")
    assert _value(gateway, "--mqtt-username") == "svc"
    assert _value(gateway, "--mqtt-password-file") == "/etc/telematics/pw"
    assert "--require-provisioned" in gateway
    with pytest.raises(ValueError, match="TLS is not supported"):
        _plan("--mqtt-url", "mqtts://broker.example")


def test_certificate_units_are_told_the_tls_listener() -> None:
    """A unit provisioned with a client certificate has no password for the plain
    listener: the API tells it the TLS one (an outside tester was told mqtt://...:1884)."""
    assert "--unit-tls-broker-url" not in _argv(_plan(), "api")  # no TLS listener
    api = _argv(_plan("--tls-port", "8883"), "api")
    assert _value(api, "--unit-tls-broker-url") == "mqtts://127.0.0.1:8883"
    api = _argv(_plan("--tls-port", "8883", "--unit-broker-url", "mqtt://gw.example:1884"), "api")
    assert _value(api, "--unit-tls-broker-url") == "mqtts://gw.example:8883"
    api = _argv(_plan("--tls-port", "8883", "--unit-tls-broker-url", "mqtts://tls.example"), "api")
    assert _value(api, "--unit-tls-broker-url") == "mqtts://tls.example"
    external = _plan("--mqtt-url", "mqtt://broker.example:1883", "--tls-port", "8883")
    assert "--unit-tls-broker-url" not in _argv(external, "api")  # no private listener


def test_bad_settings_fail_the_plan_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="fast"):
        _plan("--login-limit", "fast")
    with pytest.raises(ValueError, match="invalid MQTT URL"):
        _plan("--mqtt-url", "tcp://broker.example")


def test_the_environment_is_every_flag_default() -> None:
    env = Environment(api_port=9999, share_group="from-env", admin_email="ops@example.com")
    plan = _plan(env=env)
    assert _value(_argv(plan, "api"), "--port") == "9999"
    assert _value(_argv(plan, "api"), "--admin-email") == "ops@example.com"
    assert plan.share_group == "from-env"
    assert _value(_argv(_plan("--api-port", "1234", env=env), "api"), "--port") == "1234"


def test_the_banner_shows_where_everything_is() -> None:
    plan = _plan("--demo", "--api-port", "9080")
    text = banner(
        plan,
        tls_url="mqtts://127.0.0.1:8883",
        demo_email="fleet@demo.local",
        demo_account=2,
    )
    assert "API      http://127.0.0.1:9080/v1   (docs: http://127.0.0.1:9080/docs;" in text
    # the web dashboard's address, in a line of its own (decision 0054 left it out)
    assert "web      http://127.0.0.1:9080/   (the dashboard" in text
    assert "vehicles need credentials" in text
    assert "TLS      mqtts://127.0.0.1:8883" in text
    assert "5 vehicles of the organization 'Demo Fleet' (account 2)" in text
    assert str(DATA) in text


def test_edge_brokers_listen_after_the_core_and_the_api_tells_units_their_urls() -> None:
    plan = _plan(
        "--edge-brokers", "2", "--mqtt-port", "2000", "--unit-broker-url", "mqtt://x.example:1"
    )
    assert plan.broker.edge_ports == (2001, 2002)
    assert [(w, p) for w, _, p, _ in plan.listeners if w.startswith("edge")] == [
        ("edge broker 1", 2001),
        ("edge broker 2", 2002),
    ]
    api = _argv(plan, "api")
    assert _value(api, "--edge-broker-urls") == "mqtt://x.example:2001,mqtt://x.example:2002"
    # the gateways still use the core broker, and route their feedback notices by edge
    assert _value(_argv(plan, "gateway-1"), "--mqtt-url") == "mqtt://127.0.0.1:2000"
    assert _value(_argv(plan, "gateway-1"), "--edge-brokers") == "2"
    assert "edges    2 unit-facing brokers" in banner(plan)
    assert _plan().broker.edge_ports == ()
    assert "--edge-broker-urls" not in _argv(_plan(), "api")
    assert "--edge-brokers" not in _argv(_plan(), "gateway-1")


@pytest.mark.parametrize(
    "other",
    [("--demo",), ("--tls-port", "3000"), ("--anonymous-broker",), ("--mqtt-url", "mqtt://h:1")],
)
def test_edge_brokers_refuse_what_they_do_not_support_yet(other: tuple[str, ...]) -> None:
    with pytest.raises(GatewayError, match="--edge-brokers"):
        _plan("--edge-brokers", "1", *other)


def test_up_can_let_webhooks_reach_the_internal_network() -> None:
    """Found by a fleet manager's trial: a webhook to a receiver on the company network (or
    this machine) was refused, and ``telematics up`` had no way to allow it (only
    ``telematics api`` had the flag); now ``up`` takes it, or its environment variable, and
    hands it to its API process."""
    assert "--webhook-allow-private-targets" not in _argv(_plan(), "api")
    plan = _plan("--webhook-allow-private-targets")
    assert "--webhook-allow-private-targets" in _argv(plan, "api")
    env = Environment(webhook_allow_private_targets=True)
    assert "--webhook-allow-private-targets" in _argv(_plan(env=env), "api")
    # and the API process it starts reads it into its notify settings
    api = build_parser(Environment()).parse_args(list(_argv(plan, "api"))[3:])
    assert api.webhook_allow_private_targets is True
