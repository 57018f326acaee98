"""``nba history``: every change to what is live, policies and models together, from the change log."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Mapping, Sequence

from nba_service.cli._common import settings_from, state_client, state_options, write_json
from nba_service.store.change_log import Change, read_changes
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyStore

__all__ = ["print_changes", "register"]


def cmd_history(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        policies = PolicyStore(client)
        live = {"policy": policies.live(), "model": ModelStore(client).live()}
        # policy versions published before the change log existed, then the log in its order
        changes = [c for c in policies.changes() if not c.logged] + read_changes(client)
    write_json(args.json, {"live": live, "changes": [c.as_dict() for c in changes]})
    if not changes:
        print("no policy or model version has been made live by a publish, rollback or promotion")
    else:
        print_changes(changes, live, show_what=True)
    print()
    print(f"live now: policy version {live['policy'] or '-'}, model version {live['model'] or '-'}")
    if live["model"] is not None and live["model"] not in {c.version for c in changes if c.what == "model"}:
        print(f"(model version {live['model']} is a learner snapshot: `nba model history` lists them)")
    return 0


def print_changes(changes: Sequence[Change], live: Mapping[str, int | None], *, show_what: bool = False) -> None:
    """The changes, oldest first, a row each: which version became live, when, how, the one live before,
    who and why. ``*`` marks the change that made the live version of each ``what`` live. Every column
    is as wide as its longest value: nothing is cut."""
    marked = {}
    for index, change in enumerate(changes):
        if change.version == live.get(change.what):
            marked[change.what] = index  # the last change to the live version
    header = (["what"] if show_what else []) + ["version", "when (UTC)", "event", "previous", "who", "message"]
    rows = [
        ([c.what] if show_what else [])
        + [
            str(c.version),
            datetime.datetime.fromtimestamp(c.when, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            c.kind,
            "-" if c.previous is None else str(c.previous),
            c.who or "-",
            c.message,
        ]
        for c in changes
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    right = header.index("version")

    def line(mark: str, cells: list[str]) -> str:
        fixed = zip(cells[:-1], widths, strict=True)
        padded = [c.rjust(w) if i == right else c.ljust(w) for i, (c, w) in enumerate(fixed)]
        return f"{mark:2}" + "  ".join([*padded, cells[-1]]).rstrip()

    print(line("", header))
    for index, cells in enumerate(rows):
        print(line("*" if marked.get(changes[index].what) == index else "", cells))


def register(sub: argparse._SubParsersAction) -> None:
    history = sub.add_parser(
        "history",
        help="every policy publish and rollback, model promotion and rollback: who, when, why (* = live)",
        description="The change log: which policy or model version became live, when, by a publish, rollback or "
        "promotion, the version live before, who made the change and the message. The learner's own model "
        "snapshots are listed by `nba model history`.",
    )
    history.add_argument("--json", metavar="FILE", help="also write the changes as JSON here")
    state_options(history)
    history.set_defaults(func=cmd_history)
