"""Message strings made safe for log lines and diagnostics values.

ROS-free. Any string taken from a message (an ``encoding``, a ``format``, a
``distortion_model``, a ``frame_id``, a field name) may be megabytes long or hold control
characters that break a terminal or a log parser. :func:`shorten` keeps at most ``limit``
characters of it, escapes everything that is not printable, and says how long the original
was; :func:`shorten_values` does the same for a list of numbers.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

MAX_CHARS = 64
"""Characters of a message string kept in a log line or a diagnostics value."""

MAX_VALUES = 8
"""Values of a message list (``D``, field names) kept in a log line."""

MAX_LOG_CHARS = 1000
"""Longest log line about one bad message or skipped frame (message strings in it are
already shortened with :func:`shorten`)."""


def shorten(value: Any, limit: int = MAX_CHARS) -> str:
    """``repr`` of ``value`` with at most ``limit`` characters of its text.

    A string keeps its quotes and Python's escapes (``'\\x00'``, ``'\\n'``, ``'\\x1b'``: no
    control character reaches the log), so a short clean string reads as before: ``'nv12'``.
    A longer one is cut and followed by its length: ``'aaaa...'... (100000 chars)``. Anything
    else is shortened through its ``repr``. The result is at most ``4 * limit + 24``
    characters long (every kept character escaped as ``\\xNN``).
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f'{value[:limit]!r}... ({len(value)} chars)'
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a hostile __repr__ must not break a log line
        text = f'<{type(value).__name__}: repr failed: {type(exc).__name__}>'
    if len(text) <= limit and text.isprintable():
        return text
    return shorten(text, limit)


def shorten_values(values: Iterable[Any], limit: int = MAX_VALUES) -> str:
    """The first ``limit`` items of ``values`` as a list, then how many there were in all.

    ``[0.1, 0.2]`` stays ``[0.1, 0.2]``; 1,000 values read ``[0.1, 0.2, ..., 0.8, ...]
    (1000 values)``. Each item goes through :func:`shorten` (strings keep their quotes).
    """
    items = list(values)
    shown = ', '.join(shorten(v) if isinstance(v, str) else _number(v) for v in items[:limit])
    if len(items) <= limit:
        return f'[{shown}]'
    return f'[{shown}, ...] ({len(items)} values)'


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, numbers.Integral):
        return repr(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return shorten(value, 16)


def bounded(text: Any, limit: int = MAX_LOG_CHARS) -> str:
    """``str(text)`` cut to ``limit`` characters (saying how long it was), with control
    characters escaped: the last guard of a log line or diagnostics value."""
    text = str(text)
    if len(text) <= limit and text.isprintable():
        return text
    cut = text[:limit].encode('unicode_escape').decode('ascii')[:limit]
    return cut + (f'... ({len(text)} chars)' if len(text) > limit else '')
