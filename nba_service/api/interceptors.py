"""gRPC server interceptors: what every RPC gets, kept out of the servicer's methods."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from nba_service.observability.metrics import Metrics

__all__ = ["MetricsInterceptor"]


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
