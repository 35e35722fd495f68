"""What the quality modules share: :class:`QualityError`, the argument checks (an (H, W)
float32 image, a positive number, an odd window side), the soft threshold every cue maps its
error through (:func:`soft_threshold`), and the array helpers of more than one cue: the
validity test of a depth pixel (:func:`invalid`) and the row / column min-max filters
(:func:`filter_rows`, :func:`filter_cols`). numpy only; it imports no other quality module.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ['ArrayOrNone', 'filter_cols', 'filter_rows', 'image', 'invalid', 'NAN', 'positive',
           'QualityError', 'soft_threshold', 'window_radius']


class QualityError(ValueError):
    """Invalid arguments to a quality function; the message says what to fix."""


NAN = np.float32(np.nan)

ArrayOrNone = Optional[np.ndarray]


def image(name: str, array, allow_none: bool = False) -> np.ndarray:
    """``array`` as a C-contiguous (H, W) float32 array (a view when it already is one)."""
    if array is None and allow_none:
        return None
    a = np.asarray(array)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise QualityError(f'{name} must be a non-empty (H, W) array, got shape {a.shape}')
    if a.dtype.kind not in 'fiub':
        raise QualityError(f'{name} must be numeric, got dtype {a.dtype}')
    return np.ascontiguousarray(a, dtype=np.float32)


def positive(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise QualityError(f'{name} must be a number, got {value!r}') from None
    if not (value > 0 and math.isfinite(value)):
        raise QualityError(f'{name} must be positive and finite, got {value}')
    return value


def window_radius(window: int, smallest: int = 3) -> int:
    """``window // 2`` of an odd integer window side ``>= smallest``."""
    if (isinstance(window, bool) or not isinstance(window, (int, np.integer))
            or window < smallest or window % 2 == 0):
        raise QualityError(f'window must be an odd integer >= {smallest}, got {window!r}')
    return int(window) // 2


def soft_threshold(x: np.ndarray, t: float, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``1 / (1 + (x / t) ** 2)``: confidence 1 at ``x = 0``, 0.5 at ``x = t``; NaN stays NaN.

    ``x`` is an error-like quantity ``>= 0`` in the unit of ``t``. In place when ``out`` is
    ``x``. float32 for float32 input.
    """
    t = positive('t', t)
    x = np.asarray(x)
    out = np.multiply(x, x.dtype.type(1.0 / t) if x.dtype.kind == 'f' else 1.0 / t, out=out)
    np.square(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def filter_rows(src: np.ndarray, radius: int, op,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    """``op`` (``np.fmax``, ``np.fmin``, ``np.logical_or``) over ``2 radius + 1`` pixels along
    each row, into ``out`` (a new array when None; never ``src``). The shifts run on the
    flattened image (contiguous, about 3x faster than 2-D column slices); the border columns,
    which that mixes with the neighbouring row, are redone."""
    height, width = src.shape
    if out is None:
        out = np.empty_like(src)
    np.copyto(out, src)
    flat_src, flat_out = src.reshape(-1), out.reshape(-1)
    reach = min(radius, width - 1)
    for k in range(1, reach + 1):
        op(flat_out[k:], flat_src[:-k], out=flat_out[k:])
        op(flat_out[:-k], flat_src[k:], out=flat_out[:-k])
    for c in sorted(set(range(min(reach, width))) | set(range(max(width - reach, 0), width))):
        out[:, c] = op.reduce(src[:, max(c - radius, 0):c + radius + 1], axis=1)
    return out


def filter_cols(src: np.ndarray, radius: int, op,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    """``op`` over ``2 radius + 1`` pixels along each column (contiguous row blocks), into
    ``out`` (a new array when None; never ``src``)."""
    if out is None:
        out = np.empty_like(src)
    np.copyto(out, src)
    for k in range(1, min(radius, src.shape[0] - 1) + 1):
        op(out[k:], src[:-k], out=out[k:])
        op(out[:-k], src[k:], out=out[:-k])
    return out


def invalid(depth: np.ndarray) -> np.ndarray:
    """True where ``depth`` is not finite or ``<= 0``."""
    bad = np.greater(depth, 0)          # False for NaN
    bad &= np.less(depth, np.inf)
    return np.logical_not(bad, out=bad)
