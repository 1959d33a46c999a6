"""The health verdict (gateway.health.evaluate) and the status files it reads.

The rules are a pure function of what was observed, so they are checked with hand-made
observations; the files with real files in a temporary directory. End to end (a killed
broker turning ``/healthz`` red, then green) is ``tests/test_up_resilience.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from gateway.health import (
    STALE_AFTER_S,
    SUPERVISOR_FILE_NAME,
    GatewayHeartbeat,
    broker_has_identities,
    broker_wait,
    evaluate,
    gateway_heartbeat_path,
    read_gateway_heartbeats,
    read_supervisor_status,
    write_status_file,
)

NOW = 1_800_000_000_000


def beat(client_id: str, *, connected: bool = True, age_s: float = 1.0) -> GatewayHeartbeat:
    return GatewayHeartbeat(client_id, 1234, connected, NOW - int(age_s * 1000))


def supervisor(
    *parts: dict[str, Any], broker: str = "running", age_s: float = 1.0
) -> dict[str, Any]:
    return {
        "updated_at_ms": NOW - int(age_s * 1000),
        "broker": {"state": broker, "restarts": 0},
        "parts": list(parts),
    }


def part(name: str, state: str = "running", **extra: Any) -> dict[str, Any]:
    return {"name": name, "state": state, "restarts": 0, "optional": False, **extra}


def verdict(**overrides: Any) -> tuple[str, dict[str, str]]:
    observed: dict[str, Any] = {
        "telemetry_store": None,
        "state_database": None,
        "command_broker": True,
        "gateways": [beat("gw-1")],
        "supervisor": supervisor(part("gateway-1"), part("api")),
        "now_ms": NOW,
    }
    observed.update(overrides)
    report = evaluate(**observed)
    return report.status, {name: c.status for name, c in report.components.items()}


def test_everything_up_is_ok() -> None:
    status, components = verdict()
    assert status == "ok"
    assert set(components.values()) == {"ok"}


def test_the_broker_as_the_command_service_sees_it_is_required() -> None:
    status, components = verdict(command_broker=False)
    assert status == "unavailable"
    assert components["broker"] == "unavailable"
    # commands off in this process: nothing to say about the broker from here
    status, components = verdict(command_broker=None)
    assert status == "ok"
    assert components["broker"] == "unknown"


def test_ingest_needs_one_connected_gateway_with_a_fresh_heartbeat() -> None:
    assert verdict(gateways=[beat("gw-1", connected=False)])[0] == "unavailable"
    assert verdict(gateways=[beat("gw-1", age_s=STALE_AFTER_S + 1)])[0] == "unavailable"
    # one of two down: still ingesting, but not all is well
    status, components = verdict(gateways=[beat("gw-1"), beat("gw-2", connected=False)])
    assert (status, components["ingest"]) == ("degraded", "degraded")
    # nobody reports here (an API without local gateways): unknown, not a failure
    status, components = verdict(gateways=[], supervisor=None)
    assert (status, components["ingest"]) == ("ok", "unknown")


def test_databases_are_required() -> None:
    assert verdict(telemetry_store="disk I/O error")[0] == "unavailable"
    assert verdict(state_database="connection refused")[0] == "unavailable"


def test_supervised_parts_and_the_private_broker() -> None:
    # the broker process restarting
    status, components = verdict(supervisor=supervisor(part("api"), broker="waiting"))
    assert (status, components["broker_process"]) == ("unavailable", "unavailable")
    # a required part waiting for its restart
    status, components = verdict(supervisor=supervisor(part("gateway-1", "waiting")))
    assert (status, components["part:gateway-1"]) == ("unavailable", "unavailable")
    # an optional part crash-looping only degrades
    looping = part("simulator", "waiting", optional=True, crash_looping=True, last_exit=1)
    status, components = verdict(supervisor=supervisor(part("api"), looping))
    assert (status, components["part:simulator"]) == ("degraded", "degraded")
    # a required part that runs but keeps dying is reported, not hidden
    flapping = part("gateway-1", "running", crash_looping=True)
    assert verdict(supervisor=supervisor(flapping))[1]["part:gateway-1"] == "degraded"
    # a supervisor that stopped writing is itself the news
    status, components = verdict(supervisor=supervisor(age_s=STALE_AFTER_S + 5))
    assert (status, components["supervisor"]) == ("unavailable", "unavailable")


def test_an_edge_broker_down_is_the_installation_down() -> None:
    """Units connect to the edges only (decision 0038): one waiting for its restart leaves
    its vehicles without a broker."""
    edges = [{"state": "running", "restarts": 0}, {"state": "waiting", "restarts": 1}]
    status, components = verdict(supervisor={**supervisor(part("api")), "edges": edges})
    assert status == "unavailable"
    assert (components["edge_broker:1"], components["edge_broker:2"]) == ("ok", "unavailable")
    edges[1]["state"] = "running"
    assert verdict(supervisor={**supervisor(part("api")), "edges": edges})[0] == "ok"


def test_status_files_round_trip_and_tolerate_garbage(tmp_path: Path) -> None:
    directory = tmp_path / "health"
    path = gateway_heartbeat_path(directory, "telematics/gateway 1")
    assert path.name == "gateway-telematics_gateway_1.json"
    write_status_file(
        path,
        {
            "client_id": "telematics/gateway 1",
            "pid": 7,
            "connected": True,
            "updated_at_ms": NOW,
            "broker": "mqtt://127.0.0.1:1884",
        },
    )
    (directory / "gateway-broken.json").write_text("{not json")
    (directory / "gateway-partial.json").write_text('{"client_id": "x"}')
    assert read_gateway_heartbeats(directory) == [
        GatewayHeartbeat("telematics/gateway 1", 7, True, NOW, "mqtt://127.0.0.1:1884")
    ]
    assert read_supervisor_status(directory) is None
    write_status_file(directory / "supervisor.json", supervisor())
    status = read_supervisor_status(directory)
    assert status is not None
    assert status["broker"]["state"] == "running"
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) == []


def test_vehicle_add_waits_for_the_broker_that_this_installation_runs(tmp_path: Path) -> None:
    """`telematics vehicle add` returns once the running installation's broker has loaded the
    identity version it produced; with no fresh supervisor status there is nothing to wait
    for; a broker that never catches up is reported after the timeout."""
    now = 1_000_000

    def status(loaded: int | None, at: int = now) -> None:
        write_status_file(
            tmp_path / SUPERVISOR_FILE_NAME,
            {"updated_at_ms": at, "broker": {"identities_version": loaded}, "parts": []},
        )

    def wait(version: int, timeout_s: float = 0.3) -> bool | None:
        return broker_has_identities(tmp_path, version, timeout_s=timeout_s, now_ms=lambda: now)

    assert wait(1) is None  # no installation reports here
    status(3, at=now - 60_000)
    assert wait(4) is None  # a stopped one (its status is old)
    status(None)
    assert wait(4) is None  # no private closed broker
    status(3)
    assert wait(3) is True
    assert wait(4) is False
    timer = threading.Timer(0.2, status, args=(4,))
    timer.start()
    try:
        assert wait(4, timeout_s=5) is True
    finally:
        timer.join()


def test_a_stopped_edge_is_reported_and_waited_for_by_no_one(tmp_path: Path) -> None:
    """With edge brokers a VIN's login needs the core and its own edge only (0038): the wait
    asks those, and a broker whose process is stopped (``responding`` false) ends the wait
    at once instead of after the timeout; ``/healthz`` names it."""
    now = 1_000_000

    def status(core: int, edges: list[tuple[int, bool]]) -> None:
        write_status_file(
            tmp_path / SUPERVISOR_FILE_NAME,
            {
                "updated_at_ms": now,
                "broker": {
                    "identities_version": min([core, *(v for v, _ in edges)]),
                    "own_identities_version": core,
                    "responding": True,
                },
                "edges": [{"identities_version": v, "responding": r} for v, r in edges],
                "parts": [],
            },
        )

    def state(version: int, edge: int | None) -> str | None:
        return broker_wait(tmp_path, version, timeout_s=3, now_ms=lambda: now, edge=edge)

    status(5, [(5, True), (4, False)])  # edge 2 stopped before it took version 5
    started = time.monotonic()
    assert state(5, edge=1) == "applied"
    assert state(5, edge=2) == "not_responding"
    assert state(5, edge=None) == "not_responding"  # `telematics vehicle add`: every broker
    assert time.monotonic() - started < 1  # none of them waited for the timeout
    status(5, [(5, True), (5, False)])  # stopped after it took the version: nothing missing
    assert state(5, edge=2) == "applied"
    status(5, [(4, True), (5, True)])  # edge 1 slow but running: waited for, then pending
    assert state(5, edge=1) == "pending"

    edges = [
        {"state": "running", "restarts": 0, "responding": True, "pid": 10},
        {"state": "running", "restarts": 0, "responding": False, "pid": 11},
    ]
    report = evaluate(
        telemetry_store=None,
        state_database=None,
        command_broker=True,
        gateways=[beat("gw-1")],
        supervisor={**supervisor(part("api")), "edges": edges},
        now_ms=NOW,
    )
    assert report.status == "unavailable"
    assert report.components["edge_broker:1"].status == "ok"
    stopped = report.components["edge_broker:2"]
    assert stopped.status == "unavailable"
    assert "not responding: its process 11 is stopped" in stopped.detail


def test_a_stopped_process_is_told_from_a_running_one() -> None:
    import signal
    import subprocess
    import sys

    from gateway.supervisor import process_stopped

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_stopped(child.pid) is False
        child.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not process_stopped(child.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child.send_signal(signal.SIGCONT)
        while process_stopped(child.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()
    assert process_stopped(child.pid) is False  # gone: not stopped
