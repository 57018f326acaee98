"""``nba explain``: one would-be decision, offer by offer, without recording anything."""

from __future__ import annotations

import argparse
import json
import sys
import time

from nba_service.api.event_log import EventLogError, event_object, parse_record, to_timed_request
from nba_service.cli._common import settings_from, state_client, state_options
from nba_service.domain import CustomerContext, Decision, RenderedContent, TimedRequest
from nba_service.domain.localtime import local_time
from nba_service.engine.explain import ArmScore, OfferExplanation, explain_decision
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import EpsilonGreedy
from nba_service.store.context_reader import ContextReader
from nba_service.store.policy_store import PolicyStore
from nba_service.tools.sources import SourceError, load_models, moment_time, policy_source


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        moment = _moment(args)
        now = moment_time(args.at, time.time())
    except (EventLogError, SourceError) as exc:
        print(f"nba explain: {exc}", file=sys.stderr)
        return 1
    with state_client(settings_from(args)) as client:
        try:
            source = policy_source(PolicyStore(client), args.policies or args.policy_version)
        except SourceError as exc:
            print(f"nba explain: {exc}", file=sys.stderr)
            return 1
        snapshot = source.compile()
        (models,), model_text = load_models(client, [snapshot])
        request = moment.request
        ctx = ContextReader(client).read_context(
            request.customer_id,
            now,
            origin_channel=request.origin_channel,
            request_attributes=request.attributes,
            contact_window=snapshot.max_limit_window,
            suppression_window=snapshot.max_suppression_window,
            accepted_window=snapshot.max_accepted_window,
        )
    decision = DecisionEngine(models, EpsilonGreedy(0.0)).decide(
        snapshot, ctx, moment.request.event, top_k=max(len(snapshot.offers), 1)
    )
    offers = explain_decision(snapshot, models, ctx, moment.request.event, decision)
    for line in _header(ctx, moment, source.label, model_text):
        print(line)
    print()
    weights = {arm.channel: arm.defer_weight for o in offers for arm in o.arms if arm.defer_weight != 1.0}
    for line in _decision_lines(decision, snapshot.settings.preferred_channel_boost, weights):
        print(line)
    print()
    for line in _offer_lines(offers):
        print(line)
    return 0


def _moment(args: argparse.Namespace) -> TimedRequest:
    """The request the options describe, checked as ``Decide`` checks it."""
    fields = dict(_pairs(args.field, "--field"))
    text = args.event.strip()
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EventLogError(f"--event: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(event, dict) or len(event) != 1:
            raise EventLogError(
                '--event: a JSON event is one type and its fields, e.g. {"atm_decline": {"amount": 100}}'
            )
        if fields:
            ((kind, body),) = event.items()
            event = {kind: {**(body if isinstance(body, dict) else {}), **event_object(kind, fields)[kind]}}
    else:
        event = event_object(text, fields)
    record = {
        "customer_id": args.customer,
        "origin_channel": args.origin or "",
        "event": event,
        "attributes": dict(_pairs(args.attribute, "--attribute")),
    }
    return to_timed_request(parse_record(record))


def _pairs(items: list[str] | None, option: str) -> list[tuple[str, str]]:
    out = []
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise EventLogError(f"{option} {item!r}: write NAME=VALUE")
        out.append((name, value))
    return out


# --- output ---------------------------------------------------------------------------


def _header(ctx: CustomerContext, moment: TimedRequest, policy: str, models: str) -> list[str]:
    p = ctx.profile
    local = local_time(ctx.now, p.timezone)
    when = f"{local:%a %Y-%m-%d %H:%M} in {p.timezone or 'UTC'}"
    if p.known:
        consents = ", ".join(f"{c} {'yes' if g else 'no'}" for c, g in sorted(p.consents.items())) or "none recorded"
        holds = f"; holds {', '.join(sorted(p.holdings))}" if p.holdings else ""
        who = [
            f"customer {p.customer_id}: {p.first_name or '(no name)'}, segment {p.segment or '(none)'}, "
            f"preferred channel {p.preferred_channel or '(none)'}, local time {when}",
            f"  reachable on {', '.join(sorted(p.reachable_channels)) or 'nothing'}; consents: {consents}{holds}",
        ]
    else:
        who = [f"customer {p.customer_id}: no stored profile (unknown-customer defaults), local time {when}"]
    who.append(
        f"  {len(ctx.journey)} recent journey events, {len(ctx.contacts)} contacts within the limit windows, "
        f"{len(ctx.open_journeys)} open journeys"
    )
    fields = " ".join(f"{k}={_number(v)}" for k, v in moment.request.event.fields.items())
    attributes = " ".join(f"{k}={v}" for k, v in moment.request.event.attributes.items())
    return [
        *who,
        f"event: {moment.request.event.type} {fields}{' ' + attributes if attributes else ''}"
        f" (origin channel {moment.request.origin_channel or '(none)'})",
        f"policy: {policy}; models: {models}",
        "read only: nothing recorded, no contact counted; exploration off",
    ]


def _decision_lines(decision: Decision, boost: float, defer_weights: dict[str, float]) -> list[str]:
    if decision.no_action:
        overall = next((r for r in decision.reasons if not r.offer_id), None)
        lines = ["decision: no action" + (f" ({overall.code}: {overall.detail})" if overall else "")]
    else:
        lines = [
            f"decision: {decision.offer_id} on {decision.channel}, score {decision.score:.4g}",
            f"  content: {decision.content}",
            *_content_lines(decision.rendered),
            *(
                f"  deferred: {r.detail}" if r.code == "deferred" else f"  not on {r.channel}: {r.code}: {r.detail}"
                for r in decision.reasons
                if r.channel
            ),
        ]
    boost_text = f" x {boost:g} on the preferred channel" if boost != 1.0 else ""
    # the defer_weight of each channel deferring now (quiet hours, on_quiet_hours: defer), when it is not 1
    deferred = "".join(f", x {w:g} on {c} (deferred)" for c, w in sorted(defer_weights.items()))
    lines.append(f"priority = P x V x L x B{boost_text}{deferred}; L = offer x category x global lever")
    return lines


def _content_lines(content: RenderedContent | None) -> list[str]:
    """The structured content's fields besides the body (``content:``), those the channel's content gives."""
    if content is None:
        return []
    fields = [
        ("title", content.title),
        ("subject", content.subject),
        ("html", content.html),
        ("deep_link", content.deep_link),
        ("image_url", content.image_url),
        ("cta", f"{content.cta_label} -> {content.cta_action}" if content.cta_label or content.cta_action else ""),
        ("language", content.language),
    ]
    return [f"  {name}: {value}" for name, value in fields if value]


def _offer_lines(offers: tuple[OfferExplanation, ...]) -> list[str]:
    lines = []
    width = max((len(o.offer_id) for o in offers), default=10)
    for offer in offers:
        rank = f"{offer.rank}." if offer.rank else "-"
        detail = f"  {offer.detail}" if offer.detail else ""
        lines.append(f"{rank:>3} {offer.offer_id:<{width}}  {offer.status:<15}{detail}")
        for arm in offer.arms:
            lines.append(f"      {arm.channel:<13} {_arm(arm)}")
    return lines


def _arm(arm: ArmScore) -> str:
    if arm.closed:
        return f"closed: {arm.closed}"
    boost = f" x {arm.boost:g}" if arm.boost != 1.0 else ""
    weight = f" x deferred {arm.defer_weight:g}" if arm.defer_weight != 1.0 else ""
    deferred = f", deferred: {arm.deferred}" if arm.deferred else ""
    return f"P {arm.p:.4f} x V {arm.v:g} x L {arm.l:.4g} x B {arm.b:g}{boost}{weight} = {arm.priority:.4g}{deferred}"


def _number(value: object) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return str(value) if value != "" else "''"


def register(sub: argparse._SubParsersAction) -> None:
    explain = sub.add_parser(
        "explain",
        help="every candidate offer of one would-be decision: what filtered it, P, V, L and B",
        description="Decides one moment for one customer as Decide would (exploration off), reading the "
        "customer's state but recording nothing, and shows every offer that answers the event: "
        "the rule or contact limit that filtered it, or the P x V x L x B of each of its channels.",
        epilog="example: nba explain --customer c00042 --event atm_decline --field amount=100 --field balance=20",
    )
    explain.add_argument("--customer", required=True, metavar="ID")
    explain.add_argument(
        "--event",
        required=True,
        metavar="TYPE_OR_JSON",
        help="an event type (atm_decline, location, cart_abandon, app_open, page_view, "
        'agent_contact, custom) or the event as JSON: {"atm_decline": {"amount": 100}}',
    )
    explain.add_argument("--field", action="append", metavar="NAME=VALUE", help="an event field (repeatable)")
    explain.add_argument("--origin", metavar="CHANNEL", help="where the moment happened: atm, app, web...")
    explain.add_argument(
        "--attribute",
        action="append",
        metavar="NAME=VALUE",
        help="a request attribute, as request_attr() reads it (repeatable)",
    )
    which = explain.add_mutually_exclusive_group()
    which.add_argument("--policies", metavar="DIR", help="explain with this policy directory instead of the live one")
    which.add_argument(
        "--policy-version",
        default="live",
        metavar="VERSION",
        help="explain with this published version (default: live)",
    )
    explain.add_argument("--at", metavar="TIME", help="decide as at this time (ISO 8601; default: now)")
    state_options(explain)
    explain.set_defaults(func=cmd_explain)
