"""Exceptions -> gRPC status codes, in one place.

Domain exceptions carry no transport codes; this table gives them one. Anything
not in it is logged with its traceback and answered ``INTERNAL`` with a plain
message: a caller never sees ``UNKNOWN`` or a stack trace. A client's mistakes
(INVALID_ARGUMENT, NOT_FOUND, ...) and refusals under load are logged without a
traceback and at most once per kind per interval (:func:`set_log_interval`), with
the count of those left out.

A unary call fails with its status (:func:`abort_for`); a DecideStream answers a
request that got no decision with a response carrying the same status
(:func:`error_status`) and goes on, unless the error is one of the whole call
(:func:`ends_stream`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from nba_service.api.admission import Draining, Overloaded, TooLate
from nba_service.campaigns.run import RunStateError, UnknownCampaignError
from nba_service.dataplane import AbandonedError
from nba_service.domain import NoPolicyError, NotFoundError, StoreUnavailableError
from nba_service.domain.validation import ValidationError
from nba_service.observability.ratelimit import RateLimitedLog

__all__ = [
    "STATUS_BY_EXCEPTION",
    "ErrorStatus",
    "abort_for",
    "ends_stream",
    "error_status",
    "handle_errors",
    "set_log_interval",
    "status_for",
]

log = logging.getLogger(__name__)

STATUS_BY_EXCEPTION: dict[type[BaseException], grpc.StatusCode] = {
    ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    NoPolicyError: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TooLate: grpc.StatusCode.DEADLINE_EXCEEDED,
    AbandonedError: grpc.StatusCode.DEADLINE_EXCEEDED,
    Draining: grpc.StatusCode.UNAVAILABLE,
    UnknownCampaignError: grpc.StatusCode.NOT_FOUND,
    RunStateError: grpc.StatusCode.FAILED_PRECONDITION,  # already running, nothing to resume, ...
}

RETRY_AFTER_KEYS = ("retry-after-ms", "grpc-retry-pushback-ms")
"""Trailing metadata of a RESOURCE_EXHAUSTED answer: when to try again, in milliseconds. ``retry-after-ms``
for any client; ``grpc-retry-pushback-ms`` is what gRPC's own retry policy honours (gRFC A6)."""

T = TypeVar("T")

_limited = RateLimitedLog(log)


def set_log_interval(seconds: float) -> None:
    """One line per kind of error per ``seconds`` (the server sets ``log_interval_seconds``)."""
    _limited.interval = seconds


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    for kind in type(exc).__mro__:
        code = STATUS_BY_EXCEPTION.get(kind)
        if code is not None:
            return code
    return None


def handle_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a unary servicer method: bound it by the caller's deadline, map errors to codes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            remaining = context.time_remaining()
            if remaining is None:
                return await method(self, request, context)
            async with asyncio.timeout(max(remaining, 0.0)):
                return await method(self, request, context)
        except Exception as exc:
            await abort_for(exc, context, method.__name__)
            raise  # abort raises; this line is never reached

    return wrapper


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorStatus:
    """What a caller is told about an error: its code, a plain message and, for RESOURCE_EXHAUSTED, when to
    try again (milliseconds)."""

    code: grpc.StatusCode
    message: str
    retry_after_ms: int = 0

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.retry_after_ms:
            return ()
        return tuple((key, str(self.retry_after_ms)) for key in RETRY_AFTER_KEYS)


def error_status(exc: BaseException, where: str) -> ErrorStatus:
    """The status ``exc`` is answered with in ``where``, logged (rate-limited) as its kind wants."""
    code = status_for(exc)
    if code is None:
        _limited.log(logging.ERROR, ("internal", where, type(exc)), "%s failed", where, exc_info=exc)
        return ErrorStatus(grpc.StatusCode.INTERNAL, f"internal error in {where}; see the server log")
    if isinstance(exc, Overloaded):
        _limited.warning(("overloaded", where), "%s: %s", where, exc)
        return ErrorStatus(code, str(exc), round(exc.retry_after * 1000))
    if code is grpc.StatusCode.UNAVAILABLE:
        pass  # the data plane logged the store's failure (rate-limited); draining is expected
    else:
        _limited.info((code, where), "%s: %s: %s", where, code.name, exc)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and type(exc) is TimeoutError:
        return ErrorStatus(
            code,
            "the deadline expired before the answer was ready (a decision may still "
            "have been recorded; it will wait for no outcome)",
        )
    return ErrorStatus(code, str(exc))


def ends_stream(exc: BaseException) -> bool:
    """Whether ``exc`` ends a whole DecideStream rather than one request's answer: the stream's deadline is
    (nearly) up (DEADLINE_EXCEEDED: every later request would fail the same way), the server is shutting
    down (the client should reconnect elsewhere), or the call was aborted already."""
    if isinstance(exc, (Draining, grpc.aio.AbortError)):
        return True
    return status_for(exc) is grpc.StatusCode.DEADLINE_EXCEEDED


async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext, where: str) -> None:
    status = error_status(exc, where)
    await context.abort(status.code, status.message, trailing_metadata=status.trailing_metadata())
