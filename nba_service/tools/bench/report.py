"""The tables ``nba bench`` prints, from the results of :mod:`nba_service.tools.bench.run`."""

from __future__ import annotations

from typing import Any

from nba_service.tools.bench.client import DECISION_HISTOGRAM

__all__ = ["format_report", "format_sweep"]


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def format_report(result: dict[str, Any]) -> str:
    echo, floor, decide = result["echo"], result["echo_redis"], result["decide"]
    ratios, config = result["ratios"], result["config"]
    m = result["machine"]
    policy = (
        f"{config['policies']}/ ({config['policy_offers']} offers, {config['policy_channels']} channels), scenario mix"
        if config["offers"] is None
        else f"{config['policy_offers']} generated offers, all eligible for each ATM decline"
    )
    lines = [
        f"nba bench: {config['customers']:,} customers; {policy}"
        + (f"; nba serve --workers {config['workers']}" if config.get("workers", 1) > 1 else ""),
        f"{config['sequential']:,} sequential calls; throughput ladder "
        f"{', '.join(map(str, config['concurrency']))} calls in flight x {config['seconds']:g} s over "
        f"{config.get('connections', 1)} connections per server",
        f"machine: {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), Python {m['python']}, grpcio {m['grpc']}; "
        f"load average {result['load_average']['before'][0]:.2f} before, "
        f"{result['load_average']['after'][0]:.2f} after",
        "",
        f"{'':34}{'Echo':>10}{'Echo+Redis':>12}{'Decide':>10}{'Decide/Echo':>13}",
        f"{'sequential p50 (µs)':34}{_n(echo['p50_us']):>10}{_n(floor['p50_us']):>12}{_n(decide['p50_us']):>10}"
        f"{_n(ratios['p50'], 2):>13}",
        f"{'sequential p99 (µs)':34}{_n(echo['p99_us']):>10}{_n(floor['p99_us']):>12}{_n(decide['p99_us']):>10}"
        f"{_n(ratios['p99'], 2):>13}",
        f"{'max throughput (calls/s)':34}{_n(echo['max_rps']):>10}{_n(floor['max_rps']):>12}{_n(decide['max_rps']):>10}"
        f"{_n(ratios['throughput'], 2):>13}",
        f"{'  p99 at that load (µs)':34}{_n(echo['p99_at_max_us']):>10}{_n(floor['p99_at_max_us']):>12}"
        f"{_n(decide['p99_at_max_us']):>10}",
        f"{'  calls in flight':34}{echo['concurrency_at_max']:>10}{floor['concurrency_at_max']:>12}"
        f"{decide['concurrency_at_max']:>10}",
        f"{'server CPU per call (µs)':34}{_n(echo['cpu_us_per_call']):>10}{_n(floor['cpu_us_per_call']):>12}"
        f"{_n(decide['cpu_us_per_call']):>10}{_n(ratios['cpu_per_call'], 2):>13}",
        f"{'Redis CPU per call (µs)':34}{'':>10}{_n(floor['redis_cpu_us_per_call']):>12}"
        f"{_n(decide['redis_cpu_us_per_decision']):>10}",
        "",
        "Echo+Redis: the echo after the two script calls a decision makes, with scripts that do nothing "
        f"(p50 {_n(ratios['echo_redis_p50'], 2)} x, throughput {_n(ratios['echo_redis_throughput'], 2)} x the echo's)",
        f"inside the server ({DECISION_HISTOGRAM}): sequential p50 {_n(decide['server_p50_us'])} µs, "
        f"p99 {_n(decide['server_p99_us'])} µs; at max throughput p50 {_n(decide['server_p50_at_max_us'])} µs, "
        f"p99 {_n(decide['server_p99_at_max_us'])} µs",
        f"response size: Decide {decide['response_bytes']} bytes, Echo {echo['response_bytes']} bytes; "
        f"Redis {result['redis_bytes_per_customer']:,.0f} bytes per customer "
        f"(used_memory {result['redis_used_memory_bytes'] / 2**20:,.1f} MiB); "
        f"server RSS {result['server_rss_bytes'] / 2**20:,.0f} MiB",
        "",
        f"{'calls in flight':>16}{'Echo calls/s':>14}{'p99 µs':>9}{'Echo+Redis':>12}{'p99 µs':>9}"
        f"{'Decide calls/s':>16}{'p99 µs':>9}",
    ]
    for e, f, d in zip(echo["ladder"], floor["ladder"], decide["ladder"], strict=False):
        lines.append(
            f"{e['concurrency']:>16}{_n(e['rps']):>14}{_n(e['p99_us']):>9}{_n(f['rps']):>12}"
            f"{_n(f['p99_us']):>9}{_n(d['rps']):>16}{_n(d['p99_us']):>9}"
        )
    errors = {"echo": echo["errors"], "echo+redis": floor["errors"], "decide": decide["errors"]}
    if any(errors.values()):
        lines.append(f"errors: {errors}")
    return "\n".join(lines)


def format_sweep(result: dict[str, Any]) -> str:
    kind, points, config = result["sweep"], result["points"], result["config"]
    m = result["machine"]
    lines = [
        f"nba bench --sweep {kind}: sequential Decide latency, {config['sequential']:,} calls per point"
        + (
            f", {config['customers']:,} customers"
            if kind == "offers"
            else f", {'policies/' if config['offers'] is None else str(config['offers']) + ' generated offers'}"
        ),
        f"machine: {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), Python {m['python']}, grpcio {m['grpc']}; "
        f"load average {result['load_average']['before'][0]:.2f} before, "
        f"{result['load_average']['after'][0]:.2f} after",
        f"echo: p50 {_n(result['echo']['p50_us'])} µs, p99 {_n(result['echo']['p99_us'])} µs",
        "",
    ]
    if kind == "offers":
        lines.append(
            f"{'offers':>9}{'p50 µs':>9}{'p99 µs':>9}{'p50/echo':>10}{'server p50':>12}{'server p99':>12}"
            f"{'µs/extra offer':>16}{'(server)':>10}"
        )
        previous = None
        for p in points:
            steps = ("", "")
            if previous is not None:
                extra = p["offers"] - previous["offers"]
                steps = (
                    _n((p["p50_us"] - previous["p50_us"]) / extra, 2),
                    _n((p["server_p50_us"] - previous["server_p50_us"]) / extra, 2)
                    if p["server_p50_us"] is not None and previous["server_p50_us"] is not None
                    else "-",
                )
            lines.append(
                f"{p['offers']:>9,}{_n(p['p50_us']):>9}{_n(p['p99_us']):>9}"
                f"{_n(p['p50_us'] / result['echo']['p50_us'], 2):>10}"
                f"{_n(p['server_p50_us']):>12}{_n(p['server_p99_us']):>12}{steps[0]:>16}{steps[1]:>10}"
            )
            previous = p
        if "us_per_offer" in result:
            lines.append("")
            lines.append(
                f"cost per extra offer (least squares over the p50s): {result['us_per_offer']:.2f} µs "
                f"seen by the client, {_n(result.get('server_us_per_offer'), 2)} µs inside the server"
            )
    else:
        lines.append(
            f"{'customers':>11}{'p50 µs':>9}{'p99 µs':>9}{'server p50':>12}{'server RSS MiB':>16}"
            f"{'Redis MiB':>11}{'Redis B/customer':>18}{'(added)':>9}"
        )
        for p in points:
            lines.append(
                f"{p['customers']:>11,}{_n(p['p50_us']):>9}{_n(p['p99_us']):>9}{_n(p['server_p50_us']):>12}"
                f"{p['server_rss_bytes'] / 2**20:>16,.0f}{p['redis_used_memory_bytes'] / 2**20:>11,.1f}"
                f"{p['redis_bytes_per_customer']:>18,.0f}{p['redis_added_bytes_per_customer']:>9,.0f}"
            )
        if "p50_change" in result:
            lines.append("")
            lines.append(
                f"from {points[0]['customers']:,} to {points[-1]['customers']:,} customers: p50 "
                f"{result['p50_change']:+.1%}, "
                f"server p50 {result.get('server_p50_change', float('nan')):+.1%}, "
                f"server RSS {result['server_rss_change']:+.1%}"
            )
    return "\n".join(lines)
