"""The commands API seen from a test: an in-process API with a broker, a watcher of the
command topics, and waiting for a command's status."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient

from gateway.api import ApiSettings
from gateway.broker import MosquittoProcess
from gateway.commands.service import CommandSettings
from gateway.settings import MqttSettings
from schemas.commands import command_topic
from tests.support.api import admin_client
from tests.support.waiting import wait_until


class Api:
    """The API app with its command service, running in this process."""

    def __init__(self, db_path: Path, broker: MosquittoProcess, state_url: str, **kw: Any) -> None:
        settings = CommandSettings(
            state_db_url=state_url, mqtt=MqttSettings(host=broker.host, port=broker.port), **kw
        )
        self.client = admin_client(ApiSettings(db_path=db_path, commands=settings))

    def __enter__(self) -> TestClient:
        client = self.client.__enter__()
        service = client.app.state.commands  # type: ignore[attr-defined]
        wait_until(service.connected.is_set, what="the command service to connect")
        return client

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(None, None, None)


class Observer:
    """mosquitto_sub on the command topics: what the broker actually delivered to units."""

    def __init__(self, broker: MosquittoProcess, vin: str) -> None:
        client_id = f"observer-{vin}"
        self.proc = subprocess.Popen(
            [
                "mosquitto_sub",
                "-p",
                str(broker.port),
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-i",
                client_id,
                "-t",
                command_topic(vin),
                "-F",
                "%p",
            ],
            stdout=subprocess.PIPE,
        )
        wait_until(
            lambda: (
                f"{client_id} 1 {command_topic(vin)}" in broker.log_path.read_text(errors="replace")
            ),
            what="the observer to subscribe",
        )

    def stop(self) -> list[dict[str, Any]]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return [orjson.loads(line) for line in out.splitlines() if line.strip()]


def get(api: TestClient, command_id: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"/v1/commands/{command_id}").json()
    return body


def wait_status(
    api: TestClient, command_id: str, status: str, timeout: float = 15
) -> dict[str, Any]:
    wait_until(
        lambda: get(api, command_id)["status"] == status,
        timeout=timeout,
        what=f"command {command_id} to be {status}",
    )
    return get(api, command_id)
