"""What one benchmark run measures, and its error."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["BenchConfig", "BenchError", "Progress"]

Progress = Callable[[str], None]


class BenchError(RuntimeError):
    """The benchmark could not run (a server did not start, every call failed, ...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BenchConfig:
    """What one run measures; :meth:`quick` is the under-a-minute version."""

    customers: int = 100_000
    """Customer profiles loaded into Redis."""
    offers: int | None = None
    """Candidate offers per request: a generated policy set where every offer answers
    ``atm_decline`` and is eligible. None: the policy directory and the scenario mix."""
    policies: str = "policies"
    """The policy directory served (and whose channels generated sets use)."""
    sequential: int = 2000
    """Calls measured one at a time, after the warm-up."""
    warmup: int = 300
    """Calls sent to each server before anything is measured."""
    seconds: float = 3.0
    """Length of each step of the throughput ladder."""
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    """The throughput ladder: calls in flight at each step."""
    journey_share: float = 0.2
    """Share of customers given a journey of 3 to 10 past events."""
    workers: int = 1
    """``nba serve --workers``: server processes sharing the port (the echo server stays one)."""
    connections: int = 4
    """Connections the client opens to each server for the throughput ladder, calls spread over them:
    the kernel hands each connection to one worker (SO_REUSEPORT), so one connection would feed one."""
    seed: int = 1
    """Seed of the generated customers, journeys, requests and offer sets, and of the server's exploration."""

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """The short run of ``nba bench --quick``; ``overrides`` that are not None win."""
        values: dict[str, Any] = {"customers": 20_000, "sequential": 500, "warmup": 200, "seconds": 1.0}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
