"""The Grafana dashboard and the Prometheus config in ``dashboards/`` against the real API.

The dashboard is checked against what ``/metrics`` actually serves, not against a list kept
by hand: the test builds the API over an empty store, scrapes it, and requires every metric
name in every PromQL expression to be one the API exports (and every exported metric to be
shown somewhere). Renaming a metric in ``gateway.metrics`` without updating the dashboard
fails here instead of leaving a silently empty panel.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sqlite3
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api import ApiSettings
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.statedb import StateDatabase
from gateway.store import open_store
from gateway.store.influx import spool_depth
from tests.support.api import admin_client
from tests.support.gateway_process import GatewayProcess
from tests.support.influxdb import InfluxServer, run_continuous_query_now, start_influxd
from tests.support.waiting import wait_until

with warnings.catch_warnings():
    # Starlette >= 1.x warns (an error under our filterwarnings) when its test client is
    # first imported with plain ``httpx``; see tests/test_api.py.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
DASHBOARD = DASHBOARDS / "grafana" / "telematics-ingest.json"
PROMETHEUS_YML = DASHBOARDS / "prometheus" / "prometheus.yml"
ALERTS_YML = DASHBOARDS / "prometheus" / "alerts.yml"

DS_VARIABLE = "DS_PROMETHEUS"
DS_REF = "${" + DS_VARIABLE + "}"

#: a metric name of ours inside PromQL (not the tail of a longer identifier)
_METRIC = re.compile(r"(?<![A-Za-z0-9_:])telematics_[A-Za-z0-9_:]*")
_HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def _metric_names(expr: str) -> set[str]:
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _METRIC.findall(expr)}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture
def exported(tmp_path: Path) -> set[str]:
    """Metric names as the real API writes them (counters with ``_total``, histograms by
    their base name), scraped from a fresh app over an empty store."""
    db_path = tmp_path / "t.db"
    open_store(db_path).close()
    with admin_client(ApiSettings(db_path)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        # the parser drops a counter's ``_total``; Prometheus stores the name with it
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
        names.update(sample.name for sample in family.samples)
    return names


# --- dashboard ------------------------------------------------------------------------------


def test_dashboard_is_importable_anywhere(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"]
    assert dashboard["id"] is None
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs[DS_VARIABLE]["type"] == "datasource"
    assert inputs[DS_VARIABLE]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables[DS_VARIABLE]["type"] == "datasource"
    assert variables[DS_VARIABLE]["query"] == "prometheus"


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    panels = list(_panels(dashboard))
    assert panels
    for panel in panels:
        title = panel.get("title")
        assert panel.get("datasource") == {"type": "prometheus", "uid": DS_REF}, title
        for target in panel.get("targets", []):
            assert target.get("datasource") == {"type": "prometheus", "uid": DS_REF}, title


def test_panels_have_unique_ids_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["w"] > 0
        assert grid["h"] > 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_units(dashboard: dict[str, Any]) -> None:
    """Rates are in ops/s, latency in seconds."""
    for panel in _panels(dashboard):
        exprs = [t["expr"] for t in panel.get("targets", [])]
        if not exprs:
            continue
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if any("histogram_quantile" in e for e in exprs):
            assert unit == "s", panel["title"]
        elif all("rate(" in e for e in exprs):
            assert unit == "ops", panel["title"]


def test_commit_latency_quantiles_come_from_the_histogram_buckets(
    dashboard: dict[str, Any],
) -> None:
    quantiles = [e for e in _exprs(dashboard) if "histogram_quantile" in e]
    for q in ("0.5", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({q},")
            and "le" in e
            and "rate(telematics_batch_commit_seconds_bucket[" in e
            for e in quantiles
        ), q


def test_every_metric_in_a_query_is_exported_by_the_api(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    used = {name for expr in _exprs(dashboard) for name in _metric_names(expr)}
    assert used, "no telematics_ metric found in any expr"
    assert used <= exported, f"not served by /metrics: {sorted(used - exported)}"


def test_every_exported_metric_is_on_the_dashboard(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    used = {name for expr in _exprs(dashboard) for name in _metric_names(expr)}
    families = {name for name in exported if not _HISTOGRAM_SUFFIX.search(name)}
    assert families <= used, f"exported but never shown: {sorted(families - used)}"


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(telematics_batch_commit_seconds_bucket[5m])))"
        " / sum(rate(telematics_batch_commit_seconds_count[5m]))"
        " + sum by (channel) (rate(telematics_messages_received_total[$__rate_interval]))"
        " + xtelematics_not_ours"
    )
    assert _metric_names(expr) == {
        "telematics_batch_commit_seconds",
        "telematics_messages_received_total",
    }


# --- prometheus.yml -------------------------------------------------------------------------


def _scrape_facts_without_yaml(text: str) -> dict[str, str]:
    """``key: value`` pairs of the config (comments dropped): enough to check one job."""
    facts: dict[str, str] = {}
    for line in text.splitlines():
        content = line.split("#", 1)[0].rstrip()
        assert "\t" not in line, "tabs are not allowed in YAML indentation"
        match = re.fullmatch(r"\s*(?:-\s+)?([A-Za-z_]+):\s*(.*)", content)
        if match and match[2]:
            facts.setdefault(match[1], match[2])
    return facts


def test_the_alert_rules_watch_the_spool_with_metrics_the_api_serves(
    exported: set[str],
) -> None:
    """Issue 15: reaching the spool's bound raises an alert. prometheus.yml loads the
    rules; every expression names only metrics ``/metrics`` serves."""
    yaml = importlib.import_module("yaml")  # PyYAML: schemathesis (a test extra) needs it
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    assert config["rule_files"] == [ALERTS_YML.name]
    (group,) = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))["groups"]
    rules = {rule["alert"]: rule for rule in group["rules"]}
    assert set(rules) == {"TelematicsSpoolFilling", "TelematicsSpoolFull"}
    assert {rules[name]["labels"]["severity"] for name in rules} == {"warning", "critical"}
    for rule in rules.values():
        used = _metric_names(rule["expr"])
        assert used == {"telematics_store_spool_samples", "telematics_store_spool_limit_samples"}
        assert used <= exported, f"not served by /metrics: {sorted(used - exported)}"


def test_prometheus_config_scrapes_the_api_every_5_seconds() -> None:
    text = PROMETHEUS_YML.read_text(encoding="utf-8")
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        assert "\nscrape_configs:\n" in text
        # after scrape_configs: the job's settings (before it: the global ones)
        job = _scrape_facts_without_yaml(text.split("\nscrape_configs:\n", 1)[1])
        assert job["job_name"]
        assert job["scrape_interval"] == "5s"
        assert job["metrics_path"] == "/metrics"
        assert job["credentials_file"] == "telematics-api-key"
        assert job["targets"] == '["127.0.0.1:8080"]'
        return
    config = yaml.safe_load(text)
    jobs = config["scrape_configs"]
    assert len(jobs) == 1
    (job,) = jobs
    assert job["scrape_interval"] == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    # /metrics needs an administrator's API key, read from a file (never in the config)
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "telematics-api-key"}
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == ["127.0.0.1:8080"]
    timeout = job.get("scrape_timeout", config.get("global", {}).get("scrape_timeout"))
    if timeout is not None:
        assert int(timeout.rstrip("s")) <= 5


# --- the fleet dashboards (dashboards/grafana/generate.py) ---------------------------------

FLEET = DASHBOARDS / "grafana" / "fleet"
GENERATOR = DASHBOARDS / "grafana" / "generate.py"
PROVISIONING = DASHBOARDS / "grafana" / "provisioning"
#: what each data source's uid is in provisioning/datasources/telematics.yaml
UIDS = {
    "influxdb": "telematics-influxdb",
    "grafana-postgresql-datasource": "telematics-postgresql",
    "prometheus": "telematics-prometheus",
}
#: the dashboard's time range and interval as Grafana would render them for InfluxQL
TIME_FILTER = "time >= now() - 1h"
INTERVAL = "10s"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_dashboards", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fleet_dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(FLEET.glob("*.json"))
    }


def _targets(kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard file, panel title, target) of every query on ``kind``'s data source."""
    return [
        (name, panel["title"], target)
        for name, board in _fleet_dashboards().items()
        for panel in _panels(board)
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == kind
    ]


def test_the_committed_json_is_what_the_generator_builds() -> None:
    rendered = _generator().render()
    assert set(rendered) == {p.name for p in FLEET.glob("*.json")}
    for name, text in rendered.items():
        assert (FLEET / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run .venv/bin/python {GENERATOR.relative_to(DASHBOARDS.parent)}"
        )


def test_the_five_dashboards_and_their_provisioning() -> None:
    boards = _fleet_dashboards()
    assert {b["uid"] for b in boards.values()} == {
        "telematics-fleet-overview",
        "telematics-vehicle",
        "telematics-trips",
        "telematics-energy",
        "telematics-gateway-health",
    }
    types = {p["type"] for b in boards.values() for p in _panels(b)}
    assert {"geomap", "stat", "timeseries", "table", "state-timeline"} <= types
    sources = (PROVISIONING / "datasources" / "telematics.yaml").read_text(encoding="utf-8")
    for kind, uid in UIDS.items():
        assert f"uid: {uid}\n    type: {kind}\n" in sources
    for name, board in boards.items():
        for panel in _panels(board):
            used = [panel["datasource"], *(t["datasource"] for t in panel.get("targets", []))]
            for ref in used:
                assert UIDS[ref["type"]] == ref["uid"], (name, panel["title"])
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, (name, panel["title"])
    for board in boards.values():  # the VIN picker takes only VINs InfluxDB lists
        for variable in board.get("templating", {}).get("list", []):
            assert variable["allowCustomValue"] is False, variable["name"]
    provider = (PROVISIONING / "dashboards" / "telematics.yaml").read_text(encoding="utf-8")
    assert "type: file" in provider
    assert "path: ${TELEMATICS_DASHBOARDS}" in provider


def test_prometheus_panels_use_metrics_the_api_serves(exported: set[str]) -> None:
    used = {
        name for _, _, target in _targets("prometheus") for name in _metric_names(target["expr"])
    }
    assert used
    assert used <= exported, f"not served by /metrics: {sorted(used - exported)}"


def _influxql(query: str, vins: list[str]) -> str:
    """A panel's InfluxQL as Grafana sends it: every VIN selected (multi-value: a regex
    alternation), the last hour, a 10 s interval."""
    rendered = (
        query.replace("$timeFilter", TIME_FILTER)
        .replace("$__interval", INTERVAL)
        .replace("$vin", "(" + "|".join(vins) + ")")
    )
    assert "$" not in rendered.replace("$/", ""), rendered
    return rendered


def _influx_rows(server: InfluxServer, database: str, query: str) -> list[list[Any]]:
    answer = httpx.post(
        f"{server.base_url}/query", params={"db": database}, data={"q": query}, timeout=30
    ).json()
    [result] = answer["results"]
    assert "error" not in result, (query, result["error"])
    return [row for series in result.get("series", []) for row in series["values"]]


def _all_shipped(data_dir: Path) -> bool:
    """The gateway's spool is empty: every committed sample is in InfluxDB."""
    indexes = list(data_dir.glob("influx-index*.db"))
    if not indexes:
        return False
    with closing(sqlite3.connect(f"file:{indexes[0]}?mode=ro", uri=True)) as db:
        return bool(
            spool_depth(db) == 0 and db.execute("SELECT count(*) FROM samples").fetchone()[0]
        )


@pytest.fixture(scope="module")
def fleet_in_influxdb(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[InfluxServer, str, list[str]]]:
    """Six simulated vehicles (electric and combustion) through Mosquitto and a real
    ``telematics gateway --store influxdb://`` into a real influxd: (server, database, the
    VINs), with the rollup's continuous query run once by hand."""
    root = tmp_path_factory.mktemp("fleet")
    broker = MosquittoProcess(
        BrokerConfig(port=free_port(), data_dir=root / "mq", extra_lines=("log_type subscribe",))
    )
    broker.start()
    server = start_influxd(root / "influxd")
    url = server.store_url("fleet")
    gateway = GatewayProcess(broker, root / "data", "gateway-dash", ("--store", url))
    try:
        gateway.start()
        sim = [sys.executable, "-m", "device_sim", "--mqtt-url", broker.url]
        options = ["--vehicles", "6", "--duration", "5", "--no-progress", "--seed", "7"]
        subprocess.run([*sim, *options], check=True, timeout=120, capture_output=True)
        wait_until(lambda: _all_shipped(gateway.data_dir), what="the spool drained")
        tags = _influx_rows(server, "fleet", 'SHOW TAG VALUES FROM "telemetry" WITH KEY = "vin"')
        run_continuous_query_now(server.base_url, "fleet", "telemetry_1m", since="1h")
        yield server, "fleet", [value for _, value in tags]
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()
        server.stop()
        broker.stop()


def test_every_influxql_query_returns_rows_from_the_simulated_fleet(
    fleet_in_influxdb: tuple[InfluxServer, str, list[str]],
) -> None:
    server, database, vins = fleet_in_influxdb
    assert len(vins) == 6
    targets = _targets("influxdb")
    assert len(targets) >= 15
    empty = [
        (name, title, target["query"])
        for name, title, target in targets
        if not _influx_rows(server, database, _influxql(target["query"], vins))
    ]
    assert not empty, f"no rows: {empty}"
    # the VIN variable's own query lists the vehicles
    variables = {
        v["query"]
        for b in _fleet_dashboards().values()
        for v in b.get("templating", {}).get("list", [])
    }
    for query in variables:
        assert len(_influx_rows(server, database, query)) == 6


def test_every_sql_query_runs_on_the_state_database() -> None:
    """Alerts, trips and commands live in the state database: every SQL panel runs on a
    PostgreSQL database at the newest schema (filled or not, no SQL error)."""
    name = f"telematics_test_{uuid.uuid4().hex}"
    admin_dsn = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        state = StateDatabase(url)
        state.upgrade()
        state.dispose()
        targets = _targets("grafana-postgresql-datasource")
        assert len(targets) >= 4
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={name}") as db:
            for _, title, target in targets:
                query = (
                    target["rawSql"]
                    .replace("$__from", "0")
                    .replace("$__to", "9999999999999")
                    .replace("${vin:regex}", ".*")
                )
                assert "$" not in query.replace("^.*$", ""), (title, query)
                db.execute(query).fetchall()
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
