"""The temporal cue: :func:`temporal_confidence`, the per-pixel agreement of the current
output with the previous one (the largest log change in a :data:`TEMPORAL_WINDOW` window after
the global level change is taken out, through ``soft(change, log(1 + TEMPORAL_TAU))``), so
that the regions a network redraws from frame to frame score low. It compares the stabilized
outputs of :class:`~depth_node.quality.stabilizer.TemporalStabilizer`.
"""

from __future__ import annotations

import math

import numpy as np

from depth_node.arrays import Array, full, namespace, nanmedian, put_where
from depth_node.quality.common import (
    ArrayOrNone, filter_cols, filter_rows, image, invalid, positive, QualityError,
    soft_threshold, window_radius)

__all__ = ['TEMPORAL_TAU', 'TEMPORAL_WINDOW', 'temporal_confidence']


#: Relative frame-to-frame change at which :func:`temporal_confidence` is 0.5.
TEMPORAL_TAU = 0.05
#: Neighbourhood side, pixels, over which :func:`temporal_confidence` takes the largest change.
TEMPORAL_WINDOW = 3


def temporal_confidence(current, previous: ArrayOrNone, tau: float = TEMPORAL_TAU,
                        window: int = TEMPORAL_WINDOW, unknown: float = 0.5) -> Array:
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
        ``(H, W)`` depth or disparity in the same space and scale (numpy, or tensors on any
        device; ``previous`` is brought to ``current``'s); ``previous`` None (no previous
        output, e.g. after a reset) gives ``unknown`` everywhere.
    tau : float
        Relative change at confidence 0.5 (default 0.05 = 5 %).
    window : int
        Odd neighbourhood side, pixels; 1 = the pixel alone (default :data:`TEMPORAL_WINDOW`).
    unknown : float
        In ``[0, 1]``: the value where ``previous`` is invalid but ``current`` is valid.

    Returns
    -------
    array
        ``(H, W)`` float32 in ``[0, 1]``, NaN where ``current`` is invalid; of its kind and
        device.
    """
    cur = image('current', current)
    tau = positive('tau', tau)
    radius = window_radius(window, smallest=1)
    if not 0 <= float(unknown) <= 1:
        raise QualityError(f'unknown must be in [0, 1], got {unknown}')
    cur_bad = invalid(cur)
    xp = namespace(cur)
    if previous is None:
        out = full(cur.shape, unknown, np.float32, like=cur)
    else:
        prev = image('previous', previous, like=cur)
        if prev.shape != cur.shape:
            raise QualityError(f'previous must have the shape of current {tuple(cur.shape)}, '
                               f'got {tuple(prev.shape)}')
        with np.errstate(divide='ignore', invalid='ignore'):
            change = xp.divide(cur, prev)
            xp.log(change, out=change)
        put_where(change, xp.isinf(change), math.nan)
        prev_bad = xp.isnan(change)         # NaN, inf or <= 0 in either image (cur: below)
        # the global level change is the stabilizer's job: the median on every 4th pixel each
        # way (0 when none is valid), kept on the device
        change -= xp.nan_to_num(nanmedian(change[::4, ::4]), nan=0.0)
        xp.abs(change, out=change)
        if radius:
            rows = filter_rows(change, radius, 'fmax')
            out = filter_cols(rows, radius, 'fmax', out=change)
        else:
            out = change
        soft_threshold(out, math.log1p(tau), out=out)
        put_where(out, prev_bad, unknown)
    put_where(out, cur_bad, math.nan)
    return out
