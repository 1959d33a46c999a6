"""``/metrics``: the ingest counters persisted in the store, in Prometheus text format.

Why a custom collector rather than ``prometheus_client.Counter`` objects: the counts belong
to the ingest processes, which write them into the store in the same transaction as the data
they count (see :mod:`gateway.metrics`). The API only reads that table at scrape time, so the
numbers survive restarts, add up over every gateway writing to the database, and agree with
what is stored. Each scrape renders one fresh, dedicated ``CollectorRegistry`` (never the
process-global one, which would mix in the API's own Python process metrics and would hold a
collector bound to one request's connection).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from gateway import metrics
from gateway.store import TelemetryReader
from schemas import Channel, Reason

__all__ = ["StoreCollector", "render_metrics"]

#: label of messages on a topic that is not one of the contract's (see gateway.ingest)
_INVALID_CHANNEL = "invalid"


class StoreCollector(Collector):
    """Reads ``reader.counters()`` and ``reader.vehicle_counts()`` once per collection.

    Series that have not been counted yet are exported as 0 (every channel, every quarantine
    reason, every histogram bucket), so dashboards and ``rate()`` see them from the start
    instead of a gap until the first occurrence.
    """

    def __init__(self, reader: TelemetryReader, *, heard_since: int | None = None) -> None:
        self._reader = reader
        #: online vehicles count only if heard from since (see gateway.core.presence)
        self._heard_since = heard_since

    def collect(self) -> Iterator[Metric]:
        counts = _Counts(self._reader.counters())
        vehicles, online = self._reader.vehicle_counts(heard_since=self._heard_since)
        yield from _ingest(counts)
        yield from _sequences(counts)
        yield _commit_latency(counts)
        yield GaugeMetricFamily(
            metrics.SPOOL_SAMPLES,
            "Samples committed to local disk and not yet written to InfluxDB (the InfluxDB "
            "store's spool; 0 for SQLite).",
            value=counts.total(metrics.SPOOL_SAMPLES),
        )
        yield GaugeMetricFamily(
            metrics.SPOOL_LIMIT,
            "Spool size at which the gateway stops acknowledging (0: no spool).",
            value=counts.total(metrics.SPOOL_LIMIT),
        )
        yield GaugeMetricFamily(
            "telematics_vehicles", "Vehicles known to the gateway.", value=vehicles
        )
        yield GaugeMetricFamily(
            "telematics_vehicles_online",
            "Vehicles whose last status message says online and that were heard from "
            "within the silence limit.",
            value=online,
        )


class _Counts:
    """The store's counters, ``(name, label) -> value``, by name."""

    def __init__(self, counts: Mapping[tuple[str, str], float]) -> None:
        self._counts = counts

    def by_label(self, name: str) -> dict[str, float]:
        return {label: value for (n, label), value in self._counts.items() if n == name}

    def total(self, name: str) -> float:
        return self._counts.get((name, ""), 0.0)


def _ingest(counts: _Counts) -> Iterator[Metric]:
    """Messages per channel and per gateway, samples and events stored, quarantined."""
    received = CounterMetricFamily(
        metrics.MESSAGES_RECEIVED,
        "MQTT messages received by the gateway, by channel (invalid: unknown topic).",
        labels=["channel"],
    )
    per_channel = dict.fromkeys([*(c.value for c in Channel), _INVALID_CHANNEL], 0.0)
    per_channel.update(counts.by_label(metrics.MESSAGES_RECEIVED))
    for channel, value in sorted(per_channel.items()):
        received.add_metric([channel], value)
    yield received

    per_gateway = CounterMetricFamily(
        metrics.GATEWAY_MESSAGES,
        "MQTT messages received, by gateway process (its MQTT client id).",
        labels=["gateway"],
    )
    for gateway, value in sorted(counts.by_label(metrics.GATEWAY_MESSAGES).items()):
        per_gateway.add_metric([gateway], value)
    yield per_gateway

    for name, doc in (
        (metrics.SAMPLES_STORED, "Telemetry samples stored."),
        (metrics.SAMPLES_DUPLICATE, "Telemetry samples already stored (redeliveries)."),
        (metrics.EVENTS_STORED, "Vehicle events stored."),
        (metrics.EVENTS_DUPLICATE, "Vehicle events already stored (redeliveries)."),
    ):
        yield CounterMetricFamily(name, doc, value=counts.total(name))

    quarantined = CounterMetricFamily(
        metrics.QUARANTINED,
        "Messages, samples or signals refused and kept in the quarantine, by reason.",
        labels=["reason"],
    )
    per_reason = dict.fromkeys((r.value for r in Reason), 0.0)
    per_reason.update(counts.by_label(metrics.QUARANTINED))
    for reason, value in sorted(per_reason.items()):
        quarantined.add_metric([reason], value)
    yield quarantined


def _sequences(counts: _Counts) -> Iterator[Metric]:
    """Seq numbers found missing, and missing now, per stream."""
    streams = (metrics.STREAM_TELEMETRY, metrics.STREAM_EVENTS)
    gaps = CounterMetricFamily(
        metrics.SEQ_GAPS,
        "Seq numbers found missing (a later one arrived first), by stream: samples or "
        "events lost or late; a late upload that brings them does not lower it.",
        labels=["stream"],
    )
    missing = GaugeMetricFamily(
        metrics.SEQ_MISSING,
        "Seq numbers missing now over every vehicle, by stream (found missing minus "
        "those that arrived late).",
        labels=["stream"],
    )
    for stream in streams:
        gaps.add_metric([stream], counts.by_label(metrics.SEQ_GAPS).get(stream, 0.0))
        missing.add_metric([stream], counts.by_label(metrics.SEQ_MISSING).get(stream, 0.0))
    yield gaps
    yield missing


def _commit_latency(counts: _Counts) -> Metric:
    """The ingest commit histogram. The ingest side persists buckets cumulatively (a commit
    increments every bucket whose bound is >= its latency), which is exactly Prometheus'
    "le" semantics."""
    commit = counts.by_label(metrics.COMMIT_SECONDS)
    count = commit.get("count", 0.0)
    buckets = [
        (repr(bound), commit.get(repr(bound), 0.0)) for bound in metrics.COMMIT_SECONDS_BUCKETS
    ]
    return HistogramMetricFamily(
        metrics.COMMIT_SECONDS,
        "Time to commit one ingest batch to the store (one transaction, one fsync).",
        buckets=[*buckets, ("+Inf", count)],
        sum_value=commit.get("sum", 0.0),
    )


def render_metrics(
    reader: TelemetryReader, accept: str | None, *, heard_since: int | None = None
) -> tuple[bytes, str]:
    """One scrape: (body, content type). The format follows the scraper's ``Accept`` header
    the way prometheus_client's own exporters do: classic text format 0.0.4 by default,
    OpenMetrics or text 1.0.0 when asked for."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(reader, heard_since=heard_since))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
