"""``nba bench``: what a decision costs next to an empty gRPC call, on this machine, in one run.

Starts two servers as processes of their own:

- the real one, ``nba serve`` with its embedded Redis, a policy set, customer
  profiles and journeys loaded;
- an echo server built the same way (grpc.aio, the same server options, the
  same metrics interceptor, health and reflection) whose ``Decide`` answers
  at once (:mod:`~nba_service.tools.bench.echo`, run as ``python -m nba_service.tools.bench echo``).

Both are driven by the same grpc.aio client with the same requests: sequential
latency (one call at a time), then a ladder of calls in flight for the highest
throughput of each and its p99. The report adds the ratios Decide / Echo, the
server's own decision histogram, and the CPU time per decision of the server
process and of its Redis.

Sweeps repeat the sequential measure for several candidate-offer counts (the
cost of one more offer) or customer counts (latency and server memory should be
flat; Redis bytes per customer). The Redis Cluster scale curve
(:mod:`~nba_service.tools.bench.cluster`, ``nba bench --redis-mode cluster --shards N``) runs the same
load on the embedded Redis and on local clusters of N primaries, with Redis CPU, commands and keys per
primary. Every process started is stopped in the end.

Modules: :mod:`~nba_service.tools.bench.config` (what a run measures),
:mod:`~nba_service.tools.bench.workload` (customers, journeys, requests, offer sets),
:mod:`~nba_service.tools.bench.processes` (the two servers),
:mod:`~nba_service.tools.bench.client` (the measures), :mod:`~nba_service.tools.bench.run`
and :mod:`~nba_service.tools.bench.report` (the tables).
"""

from nba_service.tools.bench.cluster import format_cluster_report, run_cluster_bench
from nba_service.tools.bench.config import BenchConfig, BenchError
from nba_service.tools.bench.report import format_report, format_sweep
from nba_service.tools.bench.run import run_bench, run_sweep
from nba_service.tools.bench.workload import write_offer_policies

__all__ = [
    "BenchConfig",
    "BenchError",
    "format_cluster_report",
    "format_report",
    "format_sweep",
    "run_bench",
    "run_cluster_bench",
    "run_sweep",
    "write_offer_policies",
]
