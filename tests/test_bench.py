"""The ingest benchmark runs end to end and its accounting is right (tiny sizes: this checks
the benchmark, it does not measure; run ``telematics bench ingest`` for figures)."""

from __future__ import annotations

import pytest

from gateway.bench.ingest import run_ingest_bench


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "provisioned"), [(1, False), (10, False), (1, True)])
def test_ingest_bench_counts_every_sample_once(batch: int, provisioned: bool) -> None:
    result = run_ingest_bench(
        vehicles=5,
        messages_per_vehicle=40,
        batch=batch,
        latency_seconds=1.0,
        progress=False,
        provisioned=provisioned,
    )
    assert result.samples == 5 * 40 * batch
    assert result.lost == 0
    assert result.duplicated == 0
    assert result.baseline_messages_per_s > 0
    assert result.ingest_samples_per_s > 0
    assert result.ratio == pytest.approx(
        result.ingest_samples_per_s / result.baseline_samples_per_s, rel=0.01
    )
    # every paced sample of the latency phase was seen committed
    assert result.latency_samples > 0
    assert 0 <= result.latency_p50_ms <= result.latency_p99_ms <= result.latency_max_ms
