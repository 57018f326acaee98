"""Prometheus metrics of campaign runs: the figures of ``nba campaign status``, as counters.

Defined against a registry passed in, with the conventions of :mod:`nba_service.observability.metrics`
(``nba_`` prefix, ``_total`` on counters, labels from the policy set only). ``nba campaign run
--metrics-port N`` serves them while the run works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from nba_service.campaigns.run import RunReport

__all__ = ["CampaignMetrics"]


class CampaignMetrics:
    """Counters of the runs in this process, fed after each batch with what it added."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.customers = Counter(
            "nba_campaign_customers",
            "Customers of campaign runs, by stage: scanned, in_segment, decided (a decision recorded).",
            ["campaign", "stage"],
            registry=registry,
        )
        self.deliveries = Counter(
            "nba_campaign_deliveries",
            "Deliveries handed to a channel's stream by campaign runs (dry runs not counted).",
            ["campaign", "channel"],
            registry=registry,
        )
        self.suppressed = Counter(
            "nba_campaign_suppressed",
            "Customers of a campaign's segment not delivered to, by reason (already_reached, or the decision's "
            "no-action code such as frequency_cap or nothing_allowed).",
            ["campaign", "reason"],
            registry=registry,
        )
        self.running = Gauge(
            "nba_campaign_running",
            "1 while a run of the campaign works in this process.",
            ["campaign"],
            registry=registry,
        )
        self._seen: dict[str, dict[str, int]] = {}

    def start(self, report: RunReport) -> None:
        """A run starts or resumes: its figures so far are not counted again."""
        self._seen[report.run_id] = _figures(report)
        self.running.labels(report.campaign).set(0 if report.dry_run else 1)

    def observe(self, report: RunReport) -> None:
        """Count what the run's figures added since they were last observed (dry runs are not counted)."""
        if report.dry_run:
            return
        seen = self._seen.setdefault(report.run_id, {})
        for name, value in _figures(report).items():
            added = value - seen.get(name, 0)
            if added <= 0:
                continue
            kind, _, label = name.partition(":")
            if kind == "stage":
                self.customers.labels(report.campaign, label).inc(added)
            elif kind == "channel":
                self.deliveries.labels(report.campaign, label).inc(added)
            else:
                self.suppressed.labels(report.campaign, label).inc(added)
            seen[name] = value

    def stop(self, report: RunReport) -> None:
        self.observe(report)
        self.running.labels(report.campaign).set(0)


def _figures(report: RunReport) -> dict[str, int]:
    return {
        "stage:scanned": report.scanned,
        "stage:in_segment": report.in_segment,
        "stage:decided": report.decided,
        **{f"channel:{c}": n for c, n in report.delivered.items()},
        **{f"reason:{r}": n for r, n in report.suppressed.items()},
    }
