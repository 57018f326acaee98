"""Every Prometheus metric of the service, defined once against a registry passed in.

Names follow the Prometheus conventions: ``nba_`` prefix, base units
(``_seconds``), ``_total`` on counters (added by the client library), labels of
low cardinality only (offer and channel ids come from the policy set, never a
customer id or free text).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The service's metrics; children on the hot path are cached."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decision_seconds = Histogram(
            "nba_decision_duration_seconds",
            "Time to decide one request inside the server, Redis round trips included, by event type.",
            ["event_type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "nba_decisions",
            'Decisions made, by chosen offer and channel (offer="none" for no action).',
            ["offer", "channel"],
            registry=registry,
        )
        self.outcomes = Counter(
            "nba_outcomes", "Outcomes reported and joined to a decision, by kind.", ["outcome"], registry=registry
        )
        self.offer_outcomes = Counter(
            "nba_offer_outcomes",
            "Outcomes joined to a decision, by the decision's offer and channel and the outcome's kind (the "
            "console's funnel and acceptance rates; offers and channels are the policy's, so the labels stay few).",
            ["offer", "channel", "outcome"],
            registry=registry,
        )
        self.outcomes_unmatched = Counter(
            "nba_outcomes_unmatched",
            "Outcomes refused: unknown or expired decision, or a duplicate.",
            ["reason"],
            registry=registry,
        )
        self.offers_filtered = Counter(
            "nba_offers_filtered", "Candidate offers left out of a decision, by reason.", ["reason"], registry=registry
        )
        self.no_action = Counter(
            "nba_no_action",
            "Decisions that ended with no action, by the decision's reason (no_candidates, frequency_cap, "
            "nothing_allowed, below_threshold).",
            ["reason"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "nba_redis_errors", "Redis calls that failed, by operation.", ["operation"], registry=registry
        )
        self.redis_redirects = Counter(
            "nba_redis_redirects",
            "Script calls a Redis Cluster node sent elsewhere (none ran there; each is sent on), by node (host:port) "
            "and kind: moved (the slot lives on another node now), ask (the slot is being migrated and the call's "
            "keys have moved), tryagain (a migration has split the call's keys between two nodes).",
            ["node", "kind"],
            registry=registry,
        )
        self.redis_node_errors = Counter(
            "nba_redis_node_errors",
            "Errors of the decision path's script connections, by Redis node (host:port, or the unix socket) and "
            "kind: connection (lost or refused), timeout (no reply in time), response (an error reply), "
            "clusterdown (the cluster cannot serve the slot).",
            ["node", "kind"],
            registry=registry,
        )
        self.model_updates = Counter(
            "nba_model_updates", "Outcomes learned by this process's learner.", registry=registry
        )
        self.model_publications = Counter(
            "nba_model_publications", "Model versions this process's learner published.", registry=registry
        )
        self.model_version = Gauge(
            "nba_model_version",
            "Model version this replica serves (0: priors only).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.model_reloads = Counter(
            "nba_model_reloads", "Model versions loaded, by result.", ["result"], registry=registry
        )
        self.decisions_degraded = Counter(
            "nba_decisions_degraded",
            "Decide calls answered with the policy's fallback action because the state store was unavailable "
            "(not recorded, not learned from), by event type.",
            ["event_type"],
            registry=registry,
        )
        self.events_recorded = Counter(
            "nba_events_recorded",
            "Customer moments recorded without a decision (RecordEvent), by event type.",
            ["event_type"],
            registry=registry,
        )
        self.stream_refusals = Counter(
            "nba_stream_messages_refused",
            "DecideStream requests answered with a status of their own instead of a decision (the stream went "
            "on), by status code.",
            ["grpc_code"],
            registry=registry,
        )
        self.auth_denied = Counter(
            "nba_auth_denied",
            "Calls refused by authentication or authorisation, by reason and caller name (unknown: not identified).",
            ["reason", "caller"],
            registry=registry,
        )
        self.challenger_share = Gauge(
            "nba_challenger_share",
            "Share of decisions the challenger serves on this replica (0: none, or suspended by its guard).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.policy_version = Gauge(
            "nba_policy_version",
            "Policy version this replica serves (0: none yet).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.policy_reloads = Counter(
            "nba_policy_reloads", "Policy versions loaded, by result.", ["result"], registry=registry
        )
        self.rpc_seconds = Histogram(
            "nba_grpc_server_handling_seconds",
            "gRPC handling time by method, as seen by the server.",
            ["grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rpcs = Counter(
            "nba_grpc_server_handled",
            "gRPC calls completed, by method and status code: every call the process accepted, refused "
            "(RESOURCE_EXHAUSTED, UNAVAILABLE while draining), malformed (INVALID_ARGUMENT), cancelled by its "
            "client (CANCELLED) or past its deadline (DEADLINE_EXCEEDED) included.",
            ["grpc_method", "grpc_code"],
            registry=registry,
        )
        self.decisions_in_progress = Gauge(
            "nba_decisions_in_progress",
            "Decisions this process has taken on and not finished: running or waiting their turn.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.decisions_limit = Gauge(
            "nba_decisions_in_progress_limit",
            "The most decisions this process takes on at once (max_decisions_in_progress); more are refused.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.decisions_refused = Counter(
            "nba_decisions_refused",
            "Decisions refused before any work, by reason: overloaded (RESOURCE_EXHAUSTED), too_late (the "
            "caller's deadline is shorter than the expected wait and service time: DEADLINE_EXCEEDED), "
            "draining (shutting down: UNAVAILABLE).",
            ["reason"],
            registry=registry,
        )
        self.decisions_abandoned = Counter(
            "nba_decisions_abandoned",
            "Decisions made but not recorded because their caller had gone (cancelled, or its deadline too near) "
            "when the write was due.",
            registry=registry,
        )
        self.decisions_unreturned = Counter(
            "nba_decisions_unreturned",
            "Decisions recorded (and counted in nba_decisions_total) whose answer did not reach the caller: "
            "cancelled while the write was in flight (cancelled_in_write), the deadline passed before the answer "
            "was sent (late), or the stream closed first (stream_closed). Over nba_decisions_total: the share "
            "recorded but not returned.",
            ["reason"],
            registry=registry,
        )
        self.connection_limit = Gauge(
            "nba_grpc_connection_limit",
            "Connections this process holds at most (max_connections, or from its file limit); more are closed.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.store_up = Gauge(
            "nba_state_store_up",
            "1 while the state store (Redis) answers this replica's checks, 0 after two failures in a row (health "
            "NOT_SERVING).",
            registry=registry,
            multiprocess_mode="min",
        )
        self._decision_children: dict[str, Histogram] = {}
        self._decided_children: dict[tuple[str, str], Counter] = {}
        self._filtered_children: dict[str, Counter] = {}
        self._no_action_children: dict[str, Counter] = {}
        self._event_children: dict[str, Counter] = {}
        self._redis_event_children: dict[tuple[str, str], Counter] = {}

    def observe_decision(
        self,
        event_type: str,
        seconds: float | None,
        offer: str,
        channel: str,
        filtered: Iterable[str] = (),
        no_action_reason: str = "",
    ) -> None:
        """One decision: its time (None: not timed), its choice (offer and channel, "none" for no action),
        the reason code of every candidate offer it left out and, for no action, the decision's reason."""
        if seconds is not None:
            child = self._decision_children.get(event_type)
            if child is None:
                child = self._decision_children[event_type] = self.decision_seconds.labels(event_type)
            child.observe(seconds)
        key = (offer, channel)
        counter = self._decided_children.get(key)
        if counter is None:
            counter = self._decided_children[key] = self.decisions.labels(offer, channel)
        counter.inc()
        if offer == "none":
            reason = no_action_reason or "unknown"
            no_action = self._no_action_children.get(reason)
            if no_action is None:
                no_action = self._no_action_children[reason] = self.no_action.labels(reason)
            no_action.inc()
        if filtered:  # one increment per reason code, not per filtered offer
            tally: dict[str, int] = {}
            for reason in filtered:
                tally[reason] = tally.get(reason, 0) + 1
            for reason, n in tally.items():
                self.count_filtered(reason, n)

    def count_outcome(self, outcome: str, offer: str, channel: str) -> None:
        """One outcome joined to its decision: by kind, and by the decision's offer and channel."""
        self.outcomes.labels(outcome).inc()
        if offer:
            self.offer_outcomes.labels(offer, channel or "none", outcome).inc()

    def count_redis_event(self, kind: str, node: str) -> None:
        """A redirect (kind moved, ask, tryagain) or an error (connection, timeout, response, clusterdown) of a
        script connection at a Redis node: the ``on_event`` of
        :class:`~nba_service.store.script_connection.ScriptConnection`."""
        counter = self._redis_event_children.get((kind, node))
        if counter is None:
            family = self.redis_redirects if kind in ("moved", "ask", "tryagain") else self.redis_node_errors
            counter = self._redis_event_children[(kind, node)] = family.labels(node, kind)
        counter.inc()

    def count_event(self, event_type: str) -> None:
        """One moment recorded without a decision."""
        counter = self._event_children.get(event_type)
        if counter is None:
            counter = self._event_children[event_type] = self.events_recorded.labels(event_type)
        counter.inc()

    def count_filtered(self, reason: str, n: int = 1) -> None:
        counter = self._filtered_children.get(reason)
        if counter is None:
            counter = self._filtered_children[reason] = self.offers_filtered.labels(reason)
        counter.inc(n)
