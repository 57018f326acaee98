"""The outcome streams the learner consumes: one per customer bucket, each through a Redis consumer group.

Entries are appended by the outcome-join script (nba_service/store/state.py) to the stream of the
decision's bucket and, for decisions that got no outcome within their attribution window, by
:meth:`OutcomeStream.expire_due` here. A bucket's stream, pending set and decisions share one hash
slot (:mod:`nba_service.store.keys`), so each of those scripts stays on one shard of a Redis Cluster.

Exactly once, across restarts: an entry stays pending in its group until the model version that learned
it is published. The publish (on the global slot) records, per bucket, the last entry it learned
(:data:`~nba_service.store.keys.LEARNER_WATERMARKS`, in the same transaction as the version); the entries
are acknowledged right after. A learner that died in between finds them pending at or below the
watermark: it acknowledges them without learning them again. A bucket's entries are read in order, so
what a version learned of a bucket is exactly the entries up to its watermark.

On one Redis (standalone or Sentinel) the learner waits for new entries with one blocking
``XREADGROUP`` over the 256 streams; on a cluster, where one command cannot span slots, it reads them
in one pipelined batch per node and polls every :data:`CLUSTER_POLL_SECONDS` while they are empty.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from nba_service.store import codec, keys
from nba_service.store.state import OUTCOME_STREAM_MAXLEN

__all__ = ["CLUSTER_POLL_SECONDS", "LearnerLock", "OutcomeEntry", "OutcomeStream", "entry_order"]

CLUSTER_POLL_SECONDS = 0.2
"""On a Redis Cluster, how often an idle learner reads the 256 streams again."""

# A decision whose attribution window ended without a settling outcome counts as
# not accepted, once: the same "learned" flag as real outcomes guards it.
_EXPIRE_SCRIPT = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'learned', 'expired') == 0 then return 0 end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'decision_id', ARGV[1],
           'offer_id', redis.call('HGET', KEYS[1], 'offer_id'), 'channel', redis.call('HGET', KEYS[1], 'channel'),
           'features', redis.call('HGET', KEYS[1], 'features'), 'reward', '0',
           'prior', redis.call('HGET', KEYS[1], 'prior') or '0.05', 'outcome', 'expired',
           'trial', redis.call('HGET', KEYS[1], 'trial') or '')
return 1
"""

_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""

EntryRef = tuple[int, bytes]
"""A stream entry: its bucket and its id."""


def entry_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as a pair of numbers, to compare ids.

    >>> entry_order(b"1700000000000-2") < entry_order("1700000000000-10")
    True
    """
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclasses.dataclass(frozen=True, slots=True)
class OutcomeEntry:
    bucket: int
    entry_id: bytes
    decision_id: str
    offer_id: str
    channel: str
    features: dict[str, float]
    reward: float
    prior: float
    outcome: str
    trial: str = ""
    """The decision's champion/challenger weights, when it was logged in a challenger trial."""

    @property
    def ref(self) -> EntryRef:
        return self.bucket, self.entry_id


def _entry(bucket: int, entry_id: bytes, fields: Mapping[bytes, bytes]) -> OutcomeEntry | EntryRef:
    """An entry read from a stream; a trimmed one (no fields) as its bare reference, to acknowledge."""
    if not fields:
        return bucket, entry_id
    return OutcomeEntry(
        bucket=bucket,
        entry_id=entry_id,
        decision_id=fields[b"decision_id"].decode(),
        offer_id=fields[b"offer_id"].decode(),
        channel=fields[b"channel"].decode(),
        features=codec.loads(fields[b"features"]),
        reward=float(fields[b"reward"]),
        prior=float(fields[b"prior"]),
        outcome=fields.get(b"outcome", b"").decode(),
        trial=fields.get(b"trial", b"").decode(),
    )


_BUCKET_OF_STREAM = {keys.outcome_stream(b).encode(): b for b in range(keys.BUCKETS)}


class OutcomeStream:
    """The learner's side of the 256 outcome streams."""

    def __init__(self, client: redis.Redis, consumer: str) -> None:
        self._redis = client
        self.consumer = consumer
        self.cluster = isinstance(client, RedisCluster)
        self._expire = client.register_script(_EXPIRE_SCRIPT)
        self._cursors: dict[int, bytes] = {}
        """Where re-reading this consumer's own pending entries continues, per bucket not caught up yet."""
        self._buffer: list[OutcomeEntry | EntryRef] = []
        """Entries read (delivered to this consumer) beyond the count asked for: returned by the next reads."""

    def _take(self, entries: list[OutcomeEntry | EntryRef], count: int) -> list[OutcomeEntry | EntryRef]:
        """At most ``count`` entries: the buffered ones first, the rest of ``entries`` kept for the next read
        (one read returns up to ``count`` entries of each bucket)."""
        self._buffer.extend(entries)
        taken, self._buffer = self._buffer[:count], self._buffer[count:]
        return taken

    def _pipeline(self) -> Any:
        return self._redis.pipeline(transaction=False)

    def ensure_group(self) -> None:
        """Create the consumer group (and its stream) of every bucket that has none."""
        with self._pipeline() as pipe:
            for bucket in range(keys.BUCKETS):
                pipe.xgroup_create(keys.outcome_stream(bucket), keys.LEARNER_GROUP, id="0", mkstream=True)
            for reply in pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                    raise reply

    def claim_pending(self) -> None:
        """Take over every entry another (dead) learner read but never got into a published version, and start
        re-reading this consumer's pending entries (:meth:`read_pending`) from the first."""
        starts: dict[int, bytes | str] = dict.fromkeys(range(keys.BUCKETS), "0-0")
        while starts:
            with self._pipeline() as pipe:
                for bucket, start in starts.items():
                    pipe.xautoclaim(
                        keys.outcome_stream(bucket),
                        keys.LEARNER_GROUP,
                        self.consumer,
                        min_idle_time=0,
                        start_id=start,
                        count=1000,
                    )
                replies = pipe.execute()
            # the next cursor of each; 0-0 once its whole pending list has been seen
            starts = {b: r[0] for b, r in zip(starts, replies, strict=True) if r[0] not in (b"0-0", "0-0")}
        self.rewind()

    def rewind(self) -> None:
        """Make :meth:`read_pending` start again from this consumer's first pending entry in every bucket
        (the entries read but not returned yet among them)."""
        self._cursors = dict.fromkeys(range(keys.BUCKETS), b"0")
        self._buffer = []

    def read_pending(self, count: int) -> list[OutcomeEntry | EntryRef]:
        """This consumer's own pending entries, in order per bucket, after those returned before; [] once
        every bucket is caught up (the entries a learner read and did not publish before it stopped)."""
        if self._buffer or not self._cursors:
            return self._take([], count)
        with self._pipeline() as pipe:
            for bucket, cursor in self._cursors.items():
                pipe.xreadgroup(keys.LEARNER_GROUP, self.consumer, {keys.outcome_stream(bucket): cursor}, count=count)
            replies = pipe.execute()
        entries: list[OutcomeEntry | EntryRef] = []
        for bucket, reply in zip(list(self._cursors), replies, strict=True):
            read = self._entries(reply)
            if read:
                last = read[-1]
                self._cursors[bucket] = last.entry_id if isinstance(last, OutcomeEntry) else last[1]
                entries.extend(read)
            else:
                del self._cursors[bucket]
        return self._take(entries, count)

    def read(self, count: int, block_ms: int | None) -> list[OutcomeEntry | EntryRef]:
        """Up to ``count`` new entries for this consumer, waiting up to ``block_ms`` for some."""
        if self._buffer:
            return self._take([], count)
        streams: dict[Any, Any] = {keys.outcome_stream(b): ">" for b in range(keys.BUCKETS)}
        if not self.cluster:
            return self._take(
                self._entries(
                    self._redis.xreadgroup(keys.LEARNER_GROUP, self.consumer, streams, count=count, block=block_ms)
                ),
                count,
            )
        with self._pipeline() as pipe:
            for stream, position in streams.items():
                pipe.xreadgroup(keys.LEARNER_GROUP, self.consumer, {stream: position}, count=count)
            entries = [e for reply in pipe.execute() for e in self._entries(reply)]
        if not entries and block_ms:
            time.sleep(min(block_ms / 1000, CLUSTER_POLL_SECONDS))
        return self._take(entries, count)

    @staticmethod
    def _entries(response: Any) -> list[OutcomeEntry | EntryRef]:
        entries: list[OutcomeEntry | EntryRef] = []
        for stream, messages in cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]", response or ()):
            bucket = _BUCKET_OF_STREAM[stream if isinstance(stream, bytes) else str(stream).encode()]
            entries.extend(_entry(bucket, entry_id, fields) for entry_id, fields in messages)
        return entries

    def acknowledge(self, refs: Iterable[EntryRef]) -> None:
        """Acknowledge entries (learned by a published version, or trimmed): they leave the pending lists."""
        by_bucket: dict[int, list[bytes]] = {}
        for bucket, entry_id in refs:
            by_bucket.setdefault(bucket, []).append(entry_id)
        if not by_bucket:
            return
        with self._pipeline() as pipe:
            for bucket, ids in by_bucket.items():
                pipe.xack(keys.outcome_stream(bucket), keys.LEARNER_GROUP, *ids)
            pipe.execute()

    def expire_due(self, now: float | None = None, limit: int = 1000) -> int:
        """Turn decisions whose attribution window has ended into "not accepted" entries (up to ``limit`` per
        bucket)."""
        now = time.time() if now is None else now
        with self._pipeline() as pipe:
            for bucket in range(keys.BUCKETS):
                pipe.zrangebyscore(keys.pending(bucket), "-inf", now, start=0, num=limit)
            due = cast("list[list[bytes]]", pipe.execute())
        if not any(due):
            return 0
        with self._pipeline() as pipe:
            for bucket, decision_ids in enumerate(due):
                for decision_id in decision_ids:
                    script_keys = [
                        keys.decision(decision_id.decode(), bucket),
                        keys.pending(bucket),
                        keys.outcome_stream(bucket),
                    ]
                    args: list[bytes | int] = [decision_id, OUTCOME_STREAM_MAXLEN]
                    if self.cluster:  # a cluster's pipelines refuse EVALSHA
                        pipe.execute_command("EVAL", _EXPIRE_SCRIPT, 3, *script_keys, *args)
                    else:
                        self._expire(keys=script_keys, args=args, client=pipe)
            return sum(int(r) for r in pipe.execute())

    def backlog(self) -> int:
        """Entries not yet acknowledged (read or not), over every bucket."""
        with self._pipeline() as pipe:
            for bucket in range(keys.BUCKETS):
                pipe.xinfo_groups(keys.outcome_stream(bucket))
            replies = pipe.execute(raise_on_error=False)
        with self._pipeline() as pipe:
            missing = []
            total = 0
            for bucket, groups in enumerate(replies):
                group = None
                if not isinstance(groups, Exception):
                    named = {g["name"]: g for g in groups}
                    group = named.get(keys.LEARNER_GROUP.encode()) or named.get(keys.LEARNER_GROUP)
                if group is None:
                    missing.append(bucket)
                    pipe.xlen(keys.outcome_stream(bucket))
                else:
                    total += int(group.get("pending", 0)) + int(group.get("lag") or 0)
            if missing:
                total += sum(int(n) for n in pipe.execute())
        return total


class LearnerLock:
    """At most one active learner: a Redis key held with a TTL and renewed while learning.

    The same lock, on another ``key``, keeps one ``nba scheduler`` active and one process per campaign run
    (:mod:`nba_service.campaigns.lease`)."""

    def __init__(self, client: redis.Redis, owner: str, ttl_ms: int = 10_000, key: str = keys.LEARNER_LOCK) -> None:
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.key = key
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._redis = client

    def hold(self) -> bool:
        """Take or renew the lock; False while another learner holds it."""
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def holder(self) -> str | None:
        """Who holds the lock now (None: nobody)."""
        value = self._redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def release(self) -> None:
        if self._redis.get(self.key) == self.owner.encode():
            self._redis.delete(self.key)
