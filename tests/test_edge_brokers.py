"""Edge brokers bridged to the core broker (``telematics up --edge-brokers N``, decision 0038),
against real Mosquitto processes: what crosses the bridge, what a vehicle on an edge can
and cannot do (reviewed as an attacker), and that nothing a broker acknowledged is lost
when an edge or the core restarts.

The brokers are set up as ``telematics up`` sets them up (:func:`gateway.broker.edges.
bridge_lines`, the core with the bridges' accounts and no vehicle, each edge with the
logins and rights of its own vehicles only); the end-to-end test runs ``telematics up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from device_sim.loadgen import bench_vin
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.broker.auth import (
    BrokerAuthFiles,
    ServiceIdentity,
    VehicleIdentity,
    hash_password,
    render_dynsec,
)
from gateway.broker.control import login_code
from gateway.broker.edges import bridge_lines, bridge_username
from gateway.broker.vehicle_auth import ensure_vehicle_auth_plugin
from schemas.edges import edge_index, routed_topic
from tests.support.mqtt_raw import Mqtt5Client
from tests.support.up import start_healthy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

SERVICE = "telematics-gateway"
PASSWORD = "edge-unit-password-1"
SERVICE_SECRET = "edge-service-secret-1"
BRIDGE_SECRET = "edge-bridge-secret-1"
NOT_AUTHORIZED = 0x87
BAD_LOGIN = (0x86, 0x87)


def _vins_by_edge(edges: int, per_edge: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {i: [] for i in range(1, edges + 1)}
    n = 0
    while any(len(v) < per_edge for v in out.values()):
        vin = bench_vin(n)
        n += 1
        bucket = out[edge_index(vin, edges)]
        if len(bucket) < per_edge:
            bucket.append(vin)
    return out


@dataclass
class Cluster:
    core: MosquittoProcess
    edges: dict[int, MosquittoProcess]
    vins: dict[int, list[str]]
    clients: list[Mqtt5Client] = field(default_factory=list)

    def connect(
        self,
        port: int,
        client_id: str,
        username: str,
        password: str,
        *,
        clean_start: bool = True,
        session_expiry: int | None = None,
    ) -> tuple[Mqtt5Client, int]:
        client, code = Mqtt5Client.connect(
            "127.0.0.1",
            port,
            client_id,
            username=username,
            password=password,
            clean_start=clean_start,
            session_expiry=session_expiry,
        )
        self.clients.append(client)
        return client, code

    def unit(self, vin: str, *, edge: int | None = None) -> Mqtt5Client:
        port = self.edges[edge or edge_index(vin, len(self.edges))].port
        client, code = self.connect(port, vin, vin, PASSWORD)
        assert code == 0, f"{vin} refused at its edge: {code:#x}"
        return client

    def service(
        self, client_id: str = "svc", *, clean_start: bool = True, session_expiry: int | None = None
    ) -> Mqtt5Client:
        client, code = self.connect(
            self.core.port,
            client_id,
            SERVICE,
            SERVICE_SECRET,
            clean_start=clean_start,
            session_expiry=session_expiry,
        )
        assert code == 0
        return client


def _core(directory: Path, edges: int) -> MosquittoProcess:
    files = BrokerAuthFiles(directory / "auth")
    services = [ServiceIdentity(SERVICE, hash_password(SERVICE_SECRET))]
    services += [
        ServiceIdentity(bridge_username(i), hash_password(BRIDGE_SECRET), kind="bridge")
        for i in range(1, edges + 1)
    ]
    files.write([], services)
    return MosquittoProcess(
        BrokerConfig(
            port=free_port(),
            data_dir=directory,
            allow_anonymous=False,
            password_file=files.password_file,
            dynsec_config_file=files.dynsec_file,
        )
    )


def _edge(
    directory: Path, i: int, vins: list[str], core_port: int, vehicle_auth: Path | None = None
) -> MosquittoProcess:
    """With ``vehicle_auth``, the edge's vehicles are in that plugin's table (passwords and
    rights, decisions 0055 and 0060), as ``telematics up`` renders an edge where it can."""
    files = BrokerAuthFiles(directory / "auth", vehicle_table=vehicle_auth is not None)
    hashed = hash_password(PASSWORD)
    files.write(
        [VehicleIdentity(vin, hashed) for vin in vins],
        [ServiceIdentity(SERVICE, hash_password(SERVICE_SECRET))],
    )
    lines = bridge_lines(i, core_host="127.0.0.1", core_port=core_port, password=BRIDGE_SECRET)
    return MosquittoProcess(
        BrokerConfig(
            port=free_port(),
            data_dir=directory,
            allow_anonymous=False,
            password_file=files.password_file,
            dynsec_config_file=files.dynsec_file,
            extra_lines=lines,
            vehicle_auth_plugin=vehicle_auth,
            vehicle_table_file=None if vehicle_auth is None else files.vehicle_table_file,
        )
    )


@pytest.fixture(scope="module")
def vehicle_auth_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_vehicle_auth_plugin(tmp_path_factory.mktemp("vehicle-auth"))


@pytest.fixture(params=["dynamic_security", "vehicle_auth"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, vehicle_auth_plugin: Path
) -> Iterator[Cluster]:
    """Two edges; the vehicles' rights there from Dynamic Security, or from the
    vehicle_auth plugin's table (decision 0060)."""
    vins = _vins_by_edge(2, 2)
    core = _core(tmp_path / "core", 2)
    core.start()
    plugin = vehicle_auth_plugin if request.param == "vehicle_auth" else None
    edges = {i: _edge(tmp_path / f"edge-{i}", i, vins[i], core.port, plugin) for i in (1, 2)}
    c = Cluster(core, edges, vins)
    try:
        for edge in edges.values():
            edge.start()
        wait_until(lambda: _core_sees_bridges(core, 2), timeout=20, what="both bridges")
        yield c
    finally:
        for client in c.clients:
            client.close()
        for edge in edges.values():
            edge.stop()
        core.stop()


def _core_sees_bridges(core: MosquittoProcess, edges: int) -> bool:
    text = core.log_path.read_text()
    return all(f"as {bridge_username(i)} " in text for i in range(1, edges + 1))


def _sample(vin: str, seq: int) -> bytes:
    ts = time.time_ns() // 1_000_000
    return orjson.dumps({"vin": vin, "seq": seq, "ts": ts, "signals": {"Vehicle.Speed": 1.0}})


# --- what crosses the bridge -----------------------------------------------------------------


def test_telemetry_goes_out_and_commands_come_in_each_to_its_own_vehicle(
    cluster: Cluster,
) -> None:
    gateway = cluster.service("gw")
    assert gateway.subscribe("$share/telematics-gateway/v1/vehicles/+/telemetry") < 0x80
    a, b = cluster.vins[1][0], cluster.vins[2][0]
    unit_a, unit_b = cluster.unit(a), cluster.unit(b)
    for unit, vin in ((unit_a, a), (unit_b, b)):
        assert unit.subscribe(f"v1/vehicles/{vin}/commands") == 1
    assert unit_a.publish(f"v1/vehicles/{a}/telemetry", _sample(a, 1)) == 0
    assert unit_b.publish(f"v1/vehicles/{b}/telemetry", _sample(b, 1)) == 0
    got = [gateway.receive(10), gateway.receive(10)]
    assert sorted((t, orjson.loads(p)["seq"]) for t, p in filter(None, got)) == sorted(
        [(f"v1/vehicles/{a}/telemetry", 1), (f"v1/vehicles/{b}/telemetry", 1)]
    )
    # commands from the core: each reaches its own unit, through its own edge, only
    commander = cluster.service("commands")
    for vin in (a, b):
        topic = routed_topic(f"v1/vehicles/{vin}/commands", vin, 2)
        assert commander.publish(topic, vin.encode()) < 0x80
    assert unit_a.receive(10) == (f"v1/vehicles/{a}/commands", a.encode())
    assert unit_b.receive(10) == (f"v1/vehicles/{b}/commands", b.encode())
    assert unit_a.receive(1) is None
    assert unit_b.receive(1) is None


def test_an_edge_gets_the_commands_and_notices_of_its_own_vehicles_only(
    cluster: Cluster,
) -> None:
    """Every command used to be bridged to every edge (``v1/vehicles/+/commands in``): each
    edge received, and dropped, the commands of every other edge's vehicles. Now the core's
    publishers route by VIN (``routed_topic``: ``edges/<i>/`` + the contract's topic) and
    each bridge subscribes its own prefix, so nothing of edge 2's vehicles reaches edge 1,
    without a restart when vehicles are provisioned (the assignment is the VIN's hash)."""
    from gateway.core.batching import QuarantineEntry
    from gateway.core.feedback import feedback_messages
    from schemas import Reason, Rejection
    from schemas.feedback import FeedbackLimiter

    on_edge = {}
    for i in (1, 2):  # everything of the vehicles' topics that reaches each edge
        watcher, code = cluster.connect(
            cluster.edges[i].port, f"watch-{i}", SERVICE, SERVICE_SECRET
        )
        assert code == 0
        assert watcher.subscribe("v1/vehicles/+/commands") == 1
        assert watcher.subscribe("v1/vehicles/+/feedback") == 1
        on_edge[i] = watcher
    commander = cluster.service("commands")
    for vins in cluster.vins.values():
        for vin in vins:
            assert commander.publish(_command_topic(vin), vin.encode()) < 0x80
            # the gateway's feedback notice, as it publishes it
            entry = QuarantineEntry(
                1, f"v1/vehicles/{vin}/telemetry", b"{", Rejection(Reason.MALFORMED_JSON, "x", vin)
            )
            [(topic, notice)] = feedback_messages([entry], FeedbackLimiter(), 1, edges=2)
            assert commander.publish(topic, notice) < 0x80
    for i, watcher in on_edge.items():
        got = []
        while (message := watcher.receive(3)) is not None:
            got.append(message[0])
        mine = cluster.vins[i]
        assert sorted(got) == sorted(
            [f"v1/vehicles/{v}/commands" for v in mine]
            + [f"v1/vehicles/{v}/feedback" for v in mine]
        ), (i, got)


def _command_topic(vin: str) -> str:
    """Where the command service publishes ``vin``'s command on the core of two edges."""
    return routed_topic(f"v1/vehicles/{vin}/commands", vin, 2)


# --- as an attacker ---------------------------------------------------------------------------


def test_a_vehicle_on_an_edge_reaches_only_its_own_topics(cluster: Cluster) -> None:
    a, neighbour = cluster.vins[1]
    other = cluster.vins[2][0]
    gateway = cluster.service("gw")
    assert gateway.subscribe("v1/#") < 0x80
    unit = cluster.unit(a)
    for victim in (neighbour, other):
        for topic in ("commands", "feedback"):
            assert unit.subscribe(f"v1/vehicles/{victim}/{topic}") == NOT_AUTHORIZED
        for topic in ("telemetry", "events", "status", "commands/result"):
            assert unit.publish(f"v1/vehicles/{victim}/{topic}", b"{}") == NOT_AUTHORIZED
    for topic_filter in (
        "v1/#",
        "#",
        "v1/vehicles/+/commands",
        "$share/x/v1/vehicles/+/telemetry",
        "$SYS/#",
        "$CONTROL/#",
    ):
        assert unit.subscribe(topic_filter) == NOT_AUTHORIZED, topic_filter
    # its own command topic only; it may not write commands (not even its own)
    assert unit.publish(f"v1/vehicles/{a}/commands", b"x") == NOT_AUTHORIZED
    assert unit.publish(f"v1/vehicles/{other}/commands", b"x") == NOT_AUTHORIZED
    # nothing of that reached the core
    assert gateway.receive(1.5) is None


def test_logins_only_where_they_belong(cluster: Cluster) -> None:
    a, b = cluster.vins[1][0], cluster.vins[2][0]
    edge1, edge2, core = cluster.edges[1].port, cluster.edges[2].port, cluster.core.port
    # a VIN at another edge, or at the core: refused
    for port, vin in ((edge2, a), (edge1, b), (core, a), (core, b)):
        assert cluster.connect(port, vin, vin, PASSWORD)[1] in BAD_LOGIN, (port, vin)
    # the bridge's credential on a unit listener: refused
    for port in (edge1, edge2):
        for i in (1, 2):
            name = bridge_username(i)
            assert cluster.connect(port, name, name, BRIDGE_SECRET)[1] in BAD_LOGIN
    # a vehicle cannot take the bridge's local client id, nor another edge's bridge session
    assert cluster.connect(edge1, f"{bridge_username(1)}-local", a, PASSWORD)[1] in BAD_LOGIN
    name = bridge_username(2)
    assert cluster.connect(core, name, bridge_username(1), BRIDGE_SECRET)[1] in BAD_LOGIN
    # the bridge account on the core cannot read telemetry nor use the control topic
    spy, code = cluster.connect(core, bridge_username(1), bridge_username(1), BRIDGE_SECRET)
    assert code == 0
    for topic_filter in ("v1/vehicles/+/telemetry", "$share/g/v1/#", "$CONTROL/#", "#"):
        assert spy.subscribe(topic_filter) == NOT_AUTHORIZED, topic_filter
    assert spy.publish("$CONTROL/dynamic-security/v1", b"{}") == NOT_AUTHORIZED
    assert spy.publish("integrations/1/alerts", b"{}") == NOT_AUTHORIZED
    # the vehicles' logins still work at their own edges
    cluster.unit(a)
    cluster.unit(b)


def test_the_bridge_role_is_rendered_with_its_client_id_bound() -> None:
    bridge = ServiceIdentity("telematics-edge-1", hash_password("x"), kind="bridge")
    document = json.loads(render_dynsec([], [bridge]))
    (client,) = document["clients"]
    assert client["clientid"] == "telematics-edge-1"
    (role,) = [r for r in document["roles"] if r["rolename"] == client["roles"][0]["rolename"]]
    kinds = {(a["acltype"], a["topic"]) for a in role["acls"]}
    # what it reads on the core: under the edges' prefixes (routed_topic), nothing else
    assert ("subscribePattern", "edges/+/v1/vehicles/+/commands") in kinds
    assert all(t.startswith(("v1/vehicles/+/", "edges/+/v1/vehicles/+/")) for _, t in kinds)
    assert not any(k.startswith("subscribe") and t.startswith("v1/") for k, t in kinds)
    # the service account may route commands to the edges on a core with bridges only
    routed = ("publishClientSend", "edges/+/v1/vehicles/+/commands")
    service = ServiceIdentity(SERVICE, hash_password("y"))
    for services, expected in (([service, bridge], True), ([service], False)):
        roles = json.loads(render_dynsec([], services))["roles"]
        (svc,) = [r for r in roles if r["rolename"] == "telematics-service"]
        assert (routed in {(a["acltype"], a["topic"]) for a in svc["acls"]}) is expected
    assert not any(k.startswith("subscribe") and t.endswith("telemetry") for k, t in kinds)


# --- nothing acknowledged is lost across restarts --------------------------------------------


def _publish_all(unit_vin: str, cluster: Cluster, seqs: range, state: dict[str, object]) -> None:
    """Publish ``seqs`` at QoS 1, each until the edge acknowledges it (reconnecting after a
    broker restart, as a unit does)."""
    client: Mqtt5Client | None = state.get("client")  # type: ignore[assignment]
    for seq in seqs:
        while True:
            if client is None:
                try:
                    client = cluster.unit(unit_vin)
                except (OSError, AssertionError):
                    time.sleep(0.05)
                    continue
            try:
                reason = client.publish(f"v1/vehicles/{unit_vin}/telemetry", _sample(unit_vin, seq))
            except OSError:
                client.close()
                client = None
                continue
            assert reason == 0, f"seq {seq}: PUBACK {reason:#x}"
            break
    state["client"] = client


def test_nothing_acknowledged_is_lost_when_an_edge_or_the_core_restarts(
    cluster: Cluster,
) -> None:
    vin = cluster.vins[1][0]
    # the gateway's persistent session on the core (telematics up writes it into the core's
    # persistence file before every start, decision 0031)
    gateway = cluster.service("gw", clean_start=False, session_expiry=3600)
    assert gateway.subscribe("v1/vehicles/+/telemetry") < 0x80
    gateway.disconnect()
    edge, core = cluster.edges[1], cluster.core
    state: dict[str, object] = {}
    _publish_all(vin, cluster, range(1, 51), state)
    edge.restart()  # a clean restart of the edge
    _publish_all(vin, cluster, range(51, 101), state)
    core.restart()  # a clean restart of the core: the bridge reconnects
    _publish_all(vin, cluster, range(101, 151), state)
    core.stop()  # the core away: the edge queues for the bridge
    _publish_all(vin, cluster, range(151, 201), state)
    edge.restart()  # and the edge restarts meanwhile: its queue is on disk
    _publish_all(vin, cluster, range(201, 251), state)
    core.start()
    _publish_all(vin, cluster, range(251, 301), state)
    gateway = cluster.service("gw", clean_start=False, session_expiry=3600)
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen) < 300 and time.monotonic() < deadline:
        got = gateway.receive(2)
        if got is not None:
            seen.add(int(orjson.loads(got[1])["seq"]))
    assert sorted(set(range(1, 301)) - seen) == []


# --- telematics up --edge-brokers -------------------------------------------------------------


def _stored(data: Path) -> dict[str, set[int]]:
    db = sqlite3.connect(f"file:{data / 'telemetry.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT v.vin, s.seq FROM samples s JOIN vehicles v ON v.id = s.vehicle_id"
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    out: dict[str, set[int]] = {}
    for vin, seq in rows:
        out.setdefault(vin, set()).add(int(seq))
    return out


@contextlib.contextmanager
def _up(tmp_path: Path, edges: int) -> Iterator[tuple[Path, int, int]]:
    data = tmp_path / "data"
    mqtt_port, api_port = free_port(), free_port()
    while any(_taken(mqtt_port + i) for i in range(1, edges + 1)):
        mqtt_port = free_port()
    up = start_healthy(
        tmp_path,
        mqtt_port,
        api_port,
        *["--edge-brokers", str(edges), "--fleet-workers", "0"],
        admin_password="edge-admin-password-1",
    )
    try:
        yield data, mqtt_port, api_port
    finally:
        up.terminate()
        up.wait(60)


def _taken(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _provision(data: Path, vins: list[str]) -> None:
    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.database import default_url

    db = StateDatabase(default_url(data))
    try:
        accounts = AccountRepository(db)
        now = time.time_ns() // 1_000_000
        account_id = accounts.create_account("organization", "Edge units", now=now).id
        accounts.provision_vehicles(
            vins,
            account_id=account_id,
            label=None,
            mqtt_password_hash=hash_password(PASSWORD),
            provisioned_by=None,
            now=now,
        )
    finally:
        db.dispose()


def test_up_with_edge_brokers_takes_units_only_at_their_edge_and_stores_their_data(
    tmp_path: Path,
) -> None:
    vins = _vins_by_edge(2, 2)
    with _up(tmp_path, 2) as (data, core_port, _):
        every = [v for vs in vins.values() for v in vs]
        _provision(data, every)

        def code(port: int, vin: str) -> int:
            with contextlib.suppress(OSError):
                return login_code("127.0.0.1", port, vin, PASSWORD, client_id=vin)
            return -1

        for i, edge_vins in vins.items():
            for vin in edge_vins:
                port = core_port + i
                wait_until(lambda: code(port, vin) == 0, timeout=60, what=vin)  # noqa: B023
                assert code(core_port, vin) != 0  # the core takes no vehicle login
                assert code(core_port + 3 - i, vin) != 0  # nor does the other edge
        _publish_at_edges(core_port, vins, (1, 2, 3))
        wait_until(
            lambda: all(_stored(data).get(v) == {1, 2, 3} for v in every),
            timeout=60,
            what="every sample stored",
        )
        status = _supervisor(data)
        assert [e["state"] for e in status["edges"]] == ["running", "running"]
        # an edge and then the core crash (SIGKILL): the supervisor starts them again, the
        # bridge reconnects, and what units publish afterwards is stored
        os.kill(status["edges"][0]["pid"], signal.SIGKILL)
        wait_until(lambda: _supervisor(data)["edges"][0]["restarts"] == 1, timeout=60)
        _publish_at_edges(core_port, vins, (4, 5))
        os.kill(status["broker"]["pid"], signal.SIGKILL)
        wait_until(lambda: _supervisor(data)["broker"]["restarts"] == 1, timeout=60)
        _publish_at_edges(core_port, vins, (6, 7))
        wait_until(
            lambda: all(_stored(data).get(v) == set(range(1, 8)) for v in every),
            timeout=90,
            what="every sample stored after the restarts",
        )
        # a revoked vehicle is refused at its edge (the edge's own identity sync)
        revoked = vins[2][0]
        _revoke(data, revoked)
        wait_until(lambda: code(core_port + 2, revoked) not in (0, -1), timeout=60)
        assert code(core_port + 2, vins[2][1]) == 0


def _revoke(data: Path, vin: str) -> None:
    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.database import default_url

    db = StateDatabase(default_url(data))
    try:
        assert AccountRepository(db).revoke_vehicle(vin, now=time.time_ns() // 1_000_000)
    finally:
        db.dispose()


def _supervisor(data: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((data / "health" / "supervisor.json").read_text())
    return status


def _publish_at_edges(core_port: int, vins: dict[int, list[str]], seqs: tuple[int, ...]) -> None:
    """Each VIN's unit publishes ``seqs`` at its edge, each until acknowledged (reconnecting
    while its edge is still coming back)."""
    for i, edge_vins in vins.items():
        for vin in edge_vins:
            for seq in seqs:
                while True:
                    try:
                        unit, reason = Mqtt5Client.connect(
                            "127.0.0.1", core_port + i, vin, username=vin, password=PASSWORD
                        )
                        if reason == 0:
                            assert (
                                unit.publish(f"v1/vehicles/{vin}/telemetry", _sample(vin, seq)) == 0
                            )
                            unit.disconnect()
                            break
                        unit.close()
                    except OSError:
                        pass
                    time.sleep(0.1)


def test_a_commands_message_expiry_crosses_the_bridge(cluster: Cluster) -> None:
    """The command service sets a message expiry on every command (a unit that comes back
    late must not run it); the MQTT 5 bridge hands it on, counted down."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    vin = cluster.vins[2][0]
    unit = cluster.unit(vin)
    assert unit.subscribe(f"v1/vehicles/{vin}/commands") == 1
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cmd", protocol=mqtt.MQTTv5)
    sender.username_pw_set(SERVICE, SERVICE_SECRET)
    sender.connect("127.0.0.1", cluster.core.port)
    sender.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = 120
        sender.publish(
            routed_topic(f"v1/vehicles/{vin}/commands", vin, 2), b"c", qos=1, properties=props
        ).wait_for_publish(10)
    finally:
        sender.loop_stop()
        sender.disconnect()
    got = unit.receive_message(10)
    assert got is not None
    assert got[:2] == (f"v1/vehicles/{vin}/commands", b"c")
    expiry = got[2].get(0x02)
    assert isinstance(expiry, int)
    assert 0 < expiry <= 120


def test_a_stopped_edge_holds_up_no_provisioning_and_commands_reach_their_edge(
    tmp_path: Path,
) -> None:
    """Found from outside: with one edge stopped (SIGSTOP: a hung process), every
    provisioning call took 5 s and answered ``Broker-Applied: false``, for VINs of the
    healthy edge too, because the API waited for the lowest identity version of every
    broker. Now it waits for the VIN's own edge (and the core): a VIN of the healthy edge
    is answered as soon as its edge has the password (``true``, and the unit logs in), a
    VIN of the stopped edge at once with ``false``; ``/healthz`` and the log say which edge
    does not respond. Once the edge runs again it catches up."""
    import httpx

    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.database import default_url

    vins = _vins_by_edge(2, 2)
    with _up(tmp_path, 2) as (data, core_port, api_port):
        api = f"http://127.0.0.1:{api_port}"
        db = StateDatabase(default_url(data))
        try:
            account_id = AccountRepository(db).create_account("organization", "o", now=1).id
        finally:
            db.dispose()
        r = httpx.post(
            f"{api}/v1/auth/token",
            data={"grant_type": "password", "username": "admin@localhost",
                  "password": "edge-admin-password-1"},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        admin = {"Authorization": f"Bearer {r.json()['access_token']}"}

        def provision(vin: str) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            r = httpx.post(
                f"{api}/v1/vehicles",
                json={"vin": vin, "account_id": account_id},
                headers=admin,
                timeout=30,
            )
            assert r.status_code == 201, r.text
            return r, time.monotonic() - started

        # both edges healthy: the answer waits until the VIN's edge has the password
        r, _ = provision(vins[1][0])
        assert r.headers["Broker-Applied"] == "true"
        # a command through the API reaches the unit at its edge (routed on the core)
        _command_reaches(api, admin, data, core_port + 1, vins[1][0], r.json()["mqtt"]["password"])
        stopped = _supervisor(data)["edges"][1]["pid"]
        os.kill(stopped, signal.SIGSTOP)
        try:
            wait_until(
                lambda: _supervisor(data)["edges"][1].get("responding") is False,
                timeout=10,
                what="the supervisor to see edge 2 stopped",
            )
            r, took = provision(vins[1][1])
            password = r.json()["mqtt"]["password"]
            assert r.headers["Broker-Applied"] == "true", took
            assert took < 3.0  # was 5 s (the wait for every edge timed out)
            assert (
                login_code("127.0.0.1", core_port + 1, vins[1][1], password, client_id=vins[1][1])
                == 0
            )
            r, took = provision(vins[2][0])
            stuck_password = r.json()["mqtt"]["password"]
            assert r.headers["Broker-Applied"] == "false"
            assert took < 3.0  # at once, not after 5 s
            health = httpx.get(f"{api}/healthz").json()
            edge = health["components"]["edge_broker:2"]
            assert edge["status"] == "unavailable", health
            assert "not responding" in edge["detail"], health
            assert health["components"]["edge_broker:1"]["status"] == "ok", health
            wait_until(
                lambda: "edge broker 2 is not responding" in (tmp_path / "up.log").read_text(),
                timeout=10,
                what="the supervisor's warning",
            )
        finally:
            os.kill(stopped, signal.SIGCONT)
        wait_until(
            lambda: (
                login_code(
                    "127.0.0.1", core_port + 2, vins[2][0], stuck_password, client_id=vins[2][0]
                )
                == 0
            ),
            timeout=60,
            what="the edge that ran again to take its VIN's password",
        )
        assert _supervisor(data)["edges"][1]["responding"] is True


def _command_reaches(
    api: str, admin: dict[str, str], data: Path, port: int, vin: str, password: str
) -> None:
    """A unit at its edge (``port``) reports once, then gets a command sent through the API."""
    import httpx

    unit, code = Mqtt5Client.connect("127.0.0.1", port, vin, username=vin, password=password)
    try:
        assert code == 0
        assert unit.subscribe(f"v1/vehicles/{vin}/commands") == 1
        assert unit.publish(f"v1/vehicles/{vin}/telemetry", _sample(vin, 1)) == 0
        wait_until(lambda: vin in _stored(data), timeout=30, what="its first sample")
        r = httpx.post(f"{api}/v1/vehicles/{vin}/commands", json={"type": "locate"}, headers=admin)
        assert r.status_code in (201, 202), r.text
        got = unit.receive(20)
        assert got is not None
        assert got[0] == f"v1/vehicles/{vin}/commands"
        assert orjson.loads(got[1])["command_id"] == r.json()["id"]
    finally:
        unit.close()
