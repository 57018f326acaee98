"""The gRPC servicer: convert the request, call the data plane, convert the answer."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import TextIO

import grpc

from nba_service.api import converters
from nba_service.api.admission import Admission
from nba_service.api.auth import current_caller
from nba_service.api.errors import abort_for, ends_stream, error_status, handle_errors
from nba_service.api.event_log import append_request
from nba_service.dataplane import DataPlane
from nba_service.domain import OutcomeStatus
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc

__all__ = ["DecisionServicer"]

DEFAULT_CONTEXT_EVENTS = 20
MAX_CONTEXT_EVENTS = 100


def _echoed_id(request: pb.DecideRequest) -> str:
    """The request id an answer without a decision echoes: the caller's, unless that is what was wrong."""
    try:
        return converters.check_id("request_id", request.request_id, required=False)
    except converters.ValidationError:
        return ""


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        recorder: TextIO | None = None,
        record_sample: float = 0.0,
        seed: int | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.recorder = recorder
        """An open event file that receives a sample of valid Decide requests (``nba policy preview`` input)."""
        self.record_sample = record_sample
        self._rng = random.Random(seed)
        settings = dataplane.settings
        self.admission = admission or Admission(
            settings.max_decisions_in_progress, settings.decisions_at_once, dataplane.metrics
        )
        """The decisions this process takes on (a Decide call or a DecideStream message each)."""

    async def _decide(
        self, request: pb.DecideRequest, context: grpc.aio.ServicerContext, stream: bool = False
    ) -> pb.DecideResponse:
        """One decision: checked, admitted (or refused before any work; a stream's after Decide calls),
        made, recorded only if its caller still waits, answered."""
        decision_request = converters.decision_request_from_proto(request)
        admission = self.admission
        await admission.acquire(context.time_remaining, later=stream)
        started = time.perf_counter()
        checked = started

        def wanted() -> bool:
            nonlocal checked
            checked = time.perf_counter()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= admission.finish_margin():
                return False
            task = asyncio.current_task()
            return task is None or not task.cancelling()

        try:
            recorded = await self.dataplane.decide(decision_request, wanted)
        finally:
            admission.release(time.perf_counter() - started, later=stream)
        admission.observe_finish(time.perf_counter() - checked)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self.dataplane.metrics.decisions_unreturned.labels("late").inc()
        if self.recorder is not None and self._rng.random() < self.record_sample:
            append_request(self.recorder, request, time.time())
        return converters.to_decide_response(
            recorded.decision_id, recorded.request_id, recorded.decision, recorded.degraded
        )

    @handle_errors
    async def Decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        return await self._decide(request, context)

    async def DecideStream(
        self, request_iterator: AsyncIterator[pb.DecideRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecideResponse]:
        # One response per request, in order. A request that gets no decision (a bad field, refused as
        # overloaded, the state store unreachable, no policy, a bug) is answered with a response of its own
        # carrying the status a unary call would have failed with, and the stream goes on. What ends the
        # whole call still ends it (errors.ends_stream): its deadline, its cancellation, the drain, and a
        # message that does not decode (the interceptor answers INVALID_ARGUMENT). One decision in flight
        # per stream: gRPC writes each response (waiting for the client's flow-control window) before this
        # generator is resumed to read the next request, so a client that stops reading stops the stream
        # once its window is full.
        metrics = self.dataplane.metrics
        unreturned = metrics.decisions_unreturned
        async for request in request_iterator:
            decided = True
            try:
                response = await self._decide(request, context, stream=True)
            except Exception as exc:
                if ends_stream(exc):
                    await abort_for(exc, context, "DecideStream")
                status = error_status(exc, "DecideStream")
                metrics.stream_refusals.labels(status.code.name).inc()
                response = converters.to_refused_response(
                    _echoed_id(request), status.code.value[0], status.message, status.retry_after_ms
                )
                decided = False
            written = False
            try:
                yield response
                written = True
            finally:
                if not written and decided:
                    unreturned.labels("stream_closed").inc()

    @handle_errors
    async def ReportOutcome(self, request: pb.OutcomeRequest, context: grpc.aio.ServicerContext) -> pb.OutcomeResponse:
        decision_id, kind, value = converters.outcome_from_proto(request)
        recorded = await self.dataplane.report_outcome(decision_id, kind, value)
        return pb.OutcomeResponse(
            decision_id=decision_id, duplicate=recorded.status is OutcomeStatus.DUPLICATE, learned=recorded.learn
        )

    @handle_errors
    async def RecordEvent(
        self, request: pb.RecordEventRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordEventResponse:
        customer_id, origin_channel, event, request_id = converters.event_record_from_proto(request)
        recorded = await self.dataplane.record_event(customer_id, origin_channel, event)
        return converters.to_record_event_response(request_id, recorded)

    @handle_errors
    async def GetCustomerContext(
        self, request: pb.CustomerContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.CustomerContextResponse:
        customer_id = converters.check_id("customer_id", request.customer_id)
        max_events = request.max_events if request.HasField("max_events") else DEFAULT_CONTEXT_EVENTS
        if not 1 <= max_events <= MAX_CONTEXT_EVENTS:
            raise converters.ValidationError(
                "max_events", f"must be between 1 and {MAX_CONTEXT_EVENTS}, got {max_events}"
            )
        agent_language = converters.check_language("agent_language", request.agent_language)
        view, best, version = await self.dataplane.customer_context(
            customer_id,
            max_events,
            request.include_best_actions,
            agent_language=agent_language,
            sensitive_shown=current_caller().has("pii"),
        )
        return converters.to_context_response(view, best, version)

    @handle_errors
    async def UpsertCustomer(
        self, request: pb.UpsertCustomerRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertCustomerResponse:
        if not request.HasField("profile"):
            raise converters.ValidationError("profile", "is required")
        profile = converters.profile_from_proto(request.profile)
        mask = converters.profile_mask_from_proto(request)
        request_id = converters.check_id("request_id", request.request_id, required=False)
        created = await self.dataplane.upsert_customer(
            profile, mask, caller=current_caller().name, request_id=request_id
        )
        return pb.UpsertCustomerResponse(customer_id=profile.customer_id, created=created)

    @handle_errors
    async def DeleteCustomer(
        self, request: pb.DeleteCustomerRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCustomerResponse:
        customer_id = converters.check_id("customer_id", request.customer_id)
        request_id = converters.check_id("request_id", request.request_id, required=False)
        erasure = await self.dataplane.delete_customer(customer_id, current_caller().name, request_id)
        return pb.DeleteCustomerResponse(customer_id=customer_id, erased=erasure.erased)
