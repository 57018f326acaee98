"""Upgrading a Redis to the key layout of :mod:`nba_service.store.keys`: ``nba store migrate``, and in place when
``nba serve`` (or ``nba learner``) starts on a Redis the previous release wrote (:func:`ensure_layout`).

The previous releases named keys as :class:`~nba_service.store.keys.Legacy` does (a customer's keys under its own
hash tag, one decision namespace, one outcome stream, one pending set, globals without a tag). :func:`migrate`
moves them, from ``source`` (a standalone Redis, or the primary Sentinel names) into ``target``:

- a customer's keys (``nba:c:{<customer>}:<what>``) to the same ``<what>`` in the customer's bucket;
- a decision (``nba:d:<id>``) to its customer's bucket, with ``<id> -> bucket`` in
  :data:`~nba_service.store.keys.LEGACY_DECISIONS` (so ``ReportOutcome`` finds an id without a bucket in it; the
  map expires after the last of those decisions);
- the pending-attribution set, member by member, to the pending set of the member's decision's bucket (members
  whose decision is gone are dropped);
- the outcome stream: the entries the learners' consumer group has not acknowledged (its pending entries and
  those after its last-delivered id; all of them when there is no group) to the outcome stream of their decision's
  bucket (bucket 0 when the decision is gone), with their ids and fields; acknowledged entries are already in a
  published model, and are not copied;
- policies, models, the change log and the pseudonym key to the same names on the ``{g}`` slot, the consent
  audit whole to :data:`~nba_service.store.keys.CONSENT_AUDIT_LEGACY`, each budget counter to the offer's slot;
- heartbeats and the learner's lock are dropped (their processes write them again); any other ``nba:`` key is
  left where it is and reported.

A key is copied with ``DUMP`` and ``RESTORE`` (type, value and TTL) or, when ``source`` and ``target`` are the same
standalone Redis (``in_place``), renamed (``RENAME``: O(1), keeps the TTL, and the old name is gone). A copy leaves
``source`` as it was; in place, the old pending set and outcome stream are deleted once moved.

Resumable: the phase and the ``SCAN`` cursor reached (and the counts so far) are kept in ``target`` under
:data:`CHECKPOINT` after every batch, so a migration that stopped (a crash, a killed pod, Ctrl-C) continues from
there when run again. Each step is idempotent, so a batch done again (its checkpoint was not written: the process
died in the middle of it) writes nothing twice: a key already moved is no longer in ``source`` (in place) or already
in ``target`` (``RESTORE`` answers ``BUSYKEY``, and the key is kept), a pending member is added again to a set, and an
outcome entry keeps its id, so one already copied is refused by its stream. The counts of a copy stay exact then
(what the batch had copied is counted with it); in place, that batch can be missing from them, never from the data.
At the end :data:`~nba_service.store.keys.LAYOUT` is set to :data:`~nba_service.store.keys.LAYOUT_VERSION` and the
checkpoint deleted.

Stop the previous release's servers first: what they write after the migration scanned past a key is not carried
over (the migration lists those still sending heartbeats).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.typing import EncodableT, FieldT

from nba_service.store import keys
from nba_service.store.keys import Legacy
from nba_service.store.outcome_stream import entry_order

__all__ = [
    "CHECKPOINT",
    "LOCK",
    "MigrationError",
    "MigrationLock",
    "MigrationReport",
    "ensure_layout",
    "has_legacy_keys",
    "layout_of",
    "migrate",
    "migrate_locked",
]

log = logging.getLogger(__name__)

_G = f"{keys.PREFIX}{{{keys.GLOBAL_TAG}}}:"
CHECKPOINT = _G + "migration"
"""Where a migration in progress keeps its phase, cursor and counts (a hash in the target)."""
LOCK = _G + "migration:lock"
"""Held (``SET NX PX``, renewed every batch) by the one process migrating a target."""
LOCK_TTL_MS = 30_000
WAIT_SECONDS = 900.0
"""How long a server that starts while another migrates waits for the layout before giving up."""
POLL_SECONDS = 0.5
LEGACY_SERVER_PREFIX = keys.PREFIX + "server:"
"""The previous release's heartbeats (``nba:server:<id>``, listed in :attr:`Legacy.SERVERS`)."""
PHASES = ("keys", "pending", "outcomes", "done")
UPGRADE_COMMANDS = ("RENAME", "PTTL", "PERSIST", "ZSCAN", "XPENDING")
"""What an upgrade in place sends beyond the commands of the nba ACL user (docs/security.md); a copy to another
Redis sends ``DUMP`` to the source and ``RESTORE`` to the target instead of ``RENAME``."""

_NEW_LAYOUT = keys.PREFIX + "{"
_LEGACY_PATTERN = keys.PREFIX + "[^{]*"
"""Every ``nba:`` key of the previous layout (the new layout's keys all start ``nba:{``)."""
_CUSTOMER = keys.PREFIX + "c:{"
_DECISION = keys.PREFIX + "d:"
_BUDGET = Legacy.budget_prefix()
_POLICY_VERSION = Legacy.policy_version("")
_MODEL_VERSION = Legacy.model_version("")
_GLOBALS = {
    Legacy.POLICY_LIVE: keys.POLICY_LIVE,
    Legacy.POLICY_SEQ: keys.POLICY_SEQ,
    Legacy.POLICY_VERSIONS: keys.POLICY_VERSIONS,
    Legacy.MODEL_SNAPSHOT: keys.MODEL_SNAPSHOT,
    Legacy.MODEL_LIVE: keys.MODEL_LIVE,
    Legacy.MODEL_SEQ: keys.MODEL_SEQ,
    Legacy.MODEL_VERSIONS: keys.MODEL_VERSIONS,
    Legacy.MODEL_CHALLENGER: keys.MODEL_CHALLENGER,
    Legacy.MODEL_CHALLENGER_VERSION: keys.MODEL_CHALLENGER_VERSION,
    Legacy.MODEL_CHALLENGER_GUARD: keys.MODEL_CHALLENGER_GUARD,
    Legacy.CHANGE_LOG: keys.CHANGE_LOG,
    Legacy.PSEUDONYM_SECRET: keys.PSEUDONYM_SECRET,
    Legacy.CONSENT_AUDIT: keys.CONSENT_AUDIT_LEGACY,
}
"""The previous release's global keys -> their names on the ``{g}`` slot."""
_LATER = frozenset({Legacy.PENDING_OUTCOMES, Legacy.OUTCOME_STREAM})
"""Moved member by member after the keys (they need every decision's bucket)."""
_EPHEMERAL = frozenset({Legacy.SERVERS, Legacy.LEARNER_LOCK})

# Notes the buckets of decisions whose ids name none: ARGV[1] is the longest remaining TTL among them (ms; -1: one
# has none), then id, bucket, ... The map lives as long as the longest-lived of them (and forever once one has no
# TTL); it only ever grows, so every run and every batch may add to it.
_LEGACY_DECISIONS_SCRIPT = """
local before = redis.call('PTTL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local ttl = tonumber(ARGV[1])
if ttl < 0 or before == -1 then redis.call('PERSIST', KEYS[1])
elseif ttl > before then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class MigrationError(RuntimeError):
    """A migration that cannot start or go on (the message says why and what to do); nothing is half-written."""


@dataclasses.dataclass
class MigrationReport:
    """What a migration moved, by kind (a resumed one counts what the earlier runs moved too)."""

    customers: int = 0
    """Customer profiles."""
    customer_keys: int = 0
    """Every key of a customer: profile, journey, contacts, open journeys, declines, decision index, ..."""
    decisions: int = 0
    pending: int = 0
    """Pending-attribution members, moved to their decision's bucket."""
    pending_dropped: int = 0
    """Pending-attribution members whose decision is gone."""
    outcomes: int = 0
    """Outcome-stream entries the learners had not acknowledged, copied to their bucket's stream."""
    outcomes_learned: int = 0
    """Outcome-stream entries already acknowledged (in a published model): not copied."""
    policy_versions: int = 0
    model_versions: int = 0
    budgets: int = 0
    """Budget counters."""
    other: int = 0
    """Other global keys: live pointers, sequences, version lists, the change log, the consent audit, ..."""
    dropped: int = 0
    """Heartbeats and the learner's lock of the previous release (written again by the processes)."""
    unknown: int = 0
    """``nba:`` keys this release does not know: left where they are."""
    scanned: int = 0
    """Keys the scan returned (both layouts)."""
    unknown_keys: list[str] = dataclasses.field(default_factory=list)
    """The first few unknown keys."""
    phase: str = "keys"
    """Where the migration is: ``keys``, ``pending``, ``outcomes``, ``done``."""
    in_place: bool = False
    resumed: bool = False
    """A checkpoint of an earlier run was found: this run continued it."""
    already: str = ""
    """In place: the layout version the Redis already had (nothing was done)."""
    running_servers: list[str] = dataclasses.field(default_factory=list)
    """Servers of the previous release still sending heartbeats when the migration started."""

    COUNTS = (
        ("customers", "customers (profiles)"),
        ("customer_keys", "customer keys"),
        ("decisions", "decisions"),
        ("pending", "pending outcomes"),
        ("pending_dropped", "  dropped: decision gone"),
        ("outcomes", "outcome entries copied"),
        ("outcomes_learned", "  already learned, not copied"),
        ("policy_versions", "policy versions"),
        ("model_versions", "model versions"),
        ("budgets", "budget counters"),
        ("other", "other global keys"),
        ("dropped", "heartbeats and locks dropped"),
        ("unknown", "unknown keys left alone"),
    )
    """The counts, in the order reports show them, with their labels."""
    _KEPT = ("scanned", "unknown_keys")

    @property
    def migrated(self) -> int:
        """Keys (and pending members and outcome entries) written to the target so far."""
        return (
            self.customer_keys
            + self.decisions
            + self.pending
            + self.outcomes
            + self.policy_versions
            + self.model_versions
            + self.budgets
            + self.other
        )

    def rows(self) -> list[tuple[str, int]]:
        """(label, count) in report order."""
        return [(label, int(getattr(self, name))) for name, label in self.COUNTS]

    def counts(self) -> dict[str, Any]:
        """The counts (and the kept fields) as JSON-ready values, for the checkpoint and ``--json``."""
        names = [name for name, _ in self.COUNTS] + list(self._KEPT)
        return {name: getattr(self, name) for name in names}

    def restore(self, counts: Mapping[str, Any]) -> None:
        for name, _ in self.COUNTS:
            setattr(self, name, int(counts.get(name, 0)))
        self.scanned = int(counts.get("scanned", 0))
        self.unknown_keys = [str(k) for k in counts.get("unknown_keys", [])]

    def summary(self) -> str:
        """One line, for a log."""
        shown = "; ".join(f"{label.strip()}: {count}" for label, count in self.rows() if count)
        return shown or "nothing to migrate"


@dataclasses.dataclass
class _Checkpoint:
    phase: str = "keys"
    cursor: int = 0
    """The SCAN cursor (phase ``keys``) or ZSCAN cursor (phase ``pending``)."""
    position: str = ""
    """Phase ``outcomes``: the last entry of the old stream handled."""
    in_place: bool = False
    source: str = ""
    started_at: float = 0.0

    def fields(self, report: MigrationReport) -> Mapping[FieldT, EncodableT]:
        return {
            "phase": self.phase,
            "cursor": str(self.cursor),
            "position": self.position,
            "in_place": "1" if self.in_place else "0",
            "source": self.source,
            "started_at": f"{self.started_at:.3f}",
            "counts": json.dumps(report.counts()),
            "updated_at": f"{time.time():.3f}",
        }

    @classmethod
    def read(cls, client: redis.Redis) -> tuple[_Checkpoint, dict[str, Any]] | None:
        raw = cast("dict[bytes, bytes]", client.hgetall(CHECKPOINT))
        if not raw:
            return None
        text = {k.decode(): v.decode() for k, v in raw.items()}
        phase = text.get("phase", "keys")
        if phase not in PHASES:
            raise MigrationError(f"{CHECKPOINT}: unknown phase {phase!r} (written by another release?)")
        try:
            checkpoint = cls(
                phase=phase,
                cursor=int(text.get("cursor") or 0),
                position=text.get("position", ""),
                in_place=text.get("in_place") == "1",
                source=text.get("source", ""),
                started_at=float(text.get("started_at") or 0.0),
            )
            counts = json.loads(text.get("counts") or "{}")
        except ValueError as exc:
            raise MigrationError(f"{CHECKPOINT}: unreadable checkpoint ({exc}); delete it to start over") from None
        return checkpoint, counts


def layout_of(client: redis.Redis) -> str | None:
    """The layout version a Redis holds (None: not set, i.e. the previous layout, or no nba data yet)."""
    raw = client.get(keys.LAYOUT)
    return None if raw is None else cast("bytes", raw).decode()


def _pipeline(client: redis.Redis) -> Any:
    return client.pipeline(transaction=False)


def has_legacy_keys(client: redis.Redis) -> bool:
    """Whether ``client``'s Redis holds keys of the previous layout: one of its global keys, or any ``nba:`` key
    outside the new layout's hash tags (a scan that stops at the first)."""
    with _pipeline(client) as pipe:
        for key in (*_GLOBALS, *_LATER):
            pipe.exists(key)
        if any(int(n) for n in pipe.execute()):
            return True
    for _ in client.scan_iter(match=_LEGACY_PATTERN, count=1000):
        return True
    return False


def _running_servers(client: redis.Redis) -> list[str]:
    """The previous release's servers whose heartbeat has not expired."""
    ids = [i.decode() for i in cast("list[bytes]", client.zrange(Legacy.SERVERS, 0, -1))]
    if not ids:
        return []
    with _pipeline(client) as pipe:
        for server_id in ids:
            pipe.exists(LEGACY_SERVER_PREFIX + server_id)
        alive = pipe.execute()
    return [server_id for server_id, n in zip(ids, alive, strict=True) if int(n)]


def _customer_key(customer_id: str, what: str) -> str:
    """The new layout's key ``what`` of a customer (profile, journey, ..., or one this release no longer names)."""
    return keys.profile(customer_id).removesuffix("profile") + what


@dataclasses.dataclass(frozen=True, slots=True)
class _Move:
    """One key to move: its kind (a count of :class:`MigrationReport`), its old name and its new one (None for a
    decision until its customer is read)."""

    kind: str
    source: bytes
    target: str | None
    decision_id: str = ""


def _plan(key: bytes) -> _Move | str:
    """What to do with a key the scan returned: a :class:`_Move`, or ``skip`` (the new layout's, or moved in a later
    phase), ``drop`` (ephemeral) or ``unknown``."""
    try:
        name = key.decode()
    except UnicodeDecodeError:
        return "unknown"
    if name.startswith(_NEW_LAYOUT) or name in _LATER:
        return "skip"
    if name in _EPHEMERAL or name.startswith(LEGACY_SERVER_PREFIX):
        return "drop"
    if name in _GLOBALS:
        return _Move("other", key, _GLOBALS[name])
    if name.startswith(_CUSTOMER):
        customer, separator, what = name[len(_CUSTOMER) :].rpartition("}:")
        if not separator or not customer or not what:
            return "unknown"
        return _Move("profile" if what == "profile" else "customer_keys", key, _customer_key(customer, what))
    if name.startswith(_DECISION) and len(name) > len(_DECISION):
        return _Move("decisions", key, None, name[len(_DECISION) :])
    if name.startswith(_POLICY_VERSION) and len(name) > len(_POLICY_VERSION):
        return _Move("policy_versions", key, keys.policy_version(name[len(_POLICY_VERSION) :]))
    if name.startswith(_MODEL_VERSION) and len(name) > len(_MODEL_VERSION):
        return _Move("model_versions", key, keys.model_version(name[len(_MODEL_VERSION) :]))
    if name.startswith(_BUDGET):
        offer, _, window = name[len(_BUDGET) :].rpartition(":")
        if offer and window.isdigit():
            return _Move("budgets", key, keys.budget(offer, int(window)))
    return "unknown"


def _is_error(reply: Any, *fragments: str) -> bool:
    return isinstance(reply, Exception) and any(f in str(reply) for f in fragments)


def _failed(reply: Exception, what: str) -> Exception:
    """The error to raise for a pipelined reply: a refused command as it is (the caller names the commands the
    migration needs), any other as a MigrationError naming ``what``."""
    if isinstance(reply, redis.exceptions.NoPermissionError):
        return reply
    return MigrationError(f"{what}: {reply}")


class _Migration:
    """One run of :func:`migrate` (state shared by its phases)."""

    def __init__(
        self,
        source: redis.Redis,
        target: redis.Redis,
        *,
        in_place: bool,
        batch: int,
        progress: Callable[[MigrationReport], None] | None,
        source_name: str,
    ) -> None:
        self.source = source
        self.target = source if in_place else target
        self.in_place = in_place
        self.batch = batch
        self.progress = progress
        self.report = MigrationReport(in_place=in_place)
        self.note_decisions = self.target.register_script(_LEGACY_DECISIONS_SCRIPT)
        self.checkpoint = _Checkpoint(in_place=in_place, source=source_name, started_at=time.time())

    # --- the checkpoint -------------------------------------------------------------------------------------------

    def start(self) -> bool:
        """Read the checkpoint, or check that the target may receive a new migration; False: nothing to do."""
        found = _Checkpoint.read(self.target)
        if found is not None:
            checkpoint, counts = found
            if checkpoint.in_place != self.in_place:
                was = "in place" if checkpoint.in_place else f"a copy from {checkpoint.source or 'another Redis'}"
                raise MigrationError(
                    f"this Redis holds the checkpoint of an unfinished migration ({was}, phase {checkpoint.phase}): "
                    f"run that migration again to finish it, or delete {CHECKPOINT} to start over"
                )
            checkpoint.source = self.checkpoint.source or checkpoint.source
            self.checkpoint = checkpoint
            self.report.restore(counts)
            self.report.phase = checkpoint.phase
            self.report.resumed = True
            return True
        layout = layout_of(self.target)
        if self.in_place and layout is not None:
            self.report.already = layout
            self.report.phase = "done"
            return False
        if not self.in_place:
            for key in self.target.scan_iter(match=keys.PREFIX + "*", count=1000):
                if key == LOCK.encode():  # this migration's own
                    continue
                shown = (
                    "layout " + layout if layout is not None else "e.g. " + cast("bytes", key).decode(errors="replace")
                )
                raise MigrationError(
                    f"the target already holds nba data ({shown}) and no migration checkpoint: migrate into an empty "
                    "Redis (or, to upgrade a Redis in place, give it as both --from and --to)"
                )
        self.save()
        return True

    def save(self) -> None:
        """Write the checkpoint (with the counts), then tell the progress callback."""
        self.report.phase = self.checkpoint.phase
        self.target.hset(CHECKPOINT, mapping=self.checkpoint.fields(self.report))
        if self.progress is not None:
            self.progress(self.report)

    def run(self) -> MigrationReport:
        self.report.running_servers = _running_servers(self.source)
        if not self.start():
            return self.report
        if self.checkpoint.phase == "keys":
            self.keys_phase()
        if self.checkpoint.phase == "pending":
            self.pending_phase()
        if self.checkpoint.phase == "outcomes":
            self.outcomes_phase()
        with _pipeline(self.target) as pipe:
            pipe.set(keys.LAYOUT, keys.LAYOUT_VERSION)
            pipe.delete(CHECKPOINT)
            pipe.execute()
        self.report.phase = "done"
        if self.progress is not None:
            self.progress(self.report)
        return self.report

    # --- phase 1: every key but the pending set and the outcome stream ----------------------------------------------

    def keys_phase(self) -> None:
        while True:
            cursor, found = self.source.scan(self.checkpoint.cursor, match=keys.PREFIX + "*", count=self.batch)
            self.report.scanned += len(found)
            self.move_keys(cast("list[bytes]", found))
            self.checkpoint.cursor = int(cursor)
            if self.checkpoint.cursor == 0:
                self.checkpoint.phase = "pending"
            self.save()
            if self.checkpoint.phase != "keys":
                return

    def move_keys(self, found: Sequence[bytes]) -> None:
        moves: list[_Move] = []
        dropped: list[bytes] = []
        for key in found:
            plan = _plan(key)
            if isinstance(plan, _Move):
                moves.append(plan)
            elif plan == "drop":
                dropped.append(key)
            elif plan == "unknown":
                self.report.unknown += 1
                if len(self.report.unknown_keys) < 10:
                    self.report.unknown_keys.append(key.decode(errors="replace"))
        self.move(moves)
        if dropped:  # after the moves: a batch that failed is done again whole
            if self.in_place:
                self.source.delete(*dropped)
            self.report.dropped += len(dropped)

    def move(self, moves: Sequence[_Move]) -> None:
        if not moves:
            return
        # read: TTLs (and whether each key is still there), decisions' customers, and the values to copy
        with _pipeline(self.source) as pipe:
            for move in moves:
                pipe.pttl(move.source)
                if move.kind == "decisions":
                    pipe.hget(move.source, "customer_id")
                else:
                    pipe.exists(move.source)
                if not self.in_place:
                    pipe.dump(move.source)
            replies = pipe.execute(raise_on_error=False)
        width = 2 if self.in_place else 3
        planned: list[tuple[_Move, int, bytes | None]] = []
        notes: list[tuple[str, int, int]] = []
        for index, move in enumerate(moves):
            read = replies[index * width : (index + 1) * width]
            failed = next((r for r in read if isinstance(r, Exception)), None)
            if failed is not None:
                raise _failed(failed, move.source.decode(errors="replace"))
            ttl, extra, *value = read
            payload = cast("bytes | None", value[0]) if value else None
            if int(ttl) == -2 or (value and payload is None):
                continue  # gone since the scan (expired, or moved by an earlier run)
            if move.kind == "decisions":
                if not isinstance(extra, bytes) or not extra:
                    self.report.unknown += 1  # a decision hash without its customer: left where it is
                    if len(self.report.unknown_keys) < 10:
                        self.report.unknown_keys.append(move.source.decode(errors="replace"))
                    continue
                bucket = keys.bucket_of(extra.decode())
                move = dataclasses.replace(move, target=keys.decision(move.decision_id, bucket))
                notes.append((move.decision_id, bucket, int(ttl)))
            planned.append((move, int(ttl), payload))
        if notes:  # before the moves: a decision moved is always in the map, even if this run stops between the two
            longest = -1 if any(ttl < 0 for _, _, ttl in notes) else max(ttl for _, _, ttl in notes)
            args: list[str | int] = [longest]
            for decision_id, bucket, _ in notes:
                args += [decision_id, bucket]
            self.note_decisions(keys=[keys.LEGACY_DECISIONS], args=args, client=self.target)
        if not planned:
            return
        with _pipeline(self.target) as pipe:
            for move, ttl, payload in planned:
                if self.in_place:
                    pipe.rename(move.source, move.target)
                else:  # the TTL left (at least 1 ms: 0 would be none), or none
                    pipe.restore(move.target, max(ttl, 1) if ttl >= 0 else 0, payload)
            results = pipe.execute(raise_on_error=False)
        for (move, _, _), result in zip(planned, results, strict=False):
            if _is_error(result, "no such key"):
                continue  # in place: returned twice by the scan, and moved the first time
            if _is_error(result, "BUSYKEY"):
                pass  # copied by this migration's batch whose checkpoint was not written (the target had no nba key)
            elif isinstance(result, Exception):
                raise _failed(result, f"{move.source.decode(errors='replace')} -> {move.target}")
            if move.kind == "profile":
                self.report.customers += 1
                self.report.customer_keys += 1
            else:
                setattr(self.report, move.kind, getattr(self.report, move.kind) + 1)

    # --- phase 2: the pending-attribution set -----------------------------------------------------------------------

    def buckets(self, decision_ids: Sequence[str]) -> list[int | None]:
        """The buckets the migration gave these decisions (None: the decision was not migrated, it is gone)."""
        if not decision_ids:
            return []
        found = cast("list[bytes | None]", self.target.hmget(keys.LEGACY_DECISIONS, list(decision_ids)))
        return [None if b is None else int(b) for b in found]

    def pending_phase(self) -> None:
        while True:
            cursor, items = self.source.zscan(Legacy.PENDING_OUTCOMES, self.checkpoint.cursor, count=self.batch)
            members = cast("list[tuple[bytes, float]]", items)
            ids = [m.decode(errors="replace") for m, _ in members]
            by_bucket: dict[int, dict[bytes, float]] = {}
            for (member, score), bucket in zip(members, self.buckets(ids), strict=True):
                if bucket is None:
                    self.report.pending_dropped += 1
                else:
                    by_bucket.setdefault(bucket, {})[member] = score
            if by_bucket or (self.in_place and members):
                with _pipeline(self.target) as pipe:
                    for bucket, scored in by_bucket.items():
                        pipe.zadd(keys.pending(bucket), cast("Mapping[Any, float]", scored))
                    if self.in_place and members:
                        pipe.zrem(Legacy.PENDING_OUTCOMES, *(m for m, _ in members))
                    added = pipe.execute()
                if self.in_place:  # a member the scan returns twice (the set shrinks as it goes) is counted once
                    self.report.pending += sum(int(n) for n in added[: len(by_bucket)])
                else:  # the source does not change: each member comes once, also when a batch is done again
                    self.report.pending += sum(len(scored) for scored in by_bucket.values())
            self.checkpoint.cursor = int(cursor)
            if self.checkpoint.cursor == 0:
                if self.in_place:
                    self.source.delete(Legacy.PENDING_OUTCOMES)
                self.checkpoint.phase = "outcomes"
            self.save()
            if self.checkpoint.phase != "pending":
                return

    # --- phase 3: the outcome stream ---------------------------------------------------------------------------------

    def delivered(self) -> tuple[bool, tuple[int, int]]:
        """Whether the old stream has the learners' group, and the id it delivered up to."""
        try:
            groups = self.source.xinfo_groups(Legacy.OUTCOME_STREAM)
        except redis.ResponseError:  # no stream
            return False, (0, 0)
        for group in groups:
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == keys.LEARNER_GROUP:
                return True, entry_order(group.get("last-delivered-id") or b"0-0")
        return False, (0, 0)

    def outcomes_phase(self) -> None:
        grouped, delivered = self.delivered()
        while True:
            start = "(" + self.checkpoint.position if self.checkpoint.position else "-"
            entries = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                self.source.xrange(Legacy.OUTCOME_STREAM, min=start, max="+", count=self.batch),
            )
            if not entries:
                break
            self.copy_outcomes(entries, grouped, delivered)
            self.checkpoint.position = entries[-1][0].decode()
            self.save()
        if self.in_place:
            self.source.delete(Legacy.OUTCOME_STREAM)
        self.checkpoint.phase = "done"
        self.save()

    def copy_outcomes(
        self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]], grouped: bool, delivered: tuple[int, int]
    ) -> None:
        pending: set[bytes] = set()
        if grouped:
            first, last = entries[0][0], entries[-1][0]
            for item in self.source.xpending_range(
                Legacy.OUTCOME_STREAM, keys.LEARNER_GROUP, min=first, max=last, count=len(entries)
            ):
                pending.add(cast("bytes", item["message_id"]))
        kept = [(i, f) for i, f in entries if not grouped or i in pending or entry_order(i) > delivered]
        self.report.outcomes_learned += len(entries) - len(kept)
        if not kept:
            return
        ids = [f.get(b"decision_id", b"").decode(errors="replace") for _, f in kept]
        noted = self.buckets([i for i in ids if keys.decision_bucket(i) is None])
        found = iter(noted)
        buckets = []
        for decision_id in ids:
            own = keys.decision_bucket(decision_id)
            buckets.append(own if own is not None else next(found) or 0)
        with _pipeline(self.target) as pipe:
            for (entry_id, fields), bucket in zip(kept, buckets, strict=True):
                pipe.xadd(keys.outcome_stream(bucket), cast("dict[Any, Any]", fields), id=entry_id)
            results = pipe.execute(raise_on_error=False)
        for (entry_id, _), bucket, result in zip(kept, buckets, results, strict=True):
            if _is_error(result, "equal or smaller"):
                # copied by this migration's batch whose checkpoint was not written; unless the stream has newer
                # entries (written by a server: the target is in use)
                if not self.target.xrange(keys.outcome_stream(bucket), min=entry_id, max=entry_id):
                    raise MigrationError(
                        f"{keys.outcome_stream(bucket)} already holds entries newer than {entry_id.decode()} of "
                        f"{Legacy.OUTCOME_STREAM}: the target is in use; migrate before any server writes to it"
                    )
            elif isinstance(result, Exception):
                raise _failed(result, f"{Legacy.OUTCOME_STREAM} {entry_id.decode()}")
            self.report.outcomes += 1


def migrate(
    source: redis.Redis,
    target: redis.Redis,
    *,
    in_place: bool,
    batch: int = 1000,
    progress: Callable[[MigrationReport], None] | None = None,
    source_name: str = "",
) -> MigrationReport:
    """Move the previous layout's keys of ``source`` into the layout of this release in ``target`` (see the module's
    doc); resumes the migration whose checkpoint ``target`` holds.

    ``in_place``: ``source`` and ``target`` are the same standalone Redis (``target`` is not used): keys are renamed.
    Otherwise ``target`` (a standalone Redis or a ``RedisCluster``) must hold no ``nba:`` key, unless it holds the
    checkpoint of a copy from ``source``. ``batch``: keys per ``SCAN`` (and entries per read). ``progress`` is
    called with the report after each batch (and the checkpoint is saved before it): an exception it raises stops
    the migration there, to be resumed. ``source_name`` (no password) is kept in the checkpoint, for messages.

    Take :class:`MigrationLock` on the target first when another process may migrate it at the same time.
    MigrationError when the target cannot receive it or an unexpected reply stops it (the message names the key).
    """
    if batch < 1:
        raise ValueError(f"batch: at least 1 (got {batch})")
    if in_place and isinstance(source, RedisCluster):
        raise MigrationError("a Redis Cluster never held the previous layout: there is nothing to upgrade in place")
    return _Migration(source, target, in_place=in_place, batch=batch, progress=progress, source_name=source_name).run()


class MigrationLock:
    """The one process migrating a target: ``SET NX PX`` of :data:`LOCK` with the owner's name, renewed after each
    batch (:meth:`renew` raises MigrationError when another process took it after it expired)."""

    def __init__(self, client: redis.Redis, owner: str = "") -> None:
        self.client = client
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._renew = client.register_script(_RENEW_SCRIPT)  # EVALSHA: what the nba ACL user may send
        self._release = client.register_script(_RELEASE_SCRIPT)

    def acquire(self) -> bool:
        return bool(self.client.set(LOCK, self.owner, nx=True, px=LOCK_TTL_MS))

    def holder(self) -> str:
        raw = self.client.get(LOCK)
        return "" if raw is None else cast("bytes", raw).decode(errors="replace")

    def renew(self) -> None:
        if not int(cast(int, self._renew(keys=[LOCK], args=[self.owner, LOCK_TTL_MS]))):
            raise MigrationError(f"lost the migration lock {LOCK} (another process holds it now); stopped here")

    def release(self) -> None:
        self._release(keys=[LOCK], args=[self.owner])


def _renewing(lock: MigrationLock, then: Callable[[MigrationReport], None] | None) -> Callable[[MigrationReport], None]:
    def progress(report: MigrationReport) -> None:
        lock.renew()
        if then is not None:
            then(report)

    return progress


def ensure_layout(
    client: redis.Redis,
    *,
    wait_seconds: float = WAIT_SECONDS,
    batch: int = 1000,
    progress: Callable[[MigrationReport], None] | None = None,
    mark_new: bool = True,
) -> MigrationReport | None:
    """Make sure ``client``'s Redis holds the layout of this release, before a server or learner uses it.

    :data:`~nba_service.store.keys.LAYOUT` set: nothing (one ``GET``). No key of the previous layout: the layout is
    set (a new deployment; unless not ``mark_new``). Otherwise the Redis is migrated in place (:func:`migrate`)
    under :class:`MigrationLock`, and the report returned; a process that finds the lock held waits for the layout
    to be set (at most ``wait_seconds``, then MigrationError naming the command to run by hand), and takes over a
    migration whose process died (its lock expired): it resumes from the checkpoint.
    None when nothing was migrated here.
    """
    if layout_of(client) is not None:
        return None
    if not client.exists(CHECKPOINT) and not has_legacy_keys(client):
        if mark_new:  # else (a command that must write nothing) the next server marks it
            client.set(keys.LAYOUT, keys.LAYOUT_VERSION, nx=True)
        return None
    if isinstance(client, RedisCluster):
        raise MigrationError(
            "this Redis Cluster holds keys of the previous layout (nba:c:{...}, nba:d:..., ...), which a cluster never "
            "served: run `nba store migrate --from URL --to URL --to-mode cluster` from the standalone Redis they came "
            "from into an empty cluster"
        )
    deadline = time.monotonic() + wait_seconds
    waiting = ""
    while True:
        lock = MigrationLock(client)
        if lock.acquire():
            try:
                if layout_of(client) is not None:  # the previous holder finished just before
                    return None
                report = _in_place(client, lock, batch, progress)
            except redis.exceptions.NoPermissionError as exc:
                raise MigrationError(
                    f"this Redis holds the previous key layout, and its user may not move keys ({exc}): run "
                    f"`nba store migrate` against it as a user that may ({', '.join(UPGRADE_COMMANDS)} besides what "
                    "nba serve sends; README.md, 'Upgrading: the key layout'), then start again"
                ) from exc
            finally:
                lock.release()
            return report
        if layout_of(client) is not None:
            log.info("key layout %s: migrated by %s", keys.LAYOUT_VERSION, waiting or "another process")
            return None
        holder = lock.holder()
        if holder and holder != waiting:
            log.warning(
                "waiting for %s to finish migrating this Redis to key layout %s (at most %.0f s)",
                holder,
                keys.LAYOUT_VERSION,
                max(0.0, deadline - time.monotonic()),
            )
            waiting = holder
        if time.monotonic() > deadline:
            raise MigrationError(
                f"the key layout migration by {waiting or 'another process'} did not finish within {wait_seconds:.0f} s"
                f" (lock {LOCK}): run `nba store migrate` against this Redis by hand (it resumes from the checkpoint),"
                " then start again"
            )
        time.sleep(POLL_SECONDS)  # another process migrates; the layout appears when it is done


def _in_place(
    client: redis.Redis, lock: MigrationLock, batch: int, progress: Callable[[MigrationReport], None] | None
) -> MigrationReport:
    running = _running_servers(client)
    if running:
        log.warning(
            "%d server(s) of the previous release still use this Redis (%s): what they write from now on is not "
            "migrated; stop them",
            len(running),
            ", ".join(running[:5]),
        )
    log.info("migrating this Redis in place to key layout %s (resumable; lock %s)", keys.LAYOUT_VERSION, LOCK)
    report = migrate(client, client, in_place=True, batch=batch, progress=_renewing(lock, progress))
    log.info(
        "key layout %s: %s%s",
        keys.LAYOUT_VERSION,
        report.summary(),
        f"; unknown keys left alone: {', '.join(report.unknown_keys)}" if report.unknown_keys else "",
    )
    return report


def migrate_locked(
    source: redis.Redis,
    target: redis.Redis,
    *,
    in_place: bool,
    batch: int = 1000,
    progress: Callable[[MigrationReport], None] | None = None,
    source_name: str = "",
) -> MigrationReport:
    """:func:`migrate` under the target's :class:`MigrationLock` (MigrationError, naming the holder, while another
    process holds it)."""
    lock = MigrationLock(source if in_place else target)
    if not lock.acquire():
        raise MigrationError(
            f"another process ({lock.holder() or 'gone'}) is migrating this target (lock {LOCK}): wait for it; if it "
            f"died, its lock expires within {LOCK_TTL_MS // 1000} s and a new run resumes from its checkpoint"
        )
    try:
        return migrate(
            source,
            target,
            in_place=in_place,
            batch=batch,
            progress=_renewing(lock, progress),
            source_name=source_name,
        )
    finally:
        lock.release()
