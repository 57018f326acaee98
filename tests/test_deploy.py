"""The monitoring that ships in deploy/ reads the metrics the service exports, by their exact names."""

from __future__ import annotations

import pathlib
import re

from prometheus_client import CollectorRegistry

from nba_service.observability.metrics import Metrics

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"
_SERIES = {"counter": ("_total",), "gauge": ("",), "histogram": ("", "_bucket", "_sum", "_count")}


def exported() -> set[str]:
    """Every series name a server exports (a counter ``x``: ``x_total``; a histogram: its buckets, sum, count)."""
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names |= {family.name + suffix for suffix in _SERIES[family.type]}
        if family.type == "counter":
            names.add(family.name)  # as dashboards write it in rate(...) legends
    return names


def referenced() -> dict[str, set[str]]:
    """``nba_...`` names in the dashboards, alerts, recording rules, their tests and the deploy README."""
    found: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".yaml", ".yml", ".md"):
            for name in set(re.findall(r"\bnba_[a-z_]+\b", path.read_text())) - {"nba_service"}:
                found.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    return found


def test_every_metric_the_deploy_files_name_is_exported():
    names = referenced()
    assert names, "no metric names found in deploy/"
    unknown = {name: sorted(files) for name, files in names.items() if name not in exported()}
    assert not unknown, f"deploy/ names metrics no server exports: {unknown}"


def test_the_dashboard_and_the_alerts_cover_the_main_series():
    names = referenced()
    for name in ("nba_decision_duration_seconds_bucket", "nba_grpc_server_handled_total", "nba_redis_errors_total",
                 "nba_policy_version", "nba_model_version"):
        assert name in names, name
