"""What policy and model versions share: a live pointer moved and announced in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import redis

__all__ = ["roll_back"]


def roll_back(
    client: redis.Redis,
    *,
    what: str,
    live_key: str,
    channel: str,
    version: int | None,
    versions: Iterable[int],
    key_of: Callable[[int], str],
) -> int:
    """Make ``version`` (default: the newest stored one before the live one) live and announce it.

    ``versions`` are the published versions, oldest first; ``key_of`` names a version's stored
    record, which must still exist. Raises KeyError, naming ``what``, when there is none.
    """
    raw = client.get(live_key)
    live = int(raw) if raw is not None else None
    if version is None:
        earlier = [v for v in versions if (live is None or v < live) and client.exists(key_of(v))]
        if not earlier:
            raise KeyError(f"there is no earlier {what} version to roll back to")
        version = earlier[-1]
    if not client.exists(key_of(version)):
        raise KeyError(f"{what} version {version} does not exist")
    with client.pipeline(transaction=True) as pipe:
        pipe.set(live_key, version)
        pipe.publish(channel, str(version))
        pipe.execute()
    return version
