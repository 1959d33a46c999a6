"""``telematics up`` as a child process, for the tests of the whole installation."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.waiting import wait_until

ADMIN_PASSWORD = "up-admin-password-1"


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    output: Path
    data: Path
    api: str
    mqtt_port: int
    tls_port: int

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def login(self, email: str, password: str) -> dict[str, str]:
        r = httpx.post(
            f"{self.api}/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)


def start(tmp_path: Path, run: int, ports: tuple[int, int, int]) -> Up:
    mqtt_port, api_port, tls_port = ports
    output = tmp_path / f"up-{run}.log"
    env = {**os.environ, "TELEMATICS_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "up",
                "--demo",
                "--vehicles",
                "2",
                "--data-dir",
                str(tmp_path / "data"),
                "--mqtt-port",
                str(mqtt_port),
                "--api-port",
                str(api_port),
                "--tls-port",
                str(tls_port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    up = Up(process, output, tmp_path / "data", f"http://127.0.0.1:{api_port}", *ports[::2])

    def api_answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"telematics up exited with {process.returncode}:\n{up.text()}")
        try:
            return httpx.get(f"{up.api}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(api_answers, timeout=60, what="the API of telematics up")
    except BaseException:  # a failed start must not leave the installation running
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    return up


def start_healthy(
    tmp_path: Path, mqtt_port: int, api_port: int, *extra: str, admin_password: str
) -> subprocess.Popen[bytes]:
    """``telematics up`` (data in ``tmp_path/data``, output in ``tmp_path/up.log``) on these
    ports with ``extra`` arguments; returns once its API answers ``/healthz`` with 200, and
    fails the test with its output if it exits first. The caller stops it."""
    log = (tmp_path / "up.log").open("wb")
    argv = [sys.executable, "-m", "gateway", "up", "--data-dir", str(tmp_path / "data")]
    argv += ["--mqtt-port", str(mqtt_port), "--api-port", str(api_port), *extra]
    env = {**os.environ, "TELEMATICS_ADMIN_PASSWORD": admin_password}
    up = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()

    def running() -> bool:
        if up.poll() is not None:
            pytest.fail(f"telematics up exited:\n{(tmp_path / 'up.log').read_text()}")
        try:
            return httpx.get(f"http://127.0.0.1:{api_port}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(running, timeout=120, what="telematics up to be healthy")
    return up


def online(up: Up, headers: dict[str, str]) -> list[str]:
    vehicles = httpx.get(f"{up.api}/v1/vehicles", headers=headers).json()["items"]
    return sorted(v["vin"] for v in vehicles if v["online"])


def persisted_session_expiry(db: Path, client_id: str) -> int | None:
    """The session expiry time (epoch seconds) Mosquitto 2.0 saved for ``client_id`` in its
    persistence file (format version 6: 15-byte magic, CRC, version, then chunks of
    big-endian (type, length); a client chunk starts with the expiry time, a native int64)."""
    data = db.read_bytes()
    i = 15 + 4 + 4
    while i + 8 <= len(data):
        chunk, length = struct.unpack(">II", data[i : i + 8])
        body = data[i + 8 : i + 8 + length]
        i += 8 + length
        if chunk != 6:  # DB_CHUNK_CLIENT
            continue
        (expiry,) = struct.unpack("=q", body[:8])
        (id_len,) = struct.unpack(">H", body[14:16])
        if body[24 : 24 + id_len].decode() == client_id:
            return int(expiry)
    return None
