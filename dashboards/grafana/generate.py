"""The fleet dashboards as code: ``python dashboards/grafana/generate.py`` writes them.

Built with grafana-foundation-sdk (pinned in pyproject.toml to its Grafana 11.6 build), whose
typed builders produce the dashboard JSON Grafana's schema expects. The SDK has no builder
for InfluxDB queries, so :class:`InfluxQuery` and :class:`SqlQuery` below are the two small
query types it lacks (the JSON Grafana's InfluxDB and PostgreSQL data sources store for a
raw query). Every panel names its data source by a fixed uid, the one
``provisioning/datasources/telematics.yaml`` gives it, so a Grafana started with the
provisioning files in place shows the dashboards without a click.

Where each figure comes from:

* InfluxDB (InfluxQL): every sample, measurement ``telemetry``, tags ``vin`` and ``tenure``
  (docs/decisions/0015-influxdb-store.md), and the 1-minute rollup ``rollup.telemetry_1m``;
* PostgreSQL (the state database): alerts, trips and commands, which the gateway keeps
  there and never writes to InfluxDB;
* Prometheus (the API's ``/metrics``): the counters the gateway keeps with its local index
  (quarantine, seq gaps, spool, vehicles online).

``--check`` exits 1 when the committed JSON differs from what this script builds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import geomap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos, VariableRefresh

OUT = Path(__file__).resolve().parent / "fleet"

INFLUX = DataSourceRef(type_val="influxdb", uid="telematics-influxdb")
POSTGRES = DataSourceRef(type_val="grafana-postgresql-datasource", uid="telematics-postgresql")
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="telematics-prometheus")

# signal paths (the VSS catalog, schemas/catalog)
SPEED = "Vehicle.Speed"
LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
ODOMETER = "Vehicle.TraveledDistance"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
CHARGE_LIMIT = "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"
RANGE = "Vehicle.Powertrain.Range"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"

#: the vehicle filter of every per-vehicle InfluxQL query (``$vin`` is multi-valued;
#: Grafana renders it as a regex alternation for InfluxQL)
VIN_FILTER = '"vin" =~ /^$vin$/'
#: the one measurement of samples, and the rollup's (see gateway/store/influx.py)
RAW = '"telemetry"'
ROLLUP = '"rollup"."telemetry_1m"'


class InfluxQuery(cogvariants.Dataquery):
    """A raw InfluxQL query as Grafana's InfluxDB data source stores it."""

    def __init__(self, ref_id: str, query: str, *, fmt: str, alias: str | None) -> None:
        self.ref_id, self.query, self.fmt, self.alias = ref_id, query, fmt, alias

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "datasource": INFLUX.to_json(),
            "query": self.query,
            "rawQuery": True,
            "refId": self.ref_id,
            "resultFormat": self.fmt,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


class SqlQuery(cogvariants.Dataquery):
    """A raw SQL query of Grafana's PostgreSQL data source."""

    def __init__(self, ref_id: str, sql: str, *, fmt: str) -> None:
        self.ref_id, self.sql, self.fmt = ref_id, sql, fmt

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": POSTGRES.to_json(),
            "editorMode": "code",
            "format": self.fmt,
            "rawQuery": True,
            "rawSql": self.sql,
            "refId": self.ref_id,
        }


class _Built(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: cogvariants.Dataquery) -> None:
        self.query = query

    def build(self) -> cogvariants.Dataquery:
        return self.query


def influx(
    query: str, ref_id: str = "A", *, fmt: str = "time_series", alias: str | None = "$tag_vin"
) -> _Built:
    return _Built(InfluxQuery(ref_id, " ".join(query.split()), fmt=fmt, alias=alias))


def sql(query: str, ref_id: str = "A", *, fmt: str = "table") -> _Built:
    return _Built(SqlQuery(ref_id, " ".join(query.split()), fmt=fmt))


def promql(expr: str, legend: str, ref_id: str = "A") -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(PROMETHEUS)


def per_vehicle(select: str, *, source: str = RAW) -> str:
    """A per-vehicle series over the dashboard's range, one point per Grafana interval."""
    return (
        f"SELECT {select} FROM {source} WHERE {VIN_FILTER} AND $timeFilter "
        'GROUP BY time($__interval), "vin" fill(none)'
    )


def grid(x: int, y: int, w: int, h: int) -> GridPos:
    return GridPos(h=h, w=w, x=x, y=y)


def vin_variable() -> db.QueryVariable:
    return (
        db.QueryVariable("vin")
        .label("Vehicle (VIN)")
        .datasource(INFLUX)
        .query('SHOW TAG VALUES FROM "telemetry" WITH KEY = "vin"')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        # only VINs InfluxDB lists: a typed value would reach the InfluxQL regex and the
        # SQL of the trips table as it is
        .allow_custom_value(False)
        .include_all(True)
        .all_value(".*")
        .sort(1)  # type: ignore[arg-type]
    )


def series_panel(title: str, unit: str, targets: Sequence[Any], pos: GridPos) -> Any:
    panel = timeseries.Panel().title(title).unit(unit).grid_pos(pos).targets(list(targets))
    return panel.datasource(_datasource_of(targets))


def _datasource_of(targets: Sequence[Any]) -> DataSourceRef:
    query = targets[0].build()
    if isinstance(query, InfluxQuery):
        return INFLUX
    if isinstance(query, SqlQuery):
        return POSTGRES
    return PROMETHEUS


def stat_panel(title: str, target: Any, pos: GridPos, unit: str = "none") -> Any:
    return (
        stat.Panel()
        .title(title)
        .unit(unit)
        .grid_pos(pos)
        .with_target(target)
        .datasource(_datasource_of([target]))
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
    )


def table_panel(title: str, target: Any, pos: GridPos) -> Any:
    return (
        table.Panel()
        .title(title)
        .grid_pos(pos)
        .with_target(target)
        .datasource(_datasource_of([target]))
    )


def map_panel(title: str, target: Any, pos: GridPos, layer: str) -> Any:
    location = (
        cb.FrameGeometrySource()
        .mode(common.FrameGeometrySourceMode.COORDS)
        .latitude("latitude")
        .longitude("longitude")
    )
    markers = cb.MapLayerOptions().type("markers").name(layer).location(location)
    return (
        geomap.Panel()
        .title(title)
        .grid_pos(pos)
        .with_target(target)
        .datasource(INFLUX)
        .view(geomap.MapViewConfig().id("fit").zoom(12))
        .basemap(cb.MapLayerOptions().type("osm-standard").name("OpenStreetMap"))
        .layers([markers])
    )


def dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["telematics"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .editable()
    )


# --- the five dashboards --------------------------------------------------------------------


def fleet_overview() -> db.Dashboard:
    last_positions = influx(
        f'SELECT last("{LAT}") AS "latitude", last("{LON}") AS "longitude", '
        f'last("{SPEED}") AS "speed" FROM {RAW} WHERE $timeFilter GROUP BY "vin"',
        fmt="table",
        alias=None,
    )
    reporting = influx(
        'SELECT count("last") AS "vehicles" FROM (SELECT last("seq") FROM "telemetry" '
        'WHERE time > now() - 10m GROUP BY "vin")',
        alias=None,
    )
    open_alerts = "FROM fleet_alerts WHERE end_at IS NULL AND cleared_at IS NULL"
    return (
        dashboard(
            "telematics-fleet-overview",
            "Telematics: fleet overview",
            "Where the fleet is, how much of it reports, and its open alerts.",
        )
        .with_panel(stat_panel("Vehicles reporting (last 10 min)", reporting, grid(0, 0, 6, 4)))
        .with_panel(
            stat_panel(
                "Vehicles online (status)",
                promql("telematics_vehicles_online", "online"),
                grid(6, 0, 6, 4),
            )
        )
        .with_panel(
            stat_panel(
                "Vehicles known",
                promql("telematics_vehicles", "known"),
                grid(12, 0, 6, 4),
            )
        )
        .with_panel(
            stat_panel(
                "Open alerts", sql(f'SELECT count(*) AS "open" {open_alerts}'), grid(18, 0, 6, 4)
            )
        )
        .with_panel(map_panel("Last positions", last_positions, grid(0, 4, 16, 14), "vehicles"))
        .with_panel(
            table_panel(
                "Open alerts (newest first)",
                sql(
                    'SELECT to_timestamp(start_at / 1000.0) AS "since", vin, kind, severity, '
                    f"key {open_alerts} ORDER BY start_at DESC LIMIT 200"
                ),
                grid(16, 4, 8, 14),
            )
        )
    )


def vehicle_detail() -> db.Dashboard:
    trail = influx(
        f'SELECT "{LAT}" AS "latitude", "{LON}" AS "longitude", "{SPEED}" AS "speed" '
        f"FROM {RAW} WHERE {VIN_FILTER} AND $timeFilter ORDER BY time DESC LIMIT 5000",
        fmt="table",
        alias=None,
    )
    return (
        dashboard(
            "telematics-vehicle",
            "Telematics: vehicle detail",
            "One vehicle (or several): speed, charge or fuel, range and its trail.",
        )
        .with_variable(vin_variable())
        .with_panel(
            series_panel(
                "Speed", "velocitykmh", [influx(per_vehicle(f'mean("{SPEED}")'))], grid(0, 0, 12, 8)
            )
        )
        .with_panel(
            series_panel(
                "State of charge (electric) and fuel level (combustion)",
                "percent",
                [
                    influx(per_vehicle(f'mean("{SOC}")'), alias="$tag_vin charge"),
                    influx(per_vehicle(f'mean("{FUEL}")'), "B", alias="$tag_vin fuel"),
                ],
                grid(12, 0, 12, 8),
            )
        )
        .with_panel(map_panel("Position trail", trail, grid(0, 8, 16, 14), "trail"))
        .with_panel(
            series_panel(
                "Range", "lengthkm", [influx(per_vehicle(f'last("{RANGE}")'))], grid(16, 8, 8, 7)
            )
        )
        .with_panel(
            series_panel(
                "Odometer",
                "lengthkm",
                [influx(per_vehicle(f'last("{ODOMETER}")'))],
                grid(16, 15, 8, 7),
            )
        )
    )


def trips() -> db.Dashboard:
    distance = (
        f'SELECT spread("{ODOMETER}") AS "distance" FROM {RAW} WHERE {VIN_FILTER} '
        'AND $timeFilter GROUP BY time(1h), "vin" fill(none)'
    )
    top_speed = (
        f'SELECT max("{SPEED}") AS "top speed" FROM {RAW} WHERE {VIN_FILTER} '
        'AND $timeFilter GROUP BY time(1h), "vin" fill(none)'
    )
    in_range = "start_at >= $__from AND start_at < $__to"
    return (
        dashboard(
            "telematics-trips",
            "Telematics: trips",
            "Distance and driving time from the samples; the trips the fleet rules found "
            "(state database).",
        )
        .with_variable(vin_variable())
        .with_panel(
            series_panel("Distance per hour", "lengthkm", [influx(distance)], grid(0, 0, 12, 8))
        )
        .with_panel(
            series_panel(
                "Top speed per hour", "velocitykmh", [influx(top_speed)], grid(12, 0, 12, 8)
            )
        )
        .with_panel(
            table_panel(
                "Trips",
                sql(
                    'SELECT to_timestamp(start_at / 1000.0) AS "start", '
                    'to_timestamp(end_at / 1000.0) AS "end", vin, '
                    'round((distance_m / 1000.0)::numeric, 1) AS "km", '
                    'round(duration_ms / 60000.0, 1) AS "minutes", '
                    'max_speed_kmh AS "max km/h", energy_used_pct AS "charge used %", '
                    f'fuel_used_pct AS "fuel used %", ended_by FROM fleet_trips WHERE {in_range} '
                    "AND vin ~ '^${vin:regex}$' ORDER BY start_at DESC LIMIT 500"
                ),
                grid(0, 8, 24, 12),
            )
        )
    )


def energy() -> db.Dashboard:
    soc_rollup = per_vehicle(f'mean("mean_{SOC}")', source=ROLLUP)
    return (
        dashboard(
            "telematics-energy",
            "Telematics: energy and charging",
            "State of charge, charging, range and fuel; long ranges from the 1-minute rollup.",
        )
        .with_variable(vin_variable())
        .with_panel(
            series_panel(
                "State of charge",
                "percent",
                [influx(per_vehicle(f'mean("{SOC}")'))],
                grid(0, 0, 12, 8),
            )
        )
        .with_panel(
            statetimeline.Panel()
            .title("Charging")
            .grid_pos(grid(12, 0, 12, 8))
            .datasource(INFLUX)
            .with_target(influx(per_vehicle(f'last("{CHARGING}")')))
        )
        .with_panel(
            series_panel(
                "Range", "lengthkm", [influx(per_vehicle(f'last("{RANGE}")'))], grid(0, 8, 8, 8)
            )
        )
        .with_panel(
            series_panel(
                "Charge limit",
                "percent",
                [influx(per_vehicle(f'last("{CHARGE_LIMIT}")'))],
                grid(8, 8, 8, 8),
            )
        )
        .with_panel(
            series_panel(
                "Fuel level", "percent", [influx(per_vehicle(f'mean("{FUEL}")'))], grid(16, 8, 8, 8)
            )
        )
        .with_panel(
            series_panel(
                "State of charge, 1-minute means (rollup, for ranges of weeks)",
                "percent",
                [influx(soc_rollup)],
                grid(0, 16, 24, 8),
            )
        )
    )


#: command latency from the state database: request to the unit's final answer, per minute
COMMAND_LATENCY = (
    'SELECT to_timestamp(floor(created_at / 60000) * 60) AS "time", '
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY (finished_at - created_at) / 1000.0) "
    'AS "p50 request to result", '
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY (finished_at - created_at) / 1000.0) "
    'AS "p95 request to result" FROM commands WHERE finished_at IS NOT NULL '
    "AND created_at >= $__from AND created_at < $__to GROUP BY 1 ORDER BY 1"
)


def _health_from_prometheus() -> list[Any]:
    """The figures that live only in the counters the API serves on /metrics."""
    rate = "[$__rate_interval]"
    return [
        series_panel(
            "Stored per second (Prometheus)",
            "ops",
            [promql(f"rate(telematics_samples_stored_total{rate})", "samples")],
            grid(12, 0, 12, 8),
        ),
        series_panel(
            "Quarantined per second by reason (Prometheus)",
            "ops",
            [promql(f"sum by (reason) (rate(telematics_quarantined_total{rate}))", "{{reason}}")],
            grid(0, 8, 12, 8),
        ),
        series_panel(
            "InfluxDB spool (Prometheus)",
            "none",
            [
                promql("telematics_store_spool_samples", "spooled"),
                promql("telematics_store_spool_limit_samples", "limit", "B"),
            ],
            grid(12, 8, 12, 8),
        ),
        series_panel(
            "Missing seq numbers (Prometheus)",
            "none",
            [
                promql("telematics_seq_missing", "missing {{stream}}"),
                promql(f"rate(telematics_seq_gaps_total{rate})", "new gaps/s {{stream}}", "B"),
            ],
            grid(0, 16, 12, 8),
        ),
    ]


def gateway_health() -> db.Dashboard:
    board = dashboard(
        "telematics-gateway-health",
        "Telematics: gateway health",
        "Ingest into InfluxDB, quarantine, spool, seq gaps and command latency.",
    ).with_panel(
        series_panel(
            "Samples in InfluxDB per interval (by sample time)",
            "none",
            [
                influx(
                    'SELECT count("seq") AS "samples" FROM "telemetry" WHERE $timeFilter '
                    "GROUP BY time($__interval) fill(0)",
                    alias="samples",
                )
            ],
            grid(0, 0, 12, 8),
        )
    )
    for panel in _health_from_prometheus():
        board = board.with_panel(panel)
    return board.with_panel(
        series_panel(
            "Command latency, request to result (state database)",
            "s",
            [sql(COMMAND_LATENCY, fmt="time_series")],
            grid(12, 16, 12, 8),
        )
    )


DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "fleet-overview": fleet_overview,
    "vehicle-detail": vehicle_detail,
    "trips": trips,
    "energy-charging": energy,
    "gateway-health": gateway_health,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for name, build in DASHBOARDS.items():
        model = build().build()
        text = json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True)
        out[f"{name}.json"] = text + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
