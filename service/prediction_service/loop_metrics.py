"""Counters and histograms for the per-request metrics, updated without a lock.

prometheus-client guards every value with a lock, and its ``inc()``/``observe()`` go through
several Python layers: three such updates per request (request count, duration, cache hit) were
≈ 4% of a cached prediction's instructions. These metrics are only ever updated from the event
loop's thread — and read from it too, when ``/metrics`` is scraped — so a child here is a plain
number, and the exposition is produced by a custom collector in exactly the format
prometheus-client's own Counter and Histogram produce (``_total``/``_created``;
``_bucket``/``_count``/``_sum``/``_created``).

Anything that may be updated from another thread (the inference histogram: large batches run in a
worker thread) stays a prometheus-client metric.
"""
from __future__ import annotations

import time
from bisect import bisect_left

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # bisect_left: the first bucket whose upper bound is >= value ("le" semantics).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _LoopMetric:
    """Children by label values (created on first use, like prometheus-client's ``labels()``)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], registry=REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str, **by_name: str):
        if by_name:
            values = tuple(by_name[name] for name in self.labelnames)
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames) or len(by_name) not in (0, len(key)):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values or by_name}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def describe(self):
        return [self._family()]


class LoopCounter(_LoopMetric):
    """A counter for the event loop's thread; ``name`` ends in ``_total``."""

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self):
        family = self._family()
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created)
        yield family


class LoopHistogram(_LoopMetric):
    """A histogram for the event loop's thread, with fixed bucket upper bounds (+Inf added)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...],
                 registry=REGISTRY) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self):
        family = self._family()
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._le, child.counts):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(values, buckets, child.sum)
            family.add_sample(self.name + "_created", dict(zip(self.labelnames, values)), child.created)
        yield family
