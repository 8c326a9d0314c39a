"""Counts made without locks by several threads reach prometheus_client exactly as its own
increments and observations would have."""

import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from reapi import metrics


def samples(registry: CollectorRegistry, child_label: str) -> dict[str, float]:
    return {
        f"{s.name}{s.labels.get('le', '')}": s.value
        for family in registry.collect()
        for s in family.samples
        if s.labels.get("way") == child_label and not s.name.endswith("_created")
    }


def test_tallied_counts_and_observations_fold_into_what_direct_ones_give() -> None:
    registry = CollectorRegistry()
    counter = Counter("t_calls_total", "calls", ["way"], registry=registry)
    histogram = Histogram("t_seconds", "seconds", ["way"], buckets=metrics.LATENCY_BUCKETS, registry=registry)
    values = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.25, 0.5, 7.0, 120.0] * 50
    for v in values:
        counter.labels("direct").inc()
        histogram.labels("direct").observe(v)

    tallied = metrics._Tallied(counter.labels("tallied"))
    child = histogram.labels("tallied")

    def lane(part: list[float]) -> None:
        for v in part:
            tallied.inc()
            metrics._observe(metrics._TALLY.shard(), child, v)

    threads = [threading.Thread(target=lane, args=(values[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    metrics.fold()  # a fold while the threads count: what it misses, the next one hands over
    for t in threads:
        t.join()
    metrics.fold()
    metrics.fold()  # nothing new: nothing added twice

    direct, folded = samples(registry, "direct"), samples(registry, "tallied")
    # The sum adds the same values in another order: equal but for the last bits.
    assert folded.pop("t_seconds_sum") == pytest.approx(direct.pop("t_seconds_sum"))
    assert folded == direct
    assert folded["t_calls_total"] == len(values)
    assert folded["t_seconds_bucket+Inf"] == len(values)
