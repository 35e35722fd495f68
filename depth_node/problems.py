"""The problem table: what can go wrong with a frame or an input, counted and logged one way.

ROS-free. Each :class:`ProblemKind` in :data:`PROBLEMS` gives its counter, its log line
(severity, throttled or once per camera, length-bounded) and whether it turns ``/diagnostics``
WARN. The node and the bag tool hand every :class:`Problem` to a :class:`Reporter` built on their
own log function; neither words a problem itself. :class:`Health` turns the counters into the
node's ``/diagnostics`` level and message.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import threading
import time
from typing import Callable, Optional

from depth_node.telemetry import Counters, Throttle
from depth_node.text import bounded

THROTTLE_S = 5.0
"""Seconds between two log lines of one kind of problem (the counters count every one)."""

PROBLEM_HOLD = 10.0
"""Seconds ``/diagnostics`` stays WARN after the last bad message or skipped frame."""

FAILURES_FOR_ERROR = 3
"""Forward passes failing in a row that turn ``/diagnostics`` ERROR."""

EXIT_DEVICE_LOST = 3
"""Exit code after a sticky CUDA error (illegal memory access, device-side assert, lost GPU):
the process must restart to use the GPU again."""


@dataclass(frozen=True)
class Problem:
    """Something a frame or an input ran into: ``key`` (one of :data:`PROBLEMS`), ``text``
    (what happened, with the fix where there is one) and ``n`` (how many frames it concerns).
    ``group``: a cause of its own within the kind, logged under its own throttle (a message
    that cannot even be deserialized, beside the ones refused); counted the same."""

    key: str
    text: str = ''
    n: int = 1
    group: str = ''


@dataclass(frozen=True)
class ProblemKind:
    """One kind of problem.

    ``counter``: the counter it adds ``n`` to ('' none); ``per_camera``: also to
    ``<counter>.<camera>`` with ``input.cameras``. ``severity``: ``info``, ``warning``, ``error``,
    ``fatal`` or '' (counted, never logged). ``once``: logged once per camera instead of at most
    every :data:`THROTTLE_S` (``throttle`` names the group sharing that period; default the key).
    ``line``: the log line, formatted with ``text``, ``count`` (the counter now), ``n``,
    ``in_a_row`` (forward failures in a row) and ``topic`` (the input topic concerned).
    ``diagnostics``: a new count turns ``/diagnostics`` WARN for :data:`PROBLEM_HOLD` s.
    """

    key: str
    counter: str
    severity: str
    line: str
    diagnostics: bool = False
    per_camera: bool = False
    once: bool = False
    throttle: str = ''


def _bad(what: str) -> ProblemKind:
    """A refused input message (the frame or message is skipped, the node runs on)."""
    return ProblemKind(f'bad_{what}', f'bad_{what}', 'warning',
                       '{text} (bad ' + what + ' messages so far: {count})', diagnostics=True)


_PROMPT = '{text} ({key} so far: {count})'

PROBLEMS: dict[str, ProblemKind] = {k.key: k for k in (
    _bad('image'), _bad('camera_info'), _bad('lidar'), _bad('prompt_depth'), _bad('tf'),
    ProblemKind('no_camera_info', 'frames_without_camera_info', 'warning',
                'no {topic} received yet: publishing depth images only; no depth/points, '
                'depth/camera_info or LiDAR projection until it arrives',
                per_camera=True, once=True),
    ProblemKind('no_fit', '', 'warning', '{text}'),
    ProblemKind('temporal_reset', 'temporal_resets', 'info',
                'temporal.enabled: the scale starts afresh at this frame ({text})',
                per_camera=True),
    ProblemKind('no_focal', 'frames_without_focal', 'warning', '{text}', diagnostics=True,
                per_camera=True),
    ProblemKind('lidar_unpaired', 'lidar_unpaired', '', ''),
    ProblemKind('prompt_missing', 'prompt_missing', 'warning', _PROMPT, per_camera=True,
                throttle='prompt'),
    ProblemKind('prompt_stale', 'prompt_stale', 'warning', _PROMPT, per_camera=True,
                throttle='prompt'),
    ProblemKind('prompt_low_coverage', 'prompt_low_coverage', 'warning', _PROMPT,
                per_camera=True, throttle='prompt'),
    ProblemKind('prompt_bad', 'prompt_bad', 'warning', _PROMPT, per_camera=True,
                throttle='prompt'),
    ProblemKind('forward_failed', 'forward_failures', 'error',
                'forward pass failed ({in_a_row} in a row): {text}', diagnostics=True),
    ProblemKind('device_lost', 'forward_failures', 'fatal',
                'the GPU is unusable in this process ({text}); exiting with code '
                f'{EXIT_DEVICE_LOST} so that a supervisor restarts it', diagnostics=True,
                once=True),
    ProblemKind('server_down', 'frames_server_down', 'error',
                'model server not answering, frame(s) dropped ({count} so far, {in_a_row} '
                'forward passes in a row): {text}', diagnostics=True),
    ProblemKind('non_finite', 'non_finite_outputs', 'warning',
                '{n} frame(s) with NaN or infinite network output (output as NaN; so far '
                '{count}): an fp16 overflow? set model.precision to bf16 or fp32',
                diagnostics=True),
    ProblemKind('frame_error', 'frame_errors', 'error', 'frame skipped: {text}',
                diagnostics=True),
)}
"""Every kind of problem, by key."""

DIAGNOSTIC_COUNTERS = frozenset(k.counter for k in PROBLEMS.values() if k.diagnostics)
"""The counters whose change turns ``/diagnostics`` WARN."""

Log = Callable[[str, str], None]
"""``log(severity, line)``: ``info``, ``warning``, ``error`` or ``fatal``."""


class Reporter:
    """Counts and logs problems by :data:`PROBLEMS`, and counts frames, thread-safe.

    ``log(severity, line)`` writes a line (the node: its rclpy logger; the bag tool: stderr).
    ``per_camera``: also count ``<counter>.<camera>`` (the node with ``input.cameras``).
    ``on_fatal(problem)`` is called once after a ``fatal`` problem was logged (the node shuts
    down for a restart).
    """

    def __init__(self, log: Log, per_camera: bool = False,
                 on_fatal: Optional[Callable[[Problem], None]] = None,
                 throttle_s: float = THROTTLE_S) -> None:
        self.log = log
        self.per_camera = per_camera
        self.on_fatal = on_fatal
        self.counters = Counters()
        self.throttle = Throttle(period=throttle_s)
        self.in_a_row = 0  # forward passes failed in a row
        self._once: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def count(self, name: str, camera: str = '', n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (and to ``name.<camera>`` when counting per camera)."""
        self.counters.add(name, n)
        if self.per_camera and camera:
            self.counters.add(f'{name}.{camera}', n)

    def reset(self) -> None:
        """A new configuration: the failures in a row and the once-logged lines start afresh
        (the counters go on)."""
        self.in_a_row = 0
        with self._lock:
            self._once.clear()

    def forward_ok(self) -> None:
        """A forward pass succeeded: the failures in a row start again from 0."""
        self.in_a_row = 0

    def report(self, problem: Problem, camera: str = '', topic: str = '') -> None:
        """Count ``problem``; log it as its kind says (throttled, or once per camera)."""
        kind = PROBLEMS[problem.key]
        if problem.key in ('forward_failed', 'device_lost', 'server_down'):
            self.in_a_row += 1
        if kind.counter:
            self.count(kind.counter, camera if kind.per_camera else '', problem.n)
        if not kind.severity:
            return
        if kind.once:
            with self._lock:
                if (kind.key, camera) in self._once:
                    return
                self._once.add((kind.key, camera))
        elif not self.throttle.ready(problem.group or kind.throttle or kind.key):
            return
        line = kind.line.format(
            text=bounded(problem.text), n=problem.n, in_a_row=self.in_a_row, key=kind.key,
            topic=topic or 'camera_info',
            count=self.counters.get(kind.counter) if kind.counter else 0)
        self.log(kind.severity, line)
        if kind.severity == 'fatal' and self.on_fatal is not None:
            self.on_fatal(problem)


class Health:
    """The node's ``/diagnostics`` level from its counters: ERROR while forward passes fail
    :data:`FAILURES_FOR_ERROR` or more times in a row, WARN for :data:`PROBLEM_HOLD` s after a
    counter of :data:`DIAGNOSTIC_COUNTERS` changed, else OK."""

    OK, WARN, ERROR = 0, 1, 2

    def __init__(self, hold: float = PROBLEM_HOLD) -> None:
        self.hold = hold
        self._seen: dict[str, int] = {}
        self._changed = -math.inf  # monotonic time of the last change
        self._new: list[str] = []  # the counters that changed then

    def update(self, counts: dict[str, int], in_a_row: int,
               now: Optional[float] = None) -> tuple[int, str]:
        """The level and message for the counters ``counts`` now."""
        now = time.monotonic() if now is None else now
        problems = {k: v for k, v in counts.items() if k in DIAGNOSTIC_COUNTERS}
        if problems != self._seen:
            self._new = sorted(k for k, v in problems.items() if v != self._seen.get(k))
            self._seen, self._changed = problems, now
        if in_a_row >= FAILURES_FOR_ERROR:
            return self.ERROR, f'forward pass failing ({in_a_row} in a row)'
        if now - self._changed < self.hold:
            return self.WARN, (f'bad input or skipped frames in the last {self.hold:g} s: '
                               + ', '.join(self._new))
        return self.OK, 'ok'
