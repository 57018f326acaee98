"""gRPC server interceptors: what every RPC gets, kept out of the servicer's methods."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from nba_service.api.auth import CALLER, AuthFile, AuthFileError, Caller, Client
from nba_service.observability.metrics import Metrics
from nba_service.observability.ratelimit import RateLimitedLog

__all__ = ["AuthInterceptor", "Malformed", "MetricsInterceptor", "tolerant"]

log = logging.getLogger(__name__)


class Malformed:
    """What a method's request deserializer gives for bytes that are not its request message (corrupt
    protobuf, invalid UTF-8 in a string field, ...): the handler answers INVALID_ARGUMENT instead of
    gRPC answering UNKNOWN and logging a traceback for a client's mistake."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning :class:`Malformed` where it would raise."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError mostly; any failure to read the bytes is the client's
            return Malformed(str(exc) or type(exc).__name__)

    return deserialize


DRAIN_MESSAGE = "the server is shutting down; nothing was done, retry (another replica answers)"
HOLD_MARGIN_SECONDS = 0.1
"""A call held while the server drains is answered this long before its deadline at the latest."""
_DRAINED = "/nba.v1."
"""Methods the drain holds and answers UNAVAILABLE (health and reflection keep answering)."""


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """The outermost layer of every call: counts it by method and status code and times it, answers
    INVALID_ARGUMENT for a request that does not decode, and takes part in the drain.

    Every call that reaches the process is counted, those refused, malformed, cancelled by their
    client (CANCELLED) or past their deadline (DEADLINE_EXCEEDED) included. Calls that never reach
    it are not: those waiting in their client for a stream (``max_streams_per_connection``), refused
    by gRPC itself (a stream over that limit while the server is behind, REFUSED_STREAM: the client
    sees UNAVAILABLE) or refused with their connection (``max_connections``).

    Draining (:meth:`start_draining`): calls of ``nba.v1`` services that arrive are held, not
    answered, until :meth:`release` (or shortly before their deadline), then answered
    UNAVAILABLE; :meth:`release` also answers UNAVAILABLE for those still running. Holding
    keeps clients from sending more calls while the server waits for the ones in flight, so
    none is caught in gRPC's own queue (which a server stop answers CANCELLED).

    The wrapped handler of each method is built once and reused: the interceptor runs on every
    call, so it must cost next to nothing.
    """

    def __init__(self, metrics: Metrics, log_interval: float = 60.0) -> None:
        self.metrics = metrics
        self._handlers: dict[str, Any] = {}
        self._counters: dict[tuple[str, str], Any] = {}
        self._limited = RateLimitedLog(log, log_interval)
        self.draining = False
        self.last_arrival = 0.0
        """``time.monotonic()`` of the last call of a drained method to arrive."""
        self.running: dict[asyncio.Task[Any], bool] = {}
        """Calls of drained methods in progress (not held): task -> whether it is a stream."""
        self._released = asyncio.Event()
        self._aborting: set[asyncio.Task[Any]] = set()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        wrapped = self._handlers.get(details.method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None
            wrapped = self._handlers[details.method] = self._wrap(details.method, handler)
        return wrapped

    # --- the drain ---------------------------------------------------------------------------------

    def start_draining(self) -> None:
        """Hold every new call of a drained method from now on (answered UNAVAILABLE at :meth:`release`)."""
        self.draining = True
        self.last_arrival = time.monotonic()

    def busy(self) -> int:
        """Unary calls of drained methods still running (streams are not waited for)."""
        return sum(1 for stream in self.running.values() if not stream)

    def release(self) -> int:
        """Answer UNAVAILABLE to every held call and every call still running; how many were running."""
        self._released.set()
        tasks = [task for task in self.running if not task.done()]
        for task in tasks:
            self._aborting.add(task)
            task.cancel()
        return len(tasks)

    async def _refuse_draining(self, context: grpc.aio.ServicerContext) -> None:
        """Hold a call that arrived while draining until :meth:`release` (or near its deadline), then
        answer it UNAVAILABLE."""
        remaining = context.time_remaining()
        timeout = None if remaining is None else max(remaining - HOLD_MARGIN_SECONDS, 0.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout)
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAIN_MESSAGE)

    # --- the wrappers ------------------------------------------------------------------------------

    def _wrap(self, path: str, handler: Any) -> Any:
        method = path.rsplit("/", 1)[-1]
        seconds = self.metrics.rpc_seconds.labels(method)
        drained = path.startswith(_DRAINED)
        streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
        inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        if inner is None:
            return handler
        enter, leave, refused, hold = self._enter, self._leave, self._malformed, self._refuse_draining
        cancelled, failed = self._cancelled, self._failed

        async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for request in requests:
                if type(request) is Malformed:
                    await refused(method, request, context)
                yield request

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            """A handler that returns its answer (or writes its responses itself with ``context.write``)."""
            started = time.perf_counter()
            task, held = enter(drained, streaming_out)
            code = None
            try:
                if held:
                    await hold(context)
                if streaming_in:
                    request = checked(request, context)
                elif type(request) is Malformed:
                    await refused(method, request, context)
                return await inner(request, context)
            except asyncio.CancelledError:
                code = await cancelled(task, context)
                raise
            except Exception as exc:
                code = failed(exc, context)
                raise
            finally:
                leave(task, method, context, code, seconds, started)

        async def generate(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            """A handler that yields its responses."""
            started = time.perf_counter()
            task, held = enter(drained, True)
            code = None
            try:
                if held:
                    await hold(context)
                if streaming_in:
                    request = checked(request, context)
                elif type(request) is Malformed:
                    await refused(method, request, context)
                async for response in inner(request, context):
                    yield response
            except asyncio.CancelledError:
                code = await cancelled(task, context)
                raise
            except Exception as exc:
                code = failed(exc, context)
                raise
            finally:
                leave(task, method, context, code, seconds, started)

        wrapper = generate if streaming_out and inspect.isasyncgenfunction(inner) else call
        make = _HANDLER_FACTORIES[(streaming_in, streaming_out)]
        return make(wrapper, tolerant(handler.request_deserializer), handler.response_serializer)

    def _enter(self, drained: bool, stream: bool) -> tuple[asyncio.Task[Any] | None, bool]:
        """The call's task when its method is drained (None otherwise), and whether to hold it."""
        if not drained:
            return None, False
        self.last_arrival = time.monotonic()
        task = asyncio.current_task()
        if self.draining:
            return None, True
        if task is not None:
            self.running[task] = stream
        return task, False

    def _leave(
        self,
        task: asyncio.Task[Any] | None,
        method: str,
        context: grpc.aio.ServicerContext,
        code: str | None,
        seconds: Any,
        started: float,
    ) -> None:
        if task is not None:
            self.running.pop(task, None)
            self._aborting.discard(task)
        seconds.observe(time.perf_counter() - started)
        self._count(method, code or _code_name(context.code()))

    async def _malformed(self, method: str, request: Malformed, context: grpc.aio.ServicerContext) -> None:
        self._limited.info(
            ("malformed", method),
            "%s: a request that is not a valid message (%s): INVALID_ARGUMENT",
            method,
            request.error,
        )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {method} request message ({request.error})"
        )

    async def _cancelled(self, task: asyncio.Task[Any] | None, context: grpc.aio.ServicerContext) -> str:
        """The code of a call whose task was cancelled: its client's cancellation or deadline, or the drain's
        end (answered UNAVAILABLE here)."""
        if task is not None and task in self._aborting:
            task.uncancel()
            with contextlib.suppress(grpc.aio.AbortError):
                await context.abort(grpc.StatusCode.UNAVAILABLE, DRAIN_MESSAGE)
            return "UNAVAILABLE"
        if self.draining and self._released.is_set():
            return "UNAVAILABLE"  # the server's stop ended it: gRPC answers UNAVAILABLE
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"

    @staticmethod
    def _failed(exc: Exception, context: grpc.aio.ServicerContext) -> str | None:
        if isinstance(exc, grpc.aio.AbortError):
            return None  # the code the handler aborted with
        code = context.code()
        return "UNKNOWN" if code in (None, grpc.StatusCode.OK, 0) else None  # what gRPC answers for it

    def _count(self, method: str, name: str) -> None:
        key = (method, name)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.rpcs.labels(method, name)
        counter.inc()


_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "OK" if code in (None, 0) else str(code)


_SERVICE = "/nba.v1.DecisionService/"
METHOD_ROLES: dict[str, str] = {
    _SERVICE + "Decide": "decide",
    _SERVICE + "DecideStream": "decide",
    _SERVICE + "ReportOutcome": "decide",
    _SERVICE + "RecordEvent": "decide",
    _SERVICE + "GetCustomerContext": "agent",
    _SERVICE + "UpsertCustomer": "crm",
    _SERVICE + "DeleteCustomer": "crm",
    **{
        f"/nba.v1.CampaignService/{name}": "marketing"
        for name in ("StartCampaign", "GetCampaignRun", "SuspendCampaign", "ResumeCampaign", "ListCampaignRuns")
    },
}
"""The role each method needs (``admin`` has them all; ``agent`` may also Decide on ``agent_contact``).
Methods not listed need ``admin``; health checks need nothing, reflection any known caller."""
_OPEN = "/grpc.health.v1.Health/"
_ANY_CALLER = "/grpc.reflection."


class _Denied(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, caller: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.caller = code, reason, caller


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call and checks its method against the caller's roles.

    The caller is the client whose bearer token (``authorization: Bearer ...``
    metadata) or client certificate (subject CN or a DNS SAN, under mTLS) the
    auth file lists; tokens are compared by their SHA-256 digest in constant
    time. No or unknown credentials: ``UNAUTHENTICATED``; a known caller
    without the role: ``PERMISSION_DENIED``; neither message says anything
    about the request (whether a customer exists). Denied calls are counted by
    reason and caller name (never the token). The handler sees the caller as
    :func:`~nba_service.api.auth.current_caller`.

    The auth file is re-read when it changes (:meth:`reload`); a file that no
    longer parses is reported and the previous one kept.
    """

    def __init__(self, path: str, metrics: Metrics) -> None:
        self.path = path
        self.auth = AuthFile.read(path)
        self.metrics = metrics
        self._stamp = self._file_stamp()
        self._handlers: dict[str, Any] = {}

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def reload(self, force: bool = False) -> bool:
        """Re-read the auth file if it changed (or ``force``); True when new clients are in effect."""
        stamp = self._file_stamp()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.auth = AuthFile.read(self.path)
        except AuthFileError as exc:
            log.error("auth file not reloaded, the previous clients stay in effect: %s", exc)
            return False
        log.info("auth file %s reloaded: %d clients", self.path, len(self.auth.clients))
        return True

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        method = details.method
        if method.startswith(_OPEN):
            return await continuation(details)
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None
            wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped

    def _identify(self, context: grpc.aio.ServicerContext) -> Client:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, credential = str(value).partition(" ")
                if scheme.lower() != "bearer" or not credential.strip():
                    raise _Denied(
                        grpc.StatusCode.UNAUTHENTICATED,
                        "malformed",
                        "",
                        "authorization metadata must be 'Bearer <token>'",
                    )
                token = credential.strip()
        if token is not None:
            client = self.auth.by_token(token)
            if client is None:
                raise _Denied(grpc.StatusCode.UNAUTHENTICATED, "unknown_token", "", "unknown bearer token")
            return client
        auth_context = context.auth_context() or {}
        identities = [
            v.decode() if isinstance(v, bytes) else str(v)
            for key in ("x509_common_name", "x509_subject_alternative_name")
            for v in auth_context.get(key, ())
        ]
        if identities:
            client = self.auth.by_certificate(identities)
            if client is None:
                raise _Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "unknown_certificate",
                    "",
                    "the client certificate names no known caller",
                )
            return client
        raise _Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            "no_credentials",
            "",
            "credentials required: a bearer token (authorization metadata) or a client certificate",
        )

    def _authorize(self, method: str, context: grpc.aio.ServicerContext, request: Any = None) -> Caller:
        client = self._identify(context)
        caller = Caller(client.name, client.roles)
        if method.startswith(_ANY_CALLER) or caller.has(METHOD_ROLES.get(method, "admin")):
            return caller
        if (
            method == _SERVICE + "Decide"
            and caller.has("agent")
            and request is not None
            and request.event.WhichOneof("kind") == "agent_contact"
        ):
            return caller
        needed = METHOD_ROLES.get(method, "admin")
        raise _Denied(
            grpc.StatusCode.PERMISSION_DENIED,
            "missing_role",
            caller.name,
            f"caller {caller.name!r} lacks the role {needed!r} for {method.rsplit('/', 1)[-1]}",
        )

    async def _deny(self, denied: _Denied, context: grpc.aio.ServicerContext) -> None:
        self.metrics.auth_denied.labels(denied.reason, denied.caller or "unknown").inc()
        await context.abort(denied.code, str(denied))

    def _wrap(self, method: str, handler: Any) -> Any:
        authorize, deny = self._authorize, self._deny
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    caller = authorize(method, context, request)
                except _Denied as denied:
                    await deny(denied, context)
                CALLER.set(caller)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    caller = authorize(method, context, request)
                except _Denied as denied:
                    await deny(denied, context)
                CALLER.set(caller)
                async for response in inner_us(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    caller = authorize(method, context)
                except _Denied as denied:
                    await deny(denied, context)
                CALLER.set(caller)
                async for response in inner_ss(request_iterator, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
