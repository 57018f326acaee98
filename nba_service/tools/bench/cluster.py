"""``nba bench --redis-mode cluster --shards N``: the Redis Cluster scale curve.

For each number of primaries N (and first for the standalone embedded Redis, the baseline, in the same run),
starts a :class:`~nba_service.store.local_cluster.LocalCluster` of N primaries without replicas, ``nba serve``
on it (:func:`~nba_service.tools.bench.processes.start_servers` with ``redis_mode=cluster``), loads the
bench's customers and journeys, and runs the bench's throughput ladder of Decide calls. Around each step it
reads every primary's ``INFO`` (``used_cpu_sys`` + ``used_cpu_user``, ``total_commands_processed``, the
``EVALSHA`` calls); before the ladder, its CPU over a second without traffic; after the run, its ``DBSIZE``.
The step with the most decisions/s is kept, as in the normal bench. Results and the table are documented in
docs/performance.md ("Redis Cluster scale curve").

Per setup it reports the decisions/s achieved, the Redis CPU per decision in total and on the busiest
primary, each primary's share of the keys and of the Redis CPU, and the rate at which the busiest primary
would saturate one core::

    saturation decisions/s = 1e6 µs/s / busiest primary's Redis CPU µs per decision

Hot spots (``hot``, on the largest N): ``customer`` sends :data:`HOT_SHARE` of the decisions to one customer
(whose keys share one slot, so one primary); ``budget`` serves a generated policy set of one offer with a
budget, chosen by every decision (each decision reserves a unit on that offer's slot before it is written).
Each such row names the primary serving the hot slot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import pathlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import redis
from redis.crc import key_slot

from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.store import keys
from nba_service.store.local_cluster import LocalCluster
from nba_service.store.state import budget_key
from nba_service.tools.bench.client import MAX_CALLS_PER_STEP, Target, _channels, _cpu_seconds, _load, _us
from nba_service.tools.bench.config import BenchConfig, BenchError, Progress
from nba_service.tools.bench.processes import Servers, start_servers
from nba_service.tools.bench.run import REQUEST_POOL, _policy_dir, _populate, machine
from nba_service.tools.bench.workload import customer_id, decide_requests, write_offer_policies

__all__ = ["HOT_KINDS", "HOT_SHARE", "format_cluster_report", "run_cluster_bench"]

HOT_KINDS = ("customer", "budget")
HOT_SHARE = 0.2
"""Share of the decisions that go to the hot customer (``hot=customer``)."""
HOT_CUSTOMER_INDEX = 0
"""The hot customer: the first of the bench's population (:func:`~nba_service.tools.bench.workload.customer_id`)."""
HOT_BUDGET_MAX = 1_000_000_000
"""The hot offer's budget a day: never used up during a run, so every decision reserves a unit."""
SATURATION = "1e6 µs/s / busiest primary's Redis CPU µs per decision"
IDLE_SECONDS = 1.0
"""Before the ladder, each node's CPU is read over this long with no traffic."""


@dataclasses.dataclass
class _Node:
    """One primary (or the standalone Redis) as the bench reads it: a plain client of that node alone."""

    name: str
    client: redis.Redis

    def counters(self) -> tuple[float, int, int]:
        """Redis CPU seconds (system + user), commands processed (those scripts run included) and script calls
        (``EVALSHA`` and ``EVAL``) so far: one ``INFO all``."""
        info = self.client.info("all")
        scripts = sum(int(info.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))
        cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return cpu, int(info["total_commands_processed"]), scripts


@dataclasses.dataclass
class _Setup:
    """One row of the table: which Redis, which workload."""

    label: str
    mode: str
    primaries: int
    hot: str | None = None


def _setups(shards: Sequence[int], hot: Sequence[str]) -> list[_Setup]:
    setups = [_Setup("standalone", "standalone", 1)]
    setups += [_Setup(f"cluster {n}", "cluster", n) for n in shards]
    largest = max(shards)
    setups += [_Setup(f"cluster {largest}, hot {kind}", "cluster", largest, kind) for kind in hot]
    return setups


def _hot_customer(requests: Sequence[pb.DecideRequest], population: int) -> list[pb.DecideRequest]:
    """``requests`` with every fifth (:data:`HOT_SHARE`) sent for the hot customer instead."""
    every = round(1 / HOT_SHARE)
    hot = customer_id(min(HOT_CUSTOMER_INDEX, population - 1))
    out = []
    for index, request in enumerate(requests):
        if index % every == 0:
            copy = pb.DecideRequest()
            copy.CopyFrom(request)
            copy.customer_id = hot
            request = copy
        out.append(request)
    return out


def _slot_owner(client: redis.Redis, slot: int) -> str:
    """``host:port`` of the primary serving ``slot``, as ``client``'s node says."""
    for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            return f"{host}:{int(primary[1])}"
    raise BenchError(f"no primary serves slot {slot}")


def _customer_sizes(client: redis.Redis, customer: str) -> dict[str, int]:
    """How much of the customer's history a decision reads or writes, after the run."""
    return {
        "journey_events": int(client.llen(keys.journey(customer))),
        "contacts": int(client.zcard(keys.contacts(customer))),
        "decision_index": int(client.zcard(keys.decision_index(customer))),
    }


@contextlib.contextmanager
def _redis_for(setup: _Setup, work: pathlib.Path, progress: Progress) -> Iterator[LocalCluster | None]:
    if setup.mode == "standalone":
        yield None
        return
    progress(f"starting a local Redis Cluster of {setup.primaries} primaries ...")
    with LocalCluster(work / f"cluster-{setup.primaries}-{setup.hot or 'even'}", primaries=setup.primaries) as cluster:
        yield cluster


async def _ladder(
    servers: Servers,
    nodes: Sequence[_Node],
    requests: Sequence[pb.DecideRequest],
    config: BenchConfig,
    progress: Progress,
    label: str,
) -> tuple[list[dict[str, Any]], int]:
    """The bench's ladder against nba serve, each step with every node's INFO before and after; the steps, and
    the Decide calls that succeeded in all (warm-up and ramps included)."""
    channels = _channels_to(servers, config.connections)
    try:
        calls = [pb_grpc.DecisionServiceStub(channel).Decide for channel in channels]
        warm, _, _ = await _load(calls, requests, 4, 3600.0, config.warmup)  # loads the scripts, warms the caches
        total = len(warm)
        before = [node.counters() for node in nodes]
        await asyncio.sleep(IDLE_SECONDS)  # what each node costs with no traffic (cron, the cluster bus)
        idle = [(a[0] - b[0]) / IDLE_SECONDS * 1e3 for a, b in zip([n.counters() for n in nodes], before, strict=True)]
        steps = []
        for concurrency in config.concurrency:
            ramp, _, _ = await _load(calls, requests, concurrency, min(0.3, config.seconds), MAX_CALLS_PER_STEP)
            before = [node.counters() for node in nodes]
            server_before = _cpu_seconds(servers.nba.popen.pid, servers.redis_pid or None)
            latencies, errors, elapsed = await _load(calls, requests, concurrency, config.seconds, MAX_CALLS_PER_STEP)
            server_after = _cpu_seconds(servers.nba.popen.pid, servers.redis_pid or None)
            after = [node.counters() for node in nodes]
            decisions = len(latencies)
            total += len(ramp) + decisions
            per = max(decisions, 1)
            cpu = [(a[0] - b[0]) / per * 1e6 for a, b in zip(after, before, strict=True)]
            step: dict[str, Any] = {
                "concurrency": concurrency,
                "decisions": decisions,
                "errors": dict(errors),
                "seconds": elapsed,
                "decisions_per_second": decisions / elapsed,
                "p50_us": _us(latencies, 50),
                "p99_us": _us(latencies, 99),
                "server_cpu_us_per_decision": (server_after - server_before) / per * 1e6,
                "node_cpu_us_per_decision": cpu,
                "node_commands_per_decision": [(a[1] - b[1]) / per for a, b in zip(after, before, strict=True)],
                "node_scripts_per_decision": [(a[2] - b[2]) / per for a, b in zip(after, before, strict=True)],
                "node_idle_cpu_ms_per_second": idle,
            }
            progress(
                f"  {label:26} {concurrency:>4} in flight: {step['decisions_per_second']:>8,.0f} decisions/s, "
                f"Redis {sum(cpu):,.0f} µs per decision" + (f", errors {step['errors']}" if errors else "")
            )
            steps.append(step)
    finally:
        for channel in channels:
            await channel.close()
    return steps, total


def _channels_to(servers: Servers, count: int) -> list[grpc.aio.Channel]:
    return _channels(Target("decide", int(servers.nba.info["port"]), servers.nba.popen.pid), count)


def _row(setup: _Setup, nodes: Sequence[_Node], steps: list[dict[str, Any]], hot_node: str | None) -> dict[str, Any]:
    if not any(step["decisions"] for step in steps):
        raise BenchError(f"{setup.label}: every Decide failed: {[step['errors'] for step in steps]}")
    best = max(steps, key=lambda step: step["decisions_per_second"])
    sizes = [int(node.client.dbsize()) for node in nodes]
    cpu = best["node_cpu_us_per_decision"]
    total_keys, total_cpu = max(sum(sizes), 1), sum(cpu)
    busiest = int(np.argmax(cpu))
    per_node = [
        {
            "node": node.name,
            "keys": size,
            "key_share": size / total_keys,
            "cpu_us_per_decision": us,
            "cpu_share": us / total_cpu if total_cpu > 0 else 0.0,
            "commands_per_decision": commands,
            "scripts_per_decision": scripts,
            "idle_cpu_ms_per_second": idle,
            "hot": node.name == hot_node,
        }
        for node, size, us, commands, scripts, idle in zip(
            nodes,
            sizes,
            cpu,
            best["node_commands_per_decision"],
            best["node_scripts_per_decision"],
            best["node_idle_cpu_ms_per_second"],
            strict=True,
        )
    ]
    return {
        "setup": setup.label,
        "mode": setup.mode,
        "primaries": setup.primaries,
        "hot": setup.hot,
        "hot_node": hot_node,
        "decisions_per_second": best["decisions_per_second"],
        "concurrency": best["concurrency"],
        "p50_us": best["p50_us"],
        "p99_us": best["p99_us"],
        "errors": dict(sum((collections.Counter(step["errors"]) for step in steps), collections.Counter())),
        "server_cpu_us_per_decision": best["server_cpu_us_per_decision"],
        "redis_cpu_us_per_decision": total_cpu,
        "busiest_node": nodes[busiest].name,
        "busiest_cpu_us_per_decision": cpu[busiest],
        "saturation_decisions_per_second": 1e6 / cpu[busiest] if cpu[busiest] > 0 else None,
        "commands_per_decision": sum(best["node_commands_per_decision"]),
        "scripts_per_decision": sum(best["node_scripts_per_decision"]),
        "keys": sum(sizes),
        "nodes": per_node,
        "ladder": steps,
    }


def _run_setup(
    setup: _Setup, config: BenchConfig, work: pathlib.Path, progress: Progress
) -> tuple[dict[str, Any], str]:
    work.mkdir(parents=True)
    policies = _policy_dir(config, work, config.offers)
    hot_offer = ""
    if setup.hot == "budget":
        policies = write_offer_policies(
            work / "policies-hot-budget", 1, config.policies, config.seed, budget=HOT_BUDGET_MAX
        )
        hot_offer = "bench_offer_0000"
    requests = decide_requests(
        config.customers, REQUEST_POOL, config.seed, atm_only=config.offers is not None or setup.hot == "budget"
    )
    if setup.hot == "customer":
        requests = _hot_customer(requests, config.customers)
    with (
        _redis_for(setup, work, progress) as cluster,
        start_servers(
            work,
            policies,
            config.seed,
            progress,
            config.workers,
            redis_url=None if cluster is None else cluster.url,
            redis_mode=setup.mode,
        ) as servers,
    ):
        if cluster is None:
            nodes = [_Node("embedded", servers.client)]
        else:
            nodes = [_Node(node.name, cluster.client(node.port)) for node in cluster.primary_nodes]
        try:
            version = str(nodes[0].client.info("server")["redis_version"])
            hot_node = None
            if cluster is not None and setup.hot is not None:
                key = (
                    keys.profile(customer_id(HOT_CUSTOMER_INDEX))
                    if setup.hot == "customer"
                    else budget_key(hot_offer, 86400, time.time())
                )
                hot_node = _slot_owner(nodes[0].client, key_slot(key.encode()))
            _populate(servers, work, config, 0, config.customers, progress)
            began = time.time()
            steps, total = asyncio.run(_ladder(servers, nodes, requests, config, progress, setup.label))
            row = _row(setup, nodes, steps, hot_node)
            row["decisions_total"] = total
            redis_pids = [servers.redis_pid] if cluster is None else [node.pid for node in cluster.primary_nodes]
            row["pids"] = {
                "server": servers.nba.popen.pid,
                "echo": servers.echo.popen.pid,
                **{f"redis-{index}": pid for index, pid in enumerate(redis_pids)},
            }
            owner = next((node for node in nodes if node.name == hot_node), None)
            if owner is not None and setup.hot == "budget":
                windows = {budget_key(hot_offer, 86400, when) for when in (began, time.time())}
                row["budget_units"] = sum(int(owner.client.get(key) or 0) for key in windows)
            if owner is not None and setup.hot == "customer":
                row["hot_customer"] = _customer_sizes(owner.client, customer_id(HOT_CUSTOMER_INDEX))
            return row, version
        finally:
            if cluster is not None:
                for node in nodes:
                    node.client.close()


def run_cluster_bench(
    config: BenchConfig, shards: Sequence[int], hot: Sequence[str] = (), progress: Progress = lambda _: None
) -> dict[str, Any]:
    """The standalone baseline, then a local Redis Cluster of each of ``shards`` primaries, then each ``hot``
    variant on the largest: a row each (see the module's doc); the results as a dict."""
    if not shards or min(shards) < 1:
        raise ValueError(f"shards {list(shards)}: give numbers of primaries of at least 1")
    unknown = [kind for kind in hot if kind not in HOT_KINDS]
    if unknown:
        raise ValueError(f"hot {unknown}: one of {', '.join(HOT_KINDS)}")
    load_before = os.getloadavg()
    began = time.perf_counter()
    rows = []
    versions = set()
    with tempfile.TemporaryDirectory(prefix="nba-bench-cluster-") as folder:
        work = pathlib.Path(folder)
        for setup in _setups(shards, hot):
            progress(f"{setup.label}:")
            row, version = _run_setup(setup, config, work / setup.label.replace(" ", "-").replace(",", ""), progress)
            rows.append(row)
            versions.add(version)
    return {
        "kind": "cluster",
        "shards": list(shards),
        "hot": list(hot),
        "hot_share": HOT_SHARE,
        "saturation": SATURATION,
        "rows": rows,
        "redis_version": ", ".join(sorted(versions)),
        "config": dataclasses.asdict(config),
        "machine": machine(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "seconds": time.perf_counter() - began,
    }


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def _spread(shares: Sequence[float]) -> str:
    if len(shares) == 1:
        return "100%"
    return f"{min(shares):.0%}-{max(shares):.0%}"


def format_cluster_report(result: dict[str, Any]) -> str:
    config, m = result["config"], result["machine"]
    policy = "policies/, scenario mix" if config["offers"] is None else f"{config['offers']} generated offers"
    lines = [
        f"nba bench --redis-mode cluster --shards {','.join(map(str, result['shards']))}"
        + (f" --hot {','.join(result['hot'])}" if result["hot"] else "")
        + f": {config['customers']:,} customers; {policy}; ladder "
        f"{', '.join(map(str, config['concurrency']))} calls in flight x {config['seconds']:g} s, "
        f"the best step kept",
        f"machine: {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), Python {m['python']}, "
        f"Redis {result['redis_version']}; load average {result['load_average']['before'][0]:.2f} before, "
        f"{result['load_average']['after'][0]:.2f} after",
        "",
        f"{'setup':26}{'decisions/s':>12}{'server µs':>10}{'Redis µs':>10}{'busiest µs':>11}{'saturates at/s':>15}"
        f"{'keys':>11}{'key spread':>12}{'CPU spread':>12}",
    ]
    for row in result["rows"]:
        key_spread = _spread([n["key_share"] for n in row["nodes"]])
        cpu_spread = _spread([n["cpu_share"] for n in row["nodes"]])
        lines.append(
            f"{row['setup']:26}{_n(row['decisions_per_second']):>12}{_n(row['server_cpu_us_per_decision']):>10}"
            f"{_n(row['redis_cpu_us_per_decision']):>10}{_n(row['busiest_cpu_us_per_decision']):>11}"
            f"{_n(row['saturation_decisions_per_second']):>15}{row['keys']:>11,}{key_spread:>12}{cpu_spread:>12}"
        )
    lines += [
        "",
        "per primary (per decision: Redis CPU, script calls, commands with those the scripts run; idle: its CPU "
        "with no traffic; * the primary serving the hot slot):",
        f"{'setup':26}{'primary':>18}{'keys':>11}{'keys %':>8}{'Redis µs':>10}{'CPU %':>8}{'scripts':>9}"
        f"{'commands':>10}{'idle ms/s':>11}",
    ]
    for row in result["rows"]:
        for node in row["nodes"]:
            lines.append(
                f"{row['setup']:26}{node['node'] + ('*' if node['hot'] else ''):>18}{node['keys']:>11,}"
                f"{node['key_share']:>8.1%}{_n(node['cpu_us_per_decision'], 1):>10}{node['cpu_share']:>8.1%}"
                f"{_n(node['scripts_per_decision'], 2):>9}{_n(node['commands_per_decision'], 2):>10}"
                f"{_n(node['idle_cpu_ms_per_second'], 1):>11}"
            )
    lines += [
        "",
        f"saturates at = {SATURATION} (one core of the busiest primary); server µs: nba serve's CPU per decision",
    ]
    for row in result["rows"]:
        if row["hot"] == "customer":
            sizes = row.get("hot_customer") or {}
            lines.append(
                f"hot customer: {result['hot_share']:.0%} of the decisions for {customer_id(HOT_CUSTOMER_INDEX)}, "
                "whose keys share one slot: its primary carries them all"
                + (
                    f"; after the run: {sizes['journey_events']:,} journey events, {sizes['contacts']:,} contacts, "
                    f"{sizes['decision_index']:,} decisions kept"
                    if sizes
                    else ""
                )
            )
        if row["hot"] == "budget":
            lines.append(
                "hot budget: one offer with a budget, chosen by every decision: each reserves a unit on the offer's "
                f"slot (one more script call there), the rest of the decision on the customer's; "
                f"{row.get('budget_units', 0):,} units reserved for {row['decisions_total']:,} decisions"
            )
    errors = {row["setup"]: row["errors"] for row in result["rows"] if row["errors"]}
    if errors:
        lines.append(f"errors: {errors}")
    return "\n".join(lines)
