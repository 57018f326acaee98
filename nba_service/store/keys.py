"""Redis key layout, made for Redis Cluster: every script's keys share one hash slot.

Customers are spread over :data:`BUCKETS` buckets (a stable hash of the customer id), and each bucket
has a hash tag (:data:`BUCKET_TAGS`) chosen so the 256 buckets land on slots spread evenly over the
16,384 (bucket ``b`` in slots ``64 b .. 64 b + 63``): a cluster of N primaries holds about 1/N of
them each, and resharding moves whole buckets. Every key of a customer carries its bucket's tag,
and so does everything a decision or an outcome join touches with it:

- the customer's profile, journey, contacts, open journeys, declines and decision index
  (``nba:{<tag>}:c:<customer>:<what>``);
- the decisions (``nba:{<tag>}:d:<decision id>``: the id starts with its bucket, see
  :func:`new_decision_id`, so ``ReportOutcome`` goes straight to the right slot);
- the bucket's pending-attribution set, its outcome stream (read by the learner's consumer group on
  each of the 256) and its consent audit stream.

Policies, models, the change history, the learner's lock, heartbeats and the pseudonym key are global
and read-mostly: all on the one slot of the ``{g}`` tag, so a publish stays one transaction. An offer's
budget counters live on the slot of the offer (``nba:{o:<offer>}:budget:<window>``), where a decision
reserves a unit before it is written (:mod:`nba_service.store.state`).

A standalone Redis (or a Sentinel-managed primary) has the same layout: one code path in every mode.
The layout before buckets (``nba:c:{<customer>}:...``, ``nba:d:<id>``, one outcome stream) is named in
:class:`Legacy`, for ``nba store migrate``.
"""

from __future__ import annotations

import os
import zlib

__all__ = [
    "BUCKETS",
    "BUCKET_TAGS",
    "CHANGE_LOG",
    "CONSENT_AUDIT_LEGACY",
    "DECISION_PATTERN",
    "GLOBAL_TAG",
    "LAYOUT",
    "LAYOUT_VERSION",
    "LEARNER_GROUP",
    "LEARNER_LOCK",
    "LEARNER_WATERMARKS",
    "LEGACY_DECISIONS",
    "MODEL_CHANNEL",
    "MODEL_LIVE",
    "MODEL_SEQ",
    "MODEL_SNAPSHOT",
    "MODEL_VERSIONS",
    "POLICY_CHANNEL",
    "POLICY_LIVE",
    "POLICY_SEQ",
    "POLICY_VERSIONS",
    "PROFILE_PATTERN",
    "PSEUDONYM_SECRET",
    "SCHEDULER_LOCK",
    "SCHEDULER_STATE",
    "Legacy",
    "accepted",
    "bucket_of",
    "budget",
    "campaign_claim",
    "campaign_lease",
    "campaign_run",
    "campaign_runs",
    "consent_audit",
    "contacts",
    "decision",
    "decision_bucket",
    "decision_index",
    "decisions",
    "declines",
    "deliveries",
    "journey",
    "model_version",
    "new_decision_id",
    "open_journeys",
    "outcome_stream",
    "pending",
    "policy_version",
    "profile",
    "server",
]

PREFIX = "nba:"
GLOBAL_TAG = "g"
_G = f"{PREFIX}{{{GLOBAL_TAG}}}:"

BUCKETS = 256
"""Customer buckets; fixed (a decision id names its bucket, and each bucket has its own streams)."""

# Generated: for bucket b, the first string f"{b:02x}{n}" (n = 0, 1, ...) whose CRC16 slot is in 64 b .. 64 b + 63
# (tests/store/test_keys.py checks every one).
# fmt: off
BUCKET_TAGS: tuple[str, ...] = (
    "00357", "01372", "025", "03211", "04160", "05145", "06442", "07467", "08250", "09275", "0a102", "0b401",
    "0c234", "0d149", "0e46", "0f32", "10157", "11172", "12269", "13450", "14360", "15118", "16203", "17226",
    "18411", "19228", "1a13", "1b67", "1c42", "1d77", "1e135", "1f436", "201", "2179", "22100", "2320",
    "2419", "2530", "2640", "2769", "2838", "2911", "2a236", "2b129", "2c100", "2d9", "2e440", "2f143",
    "30263", "3165", "3215", "33178", "34209", "35430", "36137", "3775", "3824", "39341", "3a477", "3b174",
    "3c300", "3d220", "3e201", "3f343", "40323", "41306", "42240", "43265", "44114", "45131", "46436", "47413",
    "48224", "49201", "4a176", "4b5", "4c240", "4d360", "4e25", "4f51", "50123", "51106", "52401", "53238",
    "54149", "55331", "56277", "57252", "58279", "59440", "5a70", "5b234", "5c21", "5d14", "5e39", "5f442",
    "6033", "61473", "62174", "6343", "649", "6553", "6623", "67366", "68110", "6972", "6a242", "6b300",
    "6c174", "6d209", "6e228", "6f137", "70217", "71232", "7276", "73351", "7466", "75258", "76143", "7716",
    "7847", "79168", "7a403", "7b100", "7c129", "7d254", "7e275", "7f337", "8054", "81136", "82431", "8324",
    "84179", "8534", "8644", "87262", "88249", "8915", "8a346", "8b204", "8c431", "8d150", "8e171", "8f472",
    "9048", "9161", "9211", "9338", "948", "9528", "9658", "9771", "9820", "99231", "9a146", "9b259",
    "9c270", "9d350", "9e371", "9f233", "a0255", "a1270", "a2336", "a3313", "a4423", "a5406", "a6101", "a7124",
    "a8352", "a9377", "aa67", "ab13", "ac36", "ad216", "ae237", "af128", "b059", "b170", "b2463", "b329",
    "b410", "b539", "b649", "b760", "b831", "b918", "ba149", "bb256", "bc463", "bd102", "be123", "bf420",
    "c039", "c110", "c260", "c349", "c470", "c559", "c629", "c7211", "c851", "c978", "ca168", "cb277",
    "cc442", "cd123", "ce102", "cf401", "d0201", "d1224", "d2362", "d3347", "d4477", "d5452", "d6155", "d7170",
    "d8306", "d9323", "da65", "db11", "dc34", "dd242", "de263", "df58", "e0221", "e1204", "e2342", "e3367",
    "e4457", "e5472", "e6175", "e7150", "e87", "e9303", "ea229", "eb70", "ec55", "ed60", "ee243", "ef39",
    "f0135", "f113", "f263", "f3432", "f473", "f5327", "f6261", "f7244", "f852", "f9456", "fa360", "fb222",
    "fc417", "fd176", "fe157", "ff248",
)
# fmt: on

LAYOUT = _G + "layout"
"""The layout version of the data in this Redis (absent in a Redis that nba never wrote to, or before buckets)."""
LAYOUT_VERSION = "2"

POLICY_LIVE = _G + "policy:live"
POLICY_SEQ = _G + "policy:seq"
POLICY_VERSIONS = _G + "policy:versions"
POLICY_CHANNEL = PREFIX + "policy:events"
"""Pub/sub channel (not a key): a new live policy version."""
MODEL_SNAPSHOT = _G + "model:snapshot"  # before versioned snapshots; read once for migration
MODEL_LIVE = _G + "model:live"
MODEL_SEQ = _G + "model:seq"
MODEL_VERSIONS = _G + "model:versions"
MODEL_CHANNEL = PREFIX + "model:events"
"""Pub/sub channel (not a key): a new live model version."""
MODEL_CHALLENGER = _G + "model:challenger"
MODEL_CHALLENGER_VERSION = _G + "model:challenger:version"
MODEL_CHALLENGER_GUARD = _G + "model:challenger:guard"
"""The challenger models, published with (and as of) each champion version."""
LEARNER_GROUP = "learners"
LEARNER_LOCK = _G + "learner:lock"
LEARNER_WATERMARKS = _G + "learner:watermarks"
"""Per bucket, the last outcome-stream entry a published model version learned (see
:mod:`nba_service.store.outcome_stream`): written in the publish transaction."""
LEGACY_DECISIONS = _G + "legacy-decisions"
"""Decision ids of the layout before buckets (no bucket in them) -> their bucket, written by the migration."""
CHANGE_LOG = _G + "history"
"""Every policy publish and rollback, model promotion and rollback, oldest first
(:mod:`~nba_service.store.change_log`)."""
PSEUDONYM_SECRET = _G + "secret:pseudonym"
"""The deployment's key of customer pseudonyms (HMAC-SHA256), created once; never delete it."""
CONSENT_AUDIT_LEGACY = _G + "audit:consents"
"""The consent audit of the layout before buckets, kept as it was by the migration (read with the buckets')."""

SERVER_PREFIX = _G + "server:"
"""Heartbeats: one hash per running ``nba serve`` process, with a TTL (:mod:`~nba_service.store.heartbeats`)."""
SERVERS = _G + "servers"
"""The ids of the servers with a heartbeat, scored by when each last wrote it (read without a SCAN)."""


def server(server_id: str) -> str:
    """The heartbeat of server process ``server_id``."""
    return SERVER_PREFIX + server_id


def model_version(version: int | str) -> str:
    return f"{_G}model:v:{version}"


def policy_version(version: int | str) -> str:
    return f"{_G}policy:v:{version}"


def bucket_of(customer_id: str) -> int:
    """The customer's bucket: a stable hash of the id (CRC-32), the same in every process and release.

    >>> bucket_of("c42"), bucket_of("c42") == bucket_of("c42")
    (28, True)
    """
    return zlib.crc32(customer_id.encode()) % BUCKETS


def _bucket(bucket: int) -> str:
    return f"{PREFIX}{{{BUCKET_TAGS[bucket]}}}:"


def _customer(customer_id: str, what: str) -> str:
    return f"{_bucket(bucket_of(customer_id))}c:{customer_id}:{what}"


def profile(customer_id: str) -> str:
    return _customer(customer_id, "profile")


def journey(customer_id: str) -> str:
    return _customer(customer_id, "journey")


def contacts(customer_id: str) -> str:
    return _customer(customer_id, "contacts")


def open_journeys(customer_id: str) -> str:
    return _customer(customer_id, "open")


def declines(customer_id: str) -> str:
    return _customer(customer_id, "declines")


def accepted(customer_id: str) -> str:
    """The offers the customer accepted (or converted on), scored by the time of the first such outcome:
    one member ``offer|product|decision id`` per decision (see ``StateStore.record_outcome``)."""
    return _customer(customer_id, "accepted")


def decision_index(customer_id: str) -> str:
    """The customer's decision ids still kept, scored by the time of the decision."""
    return _customer(customer_id, "decision-index")


def decisions(customer_id: str) -> str:
    """Before the decision index: a list of the customer's 20 most recent decision ids. No longer
    written; read (and deleted) until the last such list has expired."""
    return _customer(customer_id, "decisions")


def campaign_claim(customer_id: str, campaign_id: str) -> str:
    """The customer's claim by a campaign (``SET NX``, its TTL the campaign's ``repeat_after``; none: kept):
    the run that reached the customer, so no run of the campaign reaches them twice
    (:mod:`nba_service.campaigns.run`)."""
    return _customer(customer_id, f"campaign:{campaign_id}")


PROFILE_PATTERN = PREFIX + "{*}:c:*:profile"
"""Every customer profile, for SCAN (``MATCH``): what a campaign run scans."""


def campaign_run(campaign_id: str, run_id: str) -> str:
    """A campaign run's state (a hash: status, scan cursors, counters), on the global slot."""
    return f"{_G}campaign:{campaign_id}:run:{run_id}"


def campaign_runs(campaign_id: str) -> str:
    """The campaign's run ids, scored by when each started."""
    return f"{_G}campaign:{campaign_id}:runs"


def campaign_lease(campaign_id: str) -> str:
    """The lease of the process running the campaign (``SET NX PX``, renewed while the run works): at most one
    process runs (or resumes) a campaign at a time (:mod:`nba_service.campaigns.lease`)."""
    return f"{_G}campaign:{campaign_id}:lease"


SCHEDULER_LOCK = _G + "scheduler:lock"
"""Held by the active ``nba scheduler`` (the others wait as standbys): :mod:`nba_service.campaigns.scheduler`."""
SCHEDULER_STATE = _G + "scheduler:state"
"""Per scheduled campaign, the last occurrence of its schedule the scheduler handled (a hash of JSON)."""


def deliveries(channel: str) -> str:
    """The outbound channel's delivery stream (``XADD`` by campaign runs; read by its connector's group)."""
    return f"{_G}deliveries:{channel}"


def new_decision_id(customer_id: str) -> str:
    """A new decision id for the customer: its bucket (2 hex digits), ``-``, 120 random bits (30 hex digits).

    >>> new_decision_id("c42")[:3], len(new_decision_id("c42"))
    ('1c-', 33)
    """
    return f"{bucket_of(customer_id):02x}-{os.urandom(15).hex()}"


def decision_bucket(decision_id: str) -> int | None:
    """The bucket a decision id names; None for an id of the layout before buckets (or not an id of nba).

    >>> decision_bucket("66-0123456789abcdef0123456789abcd"), decision_bucket("0123456789abcdef0123456789abcdef")
    (102, None)
    """
    if len(decision_id) < 4 or decision_id[2] != "-":
        return None
    try:
        return int(decision_id[:2], 16)
    except ValueError:
        return None


DECISION_PATTERN = PREFIX + "{*}:d:*"
"""Every decision hash, for SCAN (``MATCH``)."""


def decision(decision_id: str, bucket: int | None = None) -> str:
    """The decision's hash, in its bucket (``bucket`` for an id that does not name one: see
    :data:`LEGACY_DECISIONS`; bucket 0 when neither does, a key nothing is ever written to)."""
    if bucket is None:
        bucket = decision_bucket(decision_id) or 0
    return f"{_bucket(bucket)}d:{decision_id}"


def pending(bucket: int) -> str:
    """The bucket's decisions waiting for an outcome, scored by the time their attribution window ends."""
    return _bucket(bucket) + "pending"


def outcome_stream(bucket: int) -> str:
    """The bucket's outcomes for the learner (consumer group :data:`LEARNER_GROUP`)."""
    return _bucket(bucket) + "outcomes"


def consent_audit(bucket: int) -> str:
    """The bucket's consent changes and erasures, oldest first, each naming the customer by pseudonym
    (written with the profile change, in one script: :mod:`~nba_service.store.audit`)."""
    return _bucket(bucket) + "audit:consents"


def budget(offer_id: str, window: int) -> str:
    """The offer's budget counter for a window, on the offer's own slot."""
    return f"{PREFIX}{{o:{offer_id}}}:budget:{window}"


class Legacy:
    """The key names before buckets (nba up to the release that introduced Redis Cluster), for migration."""

    POLICY_LIVE = PREFIX + "policy:live"
    POLICY_SEQ = PREFIX + "policy:seq"
    POLICY_VERSIONS = PREFIX + "policy:versions"
    MODEL_SNAPSHOT = PREFIX + "model:snapshot"
    MODEL_LIVE = PREFIX + "model:live"
    MODEL_SEQ = PREFIX + "model:seq"
    MODEL_VERSIONS = PREFIX + "model:versions"
    MODEL_CHALLENGER = PREFIX + "model:challenger"
    MODEL_CHALLENGER_VERSION = PREFIX + "model:challenger:version"
    MODEL_CHALLENGER_GUARD = PREFIX + "model:challenger:guard"
    OUTCOME_STREAM = PREFIX + "outcomes"
    LEARNER_LOCK = PREFIX + "learner:lock"
    PENDING_OUTCOMES = PREFIX + "pending"
    CONSENT_AUDIT = PREFIX + "audit:consents"
    CHANGE_LOG = PREFIX + "history"
    PSEUDONYM_SECRET = PREFIX + "secret:pseudonym"
    SERVERS = PREFIX + "servers"

    @staticmethod
    def customer_prefix(customer_id: str) -> str:
        return f"{PREFIX}c:{{{customer_id}}}:"

    @staticmethod
    def decision(decision_id: str) -> str:
        return f"{PREFIX}d:{decision_id}"

    @staticmethod
    def budget_prefix() -> str:
        return f"{PREFIX}budget:"

    @staticmethod
    def policy_version(version: int | str) -> str:
        return f"{PREFIX}policy:v:{version}"

    @staticmethod
    def model_version(version: int | str) -> str:
        return f"{PREFIX}model:v:{version}"
