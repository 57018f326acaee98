"""What every ``nba`` command shares: settings, the Redis connection, version tables and ``--json`` files."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import redis

from nba_service.domain.enums import RedisMode
from nba_service.settings import Settings, SettingsError
from nba_service.store import connect
from nba_service.store.connect import RedisTarget
from nba_service.store.embedded import EmbeddedRedis
from nba_service.store.migrate import ensure_layout

__all__ = ["redis_client", "settings_from", "show_history", "state_client", "state_options", "write_json"]


def state_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis to use (env NBA_REDIS_URL); default: the embedded Redis")
    parser.add_argument(
        "--redis-mode",
        choices=[mode.value for mode in RedisMode],
        help="standalone: the Redis of --redis-url (default); sentinel: the primary the sentinels name, followed "
        "through failovers (--redis-url then gives only the user, password, database and TLS); cluster: a Redis "
        "Cluster, found from the --redis-url of any node (env NBA_REDIS_MODE)",
    )
    parser.add_argument(
        "--redis-sentinels",
        metavar="HOST:PORT,...",
        help="with --redis-mode sentinel: the sentinels' addresses (env NBA_REDIS_SENTINELS)",
    )
    parser.add_argument(
        "--redis-master-name",
        metavar="NAME",
        help="with --redis-mode sentinel: the name the sentinels monitor the primary under (env "
        "NBA_REDIS_MASTER_NAME, default nba)",
    )
    parser.add_argument(
        "--data-dir",
        help="where the embedded Redis lives (env NBA_DATA_DIR); default: the running server's, else "
        "$XDG_STATE_HOME/nba or ~/.local/state/nba",
    )
    parser.add_argument(
        "--isolated",
        action="store_true",
        default=None,
        help="use --data-dir's embedded Redis even though a running server uses another (env NBA_ISOLATED)",
    )


REDIS_OPTIONS = ("redis_url", "redis_mode", "redis_sentinels", "redis_master_name")
"""The settings of :func:`state_options` that say which Redis a command uses."""


def settings_from(args: argparse.Namespace, *, discover: bool = True, **extra: object) -> Settings:
    """The settings of a command: the environment, then its flags and ``extra``.

    For a command with the state options (``--data-dir``), ``discover`` applies what running servers
    advertise (:func:`nba_service.app.discovery.resolve`): the running server's data directory when none
    is given, :class:`~nba_service.app.discovery.StateConflict` (a SettingsError) rather than a second
    embedded Redis beside it.
    """
    overrides = {name: getattr(args, name, None) for name in (*REDIS_OPTIONS, "data_dir", "isolated", "log_level")}
    overrides.update(extra)
    settings = Settings.from_env(**overrides)
    if discover and hasattr(args, "data_dir"):
        from nba_service.app.discovery import resolve

        explicit = overrides.get("data_dir") is not None or bool(os.environ.get("NBA_DATA_DIR"))
        settings = resolve(settings, explicit_data_dir=explicit)
    return settings


def redis_client(target: RedisTarget) -> redis.Redis:
    """A command's client of ``target`` (:func:`nba_service.store.connect.sync_client`); a target that cannot
    be used is a SettingsError naming the setting."""
    try:
        return connect.sync_client(target)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


@contextlib.contextmanager
def state_client(settings: Settings, *, layout: bool = True) -> Iterator[redis.Redis]:
    """A Redis client for a command: the configured Redis (a URL, or the primary the sentinels name), or the
    embedded Redis. With ``layout`` the Redis is first brought to this release's key layout (one ``GET`` when
    it is; :func:`~nba_service.store.migrate.ensure_layout`), as ``nba serve`` does: a command run before the
    first upgraded server neither misses the state nor writes it where the upgrade would overwrite it."""
    if not settings.uses_embedded_redis:
        client = redis_client(RedisTarget.of(settings))
        try:
            client.ping()
            if layout:
                ensure_layout(client, mark_new=False)
            yield client
        finally:
            client.close()
        return
    with EmbeddedRedis(settings.data_dir) as embedded:
        client = redis_client(RedisTarget(url=embedded.url))
        try:
            if layout:
                ensure_layout(client, mark_new=False)
            yield client
        finally:
            client.close()


class _Version(Protocol):
    """One published version of a history (a model or a policy set)."""

    @property
    def version(self) -> int: ...

    @property
    def published_at(self) -> float: ...


_V = TypeVar("_V", bound=_Version)
_V_co = TypeVar("_V_co", bound=_Version, covariant=True)


class _VersionStore(Protocol[_V_co]):
    """A store of published versions, one of them live."""

    def live(self) -> int | None: ...

    def history(self) -> Sequence[_V_co]: ...


def show_history(
    args: argparse.Namespace,
    open_store: Callable[[redis.Redis], _VersionStore[_V]],
    columns: tuple[str, str],
    cells: Callable[[_V], tuple[str, str]],
    *,
    empty: str,
) -> int:
    """A ``history`` command: the store's versions, oldest first, * = live; ``empty`` when there is none.

    ``columns`` names the two columns after the version and its time, ``cells`` gives their values.
    """
    with state_client(settings_from(args)) as client:
        store = open_store(client)
        live = store.live()
        history = store.history()
    if not history:
        print(empty)
        return 0
    _print_versions(live, columns, [(v.version, v.published_at, *cells(v)) for v in history])
    return 0


def _print_versions(live: int | None, columns: tuple[str, str], rows: Sequence[tuple[int, float, str, str]]) -> None:
    """A version history: (version, published at, a short column, a long one) a row, * = live.

    The short column is as wide as its longest value (12 characters at least): nothing is cut.
    """
    short, long = columns
    width = max([12, len(short)] + [len(third) for _, _, third, _ in rows])
    print(f"{'':2}{'version':>7}  {'published (UTC)':19}  {short:{width}}  {long}")
    for version, published_at, third, last in rows:
        when = datetime.datetime.fromtimestamp(published_at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{'*' if version == live else ' ':2}{version:>7}  {when:19}  {third:{width}}  {last}")


def write_json(path: str | None, data: Any) -> None:
    """Write a command's figures for scripts (``--json FILE``), indented, when a path was given."""
    if path:
        pathlib.Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


POLICY_KNOBS = ("strategy", "epsilon", "temperature", "draws", "thompson_scale", "ucb_width", "learning_rate", "seed")
"""Options of :func:`policy_options`, named as :class:`~nba_service.tools.learned_policy.PolicyConfig`'s fields."""


def policy_options(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """The learned policy's exploration and model options of the offline tools; unset ones keep the defaults."""
    from nba_service.learning.exploration import STRATEGIES

    parser.add_argument(
        "--strategy", choices=STRATEGIES, help="exploration strategy of the learned policy (default thompson)"
    )
    parser.add_argument("--epsilon", type=float, help="epsilon-greedy rate (default 0.05)")
    parser.add_argument("--temperature", type=float, help="softmax temperature over log-priorities (default 0.1)")
    parser.add_argument("--draws", type=int, help="Thompson sampling: posterior draws per decision (default 256)")
    parser.add_argument(
        "--thompson-scale", type=float, help="Thompson sampling: posterior sd multiplier of the draws (default 0.25)"
    )
    parser.add_argument("--ucb-width", type=float, help="UCB: standard deviations of optimism (default 1)")
    parser.add_argument(
        "--learning-rate",
        type=float,
        help="how many observations one outcome counts as (default 1: exact Bayesian updates)",
    )
    parser.add_argument("--seed", type=int, help=seed_help)


def policy_knobs(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """The options of :func:`policy_options` (and ``extra``) that were given."""
    names = (*POLICY_KNOBS, *extra)
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
