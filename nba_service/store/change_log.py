"""The change log: one Redis stream of every change to what is live, policies and models together.

Each entry (``XADD`` to :data:`~nba_service.store.keys.CHANGE_LOG`) says which
version became live and how: ``what`` (``policy`` or ``model``), ``kind``
(``publish``, ``rollback`` or ``promote``), ``version`` (the one made live),
``previous`` (the one live before it, empty if none), ``who``, ``when`` (UTC,
ISO 8601) and ``message``. It is written by the same script that moves the
live pointer and announces it (:data:`MAKE_LIVE`), and a publish runs that
script in the transaction that stores the version: a change is never made
without its entry, nor an entry written without its change.

Logged: policy publish and rollback (``nba policy ...``, a server publishing
its directory at start-up), model rollback and promotion (``nba model ...``).
Not logged: the snapshots the learner publishes every few seconds (``nba
model history`` lists them). Policy versions published before the log
existed are read from their version records
(:meth:`~nba_service.store.policy_store.PolicyStore.changes`).
The stream is trimmed (approximately) to :data:`CHANGE_LOG_MAXLEN` entries.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
from typing import Any, cast

import redis
from redis.cluster import ClusterPipeline

from nba_service.store import keys

__all__ = ["CHANGE_LOG_MAXLEN", "Change", "default_author", "make_live", "read_changes"]

CHANGE_LOG_MAXLEN = 100_000
"""The change log is trimmed (approximately) to this many entries."""

MAKE_LIVE = """
if redis.call('EXISTS', KEYS[3]) == 0 then
    return redis.error_reply('ERR ' .. ARGV[4] .. ' version ' .. ARGV[1] .. ' does not exist')
end
local previous = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], ARGV[1])
local entry = {'what', ARGV[4], 'version', ARGV[1], 'previous', previous}
for i = 5, #ARGV do
    entry[#entry + 1] = ARGV[i]
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(entry))
redis.call('PUBLISH', ARGV[2], ARGV[1])
return previous
"""
"""KEYS: the live pointer, the change log, the version's record (which must exist).
ARGV: the version, the channel announcing it, the log's length, what, then the entry's other fields and values."""


def default_author() -> str:
    """Who changes something when no author is given: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def iso(timestamp: float) -> str:
    """Unix seconds as UTC ISO 8601, to the millisecond."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One change to what is live: ``version`` of ``what`` became live by ``kind``."""

    what: str
    """``policy`` or ``model``."""
    kind: str
    """``publish``, ``rollback`` or ``promote``."""
    version: int
    previous: int | None
    """The version live before (None: none, or not known)."""
    who: str
    when: float
    """Unix seconds."""
    message: str
    logged: bool = True
    """False: read from a version record published before the change log existed."""

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> Change:
        def text(name: str) -> str:
            return fields.get(name.encode(), b"").decode()

        previous = text("previous")
        return cls(
            what=text("what"),
            kind=text("kind"),
            version=int(text("version")),
            previous=int(previous) if previous else None,
            who=text("who"),
            when=datetime.datetime.fromisoformat(text("when")).timestamp(),
            message=text("message"),
        )

    def as_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "when": iso(self.when)}


def make_live(
    client: redis.Redis | redis.client.Pipeline,
    *,
    what: str,
    kind: str,
    version: int,
    live_key: str,
    channel: str,
    record_key: str,
    who: str,
    message: str,
    when: float,
) -> Any:
    """Make ``version`` live, announce it on ``channel`` and log the change, in one script.

    ``client`` may be a transaction (the script then runs in it, after the version is stored there).
    Returns the version live before (bytes, empty if none), or the pipeline; a ResponseError when
    ``record_key`` does not exist (nothing is changed).
    """
    entry = ("kind", kind, "who", who, "when", iso(when), "message", message)
    script_keys = [live_key, keys.CHANGE_LOG, record_key]
    args = (version, channel, CHANGE_LOG_MAXLEN, what, *entry)
    if isinstance(client, ClusterPipeline):  # its transaction refuses EVALSHA: EVAL, run at EXEC
        return client.execute_command("EVAL", MAKE_LIVE, len(script_keys), *script_keys, *args)
    return client.register_script(MAKE_LIVE)(keys=script_keys, args=args, client=client)


def read_changes(client: redis.Redis, what: str | None = None, page: int = 1000) -> list[Change]:
    """The logged changes (of ``what``, or all), oldest first, read ``page`` entries a call."""
    found: list[Change] = []
    start = "-"
    while True:
        batch = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            client.xrange(keys.CHANGE_LOG, min=start, max="+", count=page),
        )
        for _, fields in batch:
            change = Change.decode(fields)
            if what is None or change.what == what:
                found.append(change)
        if len(batch) < page:
            return found
        start = "(" + batch[-1][0].decode()  # after the last entry read
