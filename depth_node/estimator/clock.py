"""Stage clocks (ROS-free): the seconds each stage of one estimator call took;
:func:`stage_clock` picks the clock for a device."""

from __future__ import annotations

import time
from typing import Any

import torch


class HostStageClock:
    """Stage times from ``time.perf_counter`` (CPU: each stage has finished when it returns).

    The interface :meth:`DepthEstimator._run` times with: :meth:`start`, :meth:`mark` after each
    stage, :meth:`synchronize` once (here nothing to wait for), then :meth:`timings`.
    """

    def __init__(self) -> None:
        self._marks: list[tuple[str, float]] = []

    def start(self) -> None:
        self._marks = [('', time.perf_counter())]

    def mark(self, stage: str) -> None:
        self._marks.append((stage, time.perf_counter()))

    def synchronize(self) -> None:
        """Nothing to wait for on the CPU."""

    def timings(self) -> dict[str, float]:
        """Seconds per stage, between consecutive marks."""
        return {stage: t - self._marks[i][1] for i, (stage, t) in enumerate(self._marks[1:])}


class CudaStageClock(HostStageClock):
    """Stage times from CUDA events recorded on the current stream of ``device``.

    Marks cost no synchronisation; :meth:`synchronize` waits for the stream once, after which
    the events are read. An event measures the stream's timeline: a stage's time includes the
    host time spent issuing it while the device waited. One clock times one call.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self._recorded: list[tuple[str, Any]] = []

    def _record(self, stage: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        self._recorded.append((stage, event))

    def start(self) -> None:
        self._recorded = []
        self._record('')

    def mark(self, stage: str) -> None:
        self._record(stage)

    def synchronize(self) -> None:
        torch.cuda.current_stream(self.device).synchronize()

    def timings(self) -> dict[str, float]:
        return {stage: self._recorded[i][1].elapsed_time(event) * 1e-3
                for i, (stage, event) in enumerate(self._recorded[1:])}


def stage_clock(device: torch.device) -> HostStageClock:
    """The stage clock of one call on ``device``: CUDA events on CUDA, ``perf_counter``
    elsewhere."""
    if device.type == 'cuda':
        return CudaStageClock(device)
    return HostStageClock()
