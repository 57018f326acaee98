"""The composition root: wires Redis, the data plane, the gRPC and metrics servers, the learner and the
watchers (:mod:`~nba_service.app.server`), and runs N of them on one port (:mod:`~nba_service.app.workers`).

Nothing below imports this package; the CLI and the benchmark start the service through it.
"""
