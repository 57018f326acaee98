"""Idle connections, held by a process of their own (``python -m nba_service.tools.chaos.idle``).

Each connection is what an idle gRPC client keeps open: TCP, the HTTP/2 client preface and
SETTINGS, an acknowledgement of the server's SETTINGS and PINGs, and then nothing. A process
holds as many as its file-descriptor limit allows (its soft limit raised to the hard one),
writes ``--ready-file`` once they are open, and on SIGTERM writes ``--final-file`` (how many
the server closed meanwhile) and exits, closing them all.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pathlib
import resource
import signal
import sys
import time

__all__ = ["hold", "main", "max_per_process"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 4, 6, 7
ACK = 0x1
SPARE_FDS = 64
"""File descriptors a holder keeps for itself (the interpreter, its pipes, the event loop)."""
CONNECT_BATCH = 256
CONNECT_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0


def _frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + (0).to_bytes(4, "big") + payload


def max_per_process() -> int:
    """Connections one holder can keep: its hard file-descriptor limit, less some to spare."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1] - SPARE_FDS


class _State:
    def __init__(self) -> None:
        self.connected = 0
        self.handshaken = 0
        self.closed_by_server = 0
        self.goaway = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.closing = False


class _Idle(asyncio.Protocol):
    """One idle HTTP/2 client connection: answers SETTINGS and PING, never opens a stream."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.handshaken = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(PREFACE + _frame(SETTINGS, 0))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, flags = self.buffer[3], self.buffer[4]
            payload = bytes(self.buffer[9 : 9 + length])
            del self.buffer[: 9 + length]
            assert self.transport is not None
            if kind == SETTINGS and not flags & ACK:
                self.transport.write(_frame(SETTINGS, ACK))
                if not self.handshaken:
                    self.handshaken = True
                    self.state.handshaken += 1
            elif kind == PING and not flags & ACK:
                self.transport.write(_frame(PING, ACK, payload))
            elif kind == GOAWAY:
                self.state.goaway += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.state.closing:
            self.state.closed_by_server += 1


async def hold(port: int, count: int, ready: pathlib.Path, final: pathlib.Path) -> None:
    state = _State()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    transports: list[asyncio.BaseTransport] = []
    started = time.monotonic()

    async def connect() -> None:
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Idle(state), "127.0.0.1", port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            state.errors[
                type(exc).__name__ if not isinstance(exc, OSError) or not exc.errno else os.strerror(exc.errno)
            ] += 1
            return
        state.connected += 1
        transports.append(transport)

    for first in range(0, count, CONNECT_BATCH):
        if stop.is_set():
            break
        await asyncio.gather(*(connect() for _ in range(min(CONNECT_BATCH, count - first))))
    connected_seconds = time.monotonic() - started
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    while state.handshaken + state.closed_by_server < state.connected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the server answers each preface with its SETTINGS
    _write(
        ready,
        {
            "pid": os.getpid(),
            "asked": count,
            "connected": state.connected,
            "handshaken": state.handshaken,
            "closed_by_server": state.closed_by_server,
            "errors": dict(state.errors),
            "connect_seconds": connected_seconds,
            "handshake_seconds": time.monotonic() - started,
        },
    )
    await stop.wait()
    still_open = sum(1 for t in transports if not t.is_closing())
    _write(final, {"open": still_open, "closed_by_server": state.closed_by_server, "goaway": state.goaway})
    state.closing = True
    for transport in transports:
        transport.close()


def _write(path: pathlib.Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # appears whole or not at all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nba_service.tools.chaos.idle", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--final-file", required=True)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.count > max_per_process():
        print(f"at most {max_per_process()} connections per process (ulimit -Hn {hard})", file=sys.stderr)
        return 2
    asyncio.run(hold(args.port, args.count, pathlib.Path(args.ready_file), pathlib.Path(args.final_file)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
