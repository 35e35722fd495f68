"""Thread-safe helpers for the node's telemetry: counters, log throttling, stage timing."""

from __future__ import annotations

import threading
import time
from typing import Callable


class Counters:
    """Named event counters shared by the executor and worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Throttle:
    """At most one event per ``period`` seconds for each key (log lines per kind of problem)."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> bool:
        """True, and start a new period, when ``key`` has not fired within the period."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                return False
            self._last[key] = now
            return True


class StageTimer:
    """Wall time of consecutive pipeline stages of one frame, in seconds.

    ``start()`` opens a frame, ``mark(stage)`` closes the stage that ran since the previous mark,
    ``add(stage, seconds)`` records a time measured elsewhere (it is not subtracted from the next
    mark), ``finish()`` returns the stages plus ``total``.
    """

    def __init__(self) -> None:
        self._t0 = self._last = 0.0
        self._stages: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = self._last = time.perf_counter()
        self._stages = {}

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self._stages[stage] = self._stages.get(stage, 0.0) + now - self._last
        self._last = now

    def skip(self) -> None:
        """Start the next stage now without recording the time since the last mark (it was
        recorded with :meth:`add` in finer stages)."""
        self._last = time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        self._stages[stage] = self._stages.get(stage, 0.0) + seconds

    def finish(self) -> dict[str, float]:
        stages = dict(self._stages)
        stages['total'] = time.perf_counter() - self._t0
        return stages
