"""The temporal cue: :func:`temporal_confidence`, the per-pixel agreement of the current
output with the previous one (the largest log change in a :data:`TEMPORAL_WINDOW` window after
the global level change is taken out, through ``soft(change, log(1 + TEMPORAL_TAU))``), so
that the regions a network redraws from frame to frame score low. It compares the stabilized
outputs of :class:`~depth_node.quality.stabilizer.TemporalStabilizer`.
"""

from __future__ import annotations

import math

import numpy as np

from depth_node.quality.common import (
    ArrayOrNone, filter_cols, filter_rows, image, invalid, NAN, positive, QualityError,
    soft_threshold, window_radius)

__all__ = ['TEMPORAL_TAU', 'TEMPORAL_WINDOW', 'temporal_confidence']


#: Relative frame-to-frame change at which :func:`temporal_confidence` is 0.5.
TEMPORAL_TAU = 0.05
#: Neighbourhood side, pixels, over which :func:`temporal_confidence` takes the largest change.
TEMPORAL_WINDOW = 3


def temporal_confidence(current, previous: ArrayOrNone, tau: float = TEMPORAL_TAU,
                        window: int = TEMPORAL_WINDOW, unknown: float = 0.5) -> np.ndarray:
    """Agreement of the current output with the previous one:
    ``soft(m, log(1 + tau))``, ``m`` the largest ``|log(current / previous) - median|`` in the
    pixel's ``window`` x ``window`` neighbourhood.

    Regions that flicker between frames (a network's unstable parts: silhouettes, reflections,
    textureless walls) score low. The global level change (the median log ratio, on every 4th
    pixel each way) is subtracted first: it is jitter, which the stabilizer handles, not a
    property of the pixel. The neighbourhood maximum marks the whole unstable region, not only
    the pixels that changed most: where a silhouette's smoothing changes width between frames,
    its centre, where the error peaks, hardly changes (``bench/bench_quality.py``, silhouette
    errors: AUSE / constant 0.43 per pixel, 0.32 with a 3 x 3 window, 0.29 with 5 x 5; 3 x 3 is
    the default, as for the edge cue). Compare the stabilized outputs
    (:class:`TemporalStabilizer` ``output`` and ``previous``). No motion compensation: on a
    moving camera every pixel whose depth changed scores lower, so give this cue less weight
    on fast platforms.

    Parameters
    ----------
    current, previous : array
        ``(H, W)`` depth or disparity in the same space and scale; ``previous`` None (no
        previous output, e.g. after a reset) gives ``unknown`` everywhere.
    tau : float
        Relative change at confidence 0.5 (default 0.05 = 5 %).
    window : int
        Odd neighbourhood side, pixels; 1 = the pixel alone (default :data:`TEMPORAL_WINDOW`).
    unknown : float
        In ``[0, 1]``: the value where ``previous`` is invalid but ``current`` is valid.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 in ``[0, 1]``, NaN where ``current`` is invalid.
    """
    cur = image('current', current)
    tau = positive('tau', tau)
    radius = window_radius(window, smallest=1)
    if not 0 <= float(unknown) <= 1:
        raise QualityError(f'unknown must be in [0, 1], got {unknown}')
    cur_bad = invalid(cur)
    if previous is None:
        out = np.full(cur.shape, np.float32(unknown))
    else:
        prev = image('previous', previous)
        if prev.shape != cur.shape:
            raise QualityError(f'previous must have the shape of current {cur.shape}, got '
                               f'{prev.shape}')
        with np.errstate(divide='ignore', invalid='ignore'):
            change = np.divide(cur, prev)
            np.log(change, out=change)
        np.copyto(change, NAN, where=np.isinf(change))
        prev_bad = np.isnan(change)         # NaN, inf or <= 0 in either image (cur: below)
        sample = change[::4, ::4]
        sample = sample[np.isfinite(sample)]
        if sample.size:                     # the global level change is the stabilizer's job
            change -= np.float32(np.median(sample))
        np.abs(change, out=change)
        if radius:
            rows = filter_rows(change, radius, np.fmax)
            out = filter_cols(rows, radius, np.fmax, out=change)
        else:
            out = change
        soft_threshold(out, math.log1p(tau), out=out)
        np.copyto(out, np.float32(unknown), where=prev_bad)
    np.copyto(out, NAN, where=cur_bad)
    return out
