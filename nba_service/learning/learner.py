"""The learner: reads outcomes from the stream, teaches the models, publishes snapshots.

Runs in its own process (``nba learner``) or as a thread of ``nba serve``
(the embedded default). A Redis lock keeps one learner active at a time;
others wait and take over if it dies.

Exactly-once learning across restarts: the in-memory models always equal the
last published snapshot plus the entries read since, and those entries stay
pending in the consumer groups until the snapshot containing them is published
(with, per bucket, the last entry it learned; they are acknowledged right
after). A learner that starts, or takes over, loads the live snapshot and first
re-reads every pending entry, acknowledging without learning again those the
live snapshot already has (:mod:`nba_service.store.outcome_stream`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import redis

from nba_service.learning.guard import ChallengerGuard
from nba_service.learning.models import ModelBank
from nba_service.store.model_store import ModelStore
from nba_service.store.outcome_stream import EntryRef, LearnerLock, OutcomeEntry, OutcomeStream, entry_order

__all__ = ["Learner", "default_learner_name"]

log = logging.getLogger(__name__)


def _readable(data: bytes | None, what: str) -> bytes | None:
    """``data`` if this version of nba can read it; None (start from the priors) for an older format."""
    if not data:
        return None
    try:
        ModelBank.from_bytes(data)
    except ValueError as exc:
        log.warning("%s cannot be read (%s); learning starts from the offers' priors", what, exc)
        return None
    return data


def default_learner_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Learner:
    """Consume outcomes, learn, publish model versions every N outcomes or T seconds."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        name: str | None = None,
        snapshot_every: int = 200,
        snapshot_seconds: float = 5.0,
        batch: int = 500,
        block_ms: int = 500,
        attribution_check_seconds: float = 1.0,
        on_update: Callable[[int], None] | None = None,
        on_learned: Callable[[int], None] | None = None,
        on_redis_error: Callable[[], None] | None = None,
        challenger_learning_rate: float = 0.0,
    ) -> None:
        self.name = name or default_learner_name()
        self.snapshot_every = snapshot_every
        self.snapshot_seconds = snapshot_seconds
        self.batch = batch
        self.block_ms = block_ms
        self.attribution_check_seconds = attribution_check_seconds
        self.on_update = on_update
        """Called with each version this learner publishes."""
        self.on_learned = on_learned
        """Called with the number of outcomes of each batch learned."""
        self.on_redis_error = on_redis_error
        """Called on every Redis error the learner retries after (a metric)."""
        self._stream = OutcomeStream(client, self.name)
        self._models_store = ModelStore(client)
        self._lock = LearnerLock(client, self.name)
        self.models = ModelBank()
        self.challenger_learning_rate = challenger_learning_rate
        """Non-zero: also train a challenger (the same models with this learning rate) on every outcome."""
        self.challenger: ModelBank | None = None
        self.guard = ChallengerGuard()
        """The live trial's evidence (challenger minus champion), published with every version."""
        self.version: int | None = None
        self.learned = 0
        """Outcomes learned by this learner since it started (re-learned ones included)."""
        self._unacked: list[EntryRef] = []
        self._marks: dict[int, bytes] = {}
        """Per bucket, the last entry learned since the last publish."""
        self._published: dict[int, tuple[int, int]] = {}
        """Per bucket, the last entry the live version learned: pending entries up to it are not learned again."""
        self._active = False
        self._catching_up = True
        """Re-reading this consumer's pending entries; False once caught up."""
        self._last_snapshot = time.monotonic()
        self._last_expiry = 0.0

    # --- lifecycle -----------------------------------------------------------------

    def _activate(self) -> None:
        """Become the active learner: resume from the live snapshot, take over pending entries."""
        self._stream.ensure_group()
        self._reload()
        self._stream.claim_pending()
        self._active = True
        log.info(
            "learner %s active from model version %s (%d outcomes learned)",
            self.name,
            self.version,
            self.models.updates,
        )

    def _reload(self) -> None:
        live = self._models_store.live()
        data = _readable(self._models_store.load(), f"model version {live}")
        self.models = ModelBank.from_bytes(data) if data else ModelBank()
        if self.challenger_learning_rate:
            stored = _readable(self._models_store.load_challenger(), "the challenger") if data else None
            if stored:
                self.challenger = ModelBank.from_bytes(stored)
                self.guard = ChallengerGuard.from_json(self._models_store.load_guard())
            else:  # none yet, or just promoted: a new challenger, from the live models, at its own rate
                self.challenger = ModelBank.from_bytes(data) if data else ModelBank()
                self.challenger.set_learning_rate(self.challenger_learning_rate)
                self.guard = ChallengerGuard()
        self.version = live
        self._unacked = []
        self._marks = {}
        self._published = {b: entry_order(i) for b, i in self._models_store.watermarks().items()}
        self._catching_up = True
        self._stream.rewind()

    def step(self) -> int:
        """One round: hold the lock, expire due decisions, learn a batch, maybe publish. Returns outcomes learned."""
        if not self._lock.hold():
            self._active = False
            return 0
        if not self._active:
            self._activate()
        now = time.monotonic()
        if now - self._last_expiry >= self.attribution_check_seconds:
            self._last_expiry = now
            expired = self._stream.expire_due()
            if expired:
                log.info("%d decisions reached the end of their attribution window without an outcome", expired)
        entries: list[OutcomeEntry | EntryRef] = []
        if self._catching_up:
            entries = self._stream.read_pending(self.batch)
            if not entries:
                self._catching_up = False  # caught up with what the last learner left: now the new entries
        if not entries:
            entries = self._stream.read(self.batch, self.block_ms)
        learned = 0
        for entry in entries:
            if not isinstance(entry, OutcomeEntry):
                self._unacked.append(entry)  # trimmed from the stream: nothing to learn, acknowledge it
                continue
            self._unacked.append(entry.ref)
            published = self._published.get(entry.bucket)
            if published is not None and entry_order(entry.entry_id) <= published:
                continue  # the live version has it: published, and its learner stopped before acknowledging it
            self.models.learn(entry.offer_id, entry.channel, entry.features, entry.reward, entry.prior)
            if self.challenger is not None:
                self.challenger.learn(entry.offer_id, entry.channel, entry.features, entry.reward, entry.prior)
                self.guard.add(entry.trial, entry.reward)
            learned += 1
            self._marks[entry.bucket] = entry.entry_id
        self.learned += learned
        if len(self._unacked) >= self.snapshot_every or (
            self._unacked and time.monotonic() - self._last_snapshot >= self.snapshot_seconds
        ):
            self.publish()
        return learned

    def publish(self) -> int | None:
        """Publish the models as a new version, acknowledging what they learned.

        Returns the new version, or None when a rollback made this learner reload instead.
        """
        live = self._models_store.live()
        if live != self.version:
            # Someone rolled the models back: continue from that version, re-learning what
            # is still pending on top of it.
            log.warning("model version %s became live outside this learner; continuing from it", live)
            self._reload()
            return None
        self.version = self._models_store.publish(
            self.models.to_bytes(),
            self.models.updates,
            source=self.name,
            watermarks=self._marks,
            challenger=self.challenger.to_bytes() if self.challenger is not None else None,
            guard=self.guard.to_json() if self.challenger is not None else None,
        )
        self._published.update((b, entry_order(i)) for b, i in self._marks.items())
        self._stream.acknowledge(self._unacked)
        self._unacked = []
        self._marks = {}
        self._last_snapshot = time.monotonic()
        if self.on_update is not None:
            self.on_update(self.version)
        return self.version

    def run(self, stop: threading.Event, idle_seconds: float = 1.0) -> None:
        """Learn until ``stop`` is set, then publish what was learned and release the lock."""
        while not stop.is_set():
            try:
                learned = self.step()
                if learned and self.on_learned is not None:
                    self.on_learned(learned)
                if not learned and not self._active:
                    stop.wait(idle_seconds)  # another learner is active: check again later
            except redis.RedisError as exc:
                if self.on_redis_error is not None:
                    self.on_redis_error()
                log.warning("learner %s: %s; retrying", self.name, exc)
                self._active = False
                stop.wait(idle_seconds)
            except Exception:
                log.exception("learner %s failed; releasing the lock and retrying", self.name)
                self._active = False
                with contextlib.suppress(redis.RedisError):
                    self._lock.release()
                stop.wait(max(idle_seconds, 5.0))
        try:
            if self._active and self._unacked:
                self.publish()
            self._lock.release()
        except redis.RedisError as exc:
            log.warning("learner %s could not publish on exit: %s", self.name, exc)
