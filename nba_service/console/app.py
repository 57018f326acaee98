"""The console's web application: pages, sign-in, roles and CSRF.

Server-rendered (Starlette, Jinja2 templates), htmx for the live Overview and the Levers preview, charts as
SVG drawn on the server. Every page reads and writes the same Redis as ``nba serve`` through the library the
CLI uses: :class:`~nba_service.store.policy_store.PolicyStore` (publish, history, rollback),
:func:`~nba_service.policies.diff.diff_policies`, :func:`~nba_service.tools.preview.run_preview`,
:func:`~nba_service.engine.explain.explain_decision`, the model store and the shadow report.

Who may do what (docs/console.md): with an auth file, a caller signs in with its bearer token and the console
knows it by its name; ``viewer`` sees the pages, ``marketing`` previews lever changes, ``publisher`` publishes
and rolls back, ``pii`` sees sensitive profile attributes, ``admin`` everything. Without an auth file (a local
demo) everyone is the local admin, and the header says so. Sessions live in signed cookies; every form that
changes something carries the session's CSRF token.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import hmac
import logging
import math
import pathlib
import random
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from nba_service.api.auth import LOCAL, AuthFile, Caller, Client
from nba_service.api.event_log import (
    EventLogError,
    event_object,
    parse_line,
    parse_record,
    read_timed_requests,
    request_to_line,
    to_timed_request,
)
from nba_service.console import charts
from nba_service.console.estimate import OffPolicy, logged_decisions, off_policy
from nba_service.console.levers import Lever, Proposal, levers_of, propose, show_number
from nba_service.console.live import LiveNumbers, scrape_servers
from nba_service.domain import CustomerContext, CustomerProfile, Decision, Event, RenderedContent, TimedRequest
from nba_service.engine.agent_view import agent_scripts, likely_reasons
from nba_service.engine.explain import explain_decision
from nba_service.engine.pipeline import DecisionEngine, render_content
from nba_service.learning.exploration import EpsilonGreedy
from nba_service.policies.diff import diff_policies
from nba_service.policies.model import PolicySet
from nba_service.policies.parser import parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.store import heartbeats, keys
from nba_service.store.context_reader import ContextReader
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyConflict, PolicyStore
from nba_service.tools.preview import NO_ACTION, PolicyRun, PreviewReport, run_preview
from nba_service.tools.shadow_report import shadow_report
from nba_service.tools.sources import load_models, stored_contexts, stored_contexts_many
from nba_service.tools.traffic import SCENARIOS, scenario_call

__all__ = ["CONSOLE_ROLES", "ConsoleConfig", "create_app", "load_moments"]

HERE = pathlib.Path(__file__).parent
log = logging.getLogger(__name__)
CONSOLE_ROLES = ("viewer", "marketing", "publisher", "admin")
"""A caller of the auth file with one of these may sign in."""
EDIT_ROLES = ("marketing", "publisher")
PREVIEW_CONTEXT_SECONDS = 60.0
"""How long the Levers preview reuses a customer's context read from Redis."""
PREVIEW_CONTEXTS = 20_000
"""At most this many contexts are kept (the preview replays at most a few thousand events)."""
SHADOW_REPORT_SECONDS = 60.0
"""The shadow report reads every logged decision (a SCAN of the keyspace): the Learning page shows the last
one computed, and a new one is computed in the background when it is older than this."""
LOOKUP_ROLES = ("agent", "marketing", "publisher")
SIGN_IN_FAILURES = 10
"""Failed sign-ins a client address may make in :data:`SIGN_IN_WINDOW` seconds; then 429 until the oldest
of them is that old."""
SIGN_IN_WINDOW = 60.0


@dataclasses.dataclass(slots=True)
class ConsoleConfig:
    client: redis.Redis
    """The Redis the servers use (the console opens no other)."""
    auth: AuthFile | None = None
    """The service's auth file; None: no sign-in, everyone is the local admin."""
    secret_key: str = ""
    """Signs the session cookies; empty: a random key (sessions end when the console stops)."""
    moments: Sequence[TimedRequest] = ()
    """The recorded events the Levers preview replays."""
    moments_source: str = ""
    https_only: bool = False


def create_app(config: ConsoleConfig) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(show_number=show_number, when=_when, percent=_percent, dom_id=_dom_id)
    console = _Console(config, templates)
    # No endpoint calls Redis (a sync client) on the event loop: one that needs no ``await`` is a plain ``def``
    # (Starlette runs it in its threadpool), one that awaits its form runs the rest with ``run_in_threadpool``;
    # a slow Redis holds up only the page that waits for it (tests/console/test_console_async.py).
    routes = [
        Route("/", console.overview),
        Route("/overview/live", console.overview_live),
        Route("/login", console.login, methods=["GET", "POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/offers", console.offers),
        Route("/levers", console.levers),
        Route("/levers/preview", console.levers_preview, methods=["POST"]),
        Route("/levers/publish", console.levers_publish, methods=["POST"]),
        Route("/history", console.history),
        Route("/history/{version:int}", console.history_version),
        Route("/history/{version:int}/rollback", console.rollback, methods=["GET", "POST"]),
        Route("/learning", console.learning),
        Route("/learning/shadow", console.learning_shadow),
        Route("/customer", console.customer),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=config.secret_key or secrets.token_urlsafe(32),
            session_cookie="nba_console",
            same_site="strict",
            https_only=config.https_only,
            max_age=12 * 3600,
        )
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: console.error})
    app.state.console = console
    return app


class _Console:
    def __init__(self, config: ConsoleConfig, templates: Jinja2Templates) -> None:
        self.config = config
        self.templates = templates
        self.live_numbers = LiveNumbers()
        self._parsed: dict[int, tuple[PolicySet, list[Lever]]] = {}
        """Policy version -> its policy set and levers: a published version never changes, so each is parsed
        once (parsing the YAML of 30 offers takes longer than rendering any page)."""
        self._parsed_lock = threading.Lock()
        self._snapshots: dict[int, PolicySnapshot] = {}
        self._context_cache: dict[tuple[str, float, float], tuple[float, Any]] = {}
        self._context_lock = threading.Lock()
        self.shadow = Refreshed(lambda: shadow_report(self.config.client), max_age=SHADOW_REPORT_SECONDS)
        self.sign_in_failures = FailureLimit(SIGN_IN_FAILURES, SIGN_IN_WINDOW)

    # --- who is asking ------------------------------------------------------------------

    def user(self, request: Request) -> Caller | None:
        """The signed-in caller (its roles as the auth file says now); the local admin without an auth file."""
        auth = self.config.auth
        if auth is None:
            return LOCAL
        name = request.session.get("user")
        client = next((c for c in auth.clients if c.name == name), None) if name else None
        if client is None or not any(role in client.roles for role in CONSOLE_ROLES):
            return None
        if not hmac.compare_digest(request.session.get("token", ""), _token_mark(client)):
            return None  # signed in with a token the auth file no longer lists (rotated): sign in again
        return Caller(client.name, client.roles)

    def need(self, request: Request, *roles: str) -> Caller:
        user = self.user(request)
        if user is None:
            raise HTTPException(401, "sign in first")
        if roles and not any(user.has(role) for role in roles):
            raise HTTPException(403, f"{user.name} may not do this: it needs the role {' or '.join(roles)}")
        return user

    def csrf(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(24)
        return str(token)

    async def form(self, request: Request) -> dict[str, str]:
        """The POSTed form, refused (403) unless it carries the session's CSRF token."""
        form = await request.form()
        sent = str(form.get("csrf", "")) or request.headers.get("x-csrf-token", "")
        expected = request.session.get("csrf", "")
        if not sent or not expected or not hmac.compare_digest(sent, str(expected)):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")
        return {key: str(value) for key, value in form.items()}

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        user = self.user(request)
        context.update(
            request=request,
            user=user,
            local_admin=self.config.auth is None,
            csrf=self.csrf(request),
            can_edit=user is not None and any(user.has(r) for r in EDIT_ROLES),
            can_publish=user is not None and user.has("publisher"),
            can_lookup=user is not None and any(user.has(r) for r in LOOKUP_ROLES),
            page=name.removesuffix(".html"),
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    async def error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 401 and request.method == "GET":
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return self.render(request, "error.html", status_code=exc.status_code, message=exc.detail)

    # --- sign-in ------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        auth = self.config.auth
        if auth is None:
            return RedirectResponse("/", status_code=303)
        target = request.query_params.get("next", "/")
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        if request.method == "GET":
            return self.render(request, "login.html", next=target, problem="")
        address = request.client.host if request.client else ""
        wait = self.sign_in_failures.wait(address)
        if wait > 0:
            problem = f"too many failed sign-ins from {address}: try again in {wait} s"
            answer = self.render(request, "login.html", 429, next=target, problem=problem)
            answer.headers["Retry-After"] = str(wait)
            return answer
        form = await self.form(request)
        client = auth.by_token(form.get("token", "").strip())
        if client is None:
            self.sign_in_failures.fail(address)
            return self.render(request, "login.html", 401, next=target, problem="unknown token")
        if not any(role in client.roles for role in CONSOLE_ROLES):
            problem = f"{client.name} has no console role ({', '.join(CONSOLE_ROLES)})"
            return self.render(request, "login.html", 403, next=target, problem=problem)
        request.session.clear()
        request.session.update(user=client.name, token=_token_mark(client), csrf=secrets.token_urlsafe(24))
        return RedirectResponse(target, status_code=303)

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        request.session.clear()
        return RedirectResponse("/login" if self.config.auth else "/", status_code=303)

    # --- what is live -------------------------------------------------------------------

    def live_policy(self) -> tuple[int, PolicySet] | None:
        version = PolicyStore(self.config.client).live()
        if version is None:
            return None
        return version, self._version(version)[0]

    def _version(self, version: int) -> tuple[PolicySet, list[Lever]]:
        """Policy version ``version`` parsed, and its levers (cached: versions are immutable)."""
        with self._parsed_lock:
            cached = self._parsed.get(version)
        if cached is None:
            policy = parse_policy_files(PolicyStore(self.config.client).load(version).files)
            cached = (policy, levers_of(policy))
            with self._parsed_lock:
                self._parsed[version] = cached
        return cached

    def levers_of(self, live: tuple[int, PolicySet]) -> list[Lever]:
        return self._version(live[0])[1]

    # --- Overview -----------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        self.need(request)
        return self.render(request, "overview.html")

    def overview_live(self, request: Request) -> Response:
        self.need(request)
        client = self.config.client
        beats = heartbeats.servers(client)
        numbers = self.live_numbers.add(scrape_servers(beats))
        per_minute: dict[str, Any] = numbers["per_minute"]
        acceptance: dict[str, float] = numbers["acceptance"]
        filtered: dict[str, float] = numbers["filtered"]
        context: dict[str, Any] = {
            "n": numbers,
            "beats": beats,
            "policy_version": PolicyStore(client).live(),
            "model_version": ModelStore(client).live(),
            "events_chart": _ranked(per_minute.get("by_event", {})),
            "channels_chart": _ranked(per_minute.get("by_channel", {})),
            "acceptance_chart": _ranked({k: 100 * v for k, v in acceptance.items()}, unit="%"),
            "filtered_chart": _ranked(dict(list(filtered.items())[:10])),
            "no_action_chart": _ranked(numbers["no_action_reasons"]),
            "window_note": f" (at the pace of the last {per_minute['window']:.0f} s)" if per_minute else "",
            "value_per_action": self._value_per_action(numbers),
        }
        return self.render(request, "overview_live.html", **context)

    def _value_per_action(self, numbers: dict[str, Any]) -> float | None:
        """The offers' values (numbers only) earned by accepted actions, per action decided."""
        live = self.live_policy()
        actions = sum(numbers["actions"].values())
        if live is None or not actions:
            return None
        values = {o.id: o.value for o in live[1].offers}
        earned = sum(values.get(offer, 0.0) * n for offer, n in numbers["accepted"].items())
        return earned / actions

    # --- Offers -------------------------------------------------------------------------

    def offers(self, request: Request) -> Response:
        user = self.need(request)
        customer_id = request.query_params.get("customer", "").strip()
        if customer_id:
            self.need(request, *LOOKUP_ROLES)
        live = self.live_policy()
        funnel: dict[str, dict[str, dict[str, float]]] = collections.defaultdict(
            lambda: collections.defaultdict(lambda: collections.defaultdict(float))
        )
        numbers = self.live_numbers.add(scrape_servers(heartbeats.servers(self.config.client)))
        for (offer, channel), n in numbers["by_offer_channel"].items():
            funnel[offer][channel]["decided"] += n
        for (offer, channel, outcome), n in numbers["outcomes"].items():
            funnel[offer][channel][outcome] += n
        content = self._offer_content(user, live, customer_id) if live else {}
        return self.render(
            request, "offers.html", live=live, funnel=funnel, stages=("decided", "impressed", "accepted", "converted"),
            deliveries=numbers["deliveries"], customer_id=customer_id, **content,
        )  # fmt: skip

    def _snapshot(self, live: tuple[int, PolicySet]) -> PolicySnapshot:
        """The live version compiled (kept: a version never changes)."""
        with self._parsed_lock:
            found = self._snapshots.get(live[0])
        if found is None:
            found = PolicySnapshot.compile(live[1], str(live[0]))
            with self._parsed_lock:
                self._snapshots = {live[0]: found}
        return found

    def _offer_content(self, user: Caller, live: tuple[int, PolicySet], customer_id: str) -> dict[str, Any]:
        """Every offer's content rendered by the engine's own :func:`render_content` for each channel and
        language, for a looked-up customer (sensitive attributes left out without ``pii``) or a sample one,
        at a sample moment of the offer's first event type."""
        policy = live[1]
        now = time.time()
        if customer_id:
            ctx = ContextReader(self.config.client).read_context(customer_id, now)
            profile = ctx.profile
            hidden = sorted(set(policy.settings.sensitive) & set(profile.attributes)) if not user.has("pii") else []
            if hidden:
                profile = profile.without_attributes(hidden)
        else:
            profile = CustomerProfile("sample", first_name=SAMPLE_FIRST_NAME, known=False)
            hidden = []
        snapshot = self._snapshot(live)
        rendered: dict[str, list[tuple[str, str, RenderedContent | str]]] = {}
        for offer in policy.offers:
            event, origin = _sample_event(offer.events[0] if offer.events else "app_open", customer_id or "sample")
            ctx = CustomerContext(profile, now, origin_channel=origin)
            scope = snapshot.scope(ctx, event)
            rows: list[tuple[str, str, RenderedContent | str]] = []
            for channel in offer.channels:
                content = offer.channel_content.get(channel)
                for language in [v.language for v in content.variants] if content else [""]:
                    try:
                        text: RenderedContent | str = render_content(
                            offer, channel, policy.settings.default_language, scope, ctx, event, language=language
                        )
                    except Exception as exc:  # shown at the offer: the server would fail the same way
                        text = f"cannot be rendered: {type(exc).__name__}: {exc}"
                    rows.append((channel, language, text))
            rendered[offer.id] = rows
        return {"rendered": rendered, "content_for": profile, "hidden": hidden}

    # --- Levers -------------------------------------------------------------------------

    def levers(self, request: Request) -> Response:
        self.need(request)
        live = self.live_policy()
        if live is None:
            return self.render(request, "levers.html", live=None)
        proposal = propose(live[1], {}, self.levers_of(live))
        return self.render(request, "levers.html", **self._levers_context(live, proposal))

    def _levers_context(self, live: tuple[int, PolicySet], proposal: Proposal, **extra: Any) -> dict[str, Any]:
        groups: dict[str, list[Any]] = collections.defaultdict(list)
        for lever in self.levers_of(live):
            groups[lever.group].append(lever)
        return {"live": live, "groups": groups, "proposal": proposal, "moments": len(self.config.moments), **extra}

    async def levers_preview(self, request: Request) -> Response:
        self.need(request, *EDIT_ROLES)
        form = await self.form(request)
        return await run_in_threadpool(self._levers_preview, request, form)

    def _levers_preview(self, request: Request, form: dict[str, str]) -> Response:
        live = self.live_policy()
        if live is None:
            raise HTTPException(409, "no policy version is live yet: publish one with `nba policy publish DIR`")
        proposal = propose(live[1], form, self.levers_of(live))
        result = self._preview(live, proposal)
        context = self._levers_context(live, proposal, **result)
        return self._levers_answer(request, proposal.ok, context)

    def _levers_answer(self, request: Request, ok: bool, context: dict[str, Any]) -> Response:
        """The Levers page, or for htmx its result part (200 even when invalid: htmx swaps only a 2xx)."""
        if request.headers.get("hx-request"):
            return self.render(request, "levers_result.html", **context)
        return self.render(request, "levers.html", 200 if ok else 422, **context)

    def _preview(self, live: tuple[int, PolicySet], proposal: Proposal) -> dict[str, Any]:
        if not proposal.ok or not proposal.changed or proposal.policy is None:
            return {"diff": None, "report": None}
        diff = diff_policies(live[1], proposal.policy)
        report: PreviewReport | None = None
        chart = None
        estimate: OffPolicy | None = None
        if self.config.moments:
            client = self.config.client
            snapshots = [
                PolicySnapshot.compile(live[1], str(live[0])),
                PolicySnapshot.compile(proposal.policy, "candidate"),
            ]
            banks, _ = load_models(client, snapshots)
            sides: tuple[list[Decision], list[Decision]] = ([], [])

            def decided(_moment: TimedRequest, old: Decision, new: Decision) -> None:
                sides[0].append(old)
                sides[1].append(new)

            report = run_preview(
                self.config.moments,
                PolicyRun(f"v{live[0]} (live)", snapshots[0], DecisionEngine(banks[0], EpsilonGreedy(0.0))),
                PolicyRun("candidate", snapshots[1], DecisionEngine(banks[1], EpsilonGreedy(0.0))),
                self._contexts(),
                now=time.time(),
                sample_size=5,
                stored_many=self._contexts_many,
                decided=decided,
            )
            estimate = off_policy(logged_decisions(client, self.config.moments), *sides)
            keys = (set(report.live.decisions) | set(report.candidate.decisions)) - {NO_ACTION}
            rows = sorted(
                ((f"{o} on {c}", (report.live.decisions[(o, c)], report.candidate.decisions[(o, c)])) for o, c in keys),
                key=lambda r: (-abs(r[1][1] - r[1][0]), -r[1][0], r[0]),
            )[:25]
            rows.append(("(no action)", (report.live.no_action, report.candidate.no_action)))
            chart = charts.bars(
                rows, (report.live.label, report.candidate.label), title="decisions by offer and channel"
            )
        return {"diff": diff, "report": report, "chart": chart, "estimate": estimate}  # fmt: skip

    def _contexts(self) -> Any:
        """The stored contexts the preview replays its events with, each read from Redis at most once a
        minute (reading them takes as long as deciding: a preview that follows another reads none)."""
        read = stored_contexts(self.config.client)

        def context(customer_id: str, now: float, window: float) -> Any:
            key = (customer_id, now, window)  # the same events give the same keys
            with self._context_lock:
                cached = self._context_cache.get(key)
            if cached is not None and time.monotonic() - cached[0] < PREVIEW_CONTEXT_SECONDS:
                return cached[1]
            found = read(customer_id, now, window)
            with self._context_lock:
                if len(self._context_cache) >= PREVIEW_CONTEXTS:
                    self._context_cache.clear()
                self._context_cache[key] = (time.monotonic(), found)
            return found

        return context

    def _contexts_many(self, moments: Sequence[tuple[str, float]], window: float) -> dict[str, Any]:
        """The contexts of ``moments`` (customer, time of its first event), those not kept from a preview of
        the last minute read from Redis in one pipelined round trip, and kept."""
        out: dict[str, Any] = {}
        missing: list[tuple[str, float]] = []
        fresh = time.monotonic()
        with self._context_lock:
            for customer_id, now in moments:
                cached = self._context_cache.get((customer_id, now, window))
                if cached is not None and fresh - cached[0] < PREVIEW_CONTEXT_SECONDS:
                    out[customer_id] = cached[1]
                else:
                    missing.append((customer_id, now))
        if missing:
            read = stored_contexts_many(self.config.client)(missing, window)
            with self._context_lock:
                if len(self._context_cache) + len(read) > PREVIEW_CONTEXTS:
                    self._context_cache.clear()
                for customer_id, now in missing:
                    self._context_cache[(customer_id, now, window)] = (fresh, read[customer_id])
            out.update(read)
        return out

    async def levers_publish(self, request: Request) -> Response:
        user = self.need(request, "publisher")
        form = await self.form(request)
        return await run_in_threadpool(self._levers_publish, request, user, form)

    def _levers_publish(self, request: Request, user: Caller, form: dict[str, str]) -> Response:
        live = self.live_policy()
        if live is None:
            raise HTTPException(409, "no policy version is live yet: publish one with `nba policy publish DIR`")
        proposal = propose(live[1], form, self.levers_of(live))
        message = form.get("message", "").strip()
        if form.get("base") and form["base"] != str(live[0]):
            proposal.other_errors.append(
                f"policy version {live[0]} became live while you edited version {form['base']}: your changes are"
                " shown against it; preview and publish again"
            )
        if not message:
            proposal.field_errors["message"] = "say what changes and why"
        if proposal.ok and not proposal.changed:
            proposal.other_errors.append("nothing changed: the levers are those of the live version")
        if not proposal.ok:
            context = self._levers_context(live, proposal, message=message, diff=None, report=None)
            return self._levers_answer(request, False, context)
        try:
            version = PolicyStore(self.config.client).publish(
                proposal.files, author=user.name, message=message, expect_live=live[0]
            )
        except PolicyConflict:  # published or rolled back since live was read: answered as a stale base is
            return self._levers_publish(request, user, {**form, "base": str(live[0])})
        target = f"/history?published={version}"
        if request.headers.get("hx-request"):
            return Response(status_code=200, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    # --- History ------------------------------------------------------------------------

    def history(self, request: Request) -> Response:
        self.need(request)
        store = PolicyStore(self.config.client)
        versions = {p.version: p for p in store.history()}
        return self.render(
            request,
            "history.html",
            live=store.live(),
            changes=list(reversed(store.changes())),
            versions=versions,
            published=request.query_params.get("published", ""),
            rolled_back=request.query_params.get("rolled_back", ""),
        )

    def history_version(self, request: Request) -> Response:
        self.need(request)
        version = int(request.path_params["version"])
        store = PolicyStore(self.config.client)
        versions = [p.version for p in store.history()]
        if version not in versions:
            raise HTTPException(404, f"policy version {version} does not exist")
        published = store.load(version)
        earlier = [v for v in versions if v < version]
        lines: list[str] = []
        if earlier:
            before = parse_policy_files(store.load(earlier[-1]).files)
            lines = diff_policies(before, parse_policy_files(published.files)).render()
        return self.render(
            request, "version.html", published=published, previous=earlier[-1] if earlier else None, lines=lines,
            live=store.live(),
        )  # fmt: skip

    async def rollback(self, request: Request) -> Response:
        user = self.need(request, "publisher")
        version = int(request.path_params["version"])
        store = PolicyStore(self.config.client)
        if request.method == "GET":
            return await run_in_threadpool(self._rollback_page, request, store, version)
        await run_in_threadpool(self._known_version, store, version)
        form = await self.form(request)
        if form.get("confirm") != "yes":
            return RedirectResponse("/history", status_code=303)
        await run_in_threadpool(store.rollback, version, author=user.name, message=form.get("message", "").strip())
        return RedirectResponse(f"/history?rolled_back={version}", status_code=303)

    def _rollback_page(self, request: Request, store: PolicyStore, version: int) -> Response:
        self._known_version(store, version)
        return self.render(request, "rollback.html", version=version, live=store.live())

    @staticmethod
    def _known_version(store: PolicyStore, version: int) -> None:
        if version not in {p.version for p in store.history()}:
            raise HTTPException(404, f"policy version {version} does not exist")

    # --- Learning -----------------------------------------------------------------------

    def learning(self, request: Request) -> Response:
        self.need(request)
        client = self.config.client
        store = ModelStore(client)
        history = store.history()
        report, report_at = self.shadow.get()
        curve = None
        if len(history) >= 2:
            start = history[0].published_at
            curve = charts.line(
                [((v.published_at - start) / 60.0, float(v.updates)) for v in history],
                x_label="minutes since the first version",
                y_label="outcomes learned",
            )
        challenger = client.get(keys.MODEL_CHALLENGER_VERSION)
        return self.render(
            request,
            "learning.html",
            history=list(reversed(history)),
            live=store.live(),
            challenger=int(challenger) if challenger else None,
            report=report,
            report_at=report_at,
            curve=curve,
        )

    async def learning_shadow(self, request: Request) -> Response:
        """The shadow/challenger report's panel (polled by the Learning page while the report is computed)."""
        self.need(request)
        report, report_at = self.shadow.get()
        return self.render(request, "learning_shadow.html", report=report, report_at=report_at)

    # --- Customer -----------------------------------------------------------------------

    def customer(self, request: Request) -> Response:
        user = self.need(request)
        query = request.query_params
        customer_id = query.get("id", "").strip()
        context: dict[str, Any] = {"customer_id": customer_id, "query": query, "found": None}
        live = self.live_policy()
        context["event_types"] = sorted({e for o in live[1].offers for e in o.events}) if live else []
        if not customer_id:
            return self.render(request, "customer.html", **context)
        self.need(request, *LOOKUP_ROLES)
        if live is None:
            raise HTTPException(409, "no policy version is live yet")
        context.update(self._customer(user, live, customer_id, query))
        return self.render(request, "customer.html", 400 if context.get("problem") else 200, **context)

    def _customer(self, user: Caller, live: tuple[int, PolicySet], customer_id: str, query: Any) -> dict[str, Any]:
        client = self.config.client
        snapshot = PolicySnapshot.compile(live[1], str(live[0]))
        (models,), model_text = load_models(client, [snapshot])
        event_type = query.get("event", "") or "agent_contact"
        fields = {}
        for line in query.get("fields", "").splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip():
                fields[name.strip()] = value.strip()
        try:
            record = {
                "customer_id": customer_id,
                "origin_channel": query.get("origin", ""),
                "event": event_object(event_type, fields),
            }
            moment = to_timed_request(parse_record(record))
        except (EventLogError, ValueError) as exc:
            return {"problem": str(exc)}
        request = moment.request
        now = time.time()
        ctx = ContextReader(client).read_context(
            customer_id,
            now,
            origin_channel=request.origin_channel,
            request_attributes=request.attributes,
            contact_window=snapshot.max_limit_window,
            suppression_window=snapshot.max_suppression_window,
            accepted_window=snapshot.max_accepted_window,
        )
        sensitive = set(live[1].settings.sensitive)
        attributes = {
            name: (value if user.has("pii") or name not in sensitive else "hidden (needs the pii role)")
            for name, value in sorted(ctx.profile.attributes.items())
        }
        hidden = sorted(sensitive & set(ctx.profile.attributes)) if not user.has("pii") else []
        if hidden:  # decided, explained and rendered without them: no content or script can show their values
            ctx = dataclasses.replace(ctx, profile=ctx.profile.without_attributes(hidden))
        decision = DecisionEngine(models, EpsilonGreedy(0.0)).decide(
            snapshot, ctx, request.event, top_k=max(len(snapshot.offers), 1)
        )
        offers = explain_decision(snapshot, models, ctx, request.event, decision)
        best = [decision.offer_id] if decision.offer_id else []
        best += [a.offer_id for a in decision.alternatives]
        return {
            "found": ctx.profile.known,
            "profile": ctx.profile,
            "attributes": attributes,
            "decided_without": hidden,
            "journey": ctx.journey[:20],
            "reasons": likely_reasons(snapshot, ctx),
            "scripts": agent_scripts(snapshot, ctx, request.event, best),
            "decision": decision,
            "offers": offers,
            "models": model_text,
            "event_type": event_type,
            "policy_version": live[0],
        }


def _token_mark(client: Client) -> str:
    """What a session keeps of the token it signed in with: a digest of the token's digest (the cookie is
    signed, not encrypted), so a session ends when the auth file's token for that name changes."""
    return hashlib.sha256(client.token_sha256 or b"").hexdigest()[:32]


SAMPLE_FIRST_NAME = "Alex"
"""The Offers page renders content for a sample customer of this first name (no stored profile)."""


@functools.lru_cache(maxsize=64)
def _sample_event(event_type: str, customer_id: str) -> tuple[Event, str]:
    """A moment of ``event_type`` as the traffic simulator draws it (seeded: always the same), checked as
    ``Decide`` checks it; an event type the simulator does not know gets its fields' zero values (a custom
    event, the name ``sample``). With the
    channel it usually comes from."""
    if event_type in SCENARIOS:
        call = scenario_call(event_type, customer_id, random.Random(0))
        moment = to_timed_request(parse_line(request_to_line(call.request)))
    else:
        event = event_object(event_type, {"name": "sample"} if event_type == "custom" else {})
        moment = to_timed_request(parse_record({"customer_id": customer_id, "event": event}))
    return moment.request.event, moment.request.origin_channel


class FailureLimit:
    """At most ``limit`` failures per key (a client address) in any ``window`` seconds, in this process."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return collections.deque()
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def wait(self, key: str) -> int:
        """Seconds (rounded up) before ``key`` may try again; 0: now."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(key, now)
            if len(failures) < self.limit:
                return 0
            return max(1, math.ceil(failures[-self.limit] + self.window - now))

    def fail(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(key, now)
            self._failures.setdefault(key, collections.deque()).append(now)
            if len(self._failures) > 100_000:  # addresses that stopped trying are dropped with the oldest
                for stale in [k for k, v in self._failures.items() if now - v[-1] >= self.window]:
                    del self._failures[stale]


class Refreshed:
    """The last value of a slow computation, computed again in a background thread once it is ``max_age``
    seconds old: :meth:`get` never waits for it (None until the first computation ends)."""

    def __init__(self, compute: Any, max_age: float) -> None:
        self._compute = compute
        self._max_age = max_age
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = 0.0
        self._running = False

    def get(self) -> tuple[Any, float]:
        """(the last value, when it was computed); a computation is started when none runs and it is stale."""
        with self._lock:
            if not self._running and time.time() - self._at >= self._max_age:
                self._running = True
                threading.Thread(target=self._run, name="console-refresh", daemon=True).start()
            return self._value, self._at

    def _run(self) -> None:
        try:
            value = self._compute()
        except Exception:  # the page keeps the last value; tried again later
            log.exception("the console's background computation failed")
            with self._lock:
                self._running = False
                self._at = time.time() - self._max_age / 2  # try again soon, not at every request
            return
        with self._lock:
            self._value, self._at, self._running = value, time.time(), False


def _ranked(values: dict[str, float], unit: str = "") -> Any:
    """One bar per key, largest first."""
    return charts.bars(sorted(((k, (v,)) for k, v in values.items()), key=lambda r: (-r[1][0], r[0])), (), unit=unit)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) if timestamp else "-"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _dom_id(key: str) -> str:
    """A form field's key as an HTML id (letters, digits, ``_`` and ``-`` only)."""
    return "f-" + "".join(ch if ch.isalnum() or ch in "_-" else "--" for ch in key)


def load_moments(path: str) -> tuple[list[TimedRequest], list[str]]:
    """The recorded events of ``path`` (``nba serve --record-events``, ``nba events generate``) and the lines
    refused."""
    return read_timed_requests(path)
