"""Exclusive runs: one process at a time runs (or resumes) a campaign, and one ``nba scheduler`` is active.

Both are the learner's lock (:class:`~nba_service.store.outcome_stream.LearnerLock`: ``SET NX PX`` on a key of
the global slot, renewed by its owner while it works) on another key, renewed from a thread by a
:class:`LockKeeper` so a long batch (synchronous Redis round trips, the engine) never lets it lapse. A process
that dies stops renewing: its lock expires after its TTL and another process takes over (``nba campaign
resume``, a standby scheduler).

A run's lease (:func:`nba_service.store.keys.campaign_lease`) holds ``<host>:<pid>#<token>``: the token tells
two runners of one process apart; error messages show the ``<host>:<pid>``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import redis

from nba_service.store import keys
from nba_service.store.outcome_stream import LearnerLock

__all__ = ["LEASE_TTL_MS", "LockKeeper", "RunLease", "holder_name", "new_owner"]

log = logging.getLogger(__name__)

LEASE_TTL_MS = 15_000
"""A run's lease lapses this long after its process stopped renewing it (renewed every third of it)."""


def new_owner() -> str:
    """A lock owner unique to this holder: ``<host>:<pid>#<token>``."""
    return f"{socket.gethostname()}:{os.getpid()}#{os.urandom(4).hex()}"


def holder_name(owner: str | None) -> str:
    """The process part of an owner (``<host>:<pid>``), for messages."""
    return (owner or "").partition("#")[0] or "?"


class LockKeeper:
    """Renews a :class:`LearnerLock` from a daemon thread every third of its TTL.

    ``standby``: keep trying to take the lock while another owner holds it (the scheduler); otherwise the
    keeper stops at the first renewal that finds the lock taken by someone else or lapsed, and :attr:`lost`
    is set (a run's lease). ``on_change(held)`` is called when the lock is taken or lost.
    """

    def __init__(
        self,
        lock: LearnerLock,
        *,
        standby: bool = False,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.lock = lock
        self.standby = standby
        self.on_change = on_change
        self.held = False
        self.lost = threading.Event()
        """Set when a lock held is lost (renewal found another owner, or Redis did not answer for a TTL)."""
        self.changed = threading.Event()
        """Set at every change of :attr:`held` (for whoever waits on it)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = 0.0

    @property
    def interval(self) -> float:
        return self.lock.ttl_ms / 3000

    def start(self, *, held: bool = False) -> None:
        """Start renewing (``held``: the lock was just taken by the caller)."""
        if held:
            self._last_ok = time.monotonic()
            self._set(True)
        self._thread = threading.Thread(target=self._loop, name=f"nba-lock-{self.lock.key}", daemon=True)
        self._thread.start()

    def _set(self, held: bool) -> None:
        if held == self.held:
            return
        self.held = held
        if not held:
            self.lost.set()
        self.changed.set()
        if self.on_change is not None:
            self.on_change(held)

    def _loop(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()  # before the call: the lock lives its TTL from no later than this
            try:
                ok = self.lock.hold()
                if ok:
                    self._last_ok = asked
                self._set(ok)
            except redis.RedisError as exc:
                log.warning("lock %s not renewed: %s", self.lock.key, exc)
                # Given up one interval before it lapses in Redis: the holder learns it between two batches at
                # the latest, before another process can take the lock.
                if self.held and time.monotonic() - self._last_ok > self.lock.ttl_ms / 1000 - self.interval:
                    self._set(False)
            if self.lost.is_set() and not self.standby:
                return
            self._stop.wait(self.interval)

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; ``release``: delete the lock if still ours (else it lapses after its TTL)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if release and self.held:
            try:
                self.lock.release()
            except redis.RedisError as exc:
                log.warning("lock %s not released (it lapses by itself): %s", self.lock.key, exc)
        self.held = False


class RunLease:
    """The lease of one process on a campaign: taken before a run starts or resumes, renewed while it works,
    released when it ends (suspended, done or failed)."""

    def __init__(self, client: redis.Redis, campaign_id: str, ttl_ms: int = LEASE_TTL_MS) -> None:
        self.campaign_id = campaign_id
        self.lock = LearnerLock(client, new_owner(), ttl_ms, key=keys.campaign_lease(campaign_id))
        self.keeper = LockKeeper(self.lock)

    def take(self) -> str | None:
        """Take the lease and start renewing it; None when taken, else the holder's ``<host>:<pid>``."""
        if not self.lock.hold():
            return holder_name(self.lock.holder())
        self.keeper.start(held=True)
        return None

    @property
    def lost(self) -> bool:
        return self.keeper.lost.is_set()

    def release(self) -> None:
        self.keeper.stop(release=True)
