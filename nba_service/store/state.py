"""Customer state in Redis: one round trip to read a decision's context, one
atomic script to record it, one script to join an outcome.

Key layout in :mod:`nba_service.store.keys`; value formats in
:mod:`nba_service.store.codec`. Every script names its keys and arguments
(:class:`~nba_service.store.script_connection.LuaScript`) and receives every
key it touches in KEYS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import redis.asyncio as aioredis

from nba_service.domain import (
    CustomerContext,
    CustomerProfile,
    CustomerView,
    Decision,
    Event,
    OutcomeStatus,
    PastDecision,
    RecordedOutcome,
    WriteResult,
)
from nba_service.domain.journeys import journey_fields, open_journey_change
from nba_service.store import codec, keys
from nba_service.store.script_connection import LuaScript, ScriptConnection

__all__ = ["Budget", "StateStore", "budget_key"]

JOURNEY_TTL_SECONDS = 90 * 86400
RECENT_DECISIONS = 20
DECLINES_KEPT_SECONDS = 365 * 86400
"""Declines older than this are dropped; ``suppress_after`` windows are at most this long."""
OUTCOME_STREAM_MAXLEN = 1_000_000
"""The outcome stream is trimmed (approximately) to this many entries."""

# Joins an outcome to its decision atomically: unknown -> {0}, duplicate -> {2, ...},
# recorded -> {1, ...} with "learn" set only for the first outcome that settles a reward;
# that one leaves the pending set and goes on the outcome stream for the learner. The
# decision's offer and customer come back, so a decline can be counted for the customer.
_OUTCOME_SCRIPT = LuaScript(
    """
if redis.call('EXISTS', K.decision) == 0 then return {0} end
local offer = redis.call('HGET', K.decision, 'offer_id')
local channel = redis.call('HGET', K.decision, 'channel')
local customer = redis.call('HGET', K.decision, 'customer_id')
if redis.call('HSETNX', K.decision, 'o:' .. A.outcome, A.entry) == 0 then
  return {2, 0, offer, channel, customer}
end
local learn = 0
-- the offer's reward: "accepted" (default) settles on accepted or converted, "converted" only on
-- a conversion; declined or dismissed settle either with 0
local reward_on = redis.call('HGET', K.decision, 'reward_on') or 'accepted'
local reward = nil
if A.outcome == 'converted' or (A.outcome == 'accepted' and reward_on ~= 'converted') then reward = '1'
elseif A.outcome == 'declined' or A.outcome == 'dismissed' then reward = '0' end
if reward and offer and offer ~= '' then
  learn = redis.call('HSETNX', K.decision, 'learned', A.outcome)
  if learn == 1 then
    redis.call('ZREM', K.pending, A.decision_id)
    redis.call('XADD', K.stream, 'MAXLEN', '~', A.stream_maxlen, '*', 'decision_id', A.decision_id,
               'offer_id', offer, 'channel', channel, 'features', redis.call('HGET', K.decision, 'features'),
               'reward', reward, 'prior', redis.call('HGET', K.decision, 'prior') or '0.05', 'outcome', A.outcome,
               'trial', redis.call('HGET', K.decision, 'trial') or '')
  end
end
return {1, learn, offer, channel, customer}
""",
    keys=("decision", "pending", "stream"),
    args=("outcome", "entry", "decision_id", "stream_maxlen"),
)

# The customer's declines, for "suppress after N declines": one member per declined decision
# (idempotent, so a retried report adds nothing), older ones trimmed.
_DECLINE_SCRIPT = LuaScript(
    """
redis.call('ZADD', K.declines, A.now, A.member)
redis.call('ZREMRANGEBYSCORE', K.declines, '-inf', tonumber(A.now) - tonumber(A.keep_seconds))
redis.call('EXPIRE', K.declines, A.keep_seconds)
return 1
""",
    keys=("declines",),
    args=("now", "member", "keep_seconds"),
)

# Reads a decision's whole context in one command: profile, recent journey,
# contacts within the longest limit window (member, score pairs), open journeys,
# declines within the longest suppression window.
_READ_SCRIPT = LuaScript(
    """
return {redis.call('GET', K.profile) or false,
        redis.call('LRANGE', K.journey, 0, tonumber(A.last_event)),
        redis.call('ZRANGEBYSCORE', K.contacts, A.contacts_since, '+inf', 'WITHSCORES'),
        redis.call('HGETALL', K.open_journeys),
        redis.call('ZRANGEBYSCORE', K.declines, A.declines_since, '+inf', 'WITHSCORES')}
""",
    keys=("profile", "journey", "contacts", "open_journeys", "declines"),
    args=("last_event", "contacts_since", "declines_since"),
)

# Records one decision atomically (a script runs whole or not at all): the decision
# hash with its TTL, the journey entry, the recent-decisions list, the contact
# (when an action was sent), the open-journey change and, for an action, its place in
# the pending set until its attribution window ends. Replies with a WriteResult.
_WRITE_SCRIPT = LuaScript(
    """
local now = tonumber(A.now)
if A.contact ~= '' and A.contacts_since ~= '' and
   redis.call('ZCOUNT', K.contacts, A.contacts_since, '+inf') > tonumber(A.contacts_read) then
  -- another request sent this customer something since the context was read: the caps
  -- were checked against a stale history, so refuse and let the caller decide again
  return -1
end
if A.budget_max ~= '' then
  -- the offer's global budget: take one unit, or refuse the whole write when none is left
  local used = tonumber(redis.call('GET', K.budget) or '0')
  if used >= tonumber(A.budget_max) then return 0 end
  redis.call('INCR', K.budget)
  redis.call('EXPIRE', K.budget, A.budget_ttl)
end
redis.call('HSET', K.decision, 'customer_id', A.customer_id, 'offer_id', A.offer_id, 'channel', A.channel,
           'prior', A.prior, 'features', A.features, 'meta', A.meta, 'reward_on', A.reward_on)
if A.trial ~= '' then redis.call('HSET', K.decision, 'trial', A.trial) end
redis.call('EXPIRE', K.decision, A.decision_ttl)
redis.call('LPUSH', K.journey, A.journey_entry)
redis.call('LTRIM', K.journey, 0, tonumber(A.journey_max) - 1)
redis.call('EXPIRE', K.journey, A.journey_ttl)
redis.call('LPUSH', K.decisions, A.decision_id)
redis.call('LTRIM', K.decisions, 0, tonumber(A.decisions_max) - 1)
redis.call('EXPIRE', K.decisions, A.decision_ttl)
if A.contact ~= '' then
  redis.call('ZADD', K.contacts, now, A.contact)
  redis.call('ZREMRANGEBYSCORE', K.contacts, '-inf', now - tonumber(A.contact_window))
  redis.call('EXPIRE', K.contacts, tonumber(A.contact_window) + 60)
end
if A.open_op == 'set' then
  redis.call('HSET', K.open_journeys, A.open_field, A.open_value)
  redis.call('EXPIRE', K.open_journeys, A.journey_ttl)
elseif A.open_op == 'del' then
  redis.call('HDEL', K.open_journeys, A.open_field)
elseif A.open_op == 'clear' then
  redis.call('DEL', K.open_journeys)
end
if A.pending_until ~= '' then
  redis.call('ZADD', K.pending, A.pending_until, A.decision_id)
end
return 1
""",
    keys=("decision", "journey", "decisions", "contacts", "open_journeys", "pending", "budget"),
    args=(
        "decision_ttl",
        "journey_entry",
        "journey_max",
        "journey_ttl",
        "decision_id",
        "decisions_max",
        "contact",
        "now",
        "contact_window",
        "open_op",
        "open_field",
        "open_value",
        "pending_until",
        "customer_id",
        "offer_id",
        "channel",
        "prior",
        "features",
        "meta",
        "budget_max",
        "budget_ttl",
        "contacts_since",
        "contacts_read",
        "reward_on",
        "trial",
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """The chosen offer's global budget for the current window: its counter, its maximum, how long it lives."""

    key: str
    max: int
    ttl_seconds: int


class StateStore:
    """Async access to customer state; one instance per server, shared by all requests."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        decision_ttl_seconds: int,
        journey_max_events: int,
        context_events: int = 50,
        scripts: ScriptConnection | None = None,
        url: str = "",
    ) -> None:
        self._redis = client
        self.decision_ttl_seconds = decision_ttl_seconds
        self.journey_max_events = journey_max_events
        self.context_events = min(context_events, journey_max_events)
        self._scripts = scripts or ScriptConnection(url or _url_of(client))
        """The decision path's scripts go through one pipelined connection (see script_connection)."""

    async def aclose(self) -> None:
        """Close the scripts' connection (the client passed in belongs to the caller)."""
        await self._scripts.aclose()

    async def read_context(
        self,
        customer_id: str,
        now: float,
        *,
        origin_channel: str = "",
        request_attributes: Mapping[str, str] | None = None,
        contact_window: float = 0.0,
        suppression_window: float = 0.0,
    ) -> CustomerContext:
        """Profile, recent journey, contact history and open journeys in one round trip."""
        raw_profile, raw_journey, raw_contacts, raw_open, raw_declines = await self._scripts.run(
            _READ_SCRIPT,
            keys={
                "profile": keys.profile(customer_id),
                "journey": keys.journey(customer_id),
                "contacts": keys.contacts(customer_id),
                "open_journeys": keys.open_journeys(customer_id),
                "declines": keys.declines(customer_id),
            },
            args={
                "last_event": self.context_events - 1,
                "contacts_since": f"{now - contact_window:.3f}",
                "declines_since": f"{now - suppression_window:.3f}" if suppression_window > 0 else "+inf",
            },
            retry=True,
        )  # a read: safe to run again after a dropped connection
        return codec.decode_context(
            customer_id,
            now,
            origin_channel,
            request_attributes or {},
            raw_profile,
            raw_journey,
            codec.pairs(raw_contacts),
            codec.pairs(raw_open),
            codec.pairs(raw_declines),
        )

    async def write_decision(
        self,
        decision_id: str,
        request_id: str,
        ctx: CustomerContext,
        event: Event,
        decision: Decision,
        *,
        contact_window: float,
        prior: float = 0.0,
        attribution_seconds: float = 0.0,
        shadow: Mapping[str, object] | None = None,
        budget: Budget | None = None,
        reward_on: str = "accepted",
        trial: str = "",
    ) -> WriteResult:
        """Record the decision, append the event to the journey and count the contact: one atomic script.

        ``budget`` is the chosen offer's global budget; ``trial`` the champion/challenger weights
        (:func:`~nba_service.learning.guard.trial_weights`) the outcome carries to the learner's guard.
        Nothing is written unless the
        result is :attr:`~WriteResult.WRITTEN`.
        """
        customer_id = ctx.profile.customer_id
        now = ctx.now
        fields = journey_fields(event)
        contact = (
            ""
            if decision.offer_id is None
            else codec.contact_member(decision_id, decision.offer_id, decision.channel, decision.category)
        )
        open_op, open_field, open_value = "", "", ""
        change = open_journey_change(event)
        if change is not None:
            open_op, open_field = change.op, ":".join(change.key) if change.op != "clear" else ""
            open_value = codec.encode_open_journey(now, fields) if change.op == "set" else ""
        meta = {
            "request_id": request_id,
            "ts": round(now, 3),
            "event_type": event.type,
            "origin_channel": ctx.origin_channel,
            "category": decision.category,
            "score": decision.score,
            "propensity": decision.propensity,
            "policy_version": decision.policy_version,
            "model_version": decision.model_version,
        }
        if shadow:
            meta["shadow"] = shadow
        written = await self._scripts.run(
            _WRITE_SCRIPT,
            keys={
                "decision": keys.decision(decision_id),
                "journey": keys.journey(customer_id),
                "decisions": keys.decisions(customer_id),
                "contacts": keys.contacts(customer_id),
                "open_journeys": keys.open_journeys(customer_id),
                "pending": keys.PENDING_OUTCOMES,
                "budget": budget.key if budget else keys.no_budget(customer_id),
            },
            args={
                "decision_ttl": self.decision_ttl_seconds,
                "journey_entry": codec.encode_journey(now, event.type, ctx.origin_channel, fields),
                "journey_max": self.journey_max_events,
                "journey_ttl": JOURNEY_TTL_SECONDS,
                "decision_id": decision_id,
                "decisions_max": RECENT_DECISIONS,
                "contact": contact,
                "now": f"{now:.3f}",
                "contact_window": f"{max(contact_window, 1.0):.0f}",
                "open_op": open_op,
                "open_field": open_field,
                "open_value": open_value,
                "pending_until": f"{now + attribution_seconds:.3f}" if contact and attribution_seconds > 0 else "",
                "customer_id": customer_id,
                "offer_id": decision.offer_id or "",
                "channel": decision.channel,
                "prior": repr(prior),
                "features": codec.dumps(decision.features),
                "meta": codec.dumps(meta),
                "budget_max": budget.max if budget else "",
                "budget_ttl": budget.ttl_seconds if budget else 0,
                "contacts_since": f"{now - contact_window:.3f}" if contact_window > 0 else "",
                "contacts_read": len(ctx.contacts),
                "reward_on": reward_on,
                "trial": trial,
            },
        )
        return WriteResult(int(written))

    async def record_outcome(self, decision_id: str, outcome: str, value: float, now: float) -> RecordedOutcome:
        """Join an outcome to its decision; idempotent per (decision, outcome).

        The first outcome that settles the offer's reward (see ``reward`` in the policy) is
        appended to the outcome stream, in the same script, for the learner. A decline or
        dismissal is then counted among the customer's declines (again when the report is
        repeated, so a retry after a lost reply completes it).
        """
        result = await self._scripts.run(
            _OUTCOME_SCRIPT,
            keys={
                "decision": keys.decision(decision_id),
                "pending": keys.PENDING_OUTCOMES,
                "stream": keys.OUTCOME_STREAM,
            },
            args={
                "outcome": outcome,
                "entry": f"{now:.3f}|{value!r}",
                "decision_id": decision_id,
                "stream_maxlen": OUTCOME_STREAM_MAXLEN,
            },
        )
        status = OutcomeStatus(int(result[0]))
        if status is OutcomeStatus.NOT_FOUND:
            return RecordedOutcome(status)
        _, learn, offer, channel, customer = result
        recorded = RecordedOutcome(
            status=status,
            learn=bool(learn),
            offer_id=(offer or b"").decode(),
            channel=(channel or b"").decode(),
            customer_id=(customer or b"").decode(),
        )
        if outcome in ("declined", "dismissed") and recorded.offer_id and recorded.customer_id:
            await self._scripts.run(
                _DECLINE_SCRIPT,
                keys={"declines": keys.declines(recorded.customer_id)},
                args={
                    "now": f"{now:.3f}",
                    "member": f"{recorded.offer_id}|{decision_id}",
                    "keep_seconds": DECLINES_KEPT_SECONDS,
                },
            )
        return recorded

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
            for decision_id, record in zip(decision_ids, records, strict=False):
                if record:  # expired decisions drop out of the view
                    past.append(_past_decision(decision_id.decode(), record))
        return CustomerView(
            profile=codec.decode_profile(customer_id, raw_profile),
            journey=tuple(codec.decode_journey(r) for r in raw_journey),
            open_journeys=tuple(
                sorted((codec.decode_open_journey(f, v) for f, v in raw_open.items()), key=lambda j: -j.opened)
            ),
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
