"""What policy and model versions share: a live pointer moved, announced and logged in one script."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import redis

from nba_service.store.change_log import default_author, make_live

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
    author: str = "",
    message: str = "",
) -> int:
    """Make ``version`` (default: the newest stored one before the live one) live, announce it and
    log the rollback in the change log, by ``author`` (default: the login name) with ``message``.

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
    try:
        make_live(
            client,
            what=what,
            kind="rollback",
            version=version,
            live_key=live_key,
            channel=channel,
            record_key=key_of(version),
            who=author or default_author(),
            message=message,
            when=time.time(),
        )
    except redis.ResponseError as exc:  # deleted since it was checked
        if "does not exist" not in str(exc):
            raise
        raise KeyError(f"{what} version {version} does not exist") from exc
    return version
