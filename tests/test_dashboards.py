"""The Grafana dashboard and the Prometheus config in ``dashboards/`` against the real API.

The dashboard is checked against what ``/metrics`` actually serves, not against a list kept
by hand: the test builds the API over an empty store, scrapes it, and requires every metric
name in every PromQL expression to be one the API exports (and every exported metric to be
shown somewhere). Renaming a metric in ``gateway.metrics`` without updating the dashboard
fails here instead of leaving a silently empty panel.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api import ApiSettings
from gateway.store import open_store
from tests.support.api import admin_client

with warnings.catch_warnings():
    # Starlette >= 1.x warns (an error under our filterwarnings) when its test client is
    # first imported with plain ``httpx``; see tests/test_api.py.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
DASHBOARD = DASHBOARDS / "grafana" / "telematics-ingest.json"
PROMETHEUS_YML = DASHBOARDS / "prometheus" / "prometheus.yml"

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
