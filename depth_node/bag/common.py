"""What every part of ``depth_node-bag`` shares: its name, exit codes, error and log."""

from __future__ import annotations

import sys
import threading
from typing import Any, Optional

from depth_node.problems import EXIT_DEVICE_LOST
from depth_node.telemetry import Throttle
from depth_node.text import bounded

PROG = 'depth_node-bag'
NODE_NAME = 'depth_node'
"""The node name the parameter file is read for, and the name in ``depth/alignment``."""

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_GPU_LOST = EXIT_DEVICE_LOST
"""The GPU became unusable (a sticky CUDA error): the run stopped; run it again."""


class BagError(Exception):
    """A command line, parameter or bag the tool cannot work with; the message says what to
    do. ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Log:
    """Throttled, length-bounded lines on stderr that do not break a progress bar.

    ``log(text)`` writes a line; ``log(text, key)`` at most one per 5 s for each ``key``.
    ``log.severity(severity, line)`` is the :data:`depth_node.problems.Log` of the
    :class:`~depth_node.problems.Reporter` (which throttles by itself).
    """

    def __init__(self) -> None:
        self.throttle = Throttle(period=5.0)
        self.bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, text: str, key: Optional[str] = None) -> None:
        if key is not None and not self.throttle.ready(key):
            return
        line = f'[{PROG}] {bounded(text)}'
        with self._lock:
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def severity(self, severity: str, line: str) -> None:
        self(line if severity in ('info', 'warning') else f'{severity.upper()}: {line}')
