"""``nba policy ...``: validate, publish, list and roll back policy sets."""

from __future__ import annotations

import argparse
import datetime
import sys

from nba_service.cli._common import settings_from, state_client, state_options
from nba_service.policies.schema import PolicyValidationError, load_policy_dir
from nba_service.store.policy_store import PolicyStore


def cmd_policy_validate(args: argparse.Namespace) -> int:
    try:
        policy = load_policy_dir(args.directory)
    except PolicyValidationError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.directory}: valid ({len(policy.offers)} offers, {len(policy.channels)} channels, "
          f"{len(policy.files)} files)")
    return 0


def cmd_policy_publish(args: argparse.Namespace) -> int:
    try:
        policy = load_policy_dir(args.directory)
    except PolicyValidationError as exc:
        print(f"{exc}\nnothing was published; the live policy is unchanged", file=sys.stderr)
        return 1
    with state_client(settings_from(args)) as client:
        version = PolicyStore(client).publish(policy.files, author=args.author or "", message=args.message or "")
    print(f"published {args.directory} as policy version {version} "
          f"({len(policy.offers)} offers, {len(policy.channels)} channels)")
    return 0


def cmd_policy_history(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = PolicyStore(client)
        live = store.live()
        history = store.history()
    if not history:
        print("no policy version has been published")
        return 0
    print(f"{'':2}{'version':>7}  {'published (UTC)':19}  {'author':12}  message")
    for p in history:
        when = datetime.datetime.fromtimestamp(p.published_at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{'*' if p.version == live else ' ':2}{p.version:>7}  {when:19}  {p.author[:12]:12}  {p.message}")
    return 0


def cmd_policy_rollback(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = PolicyStore(client)
        try:
            version = store.rollback(args.version)
        except KeyError as exc:
            print(f"nba policy rollback: {exc.args[0]}", file=sys.stderr)
            return 1
    print(f"policy version {version} is live again")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="validate, publish and roll back policy sets")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    validate = policy_sub.add_parser("validate", help="check a policy directory; exit 1 on any problem")
    validate.add_argument("directory")
    validate.set_defaults(func=cmd_policy_validate)
    publish = policy_sub.add_parser("publish", help="validate and publish a policy directory as a new version")
    publish.add_argument("directory")
    publish.add_argument("--message", "-m", help="what changed and why")
    publish.add_argument("--author", help="who publishes (default: the login name)")
    state_options(publish)
    publish.set_defaults(func=cmd_policy_publish)
    history = policy_sub.add_parser("history", help="list published versions (* = live)")
    state_options(history)
    history.set_defaults(func=cmd_policy_history)
    rollback = policy_sub.add_parser("rollback", help="make an earlier version live again")
    rollback.add_argument("version", nargs="?", type=int, help="default: the version before the live one")
    state_options(rollback)
    rollback.set_defaults(func=cmd_policy_rollback)
