"""A campaign run over several processes (``nba campaign run --workers N``): each owns a share of the buckets.

The 256 buckets are split by the first hex digit of their tag (:data:`nba_service.store.keys.BUCKET_TAGS`:
bucket ``b``'s tag starts with ``f"{b:02x}"``): share ``i`` of ``n`` scans ``SCAN MATCH
nba:{[<digits>]*}:c:*:profile`` with the digits ``i, i + n, ...`` (at most 16 shares), so no customer is in two
shares. Each worker is a process forked from the run's process (the policy, the models and the imports are
there already), with its own Redis connections, engine and exploration; it runs the batches of
:class:`~nba_service.campaigns.run.CampaignRunner` over its share and sends its figures and scan cursors to
the run's process after each batch. That process alone writes the run's hash: its cursors are one per node
and share (``<node>|<i>/<n>``), so the checkpoint of every share is kept and ``resume`` continues each share
where it stopped, with as many workers as the run started with.

**Exact volume limits across workers.** A limited name (a channel of ``max_per_channel``, ``*total`` for
``max_total``, ``*limit`` for ``--limit``) has two counters in the run's hash: ``u:<name>`` the units reserved
and ``d:<name>`` the units used (delivered, or decided for ``*limit``). A worker reserves units in chunks
(``HINCRBY``, the excess over the limit given back at once); its deliveries add to ``d`` in the same pipelined
write as their ``XADD`` (so ``d`` is right after a crash too: a resume starts from it, nothing reserved), and
after each batch it gives back the units it did not use. When no unit is left to reserve, the name is closed
only once every reserved unit is used (``d`` reaches the limit): until then another worker holds units it may
give back, so the worker records what it decided so far (it then holds none), and waits for units or for the
close. A waiting worker holds nothing, so two workers never wait for each other. A channel therefore closes
when its limit is delivered, as in a one-worker run, and the totals are the limits exactly. A worker stopped
while it waits (the run suspended, ended by ``max_total`` or ``--limit``, or another worker failed) releases
the claims of the customers it did not decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from nba_service.store import keys

if TYPE_CHECKING:
    from nba_service.campaigns.run import CampaignRunner, RunReport
    from nba_service.dataplane import DataPlane
    from nba_service.policies.snapshot import PolicySnapshot
    from nba_service.settings import Settings
    from nba_service.store.connect import RedisTarget

__all__ = [
    "MAX_WORKERS",
    "Allowance",
    "MustWait",
    "WorkersStopped",
    "run_shares",
    "share_names",
    "share_of",
    "share_pattern",
]

MAX_WORKERS = 16
"""Shares are split by the first hex digit of the bucket tags: at most 16."""
_DIGITS = "0123456789abcdef"
CHUNK = 256
"""Most units of a name a worker reserves at once."""
POLL_SECONDS = 0.02


def share_pattern(share: int, shares: int) -> str:
    """The ``SCAN MATCH`` pattern of the profiles of share ``share`` of ``shares``.

    >>> share_pattern(1, 2)
    'nba:{[13579bdf]*}:c:*:profile'
    """
    return f"{keys.PREFIX}{{[{_DIGITS[share::shares]}]*}}:c:*:profile"


def share_names(nodes: list[str], shares: int) -> list[str]:
    """The cursor names of a run over ``shares`` shares: ``<node>|<i>/<n>``."""
    return [f"{node}|{i}/{shares}" for i in range(shares) for node in nodes]


def share_of(name: str) -> tuple[str, int, int] | None:
    """(node, share, shares) of a cursor name; None for a one-process run's (a node's name alone).

    >>> share_of("redis|1/2"), share_of("redis")
    (('redis', 1, 2), None)
    """
    node, sep, share = name.rpartition("|")
    if not sep:
        return None
    index, _, count = share.partition("/")
    return node, int(index), int(count)


class MustWait(Exception):
    """No unit of ``name`` is left to reserve, but other workers hold some: record, then :meth:`Allowance.wait`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class WorkersStopped(Exception):
    """The run's process asked its workers to stop (suspended, a limit reached elsewhere, a worker failed)."""


class Allowance:
    """A worker's units of the run's limited names (see the module's doc)."""

    def __init__(self, client: Any, run_key: str, limits: Mapping[str, int], stop: Any) -> None:
        self._redis = client
        self._key = run_key
        self.limits = dict(limits)
        self._stop = stop
        self.held: Counter[str] = Counter()
        """Units reserved and not taken yet."""
        self.taken: Counter[str] = Counter()
        """Units taken since the last :meth:`settle` (used, unless the decision is not recorded)."""
        self.closed: set[str] = set()

    @staticmethod
    def reset(client: Any, run_key: str, names: list[str]) -> None:
        """At the start of a run (or a resume): nothing reserved. ``d`` is what the run's deliveries added (in
        their own pipelined write: see :meth:`used_commands`), so it holds after a crash; ``*limit`` counts this
        invocation's decisions only."""
        if not names:
            return
        used = client.hmget(run_key, [f"d:{n}" for n in names])
        mapping = {}
        for name, value in zip(names, used, strict=True):
            n = 0 if name == "*limit" else int(value or 0)
            mapping[f"u:{name}"] = mapping[f"d:{name}"] = str(n)
        client.hset(run_key, mapping=mapping)

    def used_commands(self, used: Mapping[str, int]) -> list[tuple[Any, ...]]:
        """``HINCRBY`` of the ``d`` counters, sent with the deliveries themselves (never apart from them)."""
        return [("HINCRBY", self._key, f"d:{n}", used[n]) for n in self.limits if used.get(n) and n != "*limit"]

    def take(self, name: str, want: int = 1) -> bool:
        """Take a unit of ``name`` (reserving up to ``want`` at once): False once the name is closed (its limit
        used); :class:`MustWait` when other workers hold the units left."""
        if name not in self.limits:
            return True
        if self.held[name] > 0:
            self.held[name] -= 1
            self.taken[name] += 1
            return True
        if name in self.closed:
            return False
        limit = self.limits[name]
        chunk = max(1, min(want, CHUNK))
        reserved = int(self._redis.hincrby(self._key, f"u:{name}", chunk))
        back = min(max(0, reserved - limit), chunk)
        if back:
            self._redis.hincrby(self._key, f"u:{name}", -back)
        if chunk > back:
            self.held[name] += chunk - back - 1
            self.taken[name] += 1
            return True
        if int(self._redis.hget(self._key, f"d:{name}") or 0) >= limit:
            self.closed.add(name)
            return False
        raise MustWait(name)

    def untake(self, name: str) -> None:
        """Give a unit just taken back to this worker's reserve."""
        if name in self.limits:
            self.taken[name] -= 1
            self.held[name] += 1

    def settle(self, used: Mapping[str, int]) -> None:
        """After a batch (or part of one) is recorded and delivered (its ``d`` counted with the deliveries):
        ``used`` units of each name are used; the others are given back."""
        names = [n for n in self.limits if self.held[n] or self.taken[n] or used.get(n)]
        if not names:
            return
        pipe = self._redis.pipeline(transaction=True)  # one hash: atomic on a cluster too
        for name in names:
            n = used.get(name, 0)
            if name == "*limit":
                pipe.hincrby(self._key, f"d:{name}", n)
            pipe.hincrby(self._key, f"u:{name}", -(self.held[name] + self.taken[name] - n))
        pipe.execute()
        self.held.clear()
        self.taken.clear()

    async def wait(self, name: str) -> None:
        """Until a unit of ``name`` is given back or every unit is used (this worker holding none)."""
        limit = self.limits[name]
        while True:
            if self._stop.is_set() or _orphaned():
                raise WorkersStopped("stopped by the run's process")
            reserved, used = self._redis.hmget(self._key, f"u:{name}", f"d:{name}")
            if int(reserved or 0) < limit or int(used or 0) >= limit:
                return
            await asyncio.sleep(POLL_SECONDS)


def limits_of(runner: CampaignRunner, limit: int | None) -> dict[str, int]:
    """The run's limited names and their limits."""
    out = dict(runner.campaign.max_per_channel)
    if runner.campaign.max_total is not None:
        out["*total"] = runner.campaign.max_total
    if limit is not None:
        out["*limit"] = limit
    return out


def _figures(report: RunReport) -> dict[str, Any]:
    return {
        "scanned": report.scanned,
        "in_segment": report.in_segment,
        "decided": report.decided,
        "delivered": dict(report.delivered),
        "suppressed": dict(report.suppressed),
        "by_offer": dict(report.by_offer),
    }


@dataclasses.dataclass(slots=True)
class _Share:
    index: int
    process: Any
    conn: Any
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    ended: bool = False
    """Sent its last message (done, stopped or failed)."""


def _apply(report: RunReport, base: dict[str, Any], shares: list[_Share]) -> None:
    """The run's figures: those at the start plus every share's."""
    report.scanned = base["scanned"] + sum(s.figures.get("scanned", 0) for s in shares)
    report.in_segment = base["in_segment"] + sum(s.figures.get("in_segment", 0) for s in shares)
    report.decided = base["decided"] + sum(s.figures.get("decided", 0) for s in shares)
    for name in ("delivered", "suppressed", "by_offer"):
        total: Counter[str] = Counter(base[name])
        for share in shares:
            total.update(share.figures.get(name, {}))
        setattr(report, name, total)


async def run_shares(
    runner: CampaignRunner, snapshot: PolicySnapshot, report: RunReport, limit: int | None
) -> RunReport:
    """Run (or resume) ``report``'s shares, one forked worker process each; the run's hash is written here."""
    from nba_service.campaigns.run import DONE, SUSPENDED, RunStateError

    if runner.target is None:
        raise RunStateError("a run over several workers needs the Redis target and settings of the command")
    counts = {share_of(name)[2] for name in report.cursors if share_of(name) is not None}  # type: ignore[index]
    (shares,) = counts
    run_key = keys.campaign_run(report.campaign, report.run_id)
    limits = limits_of(runner, limit)
    Allowance.reset(runner._redis, run_key, list(limits))
    base = _figures(report)
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    ending = context.Event()
    """Set with ``stop`` when the run ends (a limit reached): a worker stopped mid-batch reports what it did."""
    workers: list[_Share] = []
    for index in range(shares):
        names = [n for n, c in report.cursors.items() if c >= 0 and share_of(n)[1] == index]  # type: ignore[index]
        if not names:
            continue
        parent_end, child_end = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker,
            args=(runner, report, {n: report.cursors[n] for n in names}, index, limits, child_end, stop, ending),
            name=f"nba-campaign-{index}",
            daemon=True,
        )
        process.start()
        child_end.close()
        workers.append(_Share(index, process, parent_end))
    error = ""
    ended_by, channels_closed, suspended = "", False, False
    try:
        while not all(w.ended for w in workers):
            waiting = [w.conn for w in workers if not w.ended] + [w.process.sentinel for w in workers if not w.ended]
            ready = await asyncio.to_thread(multiprocessing.connection.wait, waiting, 0.5)
            for worker in workers:
                if worker.ended:
                    continue
                if worker.conn in ready:
                    try:
                        message = worker.conn.recv()
                    except EOFError:
                        message = ("error", f"worker {worker.index} died (exit code {worker.process.exitcode})")
                elif worker.process.sentinel in ready and not worker.conn.poll():
                    message = ("error", f"worker {worker.index} died (exit code {worker.process.exitcode})")
                else:
                    continue
                kind = message[0]
                if kind == "batch":
                    _, cursors, figures, ended, stop_run, closed = message
                    worker.figures = figures
                    report.cursors.update(cursors)
                    _apply(report, base, workers)
                    if stop_run:
                        ended_by = ended_by or ended
                        ending.set()
                        stop.set()
                    channels_closed = channels_closed or closed
                    runner.store.save(report)
                    if runner.metrics is not None:
                        runner.metrics.observe(report)
                    if runner.progress is not None:
                        runner.progress(report)
                    if not suspended and runner.store.status(report.campaign, report.run_id) == SUSPENDED:
                        suspended = True
                        stop.set()
                elif kind == "done":
                    worker.ended = True
                else:  # an error: the other workers stop after their batch
                    worker.ended = True
                    error = error or message[1]
                    stop.set()
    finally:
        stop.set()
        for worker in workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
    if error:
        runner.store.save(report)
        raise RunStateError(f"{error}; `nba campaign resume {report.campaign}` continues the run")
    if suspended and not ended_by:
        report.status = SUSPENDED
        runner.store.save(report)
        return report
    if ended_by:
        report.ended = ended_by
        report.cursors = dict.fromkeys(report.cursors, -1)
    elif channels_closed and any(c >= 0 for c in report.cursors.values()):
        report.ended = "every channel reached its limit"
        report.cursors = dict.fromkeys(report.cursors, -1)
    report.status = DONE
    runner.store.save(report)
    return report


def _worker(
    parent: CampaignRunner,
    report: RunReport,
    cursors: dict[str, int],
    index: int,
    limits: dict[str, int],
    conn: Any,
    stop: Any,
    ending: Any,
) -> None:
    """A worker process (forked): its share's batches, a message to the run's process after each."""
    global _PARENT_PID
    _PARENT_PID = os.getppid()
    try:
        asyncio.run(_work(parent, report, cursors, index, limits, conn, stop, ending))
        conn.send(("done",))
    except WorkersStopped:
        with contextlib.suppress(OSError):  # the run's process may be gone (killed): nobody to tell
            conn.send(("done",))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"worker {index}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


_PARENT_PID = 0
"""In a worker: the run's process that forked it."""


def _orphaned() -> bool:
    """In a worker: the run's process is gone (killed): the worker stops before its next batch or wait, so it
    cannot deliver units a resumed run counts as free again."""
    return _PARENT_PID != 0 and os.getppid() != _PARENT_PID


@contextlib.asynccontextmanager
async def _forked_session(parent: CampaignRunner, index: int) -> AsyncIterator[tuple[DataPlane, Any]]:
    """The run's data plane as forked (its policy and models, nothing loaded again) with connections of this
    process and exploration streams of its own (a seeded run: the seed plus the worker's share)."""
    from nba_service.dataplane import _explorer
    from nba_service.store.connect import clients, script_connection_for
    from nba_service.store.state import StateStore

    dataplane = parent.dataplane
    target: RedisTarget = parent.target  # type: ignore[assignment]
    settings: Settings = dataplane.settings
    if settings.seed is not None:
        settings = dataclasses.replace(settings, seed=settings.seed + 7919 * (index + 1))
    for engine, stream in ((dataplane.engine, 0), (dataplane.rules_engine, 0), (dataplane.challenger_engine, 1)):
        engine.explorer = _explorer(settings, stream)
    dataplane._split = np.random.default_rng(None if settings.seed is None else settings.seed + 2)
    async_redis, sync_redis = clients(target)
    dataplane.state = StateStore(
        async_redis,
        decision_ttl_seconds=settings.decision_ttl_seconds,
        journey_max_events=settings.journey_max_events,
        url=target.url,
        scripts=script_connection_for(async_redis, target.url),
    )
    try:
        yield dataplane, sync_redis
    finally:
        await dataplane.state.aclose()
        await async_redis.aclose()
        sync_redis.close()


async def _work(
    parent: CampaignRunner,
    report: RunReport,
    cursors: dict[str, int],
    index: int,
    limits: dict[str, int],
    conn: Any,
    stop: Any,
    ending: Any,
) -> None:
    from nba_service.campaigns.plan import campaign_snapshot
    from nba_service.campaigns.run import CampaignRunner, RunReport

    async with _forked_session(parent, index) as (dataplane, client):
        snapshot = parent.dataplane.snapshot
        assert snapshot is not None
        runner = CampaignRunner(
            dataplane, client, parent.campaign, batch_size=parent.batch_size, export_dir=parent.export_dir
        )
        run_key = keys.campaign_run(report.campaign, report.run_id)
        allowance = Allowance(client, run_key, limits, stop)
        runner._allow = allowance
        mine = RunReport(
            campaign=report.campaign,
            run_id=report.run_id,
            policy_version=report.policy_version,
            started=report.started,
            cursors=dict(cursors),
        )
        closed = set()
        for channel in runner.campaign.max_per_channel:
            if int(client.hget(run_key, f"d:{channel}") or 0) >= limits[channel]:
                closed.add(channel)
                allowance.closed.add(channel)
        plan = campaign_snapshot(snapshot, runner.campaign, closed)
        stop_run = False
        while plan is not None and not stop_run and any(c >= 0 for c in mine.cursors.values()):
            for name in [n for n, c in mine.cursors.items() if c >= 0]:
                if stop.is_set() or _orphaned():
                    return
                node, share, shares = share_of(name)  # type: ignore[misc]
                runner._match = share_pattern(share, shares)
                next_cursor, found = runner._scan(node, mine.cursors[name])
                try:
                    plan, _, stop_run = await runner._batch(snapshot, plan, mine, found, None)
                except WorkersStopped:
                    if ending.is_set():  # the run ends: what this batch delivered before the stop counts
                        conn.send(("batch", dict(mine.cursors), _figures(mine), mine.ended, True, False))
                    raise
                mine.cursors[name] = -1 if next_cursor == 0 else next_cursor
                conn.send(("batch", dict(mine.cursors), _figures(mine), mine.ended, stop_run, plan is None))
                if stop_run or plan is None:
                    break
