"""``nba demo``: the whole service on an embedded Redis, with simulated traffic.

Starts ``nba serve`` (its own Redis, the sample policies), loads the sample
customers, plays the moments nba is designed for (ATM declines, store
visits, carts, agent calls) from several simulated channel backends at once,
lets simulated customers accept some offers, prints a summary and stops
everything it started.
"""

from __future__ import annotations

import asyncio
import collections
import json
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import grpc
import numpy as np
import redis

from nba_service.observability.scrape import histogram_quantile, scrape_histogram
from nba_service.policies.parser import load_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.store.customer_import import import_customers
from nba_service.tools.traffic import CustomerResponse, ScenarioMix, generate_customers

__all__ = ["run_demo"]

READY_TIMEOUT_SECONDS = 60.0


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.by_action: collections.Counter[tuple[str, str]] = collections.Counter()
        self.by_scenario: collections.Counter[str] = collections.Counter()
        self.accepted: list[tuple[float, bool, float]] = []  # (time, accepted, value accepted) per action shown
        self.model_version = ""
        self.errors: collections.Counter[str] = collections.Counter()
        self.context_reads = 0


async def _backend(
    stub: pb_grpc.DecisionServiceStub,
    mix: ScenarioMix,
    truth: CustomerResponse,
    segments: dict[str, str],
    values: dict[str, float],
    tally: _Tally,
    deadline: float,
) -> None:
    while time.monotonic() < deadline:
        moment = mix.next()
        try:
            if moment.agent_lookup:
                await stub.GetCustomerContext(
                    pb.CustomerContextRequest(customer_id=moment.request.customer_id, include_best_actions=True),
                    timeout=2,
                )
                tally.context_reads += 1
            started = time.perf_counter()
            response = await stub.Decide(moment.request, timeout=2)
            tally.latencies.append(time.perf_counter() - started)
            tally.by_scenario[moment.scenario] += 1
            tally.by_action[(response.action.offer_id or "(no action)", response.channel or "-")] += 1
            if response.no_action:
                continue
            await stub.ReportOutcome(
                pb.OutcomeRequest(decision_id=response.decision_id, outcome=pb.OUTCOME_KIND_IMPRESSED), timeout=2
            )
            segment = segments.get(moment.request.customer_id, "")
            accepted = truth.accepts(segment, response.action.category, response.channel)
            outcome = pb.OUTCOME_KIND_ACCEPTED if accepted else pb.OUTCOME_KIND_DECLINED
            await stub.ReportOutcome(pb.OutcomeRequest(decision_id=response.decision_id, outcome=outcome), timeout=2)
            value = values.get(response.action.offer_id, 0.0) if accepted else 0.0
            tally.accepted.append((time.monotonic(), accepted, value))
            tally.model_version = response.model_version
        except grpc.aio.AioRpcError as exc:
            tally.errors[exc.code().name] += 1


async def _drive(
    port: int, customers: dict[str, str], values: dict[str, float], duration: float, concurrency: int, seed: int
) -> _Tally:
    tally = _Tally()
    truth = CustomerResponse(seed)
    deadline = time.monotonic() + duration
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        await asyncio.gather(
            *(
                _backend(
                    stub, ScenarioMix(sorted(customers), seed=seed * 100 + i), truth, customers, values, tally, deadline
                )
                for i in range(concurrency)
            )
        )
    return tally


def _server_quantiles(metrics_port: int) -> tuple[float, float] | None:
    """p50 and p99 of the server's own decision histogram, interpolated in its buckets."""
    buckets = scrape_histogram(f"http://127.0.0.1:{metrics_port}/metrics", "nba_decision_duration_seconds")
    if not buckets:
        return None
    p50, p99 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.99)
    return None if p50 is None or p99 is None else (p50, p99)


def _summary(tally: _Tally, duration: float, server: tuple[float, float] | None) -> str:
    lines = []
    total = sum(tally.by_scenario.values())
    latencies = np.array(tally.latencies) * 1000
    lines.append(
        f"nba demo: {total} decisions in {duration:.0f} s ({total / duration:.0f}/s) from simulated "
        f"ATM, app, web and agent backends; {tally.context_reads} agent context reads"
    )
    if len(latencies):
        lines.append(
            f"Decide latency seen by the backends: p50 {np.percentile(latencies, 50):.2f} ms, "
            f"p99 {np.percentile(latencies, 99):.2f} ms (client and server share this machine)"
        )
    if server:
        lines.append(
            f"Decision time inside the server:    p50 {server[0] * 1000:.2f} ms, p99 {server[1] * 1000:.2f} ms"
        )
    no_action = sum(n for (offer, _), n in tally.by_action.items() if offer == "(no action)")
    lines.append(f"No action (nothing eligible, no consent, capped or not worth it): {no_action / max(total, 1):.1%}")
    lines.append("")
    lines.append(f"{'moment':16}{'decisions':>10}")
    for scenario, n in tally.by_scenario.most_common():
        lines.append(f"{scenario:16}{n:>10}")
    lines.append("")
    lines.append(f"{'action':28}{'channel':16}{'decisions':>10}")
    for (offer, channel), n in tally.by_action.most_common(15):
        lines.append(f"{offer:28}{channel:16}{n:>10}")
    if len(tally.by_action) > 15:
        lines.append(f"... and {len(tally.by_action) - 15} more (offer, channel) pairs")
    shown = len(tally.accepted)
    if shown:
        accepted = sum(a for _, a, _ in tally.accepted)
        third = max(shown // 3, 1)
        early, late = tally.accepted[:third], tally.accepted[-third:]
        lines.append("")
        lines.append(
            f"Acceptance: {accepted}/{shown} actions accepted ({accepted / shown:.1%}); "
            f"first third {sum(a for _, a, _ in early) / third:.1%}, "
            f"last third {sum(a for _, a, _ in late) / third:.1%}"
        )
        lines.append(
            f"Value accepted per action sent (what arbitration maximises): first third "
            f"{sum(v for *_, v in early) / third:.2f}, last third {sum(v for *_, v in late) / third:.2f}; "
            f"serving model version {tally.model_version} at the end "
            f"(the learner publishes as outcomes come in)"
        )
    if tally.errors:
        lines.append(f"Errors: {dict(tally.errors)}")
    return "\n".join(lines)


def _wait_ready(path: pathlib.Path, process: subprocess.Popen[bytes], log: pathlib.Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if process.poll() is not None:
            raise RuntimeError(f"nba serve exited with code {process.returncode}:\n{log.read_text()}")
        time.sleep(0.05)  # polling a file the server writes when it is ready
    raise RuntimeError(f"nba serve was not ready after {READY_TIMEOUT_SECONDS:.0f} s:\n{log.read_text()}")


def run_demo(
    duration: float = 30.0,
    concurrency: int = 8,
    seed: int = 7,
    policies: str = "policies",
    customers: str = "policies/customers.jsonl",
    population_size: int = 20_000,
) -> int:
    for path in (policies, customers):
        if not pathlib.Path(path).exists():
            print(f"nba demo: {path} not found (run it from the project folder)", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="nba-demo-") as folder:
        work = pathlib.Path(folder)
        ready, log = work / "ready.json", work / "server.log"
        print(f"starting nba serve with an embedded Redis in {work} ...", flush=True)
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nba_service.cli",
                    "serve",
                    "--port",
                    "0",
                    "--metrics-port",
                    "0",
                    "--data-dir",
                    str(work / "data"),
                    "--policies",
                    policies,
                    "--ready-file",
                    str(ready),
                    "--seed",
                    str(seed),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            info = _wait_ready(ready, process, log)
            print(
                f"serving on 127.0.0.1:{info['port']}, metrics on http://127.0.0.1:{info['metrics_port']}/metrics, "
                f"policies from {policies}/ published",
                flush=True,
            )
            # The sample profiles, plus a larger synthetic population written as a CRM export
            # would be, so that contact caps bite as they would in real traffic, not on every call.
            population = work / "crm-export.jsonl"
            population.write_text("".join(json.dumps(r) + "\n" for r in generate_customers(population_size, seed)))
            segments: dict[str, str] = {}
            client = redis.Redis.from_url(str(info["redis_url"]))
            try:
                for source in (pathlib.Path(customers), population):
                    report = import_customers(client, source, progress=False)
                    print(
                        f"loaded {report.loaded} customer profiles from {source.name} ({len(report.refused)} refused)",
                        flush=True,
                    )
                    for line in source.read_text().splitlines():
                        if line.strip():
                            record = json.loads(line)
                            segments[record["customer_id"]] = record.get("segment", "")
            finally:
                client.close()
            print(
                f"playing {duration:.0f} s of ATM, app, web and agent traffic from {concurrency} backends ...",
                flush=True,
            )
            values = {o.id: o.value for o in load_policy_dir(policies).offers}
            tally = asyncio.run(_drive(int(info["port"]), segments, values, duration, concurrency, seed))
            print()
            print(_summary(tally, duration, _server_quantiles(int(info["metrics_port"]))))
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        print(f"\nstopped nba serve (pid {process.pid}) and its embedded Redis")
        return 0 if not tally.errors else 1
