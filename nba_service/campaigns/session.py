"""A data plane for a campaign run outside the server: the live policy and models over a Redis target."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis
from prometheus_client import CollectorRegistry

from nba_service.dataplane import DataPlane
from nba_service.observability.metrics import Metrics
from nba_service.settings import Settings
from nba_service.store.connect import RedisTarget, clients

__all__ = ["RedisTarget", "campaign_session"]  # RedisTarget: the type campaign_session takes


@contextlib.asynccontextmanager
async def campaign_session(
    settings: Settings, target: RedisTarget, metrics: Metrics | None = None
) -> AsyncIterator[tuple[DataPlane, redis.Redis]]:
    """A started :class:`DataPlane` (live policy and models loaded) and a sync client of ``target``."""
    async_redis, sync_redis = clients(target)
    dataplane = DataPlane(settings, async_redis, sync_redis, metrics or Metrics(CollectorRegistry()), target.url)
    try:
        await dataplane.start()
        yield dataplane, sync_redis
    finally:
        await dataplane.stop()
        await async_redis.aclose()
        sync_redis.close()
