"""Faults of hostile input: corrupt protobuf and invalid UTF-8 on the wire, and policy versions
written straight into Redis, past ``nba policy publish``'s validation."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from nba_service.policies.parser import load_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.policy_store import PolicyStore
from nba_service.tools.chaos.config import ChaosConfig, Progress
from nba_service.tools.chaos.load import Call, Tally, open_channels, probe, quantile, warm
from nba_service.tools.chaos.report import FaultResult
from nba_service.tools.chaos.rig import Stack, metric_sum, poll, scrape, stack

__all__ = ["ATTACKS", "attack_files", "corrupt_input", "corrupt_payloads", "policy_attack"]

SERVICE = "/nba.v1.DecisionService/"
ATTACKS = ("huge", "exploding", "deep", "costly", "big_file")
HUGE_OFFERS = 20_000
HUGE_PER_FILE = 2000
EXPLODING_LEVELS = 16
DEEP_LEVELS = 3000
COSTLY_BYTES = 50_000_000
EVENT_TYPES = ["atm_decline", "location", "cart_abandon", "app_open", "page_view", "agent_contact", "custom"]


# --- corrupt protobuf -----------------------------------------------------------------


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (lengths under 128)."""
    assert len(payload) < 128
    return bytes(((number << 3) | 2, len(payload))) + payload


def corrupt_payloads(seed: int = 1) -> dict[str, list[tuple[str, bytes]]]:
    """Bodies no request message can be parsed from, by method: random bytes, a request cut short,
    invalid UTF-8 in a string (top level, nested, a map key), an unknown wire type, a length past
    the end, an endless varint, an unterminated group. Each is checked here to fail parsing."""
    rng = random.Random(seed)
    valid = pb.DecideRequest(
        customer_id="c1",
        origin_channel="atm",
        event=pb.Event(atm_decline=pb.AtmDecline(amount=100, balance=20, currency="EUR", atm_id="atm-7")),
    ).SerializeToString()
    event = pb.DecideRequest(event=pb.Event(app_open=pb.AppOpen(screen="home"))).SerializeToString()
    common = [
        ("a length past the end", b"\x0a\xff\xff\xff\x0f" + b"abc"),
        ("an endless varint", b"\x08" + b"\xff" * 11),
        ("an unknown wire type", b"\x0f\x01"),
        ("a group that never ends", b"\x0b\x10\x01"),
    ]
    decide = [
        ("invalid UTF-8 in customer_id", _field(1, b"\xff\xfe\xfd") + event),
        ("invalid UTF-8 in an event field", _field(1, b"c1") + _field(4, _field(1, _field(3, b"\xc3\x28")))),
        ("invalid UTF-8 in a map key", _field(1, b"c1") + event + _field(5, _field(1, b"\xe2\x82") + _field(2, b"v"))),
        ("a request cut short", valid[: len(valid) - 3]),
        *common,
    ]
    outcome = [("invalid UTF-8 in decision_id", _field(1, b"\xc0\xaf") + b"\x10\x02"), *common]
    context = [("invalid UTF-8 in customer_id", _field(1, b"\xed\xa0\x80")), *common]
    for name in ("random bytes",) * 4:
        while True:
            body = rng.randbytes(rng.randint(8, 256))
            try:
                pb.DecideRequest.FromString(body)
                pb.OutcomeRequest.FromString(body)
                pb.CustomerContextRequest.FromString(body)
            except DecodeError:
                break
        for group in (decide, outcome, context):
            group.append((name, body))
    payloads = {"Decide": decide, "DecideStream": decide, "ReportOutcome": outcome, "GetCustomerContext": context}
    parsers: dict[str, Any] = {
        "Decide": pb.DecideRequest,
        "DecideStream": pb.DecideRequest,
        "ReportOutcome": pb.OutcomeRequest,
        "GetCustomerContext": pb.CustomerContextRequest,
    }
    for method, bodies in payloads.items():
        for name, body in bodies:
            try:
                parsers[method].FromString(body)
            except DecodeError:
                continue
            raise AssertionError(f"{method}: {name} parses")  # every payload must be corrupt
    return payloads


async def _send_garbage(channel: grpc.aio.Channel, method: str, body: bytes, deadline: float) -> str:
    try:
        if method == "DecideStream":
            call = channel.stream_stream(SERVICE + method)()
            await call.write(body)
            await call.done_writing()
            async for _ in call:
                pass
            return (await call.code()).name
        await channel.unary_unary(SERVICE + method)(body, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


def corrupt_input(config: ChaosConfig, progress: Progress) -> FaultResult:
    """Corrupt bodies to every request-taking method for ``garbage_seconds``, from
    ``garbage_concurrency`` callers: each should be answered INVALID_ARGUMENT, the server's log
    should stay small, and a valid call right after should answer at once."""
    t = config.targets
    result = FaultResult(
        "corrupt_input",
        "corrupt protobuf, invalid UTF-8",
        load=f"{config.garbage_concurrency} callers × {config.garbage_seconds:g} s of corrupt requests",
        recovery="a valid call right after",
    )
    payloads = corrupt_payloads(config.seed)
    plan = [(method, name, body) for method, bodies in payloads.items() for name, body in bodies]
    with stack(config, progress, "corrupt-input") as s:
        asyncio.run(warm(s.nba.port, s.requests))
        result.rss_before, result.fds_before = s.nba.stats().values()
        log_before = s.nba.log_size()
        codes: collections.Counter[str] = collections.Counter()
        by_payload: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

        async def send() -> tuple[float, Call]:
            started = time.monotonic()
            until = started + config.garbage_seconds
            async with grpc.aio.insecure_channel(f"127.0.0.1:{s.nba.port}") as channel:

                async def caller(k: int) -> None:
                    i = k
                    while time.monotonic() < until:
                        method, name, body = plan[i % len(plan)]
                        code = await _send_garbage(channel, method, body, config.deadline)
                        codes[code] += 1
                        by_payload[f"{method}: {name}"][code] += 1
                        i += config.garbage_concurrency

                await asyncio.gather(*(caller(k) for k in range(config.garbage_concurrency)))
            elapsed = time.monotonic() - started
            return elapsed, await probe(s.nba.port, s.requests[0])

        progress(f"  corrupt requests for {config.garbage_seconds:g} s ...")
        elapsed, after_call = asyncio.run(send())
        sizes = [s.nba.log_size()]

        def log_steady() -> bool:  # the server's last log lines have reached the file
            sizes.append(s.nba.log_size())
            return sizes[-1] == sizes[-2]

        poll(log_steady, 2.0, 0.1)
        log_bytes = s.nba.log_size() - log_before
        per_10s = log_bytes * 10.0 / elapsed
        result.rss_after, result.fds_after = s.nba.stats().values()
        result.codes = dict(codes)
        result.recovery_seconds = after_call.seconds
        wrong = {p: dict(c) for p, c in by_payload.items() if set(c) != {"INVALID_ARGUMENT"}}
        result.details.update(
            {
                "calls": sum(codes.values()),
                "seconds": elapsed,
                "log_bytes": log_bytes,
                "log_bytes_per_10s": per_10s,
                "not_invalid_argument": wrong,
                "after_call": {"code": after_call.code, "seconds": after_call.seconds},
                "log_tail": s.nba.log.read_text(errors="replace")[-600:],
            }
        )
        result.load += f" ({sum(codes.values()):,} calls)"
        bad = {code: n for code, n in codes.items() if code in ("UNKNOWN", "INTERNAL")}
        result.check("no UNKNOWN or INTERNAL", not bad, f"{dict(codes)}")
        result.check(
            "every corrupt request gets INVALID_ARGUMENT",
            set(codes) == {"INVALID_ARGUMENT"},
            f"{dict(codes)}"
            + (
                f"; {len(wrong)} of {len(by_payload)} kinds answered otherwise, e.g. {dict(list(wrong.items())[:3])}"
                if wrong
                else ""
            ),
        )
        result.check(
            f"the server log stays small (at most {t.garbage_log_bytes_per_10s:,} bytes per 10 s)",
            per_10s <= t.garbage_log_bytes_per_10s,
            f"{log_bytes:,} bytes in {elapsed:.1f} s = {per_10s:,.0f} bytes per 10 s",
        )
        result.check(
            f"a valid call right after answers at once (under {t.answer_at_once_seconds:g} s)",
            after_call.code == "OK" and after_call.seconds <= t.answer_at_once_seconds,
            f"{after_call.code} in {after_call.seconds * 1000:,.0f} ms",
        )
    return result


# --- policy attacks -------------------------------------------------------------------


def _offer(offer_id: str, eligible_when: str | None = None, events: list[str] | None = None) -> dict[str, object]:
    offer: dict[str, object] = {
        "id": offer_id,
        "name": f"Attack {offer_id}",
        "category": "attack",
        "events": events or ["atm_decline"],
        "value": 1.0,
        "prior": 0.1,
        "channels": ["atm_screen", "push"],
        "content": {"default": "attack"},
    }
    if eligible_when is not None:
        offer["eligible_when"] = eligible_when
    return offer


def attack_files(attack: str, good: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The policy set of one attack (the good set plus what attacks it) and what it is, in words.

    - ``huge``: 20,000 offers in 10 more files (4.1 MB of YAML, no one file over 0.5 MB);
    - ``exploding``: named conditions that each use the previous one twice, 16 levels: one rule
      that inlines to 65,536 copies of the first;
    - ``deep``: a short rule (3,005 characters) nested 3,000 deep (``- - - ... 1 < 0``), deeper than
      Python's parser recurses;
    - ``costly``: a valid rule that builds a 50 MB string every time it is evaluated, for every event;
    - ``big_file``: the 20,000 offers in one file.
    """
    files = dict(good)

    def dump(offers: list[dict[str, object]]) -> str:
        """One offer a line, each in JSON (which is YAML): quick for 20,000 of them."""
        return "offers:\n" + "".join(f"  - {json.dumps(offer)}\n" for offer in offers)

    if attack == "huge":
        for first in range(0, HUGE_OFFERS, HUGE_PER_FILE):  # files of a few hundred kB: no one file is large
            last = min(first + HUGE_PER_FILE, HUGE_OFFERS)
            files[f"attack-{first:05d}.yaml"] = dump([_offer(f"attack_{i:05d}") for i in range(first, last)])
        size = sum(len(text) for name, text in files.items() if name.startswith("attack-"))
        return files, f"{HUGE_OFFERS:,} offers in {len(files) - len(good)} files ({size / 1e6:.1f} MB)"
    if attack == "big_file":
        files["attack.yaml"] = dump([_offer(f"attack_{i:05d}") for i in range(HUGE_OFFERS)])
        return files, f"{HUGE_OFFERS:,} offers in one file ({len(files['attack.yaml']) / 1e6:.1f} MB)"
    if attack == "exploding":
        settings = next(name for name, text in files.items() if "\n  conditions:\n" in text)
        chain = ['    bomb0: "event.amount > 1"']
        chain += [f'    bomb{k}: "bomb{k - 1} and bomb{k - 1}"' for k in range(1, EXPLODING_LEVELS + 1)]
        files[settings] = files[settings].replace("\n  conditions:\n", "\n  conditions:\n" + "\n".join(chain) + "\n", 1)
        files["attack.yaml"] = dump([_offer("bomb", f"bomb{EXPLODING_LEVELS}")])
        return files, f"conditions doubling {EXPLODING_LEVELS} times (2^{EXPLODING_LEVELS} terms)"
    if attack == "deep":
        files["attack.yaml"] = dump([_offer("deep", "-" * DEEP_LEVELS + "1 < 0")])
        return files, f"a rule nested {DEEP_LEVELS:,} deep in {DEEP_LEVELS + 5:,} characters"
    if attack == "costly":
        files["attack.yaml"] = dump([_offer("costly", f"'x' * {COSTLY_BYTES} == 'y'", EVENT_TYPES)])
        return files, f"a rule building a {COSTLY_BYTES / 1e6:.0f} MB string per evaluation"
    raise ValueError(f"unknown policy attack {attack!r} (known: {', '.join(ATTACKS)})")


def _reloads(url: str) -> tuple[float, float, float]:
    """(failed reloads, loaded reloads, version served) from the server's metrics."""
    samples = scrape(url)
    return (
        metric_sum(samples, "nba_policy_reloads_total", result="failed"),
        metric_sum(samples, "nba_policy_reloads_total", result="loaded"),
        metric_sum(samples, "nba_policy_version"),
    )


async def _sequential(
    port: int,
    requests: list[pb.DecideRequest],
    seconds: float,
    tally: Tally,
    stop: threading.Event | None = None,
    minimum: float = 0.0,
) -> list[str]:
    """Decide one call at a time for ``seconds`` (or, after ``minimum``, until ``stop``): the versions answered."""
    versions: list[str] = []
    started = time.monotonic()
    async with open_channels(port) as (stub,):
        i = 0
        while time.monotonic() - started < seconds:
            if stop is not None and stop.is_set() and time.monotonic() - started >= minimum:
                break
            request = requests[i % len(requests)]
            i += 1
            begun = time.monotonic()
            try:
                response = await stub.Decide(request, timeout=2.0)
            except grpc.aio.AioRpcError as exc:
                tally.calls.append(Call(begun, time.monotonic(), exc.code().name))
                continue
            tally.calls.append(Call(begun, time.monotonic(), "OK", response.decision_id))
            versions.append(response.policy_version)
    return versions


def _serve_good(s: Stack, good: Mapping[str, str], progress: Progress) -> None:
    """Publish the good set again and have the server serve it: at once if it can, else a new server."""
    version = PolicyStore(s.client).publish(good, author="nba chaos", message="restore after an attack")
    probe_request = s.requests[0]

    def serving() -> bool:
        call = asyncio.run(probe(s.nba.port, probe_request, 1.0))
        if call.code != "OK":
            return False
        return _reloads(s.nba.metrics_url)[2] == version

    if poll(serving, 3.0, 0.1) is None:
        progress("  the server is still busy with the attack: killing it (SIGKILL) and starting another")
        s.restart_nba()
        asyncio.run(warm(s.nba.port, s.requests))


def policy_attack(config: ChaosConfig, progress: Progress) -> FaultResult:
    """Each attack of ``attacks`` published with :meth:`PolicyStore.publish` (which trusts its caller:
    ``nba policy publish`` validates first) while Decide is called one call at a time.

    The replica should refuse it (``nba_policy_reloads_total{result="failed"}``) within
    ``attack_window``, never serve it, and keep Decide's p50 within ``attack_p50_ratio`` of
    the p50 just before.
    """
    t = config.targets
    result = FaultResult(
        "policy_attack",
        "policy attacks behind validation",
        load="; ".join(config.attacks) + ", Decide one call at a time",
        recovery="to refuse (slowest)",
    )
    good = dict(load_policy_dir(config.policies).files)
    with stack(config, progress, "policy-attack") as s:
        asyncio.run(warm(s.nba.port, s.requests))
        result.rss_before, result.fds_before = s.nba.stats().values()
        tally = Tally()
        slowest: float | None = 0.0
        measure = min(1.0, config.attack_window / 4)
        """Seconds of Decide calls before each attack, and at least as long after it."""
        for attack in config.attacks:
            files, what = attack_files(attack, good)
            before = Tally()
            asyncio.run(_sequential(s.nba.port, s.requests, measure, before))
            p50_before = quantile((c.seconds for c in before.calls if c.code == "OK"), 0.5) or 0.0
            failed_before, _, _ = _reloads(s.nba.metrics_url)
            during = Tally()
            decided = threading.Event()
            outcome: dict[str, float | str] = {}

            def watch(
                version: int,
                failed_before: float = failed_before,
                decided: threading.Event = decided,
                outcome: dict[str, float | str] = outcome,
            ) -> None:
                started = time.monotonic()
                while time.monotonic() - started < config.attack_window and not decided.is_set():
                    try:
                        failed, _, served = _reloads(s.nba.metrics_url)
                    except OSError:
                        served, failed = 0.0, failed_before
                    if failed > failed_before or served == version:
                        outcome["verdict"] = "refused" if failed > failed_before else "served"
                        outcome["seconds"] = time.monotonic() - started
                        decided.set()
                        return
                    time.sleep(0.05)  # polling the server's metrics

            version = PolicyStore(s.client).publish(files, author="nba chaos", message=f"attack: {attack}")
            progress(f"  attack {attack}: {what}, published as version {version} past validation")
            watcher = threading.Thread(target=watch, args=(version,), name="chaos-policy-watch", daemon=True)
            watcher.start()
            versions = asyncio.run(
                _sequential(s.nba.port, s.requests, config.attack_window, during, decided, minimum=measure)
            )
            decided.set()
            watcher.join(10)
            tally.calls += during.calls
            p50 = quantile((c.seconds for c in during.calls if c.code == "OK"), 0.5)
            p99 = quantile((c.seconds for c in during.calls if c.code == "OK"), 0.99)
            served = str(version) in versions or outcome.get("verdict") == "served"
            refused = outcome.get("verdict") == "refused"
            seconds = float(outcome["seconds"]) if refused else None
            slowest = None if seconds is None or slowest is None else max(slowest, seconds)
            codes = during.codes()
            result.details[attack] = {
                "what": what,
                "outcome": outcome.get("verdict", "undecided"),
                "seconds": outcome.get("seconds"),
                "p50_before_seconds": p50_before,
                "p50_during_seconds": p50,
                "p99_during_seconds": p99,
                "calls": len(during.calls),
                "codes": codes,
            }
            verdict = (
                f"refused in {seconds:.2f} s"
                if refused
                else "served"
                if served
                else f"neither refused nor served after {config.attack_window:g} s"
            )
            result.check(f"{attack}: refused, never served", refused and not served, f"{what}: {verdict}")
            result.check(
                f"{attack}: Decide p50 at most {t.attack_p50_ratio:g}× the p50 before",
                p50 is not None and p50 <= t.attack_p50_ratio * p50_before and set(codes) == {"OK"},
                f"p50 {1000 * (p50 or 0):,.2f} ms during ({len(during.calls):,} calls, "
                f"p99 {1000 * (p99 or 0):,.1f} ms, {codes}) vs {1000 * p50_before:,.2f} ms before",
            )
            if not refused:
                _serve_good(s, good, progress)
        result.codes = tally.codes()
        result.recovery_seconds = slowest
        if slowest is None:
            result.recovery = "not all refused"
        result.rss_after, result.fds_after = s.nba.stats().values()
        if s.restarts:
            result.details["servers_killed"] = s.restarts
            result.rss_after = result.fds_after = None
    return result
