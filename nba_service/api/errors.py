"""Exceptions -> gRPC status codes, in one place.

Domain exceptions carry no transport codes; this table gives them one. Anything
not in it is logged with its traceback and answered ``INTERNAL`` with a plain
message: a caller never sees ``UNKNOWN`` or a stack trace.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from nba_service.domain import NoPolicyError, NotFoundError, StoreUnavailableError
from nba_service.domain.validation import ValidationError

__all__ = ["STATUS_BY_EXCEPTION", "handle_errors"]

log = logging.getLogger(__name__)

STATUS_BY_EXCEPTION: dict[type[BaseException], grpc.StatusCode] = {
    ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    NoPolicyError: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}

T = TypeVar("T")


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
        log.exception("%s failed", where, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {where}; see the server log")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        await context.abort(
            code,
            "the deadline expired before the answer was ready (a decision may still "
            "have been recorded; it will wait for no outcome)",
        )
    await context.abort(code, str(exc))
