"""Logging that stays readable when the same thing goes wrong thousands of times a second.

A Redis outage fails every call; a broken client sends the same bad request in a
loop. Logging each of them buries the log (and costs the CPU the service needs):
:class:`RateLimitedLog` writes one line per *kind* per interval and says how many
like it were left out since the last line.

>>> import logging, sys
>>> logger = logging.getLogger("doctest.ratelimit")
>>> logger.addHandler(logging.StreamHandler(sys.stdout)); logger.propagate = False
>>> clock = iter([0.0, 1.0, 2.0, 61.0]).__next__
>>> limited = RateLimitedLog(logger, interval=60.0, clock=clock)
>>> [limited.warning("redis:read_context", "redis %s failed: %s", "read_context", "refused") for _ in range(4)]
redis read_context failed: refused
redis read_context failed: refused (2 more like this in the last 61 s)
[True, False, False, True]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most one line per kind per ``interval`` seconds on ``logger``, with the count of those left out.

    The count is written with the next line of the same kind, so a burst that stops is
    summed up when it starts again. Thread-safe (the learner logs from its own thread).
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._kinds: dict[Hashable, list[float]] = {}
        """Kind -> [time of the last line written, lines left out since]."""
        self._lock = threading.Lock()

    def log(self, level: int, kind: Hashable, message: str, *args: Any, exc_info: Any = None) -> bool:
        """Log ``message % args`` unless a line of this ``kind`` was written less than ``interval`` ago;
        True when written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is not None and now - state[0] < self.interval:
                state[1] += 1
                return False
            left_out = 0 if state is None else int(state[1])
            since = 0.0 if state is None else now - state[0]
            self._kinds[kind] = [now, 0]
        if left_out:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, left_out, since)
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True

    def warning(self, kind: Hashable, message: str, *args: Any) -> bool:
        return self.log(logging.WARNING, kind, message, *args)

    def info(self, kind: Hashable, message: str, *args: Any) -> bool:
        return self.log(logging.INFO, kind, message, *args)
