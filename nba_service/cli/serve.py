"""``nba serve``: the gRPC decision service."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import TYPE_CHECKING

from nba_service.cli._common import settings_from, state_options
from nba_service.policies.model import PolicyValidationError
from nba_service.settings import Settings

if TYPE_CHECKING:
    from nba_service.app.server import NbaServer
    from nba_service.app.workers import WorkerInfo


def cmd_serve(args: argparse.Namespace) -> int:
    from nba_service.app.server import run

    settings = settings_from(
        args,
        host=args.host,
        port=args.port,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        policies=args.policies,
        epsilon=args.epsilon,
        seed=args.seed,
        workers=args.workers,
        mode=args.mode,
        challenger_share=args.challenger_share,
        learner=args.learner,
        strategy=args.strategy,
        temperature=args.temperature,
        thompson_draws=args.thompson_draws,
        thompson_scale=args.thompson_scale,
        ucb_width=args.ucb_width,
        record_events=args.record_events,
        record_sample=args.record_sample,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_file=args.auth_file,
        insecure_no_auth=args.insecure_no_auth,
        reflection=args.reflection,
        metrics_tls=args.metrics_tls,
        **{name: getattr(args, name) for name, _, _ in LIMITS},
    )

    def ready(server: NbaServer | WorkerInfo) -> None:
        if args.ready_file:
            info = {"port": server.port, "metrics_port": server.metrics_port, "redis_url": server.redis_url}
            path = pathlib.Path(args.ready_file)
            tmp = path.with_suffix(".tmp")
            # the URL may hold the Redis password: the file is readable by its owner only
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(info))
            tmp.replace(path)  # appears whole or not at all

    try:
        if settings.workers > 1:
            from nba_service.app.workers import run_workers

            return run_workers(settings, ready)
        run(settings, ready)
    except PolicyValidationError as exc:
        print(
            f"nba serve: the policy set in {settings.policies} is invalid, nothing published:\n{exc}", file=sys.stderr
        )
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"nba serve: {exc}", file=sys.stderr)
        return 1
    return 0


LIMITS: tuple[tuple[str, type, str], ...] = (
    ("max_decisions_in_progress", int, "decisions taken on at once, running or waiting; more get RESOURCE_EXHAUSTED"),
    ("decisions_at_once", int, "decisions running at the same time (their Redis round trips overlap)"),
    ("max_connections", int, "connections held; more are closed as they arrive (0: the file limit less 1,024)"),
    ("max_streams_per_connection", int, "calls open per connection (HTTP/2 MAX_CONCURRENT_STREAMS)"),
    ("grace_seconds", float, "the drain on SIGTERM: how long calls in flight get to finish"),
    ("connection_idle_seconds", float, "a connection without a call this long is closed"),
    ("connection_age_seconds", float, "a connection is asked to go away after this long"),
    ("connection_age_grace_seconds", float, "calls on a connection past its age get this long"),
    ("handshake_timeout_seconds", float, "a connection not through its handshake after this long is closed"),
    ("keepalive_seconds", float, "ping a connection with calls in flight after this long without traffic"),
    ("keepalive_timeout_seconds", float, "a keepalive ping not answered this long closes the connection"),
    ("log_interval_seconds", float, "repeated warnings are logged once per kind per interval, with a count"),
)
"""The overload, connection and drain settings ``nba serve`` takes as flags (each also ``NBA_<NAME>``)."""


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the gRPC decision service")
    serve.add_argument("--host", help="gRPC address (env NBA_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (env NBA_PORT, default 50051; 0 picks one)")
    serve.add_argument("--metrics-host", help="metrics address (env NBA_METRICS_HOST, default 127.0.0.1)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port (env NBA_METRICS_PORT, default 9464; -1: off)")
    serve.add_argument("--policies", help="publish this policy directory at start-up if it differs from the live one")
    serve.add_argument("--epsilon", type=float, help="exploration rate (env NBA_EPSILON, default 0.05)")
    serve.add_argument(
        "--strategy",
        choices=("thompson", "ucb", "epsilon", "softmax"),
        help="exploration strategy (env NBA_STRATEGY, default thompson)",
    )
    serve.add_argument("--temperature", type=float, help="softmax temperature (env NBA_TEMPERATURE, default 0.1)")
    serve.add_argument(
        "--thompson-draws",
        type=int,
        help="Thompson sampling: posterior draws per decision (env NBA_THOMPSON_DRAWS, default 256)",
    )
    serve.add_argument(
        "--thompson-scale",
        type=float,
        help="Thompson sampling: sd multiplier of the draws (env NBA_THOMPSON_SCALE, default 0.25)",
    )
    serve.add_argument("--ucb-width", type=float, help="UCB: sd of optimism (env NBA_UCB_WIDTH, default 1)")
    serve.add_argument("--seed", type=int, help="seed of the exploration random generator (env NBA_SEED)")
    serve.add_argument(
        "--workers", type=int, help="server processes sharing the port, one per core (env NBA_WORKERS, default 1)"
    )
    serve.add_argument(
        "--mode",
        choices=("learned", "learned+shadow", "learned+challenger", "apprentice"),
        help="who decides (env NBA_MODE, default learned; apprentice: the rules, the learned policy logged)",
    )
    serve.add_argument(
        "--challenger-share",
        type=float,
        help="with --mode learned+challenger: share of decisions the challenger serves, at most 0.5 "
        "(env NBA_CHALLENGER_SHARE, default 0: logged only)",
    )
    serve.add_argument(
        "--learner",
        choices=("embedded", "off"),
        help="run the learner inside the server (env NBA_LEARNER, default embedded) or not",
    )
    serve.add_argument(
        "--record-events",
        metavar="FILE",
        help="append a sample of live Decide requests to this event file (env NBA_RECORD_EVENTS)",
    )
    serve.add_argument(
        "--record-sample", type=float, help="share of requests recorded (env NBA_RECORD_SAMPLE, default 0.01)"
    )
    security = serve.add_argument_group("security (docs/security.md)")
    security.add_argument(
        "--tls-cert", metavar="PEM", help="serve gRPC over TLS with this certificate chain (env NBA_TLS_CERT)"
    )
    security.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (env NBA_TLS_KEY)")
    security.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by this CA: mTLS (env NBA_TLS_CLIENT_CA)",
    )
    security.add_argument(
        "--auth-file",
        metavar="YAML",
        help="callers, their token digests or certificate names, and roles "
        "(env NBA_AUTH_FILE); `nba auth token NAME --roles ...` makes an entry",
    )
    security.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="serve a non-loopback address without an auth file (env NBA_INSECURE_NO_AUTH)",
    )
    security.add_argument(
        "--no-reflection",
        dest="reflection",
        action="store_false",
        default=None,
        help="do not serve gRPC reflection (env NBA_REFLECTION=false)",
    )
    security.add_argument(
        "--metrics-tls",
        action="store_true",
        default=None,
        help="serve /metrics over HTTPS with the same certificate (env NBA_METRICS_TLS)",
    )
    limits = serve.add_argument_group("overload, connections and drain (docs/reliability.md)")
    for name, kind, text in LIMITS:
        default = getattr(Settings(), name)
        limits.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            help=f"{text} (env NBA_{name.upper()}, default {default:g})",
        )
    serve.add_argument("--ready-file", help="write {port, metrics_port, redis_url} as JSON here once serving")
    state_options(serve)
    serve.set_defaults(func=cmd_serve)
