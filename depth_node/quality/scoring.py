"""Scoring a confidence: :func:`sparsification` (the sparsification curve of a
confidence and the oracle's, ties broken at random) and :func:`ause` (the Area Under the
Sparsification Error, the area between the two). An evaluation on the host, in float64: a
tensor is copied there first (these are offline scores, not per-frame work).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from depth_node.arrays import to_host
from depth_node.quality.common import QualityError

__all__ = ['ause', 'sparsification']


def _scored(error, confidence) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(to_host(error), dtype=np.float64)
    c = np.asarray(to_host(confidence), dtype=np.float64)
    if c.shape != e.shape:
        raise QualityError(f'error and confidence must have the same shape, got '
                           f'{e.shape} and {c.shape}')
    e, c = e.reshape(-1), c.reshape(-1)
    use = np.isfinite(e) & np.isfinite(c)
    if not use.any():
        raise QualityError('no pixel with both a finite error and a finite confidence')
    e, c = e[use], c[use]
    if np.any(e < 0):
        raise QualityError('error must be >= 0 (e.g. the absolute relative error per pixel)')
    return e, c


def sparsification(error, confidence, steps: int = 100,
                   seed: Optional[int] = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparsification curve of a confidence and the oracle's.

    The pixels are removed least confident first; at each removed fraction ``f`` the curve is
    the mean error of the pixels left. The oracle removes the largest true errors first. Ties in
    confidence are broken at random (``seed``), so a constant confidence removes pixels at
    random and its curve stays, in expectation, at the mean error: no cue gets credit for an
    arbitrary order of equal values.

    Parameters
    ----------
    error : array
        Per-pixel error ``>= 0`` (e.g. ``|pred - gt| / gt``), any shape; numpy or a tensor.
    confidence : array
        Same shape, higher = more trusted (any range). Pixels where either is not finite are
        left out.
    steps : int
        Removed fractions ``0, 1/steps, ..., 1 - 1/steps`` (default 100, as in Poggi et al. 2020).
    seed : int or None
        Seed of the random tie-breaking (None: fresh randomness).

    Returns
    -------
    fractions, curve, oracle : np.ndarray
        ``(steps,)`` float64 each.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise QualityError(f'steps must be an integer >= 2, got {steps!r}')
    e, c = _scored(error, confidence)
    n = e.size
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n), c))          # ascending confidence, ties at random
    fractions = np.arange(steps, dtype=np.float64) / steps
    removed = np.floor(fractions * n).astype(np.int64)
    left = (n - removed).astype(np.float64)

    def curve(sorted_errors: np.ndarray) -> np.ndarray:
        tail = np.cumsum(sorted_errors[::-1])[::-1]      # tail[i] = sum(sorted[i:])
        return tail[removed] / left

    return fractions, curve(e[order]), curve(np.sort(e)[::-1])


def ause(error, confidence, steps: int = 100, seed: Optional[int] = 0) -> float:
    """Area Under the Sparsification Error: the area between a confidence's sparsification
    curve and the oracle's (trapezoid over the removed fraction, in the error's unit).

    0 for a confidence that orders pixels as their true errors (the oracle); a constant (random
    order) gets the area between the flat mean-error line and the oracle, the yardstick a cue
    must beat. Smaller is better. See :func:`sparsification` for the arguments.
    """
    fractions, curve, oracle = sparsification(error, confidence, steps, seed)
    gap = curve - oracle
    return float(np.sum((gap[1:] + gap[:-1]) * 0.5 * np.diff(fractions)))
