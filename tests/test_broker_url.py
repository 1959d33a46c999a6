"""The one broker URL parser (:mod:`schemas.broker_url`): what the gateway and the
simulator both accept. ``mqtts`` is a broker URL (the TLS listener units use, default port
8883); a client that cannot speak TLS (the gateway's own connections) refuses it, saying
so, instead of connecting in plain text to a TLS port."""

from __future__ import annotations

import pytest

from device_sim.fleet import parse_broker_url as sim_parse
from gateway.broker import parse_mqtt_url as gateway_parse
from schemas.broker_url import BrokerAddress, parse_broker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.example", BrokerAddress("broker.example", 1883, False)),
        ("mqtts://broker.example", BrokerAddress("broker.example", 8883, True)),
        ("MQTTS://[::1]:9883/", BrokerAddress("::1", 9883, True)),
        ("mqtt://127.0.0.1:1884", BrokerAddress("127.0.0.1", 1884, False)),
    ],
)
def test_both_schemes_parse_with_their_default_ports(url: str, expected: BrokerAddress) -> None:
    assert parse_broker_url(url) == expected
    assert sim_parse(url) == expected  # the simulator uses the same parser


def test_the_gateway_refuses_tls_for_its_own_connections_saying_why() -> None:
    assert gateway_parse("mqtt://broker.example") == ("broker.example", 1883)
    with pytest.raises(ValueError, match=r"expected mqtt://host:port .*TLS is not supported"):
        gateway_parse("mqtts://broker.example")
    with pytest.raises(ValueError, match="TLS is not supported"):
        parse_broker_url("mqtts://broker.example", tls=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("tcp://h:1883", "expected mqtt://host"),
        ("mqtt://u:secret@h:1883", "no credentials in the URL"),
        ("mqtt://h:1883/topic", "no path or query"),
        ("mqtt://h:0", "the port must be 1..65535"),
        ("mqtt://h:99999", "the port must be 1..65535"),
        ("mqtt://:1883", "the host is missing"),
        ("mqtts://", "the host is missing"),
    ],
)
def test_a_bad_url_says_what_is_wrong_and_the_form(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid MQTT URL") as info:
        parse_broker_url(url)
    assert reason in str(info.value)
    assert "mqtt://127.0.0.1:1883" in str(info.value)
