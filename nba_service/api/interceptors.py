"""gRPC server interceptors: what every RPC gets, kept out of the servicer's methods."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from nba_service.api.auth import CALLER, AuthFile, AuthFileError, Caller, Client
from nba_service.observability.metrics import Metrics

__all__ = ["AuthInterceptor", "MetricsInterceptor"]

log = logging.getLogger(__name__)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and status code and times it.

    The wrapped handler of each method is built once and reused: the interceptor
    runs on every call, so it must cost next to nothing.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._handlers: dict[str, Any] = {}
        self._counters: dict[tuple[str, str], Any] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        wrapped = self._handlers.get(details.method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None
            wrapped = self._handlers[details.method] = self._wrap(details.method.rsplit("/", 1)[-1], handler)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        seconds = self.metrics.rpc_seconds.labels(method)
        count = self._count
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    return await inner(request, context)
                finally:
                    seconds.observe(time.perf_counter() - started)
                    count(method, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream is not None:
            inner_stream = handler.stream_stream

            async def stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    async for response in inner_stream(request_iterator, context):
                        yield response
                finally:
                    seconds.observe(time.perf_counter() - started)
                    count(method, context)

            return grpc.stream_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler

    def _count(self, method: str, context: grpc.aio.ServicerContext) -> None:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
        key = (method, name)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.rpcs.labels(method, name)
        counter.inc()


_SERVICE = "/nba.v1.DecisionService/"
METHOD_ROLES: dict[str, str] = {
    _SERVICE + "Decide": "decide",
    _SERVICE + "DecideStream": "decide",
    _SERVICE + "ReportOutcome": "decide",
    _SERVICE + "GetCustomerContext": "agent",
    _SERVICE + "UpsertCustomer": "crm",
    _SERVICE + "DeleteCustomer": "crm",
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
