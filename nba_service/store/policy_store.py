"""Published policy versions in Redis.

Each publish stores the whole set (the YAML text of every file) as a new,
immutable version, then moves the live pointer and announces it on pub/sub in
the same transaction: a reader sees the old set or the new one, never half.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import time
from collections.abc import Mapping
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from nba_service.store import keys
from nba_service.store.versions import roll_back

__all__ = ["PolicyStore", "PublishedPolicy", "content_digest"]


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

    def publish(self, files: Mapping[str, str], author: str = "", message: str = "") -> int:
        """Store ``files`` (already validated) as a new version and make it live."""
        version = int(self._redis.incr(keys.POLICY_SEQ))
        record: dict[FieldT, EncodableT] = {
            "files": json.dumps(dict(files), ensure_ascii=False),
            "author": author or _default_author(),
            "message": message,
            "published_at": f"{time.time():.3f}",
            "digest": content_digest(files),
        }
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.policy_version(version), mapping=record)
            pipe.rpush(keys.POLICY_VERSIONS, version)
            pipe.set(keys.POLICY_LIVE, version)
            pipe.publish(keys.POLICY_CHANNEL, str(version))
            pipe.execute()
        return version

    def live(self) -> int | None:
        raw = self._redis.get(keys.POLICY_LIVE)
        return int(raw) if raw is not None else None

    def load(self, version: int) -> PublishedPolicy:
        record = self._redis.hgetall(keys.policy_version(version))
        if not record:
            raise KeyError(f"policy version {version} does not exist")
        return _published(version, cast("dict[bytes, bytes]", record))  # the client does not decode responses

    def load_live(self) -> PublishedPolicy | None:
        version = self.live()
        return None if version is None else self.load(version)

    def history(self) -> list[PublishedPolicy]:
        versions = [int(v) for v in self._redis.lrange(keys.POLICY_VERSIONS, 0, -1)]
        with self._redis.pipeline(transaction=False) as pipe:
            for version in versions:
                pipe.hgetall(keys.policy_version(version))
            records = pipe.execute()
        return [_published(v, r) for v, r in zip(versions, records, strict=False) if r]

    def rollback(self, version: int | None = None) -> int:
        """Make ``version`` (default: the one published before the live one) live again."""
        versions = [int(v) for v in self._redis.lrange(keys.POLICY_VERSIONS, 0, -1)]
        return roll_back(
            self._redis,
            what="policy",
            live_key=keys.POLICY_LIVE,
            channel=keys.POLICY_CHANNEL,
            version=version,
            versions=versions,
            key_of=keys.policy_version,
        )


def _published(version: int, record: Mapping[bytes, bytes]) -> PublishedPolicy:
    return PublishedPolicy(
        version=version,
        files=json.loads(record[b"files"]),
        author=record.get(b"author", b"").decode(),
        message=record.get(b"message", b"").decode(),
        published_at=float(record.get(b"published_at", b"0")),
        digest=record.get(b"digest", b"").decode(),
    )


def _default_author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
