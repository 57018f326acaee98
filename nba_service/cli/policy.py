"""``nba policy ...``: validate, diff, preview, publish, list and roll back policy sets."""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from nba_service.api.event_log import read_timed_requests
from nba_service.cli._common import settings_from, state_client, state_options, write_json
from nba_service.cli.history import print_changes
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import EpsilonGreedy
from nba_service.policies.diff import diff_policies
from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import load_policy_dir
from nba_service.store.policy_store import PolicyStore
from nba_service.tools.preview import PolicyRun, run_preview
from nba_service.tools.sources import (
    SourceError,
    load_models,
    moment_time,
    policy_source,
    stored_contexts,
    stored_contexts_many,
)


def cmd_policy_validate(args: argparse.Namespace) -> int:
    try:
        policy = load_policy_dir(args.directory)
    except PolicyValidationError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"{args.directory}: valid ({len(policy.offers)} offers, {len(policy.channels)} channels, "
        f"{len(policy.files)} files)"
    )
    return 0


def cmd_policy_publish(args: argparse.Namespace) -> int:
    try:
        policy = load_policy_dir(args.directory)
    except PolicyValidationError as exc:
        print(f"{exc}\nnothing was published; the live policy is unchanged", file=sys.stderr)
        return 1
    with state_client(settings_from(args)) as client:
        version = PolicyStore(client).publish(policy.files, author=args.author or "", message=args.message or "")
    print(
        f"published {args.directory} as policy version {version} "
        f"({len(policy.offers)} offers, {len(policy.channels)} channels)"
    )
    return 0


def cmd_policy_history(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = PolicyStore(client)
        live = store.live()
        changes = store.changes()
    write_json(args.json, {"live": live, "changes": [c.as_dict() for c in changes]})
    if not changes:
        print("no policy version has been published")
        return 0
    print_changes(changes, {"policy": live})
    return 0


def cmd_policy_rollback(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = PolicyStore(client)
        try:
            version = store.rollback(args.version, author=args.author or "", message=args.message or "")
        except KeyError as exc:
            print(f"nba policy rollback: {exc.args[0]}", file=sys.stderr)
            return 1
    print(f"policy version {version} is live again")
    return 0


def cmd_policy_diff(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = PolicyStore(client)
        try:
            old_spec, new_spec = _diff_pair(store, args.old, args.new)
            old = policy_source(store, old_spec)
            new = policy_source(store, new_spec)
        except SourceError as exc:
            print(f"nba policy diff: {exc}", file=sys.stderr)
            return 1
    print(f"from {old.label} to {new.label}:")
    for line in diff_policies(old.policy, new.policy).render():
        print(line)
    return 0


def _diff_pair(store: PolicyStore, first: str | None, second: str | None) -> tuple[str, str]:
    """What to compare: both given; live -> DIR or V -> live for one; the previous version -> live for none."""
    if first is not None and second is not None:
        return first, second
    if first is not None:
        return ("live", first) if not first.isdigit() else (first, "live")
    live = store.live()
    earlier = [p.version for p in store.history() if live is not None and p.version < live]
    if live is None:
        raise SourceError("no policy version is live yet: publish one with `nba policy publish DIR`")
    if not earlier:
        raise SourceError(f"policy version {live} is the first one: give a version or a directory to compare with")
    return str(earlier[-1]), "live"


def cmd_policy_preview(args: argparse.Namespace) -> int:
    events = pathlib.Path(args.events)
    if not events.is_file():
        print(f"nba policy preview: {events}: no such file", file=sys.stderr)
        return 1
    try:
        now = moment_time(args.at, time.time())
    except SourceError as exc:
        print(f"nba policy preview: {exc}", file=sys.stderr)
        return 1
    moments, refused = read_timed_requests(events)
    with state_client(settings_from(args)) as client:
        store = PolicyStore(client)
        try:
            candidate = policy_source(store, args.directory, "candidate")
            live = policy_source(store, args.against)
        except SourceError as exc:
            print(f"nba policy preview: {exc}", file=sys.stderr)
            return 1
        snapshots = [live.compile(), candidate.compile()]
        banks, models = load_models(client, snapshots)
        report = run_preview(
            moments,
            PolicyRun(live.short, snapshots[0], DecisionEngine(banks[0], EpsilonGreedy(0.0))),
            PolicyRun(candidate.short, snapshots[1], DecisionEngine(banks[1], EpsilonGreedy(0.0))),
            stored_contexts(client if args.customers_from_redis else None),
            now=now,
            sample_size=args.sample,
            stored_many=stored_contexts_many(client if args.customers_from_redis else None),
        )
    print(f"preview of {candidate.label} against {live.label}")
    print(f"  events:    {report.events} from {events}, {report.customers} customers")
    if args.customers_from_redis:
        print(
            f"  customers: {report.known_customers} found in Redis, {report.customers - report.known_customers}"
            " unknown (defaults)"
        )
    else:
        print("  customers: unknown-customer defaults (add --customers-from-redis to use stored profiles)")
    print(f"  models:    {models}")
    print("  exploration off; each side's actions count towards its own caps; nothing is sent or written")
    if refused:
        print(f"  {len(refused)} line(s) of {events} refused:")
        for reason in refused[:10]:
            print(f"    {reason}")
        if len(refused) > 10:
            print(f"    ... and {len(refused) - 10} more")
    print()
    for line in report.render(args.rows):
        print(line)
    return 0 if not refused else 2


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="validate, diff, preview, publish and roll back policy sets")
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
    diff = policy_sub.add_parser(
        "diff",
        help="what changed between two versions or directories, field by field",
        description="Compare two policy sets, each a version number, 'live' or a directory. "
        "No argument: the previous version -> live. One: live -> DIR, or VERSION -> live.",
    )
    diff.add_argument("old", nargs="?", metavar="FROM", help="version, 'live' or directory")
    diff.add_argument("new", nargs="?", metavar="TO", help="version, 'live' or directory")
    state_options(diff)
    diff.set_defaults(func=cmd_policy_diff)
    preview = policy_sub.add_parser(
        "preview",
        help="decide a file of events with a policy directory and with the live version, side by side",
        description="Runs the candidate policy set and the live version through the same engine (exploration "
        "off) over an event file, reading but never writing customer state, and compares the "
        "decisions.",
    )
    preview.add_argument("directory", help="the candidate policy directory")
    preview.add_argument(
        "--events",
        required=True,
        metavar="FILE.jsonl",
        help="recorded or generated events (`nba events generate`), one request a line",
    )
    preview.add_argument(
        "--customers-from-redis",
        action="store_true",
        help="read customer profiles, journeys and contact history from Redis (read only); "
        "default: every customer is unknown",
    )
    preview.add_argument(
        "--against", default="live", metavar="VERSION", help="the published version to compare with (default: live)"
    )
    preview.add_argument("--sample", type=int, default=10, metavar="N", help="changed decisions to show (default 10)")
    preview.add_argument(
        "--rows",
        type=int,
        default=20,
        metavar="N",
        help="rows of each table: all that changed, then the busiest others up to N (default 20)",
    )
    preview.add_argument("--at", metavar="TIME", help="time of events without a timestamp (ISO 8601; default: now)")
    state_options(preview)
    preview.set_defaults(func=cmd_policy_preview)
    history = policy_sub.add_parser(
        "history",
        help="every publish and rollback: version made live, when, who, message (* = live)",
        description="How each policy version became live, oldest first: publishes and rollbacks with the "
        "version live before, who and why. `nba history` adds model promotions and rollbacks.",
    )
    history.add_argument("--json", metavar="FILE", help="also write the changes as JSON here")
    state_options(history)
    history.set_defaults(func=cmd_policy_history)
    rollback = policy_sub.add_parser("rollback", help="make an earlier version live again")
    rollback.add_argument("version", nargs="?", type=int, help="default: the version before the live one")
    rollback.add_argument("--message", "-m", help="why (shown by `nba policy history`)")
    rollback.add_argument("--author", help="who rolls back (default: the login name)")
    state_options(rollback)
    rollback.set_defaults(func=cmd_policy_rollback)
