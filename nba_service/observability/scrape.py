"""Reading a Prometheus histogram back from a ``/metrics`` endpoint.

What the demo and the benchmark report as "time inside the server": the
cumulative buckets of one histogram (all label sets added up) and quantiles
interpolated linearly inside a bucket, as PromQL's ``histogram_quantile``
does. Two scrapes subtracted give the histogram of what happened in between.

>>> buckets = {0.001: 50.0, 0.002: 100.0, float("inf"): 100.0}
>>> histogram_quantile(buckets, 0.5)
0.001
>>> round(histogram_quantile(buckets, 0.75), 6)
0.0015
>>> subtract({0.001: 5.0, float("inf"): 8.0}, {0.001: 2.0, float("inf"): 2.0})
{0.001: 3.0, inf: 6.0}
"""

from __future__ import annotations

import collections
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["histogram_buckets", "histogram_quantile", "scrape_histogram", "subtract"]


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """Cumulative count per upper bound (``le``) of histogram ``name``, summed over its label sets."""
    buckets: dict[float, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] += sample.value
    return dict(buckets)


def scrape_histogram(url: str, name: str, timeout: float = 5.0) -> dict[float, float] | None:
    """The buckets of ``name`` at ``url`` now; None when the endpoint cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    return histogram_buckets(text, name)


def subtract(after: Mapping[float, float], before: Mapping[float, float] | None) -> dict[float, float]:
    """The buckets of the observations made between two scrapes."""
    before = before or {}
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def histogram_quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """Quantile ``q`` (0-1) interpolated in the buckets; None without observations.

    A quantile that falls in the ``+Inf`` bucket is reported as the highest finite bound.
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    target, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= target:
            if bound == float("inf"):
                return lower
            share = (target - below) / max(buckets[bound] - below, 1e-12)
            return lower + (bound - lower) * share
        lower, below = bound, buckets[bound]
    return lower
