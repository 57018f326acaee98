"""``nba chaos``: each fault of issue 12 against a real ``nba serve`` and a real Redis, on loopback.

Each fault starts what it needs (a redis-server it can kill, ``nba serve`` on a free port with
the sample policies and customers loaded), drives it with grpc.aio clients in this process
(or, for idle connections, processes of their own), and stops everything by PID on the way out:

- ``redis_outage``: Redis killed with SIGKILL under 200 decisions/s and started again;
- ``overload``: 1,500 callers in a loop with a 1 s deadline, then bursts of 2,900 to 10,000 calls,
  next to the best ``nba bench`` rate of the same run;
- ``idle_connections``: 20,000 idle HTTP/2 connections, then a new client;
- ``stalled_streams``: DecideStreams that stop reading, and the server's CPU meanwhile;
- ``corrupt_input``: corrupt protobuf and invalid UTF-8, and the server's log meanwhile;
- ``sigterm``: SIGTERM with calls in flight, and the health service meanwhile;
- ``policy_attack``: policy versions written into Redis past validation.

Each gives a row (load held, status codes, recovery time, decisions returned and recorded,
outcomes acknowledged and learned, the server's memory and descriptors before and after) and a
verdict against the targets of :class:`~nba_service.tools.chaos.config.Targets`.
:meth:`ChaosConfig.quick` is the version ``make test`` runs. See docs/reliability.md.

Modules: :mod:`~nba_service.tools.chaos.config`, :mod:`~nba_service.tools.chaos.rig` (the
processes and what is read back from them), :mod:`~nba_service.tools.chaos.load` (the clients),
:mod:`~nba_service.tools.chaos.outage`, :mod:`~nba_service.tools.chaos.pressure` and
:mod:`~nba_service.tools.chaos.hostile` (the faults), :mod:`~nba_service.tools.chaos.idle`
(the idle-connection holder), :mod:`~nba_service.tools.chaos.report` and
:mod:`~nba_service.tools.chaos.run`.
"""

from nba_service.tools.chaos.config import FAULTS, ChaosConfig, ChaosError, Targets
from nba_service.tools.chaos.report import FaultResult, format_table
from nba_service.tools.chaos.run import ChaosRun, run_chaos

__all__ = ["FAULTS", "ChaosConfig", "ChaosError", "ChaosRun", "FaultResult", "Targets", "format_table", "run_chaos"]
