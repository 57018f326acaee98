"""Customer state in Redis: one round trip to read a decision's context, one
atomic script to record it, one script to join an outcome.

Key layout in :mod:`nba_service.store.keys`; value formats in
:mod:`nba_service.store.codec`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from nba_service.engine.domain import (
    CustomerContext,
    CustomerProfile,
    Decision,
    Event,
    JourneyEntry,
    OpenJourney,
)
from nba_service.store import codec, keys
from nba_service.store.script_connection import LuaScript, ScriptConnection

__all__ = ["budget_key", "BUDGET_USED_UP", "CONTACTS_CHANGED", "WRITTEN", "CustomerView", "OutcomeStatus", "PastDecision", "RecordedOutcome", "StateStore"]

JOURNEY_TTL_SECONDS = 90 * 86400
RECENT_DECISIONS = 20
WRITTEN, BUDGET_USED_UP, CONTACTS_CHANGED = 1, 0, -1
DECLINES_KEPT_SECONDS = 365 * 86400
"""Declines older than this are dropped; ``suppress_after`` windows are at most this long."""
OUTCOME_STREAM_MAXLEN = 1_000_000
"""The outcome stream is trimmed (approximately) to this many entries."""
CLOSING_EVENTS = frozenset({"purchase", "checkout"})
"""Custom events that close the customer's open cart (``cart_id`` attribute, or every cart)."""

# Joins an outcome to its decision atomically: unknown -> 0, duplicate -> 2,
# recorded -> 1 with "learn" set only for the first outcome that settles a reward;
# that one leaves the pending set and goes on the outcome stream for the learner.
_OUTCOME_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('HSETNX', KEYS[1], 'o:' .. ARGV[1], ARGV[2]) == 0 then return {2} end
local offer = redis.call('HGET', KEYS[1], 'offer_id')
local channel = redis.call('HGET', KEYS[1], 'channel')
local learn = 0
-- the offer's reward: "accepted" (default) settles on accepted or converted, "converted" only on
-- a conversion; declined or dismissed settle either with 0
local reward_on = redis.call('HGET', KEYS[1], 'reward_on') or 'accepted'
local reward = nil
if ARGV[1] == 'converted' or (ARGV[1] == 'accepted' and reward_on ~= 'converted') then reward = '1'
elseif ARGV[1] == 'declined' or ARGV[1] == 'dismissed' then reward = '0' end
if reward and offer and offer ~= '' then
  learn = redis.call('HSETNX', KEYS[1], 'learned', ARGV[1])
  if learn == 1 then
    redis.call('ZREM', KEYS[2], ARGV[4])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'decision_id', ARGV[4], 'offer_id', offer,
               'channel', channel, 'features', redis.call('HGET', KEYS[1], 'features'), 'reward', reward,
               'prior', redis.call('HGET', KEYS[1], 'prior') or '0.05', 'outcome', ARGV[1])
  end
end
local customer = redis.call('HGET', KEYS[1], 'customer_id')
if (ARGV[1] == 'declined' or ARGV[1] == 'dismissed') and offer and offer ~= '' and customer then
  -- the customer's declines, for "suppress after N declines"; keyed by customer like the rest of
  -- their state (a key named in the script, so this script needs a single Redis, not a cluster)
  local key = 'nba:c:{' .. customer .. '}:declines'
  redis.call('ZADD', key, ARGV[7], offer .. '|' .. ARGV[4])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', tonumber(ARGV[7]) - tonumber(ARGV[8]))
  redis.call('EXPIRE', key, ARGV[8])
end
return {1, learn, offer, channel, customer}
"""


# Reads a decision's whole context in one command: profile, recent journey,
# contacts within the longest limit window (member, score pairs), open journeys,
# declines within the longest suppression window.
_READ_SCRIPT = """
return {redis.call('GET', KEYS[1]) or false,
        redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[1])),
        redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[2], '+inf', 'WITHSCORES'),
        redis.call('HGETALL', KEYS[4]),
        redis.call('ZRANGEBYSCORE', KEYS[5], ARGV[3], '+inf', 'WITHSCORES')}
"""

# Records one decision atomically (a script runs whole or not at all): the decision
# hash with its TTL, the journey entry, the recent-decisions list, the contact
# (when an action was sent), the open-journey change and, for an action, its place in
# the pending set until its attribution window ends.
_WRITE_SCRIPT = """
local now = tonumber(ARGV[8])
if ARGV[7] ~= '' and ARGV[23] ~= '' and redis.call('ZCOUNT', KEYS[4], ARGV[23], '+inf') > tonumber(ARGV[24]) then
  -- another request sent this customer something since the context was read: the caps
  -- were checked against a stale history, so refuse and let the caller decide again
  return -1
end
if ARGV[20] ~= '' then
  -- the offer's global budget: take one unit, or refuse the whole write when none is left
  local used = tonumber(redis.call('GET', ARGV[20]) or '0')
  if used >= tonumber(ARGV[21]) then return 0 end
  redis.call('INCR', ARGV[20])
  redis.call('EXPIRE', ARGV[20], ARGV[22])
end
redis.call('HSET', KEYS[1], 'customer_id', ARGV[14], 'offer_id', ARGV[15], 'channel', ARGV[16], 'prior', ARGV[17],
           'features', ARGV[18], 'meta', ARGV[19], 'reward_on', ARGV[25])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('LPUSH', KEYS[3], ARGV[5])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[1])
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[4], now, ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[9]))
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[9]) + 60)
end
if ARGV[10] == 'set' then
  redis.call('HSET', KEYS[5], ARGV[11], ARGV[12])
  redis.call('EXPIRE', KEYS[5], ARGV[4])
elseif ARGV[10] == 'del' then
  redis.call('HDEL', KEYS[5], ARGV[11])
elseif ARGV[10] == 'clear' then
  redis.call('DEL', KEYS[5])
end
if ARGV[13] ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[13], ARGV[5])
end
return 1
"""


class OutcomeStatus(enum.Enum):
    NOT_FOUND = 0
    RECORDED = 1
    DUPLICATE = 2


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedOutcome:
    status: OutcomeStatus
    learn: bool = False
    offer_id: str = ""
    channel: str = ""
    customer_id: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class PastDecision:
    decision_id: str
    timestamp: float
    event_type: str
    offer_id: str
    channel: str
    outcomes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CustomerView:
    """What the agent desktop shows."""

    profile: CustomerProfile
    journey: tuple[JourneyEntry, ...]
    open_journeys: tuple[OpenJourney, ...]
    recent_decisions: tuple[PastDecision, ...]


class StateStore:
    """Async access to customer state; one instance per server, shared by all requests."""

    def __init__(self, client: aioredis.Redis, *, decision_ttl_seconds: int, journey_max_events: int,
                 context_events: int = 50, scripts: ScriptConnection | None = None, url: str = "") -> None:
        self._redis = client
        self.decision_ttl_seconds = decision_ttl_seconds
        self.journey_max_events = journey_max_events
        self.context_events = min(context_events, journey_max_events)
        self._scripts = scripts or ScriptConnection(url or _url_of(client))
        """The decision path's scripts go through one pipelined connection (see script_connection)."""
        self._outcome_script = LuaScript(_OUTCOME_SCRIPT)
        self._write_script = LuaScript(_WRITE_SCRIPT)
        self._read_script = LuaScript(_READ_SCRIPT)

    async def aclose(self) -> None:
        """Close the scripts' connection (the client passed in belongs to the caller)."""
        await self._scripts.aclose()

    async def read_context(self, customer_id: str, now: float, origin_channel: str,
                           request_attributes: Mapping[str, str], contact_window: float,
                           suppression_window: float = 0.0) -> CustomerContext:
        """Profile, recent journey, contact history and open journeys in one round trip."""
        raw_profile, raw_journey, raw_contacts, raw_open, raw_declines = await self._scripts.evalsha(
            self._read_script,
            keys=[keys.profile(customer_id), keys.journey(customer_id), keys.contacts(customer_id),
                  keys.open_journeys(customer_id), keys.declines(customer_id)],
            args=[self.context_events - 1, f"{now - contact_window:.3f}",
                  f"{now - suppression_window:.3f}" if suppression_window > 0 else "+inf"],
            retry=True)  # a read: safe to run again after a dropped connection
        declines = iter(raw_declines)
        opened = iter(raw_open)
        return CustomerContext(
            profile=codec.decode_profile(customer_id, raw_profile),
            now=now,
            origin_channel=origin_channel,
            journey=tuple(map(codec.decode_journey, raw_journey)),
            contacts=tuple(map(codec.decode_contact, raw_contacts[::2], map(float, raw_contacts[1::2]))),  # member, score
            open_journeys=tuple(codec.decode_open_journey(f, v) for f, v in zip(opened, opened)),
            request_attributes=request_attributes,
            declines=tuple((float(score), member.split(b"|", 1)[0].decode()) for member, score in zip(declines, declines)),
        )

    async def write_decision(self, decision_id: str, request_id: str, ctx: CustomerContext, event: Event,
                             decision: Decision, contact_window: float, prior: float = 0.0,
                             attribution_seconds: float = 0.0, shadow: Mapping[str, object] | None = None,
                             budget: tuple[str, int, int] | None = None, reward_on: str = "accepted") -> int:
        """Record the decision, append the event to the journey and count the contact: one atomic script.

        ``budget`` is (key, max, ttl) of the chosen offer's global budget. Returns
        :data:`WRITTEN`, :data:`BUDGET_USED_UP` (nothing written) or :data:`CONTACTS_CHANGED`
        (nothing written: another request contacted the customer since ``ctx`` was read).
        """
        customer_id = ctx.profile.customer_id
        now = ctx.now
        fields = _journey_fields(event)
        contact = ("" if decision.offer_id is None else
                   codec.contact_member(decision_id, decision.offer_id, decision.channel, decision.category))
        open_op, open_field, open_value = "", "", ""
        if event.type == "cart_abandon":
            open_op, open_field = "set", f"cart:{event.fields.get('cart_id') or 'cart'}"
            open_value = codec.encode_open_journey(now, fields)
        elif event.type == "custom" and event.fields.get("name") in CLOSING_EVENTS:
            cart_id = event.attributes.get("cart_id")
            open_op, open_field = ("del", f"cart:{cart_id}") if cart_id else ("clear", "")
        window = max(contact_window, 1.0)
        budget_key, budget_max, budget_ttl = budget or ("", 0, 0)
        written = await self._scripts.evalsha(
            self._write_script,
            keys=[keys.decision(decision_id), keys.journey(customer_id), keys.decisions(customer_id),
                  keys.contacts(customer_id), keys.open_journeys(customer_id), keys.PENDING_OUTCOMES],
            args=[self.decision_ttl_seconds, codec.encode_journey(now, event.type, ctx.origin_channel, fields),
                  self.journey_max_events, JOURNEY_TTL_SECONDS, decision_id, RECENT_DECISIONS, contact,
                  f"{now:.3f}", f"{window:.0f}", open_op, open_field, open_value,
                  f"{now + attribution_seconds:.3f}" if contact and attribution_seconds > 0 else "",
                  customer_id, decision.offer_id or "", decision.channel, repr(prior),
                  codec.dumps(decision.features),
                  codec.dumps({"request_id": request_id, "ts": round(now, 3), "event_type": event.type,
                          "origin_channel": ctx.origin_channel, "category": decision.category,
                          "score": decision.score, "propensity": decision.propensity,
                          "policy_version": decision.policy_version, "model_version": decision.model_version,
                          **({"shadow": shadow} if shadow else {})}),
                  budget_key, budget_max, budget_ttl,
                  f"{ctx.now - contact_window:.3f}" if contact_window > 0 else "", len(ctx.contacts), reward_on],
        )
        return int(written)

    async def record_outcome(self, decision_id: str, outcome: str, value: float, now: float) -> RecordedOutcome:
        """Join an outcome to its decision; idempotent per (decision, outcome).

        The first outcome that settles the offer's reward (see ``reward`` in the policy) is
        appended to the outcome stream, in the same script, for the learner.
        """
        result = await self._scripts.evalsha(
            self._outcome_script,
            keys=[keys.decision(decision_id), keys.PENDING_OUTCOMES, keys.OUTCOME_STREAM],
            args=[outcome, f"{now:.3f}|{value!r}", "", decision_id, "", OUTCOME_STREAM_MAXLEN, f"{now:.3f}",
                  DECLINES_KEPT_SECONDS])
        status = OutcomeStatus(int(result[0]))
        if status is not OutcomeStatus.RECORDED:
            return RecordedOutcome(status)
        _, learn, offer, channel, customer = result
        return RecordedOutcome(
            status=status,
            learn=bool(learn),
            offer_id=(offer or b"").decode(),
            channel=(channel or b"").decode(),
            customer_id=(customer or b"").decode(),
        )

    async def upsert_profile(self, profile: CustomerProfile) -> bool:
        """Store (replace) a profile; True when the customer is new."""
        previous = await self._redis.set(keys.profile(profile.customer_id), codec.encode_profile(profile), get=True)
        return previous is None

    async def customer_view(self, customer_id: str, max_events: int, max_decisions: int = 10) -> CustomerView:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.profile(customer_id))
            pipe.lrange(keys.journey(customer_id), 0, max_events - 1)
            pipe.hgetall(keys.open_journeys(customer_id))
            pipe.lrange(keys.decisions(customer_id), 0, max_decisions - 1)
            raw_profile, raw_journey, raw_open, decision_ids = await pipe.execute()
        past: list[PastDecision] = []
        if decision_ids:
            async with self._redis.pipeline(transaction=False) as pipe:
                for decision_id in decision_ids:
                    pipe.hgetall(keys.decision(decision_id.decode()))
                records = await pipe.execute()
            for decision_id, record in zip(decision_ids, records):
                if record:  # expired decisions drop out of the view
                    past.append(_past_decision(decision_id.decode(), record))
        return CustomerView(
            profile=codec.decode_profile(customer_id, raw_profile),
            journey=tuple(codec.decode_journey(r) for r in raw_journey),
            open_journeys=tuple(sorted((codec.decode_open_journey(f, v) for f, v in raw_open.items()),
                                       key=lambda j: -j.opened)),
            recent_decisions=tuple(past),
        )


def _url_of(client: aioredis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    auth = ""
    if kwargs.get("password"):
        auth = f"{kwargs.get('username') or ''}:{kwargs['password']}@"
    return f"redis://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def budget_key(offer_id: str, per_seconds: float, now: float) -> str:
    """The counter of an offer's budget for the fixed window (aligned on the Unix epoch) holding ``now``."""
    return keys.budget(offer_id, int(now // per_seconds))


def _journey_fields(event: Event) -> dict[str, Any]:
    fields = dict(event.fields)
    if event.attributes:
        fields["attributes"] = dict(event.attributes)
    return fields


def _past_decision(decision_id: str, record: Mapping[bytes, bytes]) -> PastDecision:
    outcomes = sorted(
        ((float(v.decode().split("|", 1)[0]), k.decode()[2:]) for k, v in record.items() if k.startswith(b"o:")),
    )
    meta = codec.loads(record.get(b"meta", b"{}"))
    return PastDecision(
        decision_id=decision_id,
        timestamp=float(meta.get("ts", 0.0)),
        event_type=meta.get("event_type", ""),
        offer_id=record.get(b"offer_id", b"").decode(),
        channel=record.get(b"channel", b"").decode(),
        outcomes=tuple(kind for _, kind in outcomes),
    )
