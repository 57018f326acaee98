"""``nba console``: the marketing console, a web application on the servers' Redis (docs/console.md)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import pathlib
import sys

from nba_service.cli._common import settings_from, state_client, state_options
from nba_service.domain import TimedRequest

DEFAULT_PORT = 8080
PREVIEW_EVENTS = 2000
"""Recorded events the Levers preview replays at most (the first of the file)."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_console(args: argparse.Namespace) -> int:
    import uvicorn

    from nba_service.api.auth import AuthFile
    from nba_service.console.app import ConsoleConfig, create_app, load_moments

    settings = settings_from(args, auth_file=args.auth_file)
    auth = AuthFile.read(settings.auth_file) if settings.auth_file else None
    if auth is None and not _loopback(args.host) and not args.insecure_no_auth:
        print(
            f"nba console: --host {args.host} is not a loopback address: give --auth-file (who may sign in), "
            "or --insecure-no-auth to let everyone who reaches it do everything",
            file=sys.stderr,
        )
        return 2
    moments: list[TimedRequest] = []
    if args.events:
        path = pathlib.Path(args.events)
        if not path.is_file():
            print(f"nba console: {path}: no such file", file=sys.stderr)
            return 1
        moments, refused = load_moments(str(path))
        if refused:
            print(f"nba console: {len(refused)} line(s) of {path} refused, e.g. {refused[0]}", file=sys.stderr)
        moments = moments[: args.preview_events]
    with state_client(settings) as client:
        config = ConsoleConfig(
            client=client,
            auth=auth,
            secret_key=os.environ.get("NBA_CONSOLE_SECRET", ""),
            moments=moments,
            moments_source=args.events or "",
            https_only=args.https_only,
        )
        app = create_app(config)
        who = (
            f"sign-in with the tokens of {settings.auth_file}" if auth else "no auth file: everyone is the local admin"
        )
        print(f"nba console on http://{args.host}:{args.port}/ ({who})", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    console = sub.add_parser(
        "console",
        help="the marketing console: live numbers, offers, levers with preview, publish and rollback",
        description="A web application on the Redis the servers use: the Overview (live numbers scraped from the "
        "servers' /metrics), Offers, Levers (edit, diff, what-if preview, publish), History (rollback), "
        "Learning and Customer pages. See docs/console.md.",
    )
    console.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    console.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    console.add_argument(
        "--auth-file",
        metavar="YAML",
        help="the service's auth file: callers with the viewer, marketing, publisher or admin role sign in with "
        "their token (env NBA_AUTH_FILE); without one everyone is the local admin (loopback only)",
    )
    console.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="listen on a non-loopback address without an auth file (everyone may do everything)",
    )
    console.add_argument(
        "--events",
        metavar="FILE.jsonl",
        help="recorded events (`nba serve --record-events`, `nba events generate`) the Levers preview replays",
    )
    console.add_argument(
        "--preview-events",
        type=int,
        default=PREVIEW_EVENTS,
        metavar="N",
        help=f"replay at most the first N events of --events (default {PREVIEW_EVENTS})",
    )
    console.add_argument(
        "--https-only",
        action="store_true",
        help="send the session cookie over HTTPS only (behind a TLS-terminating proxy)",
    )
    state_options(console)
    console.set_defaults(func=cmd_console)
