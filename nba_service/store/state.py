"""Customer state in Redis: one round trip to read a decision's context, one
atomic script to record it, one script to join an outcome, one to record a
moment without a decision; profile updates with their consent audit, and erasure.

Key layout in :mod:`nba_service.store.keys`; value formats in
:mod:`nba_service.store.codec`. Every script names its keys and arguments
(:class:`~nba_service.store.script_connection.LuaScript`) and receives every
key it touches in KEYS.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from nba_service.domain import (
    CustomerContext,
    CustomerProfile,
    CustomerView,
    Decision,
    Event,
    OpenJourney,
    OutcomeStatus,
    PastDecision,
    RecordedEvent,
    RecordedOutcome,
    StoreUnavailableError,
    WriteResult,
)
from nba_service.domain.journeys import journey_fields, open_journey_change, opened_product
from nba_service.domain.profile_update import Erasure, ProfileMask, apply_update, consent_changes, with_holding
from nba_service.store import audit, codec, keys
from nba_service.store.connect import script_connection_for
from nba_service.store.script_connection import ClusterScriptConnection, LuaScript, ScriptConnection, gather_replies
from nba_service.store.urls import url_from_options

__all__ = ["Budget", "DecisionWrite", "StateStore", "budget_key"]

JOURNEY_TTL_SECONDS = 90 * 86400
DECLINES_KEPT_SECONDS = 365 * 86400
"""Declines older than this are dropped; ``suppress_after`` windows are at most this long."""
ACCEPTED_KEPT_SECONDS = 365 * 86400
"""Accepted offers older than this are dropped; ``accepted_window`` windows are at most this long."""
OUTCOME_STREAM_MAXLEN = 10_000
"""Each bucket's outcome stream is trimmed (approximately) to this many entries (2.56 million in all)."""
UPDATE_RETRIES = 10
"""Times a profile update (or an erasure) is read and tried again while other writes to the customer win."""
ERASE_BATCH = 1000
"""Decisions an erasure deletes per script call (bounding how long one call holds Redis)."""
CUSTOMER_PLACEHOLDER = "<customer>"
"""What replaces the customer's id in a logged feature name (a free attribute quoting it)."""

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

# The customer's accepted offers, for "not offered again within accepted_window": one member per
# accepted decision (offer|product|decision id), scored by the first acceptance or conversion (NX: a
# retried report, or a conversion after the acceptance, adds nothing), older ones trimmed.
_ACCEPTED_SCRIPT = LuaScript(
    """
redis.call('ZADD', K.accepted, 'NX', A.now, A.member)
redis.call('ZREMRANGEBYSCORE', K.accepted, '-inf', tonumber(A.now) - tonumber(A.keep_seconds))
redis.call('EXPIRE', K.accepted, A.keep_seconds)
return 1
""",
    keys=("accepted",),
    args=("now", "member", "keep_seconds"),
)

# Reads a decision's whole context in one command: profile, recent journey,
# contacts within the longest limit window (member, score pairs), open journeys,
# declines within the longest suppression window, offers accepted within the
# longest accepted_window.
_READ_SCRIPT = LuaScript(
    """
return {redis.call('GET', K.profile) or false,
        redis.call('LRANGE', K.journey, 0, tonumber(A.last_event)),
        redis.call('ZRANGEBYSCORE', K.contacts, A.contacts_since, '+inf', 'WITHSCORES'),
        redis.call('HGETALL', K.open_journeys),
        redis.call('ZRANGEBYSCORE', K.declines, A.declines_since, '+inf', 'WITHSCORES'),
        redis.call('ZRANGEBYSCORE', K.accepted, A.accepted_since, '+inf', 'WITHSCORES')}
""",
    keys=("profile", "journey", "contacts", "open_journeys", "declines", "accepted"),
    args=("last_event", "contacts_since", "declines_since", "accepted_since"),
)

# What a moment does to the journey, shared by the scripts that record one (with or without a decision):
# the entry goes first in the journey (trimmed to journey_max, kept journey_ttl), and the open-journey
# change of domain.journeys.open_journey_change applies: "set" opens (or refreshes) open_field with
# open_value; "del" closes open_field; "clear" closes every journey whose field starts with open_field
# ("cart:": every cart). ``closed`` holds what was closed: field, value, field, value, ...
_JOURNEY_LUA = """
redis.call('LPUSH', K.journey, A.journey_entry)
redis.call('LTRIM', K.journey, 0, tonumber(A.journey_max) - 1)
redis.call('EXPIRE', K.journey, A.journey_ttl)
local closed = {}
if A.open_op == 'set' then
  redis.call('HSET', K.open_journeys, A.open_field, A.open_value)
  redis.call('EXPIRE', K.open_journeys, A.journey_ttl)
elseif A.open_op == 'del' then
  local value = redis.call('HGET', K.open_journeys, A.open_field)
  if value then
    redis.call('HDEL', K.open_journeys, A.open_field)
    closed = {A.open_field, value}
  end
elseif A.open_op == 'clear' then
  local open = redis.call('HGETALL', K.open_journeys)
  for i = 1, #open, 2 do
    if string.sub(open[i], 1, #A.open_field) == A.open_field then
      redis.call('HDEL', K.open_journeys, open[i])
      closed[#closed + 1] = open[i]
      closed[#closed + 1] = open[i + 1]
    end
  end
end
"""
_JOURNEY_ARGS = ("journey_entry", "journey_max", "journey_ttl", "open_op", "open_field", "open_value")

# An offer's budget, on the offer's own slot (keys.budget): a decision takes one unit before it is
# written (1) or learns that none is left (0); a unit is given back when the write then refused.
_RESERVE_SCRIPT = LuaScript(
    """
if tonumber(redis.call('GET', K.budget) or '0') >= tonumber(A.max) then return 0 end
redis.call('INCR', K.budget)
redis.call('EXPIRE', K.budget, A.ttl)
return 1
""",
    keys=("budget",),
    args=("max", "ttl"),
)
_RELEASE_SCRIPT = LuaScript(
    """
if tonumber(redis.call('GET', K.budget) or '0') > 0 then return redis.call('DECR', K.budget) end
return 0
""",
    keys=("budget",),
)

# Records one decision atomically (a script runs whole or not at all): the decision
# hash with its TTL, the journey entry, the decision's place in the customer's decision
# index (scored by time, trimmed to the decisions' TTL: erasure finds them all), the contact
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
redis.call('HSET', K.decision, 'customer_id', A.customer_id, 'offer_id', A.offer_id, 'channel', A.channel,
           'prior', A.prior, 'features', A.features, 'meta', A.meta, 'reward_on', A.reward_on)
if A.trial ~= '' then redis.call('HSET', K.decision, 'trial', A.trial) end
redis.call('EXPIRE', K.decision, A.decision_ttl)
JOURNEY
redis.call('ZADD', K.decision_index, A.now, A.decision_id)
redis.call('ZREMRANGEBYSCORE', K.decision_index, '-inf', now - tonumber(A.decision_ttl))
redis.call('EXPIRE', K.decision_index, A.decision_ttl)
if A.contact ~= '' then
  redis.call('ZADD', K.contacts, now, A.contact)
  redis.call('ZREMRANGEBYSCORE', K.contacts, '-inf', now - tonumber(A.contact_window))
  redis.call('EXPIRE', K.contacts, tonumber(A.contact_window) + 60)
end
if A.pending_until ~= '' then
  redis.call('ZADD', K.pending, A.pending_until, A.decision_id)
end
return 1
""".replace("JOURNEY", _JOURNEY_LUA.strip()),
    keys=("decision", "journey", "decision_index", "contacts", "open_journeys", "pending"),
    args=(
        *_JOURNEY_ARGS,
        "decision_ttl",
        "decision_id",
        "contact",
        "now",
        "contact_window",
        "pending_until",
        "customer_id",
        "offer_id",
        "channel",
        "prior",
        "features",
        "meta",
        "contacts_since",
        "contacts_read",
        "reward_on",
        "trial",
    ),
)

# Records a moment without a decision (RecordEvent), atomically: the journey entry and the open-journey
# change only (no decision, contact, budget or pending outcome). Replies with the journeys closed.
_EVENT_SCRIPT = LuaScript(
    _JOURNEY_LUA + "return closed\n",
    keys=("journey", "open_journeys"),
    args=_JOURNEY_ARGS,
)

# Records a product_opened moment without a decision: the journey entry and the profile with the product
# among its holdings, atomically, if the stored profile is still the one the holding was added to ("" when
# there was none): the compare and set of a profile update, so a concurrent update is never lost (the
# loser reads again). ``profile`` is "" when the customer held the product already. Replies -1 when the
# profile changed (nothing written), else with the journeys closed.
_PRODUCT_EVENT_SCRIPT = LuaScript(
    """
if (redis.call('GET', K.profile) or '') ~= A.expected then return -1 end
"""
    + _JOURNEY_LUA
    + """
if A.profile ~= '' then redis.call('SET', K.profile, A.profile) end
return closed
""",
    keys=("journey", "open_journeys", "profile"),
    args=(*_JOURNEY_ARGS, "expected", "profile"),
)

# Stores a profile with a product added to its holdings (after a decided product_opened moment), with the
# same compare and set: 0 when the profile changed since it was read.
_HOLDING_SCRIPT = LuaScript(
    """
if (redis.call('GET', K.profile) or '') ~= A.expected then return 0 end
redis.call('SET', K.profile, A.profile)
return 1
""",
    keys=("profile",),
    args=("expected", "profile"),
)

# Stores a profile updated in Python, with its consent changes in the audit, if the stored
# profile is still the one the update was computed from ("" when there was none): a compare
# and set, so two updates at once never lose a consent change (the loser reads again).
# ``changes`` is a JSON list of [channel, old, new].
_UPSERT_SCRIPT = LuaScript(
    """
if (redis.call('GET', K.profile) or '') ~= A.expected then return 0 end
redis.call('SET', K.profile, A.profile)
for _, change in ipairs(cjson.decode(A.changes)) do
  redis.call('XADD', K.audit, 'MAXLEN', '~', A.audit_maxlen, '*', 'customer', A.customer, 'action', 'consent',
             'channel', change[1], 'old', change[2], 'new', change[3], 'caller', A.caller, 'ts', A.ts,
             'request_id', A.request_id)
end
return 1
""",
    keys=("profile", "audit"),
    args=("expected", "profile", "changes", "customer", "caller", "ts", "request_id", "audit_maxlen"),
)

# Erases a customer. The decision hashes to delete are passed after the named KEYS, their ids
# after the named ARGV, in the same order; each leaves the pending set, the decision index and
# the legacy list. With "final" unset that is all (a batch of a customer with many decisions).
# With "final" set, every other key of the customer goes too and the erasure is audited, unless
# the index or the legacy list still holds an id that was not passed (a decision recorded since
# they were read): then nothing is done and the reply is -1, for the caller to read them again.
# Replies {customer keys that existed (0 for a batch), decision hashes deleted}.
_ERASE_KEYS = (
    "profile",
    "journey",
    "contacts",
    "open_journeys",
    "declines",
    "accepted",
    "decision_index",
    "decisions",
    "pending",
    "audit",
)
_ERASE_ARGS = ("final", "customer", "caller", "ts", "request_id", "audit_maxlen")
_ERASE_SCRIPT = LuaScript(
    """
local first_key, first_arg = FIRST_KEY, FIRST_ARG
if A.final == '1' then
  local passed = {}
  for i = first_arg, #ARGV do passed[ARGV[i]] = true end
  for _, id in ipairs(redis.call('ZRANGE', K.decision_index, 0, -1)) do
    if not passed[id] then return -1 end
  end
  for _, id in ipairs(redis.call('LRANGE', K.decisions, 0, -1)) do
    if not passed[id] then return -1 end
  end
end
local deleted = 0
for i = first_key, #KEYS do
  local id = ARGV[first_arg + i - first_key]
  deleted = deleted + redis.call('DEL', KEYS[i])
  redis.call('ZREM', K.pending, id)
  redis.call('ZREM', K.decision_index, id)
  redis.call('LREM', K.decisions, 0, id)
end
if A.final ~= '1' then return {0, deleted} end
local stored = redis.call('EXISTS', K.profile, K.journey, K.contacts, K.open_journeys, K.declines, K.accepted)
redis.call('DEL', K.profile, K.journey, K.contacts, K.open_journeys, K.declines, K.accepted, K.decision_index,
           K.decisions)
redis.call('XADD', K.audit, 'MAXLEN', '~', A.audit_maxlen, '*', 'customer', A.customer, 'action', 'erased',
           'channel', '', 'old', '', 'new', '', 'caller', A.caller, 'ts', A.ts, 'request_id', A.request_id)
return {stored, deleted}
""".replace("FIRST_KEY", str(len(_ERASE_KEYS) + 1)).replace("FIRST_ARG", str(len(_ERASE_ARGS) + 1)),
    keys=_ERASE_KEYS,
    args=_ERASE_ARGS,
)


def _read_keys(customer_id: str) -> list[str]:
    """KEYS of :data:`_READ_SCRIPT`, in its order."""
    return [
        keys.profile(customer_id),
        keys.journey(customer_id),
        keys.contacts(customer_id),
        keys.open_journeys(customer_id),
        keys.declines(customer_id),
        keys.accepted(customer_id),
    ]


def _decode_read(
    customer_id: str, now: float, origin_channel: str, request_attributes: Mapping[str, str], reply: list[object]
) -> CustomerContext:
    raw_profile, raw_journey, raw_contacts, raw_open, raw_declines, raw_accepted = reply
    return codec.decode_context(
        customer_id,
        now,
        origin_channel,
        request_attributes,
        raw_profile,  # type: ignore[arg-type]
        raw_journey,  # type: ignore[arg-type]
        codec.pairs(raw_contacts),  # type: ignore[arg-type]
        codec.pairs(raw_open),  # type: ignore[arg-type]
        codec.pairs(raw_declines),  # type: ignore[arg-type]
        codec.pairs(raw_accepted),  # type: ignore[arg-type]
    )


def logged_features(features: Mapping[str, float], customer_id: str) -> Mapping[str, float]:
    """The features as a decision logs them (for the outcome stream and the learner).

    A free attribute (``req:`` or ``event:`` feature) that quotes the customer's id has it
    replaced with :data:`CUSTOMER_PLACEHOLDER`, so no logged feature names a customer and
    erasing the customer leaves nothing behind in what the models learn from.

    >>> logged_features({"req:ref=c42": 1.0, "segment=mass": 1.0}, "c42")
    {'req:ref=<customer>': 1.0, 'segment=mass': 1.0}
    """
    if not any(customer_id in name for name in features):
        return features
    logged: dict[str, float] = {}
    for name, value in features.items():
        if customer_id in name and name.startswith(("req:", "event:")):
            name = name.replace(customer_id, CUSTOMER_PLACEHOLDER)
        logged[name] = logged.get(name, 0.0) + value
    return logged


@dataclasses.dataclass(frozen=True, slots=True)
class DecisionWrite:
    """One decision of :meth:`StateStore.write_decisions`: the arguments of :meth:`StateStore.write_decision`."""

    decision_id: str
    request_id: str
    ctx: CustomerContext
    event: Event
    decision: Decision
    prior: float = 0.0
    attribution_seconds: float = 0.0
    shadow: Mapping[str, object] | None = None
    budget: Budget | None = None
    reward_on: str = "accepted"
    trial: str = ""

    def arguments(self) -> dict[str, Any]:
        """The arguments of :meth:`StateStore.write_decision`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


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
        self._scripts = scripts or script_connection_for(client, url or _url_of(client))
        """The decision path's scripts go through one pipelined connection (see script_connection)."""

    async def aclose(self) -> None:
        """Close the scripts' connection (the client passed in belongs to the caller)."""
        await self._scripts.aclose()

    @property
    def one_node(self) -> bool:
        """The scripts' connection reaches one Redis (not a cluster): :meth:`command_many` works."""
        return not isinstance(self._scripts, ClusterScriptConnection)

    async def command_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Plain commands sent together on the scripts' connection (:attr:`one_node` only), raw replies in order
        (``SET`` answers ``b"OK"`` or None); an error reply raises ``ResponseError`` once all are in."""
        replies = await self._scripts.command_many(commands)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    async def read_context(
        self,
        customer_id: str,
        now: float,
        *,
        origin_channel: str = "",
        request_attributes: Mapping[str, str] | None = None,
        contact_window: float = 0.0,
        suppression_window: float = 0.0,
        accepted_window: float = 0.0,
    ) -> CustomerContext:
        """Profile, recent journey, contact history, open journeys, declines and accepted offers in one round
        trip (declines within ``suppression_window``, accepted offers within ``accepted_window``: none
        when 0)."""
        args = self._read_args(now, contact_window, suppression_window, accepted_window)
        reply = await self._scripts.evalsha(
            _READ_SCRIPT, _read_keys(customer_id), args, retry=True
        )  # a read: safe to run again after a dropped connection
        return _decode_read(customer_id, now, origin_channel, request_attributes or {}, reply)

    async def read_contexts(
        self,
        customer_ids: list[str],
        now: float,
        *,
        origin_channel: str = "",
        contact_window: float = 0.0,
        suppression_window: float = 0.0,
        accepted_window: float = 0.0,
    ) -> list[CustomerContext]:
        """:meth:`read_context` of many customers, their reads sent together (a campaign batch)."""
        args = self._read_args(now, contact_window, suppression_window, accepted_window)
        replies = await self._scripts.evalsha_many(
            _READ_SCRIPT, [(_read_keys(c), args) for c in customer_ids], retry=True
        )
        return [_decode_read(c, now, origin_channel, {}, r) for c, r in zip(customer_ids, replies, strict=True)]

    def _read_args(
        self, now: float, contact_window: float, suppression_window: float, accepted_window: float
    ) -> list[object]:
        """ARGV of :data:`_READ_SCRIPT`, in its order."""
        return [
            self.context_events - 1,
            f"{now - contact_window:.3f}",
            f"{now - suppression_window:.3f}" if suppression_window > 0 else "+inf",
            f"{now - accepted_window:.3f}" if accepted_window > 0 else "+inf",
        ]

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

        ``budget`` is the chosen offer's global budget: a unit of it is reserved first, on the budget's own
        slot (one more script call, only for an offer with a budget), and given back when the write refuses
        (:attr:`~WriteResult.CONTACTS_CHANGED`). A budget is never overspent, on one Redis or across a
        cluster's shards. It can be underspent by the units of writes whose outcome is unknown (a
        connection lost while the script ran, the process killed between the two calls): those are not
        given back, as the decision may have been recorded; at most one unit per decision in flight. A write
        Redis answers with an error (``ResponseError``: a key of the wrong type, out of memory) gives its unit
        back and raises: the decision is not recorded (though a script that failed half way keeps what it wrote
        before the failing command: Redis has no rollback).
        ``trial`` is the champion/challenger weights (:func:`~nba_service.learning.guard.trial_weights`)
        the outcome carries to the learner's guard. Nothing is written unless the result is
        :attr:`~WriteResult.WRITTEN`.
        """
        if budget is not None:
            reserved = await self._scripts.run(
                _RESERVE_SCRIPT, keys={"budget": budget.key}, args={"max": budget.max, "ttl": budget.ttl_seconds}
            )
            if not int(reserved):
                return WriteResult.BUDGET_USED_UP
        write = DecisionWrite(
            decision_id, request_id, ctx, event, decision, prior, attribution_seconds, shadow, budget, reward_on, trial
        )
        try:
            reply = await self._scripts.evalsha(_WRITE_SCRIPT, *self._write_call(write, contact_window))
        except redis.ResponseError:  # the script failed: not recorded, the unit is not used
            if budget is not None:
                await self._scripts.run(_RELEASE_SCRIPT, keys={"budget": budget.key}, args={})
            raise
        result = WriteResult(int(reply))
        if budget is not None and result is not WriteResult.WRITTEN:
            await self._scripts.run(_RELEASE_SCRIPT, keys={"budget": budget.key}, args={})
        return result

    async def write_decisions(
        self, writes: list[DecisionWrite], *, contact_window: float
    ) -> list[WriteResult | redis.ResponseError]:
        """:meth:`write_decision` of many decisions (a campaign batch), their scripts sent together; each is
        atomic on its own and answers as it would alone. A write with a budget reserves its unit first.

        A write Redis answers with an error (``WRONGTYPE`` on one customer's key, ``OOM``) has that error as its
        result, returned, not raised: the other writes ran, and their results are kept (a failed write with a
        budget gave its unit back, see :meth:`write_decision`). A lost connection or a timeout raises
        (``ConnectionError``, ``TimeoutError``): the outcome of every write in flight is unknown.
        """
        results: list[WriteResult | redis.ResponseError | None] = [None] * len(writes)
        budgeted = [i for i, w in enumerate(writes) if w.budget is not None]
        budgeted_results = await gather_replies(  # a unit of the offer's budget first, on the budget's own slot
            (self.write_decision(**writes[i].arguments(), contact_window=contact_window) for i in budgeted),
            return_errors=True,
        )
        for i, result in zip(budgeted, budgeted_results, strict=True):
            results[i] = result
        plain = [i for i, result in enumerate(results) if result is None]
        calls = [self._write_call(writes[i], contact_window) for i in plain]
        replies = await self._scripts.evalsha_many(_WRITE_SCRIPT, calls, return_errors=True)
        for i, written in zip(plain, replies, strict=True):
            results[i] = written if isinstance(written, redis.ResponseError) else WriteResult(int(written))
        return [r for r in results if r is not None]

    def _write_call(self, write: DecisionWrite, contact_window: float) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV of :data:`_WRITE_SCRIPT` for one decision (its budget is not the script's)."""
        decision_id, request_id, ctx, event, decision = (
            write.decision_id,
            write.request_id,
            write.ctx,
            write.event,
            write.decision,
        )
        prior, attribution_seconds, shadow, reward_on, trial = (
            write.prior,
            write.attribution_seconds,
            write.shadow,
            write.reward_on,
            write.trial,
        )
        customer_id = ctx.profile.customer_id
        bucket = keys.bucket_of(customer_id)
        now = ctx.now
        contact = (
            ""
            if decision.offer_id is None
            else codec.contact_member(decision_id, decision.offer_id, decision.channel, decision.category)
        )
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
        if decision.deliver_after is not None:  # deferred by quiet hours: when to deliver (Unix seconds)
            meta["deliver_after"] = round(decision.deliver_after, 3)
        return _WRITE_SCRIPT.bind(
            keys={
                "decision": keys.decision(decision_id, bucket),
                "journey": keys.journey(customer_id),
                "decision_index": keys.decision_index(customer_id),
                "contacts": keys.contacts(customer_id),
                "open_journeys": keys.open_journeys(customer_id),
                "pending": keys.pending(bucket),
            },
            args={
                **self._journey_args(now, ctx.origin_channel, event),
                "decision_ttl": self.decision_ttl_seconds,
                "decision_id": decision_id,
                "contact": contact,
                "now": f"{now:.3f}",
                "contact_window": f"{max(contact_window, 1.0):.0f}",
                "pending_until": f"{now + attribution_seconds:.3f}" if contact and attribution_seconds > 0 else "",
                "customer_id": customer_id,
                "offer_id": decision.offer_id or "",
                "channel": decision.channel,
                "prior": repr(prior),
                "features": codec.dumps(logged_features(decision.features, customer_id)),
                "meta": codec.dumps(meta),
                "contacts_since": f"{now - contact_window:.3f}" if contact_window > 0 else "",
                "contacts_read": len(ctx.contacts),
                "reward_on": reward_on,
                "trial": trial,
            },
        )

    def _journey_args(self, now: float, origin_channel: str, event: Event) -> dict[str, object]:
        """The arguments of :data:`_JOURNEY_LUA`: the event's journey entry and its open-journey change."""
        fields = journey_fields(event)
        open_op, open_field, open_value = "", "", ""
        change = open_journey_change(event)
        if change is not None:
            open_op = change.op
            open_field = f"{change.key[0]}:" if change.op == "clear" else ":".join(change.key)
            open_value = codec.encode_open_journey(now, fields) if change.op == "set" else ""
        return {
            "journey_entry": codec.encode_journey(now, event.type, origin_channel, fields),
            "journey_max": self.journey_max_events,
            "journey_ttl": JOURNEY_TTL_SECONDS,
            "open_op": open_op,
            "open_field": open_field,
            "open_value": open_value,
        }

    async def record_event(self, customer_id: str, origin_channel: str, event: Event, now: float) -> RecordedEvent:
        """Append a moment to the journey and apply its open-journey change, without a decision: one atomic
        script, nothing else written (no decision, contact or budget). A ``product_opened`` event also adds
        its product to the profile's holdings, in the same script (:data:`_PRODUCT_EVENT_SCRIPT`)."""
        now = round(now, 3)  # the journey entry's precision: the open journey and the answer say the same time
        args = self._journey_args(now, origin_channel, event)
        journey_keys = {"journey": keys.journey(customer_id), "open_journeys": keys.open_journeys(customer_id)}
        product = opened_product(event)
        added = ""
        if product is None:
            raw_closed = await self._scripts.run(_EVENT_SCRIPT, keys=journey_keys, args=args)
        else:
            raw_closed, added = await self._record_product_event(customer_id, product, journey_keys, args)
        opened = None
        change = open_journey_change(event)
        if change is not None and change.op == "set":
            opened = OpenJourney(*change.key, now, journey_fields(event))
        return RecordedEvent(
            timestamp=now,
            opened=opened,
            closed=tuple(codec.decode_open_journey(f, v) for f, v in codec.pairs(raw_closed)),
            holding_added=added,
        )

    async def _record_product_event(
        self, customer_id: str, product: str, journey_keys: Mapping[str, str], args: Mapping[str, object]
    ) -> tuple[list[bytes], str]:
        """The journey entry and the holding, in one script with the profile's compare and set; (the journeys
        closed, the product when it was added)."""
        key = keys.profile(customer_id)
        for _ in range(UPDATE_RETRIES):
            raw = await self._redis.get(key)
            stored = codec.decode_profile(customer_id, raw) if raw is not None else None
            updated = with_holding(stored, customer_id, product)
            result = await self._scripts.run(
                _PRODUCT_EVENT_SCRIPT,
                keys={**journey_keys, "profile": key},
                args={
                    **args,
                    "expected": raw if raw is not None else b"",
                    "profile": codec.encode_profile(updated) if updated is not None else "",
                },
            )
            if result != -1:
                return result, product if updated is not None else ""
        raise StoreUnavailableError("the profile kept changing under this event; nothing was recorded, retry")

    async def add_holding(self, customer_id: str, product: str) -> bool:
        """Add ``product`` to the customer's holdings (a profile holding it is created when none is stored),
        with the compare and set of a profile update; True when it was added, False when already held."""
        key = keys.profile(customer_id)
        for _ in range(UPDATE_RETRIES):
            raw = await self._redis.get(key)
            stored = codec.decode_profile(customer_id, raw) if raw is not None else None
            updated = with_holding(stored, customer_id, product)
            if updated is None:
                return False
            written = await self._scripts.run(
                _HOLDING_SCRIPT,
                keys={"profile": key},
                args={"expected": raw if raw is not None else b"", "profile": codec.encode_profile(updated)},
            )
            if int(written):
                return True
        raise StoreUnavailableError("the profile kept changing under this update; nothing was changed, retry")

    async def record_outcome(
        self, decision_id: str, outcome: str, value: float, now: float, *, products: Mapping[str, str] | None = None
    ) -> RecordedOutcome:
        """Join an outcome to its decision; idempotent per (decision, outcome).

        The first outcome that settles the offer's reward (see ``reward`` in the policy) is
        appended to the outcome stream, in the same script, for the learner. A decline or
        dismissal is then counted among the customer's declines, an acceptance or conversion
        among the offers the customer accepted, with the product the offer sells (``products``:
        offer id -> product, of the live policy); both again when the report is repeated, so a
        retry after a lost reply completes it.
        """
        bucket = keys.decision_bucket(decision_id)
        if bucket is None:  # an id of the layout before buckets: the migration noted its bucket
            found = await self._redis.hget(keys.LEGACY_DECISIONS, decision_id)
            if found is None:
                return RecordedOutcome(OutcomeStatus.NOT_FOUND)
            bucket = int(found)
        result = await self._scripts.run(
            _OUTCOME_SCRIPT,
            keys={
                "decision": keys.decision(decision_id, bucket),
                "pending": keys.pending(bucket),
                "stream": keys.outcome_stream(bucket),
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
        if outcome in ("accepted", "converted") and recorded.offer_id and recorded.customer_id:
            await self._scripts.run(
                _ACCEPTED_SCRIPT,
                keys={"accepted": keys.accepted(recorded.customer_id)},
                args={
                    "now": f"{now:.3f}",
                    "member": codec.accepted_member(
                        recorded.offer_id, (products or {}).get(recorded.offer_id, ""), decision_id
                    ),
                    "keep_seconds": ACCEPTED_KEPT_SECONDS,
                },
            )
        return recorded

    async def upsert_profile(
        self,
        update: CustomerProfile,
        mask: ProfileMask | None = None,
        *,
        caller: str = "",
        request_id: str = "",
        now: float | None = None,
    ) -> bool:
        """Store the fields of ``update`` that ``mask`` names; True when the customer is new.

        Without a mask every field is replaced but the consents, which are merged
        (:meth:`ProfileMask.without_mask`). Every consent change goes to the consent audit
        (:mod:`~nba_service.store.audit`) with ``caller`` and ``request_id``, in the script
        that stores the profile; an update that another write to the profile overtook is
        computed again from the new profile.
        """
        mask = mask if mask is not None else ProfileMask.without_mask(update)
        key = keys.profile(update.customer_id)
        customer = ""
        for _ in range(UPDATE_RETRIES):
            raw = await self._redis.get(key)
            stored = codec.decode_profile(update.customer_id, raw) if raw is not None else None
            merged = apply_update(stored, update, mask)
            changes = consent_changes(stored, merged)
            if changes and not customer:
                customer = audit.pseudonym(await audit.pseudonym_secret_async(self._redis), update.customer_id)
            written = await self._scripts.run(
                _UPSERT_SCRIPT,
                keys={"profile": key, "audit": keys.consent_audit(keys.bucket_of(update.customer_id))},
                args={
                    "expected": raw if raw is not None else b"",
                    "profile": codec.encode_profile(merged),
                    "changes": codec.dumps([[c.channel, c.old, c.new] for c in changes]),
                    "customer": customer,
                    "caller": caller,
                    "ts": f"{time.time() if now is None else now:.3f}",
                    "request_id": request_id,
                    "audit_maxlen": audit.AUDIT_MAXLEN,
                },
            )
            if written:
                return raw is None
        raise StoreUnavailableError("the profile kept changing under this update; nothing was changed, retry")

    async def erase_customer(
        self, customer_id: str, *, caller: str = "", request_id: str = "", now: float | None = None
    ) -> Erasure:
        """Delete everything stored about a customer and audit the erasure (under its pseudonym).

        Profile, journey, contacts, open journeys, declines, the decision index and every
        decision still kept (with its place in the pending set: it will teach nothing). The
        outcome stream keeps what the learner needs, which names no customer (decision id,
        offer, channel, features: see :func:`logged_features`). The erasure is audited even
        when nothing was stored.
        """
        customer = audit.pseudonym(await audit.pseudonym_secret_async(self._redis), customer_id)
        bucket = keys.bucket_of(customer_id)  # the customer's decisions are in its bucket, whatever their ids
        customer_keys = {
            "profile": keys.profile(customer_id),
            "journey": keys.journey(customer_id),
            "contacts": keys.contacts(customer_id),
            "open_journeys": keys.open_journeys(customer_id),
            "declines": keys.declines(customer_id),
            "accepted": keys.accepted(customer_id),
            "decision_index": keys.decision_index(customer_id),
            "decisions": keys.decisions(customer_id),
            "pending": keys.pending(bucket),
            "audit": keys.consent_audit(bucket),
        }
        deleted = 0
        overtaken = 0
        while overtaken < UPDATE_RETRIES:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrange(keys.decision_index(customer_id), 0, -1)  # oldest first
                pipe.lrange(keys.decisions(customer_id), 0, -1)
                indexed, listed = await pipe.execute()
            ids = list(dict.fromkeys(i.decode() for i in (*listed, *indexed)))
            final = len(ids) <= ERASE_BATCH
            batch = ids if final else ids[:ERASE_BATCH]
            named_keys, named_args = _ERASE_SCRIPT.bind(
                customer_keys,
                {
                    "final": "1" if final else "0",
                    "customer": customer,
                    "caller": caller,
                    "ts": f"{time.time() if now is None else now:.3f}",
                    "request_id": request_id,
                    "audit_maxlen": audit.AUDIT_MAXLEN,
                },
            )
            result = await self._scripts.evalsha(
                _ERASE_SCRIPT, [*named_keys, *(keys.decision(i, bucket) for i in batch)], [*named_args, *batch]
            )
            if result == -1:
                overtaken += 1  # a decision was recorded meanwhile: erase it too
                continue
            stored, removed = (int(n) for n in result)
            deleted += removed
            if final:
                return Erasure(erased=bool(stored or deleted), decisions=deleted)
        raise StoreUnavailableError("decisions for this customer kept being recorded; retry the erasure")

    async def customer_view(self, customer_id: str, max_events: int, max_decisions: int = 10) -> CustomerView:
        """Profile, recent journey, open journeys and the ``max_decisions`` most recent decisions, newest first."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.profile(customer_id))
            pipe.lrange(keys.journey(customer_id), 0, max_events - 1)
            pipe.hgetall(keys.open_journeys(customer_id))
            pipe.zrevrange(keys.decision_index(customer_id), 0, max_decisions - 1)
            pipe.lrange(keys.decisions(customer_id), 0, max_decisions - 1)  # the legacy list, older
            raw_profile, raw_journey, raw_open, indexed, listed = await pipe.execute()
        decision_ids = list(dict.fromkeys((*indexed, *listed)))[:max_decisions]  # newest first
        past: list[PastDecision] = []
        if decision_ids:
            async with self._redis.pipeline(transaction=False) as pipe:
                bucket = keys.bucket_of(customer_id)
                for decision_id in decision_ids:
                    pipe.hgetall(keys.decision(decision_id.decode(), bucket))
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
    """A URL for the script connection that connects as ``client`` does: same server, database, ACL user
    and password and, for a TLS client, ``rediss://`` with its CA, client certificate and verification options."""
    pool = client.connection_pool
    return url_from_options(pool.connection_kwargs, tls=issubclass(pool.connection_class, aioredis.SSLConnection))


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
