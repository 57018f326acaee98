"""The echo server: ``nba.v1.DecisionService/Decide`` answered at once, the floor of any call.

Built like ``NbaServer``: grpc.aio with the same server options, the same
metrics interceptor (on a registry of its own), health and reflection. Run it
as ``python -m nba_service.tools.bench echo --port 0 --ready-file F``.

With ``--redis-url``, each ``Decide`` first makes the two script calls a
decision makes (one after the other, over the same kind of pipelined
connection), with scripts that do nothing: the floor of any decision that
reads and records its context in Redis, whatever the decision costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from nba_service.app.server import SERVICE_NAME, grpc_server
from nba_service.observability.metrics import Metrics
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.store.script_connection import LuaScript, ScriptConnection

__all__ = ["EchoServicer", "main", "serve_echo"]

NOTHING = LuaScript("return 1")
"""A script that does nothing: what the two script calls of a decision cost without their work."""


class EchoServicer(pb_grpc.DecisionServiceServicer):
    """``Decide`` answers at once with a response built from the request: the floor of any call.

    Given a script connection, it first makes two calls of a script that does nothing.
    """

    def __init__(self, scripts: ScriptConnection | None = None) -> None:
        self.scripts = scripts

    async def Decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        if self.scripts is not None:
            await self.scripts.run(NOTHING, {}, {}, retry=True)  # as the context read
            await self.scripts.run(NOTHING, {}, {})  # as the decision write
        return pb.DecideResponse(request_id=request.request_id, no_action=True)


async def serve_echo(host: str, port: int, ready: Callable[[int], None] | None = None, redis_url: str = "") -> None:
    """Serve the echo until SIGINT or SIGTERM, built like ``NbaServer``: same options, interceptor,
    health and reflection; with ``redis_url``, two empty script calls per ``Decide``."""
    scripts = ScriptConnection(redis_url) if redis_url else None
    server, health_servicer = grpc_server(Metrics(CollectorRegistry()), servicer=EchoServicer(scripts))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    if ready is not None:
        ready(bound)
    await stopping.wait()
    await server.stop(1.0)
    if scripts is not None:
        await scripts.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nba_service.tools.bench echo --port 0 --ready-file F``: the echo server alone."""
    parser = argparse.ArgumentParser(prog="python -m nba_service.tools.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo", help="serve nba.v1.DecisionService/Decide as an echo")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=0)
    echo.add_argument("--ready-file", help="write {port, pid} as JSON here once serving")
    echo.add_argument("--redis-url", default="", help="make two empty script calls to this Redis per Decide")
    args = parser.parse_args(argv)

    def ready(port: int) -> None:
        if args.ready_file:
            _write_atomically(pathlib.Path(args.ready_file), json.dumps({"port": port, "pid": os.getpid()}))

    asyncio.run(serve_echo(args.host, args.port, ready, args.redis_url))
    return 0


def _write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # appears whole or not at all
