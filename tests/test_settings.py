"""The settings read once at the composition root (:mod:`gateway.settings`): every
``TELEMATICS_*`` variable typed, a bad value named with what it takes, and the MQTT part
the ingest and command services share."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.commands.service import CommandSettings
from gateway.errors import ConfigurationError
from gateway.ingest.service import IngestSettings
from gateway.settings import Environment, MqttSettings, read_environment


def test_variables_are_read_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMATICS_DATA_DIR", "/var/lib/telematics")
    monkeypatch.setenv("TELEMATICS_API_PORT", "9090")
    monkeypatch.setenv("TELEMATICS_BATCH_DELAY_MS", "12.5")
    env = read_environment()
    assert env.data_dir == Path("/var/lib/telematics")
    assert env.api_port == 9090
    assert env.batch_delay_ms == 12.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("yes", True), ("true", True), ("", False), ("0", False), ("false", False)],
)
def test_switches_are_on_unless_empty_0_or_false(
    raw: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEMATICS_NO_REGISTRATION", raw)
    monkeypatch.setenv("TELEMATICS_REQUIRE_PROVISIONED", raw)
    monkeypatch.setenv("TELEMATICS_WEBHOOK_ALLOW_PRIVATE_TARGETS", raw)
    env = read_environment()
    assert env.no_registration is expected
    assert env.require_provisioned is expected
    assert env.webhook_allow_private_targets is expected


def test_a_bad_value_names_the_variable_and_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TELEMATICS_API_PORT", "eighty")
    monkeypatch.setenv("TELEMATICS_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigurationError) as info:
        read_environment()
    message = str(info.value)
    assert "TELEMATICS_API_PORT='eighty'" in message
    assert "valid integer" in message
    assert "fix or unset TELEMATICS_API_PORT" in message
    assert "TELEMATICS_LOG_LEVEL='LOUD'" in message


def test_secrets_stay_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMATICS_MQTT_PASSWORD", "s3cret-value")
    monkeypatch.setenv("TELEMATICS_ADMIN_PASSWORD", "s3cret-value")
    env = read_environment()
    assert env.mqtt_password == "s3cret-value"
    assert "s3cret-value" not in repr(env)
    mqtt = MqttSettings(username="svc", password="s3cret-value")
    assert "s3cret-value" not in repr(mqtt)
    assert "s3cret-value" not in repr(IngestSettings(mqtt=mqtt))


def test_the_service_account_password_comes_from_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    env = Environment(mqtt_password="from-env")
    assert env.mqtt_credentials(None, None) == (None, None)
    assert env.mqtt_credentials("svc", None) == ("svc", "from-env")
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert env.mqtt_credentials("svc", secret) == ("svc", "from-file")
    with pytest.raises(ConfigurationError, match="cannot read --mqtt-password-file"):
        env.mqtt_credentials("svc", tmp_path / "missing")


def test_ingest_and_commands_share_one_mqtt_part() -> None:
    mqtt = MqttSettings.from_url("mqtt://[::1]:1884", username="svc", password="pw")
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("::1", 1884, False)
    assert mqtt.url == "mqtt://[::1]:1884"
    assert IngestSettings(mqtt=mqtt).mqtt is CommandSettings(state_db_url="x", mqtt=mqtt).mqtt
    with pytest.raises(ValueError, match="TLS is not supported"):
        MqttSettings.from_url("mqtts://broker.example")
