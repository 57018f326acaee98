"""The Overview's live numbers: the running servers' ``/metrics``, scraped and added up over replicas.

The console reads what Prometheus reads (the servers' own counters and histograms), so the console and the
Grafana dashboard show the same numbers. Which servers run, and where their metrics are, comes from their
heartbeats in Redis (:mod:`nba_service.store.heartbeats`, as ``nba status`` lists them). Rates are the
difference between two scrapes: :class:`LiveNumbers` keeps the scrapes of the last minute.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
import urllib.request
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from nba_service.observability.scrape import histogram_quantile

__all__ = ["LiveNumbers", "Scrape", "parse_metrics", "scrape_servers"]

WINDOW_SECONDS = 60.0
_K = TypeVar("_K", bound=Hashable)


def _tally() -> collections.defaultdict[Any, float]:
    return collections.defaultdict(float)


@dataclasses.dataclass(slots=True)
class Scrape:
    """The counters of every server that answered, added up, at one time."""

    at: float
    servers: int = 0
    unreachable: list[str] = dataclasses.field(default_factory=list)
    decisions: dict[tuple[str, str], float] = dataclasses.field(default_factory=_tally)
    """(offer, channel) -> decisions; offer ``none`` is no action."""
    by_event: dict[str, float] = dataclasses.field(default_factory=_tally)
    filtered: dict[str, float] = dataclasses.field(default_factory=_tally)
    """Reason code -> candidate offers left out."""
    no_action: dict[str, float] = dataclasses.field(default_factory=_tally)
    """The decision's reason code -> decisions that ended with no action."""
    deliveries: dict[str, float] = dataclasses.field(default_factory=_tally)
    """Channel -> campaign deliveries handed to the channel's stream (every campaign added up)."""
    outcomes: dict[tuple[str, str, str], float] = dataclasses.field(default_factory=_tally)
    """(offer, channel, outcome) -> outcomes joined to a decision."""
    latency: dict[float, float] = dataclasses.field(default_factory=dict)
    """Cumulative buckets of the decision-time histogram."""

    def add(self, other: Scrape) -> None:
        self.servers += other.servers
        _add(self.decisions, other.decisions)
        _add(self.by_event, other.by_event)
        _add(self.filtered, other.filtered)
        _add(self.no_action, other.no_action)
        _add(self.deliveries, other.deliveries)
        _add(self.outcomes, other.outcomes)
        for bound, count in other.latency.items():
            self.latency[bound] = self.latency.get(bound, 0.0) + count


def _add(mine: dict[_K, float], theirs: Mapping[_K, float]) -> None:
    for key, value in theirs.items():
        mine[key] = mine.get(key, 0.0) + value


def parse_metrics(text: str, at: float = 0.0) -> Scrape:
    """The figures the console shows, from one server's Prometheus text."""
    scrape = Scrape(at, servers=1)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            if sample.name == "nba_decisions_total":
                scrape.decisions[(labels.get("offer", ""), labels.get("channel", ""))] += value
            elif sample.name == "nba_decision_duration_seconds_count":
                scrape.by_event[labels.get("event_type", "")] += value
            elif sample.name == "nba_decision_duration_seconds_bucket":
                bound = float(labels["le"])
                scrape.latency[bound] = scrape.latency.get(bound, 0.0) + value
            elif sample.name == "nba_offers_filtered_total":
                scrape.filtered[labels.get("reason", "")] += value
            elif sample.name == "nba_no_action_total":
                scrape.no_action[labels.get("reason", "")] += value
            elif sample.name == "nba_campaign_deliveries_total":
                scrape.deliveries[labels.get("channel", "")] += value
            elif sample.name == "nba_offer_outcomes_total":
                key = (labels.get("offer", ""), labels.get("channel", ""), labels.get("outcome", ""))
                scrape.outcomes[key] += value
    return scrape


def scrape_servers(beats: Iterable[Mapping[str, str]], timeout: float = 1.0) -> Scrape:
    """Every server's metrics (the ``metrics`` address of its heartbeat), added up."""
    total = Scrape(time.time())
    for beat in beats:
        address = beat.get("metrics", "")
        if not address:
            continue
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
                text = response.read().decode()
        except (OSError, ValueError):
            total.unreachable.append(address)
            continue
        total.add(parse_metrics(text, total.at))
    return total


def _delta(now: Mapping[_K, float], before: Mapping[_K, float]) -> dict[_K, float]:
    return {key: value - before.get(key, 0.0) for key, value in now.items() if value - before.get(key, 0.0) > 0}


class LiveNumbers:
    """The scrapes of the last minute, for rates (per minute) beside the totals since the servers started."""

    def __init__(self) -> None:
        self._scrapes: collections.deque[Scrape] = collections.deque()
        self._lock = threading.Lock()

    def add(self, scrape: Scrape) -> dict[str, Any]:
        """Keep ``scrape``; what the Overview shows, from it and the oldest scrape of the last minute."""
        with self._lock:
            while self._scrapes and scrape.at - self._scrapes[0].at > WINDOW_SECONDS:
                self._scrapes.popleft()
            oldest = self._scrapes[0] if self._scrapes else None
            self._scrapes.append(scrape)
        return summarise(scrape, oldest)


def summarise(now: Scrape, before: Scrape | None) -> dict[str, Any]:
    """Totals and, when an earlier scrape is given (and no server restarted in between), the decisions
    between the two scrapes: their count, the window they were counted over (up to a minute: the oldest
    scrape kept) and the rates per minute over that window (not extrapolated from a few seconds to a
    minute without saying so: ``window`` goes with every rate)."""
    decided = sum(now.decisions.values())
    no_action = sum(v for (offer, _), v in now.decisions.items() if offer == "none")
    per_minute: dict[str, Any] = {}
    if before is not None and now.at > before.at and decided >= sum(before.decisions.values()):
        window = now.at - before.at
        scale = 60.0 / window
        counted = decided - sum(before.decisions.values())
        per_minute = {
            "window": window,
            "count": counted,
            "decisions": counted * scale,
            "by_event": {k: v * scale for k, v in _delta(now.by_event, before.by_event).items()},
            "by_channel": {
                k: v * scale for k, v in _delta(_by_channel(now.decisions), _by_channel(before.decisions)).items()
            },
        }
    accepted: dict[str, float] = _tally()
    for (offer, _channel, outcome), n in now.outcomes.items():
        if outcome == "accepted":
            accepted[offer] += n
    actions: dict[str, float] = _tally()
    for (offer, _), n in now.decisions.items():
        if offer != "none":
            actions[offer] += n
    return {
        "servers": now.servers,
        "unreachable": now.unreachable,
        "decisions": decided,
        "no_action": no_action,
        "no_action_share": no_action / decided if decided else 0.0,
        "no_action_reasons": dict(sorted(now.no_action.items(), key=lambda item: (-item[1], item[0]))),
        "deliveries": dict(now.deliveries),
        "by_event": dict(now.by_event),
        "by_channel": _by_channel(now.decisions),
        "by_offer_channel": {k: v for k, v in now.decisions.items() if k[0] != "none"},
        "filtered": dict(sorted(now.filtered.items(), key=lambda item: -item[1])),
        "accepted": dict(accepted),
        "actions": dict(actions),
        "acceptance": {offer: accepted[offer] / actions[offer] for offer in actions if actions[offer]},
        "outcomes": dict(now.outcomes),
        "p50": histogram_quantile(now.latency, 0.5) if now.latency else None,
        "p99": histogram_quantile(now.latency, 0.99) if now.latency else None,
        "per_minute": per_minute,
    }


def _by_channel(decisions: Mapping[tuple[str, str], float]) -> dict[str, float]:
    out: dict[str, float] = _tally()
    for (offer, channel), n in decisions.items():
        out[channel if offer != "none" else "(no action)"] += n
    return dict(out)
