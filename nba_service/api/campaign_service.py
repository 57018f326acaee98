"""The gRPC ``nba.v1.CampaignService``: start, follow, suspend and resume campaign runs from a console.

Served by ``nba serve`` beside the decision service; callers need the role ``marketing`` (or ``admin``) when
the server has an auth file (:data:`nba_service.api.interceptors.METHOD_ROLES`).

A run started (or resumed) here works in a thread of the server process with an event loop, Redis clients and
data plane of its own (:func:`nba_service.campaigns.session.campaign_session`, as ``nba campaign run`` does), so
its batches never hold up the decisions the server answers. The call returns once the run has its lease and
its id (:meth:`~nba_service.campaigns.run.CampaignRunner.begin`); a dry run stores nothing, so it is decided
within the call and answered with its figures. When the server stops, the runs it works are marked suspended
(they stop after their batch): ``ResumeCampaign`` or ``nba campaign resume`` continues them.

Errors: NOT_FOUND for a campaign the live policy set does not have (or a run id it never had),
FAILED_PRECONDITION when the campaign is running (here or in another process) or has nothing to resume or
suspend, INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

import grpc
import redis
from prometheus_client import CollectorRegistry

from nba_service.api.auth import current_caller
from nba_service.api.errors import handle_errors
from nba_service.campaigns.metrics import CampaignMetrics
from nba_service.campaigns.run import (
    RUNNING,
    SUSPENDED,
    CampaignRunner,
    RunReport,
    RunStateError,
    RunStore,
    find_campaign,
)
from nba_service.campaigns.session import RedisTarget, campaign_session
from nba_service.dataplane import DataPlane
from nba_service.domain import NotFoundError
from nba_service.domain.validation import ValidationError, check_id
from nba_service.observability.metrics import Metrics
from nba_service.proto.nba.v1 import campaign_pb2 as pb
from nba_service.proto.nba.v1 import campaign_pb2_grpc as pb_grpc

__all__ = ["CampaignServicer", "run_to_proto"]

log = logging.getLogger(__name__)


def run_to_proto(figures: dict[str, Any]) -> pb.CampaignRun:
    """A run's figures (:meth:`RunReport.as_dict`) as the message."""
    return pb.CampaignRun(
        campaign=figures["campaign"],
        run_id=figures["run_id"],
        status=figures["status"],
        dry_run=figures["dry_run"],
        started_at=figures["started"],
        updated_at=figures["updated"],
        policy_version=figures["policy_version"],
        scanned=figures["scanned"],
        in_segment=figures["in_segment"],
        decided=figures["decided"],
        delivered=figures["delivered"],
        suppressed=figures["suppressed"],
        delivered_by_offer=figures["by_offer"],
        ended=figures["ended"],
        started_by=figures["started_by"],
        delivered_total=figures["delivered_total"],
    )


class _Work:
    """A run working in a thread of its own."""

    def __init__(self, campaign: str) -> None:
        self.campaign = campaign
        self.began: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        """The run's figures once it holds its lease (or why it could not start)."""
        self.done: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.thread: threading.Thread | None = None

    def run_id(self) -> str:
        """The id of the run this work began; "" before it began, for a dry run (it stores nothing) or when it
        could not begin."""
        began = self.began
        if not began.done() or began.cancelled() or began.exception() is not None:
            return ""
        figures = began.result()
        return "" if figures["dry_run"] else str(figures["run_id"])


class CampaignServicer(pb_grpc.CampaignServiceServicer):
    def __init__(self, dataplane: DataPlane, target: RedisTarget, client: redis.Redis, registry: CollectorRegistry):
        self.dataplane = dataplane
        """The server's: which campaigns the live policy set has."""
        self.target = target
        self.store = RunStore(client)
        self.metrics = CampaignMetrics(registry)
        """The runs' figures, on the server's metrics endpoint."""
        self._work: list[_Work] = []
        self._lock = threading.Lock()

    # --- background runs --------------------------------------------------------------

    def _launch(self, campaign: str, *, resume: bool, dry_run: bool, limit: int | None, started_by: str) -> _Work:
        work = _Work(campaign)
        caller = current_caller().name  # the worker thread does not see the call's context

        async def go() -> dict[str, Any]:
            async with campaign_session(self.dataplane.settings, self.target, Metrics(CollectorRegistry())) as (
                dataplane,
                client,
            ):
                runner = CampaignRunner(
                    dataplane, client, find_campaign(dataplane.snapshot, campaign), metrics=self.metrics
                )
                report: RunReport | None = runner.resumable() if resume else None
                report = runner.begin(report, dry_run=dry_run, started_by=started_by)
                if not dry_run:
                    work.began.set_result(report.as_dict())
                    log.info(
                        "campaign %s: run %s %s by %s",
                        campaign,
                        report.run_id,
                        "resumed" if resume else "started",
                        caller,
                    )
                report = await runner.run(report, limit=limit)
                return report.as_dict()

        def main() -> None:
            # From here the call's cancellation (its deadline, a client gone) no longer cancels ``began``: a run
            # that took its lease goes on and ends (a cancelled ``began`` would make set_result raise after the
            # lease was taken, and the lease would never be released). Cancelled before: nothing is started.
            if not work.began.set_running_or_notify_cancel():
                work.done.set_exception(asyncio.CancelledError())
                return
            try:
                figures = asyncio.run(go())
            except BaseException as exc:
                if not work.began.done():
                    work.began.set_exception(exc)
                elif not isinstance(exc, RunStateError):
                    log.exception("campaign %s: the run failed", campaign)
                else:
                    log.warning("campaign %s: %s", campaign, exc)
                work.done.set_exception(exc)
                return
            if not work.began.done():
                work.began.set_result(figures)  # a dry run: its final figures
            work.done.set_result(figures)
            log.info("campaign %s: run %s %s", campaign, figures["run_id"], figures["status"])

        work.thread = threading.Thread(target=main, name=f"nba-campaign-{campaign}", daemon=True)
        with self._lock:
            self._work = [w for w in self._work if not w.done.done()] + [work]
        work.thread.start()
        return work

    def stop(self, timeout: float = 30.0) -> None:
        """The server stops: the runs working here are marked suspended and stop after their batch (each by its
        run id: a newer run of the campaign that another process started is left running)."""
        with self._lock:
            working = [w for w in self._work if not w.done.done()]
        for work in working:
            run_id = work.run_id()  # its own run, never a newer one another process started
            if not run_id:
                continue  # not begun: nothing to suspend
            try:
                report = self.store.set_status(work.campaign, SUSPENDED, expect=(RUNNING,), run_id=run_id)
                log.info(
                    "campaign %s: run %s suspended as the server stops (ResumeCampaign or `nba campaign resume` "
                    "continues it)",
                    work.campaign,
                    report.run_id,
                )
            except (RunStateError, redis.RedisError) as exc:
                log.warning("campaign %s: not suspended: %s", work.campaign, exc)
        for work in working:
            if work.thread is not None:
                work.thread.join(timeout)

    # --- the RPCs -----------------------------------------------------------------------

    def _known(self, campaign: str) -> str:
        """The campaign's id, if the live policy set has it (NOT_FOUND otherwise)."""
        name = check_id("campaign", campaign)
        find_campaign(self.dataplane.snapshot, name)
        return name

    @handle_errors
    async def StartCampaign(self, request: pb.StartCampaignRequest, context: grpc.aio.ServicerContext) -> Any:
        name = self._known(request.campaign)
        if request.limit < 0:
            raise ValidationError("limit", f"must be 0 (no limit) or more, got {request.limit}")
        work = self._launch(
            name,
            resume=False,
            dry_run=request.dry_run,
            limit=request.limit or None,
            started_by=f"grpc:{current_caller().name}",
        )
        figures = await asyncio.wrap_future(work.began)
        return pb.StartCampaignResponse(run_id="" if request.dry_run else figures["run_id"], run=run_to_proto(figures))

    @handle_errors
    async def ResumeCampaign(self, request: pb.ResumeCampaignRequest, context: grpc.aio.ServicerContext) -> Any:
        name = self._known(request.campaign)
        work = self._launch(name, resume=True, dry_run=False, limit=None, started_by="")
        return run_to_proto(await asyncio.wrap_future(work.began))

    @handle_errors
    async def SuspendCampaign(self, request: pb.SuspendCampaignRequest, context: grpc.aio.ServicerContext) -> Any:
        name = self._known(request.campaign)
        report = await asyncio.to_thread(self.store.set_status, name, SUSPENDED, expect=(RUNNING,))
        stored = await asyncio.to_thread(self.store.load, name, report.run_id)
        return run_to_proto((stored or report).as_dict())

    @handle_errors
    async def GetCampaignRun(self, request: pb.GetCampaignRunRequest, context: grpc.aio.ServicerContext) -> Any:
        name = check_id("campaign", request.campaign)
        run_id = check_id("run_id", request.run_id, required=False)
        if run_id:
            report = await asyncio.to_thread(self.store.load, name, run_id)
        else:
            report = await asyncio.to_thread(self.store.latest, name)
        if report is None:
            self._known(name)  # NOT_FOUND for a campaign the policy set does not have
            raise NotFoundError(f"run {run_id} of {name} not found" if run_id else f"campaign {name} has no run yet")
        return run_to_proto(report.as_dict())

    @handle_errors
    async def ListCampaignRuns(self, request: pb.ListCampaignRunsRequest, context: grpc.aio.ServicerContext) -> Any:
        name = check_id("campaign", request.campaign)
        if request.limit < 0:
            raise ValidationError("limit", f"must be 0 (all) or more, got {request.limit}")
        reports = await asyncio.to_thread(self.store.runs, name)
        if not reports:
            self._known(name)
        reports.reverse()
        if request.limit:
            reports = reports[: request.limit]
        return pb.ListCampaignRunsResponse(runs=[run_to_proto(r.as_dict()) for r in reports])
