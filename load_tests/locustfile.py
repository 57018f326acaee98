"""Locust gRPC users for ``nba.v1.DecisionService``.

Four kinds of callers, weighted like real traffic (see load_tests/README.md):

- ``AtmBackend``    atm_decline moments, then outcomes for part of the decisions
- ``AppBackend``    app_open, location pings and cart_abandon from the app, then outcomes
- ``WebBackend``    page_view and cart_abandon with origin_channel "web", then outcomes
- ``AgentDesktop``  GetCustomerContext(include_best_actions), then Decide on an agent_contact

Every user makes exactly one gRPC call per task run, so with the default
``constant_throughput`` wait the rate is NBA_LOAD_RATE *calls* per second per
user: a follow-up call (an outcome, the agent's Decide after the context) is
queued and sent on the user's next turn, a moment later, as in real life.

Customers and moments come from :mod:`nba_service.tools.traffic`, the
generator of the demo and ``nba events generate``: a skewed population
(:class:`~nba_service.tools.traffic.SkewedPopulation`) and one scenario's
request for a customer (:func:`~nba_service.tools.traffic.scenario_call`),
sent from the user's own channel. Each user chooses its scenarios.

Every call is reported to Locust by a client interceptor under the RPC method
name (``Decide``, ``ReportOutcome``, ``GetCustomerContext``).

Environment (all optional):

    NBA_LOAD_DEADLINE_S      per-call deadline in seconds (1.0)
    NBA_LOAD_RATE            calls per second per user (10; 0 = no wait at all)
    NBA_LOAD_WAIT            "throughput" (constant_throughput, default) or
                             "between" (uniform random wait with the same mean)
    NBA_LOAD_CUSTOMERS       population size: ids c00001..cNNNNN (400)
    NBA_LOAD_ZIPF_S          skew of customer activity, rank^-s (0.8; 0 = uniform)
    NBA_LOAD_SEED            random seed (1); each user gets seed + its own offset
    NBA_LOAD_OUTCOME_SHARE   share of non-"no action" decisions that get outcomes (0.5)
    NBA_LOAD_ACCEPT_RATE     share of those impressions then accepted, else declined (0.2)
    NBA_LOAD_UNKNOWN_SHARE   share of ATM declines by people without a profile (0.02)
    NBA_LOAD_WEIGHT_ATM / _APP / _WEB / _AGENT   user class weights (20 / 40 / 30 / 10;
                             0 leaves that class out)
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent

# Before any channel exists: without it grpc blocks the whole gevent loop and
# every Locust user of this process runs one call at a time.
grpc_gevent.init_gevent()

from locust import User, constant, constant_throughput, events, task  # noqa: E402

from nba_service.proto.nba.v1 import decision_pb2 as pb  # noqa: E402
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc  # noqa: E402
from nba_service.tools.traffic import SkewedPopulation, scenario_call  # noqa: E402

log = logging.getLogger("nba.load")


# --- configuration ------------------------------------------------------------------

def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None


def _env_int(name: str, default: int) -> int:
    value = _env_float(name, default)
    if value != int(value):
        raise SystemExit(f"{name}={value!r} is not a whole number")
    return int(value)


DEADLINE_S = _env_float("NBA_LOAD_DEADLINE_S", 1.0)
RATE = _env_float("NBA_LOAD_RATE", 10.0)
WAIT = os.environ.get("NBA_LOAD_WAIT", "throughput").strip().lower() or "throughput"
CUSTOMERS = _env_int("NBA_LOAD_CUSTOMERS", 400)
ZIPF_S = _env_float("NBA_LOAD_ZIPF_S", 0.8)
SEED = _env_int("NBA_LOAD_SEED", 1)
OUTCOME_SHARE = _env_float("NBA_LOAD_OUTCOME_SHARE", 0.5)
ACCEPT_RATE = _env_float("NBA_LOAD_ACCEPT_RATE", 0.2)
UNKNOWN_SHARE = _env_float("NBA_LOAD_UNKNOWN_SHARE", 0.02)

if DEADLINE_S <= 0:
    raise SystemExit(f"NBA_LOAD_DEADLINE_S must be > 0, got {DEADLINE_S}")
if CUSTOMERS < 1 or CUSTOMERS > 99999:
    raise SystemExit(f"NBA_LOAD_CUSTOMERS must be between 1 and 99999, got {CUSTOMERS}")
if RATE < 0:
    raise SystemExit(f"NBA_LOAD_RATE must be >= 0, got {RATE}")
if WAIT not in ("throughput", "between"):
    raise SystemExit(f"NBA_LOAD_WAIT must be 'throughput' or 'between', got {WAIT!r}")


def _weight(name: str, default: int) -> int:
    value = _env_int(f"NBA_LOAD_WEIGHT_{name}", default)
    if value < 0:
        raise SystemExit(f"NBA_LOAD_WEIGHT_{name} must be >= 0, got {value}")
    return value


def _wait_time() -> Callable[[User], float]:
    if RATE == 0:
        return constant(0)
    if WAIT == "between":
        from locust import between

        return between(0.0, 2.0 / RATE)  # mean 1/RATE, plus the call itself
    return constant_throughput(RATE)


# --- customers: a fixed population with Zipf-like activity ---------------------------

POPULATION = SkewedPopulation([f"c{i:05d}" for i in range(1, CUSTOMERS + 1)], ZIPF_S,
                              shuffle=random.Random(f"nba-load-ranks-{SEED}"))
"""Ids c00001..cNNNNN, the customer of rank r drawn with weight r^-s; the ranks (a seeded shuffle)
are the same for every user and every run with the same seed."""


# --- reporting every call to Locust --------------------------------------------------

class GrpcCallError(Exception):
    """A failed call, named by status code and details so Locust groups failures well."""


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Times every unary call and fires Locust's request event, success or failure."""

    def __init__(self, environment: Any) -> None:
        self.environment = environment

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        name = client_call_details.method.rsplit("/", 1)[-1]
        exception: Exception | None = None
        response_length = 0
        started = time.perf_counter()
        call = continuation(client_call_details, request)
        try:
            response_length = call.result().ByteSize()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            exception = GrpcCallError(f"{getattr(code, 'name', code)}: {details}")
        response_time = (time.perf_counter() - started) * 1000.0
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=response_time,
            response_length=response_length,
            response=None,
            context={},
            exception=exception,
        )
        return call


def grpc_target(host: str | None) -> str:
    """``host:port`` from ``host:port`` or ``grpc://host:port``."""
    if not host:
        raise ValueError("no host: pass --host 127.0.0.1:50051 (or grpc://127.0.0.1:50051)")
    target = host.strip()
    for scheme in ("grpc://", "http://"):
        if target.startswith(scheme):
            target = target[len(scheme):]
    target = target.rstrip("/")
    if ":" not in target.rsplit("]", 1)[-1]:
        raise ValueError(f"host {host!r} has no port: use host:port")
    return target


# --- what the run looked like (printed at the end) -----------------------------------

class RunNotes:
    """Counts decisions by answer and outcome replies, to see at a glance what was exercised."""

    def __init__(self) -> None:
        self.decisions: collections.Counter[str] = collections.Counter()
        self.actions: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()

    def log_summary(self) -> None:
        total = sum(self.decisions.values())
        if not total:
            return
        parts = [f"{kind}: {n} ({self.actions[kind]} with an action)" for kind, n in sorted(self.decisions.items())]
        log.warning("decisions by event: %s", "; ".join(parts))
        if self.outcomes:
            log.warning("outcome replies: %s", ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())))


NOTES = RunNotes()


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_: Any) -> None:
    NOTES.log_summary()


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    # Locust rewrites <csv>_stats.csv once a second and does not write it again
    # when it exits, so the file can miss the last second of the run (and a
    # failure in it). The stats are final by now: give its CSV writer one more turn.
    options = getattr(environment, "parsed_options", None)
    if options is not None and getattr(options, "csv_prefix", None):
        import gevent

        gevent.sleep(1.2)


# --- users ---------------------------------------------------------------------------

class GrpcUser(User):
    """One channel backend: its own channel to ``self.host``, one call per task run."""

    abstract = True
    wait_time = _wait_time()
    origin_channel = ""
    outcome_share = OUTCOME_SHARE
    _offsets = itertools.count()

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        runner = environment.runner
        worker = getattr(runner, "worker_index", 0) if runner is not None else 0
        # Each user draws its own sequence: seed + (worker, user) offset.
        self.rng = random.Random(SEED * 1_000_003 + worker * 100_003 + next(GrpcUser._offsets))
        self.channel = grpc.intercept_channel(grpc.insecure_channel(grpc_target(self.host)),
                                              LocustInterceptor(environment))
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.follow_ups: collections.deque[Callable[[], None]] = collections.deque()

    def on_stop(self) -> None:
        self.follow_ups.clear()
        self.channel.close()

    # One call per run: a queued follow-up if there is one, else a new moment.
    @task
    def step(self) -> None:
        if self.follow_ups:
            self.follow_ups.popleft()()
        else:
            self.moment()

    def moment(self) -> None:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        """Make one call with the deadline; None on failure (already reported by the interceptor)."""
        try:
            return method(request, timeout=DEADLINE_S)
        except grpc.RpcError:
            return None

    def customer(self, unknown_share: float = 0.0) -> str:
        """A customer of the population; with probability ``unknown_share`` a walk-in without a profile."""
        return POPULATION.pick(self.rng, unknown_share)

    def request_id(self) -> str:
        return f"load-{self.rng.getrandbits(64):016x}"

    def moment_request(self, scenario: str, customer_id: str) -> pb.DecideRequest:
        """A ``scenario`` moment of ``customer_id`` (nba_service.tools.traffic), from this backend's channel."""
        request = scenario_call(scenario, customer_id, self.rng).request
        request.request_id = self.request_id()
        request.origin_channel = self.origin_channel
        return request

    def decide(self, request: pb.DecideRequest) -> pb.DecideResponse | None:
        kind = request.event.WhichOneof("kind") or "?"
        response = self.call(self.stub.Decide, request)
        if response is not None:
            NOTES.decisions[kind] += 1
            if not response.no_action:
                NOTES.actions[kind] += 1
                self.maybe_report(response)
        return response

    def maybe_report(self, response: pb.DecideResponse) -> None:
        """For a share of actions: impressed, then accepted or declined, on the next turns."""
        if self.rng.random() >= self.outcome_share:
            return
        accepted = self.rng.random() < ACCEPT_RATE
        value = round(self.rng.uniform(10, 300), 2) if accepted else 0.0
        decision_id = response.decision_id
        self.follow_ups.append(lambda: self.report(decision_id, pb.OUTCOME_KIND_IMPRESSED, 0.0))
        second = pb.OUTCOME_KIND_ACCEPTED if accepted else pb.OUTCOME_KIND_DECLINED
        self.follow_ups.append(lambda: self.report(decision_id, second, value))

    def report(self, decision_id: str, kind: int, value: float) -> None:
        request = pb.OutcomeRequest(decision_id=decision_id, outcome=kind, value=value)
        response = self.call(self.stub.ReportOutcome, request)
        if response is not None:
            NOTES.outcomes["duplicate" if response.duplicate else "learned" if response.learned else "recorded"] += 1


class AtmBackend(GrpcUser):
    """The ATM network: a withdrawal was declined; outcomes come from the ATM screen or the phone."""

    weight = _weight("ATM", 20)
    abstract = weight == 0
    origin_channel = "atm"

    def moment(self) -> None:
        # a share of declines are by people without a profile here (another bank's card)
        self.decide(self.moment_request("atm_decline", self.customer(UNKNOWN_SHARE)))


class AppBackend(GrpcUser):
    """The mobile app backend: app opens, location pings, carts left in the app, outcomes."""

    weight = _weight("APP", 40)
    abstract = weight == 0
    origin_channel = "app"

    def moment(self) -> None:
        customer_id = self.customer()
        roll = self.rng.random()
        scenario = "app_open" if roll < 0.55 else "location" if roll < 0.85 else "cart_abandon"
        self.decide(self.moment_request(scenario, customer_id))


class WebBackend(GrpcUser):
    """The website: page views and abandoned carts, origin_channel "web" (web banner possible)."""

    weight = _weight("WEB", 30)
    abstract = weight == 0
    origin_channel = "web"
    outcome_share = OUTCOME_SHARE * 0.6  # banners are seen less often than pushes

    def moment(self) -> None:
        customer_id = self.customer()
        scenario = "cart_abandon" if self.rng.random() < 0.35 else "page_view"
        self.decide(self.moment_request(scenario, customer_id))


class AgentDesktop(GrpcUser):
    """The contact centre: the customer calls, the desktop loads the context with the
    pending best actions, then asks for a decision on the agent_contact moment."""

    weight = _weight("AGENT", 10)
    abstract = weight == 0
    origin_channel = "contact_center"

    def moment(self) -> None:
        customer_id = self.customer()
        context = pb.CustomerContextRequest(customer_id=customer_id, max_events=20, include_best_actions=True)
        if self.call(self.stub.GetCustomerContext, context) is None:
            return
        request = self.moment_request("agent_contact", customer_id)
        self.follow_ups.append(lambda: self.decide(request))
