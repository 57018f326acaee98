"""``nba learner`` and ``nba model ...``: the learner process and the model lifecycle."""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import threading
import time
from typing import Any

from nba_service.cli._common import settings_from, show_history, state_client, state_options, write_json
from nba_service.learning.learner import Learner, default_learner_name
from nba_service.learning.models import ModelBank
from nba_service.store.migrate import MigrationError, ensure_layout
from nba_service.store.model_store import ModelStore


def cmd_learner(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        # Not stop.set() here: the handler runs in the main thread, which may hold the Event's lock (inside
        # stop.wait); a second signal there would wait for that lock forever. A thread of its own waits its turn.
        threading.Thread(target=stop.set, name="learner-stop", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    with state_client(settings) as client:
        try:
            ensure_layout(client)  # a Redis of the previous release is upgraded in place first
        except MigrationError as exc:
            print(f"nba learner: {exc}", file=sys.stderr)
            return 1
        learner = Learner(
            client,
            name=args.name or default_learner_name(),
            challenger_learning_rate=settings.challenger_learning_rate,
            snapshot_every=args.snapshot_every or settings.model_snapshot_every,
            snapshot_seconds=args.snapshot_seconds or settings.model_snapshot_seconds,
        )
        print(f"learner {learner.name} running (one learner is active at a time; Ctrl-C to stop)", flush=True)
        learner.run(stop)
    print(f"learner {learner.name} stopped after learning {learner.learned} outcomes; model version {learner.version}")
    return 0


def cmd_learner_bench(args: argparse.Namespace) -> int:
    from nba_service.tools.learner_bench import run_learner_bench

    result = run_learner_bench(outcomes=args.outcomes, arms=args.arms, seed=args.seed)
    print(
        f"learner sustained rate: {result['outcomes_per_second']:,.0f} outcomes/s "
        f"({result['outcomes']:,} outcomes over {result['arms']} arms in {result['seconds']:.2f} s, "
        f"{result['cpu_seconds']:.2f} s of CPU in the learner process; snapshots every "
        f"{result['snapshot_every']} outcomes included)"
    )
    write_json(args.json, result)
    return 0


def cmd_model_history(args: argparse.Namespace) -> int:
    return show_history(
        args,
        ModelStore,
        ("outcomes", "source"),
        lambda v: (str(v.updates), v.source),
        empty="no model version has been published (the service scores offers by their priors)",
    )


def cmd_model_rollback(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        try:
            version = ModelStore(client).rollback(args.version, author=args.author or "", message=args.message or "")
        except KeyError as exc:
            print(f"nba model rollback: {exc.args[0]}", file=sys.stderr)
            return 1
    print(f"model version {version} is live again; the learner continues from it")
    return 0


def cmd_model_promote(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = ModelStore(client)
        data = store.load_challenger()
        if data is None:
            print(
                "nba model promote: the live model version has no challenger (set NBA_CHALLENGER_LEARNING_RATE "
                "for the learner)",
                file=sys.stderr,
            )
            return 1
        updates = ModelBank.from_bytes(data).updates
        version = store.promote(data, updates, author=args.author or "", message=args.message or "")
    print(
        f"the challenger ({updates} outcomes learned) is live as model version {version}; "
        f"the learner continues from it and starts a new challenger"
    )
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = ModelStore(client)
        version = args.version or store.live()
        if version is None:
            print("nba model export: no model version has been published", file=sys.stderr)
            return 1
        try:
            data = store.load_version(version)
        except KeyError as exc:
            print(f"nba model export: {exc.args[0]}", file=sys.stderr)
            return 1
    path = pathlib.Path(args.file)
    if args.format == "pickle":
        path.write_bytes(data)
    else:
        bank = ModelBank.from_bytes(data)
        described = {"version": version, "exported_at": time.time(), **bank.describe()}
        path.write_text(json.dumps(described, indent=1) + "\n")
    print(f"model version {version} written to {path} ({args.format})")
    return 0


def cmd_shadow_report(args: argparse.Namespace) -> int:
    from nba_service.tools.shadow_report import shadow_report

    with state_client(settings_from(args)) as client:
        report = shadow_report(client)
    write_json(args.json, report)
    if not report["rows"]:
        print(
            "no settled decision logged a shadow choice yet "
            "(serve with NBA_MODE=apprentice, learned+shadow or learned+challenger)"
        )
        return 0
    if "trial" in report:
        _print_trial(report)
        return 0
    served, shadow = report["served"], report["shadow"]
    print(
        f"{report['rows']} settled decisions; the {shadow['policy']} policy agreed with the served one on "
        f"{shadow['agreement']:.1%} of them"
    )
    rows = [(served["policy"] + " (served, observed)", served)]
    rows += [(f"{shadow['policy']} (shadow, {name})", shadow[name]) for name in ("ips", "snips", "doubly_robust")]
    _print_estimates(rows)
    return 0


def _print_estimates(rows: list[tuple[str, dict[str, float]]]) -> None:
    width = max(len(label) for label, _ in rows) + 2
    print(f"{'policy':{width}}{'reward':>9}{'95% CI':>22}")
    for label, e in rows:
        interval = "[{:.4f}, {:.4f}]".format(e["ci_low"], e["ci_high"])
        print(f"{label:{width}}{e['mean']:>9.4f}{interval:>22}")


def _print_trial(report: dict[str, Any]) -> None:
    trial = report["trial"]
    champion, challenger, guard = trial["champion"], trial["challenger"], trial["guard"]
    print(
        f"{report['rows']} settled decisions of a champion/challenger trial: the challenger served "
        f"{challenger['served_rows']} of them (share {trial['share']:.0%})"
    )
    rows = []
    for name, policy in (("champion", champion), ("challenger", challenger)):
        rows += [(f"{name} ({estimator}, all rows)", policy[estimator]) for estimator in ("ips", "snips")]
        if policy["observed"]:
            rows.append((f"{name} (observed, rows it served)", policy["observed"]))
    rows.append(("challenger - champion (ips)", trial["difference"]))
    _print_estimates(rows)
    if guard["suspended"]:
        state = "SUSPENDED: the challenger serves nothing (it is still logged and evaluated)"
    elif guard["rows"] < guard["min_rows"]:
        state = f"watching ({guard['rows']} of {guard['min_rows']} outcomes before it may suspend)"
    else:
        state = "open: the challenger is not clearly worse"
    print(f"guard (learner, {guard['rows']} outcomes, 99% CI): {state}")
    print("promote with `nba model promote` once the challenger's advantage is clear")


def register(sub: argparse._SubParsersAction) -> None:
    learner = sub.add_parser("learner", help="learn from reported outcomes and publish model versions")
    learner.add_argument("--name", help="consumer name in the learners group (default: host-pid)")
    learner.add_argument(
        "--snapshot-every", type=int, help="outcomes between published versions (env NBA_MODEL_SNAPSHOT_EVERY)"
    )
    learner.add_argument(
        "--snapshot-seconds", type=float, help="longest wait before publishing (env NBA_MODEL_SNAPSHOT_SECONDS)"
    )
    state_options(learner)
    learner.set_defaults(func=cmd_learner)
    learner_sub = learner.add_subparsers(dest="learner_command", metavar="ACTION")
    bench = learner_sub.add_parser("bench", help="measure the learner's sustained rate on a private embedded Redis")
    bench.add_argument("--outcomes", type=int, default=50_000, help="outcomes to learn (default 50000)")
    bench.add_argument("--arms", type=int, default=100, help="(offer, channel) arms (default 100)")
    bench.add_argument("--seed", type=int, default=1)
    bench.add_argument("--json", help="also write the result as JSON here")
    bench.set_defaults(func=cmd_learner_bench)

    model = sub.add_parser("model", help="list, roll back and export model versions")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    history = model_sub.add_parser("history", help="list published model versions (* = live)")
    state_options(history)
    history.set_defaults(func=cmd_model_history)
    rollback = model_sub.add_parser("rollback", help="make an earlier model version live again")
    rollback.add_argument("version", nargs="?", type=int, help="default: the version before the live one")
    state_options(rollback)
    rollback.set_defaults(func=cmd_model_rollback)
    promote = model_sub.add_parser("promote", help="make the challenger models the live version")
    state_options(promote)
    for command in (rollback, promote):  # logged in the change log (`nba history`)
        command.add_argument("--message", "-m", help="why (shown by `nba history`)")
        command.add_argument("--author", help="who (default: the login name)")
    promote.set_defaults(func=cmd_model_promote)
    export = model_sub.add_parser("export", help="write a model version to a file")
    export.add_argument("file")
    export.add_argument("--version", type=int, help="default: the live version")
    export.add_argument(
        "--format",
        choices=("json", "pickle"),
        default="json",
        help="json: weights per arm, readable anywhere; pickle: the River models themselves",
    )
    state_options(export)
    export.set_defaults(func=cmd_model_export)

    shadow = sub.add_parser("shadow", help="champion and challenger: evaluate the policy that did not decide")
    shadow_sub = shadow.add_subparsers(dest="shadow_command", required=True, metavar="ACTION")
    report = shadow_sub.add_parser(
        "report", help="served reward vs IPS / SNIPS / doubly-robust estimates of the shadow"
    )
    report.add_argument("--json", help="also write the figures as JSON here")
    state_options(report)
    report.set_defaults(func=cmd_shadow_report)
