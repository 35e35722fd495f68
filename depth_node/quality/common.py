"""What the quality modules share: :class:`QualityError`, the argument checks (an (H, W)
float32 image, a positive number, an odd window side), the soft threshold every cue maps its
error through (:func:`soft_threshold`), and the array helpers of more than one cue: the
validity test of a depth pixel (:func:`invalid`) and the row / column min-max filters
(:func:`filter_rows`, :func:`filter_cols`). It imports no other quality module.

Every function of the package takes numpy arrays (CPU engines) or ``torch.Tensor`` s on any
device (a model on CUDA keeps its frame there) and returns the same kind on the same device:
one implementation, written against the array namespace of :mod:`depth_node.arrays`
(``xp = namespace(x)``). Images handed in with another kind than the depth they go with are
brought to the depth's kind and device (:func:`image` ``like``).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np

from depth_node.arrays import Array, as_array, asarray, contiguous, dtype_name, \
    location, namespace

__all__ = ['ArrayOrNone', 'filter_cols', 'filter_rows', 'image', 'invalid', 'location', 'NAN',
           'positive', 'QualityError', 'soft_threshold', 'window_radius']


class QualityError(ValueError):
    """Invalid arguments to a quality function; the message says what to fix."""


NAN = np.float32(np.nan)

ArrayOrNone = Optional[Array]
"""A ``numpy.ndarray``, a ``torch.Tensor`` or None."""

_NUMERIC = ('float', 'bfloat', 'int', 'uint', 'bool')


def image(name: str, array, allow_none: bool = False, like: ArrayOrNone = None) -> Array:
    """``array`` as a C-contiguous (H, W) float32 array of its own kind (numpy, or a tensor on
    its device), or of ``like``'s kind and device when given (a copy when it was not); a view
    when it already is one."""
    if array is None and allow_none:
        return None
    a = as_array(array)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise QualityError(f'{name} must be a non-empty (H, W) array, got shape '
                           f'{tuple(a.shape)}')
    if not dtype_name(a).startswith(_NUMERIC):
        raise QualityError(f'{name} must be numeric, got dtype {a.dtype}')
    if like is not None and location(a) != location(like):
        a = asarray(a, like=like)
    return contiguous(a, np.float32)


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


def soft_threshold(x: Array, t: float, out: ArrayOrNone = None) -> Array:
    """``1 / (1 + (x / t) ** 2)``: confidence 1 at ``x = 0``, 0.5 at ``x = t``; NaN stays NaN.

    ``x`` is an error-like quantity ``>= 0`` in the unit of ``t`` (numpy or a tensor). In
    place when ``out`` is ``x``. float32 for float32 input (``1 / t`` is rounded to it).
    """
    t = positive('t', t)
    x = as_array(x)
    xp = namespace(x)
    out = xp.multiply(x, 1.0 / t, out=out)
    xp.square(out, out=out)
    out += 1
    return xp.reciprocal(out, out=out)


_Op = Union[str, Any]
"""An elementwise binary function by name (``'fmin'``, ``'fmax'``, ``'logical_or'``) or as the
numpy ufunc (``np.fmin``): the namespace's function of that name is used."""


def _op(xp: Any, op: _Op) -> Any:
    return getattr(xp, op if isinstance(op, str) else op.__name__)


def filter_rows(src: Array, radius: int, op: _Op, out: ArrayOrNone = None) -> Array:
    """``op`` (``'fmax'``, ``'fmin'``, ``'logical_or'``; or the numpy ufunc) over
    ``2 radius + 1`` pixels along each row, into ``out`` (a new array when None; never
    ``src``). The shifts run on the flattened image (contiguous, about 3x faster than 2-D
    column slices in numpy); the border columns, which that mixes with the neighbouring row,
    are redone."""
    xp = namespace(src)
    fn = _op(xp, op)
    height, width = src.shape
    if out is None:
        out = xp.empty_like(src)
    out[...] = src
    flat_src, flat_out = src.reshape(-1), out.reshape(-1)
    reach = min(radius, width - 1)
    for k in range(1, reach + 1):
        fn(flat_out[k:], flat_src[:-k], out=flat_out[k:])
        fn(flat_out[:-k], flat_src[k:], out=flat_out[:-k])
    for c in sorted(set(range(min(reach, width))) | set(range(max(width - reach, 0), width))):
        lo, hi = max(c - radius, 0), min(c + radius + 1, width)
        column = out[:, c]
        column[...] = src[:, lo]
        for j in range(lo + 1, hi):
            fn(column, src[:, j], out=column)
    return out


def filter_cols(src: Array, radius: int, op: _Op, out: ArrayOrNone = None) -> Array:
    """``op`` over ``2 radius + 1`` pixels along each column (contiguous row blocks), into
    ``out`` (a new array when None; never ``src``)."""
    xp = namespace(src)
    fn = _op(xp, op)
    if out is None:
        out = xp.empty_like(src)
    out[...] = src
    for k in range(1, min(radius, src.shape[0] - 1) + 1):
        fn(out[k:], src[:-k], out=out[k:])
        fn(out[:-k], src[k:], out=out[:-k])
    return out


def invalid(depth: Array) -> Array:
    """True where ``depth`` is not finite or ``<= 0``."""
    xp = namespace(depth)
    bad = xp.greater(depth, 0)          # False for NaN
    bad &= xp.less(depth, math.inf)
    return xp.logical_not(bad, out=bad)
