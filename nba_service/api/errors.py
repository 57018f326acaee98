"""Exceptions -> gRPC status codes, in one place.

Domain exceptions carry no transport codes; this table gives them one. Anything
not in it is logged with its traceback and answered ``INTERNAL`` with a plain
message: a caller never sees ``UNKNOWN`` or a stack trace. A client's mistakes
(INVALID_ARGUMENT, NOT_FOUND, ...) and refusals under load are logged without a
traceback and at most once per kind per interval (:func:`set_log_interval`), with
the count of those left out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from nba_service.api.admission import Draining, Overloaded, TooLate
from nba_service.dataplane import AbandonedError
from nba_service.domain import NoPolicyError, NotFoundError, StoreUnavailableError
from nba_service.domain.validation import ValidationError
from nba_service.observability.ratelimit import RateLimitedLog

__all__ = ["STATUS_BY_EXCEPTION", "abort_for", "handle_errors", "set_log_interval", "status_for"]

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


async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext, where: str) -> None:
    code = status_for(exc)
    if code is None:
        _limited.log(logging.ERROR, ("internal", where, type(exc)), "%s failed", where, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {where}; see the server log")
    assert code is not None
    if isinstance(exc, Overloaded):
        _limited.warning(("overloaded", where), "%s: %s", where, exc)
        ms = str(round(exc.retry_after * 1000))
        await context.abort(code, str(exc), trailing_metadata=tuple((key, ms) for key in RETRY_AFTER_KEYS))
    if code is grpc.StatusCode.UNAVAILABLE:
        pass  # the data plane logged the store's failure (rate-limited); draining is expected
    else:
        _limited.info((code, where), "%s: %s: %s", where, code.name, exc)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and type(exc) is TimeoutError:
        await context.abort(
            code,
            "the deadline expired before the answer was ready (a decision may still "
            "have been recorded; it will wait for no outcome)",
        )
    await context.abort(code, str(exc))
