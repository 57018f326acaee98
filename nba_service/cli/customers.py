"""``nba customers ...``: bulk-load profiles."""

from __future__ import annotations

import argparse
import pathlib
import sys

from nba_service.cli._common import settings_from, state_client, state_options


def cmd_customers_load(args: argparse.Namespace) -> int:
    from nba_service.store.customer_import import import_customers

    path = pathlib.Path(args.file)
    if not path.is_file():
        print(f"nba customers load: {path}: no such file", file=sys.stderr)
        return 1
    with state_client(settings_from(args)) as client:
        report = import_customers(client, path, progress=sys.stderr.isatty())
    print(f"{path}: {report.loaded} rows loaded ({report.created} new customers), {len(report.refused)} refused")
    for number, reason in report.refused[:50]:
        print(f"  line {number}: {reason}")
    if len(report.refused) > 50:
        print(f"  ... and {len(report.refused) - 50} more")
    return 0 if not report.refused else 2


def register(sub: argparse._SubParsersAction) -> None:
    customers = sub.add_parser("customers", help="manage customer profiles")
    customers_sub = customers.add_subparsers(dest="customers_command", required=True, metavar="ACTION")
    load = customers_sub.add_parser("load", help="bulk-load profiles from a JSON-lines or CSV export")
    load.add_argument("file")
    state_options(load)
    load.set_defaults(func=cmd_customers_load)
