"""Published policy versions in Redis.

Each publish stores the whole set (the YAML text of every file) as a new,
immutable version, then moves the live pointer, announces it on pub/sub and
logs the change (:mod:`~nba_service.store.change_log`) in the same
transaction: a reader sees the old set or the new one, never half, and the
change log says who made each version live, when and why.

A version is decoded only when it is no larger than a valid set can be
(:data:`MAX_VERSION_BYTES`): one written into Redis behind validation's back
is refused from the size of what Redis sends, before any JSON or YAML of it
is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from nba_service.store import keys
from nba_service.store.change_log import Change, default_author, make_live, read_changes
from nba_service.store.versions import roll_back

__all__ = ["MAX_VERSION_BYTES", "PolicyConflict", "PolicyStore", "PolicyTooLarge", "PublishedPolicy", "content_digest"]

MAX_VERSION_BYTES = 8 * 1024 * 1024 + 64 * 1024
"""The most a valid policy set takes in Redis (its files as JSON): the policies layer's
``MAX_STORED_BYTES``, which the store may not import (a test keeps the two equal)."""


class PolicyTooLarge(ValueError):
    """A stored version larger than any valid set: refused before it is decoded."""


class PolicyConflict(RuntimeError):
    """A publish made against a live version that is no longer live (:meth:`PolicyStore.publish`)."""


def content_digest(files: Mapping[str, str]) -> str:
    """A stable hash of a policy set's files, to tell whether a directory is what is live."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, slots=True)
class PublishedPolicy:
    version: int
    files: Mapping[str, str]
    author: str
    message: str
    published_at: float
    digest: str


class PolicyStore:
    """Publish, read and roll back policy versions (synchronous client)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def publish(
        self, files: Mapping[str, str], author: str = "", message: str = "", *, expect_live: int | None = None
    ) -> int:
        """Store ``files`` (already validated) as a new version and make it live.

        :class:`PolicyTooLarge` when they take more than :data:`MAX_VERSION_BYTES` (no replica would load
        them): nothing is written. With ``expect_live``, :class:`PolicyConflict` when another version than that
        one is live (someone published or rolled back meanwhile): nothing is written. The version number, the
        check and the writes are one transaction (``WATCH`` on the sequence and the live pointer): two publishes
        at once get consecutive versions, and two made against the same live version cannot both go live.
        """
        encoded = json.dumps(dict(files), ensure_ascii=False).encode("utf-8", "surrogatepass")
        if len(encoded) > MAX_VERSION_BYTES:
            raise PolicyTooLarge(
                f"the policy set takes {len(encoded) / 2**20:.1f} MiB: at most {MAX_VERSION_BYTES / 2**20:.1f} MiB;"
                " not published"
            )
        author = author or default_author()
        record: dict[FieldT, EncodableT] = {
            "files": encoded,
            "author": author,
            "message": message,
            "digest": content_digest(files),
        }
        while True:
            with self._redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(keys.POLICY_SEQ, keys.POLICY_LIVE)
                    if expect_live is not None:
                        raw = pipe.get(keys.POLICY_LIVE)
                        live = int(raw) if raw is not None else None
                        if live != expect_live:
                            raise PolicyConflict(
                                f"policy version {live} is live, not {expect_live}: someone published or rolled"
                                " back meanwhile; not published"
                            )
                    version = int(pipe.get(keys.POLICY_SEQ) or 0) + 1
                    now = round(time.time(), 3)
                    pipe.multi()
                    pipe.set(keys.POLICY_SEQ, version)
                    pipe.hset(keys.policy_version(version), mapping={**record, "published_at": f"{now:.3f}"})
                    pipe.rpush(keys.POLICY_VERSIONS, version)
                    make_live(
                        pipe,
                        what="policy",
                        kind="publish",
                        version=version,
                        live_key=keys.POLICY_LIVE,
                        channel=keys.POLICY_CHANNEL,
                        record_key=keys.policy_version(version),
                        who=author,
                        message=message,
                        when=now,
                    )
                    pipe.execute()
                except redis.WatchError:  # another publish or rollback won: read again
                    continue
            return version

    def live(self) -> int | None:
        raw = self._redis.get(keys.POLICY_LIVE)
        return int(raw) if raw is not None else None

    def load(self, version: int, max_bytes: int = MAX_VERSION_BYTES) -> PublishedPolicy:
        """Version ``version``; :class:`PolicyTooLarge` (a ValueError) when its files take more than ``max_bytes``
        in Redis: checked on the bytes received, before they are decoded or parsed.

        (The nba ACL user may not send ``HSTRLEN``, and a version written behind validation's back may lie
        about its size in any other field: the bytes themselves are measured.)
        """
        record = cast("dict[bytes, bytes]", self._redis.hgetall(keys.policy_version(version)))
        if not record:  # the client does not decode responses
            raise KeyError(f"policy version {version} does not exist")
        size = len(record.get(b"files", b""))
        if size > max_bytes:
            raise PolicyTooLarge(
                f"policy version {version} takes {size / 2**20:.1f} MiB in Redis: at most"
                f" {max_bytes / 2**20:.1f} MiB (a valid set is smaller); not decoded"
            )
        return _published(version, record)

    def load_live(self) -> PublishedPolicy | None:
        version = self.live()
        return None if version is None else self.load(version)

    def history(self) -> list[PublishedPolicy]:
        """Every version, oldest first, without its files (``files`` is empty: :meth:`load` reads them)."""
        versions = [int(v) for v in self._redis.lrange(keys.POLICY_VERSIONS, 0, -1)]
        with self._redis.pipeline(transaction=False) as pipe:
            for version in versions:
                pipe.hgetall(keys.policy_version(version))
            records = pipe.execute()
        return [_published(v, r, files={}) for v, r in zip(versions, records, strict=False) if r]

    def changes(self) -> list[Change]:
        """How each policy version became live, oldest first: every publish and rollback of the change log.

        Versions published before the change log existed come first, from their records (``logged``
        false: who published them and when is known, not what was live before, nor any rollback then).
        """
        logged = read_changes(self._redis, "policy")
        published = {c.version for c in logged if c.kind == "publish"}
        earlier = [
            Change("policy", "publish", p.version, None, p.author, p.published_at, p.message, logged=False)
            for p in self.history()
            if p.version not in published
        ]
        return earlier + logged

    def rollback(self, version: int | None = None, author: str = "", message: str = "") -> int:
        """Make ``version`` (default: the one published before the live one) live again, and log it
        with ``author`` (default: the login name) and ``message``."""
        versions = [int(v) for v in self._redis.lrange(keys.POLICY_VERSIONS, 0, -1)]
        return roll_back(
            self._redis,
            what="policy",
            live_key=keys.POLICY_LIVE,
            channel=keys.POLICY_CHANNEL,
            version=version,
            versions=versions,
            key_of=keys.policy_version,
            author=author,
            message=message,
        )


def _published(version: int, record: Mapping[bytes, bytes], files: Mapping[str, str] | None = None) -> PublishedPolicy:
    if files is None:
        files = _files(version, record)
    return PublishedPolicy(
        version=version,
        files=files,
        author=record.get(b"author", b"").decode(),
        message=record.get(b"message", b"").decode(),
        published_at=float(record.get(b"published_at", b"0")),
        digest=record.get(b"digest", b"").decode(),
    )


def _files(version: int, record: Mapping[bytes, bytes]) -> dict[str, str]:
    """The files of a stored version: a JSON object of texts, or a ValueError (whatever was written there)."""
    try:
        files = json.loads(record[b"files"])
    except RecursionError:
        files = None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ValueError(f"policy version {version}: its files are not a JSON object of texts")
    return files
