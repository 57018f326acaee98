"""``nba demo``: the whole service on an embedded Redis, with simulated traffic.

Starts ``nba serve`` (its own Redis, the sample policies), loads the sample
customers, plays the moments nba is designed for (ATM declines, store
visits, carts, agent calls) from several simulated channel backends at once,
lets simulated customers accept some offers, prints a summary and stops
everything it started.

The summary compares the learned policy with the rules alone on the same
decisions: the server runs with ``mode=learned+shadow``, so every decision
logs what the rules alone (the offers' priors, greedily) would have chosen
for the same request, and the simulator knows each customer's true
acceptance probabilities. Per decision, the expected value of each policy's
action is P(accept) × the offer's value (0 for no action); the summary gives
both means and their paired difference with a 95% interval
(:func:`learned_vs_rules`), for the first and last thirds of the run and
overall.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import pathlib
import signal
import socket
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
from nba_service.store import keys
from nba_service.store.connect import RedisTarget, sync_client
from nba_service.store.customer_import import import_customers
from nba_service.tools.off_policy import Estimate, mean_difference
from nba_service.tools.traffic import CustomerResponse, ScenarioMix, generate_customers

__all__ = ["Comparison", "learned_vs_rules", "render_comparison", "run_demo"]

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
        self.decisions: list[tuple[str, str, str, str, float]] = []
        """(decision id, segment, offer id or "", channel, expected value of the action) per decision, in order."""


def _expected_value(
    truth: CustomerResponse, segment: str, category: str, channel: str, offer_id: str, values: dict[str, float]
) -> float:
    """What an action is worth on average to the simulator: P(accept) (the truth) × the offer's value."""
    if not offer_id:
        return 0.0
    return truth.probability(segment, category, channel) * values.get(offer_id, 0.0)


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    """The learned policy and the rules alone over the same decisions: mean expected value of each, and the gain."""

    label: str
    decisions: int
    learned: float
    rules: float
    gain: Estimate
    """learned - rules, paired by decision, with its 95% interval."""


def learned_vs_rules(learned: np.ndarray, rules: np.ndarray) -> list[Comparison]:
    """The first third, the last third and all of the decisions (in the order they were made), compared.

    ``learned[i]`` and ``rules[i]`` are the expected values of the two policies' actions on decision ``i``.
    The thirds are left out when they would hold fewer than two decisions.
    """
    n = len(learned)
    third = n // 3
    parts = [("first third", slice(0, third)), ("last third", slice(n - third, n))] if third >= 2 else []
    return [
        Comparison(
            label,
            len(learned[part]),
            float(learned[part].mean()),
            float(rules[part].mean()),
            mean_difference(learned[part], rules[part]),
        )
        for label, part in [*parts, ("all", slice(0, n))]
        if n
    ]


def render_comparison(comparisons: list[Comparison], duration: float) -> list[str]:
    """The comparison's table, and what it says: a gain (its interval above 0), none measurable yet, or a loss."""
    lines = [f"{'':13}{'decisions':>10}{'learned':>10}{'rules alone':>13}{'gain':>9}  95% CI of the gain"]
    for c in comparisons:
        lines.append(
            f"{c.label:13}{c.decisions:>10}{c.learned:>10.3f}{c.rules:>13.3f}{c.gain.value:>+9.3f}"
            f"  [{c.gain.ci_low:+.3f}, {c.gain.ci_high:+.3f}]"
        )
    latest = comparisons[1] if len(comparisons) == 3 else comparisons[-1]
    gain, interval = latest.gain, f"95% CI [{latest.gain.ci_low:+.3f}, {latest.gain.ci_high:+.3f}]"
    where = "in the last third" if latest.label == "last third" else "overall"
    if gain.ci_low > 0:
        relative = f" ({gain.value / latest.rules:+.1%})" if latest.rules > 0 else ""
        lines.append(
            f"The learned policy gains {gain.value:.3f} per decision over the rules alone {where}{relative}, "
            f"{interval}."
        )
    elif gain.ci_high < 0:
        lines.append(
            f"No gain in {duration:.0f} s: the learned policy is worse than the rules alone {where} "
            f"({gain.value:+.3f} per decision, {interval}); exploring has cost more than it has learned so far."
        )
    else:
        lines.append(
            f"No measurable gain yet in {duration:.0f} s: {where} the gain is {gain.value:+.3f} per decision, "
            f"{interval}, which includes 0."
        )
    return lines


def _rules_choices(client: redis.Redis, decision_ids: list[str], batch: int = 1000) -> list[tuple[str, str] | None]:
    """What the rules alone would have chosen for each decision, as the server logged it (None: not logged)."""
    choices: list[tuple[str, str] | None] = []
    for start in range(0, len(decision_ids), batch):
        with client.pipeline(transaction=False) as pipe:
            for decision_id in decision_ids[start : start + batch]:
                pipe.hget(keys.decision(decision_id), "meta")
            for raw in pipe.execute():
                shadow = json.loads(raw).get("shadow") if raw else None
                choices.append((shadow["offer_id"], shadow["channel"]) if shadow else None)
    return choices


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
            segment = segments.get(moment.request.customer_id, "")
            offer_id = "" if response.no_action else response.action.offer_id
            worth = _expected_value(truth, segment, response.action.category, response.channel, offer_id, values)
            tally.decisions.append((response.decision_id, segment, offer_id, response.channel, worth))
            if response.no_action:
                continue
            await stub.ReportOutcome(
                pb.OutcomeRequest(decision_id=response.decision_id, outcome=pb.OUTCOME_KIND_IMPRESSED), timeout=2
            )
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


def _paired(
    tally: _Tally,
    choices: list[tuple[str, str] | None],
    truth: CustomerResponse,
    categories: dict[str, str],
    values: dict[str, float],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per decision whose rules' choice was logged: the expected values of the learned policy's action and of
    the rules' choice, and the share of those decisions on which both chose the same (offer, channel)."""
    learned, rules, same = [], [], 0
    for (_, segment, offer, channel, worth), choice in zip(tally.decisions, choices, strict=True):
        if choice is None:  # not recorded (a degraded answer)
            continue
        rules_offer, rules_channel = choice
        learned.append(worth)
        rules.append(
            _expected_value(truth, segment, categories.get(rules_offer, ""), rules_channel, rules_offer, values)
        )
        same += (offer, channel if offer else "") == (rules_offer, rules_channel if rules_offer else "")
    return np.array(learned), np.array(rules), same / max(len(learned), 1)


def _summary(
    tally: _Tally, duration: float, server: tuple[float, float] | None, comparison: list[str] | None = None
) -> str:
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
        lines.append("")
        lines.append(
            f"Outcomes: {accepted}/{shown} actions accepted ({accepted / shown:.1%}), "
            f"value accepted {sum(v for *_, v in tally.accepted) / shown:.2f} per action sent; "
            f"serving model version {tally.model_version} at the end (the learner publishes as outcomes come in)"
        )
    if comparison:
        lines.append("")
        lines.extend(comparison)
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


CONSOLE_PORT = 8080
"""Where the demo's console listens when the port is free (else on a free port)."""


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_console(
    work: pathlib.Path, redis_url: str, customers: pathlib.Path, seed: int
) -> tuple[subprocess.Popen[bytes], int] | None:
    """``nba console`` on the demo's Redis (no auth file: loopback, the local admin), its Levers preview over
    1,000 moments of the customers of ``customers`` over the last hour (written by ``nba events generate``);
    None (and why) when it does not start."""
    events = work / "console-events.jsonl"
    with events.open("wb") as out:
        generated = subprocess.run(
            [sys.executable, "-m", "nba_service.cli", "events", "generate", "--count", "1000", "--seed", str(seed),
             "--customers", str(customers), "--span", "1h"],
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )  # fmt: skip
    if generated.returncode != 0:
        print(f"nba demo: no events for the console: {generated.stderr.decode().strip()}", file=sys.stderr)
        return None
    port = _free_port(CONSOLE_PORT)
    log = (work / "console.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "nba_service.cli", "console", "--port", str(port), "--redis-url", redis_url,
         "--events", str(events)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NBA_ISOLATED": "1", "NBA_AUTH_FILE": "", "NBA_REDIS_MODE": ""},
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                print(f"console on http://127.0.0.1:{port}/ (the demo's traffic shows on its Overview)", flush=True)
                return process, port
        time.sleep(0.1)  # polling the console's port until it listens
    if process.poll() is None:
        process.kill()
        process.wait()
    print(f"nba demo: the console did not start:\n{(work / 'console.log').read_text()}", file=sys.stderr)
    return None


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
                    "--mode",
                    "learned+shadow",  # each decision logs what the rules alone would have chosen
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # a throwaway state in its embedded Redis (never a Redis of the environment), not advertised
                env={**os.environ, "NBA_ISOLATED": "1", **{f"NBA_REDIS_{n}": "" for n in ("URL", "MODE", "SENTINELS")}},
            )
        console: tuple[subprocess.Popen[bytes], int] | None = None
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
            client = sync_client(RedisTarget(url=str(info["redis_url"])))
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
            console = _start_console(work, str(info["redis_url"]), pathlib.Path(customers), seed)
            print(
                f"playing {duration:.0f} s of ATM, app, web and agent traffic from {concurrency} backends ...",
                flush=True,
            )
            offers = load_policy_dir(policies).offers
            values = {o.id: o.value for o in offers}
            tally = asyncio.run(_drive(int(info["port"]), segments, values, duration, concurrency, seed))
            client = sync_client(RedisTarget(url=str(info["redis_url"])))
            try:
                choices = _rules_choices(client, [d[0] for d in tally.decisions])
            finally:
                client.close()
            learned, rules, agreement = _paired(
                tally, choices, CustomerResponse(seed), {o.id: o.category for o in offers}, values
            )
            comparison = None
            if len(learned):
                comparison = [
                    f"Learned policy vs the rules alone, on the same {len(learned)} decisions (expected value "
                    "accepted per decision:",
                    "the simulator's true P(accept) × the offer's value, 0 for no action; the rules' choice, priors "
                    "only and greedy,",
                    f"is logged by the server with each decision; both chose the same action {agreement:.1%} of the "
                    "time):",
                    *render_comparison(learned_vs_rules(learned, rules), duration),
                    "(Both columns move with the traffic, as contact caps fill up during the run; the gain compares "
                    "them on the same requests.)",
                ]
            print()
            print(_summary(tally, duration, _server_quantiles(int(info["metrics_port"])), comparison))
        finally:
            if console is not None and console[0].poll() is None:
                console[0].send_signal(signal.SIGTERM)
                try:
                    console[0].wait(10)
                except subprocess.TimeoutExpired:
                    console[0].kill()
                    console[0].wait()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if console is not None:
            print(f"\nstopped nba console (pid {console[0].pid})", end="")
        print(f"\nstopped nba serve (pid {process.pid}) and its embedded Redis")
        return 0 if not tally.errors else 1
