"""``nba customers ...``: bulk-load profiles, read a customer's consent audit, erase a customer."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import getpass
import pathlib
import sys
from collections.abc import Iterator

from nba_service.cli._common import settings_from, state_client, state_options, write_json
from nba_service.domain.profile_update import Erasure
from nba_service.settings import Settings, SettingsError
from nba_service.store.connect import RedisTarget


def cmd_customers_load(args: argparse.Namespace) -> int:
    from nba_service.store.customer_import import import_customers

    path = pathlib.Path(args.file)
    if not path.is_file():
        print(f"nba customers load: {path}: no such file", file=sys.stderr)
        return 1
    with state_client(settings_from(args)) as client:
        report = import_customers(client, path, progress=sys.stderr.isatty(), caller=_operator())
    print(
        f"{path}: {report.loaded} rows loaded ({report.created} new customers, {report.consent_changes} consent "
        f"changes audited), {len(report.refused)} refused, {len(report.duplicates)} duplicate ids"
    )
    for number, reason in report.refused[:50]:
        print(f"  line {number}: {reason}")
    if len(report.refused) > 50:
        print(f"  ... and {len(report.refused) - 50} more")
    for number, previous, customer_id in report.duplicates[:20]:
        print(f"  line {number}: customer {customer_id!r} was already on line {previous}; this later line wins")
    if len(report.duplicates) > 20:
        print(f"  ... and {len(report.duplicates) - 20} more duplicate ids")
    return 0 if not report.refused else 2


def cmd_customers_audit(args: argparse.Namespace) -> int:
    from nba_service.store.audit import customer_audit

    with state_client(settings_from(args)) as client:
        entries = customer_audit(client, args.customer_id)
    write_json(args.json, [entry.as_dict() for entry in entries])
    if not entries:
        print(f"no audit entries for customer {args.customer_id}")
        return 0
    rows = [
        (
            datetime.datetime.fromtimestamp(e.timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            e.channel if e.action == "consent" else f"({e.action})",
            f"{e.old} -> {e.new}" if e.action == "consent" else "customer erased",
            e.caller or "-",
            e.request_id or "-",
        )
        for e in entries
    ]
    header = ("time (UTC)", "channel", "change", "caller", "request id")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def cmd_customers_erase(args: argparse.Namespace) -> int:
    customer_id = args.customer_id
    if not customer_id.strip():
        print("nba customers erase: a customer id is required", file=sys.stderr)
        return 1
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "nba customers erase: refusing to erase without confirmation: stdin is not a terminal; "
                "pass --yes to erase without asking",
                file=sys.stderr,
            )
            return 1
        answer = input(
            f"Erase customer {customer_id}: profile, journey, contacts, open journeys and decisions? "
            "This cannot be undone. Type the customer id to confirm: "
        )
        if answer.strip() != customer_id:
            print("nba customers erase: not confirmed; nothing was erased", file=sys.stderr)
            return 1
    settings = settings_from(args)
    with _redis_target(settings) as target:
        erasure = asyncio.run(_erase(settings, target, customer_id, _operator(), args.request_id or ""))
    if erasure.erased:
        print(f"customer {customer_id} erased ({erasure.decisions} decisions deleted); the erasure is in the audit")
    else:
        print(f"customer {customer_id}: nothing was stored; the erasure request is in the audit")
    return 0


async def _erase(settings: Settings, target: RedisTarget, customer_id: str, caller: str, request_id: str) -> Erasure:
    from nba_service.store.connect import async_client
    from nba_service.store.state import StateStore

    try:
        client = async_client(target)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    store = StateStore(  # its script connection reaches what the client reaches (the sentinels' primary too)
        client,
        decision_ttl_seconds=settings.decision_ttl_seconds,
        journey_max_events=settings.journey_max_events,
        url=target.url,
    )
    try:
        return await store.erase_customer(customer_id, caller=caller, request_id=request_id)
    finally:
        await store.aclose()
        await client.aclose()


@contextlib.contextmanager
def _redis_target(settings: Settings) -> Iterator[RedisTarget]:
    """The configured Redis, or the embedded Redis (started for the command if no server runs it)."""
    if not settings.uses_embedded_redis:
        yield RedisTarget.of(settings)
        return
    from nba_service.store.embedded import EmbeddedRedis

    with EmbeddedRedis(settings.data_dir) as embedded:
        yield RedisTarget(url=embedded.url)


def _operator() -> str:
    """The audit's caller for a command: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (a container without an entry in /etc/passwd)
        return "cli"


def register(sub: argparse._SubParsersAction) -> None:
    customers = sub.add_parser("customers", help="manage customer profiles")
    customers_sub = customers.add_subparsers(dest="customers_command", required=True, metavar="ACTION")
    load = customers_sub.add_parser("load", help="bulk-load profiles from a JSON-lines or CSV export")
    load.add_argument("file")
    state_options(load)
    load.set_defaults(func=cmd_customers_load)

    audit = customers_sub.add_parser(
        "audit",
        help="a customer's consent changes and erasure, oldest first",
        description="A customer's consent changes and erasure, oldest first, from the consent audit. "
        "The audit names customers by pseudonym, so it stays readable by id after an erasure; it is one "
        "stream for all customers, scanned whole (in pages) to find this one's entries.",
    )
    audit.add_argument("customer_id", metavar="ID", help="the customer's id (its pseudonym is looked up)")
    audit.add_argument("--json", metavar="FILE", help="also write the entries as JSON here")
    state_options(audit)
    audit.set_defaults(func=cmd_customers_audit)

    erase = customers_sub.add_parser(
        "erase",
        help="erase a customer (profile, journey, contacts, decisions); audited",
        description="Erase everything stored about a customer: profile, journey, contacts, open journeys, "
        "declines and decisions (pending ones will teach nothing). The outcome stream keeps what the "
        "learner needs, which names no customer. The erasure is recorded in the consent audit under the "
        "customer's pseudonym, with your login name as the caller. Asks for confirmation unless --yes.",
    )
    erase.add_argument("customer_id", metavar="ID", help="the customer's id")
    erase.add_argument("--yes", action="store_true", help="erase without asking (required when not on a terminal)")
    erase.add_argument("--request-id", help="your reference for this erasure, recorded in the audit")
    state_options(erase)
    erase.set_defaults(func=cmd_customers_erase)
