"""The supervisor of ``telematics up``: restart decisions, real child processes, and the
private broker kept running (gateway.supervisor).

The decisions (:class:`RestartPolicy`, the per-part history) are checked as pure functions
with a hand-set clock; the rest with real processes: small Python children that exit or
run, and a real Mosquitto with the closed set-up of ``tests/conftest.py``, SIGKILLed.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from gateway.broker import MosquittoProcess
from gateway.broker.control import prime_sessions
from gateway.health import SUPERVISOR_FILE_NAME
from gateway.supervisor import BrokerKeeper, Part, RestartPolicy, Supervisor, _Lifecycle
from tests.support.broker import SERVICE_USER, ClosedBroker, start_closed_broker
from tests.support.mqtt_raw import Mqtt5Client
from tests.support.waiting import wait_until

VIN = "1HGCM82633A004352"
FAST = RestartPolicy(first_delay_s=0.05, max_delay_s=0.4, stable_after_s=30, crash_loop_after=3)


# --- decisions --------------------------------------------------------------------------------


def test_back_off_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_the_readme_tells_the_real_restart_delays() -> None:
    """An outside review: the README said every part, the broker included, restarts after
    1, 2, 4 ... s, while the log said "starting it again in 0.5 s" for the broker."""
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())

    def told(policy: RestartPolicy) -> str:
        first = ", ".join(f"{policy.delay(n):g}" for n in (1, 2, 3))
        return f"after {first} ... at most {policy.max_delay_s:g} s"

    assert f"restarts whatever dies {told(RestartPolicy())}" in readme
    assert f"(the broker sooner: {told(BrokerKeeper.POLICY)})" in readme


def test_a_part_that_ran_long_enough_starts_over_at_the_first_delay() -> None:
    life = _Lifecycle(RestartPolicy(first_delay_s=1, max_delay_s=60, stable_after_s=60))
    life.started(0.0, restart=False)
    assert life.exited(1, now=5.0) == 1  # quick exit: the first in a row
    assert life.next_start_at == 6.0
    assert not life.due(5.9)
    assert life.due(6.0)
    life.started(6.0, restart=True)
    assert life.exited(1, now=7.0) == 2  # again, quickly
    life.started(9.0, restart=True)
    assert life.exited(1, now=10.0) == 4
    assert life.crash_looping  # three in a row
    life.started(14.0, restart=True)
    assert life.exited(1, now=14.0 + 61) == 1  # it ran for a minute: no longer looping
    assert not life.crash_looping
    assert life.restarts == 3
    assert life.last_exit == 1


# --- real child processes ---------------------------------------------------------------------


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_crash_looping_part_is_retried_reported_and_stops_nothing(tmp_path: Path) -> None:
    crasher = Part("simulator", _python("import sys; sys.exit(3)"), optional=True, policy=FAST)
    steady = Part("gateway-1", _python("import time; time.sleep(60)"), policy=FAST)
    prepared: list[str] = []
    crasher.before_start = lambda: prepared.append("refresh")
    supervisor = Supervisor([steady, crasher], None, health_dir=tmp_path / "health")
    for part in supervisor.parts:
        part.start()
    first_pid = steady.process.pid if steady.process else None
    try:

        def looping() -> bool:
            now = time.monotonic()
            for part in supervisor.parts:
                part.check(now)
            return crasher.life.crash_looping and crasher.life.restarts >= 3

        wait_until(looping, timeout=20, what="the crasher to be crash-looping")
        supervisor._report()
        status = json.loads((tmp_path / "health" / SUPERVISOR_FILE_NAME).read_text())
        parts = {p["name"]: p for p in status["parts"]}
        assert parts["simulator"]["crash_looping"] is True
        assert parts["simulator"]["optional"] is True
        assert parts["simulator"]["last_exit"] == 3
        assert parts["simulator"]["restarts"] >= 3
        # the other part was never touched
        assert parts["gateway-1"]["state"] == "running"
        assert parts["gateway-1"]["restarts"] == 0
        assert steady.process is not None
        assert steady.process.pid == first_pid
        assert steady.process.poll() is None
        # the part's preparation ran before every start
        assert len(prepared) == crasher.life.restarts + 1
    finally:
        supervisor.shutdown()
    assert steady.process.poll() is not None
    assert not (tmp_path / "health" / SUPERVISOR_FILE_NAME).exists()


def test_a_failing_preparation_does_not_keep_a_part_from_starting() -> None:
    def broken() -> None:
        raise RuntimeError("state database unavailable")

    part = Part("simulator", _python("pass"), before_start=broken, policy=FAST)
    part.start()
    assert part.process is not None
    assert part.process.wait(10) == 0


# --- the private broker -----------------------------------------------------------------------


def _keeper(tmp_path: Path) -> tuple[BrokerKeeper, ClosedBroker]:
    """The closed broker of the conftest, owned by a keeper as under ``telematics up``
    (its sync thread running)."""
    closed = start_closed_broker(tmp_path, keeper=True, restart_policy=FAST, persistence=True)
    assert closed.keeper is not None
    return closed.keeper, closed


def _connects(closed: ClosedBroker, vin: str) -> bool:
    password = closed.vehicles[vin]
    try:
        client, code = Mqtt5Client.connect(
            closed.broker.host, closed.broker.port, vin, username=vin, password=password
        )
    except OSError:
        return False
    client.disconnect()
    return code == 0


def test_a_killed_broker_is_started_again_from_the_identity_source(tmp_path: Path) -> None:
    keeper, closed = _keeper(tmp_path)
    try:
        old_pid = keeper.process.pid
        assert old_pid is not None
        keeper.process.kill()  # SIGKILL, as a crash would
        # provisioned while the broker was down: only the rendering at restart has it
        closed.vehicles[VIN] = "password-while-down"
        closed.source.set(closed.identities())

        def back() -> bool:
            keeper.check(time.monotonic())
            return keeper.process.is_running()

        wait_until(back, timeout=20, what="the broker to be started again")
        assert keeper.process.pid != old_pid
        assert keeper.status()["restarts"] == 1
        assert keeper.status()["last_exit"] == -signal.SIGKILL
        assert _connects(closed, VIN)
    finally:
        keeper.stop()


def test_a_bulk_change_restarts_the_broker_with_every_vehicle(tmp_path: Path) -> None:
    keeper, closed = _keeper(tmp_path)
    try:
        old_pid = keeper.process.pid
        many = {f"1HGCM8263{i:08d}": f"pw-{i}" for i in range(2000)}
        closed.vehicles.update(many)
        closed.source.set(closed.identities())
        # the sync thread picks it up and restarts the broker (not 4,000 plugin commands)
        wait_until(
            lambda: keeper.status()["restarts"] == 1 and keeper.process.is_running(),
            what="the restart",
        )
        assert keeper.process.pid != old_pid
        assert closed.sync.synced_version == closed.source.version
        assert _connects(closed, "1HGCM826300001999")
        assert closed.sync.sync_once() is False  # nothing left to do
    finally:
        keeper.stop()


def test_the_gateways_shared_subscription_is_back_before_the_gateway(tmp_path: Path) -> None:
    """Mosquitto 2.0.11 does not save shared subscriptions: after a restart a unit's
    telemetry reaches no subscriber (PUBACK 0x10) until the gateway has subscribed again.
    The keeper opens the gateway's session with its subscription right after the start,
    so the broker queues the gateway's share meanwhile."""
    share = "$share/telematics-gateway/v1/vehicles/+/telemetry"

    def prime(broker: MosquittoProcess) -> None:
        prime_sessions(
            broker.host, broker.port, SERVICE_USER, "service-password-1", {"gw-1": [share]}
        )

    closed = start_closed_broker(
        tmp_path,
        vehicles={VIN: "vehicle-password"},
        keeper=True,
        restart_policy=FAST,
        prime=prime,
        persistence=True,
    )
    keeper = closed.keeper
    assert keeper is not None
    try:
        keeper.restart()
        unit, code = Mqtt5Client.connect(
            closed.broker.host, closed.broker.port, VIN, username=VIN, password="vehicle-password"
        )
        assert code == 0
        # 0x00: a subscriber took it (0x10 would be "no matching subscribers")
        assert unit.publish(f"v1/vehicles/{VIN}/telemetry", b"while the gateway was away") == 0
        unit.disconnect()
        gateway, code = Mqtt5Client.connect(
            closed.broker.host,
            closed.broker.port,
            "gw-1",
            username=SERVICE_USER,
            password="service-password-1",
            clean_start=False,
            session_expiry=3600,
        )
        assert code == 0
        assert gateway.receive() == (f"v1/vehicles/{VIN}/telemetry", b"while the gateway was away")
        gateway.disconnect()
    finally:
        keeper.stop()
