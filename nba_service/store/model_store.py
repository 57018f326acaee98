"""Model snapshots in Redis, so a restart resumes learning instead of starting over."""

from __future__ import annotations

import redis

from nba_service.store import keys

__all__ = ["ModelStore"]


class ModelStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def save(self, data: bytes) -> None:
        self._redis.set(keys.MODEL_SNAPSHOT, data)

    def load(self) -> bytes | None:
        return self._redis.get(keys.MODEL_SNAPSHOT)
