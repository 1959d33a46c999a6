"""The broker's log file against a connection loop (security review 9, decision 0061).

Mosquitto 2.0.11 writes a few lines per connection (its connection messages) into a log
file it never bounds; one vehicle credential connecting and dropping the socket in a loop
made it write ~0.5 MB/s into the data directory (with a refused Last Will each time,
~1.2 MB/s before the budget plugin logged refusals at most once a second). The keeper
(:class:`gateway.supervisor.BrokerKeeper`) now cuts the file beyond ``log_max_bytes``,
keeping the previous part as ``<log>.1``. Real Mosquitto, connections as a flooder makes
them.
"""

from __future__ import annotations

import time
from pathlib import Path

from gateway.broker import BrokerConfig, free_port
from gateway.broker.mosquitto import QUEUE_DROP_LINE
from gateway.supervisor import BROKER_LOG_MAX_BYTES, BrokerKeeper
from tests.support.mqtt_raw import Mqtt5Client

LIMIT = 20_000


def _connect_and_drop(keeper: BrokerKeeper, client_id: str) -> None:
    client, code = Mqtt5Client.connect(keeper.process.host, keeper.process.port, client_id)
    assert code == 0
    client.close()


def _wait_for(path: Path, text: str) -> str:
    deadline = time.monotonic() + 5
    while text not in (content := path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return content


def test_the_keeper_cuts_the_brokers_log_and_keeps_the_previous_part(tmp_path: Path) -> None:
    assert BROKER_LOG_MAX_BYTES >= 16 * 1024 * 1024  # a working day of an honest fleet's lines
    keeper = BrokerKeeper(
        BrokerConfig(port=free_port(), data_dir=tmp_path, persistence=False),
        log_max_bytes=LIMIT,
    )
    log_path = keeper.process.log_path
    keeper.start()
    try:
        keeper.check(time.monotonic())
        # a queue drop the broker logged just before the cut is still reported
        with log_path.open("a") as log:
            log.write(f"2026-12-08T01:00:00: {QUEUE_DROP_LINE}telematics-gateway-1.\n")
        loops = 0
        while log_path.stat().st_size <= 3 * LIMIT:
            _connect_and_drop(keeper, f"flood-{loops}")
            loops += 1
        _wait_for(log_path, f"flood-{loops - 1}")
        grown = log_path.stat().st_size
        keeper.check(time.monotonic())
        assert keeper.queue_drops == 1
        kept = log_path.with_name(log_path.name + ".1")
        assert kept.stat().st_size >= grown
        assert "flood-0 " in kept.read_text()
        assert log_path.stat().st_size < LIMIT
        # the broker goes on writing into the emptied file, at its start (O_APPEND: no hole)
        _connect_and_drop(keeper, "after-the-cut")
        content = _wait_for(log_path, "after-the-cut")
        assert "after-the-cut" in content
        assert "\x00" not in content
        assert "flood-0 " not in content
        # a reload reads the log from its offset: it still finds its line after a cut
        keeper.process.reload()
        # under the limit: nothing moves
        keeper.check(time.monotonic())
        assert "after-the-cut" in log_path.read_text()
    finally:
        keeper.stop()


def test_without_a_limit_the_log_is_left_alone(tmp_path: Path) -> None:
    keeper = BrokerKeeper(
        BrokerConfig(port=free_port(), data_dir=tmp_path, persistence=False),
        log_max_bytes=None,
    )
    keeper.start()
    try:
        for i in range(40):
            _connect_and_drop(keeper, f"c-{i}")
        _wait_for(keeper.process.log_path, "c-39")
        keeper.check(time.monotonic())
        assert "c-0 " in keeper.process.log_path.read_text()
        assert not keeper.process.log_path.with_name("mosquitto.log.1").exists()
    finally:
        keeper.stop()
