"""Versioned model snapshots in Redis.

The learner publishes a snapshot every N outcomes or T seconds as a new
version, moves the live pointer and announces it on pub/sub, in one
transaction that also records, per bucket, the last outcome-stream entry the
snapshot contains (so a restart resumes from the last snapshot and re-learns
exactly what came after it: :mod:`~nba_service.store.outcome_stream`).
Serving replicas load the live version; ``nba model rollback`` moves the
pointer back. Rollbacks and promotions are logged in the change log
(:mod:`~nba_service.store.change_log`) by the script that makes the version
live; the learner's own snapshots are not (:meth:`ModelStore.history` lists them).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import cast

import redis

from nba_service.store import keys
from nba_service.store.change_log import Change, default_author, make_live, read_changes
from nba_service.store.versions import roll_back

__all__ = ["KEEP_VERSIONS", "ModelStore", "ModelVersion"]

KEEP_VERSIONS = 50
"""Snapshots kept; older ones are deleted."""
KEEP_HISTORY = 1000
"""History entries kept (versions, when, how many outcomes)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ModelVersion:
    version: int
    updates: int
    """Outcomes learned in total when the snapshot was taken."""
    published_at: float
    source: str


class ModelStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def publish(
        self,
        data: bytes,
        updates: int,
        source: str = "learner",
        watermarks: Mapping[int, bytes] | None = None,
        challenger: bytes | None = None,
        guard: str | None = None,
        promoted_by: tuple[str, str] | None = None,
    ) -> int:
        """Store ``data`` as a new live version.

        ``watermarks``: per bucket, the last outcome-stream entry ``data`` learned (the learner acknowledges
        the entries once the version is published; see :mod:`~nba_service.store.outcome_stream`).
        ``challenger``: the challenger models trained on the same outcomes, stored with it;
        ``guard``: the challenger's guard (:class:`~nba_service.learning.guard.ChallengerGuard` as JSON);
        ``promoted_by``: (author, message) of a promotion: it is logged, and the challenger with its
        guard deleted, in the same transaction.
        """
        version = int(self._redis.incr(keys.MODEL_SEQ))
        now = time.time()
        meta = json.dumps({"version": version, "updates": updates, "published_at": now, "source": source})
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.model_version(version), data)
            pipe.rpush(keys.MODEL_VERSIONS, meta)
            pipe.ltrim(keys.MODEL_VERSIONS, -KEEP_HISTORY, -1)
            if promoted_by is None:
                pipe.set(keys.MODEL_LIVE, version)
            else:
                pipe.delete(keys.MODEL_CHALLENGER, keys.MODEL_CHALLENGER_VERSION, keys.MODEL_CHALLENGER_GUARD)
            if challenger is not None:
                pipe.set(keys.MODEL_CHALLENGER, challenger)
                pipe.set(keys.MODEL_CHALLENGER_VERSION, version)
                if guard is not None:
                    pipe.set(keys.MODEL_CHALLENGER_GUARD, guard)
            if watermarks:
                pipe.hset(keys.LEARNER_WATERMARKS, mapping={str(b): i for b, i in watermarks.items()})
            if version > KEEP_VERSIONS:
                pipe.delete(keys.model_version(version - KEEP_VERSIONS))
            if promoted_by is not None:
                make_live(
                    pipe,
                    what="model",
                    kind="promote",
                    version=version,
                    live_key=keys.MODEL_LIVE,
                    channel=keys.MODEL_CHANNEL,
                    record_key=keys.model_version(version),
                    who=promoted_by[0] or default_author(),
                    message=promoted_by[1],
                    when=now,
                )
            pipe.execute()
        if promoted_by is None:
            # after the transaction: a Redis Cluster refuses PUBLISH in one (make_live publishes from its script)
            self._redis.publish(keys.MODEL_CHANNEL, str(version))
        return version

    def live(self) -> int | None:
        raw = self._redis.get(keys.MODEL_LIVE)
        return int(raw) if raw is not None else None

    def load_version(self, version: int) -> bytes:
        data = cast("bytes | None", self._redis.get(keys.model_version(version)))  # no decode_responses
        if data is None:
            raise KeyError(f"model version {version} does not exist (or is older than the last {KEEP_VERSIONS})")
        return data

    def load(self) -> bytes | None:
        """The live snapshot (or the single unversioned snapshot of an older release), if any."""
        version = self.live()
        key = keys.MODEL_SNAPSHOT if version is None else keys.model_version(version)
        return cast("bytes | None", self._redis.get(key))  # the client does not decode responses

    def load_challenger(self) -> bytes | None:
        """The challenger models published with the live version (None if there are none, or stale ones)."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.MODEL_LIVE)
            pipe.get(keys.MODEL_CHALLENGER_VERSION)
            pipe.get(keys.MODEL_CHALLENGER)
            live, version, data = pipe.execute()
        return data if live is not None and live == version else None

    def watermarks(self) -> dict[int, bytes]:
        """Per bucket, the last outcome-stream entry a published version learned."""
        raw = cast("dict[bytes, bytes]", self._redis.hgetall(keys.LEARNER_WATERMARKS))
        return {int(bucket): entry_id for bucket, entry_id in raw.items()}

    def load_guard(self) -> bytes | None:
        """The challenger's guard as the learner last published it (None: no trial yet)."""
        return cast("bytes | None", self._redis.get(keys.MODEL_CHALLENGER_GUARD))

    def promote(self, challenger: bytes, updates: int, author: str = "", message: str = "") -> int:
        """Publish a challenger (from :meth:`load_challenger`) as the new live version, and log the
        promotion with ``author`` (default: the login name) and ``message``.

        The challenger is consumed: the learner starts a new one at its configured learning rate,
        and a new guard with it.
        """
        return self.publish(challenger, updates, source="promoted challenger", promoted_by=(author, message))

    def history(self) -> list[ModelVersion]:
        return [ModelVersion(**json.loads(raw)) for raw in self._redis.lrange(keys.MODEL_VERSIONS, 0, -1)]

    def changes(self) -> list[Change]:
        """The promotions and rollbacks of the change log, oldest first (the learner's snapshots are not there)."""
        return read_changes(self._redis, "model")

    def rollback(self, version: int | None = None, author: str = "", message: str = "") -> int:
        """Make ``version`` (default: the newest kept one before the live one) live again, and log it
        with ``author`` (default: the login name) and ``message``.

        Only the last :data:`KEEP_VERSIONS` snapshots are kept: older versions cannot come back.
        """
        return roll_back(
            self._redis,
            what="model",
            live_key=keys.MODEL_LIVE,
            channel=keys.MODEL_CHANNEL,
            version=version,
            versions=[v.version for v in self.history()[-KEEP_VERSIONS:]],
            key_of=keys.model_version,
            author=author,
            message=message,
        )
