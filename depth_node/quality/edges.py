"""Depth edges and flying pixels: :func:`log_spread` (the relative depth jump across each
pixel's window, in log units, scale-free and the same for disparity), the edge cue
:func:`discontinuity_confidence` built on it, and :func:`flying_pixel_mask` with its two tests,
``'jump'`` (the same spread against :data:`FLYING_JUMP`, the default) and ``'angle'`` (the
angle between the viewing ray and the surface normal from the log-depth gradient, against
:data:`FLYING_ANGLE_DEG`); the package docstring says why ``'jump'`` is the default.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np

from depth_node.arrays import Array, astype, namespace, put_where, to_host
from depth_node.quality.common import (
    ArrayOrNone, filter_cols, filter_rows, image, location, positive, QualityError,
    soft_threshold, window_radius)

__all__ = ['discontinuity_confidence', 'EDGE_JUMP', 'EDGE_WINDOW', 'FLYING_ANGLE_DEG',
           'FLYING_JUMP', 'flying_pixel_mask', 'log_spread']


#: neighbours: 3 = the 8 neighbours (a jump is seen from both sides of a silhouette).
EDGE_WINDOW = 3
#: Relative depth jump across the window at which :func:`discontinuity_confidence` is 0.5
#: (``max / min - 1`` of depth in the window): 5 %.
EDGE_JUMP = 0.05
#: Default threshold of the ``'jump'`` flying-pixel test: a pixel whose 3 x 3 window spans a
#: relative depth jump larger than 4 % (``max / min > 1.04``) is flying. On
#: ``bench/bench_quality.py`` (TUM RGB-D, silhouettes smoothed by 7-15 px box blurs) it removes
#: 97.8-100 % of the pixels more than 10 % off near silhouettes and keeps 99.9-100 % of the
#: correct pixels away from them; 3 % keeps only 98.4 % and removes 31 % of the correct pixels
#: near silhouettes (4 %: 20 %), 5 % removes only 92.7 % at 15 px, 6 % 75.8 %.
FLYING_JUMP = 0.04
#: Default threshold of the ``'angle'`` flying-pixel test, degrees between the viewing ray and
#: the surface normal. On the same benchmark 85 degrees removes 89.7 % (15 px blur) and keeps
#: 100 %; 80 degrees removes 99.6 % but keeps only 92.6 %; 85 degrees with ``dilate=1`` passes
#: (98.4 %, 99.7 %) at 27 % collateral and 0.5 ms more than ``'jump'``.
FLYING_ANGLE_DEG = 85.0

_METHODS = ('jump', 'angle')


def _log_depth(depth: Array) -> Array:
    """``log(depth)`` float32, NaN where depth is invalid (NaN, inf, <= 0)."""
    xp = namespace(depth)
    with np.errstate(divide='ignore', invalid='ignore'):
        out = xp.log(depth)         # <= 0 -> -inf or NaN
    put_where(out, xp.isinf(out), math.nan)
    return out


def _dilate(mask: Array, radius: int) -> Array:
    """Square ``(2 radius + 1)`` dilation of a boolean (H, W) mask."""
    if radius <= 0:
        return mask
    return filter_cols(filter_rows(mask, radius, 'logical_or'), radius, 'logical_or')


def log_spread(depth, window: int = EDGE_WINDOW) -> Array:
    """Relative depth jump around each pixel: ``max - min`` of ``log(depth)`` in a window.

    ``exp(spread) - 1`` is the relative jump ``max / min - 1`` between the nearest and the
    farthest valid pixel of the ``window`` x ``window`` neighbourhood. It is scale-free (the
    same for ``k * depth``) and identical for disparity (``log(1 / z) = -log z``: max and min
    swap, the spread does not), so it works for metric depth, relative depth and scale-only
    relative disparity. For *affine* disparity ``a / z + b`` the shift ``b`` compresses
    (``b > 0``) or stretches it; align the shift first (or pass depth) for thresholds in
    metric terms.

    Parameters
    ----------
    depth : array
        ``(H, W)`` depth or disparity (numpy, or a tensor on any device); invalid pixels (NaN,
        inf, ``<= 0``) are ignored as neighbours.
    window : int
        Odd window side, pixels (default :data:`EDGE_WINDOW` = 3).

    Returns
    -------
    array
        ``(H, W)`` float32 ``>= 0`` (log units; 0.04 = a 4 % jump), NaN where depth is invalid;
        of ``depth``'s kind and device.
    """
    radius = window_radius(window)
    # Three full-size buffers, reused: each new large array costs page faults (glibc returns
    # freed large blocks to the system), which cost more than the arithmetic here.
    log_d = _log_depth(image('depth', depth))
    rows = filter_rows(log_d, radius, 'fmin')
    lo = filter_cols(rows, radius, 'fmin')
    filter_rows(log_d, radius, 'fmax', out=rows)
    log_d *= 0                          # 0, NaN where invalid
    lo += log_d                         # NaN where the pixel itself is invalid
    hi = filter_cols(rows, radius, 'fmax', out=log_d)
    hi -= lo
    return hi


def _checked_spread(spread, depth: Array) -> Array:
    spread = image('spread', spread, like=depth)
    if spread.shape != depth.shape:
        raise QualityError(f'spread must have the shape of depth {tuple(depth.shape)}, got '
                           f'{tuple(spread.shape)} (pass log_spread(depth, window))')
    return spread


def discontinuity_confidence(depth, jump: float = EDGE_JUMP, window: int = EDGE_WINDOW,
                             spread: ArrayOrNone = None) -> Array:
    """Confidence that a pixel is not on a depth edge, from the relative jump to its neighbours.

    Measures how far the pixel's window spans in depth (:func:`log_spread`): smooth surfaces
    score near 1, pixels on or next to a silhouette (where a network's depth is smeared and
    its error largest) near 0. Soft threshold: ``soft(spread, log(1 + jump))``, so a window
    spanning a ``jump`` relative change scores 0.5, three times that (in log) 0.1.
    Scale-free; the same for depth and disparity (see :func:`log_spread`).

    Parameters
    ----------
    depth : array
        ``(H, W)`` depth or disparity, any scale (numpy, or a tensor on any device); invalid =
        NaN, inf or ``<= 0``.
    jump : float
        Relative jump (``max / min - 1`` in the window) at confidence 0.5; default 0.05 (5 %).
    window : int
        Odd window side, pixels (default 3).
    spread : array, optional
        ``log_spread(depth, window)`` when already computed (shared with
        :func:`flying_pixel_mask`); ``window`` is then not used.

    Returns
    -------
    array
        ``(H, W)`` float32 in ``[0, 1]``, NaN where depth is invalid; of ``depth``'s kind and
        device.
    """
    jump = positive('jump', jump)
    depth = image('depth', depth)
    if spread is None:
        s = log_spread(depth, window)
    else:
        s = astype(_checked_spread(spread, depth), np.float32, copy=True)
    return soft_threshold(s, math.log1p(jump), out=s)


@functools.lru_cache(maxsize=8)
def _ray_terms(height: int, width: int, K: tuple, where: str = 'numpy') -> tuple:
    """Per-column ``(u - cx) / fx``, per-row ``(v - cy) / fy`` and ``|ray|^2`` (H, W): numpy
    (read-only), or tensors on the torch device ``where`` (:func:`location`)."""
    if where != 'numpy':
        import torch
        return tuple(torch.from_numpy(a.copy()).to(where)
                     for a in _ray_terms(height, width, K))
    fx, cx, fy, cy = K[0], K[2], K[4], K[5]
    rx = ((np.arange(width) - cx) / fx).astype(np.float32)
    ry = ((np.arange(height) - cy) / fy).astype(np.float32)
    r2 = (1 + rx[None, :] ** 2 + ry[:, None] ** 2).astype(np.float32)
    for a in (rx, ry, r2):
        a.setflags(write=False)
    return rx, ry, r2


def _grazing_mask(log_d: Array, K: np.ndarray, max_angle_deg: float) -> Array:
    """True where the angle between the viewing ray and the surface normal exceeds the limit.

    With ``g = (fx d log z / du, fy d log z / dv)`` (central differences of log depth, so
    scale-free) and the ray ``r = ((u - cx) / fx, (v - cy) / fy, 1)``, the normal of the
    back-projected surface is ``(-g_u, -g_v, 1 + g_u r_x + g_v r_y)`` and
    ``cos(angle) = 1 / (|r| |n|)``: grazing when ``|r|^2 |n|^2 > 1 / cos^2(limit)``.
    """
    xp = namespace(log_d)
    height, width = log_d.shape
    fx, fy = float(K[0, 0]), float(K[1, 1])
    gu = xp.empty_like(log_d)
    flat, fgu = log_d.reshape(-1), gu.reshape(-1)
    if width > 1:
        xp.subtract(flat[2:], flat[:-2], out=fgu[1:-1])
        gu *= 0.5 * fx                  # rounded to float32, as every scalar here
        gu[:, 0] = (log_d[:, 1] - log_d[:, 0]) * fx
        gu[:, -1] = (log_d[:, -1] - log_d[:, -2]) * fx
    else:
        gu[...] = 0
    gv = xp.zeros_like(log_d)
    if height > 1:
        xp.subtract(log_d[2:], log_d[:-2], out=gv[1:-1])
        gv *= 0.5 * fy
        gv[0] = (log_d[1] - log_d[0]) * fy
        gv[-1] = (log_d[-1] - log_d[-2]) * fy
    rx, ry, r2 = _ray_terms(height, width, tuple(float(k) for k in K.reshape(-1)),
                            location(log_d))
    nz = gu * rx
    t = gv * ry[:, None]
    nz += t
    nz += 1
    xp.square(nz, out=nz)
    xp.square(gu, out=gu)
    xp.square(gv, out=gv)
    nz += gu
    nz += gv
    nz *= r2
    limit = 1.0 / math.cos(math.radians(max_angle_deg)) ** 2
    return xp.greater(nz, limit)


def flying_pixel_mask(depth, threshold: Optional[float] = None, method: str = 'jump',
                      window: int = EDGE_WINDOW, K: ArrayOrNone = None, dilate: int = 0,
                      spread: ArrayOrNone = None) -> Array:
    """Pixels on or next to a silhouette, whose depth is likely between the two surfaces.

    Parameters
    ----------
    depth : array
        ``(H, W)`` depth (metres or relative) or scale-only disparity (numpy, or a tensor on
        any device); invalid = NaN, inf or ``<= 0`` (never flagged: they are removed already).
    threshold : float, optional
        ``'jump'``: the relative depth jump ``max / min - 1`` in the window above which a pixel
        is flying; default :data:`FLYING_JUMP` (0.04). ``'angle'``: the largest angle,
        degrees in ``(0, 90)``, between the viewing ray and the surface normal; default
        :data:`FLYING_ANGLE_DEG` (80).
    method : str
        ``'jump'`` (default; scale-free relative jump to the neighbours, no intrinsics) or
        ``'angle'`` (ray / surface-normal angle from the log-depth gradient; needs ``K``).
        Both give the same mask for ``k * depth``. See the module docstring for the choice.
    window : int
        ``'jump'``: odd window side, pixels (default 3). Not used by ``'angle'`` (central
        differences).
    K : array, optional
        ``(3, 3)`` camera matrix in pixels of this image, for ``'angle'`` (read on the host).
    dilate : int
        Grow the mask by this many pixels (square), default 0.
    spread : array, optional
        ``'jump'``: ``log_spread(depth, window)`` when already computed.

    Returns
    -------
    array
        ``(H, W)`` bool, True = flying (remove); of ``depth``'s kind and device.
    """
    if method not in _METHODS:
        raise QualityError(f'method must be one of {_METHODS}, got {method!r}')
    if isinstance(dilate, bool) or not isinstance(dilate, (int, np.integer)) or dilate < 0:
        raise QualityError(f'dilate must be an integer >= 0, got {dilate!r}')
    depth = image('depth', depth)
    if method == 'jump':
        threshold = positive('threshold', FLYING_JUMP if threshold is None else threshold)
        if spread is None:
            spread = log_spread(depth, window)
        else:
            spread = _checked_spread(spread, depth)
        mask = namespace(spread).greater(spread, math.log1p(threshold))
    else:
        threshold = FLYING_ANGLE_DEG if threshold is None else threshold
        if not (positive('threshold', threshold) < 90):
            raise QualityError(f"method 'angle' needs threshold in (0, 90) degrees, got "
                               f'{threshold}')
        if K is None:
            raise QualityError("method 'angle' needs K, the (3, 3) camera matrix of the image")
        K = np.asarray(to_host(K), dtype=np.float64)      # read on the host
        if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0) or not np.isfinite(K).all():
            raise QualityError(f'K must be a finite (3, 3) camera matrix with fx, fy > 0, got '
                               f'{K.tolist()}')
        mask = _grazing_mask(_log_depth(depth), K, float(threshold))
    return _dilate(mask, int(dilate))
