"""A chaos run: the faults asked for, one after the other, each against servers of its own."""

from __future__ import annotations

import dataclasses
import datetime
import os
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from nba_service.tools.bench.run import machine
from nba_service.tools.chaos import hostile, outage, pressure
from nba_service.tools.chaos.config import FAULTS, ChaosConfig, Progress
from nba_service.tools.chaos.report import FaultResult
from nba_service.tools.chaos.rig import REAPER, STARTED

__all__ = ["RUNNERS", "ChaosRun", "run_chaos"]

Runner = Callable[[ChaosConfig, Progress], FaultResult | list[FaultResult]]

RUNNERS: dict[str, Runner] = {
    "redis_outage": outage.redis_outage,
    "overload": pressure.overload,
    "idle_connections": pressure.idle_connections,
    "stalled_streams": pressure.stalled_streams,
    "corrupt_input": hostile.corrupt_input,
    "sigterm": outage.sigterm,
    "policy_attack": hostile.policy_attack,
}
assert tuple(RUNNERS) == FAULTS


@dataclasses.dataclass
class ChaosRun:
    """The results of a run (a fault may give more than one row) and what it ran on."""

    results: list[FaultResult]
    config: ChaosConfig
    seconds: float
    meta: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(r.verdict == "PASS" for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "results": [r.as_dict() for r in self.results],
            "passed": self.passed,
            "config": dataclasses.asdict(self.config),
            "seconds": self.seconds,
            **self.meta,
        }


def _tree() -> dict[str, Any]:
    """The commit the code was run from, and whether the working tree had changes on top of it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "uncommitted_changes": bool(status.strip())}


def run_chaos(config: ChaosConfig, faults: Sequence[str] = FAULTS, progress: Progress = lambda _: None) -> ChaosRun:
    """Run each of ``faults`` in turn. A fault that cannot be run at all gives a row with its error;
    the others still run. Every process started is stopped before this returns."""
    unknown = [f for f in faults if f not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limits[0] < limits[1]:  # as many descriptors as allowed, for this process and the servers it starts
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits[1], limits[1]))
    began = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    results: list[FaultResult] = []
    first_pid = len(STARTED)
    _run_faults(config, faults, progress, results)
    meta = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "tree": _tree(),
        "machine": machine(),
        "open_files_limit": {"before": list(limits), "run": list(resource.getrlimit(resource.RLIMIT_NOFILE))},
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "pids": STARTED[first_pid:],
    }
    return ChaosRun(results, config, time.monotonic() - began, meta)


def _run_faults(config: ChaosConfig, faults: Sequence[str], progress: Progress, results: list[FaultResult]) -> None:
    try:
        for name in faults:
            progress(f"{name} ...")
            fault_began = time.monotonic()
            try:
                got = RUNNERS[name](config, progress)
            except Exception as exc:  # one fault that cannot run must not hide the others' results
                got = FaultResult(name, name.replace("_", " "), error=f"{type(exc).__name__}: {exc}")
            for result in got if isinstance(got, list) else [got]:
                result.seconds = time.monotonic() - fault_began
                results.append(result)
                progress(f"  {result.title}: {result.verdict}")
    finally:
        REAPER.wait()
