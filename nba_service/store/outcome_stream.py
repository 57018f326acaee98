"""The outcome stream the learner consumes, through a Redis consumer group.

Entries are appended by the outcome-join script (nba_service/store/state.py)
and, for decisions that got no outcome within their attribution window, by
:meth:`OutcomeStream.expire_due` here. An entry stays pending in the group
until the model snapshot that learned it is published (the publish
transaction acknowledges it), so a learner that dies re-reads exactly the
entries its last snapshot does not contain.
"""

from __future__ import annotations

import dataclasses
import time
from typing import cast

import redis

from nba_service.store import codec, keys
from nba_service.store.state import OUTCOME_STREAM_MAXLEN

__all__ = ["LearnerLock", "OutcomeEntry", "OutcomeStream"]

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


@dataclasses.dataclass(frozen=True, slots=True)
class OutcomeEntry:
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


class OutcomeStream:
    def __init__(self, client: redis.Redis, consumer: str) -> None:
        self._redis = client
        self.consumer = consumer
        self._expire = client.register_script(_EXPIRE_SCRIPT)

    def ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(keys.OUTCOME_STREAM, keys.LEARNER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def claim_pending(self) -> None:
        """Take over every entry another (dead) learner read but never got into a snapshot."""
        start: bytes | str = "0-0"
        while True:
            reply = self._redis.xautoclaim(
                keys.OUTCOME_STREAM, keys.LEARNER_GROUP, self.consumer, min_idle_time=0, start_id=start, count=1000
            )
            start = reply[0]  # the next cursor; 0-0 once the whole pending list has been seen
            if start in (b"0-0", "0-0"):
                return

    def read(
        self, count: int, block_ms: int | None, pending_after: bytes | str | None = None
    ) -> list[OutcomeEntry | bytes]:
        """New entries for this consumer or, with ``pending_after``, its own pending entries after that id.

        An entry trimmed from the stream comes back as its bare id (to acknowledge).
        """
        position = ">" if pending_after is None else pending_after
        response = cast(  # the client does not decode responses
            "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None",
            self._redis.xreadgroup(
                keys.LEARNER_GROUP,
                self.consumer,
                {keys.OUTCOME_STREAM: position},
                count=count,
                block=block_ms if pending_after is None else None,
            ),
        )
        entries: list[OutcomeEntry | bytes] = []
        for _, messages in response or ():
            for entry_id, fields in messages:
                if not fields:
                    entries.append(entry_id)
                    continue
                entries.append(
                    OutcomeEntry(
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
                )
        return entries

    def expire_due(self, now: float | None = None, limit: int = 1000) -> int:
        """Turn decisions whose attribution window has ended into "not accepted" entries."""
        now = time.time() if now is None else now
        due = cast("list[bytes]", self._redis.zrangebyscore(keys.PENDING_OUTCOMES, "-inf", now, start=0, num=limit))
        if not due:
            return 0
        with self._redis.pipeline(transaction=False) as pipe:
            for decision_id in due:
                self._expire(
                    keys=[keys.decision(decision_id.decode()), keys.PENDING_OUTCOMES, keys.OUTCOME_STREAM],
                    args=[decision_id, OUTCOME_STREAM_MAXLEN],
                    client=pipe,
                )
            return sum(int(r) for r in pipe.execute())

    def backlog(self) -> int:
        """Entries not yet acknowledged (read or not)."""
        groups = {g["name"]: g for g in self._redis.xinfo_groups(keys.OUTCOME_STREAM)}
        group = groups.get(keys.LEARNER_GROUP.encode()) or groups.get(keys.LEARNER_GROUP)
        if group is None:
            return int(self._redis.xlen(keys.OUTCOME_STREAM))
        return int(group.get("pending", 0)) + int(group.get("lag") or 0)


class LearnerLock:
    """At most one active learner: a Redis key held with a TTL and renewed while learning."""

    def __init__(self, client: redis.Redis, owner: str, ttl_ms: int = 10_000) -> None:
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._redis = client

    def hold(self) -> bool:
        """Take or renew the lock; False while another learner holds it."""
        return bool(self._renew(keys=[keys.LEARNER_LOCK], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        if self._redis.get(keys.LEARNER_LOCK) == self.owner.encode():
            self._redis.delete(keys.LEARNER_LOCK)
