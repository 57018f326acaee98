"""Heartbeats: which ``nba serve`` processes use this Redis, and what they serve.

Each server process keeps a hash ``nba:{g}:server:<id>`` (``<id>`` = host:pid): its address, pid, release,
mode, start time and the policy and model versions it serves. It rewrites it every
:data:`HEARTBEAT_SECONDS` (and at once when it swaps a version) with a TTL of :data:`HEARTBEAT_TTL_SECONDS`,
and deletes it when it stops; the hash of a server that died expires. The sorted set ``nba:{g}:servers``
names them (scored by the last beat), so ``nba status`` reads them without scanning the keyspace; its
members whose hash has expired are skipped, and trimmed by the next beat.

Only commands the nba ACL user may send: ``HSET``, ``PEXPIRE``, ``DEL``, ``ZADD``, ``ZREM``,
``ZREMRANGEBYSCORE`` in ``MULTI``/``EXEC``, ``ZRANGE`` and ``HGETALL``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import cast

import redis
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from nba_service.store import keys

__all__ = ["HEARTBEAT_SECONDS", "HEARTBEAT_TTL_SECONDS", "beat", "remove", "servers"]

HEARTBEAT_SECONDS = 5.0
"""How often a server rewrites its heartbeat."""
HEARTBEAT_TTL_SECONDS = 15.0
"""A heartbeat not rewritten for this long expires: the server is gone (or cannot reach Redis)."""
FORGET_SECONDS = 4 * HEARTBEAT_TTL_SECONDS
"""Members of the server set not beaten for this long are trimmed (their hashes expired long ago; the margin
keeps a server whose clock is behind the others' listed)."""


async def beat(client: aioredis.Redis, server_id: str, fields: Mapping[str, str | int | float]) -> None:
    """Write (or rewrite) the heartbeat of ``server_id``, with its TTL."""
    key = keys.server(server_id)
    record = cast("Mapping[FieldT, EncodableT]", fields)  # names are text
    now = time.time()
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)  # fields a server no longer has go too
        pipe.hset(key, mapping=record)
        pipe.pexpire(key, int(HEARTBEAT_TTL_SECONDS * 1000))
        pipe.zadd(keys.SERVERS, {server_id: now})
        pipe.zremrangebyscore(keys.SERVERS, "-inf", now - FORGET_SECONDS)
        await pipe.execute()


async def remove(client: aioredis.Redis, server_id: str) -> None:
    """A stopping server's heartbeat goes at once."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.server(server_id))
        pipe.zrem(keys.SERVERS, server_id)
        await pipe.execute()


def servers(client: redis.Redis) -> list[dict[str, str]]:
    """The heartbeats of the servers using this Redis, oldest server first."""
    ids = cast("list[bytes]", client.zrange(keys.SERVERS, 0, -1))
    with client.pipeline(transaction=False) as pipe:
        for server_id in ids:
            pipe.hgetall(keys.server(server_id.decode()))
        records = cast("list[dict[bytes, bytes]]", pipe.execute())
    beats = [{k.decode(): v.decode() for k, v in record.items()} for record in records if record]
    return sorted(beats, key=lambda b: (_number(b.get("started_at")), b.get("id", "")))


def _number(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0
