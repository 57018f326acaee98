"""Admission control: how many decisions one process takes on, in what order, and which it refuses
before doing any work.

A process decides about 900 times a second (2-core reference machine). Without a bound,
every call it accepts competes for that CPU: under overload all of them slow down together,
callers give up, and the work done for them (decisions recorded, caps and budgets used) is
wasted. Here:

* at most ``limit`` decisions are in progress (running or waiting their turn); one more is
  refused at once with :class:`Overloaded` (RESOURCE_EXHAUSTED) and a retry hint;
* ``at_once`` of them run at the same time (their Redis round trips overlap), the others wait
  their turn: in arrival order while the queue can be served within the deadlines callers give,
  newest first once it holds more work than :data:`LIFO_SHARE` of them. Past that point a
  first-come queue serves only calls that have waited nearly their whole deadline (answered late,
  or refused as too late); newest first serves calls that still have their deadline ahead of them,
  at full throughput, while the oldest wait until their callers give up (costing nothing);
* a call whose deadline is shorter than the time it can expect to take now is refused with
  :class:`TooLate` (DEADLINE_EXCEEDED) before any work, and again if its turn comes too late;
  one without a deadline waits at most :data:`MAX_WAIT_SECONDS`, then is refused as overloaded;
* while the server drains, new decisions are refused with :class:`Draining` (UNAVAILABLE).

The expected service time is measured: an exponentially weighted average of the time a
decision holds its place among those running.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from nba_service.observability.metrics import Metrics

__all__ = ["Admission", "Draining", "Overloaded", "Refused", "TooLate"]

INITIAL_SERVICE_SECONDS = 0.005
"""The service time assumed before any decision was measured."""
EWMA_WEIGHT = 0.05
"""Weight of the newest measurement in the running averages (about the last 20 decisions)."""
MIN_RETRY_AFTER = 0.05
MAX_RETRY_AFTER = 10.0
LIFO_SHARE = 0.5
"""Turns go to the newest first once the waiting decisions are more work than this share of the time callers
allow (their remaining deadline on arrival, averaged): a first-come queue would make them late."""
MIN_FINISH_MARGIN = 0.050
"""The least deadline a caller must still have for its decision to be recorded. With 10 ms, bursts of 5,000 and
10,000 calls on the 2-core machine left 1-3% of the decisions recorded after their caller had given up (the
answer leaves the process later than the servicer returns it); with 20 ms, on the same machine when it ran
1.75x slower, 4.8% (`make chaos`, 2026-12-01). A caller with 50 ms left has waited most of its deadline in the
queue already."""
MAX_WAIT_SECONDS = 5.0
"""The longest a decision waits for its turn (one without a deadline, under sustained overload)."""


class Refused(Exception):
    """A decision refused before any work: nothing was read, decided or recorded."""


class Overloaded(Refused):
    """``limit`` decisions are in progress already (RESOURCE_EXHAUSTED); ``retry_after``: a hint in seconds."""

    def __init__(self, in_progress: int, retry_after: float) -> None:
        super().__init__(
            f"overloaded: {in_progress} decisions in progress, the most this server takes on; nothing was done, "
            f"retry after {retry_after * 1000:.0f} ms (trailing metadata retry-after-ms)"
        )
        self.retry_after = retry_after


class TooLate(Refused):
    """The caller's deadline is shorter than the time the decision is expected to take (DEADLINE_EXCEEDED)."""

    def __init__(self, remaining: float, expected: float) -> None:
        super().__init__(
            f"the deadline leaves {remaining * 1000:.0f} ms, less than the {expected * 1000:.0f} ms a decision "
            "takes on this server now (its queue included); nothing was done"
        )


class Draining(Refused):
    """The server is shutting down (UNAVAILABLE: another replica, or this one restarted, will answer)."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; nothing was done, retry (another replica answers)")


class Admission:
    """The decisions in progress in one process; one instance per server, used from its event loop only."""

    def __init__(self, limit: int, at_once: int, metrics: Metrics | None = None) -> None:
        if not 1 <= at_once <= limit:
            raise ValueError(f"at_once ({at_once}) must be between 1 and limit ({limit})")
        self.limit = limit
        self.at_once = at_once
        self.in_progress = 0
        """Decisions taken on and not finished: running or waiting."""
        self.running = 0
        self.running_later = 0
        """Running decisions that were taken on with ``later`` (a stream's)."""
        self.later_cap = max(1, at_once // 2)
        self.queued = 0
        """Decisions waiting for their turn (``_waiting`` may also hold cancelled ones)."""
        self.deferred = 0
        """Streams' decisions waiting for theirs."""
        self._waiting: collections.deque[tuple[asyncio.Future[None], float]] = collections.deque()
        """Futures of the decisions waiting for a turn, oldest first, with the time each started waiting."""
        self._later: collections.deque[tuple[asyncio.Future[None], float]] = collections.deque()
        """The same for decisions that go after them (a DecideStream's messages), in arrival order."""
        self.service = INITIAL_SERVICE_SECONDS
        """Seconds a decision holds its turn, averaged."""
        self.patience = 1.0
        """Seconds callers allow a decision (their remaining deadline on arrival), averaged."""
        self.finish = 0.001
        """Seconds from the check before a decision is recorded to its answer being ready, averaged."""
        self.draining = False
        self._refusals = 0.0
        self._refusals_at = time.monotonic()
        self._metrics = metrics
        if metrics is not None:
            metrics.decisions_limit.set(limit)
            self._refused = {r: metrics.decisions_refused.labels(r) for r in ("overloaded", "too_late", "draining")}

    # --- estimates -------------------------------------------------------------------------------

    def _backlog(self) -> float:
        """Seconds of work waiting for a turn."""
        return self.queued * self.service / self.at_once

    def _newest_first(self, backlog: float) -> bool:
        return backlog > LIFO_SHARE * self.patience

    def expected_seconds(self) -> float:
        """How long a decision taken on now should take: its own time, and its wait behind those queued
        while turns go in arrival order (newest first, it waits for the next turn only)."""
        backlog = self._backlog()
        return self.service if self._newest_first(backlog) else backlog + self.service

    def retry_after(self) -> float:
        """When a refused caller should try again: the time the work in progress takes to drain, longer
        when many are being refused (so retries spread out instead of coming back together)."""
        drain = self.in_progress * self.service / self.at_once
        per_second = self.at_once / max(self.service, 1e-6)
        pressure = 1.0 + self._refusal_rate() / per_second
        return min(max(drain * pressure, MIN_RETRY_AFTER), MAX_RETRY_AFTER)

    def _refusal_rate(self) -> float:
        """Refusals per second lately (decaying with a time constant of one second)."""
        now = time.monotonic()
        self._refusals *= 2.0 ** -(now - self._refusals_at)
        self._refusals_at = now
        return self._refusals

    def finish_margin(self) -> float:
        """The deadline a caller must still have for its decision to be recorded: four times the usual
        time from that check to the answer leaving, half the usual time a decision takes (the event loop
        is slow when busy), and at least :data:`MIN_FINISH_MARGIN` (the answer must also leave a busy process
        and cross the network)."""
        return max(4.0 * self.finish, 0.5 * self.service, MIN_FINISH_MARGIN)

    def observe_finish(self, seconds: float) -> None:
        self.finish += EWMA_WEIGHT * (seconds - self.finish)

    # --- taking a turn ---------------------------------------------------------------------------

    def _refuse(self, reason: str) -> None:
        if reason == "overloaded":
            self._refusal_rate()
            self._refusals += 1.0
        if self._metrics is not None:
            self._refused[reason].inc()

    async def acquire(self, time_remaining: Callable[[], float | None], later: bool = False) -> None:
        """Take a turn (waiting for it if needed) or raise :class:`Refused`.

        ``time_remaining`` gives the caller's remaining deadline in seconds (None: no deadline). ``later``:
        a stream's message, which gets a turn only when no Decide call waits, and at most half of the
        ``at_once`` turns (streams keep a decision in progress each; they must not make the callers of
        Decide wait behind them). Every successful call must be paired with :meth:`release` (same ``later``).
        """
        if self.draining:
            self._refuse("draining")
            raise Draining()
        if self.in_progress >= self.limit:
            self._refuse("overloaded")
            raise Overloaded(self.in_progress, self.retry_after())
        remaining = time_remaining()
        if remaining is not None:
            self.patience += EWMA_WEIGHT * (remaining - self.patience)
            expected = self.expected_seconds()
            if remaining < expected:
                self._refuse("too_late")
                raise TooLate(remaining, expected)
        self.in_progress += 1
        if self._metrics is not None:
            self._metrics.decisions_in_progress.inc()
        if self.running < self.at_once and not self.queued:
            if not later:
                self.running += 1
                return
            if not self.deferred and self.running_later < self.later_cap:
                self.running += 1
                self.running_later += 1
                return
        waiter = asyncio.get_running_loop().create_future()
        if later:
            self._later.append((waiter, time.monotonic()))
            self.deferred += 1
        else:
            self._waiting.append((waiter, time.monotonic()))
            self.queued += 1
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._free(later)  # handed the turn just as the caller left: pass it on
            elif not waiter.done() or waiter.cancelled():
                if later:
                    self.deferred -= 1
                else:
                    self.queued -= 1
            self._leave()
            raise
        remaining = time_remaining()
        if remaining is not None and remaining < self.service:
            self._free(later)
            self._leave()
            self._refuse("too_late")
            raise TooLate(remaining, self.service)

    def release(self, seconds: float, later: bool = False) -> None:
        """End a turn taken with :meth:`acquire` that lasted ``seconds``."""
        self.service += EWMA_WEIGHT * (seconds - self.service)
        self._free(later)
        self._leave()

    def _leave(self) -> None:
        self.in_progress -= 1
        if self._metrics is not None:
            self._metrics.decisions_in_progress.dec()

    def _free(self, later: bool) -> None:
        """A turn ends: hand it to a waiting decision, if any: the oldest while the queue is short, the
        newest once it is long; a stream's only when no call waits and streams hold less than their share;
        and refuse those that have waited :data:`MAX_WAIT_SECONDS`."""
        self.running_later -= later
        waiting, deferred = self._waiting, self._later
        now = time.monotonic()
        for queue in (waiting, deferred):
            if queue and now - queue[0][1] > MAX_WAIT_SECONDS:
                self._expire(queue is deferred, now)
        newest_first = self._newest_first(self._backlog())
        while waiting:
            waiter = (waiting.pop() if newest_first else waiting.popleft())[0]
            if not waiter.done():
                self.queued -= 1
                waiter.set_result(None)
                return
        while deferred and self.running_later < self.later_cap:
            waiter = deferred.popleft()[0]
            if not waiter.done():
                self.deferred -= 1
                self.running_later += 1
                waiter.set_result(None)
                return
        self.running -= 1

    def _expire(self, later: bool, now: float) -> None:
        """Refuse the decisions that have waited longer than :data:`MAX_WAIT_SECONDS` (as overloaded)."""
        queue = self._later if later else self._waiting
        while queue and now - queue[0][1] > MAX_WAIT_SECONDS:
            waiter = queue.popleft()[0]
            if not waiter.done():
                if later:
                    self.deferred -= 1
                else:
                    self.queued -= 1
                self._refuse("overloaded")
                waiter.set_exception(Overloaded(self.in_progress, self.retry_after()))
