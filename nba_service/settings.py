"""Service settings: one object, read once at start-up and passed down.

Every field can be set by an ``NBA_<FIELD>`` environment variable (upper case)
or by the matching ``nba serve`` flag; flags win over the environment.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from nba_service.domain.enums import ExplorationStrategy, LearnerMode, RedisMode, ServingMode

__all__ = ["Settings", "SettingsError", "default_data_dir"]


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


def default_data_dir() -> str:
    """The data directory when none is given: ``$XDG_STATE_HOME/nba``, else ``~/.local/state/nba``. A server
    with an embedded Redis advertises it here whatever its own data directory (:mod:`nba_service.app.discovery`)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(pathlib.Path.home(), ".local", "state")
    return os.path.join(base, "nba")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    """Address the gRPC server listens on."""
    port: int = 50051
    """gRPC port; 0 picks a free one (tests)."""
    workers: int = 1
    """Server processes sharing the port (SO_REUSEPORT); one per core uses the whole machine."""
    reuse_port: int = 0
    """1: bind the gRPC port with SO_REUSEPORT (set for the processes of ``--workers``)."""
    tls_cert: str = ""
    """PEM certificate (chain) of the gRPC port; with ``tls_key`` the port speaks TLS only. Re-read on
    change or SIGHUP (rotation) without dropping calls."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    tls_client_ca: str = ""
    """PEM CA bundle: clients must present a certificate signed by it (mTLS)."""
    auth_file: str = ""
    """YAML file of the callers (bearer-token digests and/or certificate names) and their roles."""
    insecure_no_auth: bool = False
    """Serve a non-loopback address without an auth file (every caller may do everything)."""
    reflection: bool = True
    """Serve gRPC reflection (grpcurl, Postman) on the gRPC port."""
    metrics_tls: bool = False
    """Serve ``/metrics`` over HTTPS with ``tls_cert`` and ``tls_key`` (read at start)."""
    metrics_host: str = "127.0.0.1"
    """Address of the Prometheus ``/metrics`` endpoint."""
    metrics_port: int = 9464
    """Port of the Prometheus ``/metrics`` endpoint; 0 picks a free one, -1 disables it."""
    redis_url: str = ""
    """Redis to keep all state in. Empty: start (or join) the embedded Redis in ``data_dir``. With
    ``redis_mode=sentinel`` it carries only the user, password, database and TLS options (its host is not used)."""
    redis_mode: RedisMode = RedisMode.STANDALONE
    """``standalone``: the one Redis of ``redis_url`` (or the embedded one); ``sentinel``: the primary that the
    sentinels of ``redis_sentinels`` name ``redis_master_name``, found again after a failover; ``cluster``: not
    supported yet (refused)."""
    redis_sentinels: str = ""
    """With ``redis_mode=sentinel``: the sentinels, ``host:port,host:port,...`` (port 26379 when left out; IPv6
    as ``[::1]:26379``)."""
    redis_master_name: str = "nba"
    """With ``redis_mode=sentinel``: the name the sentinels monitor the primary under (``sentinel monitor NAME``)."""
    data_dir: str = dataclasses.field(default_factory=default_data_dir)
    """Where the embedded Redis keeps its database and socket."""
    isolated: bool = False
    """Use the embedded Redis of ``data_dir`` even though a running ``nba serve`` advertises another one (a
    deliberately separate state: demos, benchmarks); such a server does not advertise its own. Without it a
    command refuses to start a second embedded Redis beside a running server's (:mod:`nba_service.app.discovery`)."""
    policies: str = ""
    """A policy directory to publish at start-up when it differs from the live version."""
    epsilon: float = 0.05
    """Exploration rate: share of decisions that pick uniformly among the allowed actions."""
    strategy: ExplorationStrategy = ExplorationStrategy.THOMPSON
    """Exploration strategy: ``thompson`` (Thompson sampling over the models' posteriors), ``ucb``
    (optimistic: posterior mean + ``ucb_width`` sd), ``epsilon`` (epsilon-greedy) or ``softmax``
    (Boltzmann over priorities)."""
    temperature: float = 0.1
    """Softmax temperature (higher explores more)."""
    thompson_draws: int = 256
    """Posterior draws per decision with Thompson sampling: the served choice is the first draw's winner and
    the logged propensity the share of draws it wins (standard deviation at most 0.5/sqrt(draws))."""
    thompson_scale: float = 0.25
    """Thompson sampling: the draws' standard deviation is the posterior's times this (1: plain Thompson)."""
    ucb_width: float = 1.0
    """UCB: standard deviations of the logit added to its posterior mean."""
    seed: int | None = None
    """Seed of the exploration random generator (None: from the OS)."""
    decision_ttl_seconds: int = 7 * 24 * 3600
    """How long a decision is kept for the outcome join; later outcomes get NOT_FOUND."""
    journey_max_events: int = 100
    """Events kept in each customer's journey."""
    model_snapshot_every: int = 200
    """Learned outcomes between two published model versions."""
    model_snapshot_seconds: float = 5.0
    """Longest time learned outcomes wait before they are published as a model version."""
    attribution_seconds: float = 2 * 86400
    """An action with no accepted/declined outcome after this long counts as not accepted."""
    challenger_learning_rate: float = 0.0
    """Non-zero: the learner also trains a challenger, the same models with this learning rate,
    on every outcome; ``mode=learned+challenger`` logs its choice with each decision."""
    challenger_share: float = 0.0
    """With ``mode=learned+challenger``: the share of decisions the challenger serves (at most 0.5;
    0: its choices are only logged). Its guard stops it when it is clearly worse than the champion."""
    mode: ServingMode = ServingMode.LEARNED
    """Who decides: ``learned`` (the models), ``learned+shadow`` (the models, and what the
    rules alone would have chosen is logged), ``apprentice`` (the rules decide with the
    offers' priors, and the learned policy's choice is logged, to be evaluated offline
    with ``nba shadow report`` before it is trusted)."""
    learner: LearnerMode = LearnerMode.EMBEDDED
    """``embedded``: ``nba serve`` runs a learner thread (one replica at a time learns);
    ``off``: run ``nba learner`` as its own process."""
    policy_check_seconds: float = 1.0
    """How often the server checks the live policy version (hot reload)."""
    grace_seconds: float = 5.0
    """The drain on SIGTERM: health says NOT_SERVING at once, new calls are answered UNAVAILABLE (retryable),
    calls in flight get this long to finish, and any still running then are answered UNAVAILABLE."""
    max_decisions_in_progress: int = 2048
    """Decisions one process takes on at once, running or waiting their turn (a Decide call, a DecideStream
    message); one more is refused at once with RESOURCE_EXHAUSTED and a ``retry-after-ms`` hint. Sized from the
    measured service time: a decision costs a process about 1.1 ms of CPU (``nba bench``, 2-core reference
    machine: ~900 decisions/s per process), so 2048 are about 2 s of work, the longest deadline worth waiting
    for. A waiting decision costs no CPU: under overload turns go newest first, so those served are answered
    within their deadline and the oldest wait until their callers give up, instead of every call being late."""
    decisions_at_once: int = 16
    """Decisions that run at the same time, their Redis round trips overlapping; the others of
    ``max_decisions_in_progress`` wait their turn (throughput is flat from about 4 on)."""
    max_connections: int = 0
    """Connections one process holds; more are closed as they arrive (the client sees UNAVAILABLE and tries
    again). 0: the process's file limit (its soft limit is raised to the hard one at start) less 1,024 kept
    for Redis, files and the metrics port, so connections can never take the descriptors the process needs."""
    max_streams_per_connection: int = 64
    """Calls one connection may have open (HTTP/2 MAX_CONCURRENT_STREAMS). A client keeps its further calls
    until one ends; and as gRPC counts a call until the server is done with it, calls waiting in gRPC's own
    queue count too, so once the server falls behind, new calls on a busy connection are refused at once
    (UNAVAILABLE, retryable; gRPC delays the refusal 0.1-1 s to slow a client that retries at once) at no
    cost to the process, and that queue stays short: the calls the server takes are fresh. Measured on the
    2-core reference machine with 1,500 callers over 8 connections: 64 kept 85-96% of the best ``nba bench``
    rate; 32, 128 and 256 less (256 also left bursts' calls CANCELLED in gRPC's queue)."""
    handshake_timeout_seconds: float = 5.0
    """A connection that has not finished its TLS and HTTP/2 handshake after this long is closed."""
    connection_idle_seconds: float = 5.0
    """A connection with no call for this long is closed (GOAWAY; a client reconnects at its next call, which
    pays one connection set-up), so idle connections cannot hold the process's ``max_connections``: 20,000 idle
    HTTP/2 connections opened as fast as one machine can (about 8 s) never held more than ~11,000 files."""
    connection_age_seconds: float = 600.0
    """A connection is asked to go away (GOAWAY) after this long (with +-10% jitter), so clients spread over
    new replicas and a stuck stream ends."""
    connection_age_grace_seconds: float = 30.0
    """Calls still open on a connection past ``connection_age_seconds`` get this long before it is closed."""
    keepalive_seconds: float = 30.0
    """The server pings a connection with calls in flight after this long without traffic, to find dead peers."""
    keepalive_timeout_seconds: float = 10.0
    """A keepalive ping not answered within this long closes the connection."""
    log_interval_seconds: float = 60.0
    """Repeated warnings (Redis unavailable, clients' bad requests, ...) are logged once per kind per interval,
    with the count of those left out."""
    record_events: str = ""
    """Append a sample of live Decide requests to this event file (for ``nba policy preview``)."""
    record_sample: float = 0.01
    """Share of Decide requests recorded when ``record_events`` is set."""
    log_level: str = "INFO"
    """Root log level of ``nba`` commands."""

    def __post_init__(self) -> None:
        for name, kind in _ENUMS.items():  # text from the environment or a flag: kept as the enum
            object.__setattr__(self, name, _choice(name, kind, getattr(self, name)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``NBA_*`` variables, then ``overrides`` that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get("NBA_" + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _convert(field.name, field.type, raw)
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert and tls_key: give both (the certificate and its private key) or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("tls_client_ca: client certificates need TLS (tls_cert and tls_key)")
        if self.metrics_tls and not self.tls_cert:
            raise SettingsError("metrics_tls: needs tls_cert and tls_key")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port: {self.port} is not a TCP port (0-65535)")
        if not -1 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics_port: {self.metrics_port} is not a TCP port (0-65535, or -1 for none)")
        if not 0.0 <= self.record_sample <= 1.0:
            raise SettingsError(f"record_sample: {self.record_sample} must be between 0 and 1")
        if self.temperature <= 0:
            raise SettingsError("temperature: must be positive")
        if not 1 <= self.thompson_draws <= 100_000:
            raise SettingsError(f"thompson_draws: {self.thompson_draws} must be between 1 and 100000")
        if not 0.0 < self.thompson_scale <= 10.0:
            raise SettingsError(f"thompson_scale: {self.thompson_scale} must be in (0, 10]")
        if not 0.0 <= self.ucb_width < 100.0:
            raise SettingsError(f"ucb_width: {self.ucb_width} must be between 0 and 100")
        if not 1 <= self.workers <= 256:
            raise SettingsError(f"workers: {self.workers} must be between 1 and 256")
        if not 0.0 <= self.epsilon <= 1.0:
            raise SettingsError(f"epsilon: {self.epsilon} must be between 0 and 1")
        if self.decision_ttl_seconds <= 0:
            raise SettingsError("decision_ttl_seconds: must be positive")
        if self.journey_max_events <= 0:
            raise SettingsError("journey_max_events: must be positive")
        if self.model_snapshot_every <= 0:
            raise SettingsError("model_snapshot_every: must be positive")
        if self.model_snapshot_seconds <= 0:
            raise SettingsError("model_snapshot_seconds: must be positive")
        if not 0 < self.attribution_seconds < self.decision_ttl_seconds:
            raise SettingsError("attribution_seconds: must be positive and shorter than decision_ttl_seconds")
        if not 0.0 <= self.challenger_share <= 0.5:
            raise SettingsError("challenger_share: must be between 0 and 0.5 (the champion serves the rest)")
        if self.challenger_learning_rate < 0:
            raise SettingsError("challenger_learning_rate: must be >= 0 (0: no challenger)")
        self._validate_limits()
        self._validate_redis()

    @property
    def uses_embedded_redis(self) -> bool:
        """No Redis was given (no ``redis_url``, mode ``standalone``): the embedded one of ``data_dir``."""
        return not self.redis_url and self.redis_mode is RedisMode.STANDALONE

    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """``redis_sentinels`` as (host, port) pairs; SettingsError naming the field for an address that is not one."""
        addresses = []
        for item in (part.strip() for part in self.redis_sentinels.split(",")):
            if not item:
                continue
            host, port = item, "26379"
            if item.startswith("["):  # [IPv6]:port
                host, _, rest = item[1:].partition("]")
                if rest:
                    if not rest.startswith(":"):
                        host = ""
                    port = rest[1:]
            elif ":" in item:
                host, _, port = item.rpartition(":")
            if not host or any(c in host for c in " /@[]") or not port.isdigit() or not 0 < int(port) <= 65535:
                raise SettingsError(
                    f"redis_sentinels: {item!r} is not a sentinel address (host:port, e.g. redis-sentinel-0:26379)"
                )
            addresses.append((host, int(port)))
        return tuple(addresses)

    def _validate_redis(self) -> None:
        """The Redis mode and the settings it needs."""
        if self.redis_mode is not RedisMode.SENTINEL:
            if self.redis_sentinels.strip():
                raise SettingsError(
                    f"redis_sentinels: given, but redis_mode is '{self.redis_mode.value}'; add --redis-mode sentinel "
                    "(NBA_REDIS_MODE=sentinel) to follow the primary the sentinels name"
                )
            if self.redis_mode is RedisMode.CLUSTER and not self.redis_url:
                raise SettingsError(
                    "redis_url: redis_mode 'cluster' needs the URL of a cluster node (--redis-url, NBA_REDIS_URL, "
                    "e.g. redis://redis-cluster-0:6379); the embedded Redis is not a cluster"
                )
            return
        if not self.sentinel_addresses():
            raise SettingsError(
                "redis_sentinels: redis_mode 'sentinel' needs the sentinels' addresses, host:port,host:port,... "
                "(--redis-sentinels, NBA_REDIS_SENTINELS)"
            )
        name = self.redis_master_name
        if not name or any(c.isspace() for c in name):
            raise SettingsError(
                f"redis_master_name: {name!r} is not a master name (the NAME of `sentinel monitor NAME ...`, no spaces)"
            )
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://")):
            raise SettingsError(
                "redis_url: in sentinel mode the URL carries the user, password, database and TLS options of the "
                "primary the sentinels name: give a redis:// or rediss:// URL (its host is not used), or none"
            )

    def _validate_limits(self) -> None:
        """The overload, connection and shutdown settings."""
        if self.grace_seconds < 0:
            raise SettingsError("grace_seconds: must be >= 0")
        if not 1 <= self.max_decisions_in_progress <= 1_000_000:
            raise SettingsError(
                f"max_decisions_in_progress: {self.max_decisions_in_progress} must be between 1 and 1000000"
            )
        if not 1 <= self.decisions_at_once <= self.max_decisions_in_progress:
            raise SettingsError(
                f"decisions_at_once: {self.decisions_at_once} must be between 1 and max_decisions_in_progress "
                f"({self.max_decisions_in_progress})"
            )
        if self.max_connections < 0:
            raise SettingsError("max_connections: must be >= 0 (0: from the file limit)")
        if not 1 <= self.max_streams_per_connection <= 1_000_000:
            raise SettingsError(
                f"max_streams_per_connection: {self.max_streams_per_connection} must be between 1 and 1000000"
            )
        for name in (
            "handshake_timeout_seconds",
            "connection_idle_seconds",
            "connection_age_seconds",
            "connection_age_grace_seconds",
            "keepalive_seconds",
            "keepalive_timeout_seconds",
            "log_interval_seconds",
        ):
            value = getattr(self, name)
            if not 0 < value <= 2_000_000:  # gRPC takes milliseconds as a 32-bit int
                raise SettingsError(f"{name}: {value} must be positive and at most 2000000")


_ENUMS: dict[str, type[enum.StrEnum]] = {
    "strategy": ExplorationStrategy,
    "mode": ServingMode,
    "learner": LearnerMode,
    "redis_mode": RedisMode,
}
"""Settings whose value is one of a closed set: given as text, kept as the enum."""


def _choice(name: str, kind: type[enum.StrEnum], value: Any) -> enum.StrEnum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise SettingsError(f"{name}: {value!r} is not one of {choices}") from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    if kind.startswith("bool"):
        if raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise SettingsError(f"NBA_{name.upper()}: {raw!r} is not a boolean (true/false, 1/0, yes/no, on/off)")
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"NBA_{name.upper()}: {raw!r} is not a number") from None
    return raw
