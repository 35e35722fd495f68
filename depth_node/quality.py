"""Depth a navigation stack can trust: per-pixel confidence cues, flying pixels, temporal
stability, and the sparsification metrics that score a confidence.

ROS-free and numpy-only (no rclpy, no torch), vectorized, float32 images. Conventions:

* A depth image is ``(H, W)``; a pixel is *valid* when it is finite and ``> 0``. Metric depth is
  metres along the optical axis; relative depth or relative disparity (affine-invariant network
  output) has no unit. NaN marks invalid pixels in every image returned here.
* A confidence is ``(H, W)`` float32 in ``[0, 1]`` (1 = trust), NaN where the depth is invalid.
  All cues here map an error-like quantity ``x >= 0`` through the same soft threshold
  ``soft(x, t) = 1 / (1 + (x / t) ** 2)``: 1 at ``x = 0``, 0.5 at ``x = t``, 0.1 at ``x = 3 t``.
  Its tail is heavy enough that ranking survives large errors, and it costs no ``exp``.

Cues, what they measure, and the pipeline they are meant for (the wiring lives elsewhere)::

    spread = log_spread(depth)                               # once per frame, shared by:
    edge = discontinuity_confidence(depth, spread=spread)    # depth edges (scale-free)
    drop = flying_pixel_mask(depth, spread=spread)           # True = flying pixel: set NaN
    res = lidar_residuals(aligned_depth, uv, z)              # the LiDAR fit's residuals
    lid = lidar_confidence(depth.shape, uv, res)             # spread over the image
    out, info = stabilizer.update(depth, stamp)              # TemporalStabilizer
    tmp = temporal_confidence(out, stabilizer.previous)      # flicker against last output
    conf = combine_confidence({'edge': edge, 'lidar': lid, 'temporal': tmp,
                               'model': model_conf}, depth=out)

Flying pixels (:func:`flying_pixel_mask`). A network's depth is smooth across a silhouette, so
the pixels of the ramp between foreground and background sit in mid-air. Two classic
depth-sensor tests were implemented and measured on real TUM RGB-D depth with network-like
smoothing (``bench/bench_quality.py``; figures in :data:`FLYING_JUMP`): ``'jump'``, the
relative depth jump to the neighbours (max / min of depth in a window, as in the Kinect / PCL
"veil" or "shadow point" filters and the RealSense / Open3D edge filters on depth jumps), and
``'angle'``, the angle between the viewing ray and the local surface normal (PCL
``ShadowPoints``, laser ``ScanShadowsFilter``). Both are scale-free. ``'jump'`` is the default:
at 4 % it met both targets at every blur width (>= 97.8 % of the >10 %-off pixels near
silhouettes removed, >= 99.9 % of the correct pixels away from them kept), while no ``'angle'``
threshold met both without a dilation, which then removes more correct pixels near silhouettes
(27 % against 20 %); it needs no intrinsics and reuses :func:`log_spread`, which
:func:`discontinuity_confidence` computes anyway, so the mask is one comparison more (0.02 ms
at 640 x 480, against 0.5 ms for ``'angle'``). On a box-blurred ramp both tests see the same
slope: the ramp is locally a slanted plane, so a threshold trades silhouette ramps against
surfaces seen at grazing angles; figures at :data:`FLYING_JUMP`.

LiDAR (:func:`lidar_confidence`): per-point agreement ``soft(|fit - lidar| / lidar, tau)``
averaged over a coarse grid by normalized convolution, then bilinearly upsampled; where no
point is near, the frame's mean agreement (the neutral value).

Time (:class:`TemporalStabilizer`, :func:`temporal_confidence`): a robust global alignment of
each prediction to the previous output, smoothed by an EMA, with outlier-frame rejection, a
persistent-change detector and scene-cut resets; and the per-pixel agreement with the previous
output.

Combination (:func:`combine_confidence`): the weighted geometric mean of the enabled cues.

Scoring (:func:`sparsification`, :func:`ause`): the sparsification curve and the Area Under
the Sparsification Error against the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import math
from typing import Mapping, Optional, Union

import numpy as np

__all__ = [
    'QualityError', 'EDGE_WINDOW', 'EDGE_JUMP', 'FLYING_JUMP', 'FLYING_ANGLE_DEG',
    'LIDAR_CELL', 'LIDAR_TAU', 'LIDAR_SUPPORT', 'TEMPORAL_TAU', 'TEMPORAL_WINDOW',
    'soft_threshold', 'log_spread',
    'discontinuity_confidence', 'flying_pixel_mask', 'lidar_residuals', 'lidar_confidence',
    'StabilizerInfo', 'TemporalStabilizer', 'temporal_confidence',
    'normalize_model_confidence', 'combine_confidence', 'sparsification', 'ause',
]


class QualityError(ValueError):
    """Invalid arguments to a quality function; the message says what to fix."""


#: Side of the square window, pixels, in which :func:`log_spread` compares each pixel with its
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
#: Cell size of the :func:`lidar_confidence` grid, pixels.
LIDAR_CELL = 16
#: Relative LiDAR residual ``|fit - lidar| / lidar`` at which a point's agreement is 0.5.
LIDAR_TAU = 0.05
#: Prior weight, in points, of the neutral value in each :func:`lidar_confidence` cell.
LIDAR_SUPPORT = 2.0
#: Relative frame-to-frame change at which :func:`temporal_confidence` is 0.5.
TEMPORAL_TAU = 0.05
#: Neighbourhood side, pixels, over which :func:`temporal_confidence` takes the largest change.
TEMPORAL_WINDOW = 3

_METHODS = ('jump', 'angle')
_MODEL_MODES = ('median', 'expp1', 'sigmoid', 'unit')
_NAN = np.float32(np.nan)

ArrayOrNone = Optional[np.ndarray]


# ----------------------------------------------------------------------------------------------
# helpers

def _image(name: str, array, allow_none: bool = False) -> np.ndarray:
    """``array`` as a C-contiguous (H, W) float32 array (a view when it already is one)."""
    if array is None and allow_none:
        return None
    a = np.asarray(array)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise QualityError(f'{name} must be a non-empty (H, W) array, got shape {a.shape}')
    if a.dtype.kind not in 'fiub':
        raise QualityError(f'{name} must be numeric, got dtype {a.dtype}')
    return np.ascontiguousarray(a, dtype=np.float32)


def _positive(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise QualityError(f'{name} must be a number, got {value!r}') from None
    if not (value > 0 and math.isfinite(value)):
        raise QualityError(f'{name} must be positive and finite, got {value}')
    return value


def _window_radius(window: int, smallest: int = 3) -> int:
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
    t = _positive('t', t)
    x = np.asarray(x)
    out = np.multiply(x, x.dtype.type(1.0 / t) if x.dtype.kind == 'f' else 1.0 / t, out=out)
    np.square(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def _log_depth(depth: np.ndarray) -> np.ndarray:
    """``log(depth)`` float32, NaN where depth is invalid (NaN, inf, <= 0)."""
    with np.errstate(divide='ignore', invalid='ignore'):
        out = np.log(depth)         # <= 0 -> -inf or NaN
    np.copyto(out, _NAN, where=np.isinf(out))
    return out


def _filter_rows(src: np.ndarray, radius: int, op,
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


def _filter_cols(src: np.ndarray, radius: int, op,
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


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square ``(2 radius + 1)`` dilation of a boolean (H, W) mask."""
    if radius <= 0:
        return mask
    return _filter_cols(_filter_rows(mask, radius, np.logical_or), radius, np.logical_or)


def _invalid(depth: np.ndarray) -> np.ndarray:
    """True where ``depth`` is not finite or ``<= 0``."""
    bad = np.greater(depth, 0)          # False for NaN
    bad &= np.less(depth, np.inf)
    return np.logical_not(bad, out=bad)


# ----------------------------------------------------------------------------------------------
# depth edges and flying pixels

def log_spread(depth, window: int = EDGE_WINDOW) -> np.ndarray:
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
        ``(H, W)`` depth or disparity; invalid pixels (NaN, inf, ``<= 0``) are ignored as
        neighbours.
    window : int
        Odd window side, pixels (default :data:`EDGE_WINDOW` = 3).

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 ``>= 0`` (log units; 0.04 = a 4 % jump), NaN where depth is invalid.
    """
    radius = _window_radius(window)
    # Three full-size buffers, reused: each new large array costs page faults (glibc returns
    # freed large blocks to the system), which cost more than the arithmetic here.
    log_d = _log_depth(_image('depth', depth))
    rows = _filter_rows(log_d, radius, np.fmin)
    lo = _filter_cols(rows, radius, np.fmin)
    _filter_rows(log_d, radius, np.fmax, out=rows)
    log_d *= 0                          # 0, NaN where invalid
    lo += log_d                         # NaN where the pixel itself is invalid
    hi = _filter_cols(rows, radius, np.fmax, out=log_d)
    hi -= lo
    return hi


def _checked_spread(spread, depth: np.ndarray) -> np.ndarray:
    spread = _image('spread', spread)
    if spread.shape != depth.shape:
        raise QualityError(f'spread must have the shape of depth {depth.shape}, got '
                           f'{spread.shape} (pass log_spread(depth, window))')
    return spread


def discontinuity_confidence(depth, jump: float = EDGE_JUMP, window: int = EDGE_WINDOW,
                             spread: ArrayOrNone = None) -> np.ndarray:
    """Confidence that a pixel is not on a depth edge, from the relative jump to its neighbours.

    Measures how far the pixel's window spans in depth (:func:`log_spread`): smooth surfaces
    score near 1, pixels on or next to a silhouette (where a network's depth is smeared and
    its error largest) near 0. Soft threshold: ``soft(spread, log(1 + jump))``, so a window
    spanning a ``jump`` relative change scores 0.5, three times that (in log) 0.1.
    Scale-free; the same for depth and disparity (see :func:`log_spread`).

    Parameters
    ----------
    depth : array
        ``(H, W)`` depth or disparity, any scale; invalid = NaN, inf or ``<= 0``.
    jump : float
        Relative jump (``max / min - 1`` in the window) at confidence 0.5; default 0.05 (5 %).
    window : int
        Odd window side, pixels (default 3).
    spread : array, optional
        ``log_spread(depth, window)`` when already computed (shared with
        :func:`flying_pixel_mask`); ``window`` is then not used.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 in ``[0, 1]``, NaN where depth is invalid.
    """
    jump = _positive('jump', jump)
    depth = _image('depth', depth)
    if spread is None:
        s = log_spread(depth, window)
    else:
        s = _checked_spread(spread, depth).copy()
    return soft_threshold(s, math.log1p(jump), out=s)


@functools.lru_cache(maxsize=8)
def _ray_terms(height: int, width: int, K: tuple) -> tuple:
    """Per-column ``(u - cx) / fx``, per-row ``(v - cy) / fy`` and ``|ray|^2`` (H, W)."""
    fx, cx, fy, cy = K[0], K[2], K[4], K[5]
    rx = ((np.arange(width) - cx) / fx).astype(np.float32)
    ry = ((np.arange(height) - cy) / fy).astype(np.float32)
    r2 = 1 + rx[None, :] ** 2 + ry[:, None] ** 2
    for a in (rx, ry, r2):
        a.setflags(write=False)
    return rx, ry, r2.astype(np.float32)


def _grazing_mask(log_d: np.ndarray, K: np.ndarray, max_angle_deg: float) -> np.ndarray:
    """True where the angle between the viewing ray and the surface normal exceeds the limit.

    With ``g = (fx d log z / du, fy d log z / dv)`` (central differences of log depth, so
    scale-free) and the ray ``r = ((u - cx) / fx, (v - cy) / fy, 1)``, the normal of the
    back-projected surface is ``(-g_u, -g_v, 1 + g_u r_x + g_v r_y)`` and
    ``cos(angle) = 1 / (|r| |n|)``: grazing when ``|r|^2 |n|^2 > 1 / cos^2(limit)``.
    """
    height, width = log_d.shape
    fx, fy = float(K[0, 0]), float(K[1, 1])
    gu = np.empty_like(log_d)
    flat, fgu = log_d.reshape(-1), gu.reshape(-1)
    if width > 1:
        np.subtract(flat[2:], flat[:-2], out=fgu[1:-1])
        gu *= np.float32(0.5 * fx)
        gu[:, 0] = (log_d[:, 1] - log_d[:, 0]) * fx
        gu[:, -1] = (log_d[:, -1] - log_d[:, -2]) * fx
    else:
        gu[:] = 0
    gv = np.zeros_like(log_d)
    if height > 1:
        np.subtract(log_d[2:], log_d[:-2], out=gv[1:-1])
        gv *= np.float32(0.5 * fy)
        gv[0] = (log_d[1] - log_d[0]) * fy
        gv[-1] = (log_d[-1] - log_d[-2]) * fy
    rx, ry, r2 = _ray_terms(height, width, tuple(float(k) for k in K.reshape(-1)))
    nz = gu * rx
    t = gv * ry[:, None]
    nz += t
    nz += 1
    np.square(nz, out=nz)
    np.square(gu, out=gu)
    np.square(gv, out=gv)
    nz += gu
    nz += gv
    nz *= r2
    limit = 1.0 / math.cos(math.radians(max_angle_deg)) ** 2
    return np.greater(nz, np.float32(limit))


def flying_pixel_mask(depth, threshold: Optional[float] = None, method: str = 'jump',
                      window: int = EDGE_WINDOW, K: ArrayOrNone = None, dilate: int = 0,
                      spread: ArrayOrNone = None) -> np.ndarray:
    """Pixels on or next to a silhouette, whose depth is likely between the two surfaces.

    Parameters
    ----------
    depth : array
        ``(H, W)`` depth (metres or relative) or scale-only disparity; invalid = NaN, inf or
        ``<= 0`` (never flagged: they are removed already).
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
        ``(3, 3)`` camera matrix in pixels of this image, for ``'angle'``.
    dilate : int
        Grow the mask by this many pixels (square), default 0.
    spread : array, optional
        ``'jump'``: ``log_spread(depth, window)`` when already computed.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool, True = flying (remove).
    """
    if method not in _METHODS:
        raise QualityError(f'method must be one of {_METHODS}, got {method!r}')
    if isinstance(dilate, bool) or not isinstance(dilate, (int, np.integer)) or dilate < 0:
        raise QualityError(f'dilate must be an integer >= 0, got {dilate!r}')
    depth = _image('depth', depth)
    if method == 'jump':
        threshold = _positive('threshold', FLYING_JUMP if threshold is None else threshold)
        if spread is None:
            spread = log_spread(depth, window)
        else:
            spread = _checked_spread(spread, depth)
        mask = np.greater(spread, np.float32(math.log1p(threshold)))
    else:
        threshold = FLYING_ANGLE_DEG if threshold is None else threshold
        if not (_positive('threshold', threshold) < 90):
            raise QualityError(f"method 'angle' needs threshold in (0, 90) degrees, got "
                               f'{threshold}')
        if K is None:
            raise QualityError("method 'angle' needs K, the (3, 3) camera matrix of the image")
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0) or not np.isfinite(K).all():
            raise QualityError(f'K must be a finite (3, 3) camera matrix with fx, fy > 0, got '
                               f'{K.tolist()}')
        mask = _grazing_mask(_log_depth(depth), K, float(threshold))
    return _dilate(mask, int(dilate))


# ----------------------------------------------------------------------------------------------
# LiDAR

def _points(shape, uv, name: str = 'uv') -> tuple[int, int, np.ndarray]:
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise QualityError(f'shape must be (H, W), got {shape!r}') from None
    if height < 1 or width < 1:
        raise QualityError(f'shape must be positive (H, W), got {shape!r}')
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise QualityError(f'{name} must be (M, 2) pixel coordinates (u, v), got shape '
                           f'{uv.shape}')
    return height, width, uv


def lidar_residuals(depth, uv, z) -> np.ndarray:
    """Relative residuals ``|depth - z| / z`` of an aligned depth map at LiDAR points.

    Parameters
    ----------
    depth : array
        ``(H, W)`` metric depth after the LiDAR fit (``Alignment.depth``), metres.
    uv : array
        ``(M, 2)`` pixel coordinates of the points in that image (``lidar.prepare_points``);
        sampled at the nearest pixel.
    z : array
        ``(M,)`` LiDAR depths along the optical axis, metres.

    Returns
    -------
    np.ndarray
        ``(M,)`` float32 ``>= 0``; NaN where the point is outside the image, ``z`` is not
        positive or the depth there is invalid.
    """
    depth = _image('depth', depth)
    height, width, uv = _points(depth.shape, uv)
    z = np.asarray(z, dtype=np.float32).reshape(-1)
    if z.size != uv.shape[0]:
        raise QualityError(f'z must have one depth per point: {uv.shape[0]} points, '
                           f'{z.size} depths')
    with np.errstate(invalid='ignore'):
        col = np.rint(uv[:, 0])
        row = np.rint(uv[:, 1])
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    with np.errstate(invalid='ignore', divide='ignore'):
        index = np.where(inside, row * width + col, 0).astype(np.int64)
        d = depth.reshape(-1)[index]
        out = np.abs(d - z) / z
        out[~inside | ~(z > 0) | _invalid(d)] = np.nan
    return out


def _box3(grid: np.ndarray) -> np.ndarray:
    """3 x 3 binomial sum ([1, 2, 1] each way, not normalised), zero outside."""
    g = np.pad(grid, 1)
    g = g[:-2] + 2 * g[1:-1] + g[2:]
    return g[:, :-2] + 2 * g[:, 1:-1] + g[:, 2:]


@functools.lru_cache(maxsize=16)
def _axis_weights(size: int, cells: int, cell: int) -> tuple:
    """Bilinear interpolation from cell centres (``(k + 0.5) cell - 0.5`` px) to pixels of one
    axis: ``(k0, frac)``; beyond the outer centres the edge cell's value holds."""
    pos = np.clip((np.arange(size) + 0.5) / cell - 0.5, 0, cells - 1)
    k0 = np.minimum(pos.astype(np.int64), max(cells - 2, 0))
    frac = (pos - k0).astype(np.float32)
    k0.setflags(write=False)
    frac.setflags(write=False)
    return k0, frac


def _upsample(grid: np.ndarray, height: int, width: int, cell: int) -> np.ndarray:
    """Bilinear ``(rows, cols)`` grid -> ``(height, width)`` float32: columns first on the
    small grid, then whole rows (contiguous copies)."""
    rows, cols = grid.shape
    g = grid.astype(np.float32)
    k0, f = _axis_weights(width, cols, cell)
    k1 = np.minimum(k0 + 1, cols - 1)
    wide = g[:, k0] + (g[:, k1] - g[:, k0]) * f            # (rows, width), small
    k0, f = _axis_weights(height, rows, cell)
    k1 = np.minimum(k0 + 1, rows - 1)
    step = wide[k1] - wide[k0] if rows > 1 else np.zeros_like(wide[k0])
    out = wide[k0]                                           # (height, width)
    step *= f[:, None]
    out += step
    return out


def lidar_confidence(shape, uv, residual_rel, cell: int = LIDAR_CELL, tau: float = LIDAR_TAU,
                     support: float = LIDAR_SUPPORT,
                     neutral: Optional[float] = None) -> np.ndarray:
    """Where the LiDAR fit agrees with the depth, spread over the image.

    Each point's agreement is ``soft(residual_rel, tau)`` (1 = the aligned depth matches the
    LiDAR there). Agreements and point counts are summed per ``cell`` x ``cell`` grid cell and
    both smoothed with a 3 x 3 binomial kernel (a normalized convolution over about
    ``3 cell`` px); each cell's confidence is ``(sum_agreement + support * neutral) /
    (sum_count + support)`` (``support`` is the prior weight in points of the neutral value),
    and the grid is upsampled bilinearly from cell centres. Far from every point (no point in
    the 3 x 3 cells around) the confidence is exactly ``neutral``.

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)`` of the depth image.
    uv : array
        ``(M, 2)`` pixel coordinates of the points (``lidar.prepare_points``); points outside
        the image and points with NaN residual are ignored.
    residual_rel : array
        ``(M,)`` relative residuals ``|fit - lidar| / lidar >= 0`` (:func:`lidar_residuals`).
    cell : int
        Grid cell side, pixels (default 16: a 40 x 30 grid at 640 x 480).
    tau : float
        Relative residual at agreement 0.5 (default 0.05 = 5 %).
    support : float
        Prior weight, in points, of ``neutral`` in each cell (default 2).
    neutral : float, optional
        In ``[0, 1]``: the value far from every point. Default: the mean agreement of all
        points of the frame (what the fit says about the frame as a whole), 0.5 without points.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 in ``[0, 1]``; it has no NaN (it does not look at the depth:
        :func:`combine_confidence` puts NaN where the depth is invalid).
    """
    height, width, uv = _points(shape, uv)
    res = np.asarray(residual_rel, dtype=np.float64).reshape(-1)
    if res.size != uv.shape[0]:
        raise QualityError(f'residual_rel must have one value per point: {uv.shape[0]} points, '
                           f'{res.size} residuals')
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or cell < 1:
        raise QualityError(f'cell must be an integer >= 1 (pixels), got {cell!r}')
    tau = _positive('tau', tau)
    support = _positive('support', support)
    with np.errstate(invalid='ignore'):
        if np.any(res < 0):
            raise QualityError('residual_rel must be >= 0 (|fit - lidar| / lidar)')
        u, v = uv[:, 0], uv[:, 1]
        use = np.isfinite(res) & (u > -0.5) & (u < width - 0.5) & (v > -0.5) & (v < height - 0.5)
    agree = soft_threshold(res[use], tau)
    if neutral is None:
        neutral = float(agree.mean()) if agree.size else 0.5
    elif not 0 <= float(neutral) <= 1:
        raise QualityError(f'neutral must be in [0, 1], got {neutral}')
    neutral = float(neutral)
    rows, cols = -(-height // cell), -(-width // cell)
    ci = np.minimum((v[use] + 0.5).astype(np.int64) // cell, rows - 1)
    cj = np.minimum((u[use] + 0.5).astype(np.int64) // cell, cols - 1)
    index = ci * cols + cj
    count = _box3(np.bincount(index, minlength=rows * cols).reshape(rows, cols).astype(float))
    total = _box3(np.bincount(index, agree, rows * cols).reshape(rows, cols))
    grid = (total + support * neutral) / (count + support)
    return _upsample(grid, height, width, int(cell))


# ----------------------------------------------------------------------------------------------
# time

@dataclass
class StabilizerInfo:
    """What :meth:`TemporalStabilizer.update` did with one frame.

    Attributes
    ----------
    scale, shift : float
        The correction applied: ``output = scale * input + shift`` (shift 0 in scale-only mode).
    raw_scale, raw_shift : float
        The robust fit of this input to the previous output (NaN when there was none).
    level : float
        The fit's relative level, ``log`` of (fitted / input) at the input's median: how far,
        in log units, this input sits below the previous output (NaN when no fit).
    agreement : float
        Fraction of the compared pixels within ``agree_tol`` of the previous output after the
        fit (NaN when no fit).
    n_compared : int
        Pixels compared (valid in both, on the ``stride`` subsample).
    reset : bool
        The state was thrown away at this frame (scene cut, stamp jump, new shape): the output
        is the input. True for that one frame; not for the first frame.
    reason : str
        Why it reset, or ``'first frame'``; ``''`` otherwise.
    held : bool
        This frame's level was a gross outlier (off by more than twice ``change_threshold``):
        the output kept the previous output's level.
    followed : bool
        The change detector (CUSUM) fired: a true change; the output jumped to the mean level
        of the inputs since the change began.
    """

    scale: float
    shift: float
    raw_scale: float
    raw_shift: float
    level: float
    agreement: float
    n_compared: int
    reset: bool
    reason: str
    held: bool = False
    followed: bool = False


def _weighted_affine(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Minimise ``sum w ((s x + t - y) / y)^2``; returns ``(s, t)`` (NaN when singular)."""
    a1, a2 = x / y, 1.0 / y
    wa1, wa2 = w * a1, w * a2
    s11, s12, s22 = float(wa1 @ a1), float(wa1 @ a2), float(wa2 @ a2)
    b1, b2 = float(wa1.sum()), float(wa2.sum())
    det = s11 * s22 - s12 * s12
    if not det > 1e-12 * s11 * s22:
        return math.nan, math.nan
    return (b1 * s22 - b2 * s12) / det, (s11 * b2 - s12 * b1) / det


class TemporalStabilizer:
    """Remove per-frame scale (and shift) jitter from one camera's depth stream.

    State: the previous output. Each :meth:`update` fits the new prediction ``x`` to the previous
    output ``y`` on a ``stride`` subsample of the pixels valid in both, in the prediction's own
    space (depth or disparity, whichever is given):

    * scale only (``shift=False``; metric depth, or relative depth / disparity with no shift):
      ``log s`` = mean of ``log(y / x)`` over the pixels within ``agree_tol`` of its median
      (a trimmed mean);
    * scale and shift (``shift=True``; affine-invariant relative disparity or depth):
      ``y ~ s x + t`` by least squares on the relative residual ``(s x + t) / y - 1``, then 5
      IRLS steps with Cauchy weights (scale ``agree_tol``).

    The fit's *level* ``r`` (log of fitted / input at the input's median; ``log s`` in
    scale-only mode) says how far this input sits below the previous output. Let ``g = -r``
    (the input's level relative to the output) and ``c = log(1 + change_threshold)``. A
    one-sided CUSUM pair (Page 1954) accumulates the evidence that the input level moved by
    more than ``c / 2``: ``up = max(0, up + g' - c / 2)``, ``down = max(0, down - g' - c / 2)``,
    with ``g'`` the gap clipped to ``[-2 c, 2 c]`` (so one frame adds at most ``1.5 c``). Then:

    * ``up`` or ``down`` above ``change_frames * c``: a true change, ``followed``. The output
      jumps to the mean level of the inputs since that statistic left 0 (a mean, not the last
      frame, so one frame's jitter is not frozen in), and the EMA restarts from it. A
      persistent change of ``2 c`` (20 % at the defaults) adds ``1.5 c`` per frame and is
      followed at its third frame (``change_frames``), a change of ``c`` after about six, a
      smaller one by the EMA alone. A glitch shorter than ``change_frames - 1`` frames is
      never followed. Measured in ``bench/bench_quality.py`` with 5 % Gaussian level jitter: no
      false follow in 30,000 static frames.
    * otherwise, ``|g| > 2 c``: ``held``, a gross outlier (a glitch, as with the TensorRT scale
      bugs): the output is the input fully aligned to the previous output; it does not move
      the level.
    * otherwise an EMA of the level: the input corrected ``1 - w`` of the way to the previous
      output, ``w = max(1 - smoothing, 1 / (n + 1))`` with ``n`` the inputs averaged since the
      last reset or change (a running mean first, then the EMA): scale-only
      ``exp((1 - w) r) x`` (a geometric EMA), affine ``((1 - w) (s, t) + w (1, 0))``. Under
      i.i.d. level jitter the frame-to-frame spread falls by ``(1 - a) / sqrt(1 + a)``
      (``a`` = smoothing): 6.7x at 0.8.

    Resets (``reset=True`` once, with the reason; the output is the input): fewer than
    ``min_pixels`` pixels to compare, fewer than ``min_agreement`` of them agreeing after the
    fit (a scene cut), a new image shape, a stamp going backwards or a gap over ``max_gap``.

    The stabilizer only removes *global* jitter; it never blends pixels across frames (no
    ghosting of moving objects). On a moving camera the true scale changes too: the EMA lags
    a steady change by ``smoothing / (1 - smoothing)`` frames (4 at 0.8, e.g. 4 % too far
    when approaching a wall at 1 % per frame); lower ``smoothing`` for fast platforms.
    Invalid input pixels (NaN, inf, ``<= 0``, or False in ``valid``) are NaN in the output.
    """

    def __init__(self, shift: bool = False, smoothing: float = 0.8, agree_tol: float = 0.1,
                 min_agreement: float = 0.5, change_threshold: float = 0.1,
                 change_frames: int = 3, stride: int = 4, min_pixels: int = 200,
                 max_gap: float = 1.0) -> None:
        """
        Parameters
        ----------
        shift : bool
            Fit a shift as well as a scale (affine-invariant relative output).
        smoothing : float
            In ``[0, 1)``: the EMA weight of the previous output; 0 = no smoothing.
        agree_tol : float
            Relative difference (``> 0``) within which a pixel agrees with the previous output.
        min_agreement : float
            In ``[0, 1]``: fewer agreeing pixels (fraction) is a scene cut.
        change_threshold : float
            Relative level change ``> 0``: the scale of the change detector (twice it is a
            gross outlier, held; half of it is the CUSUM allowance). Set it to about twice the
            model's per-frame scale jitter.
        change_frames : int
            ``>= 2``: the CUSUM decision limit is ``change_frames * log(1 + change_threshold)``;
            a change of twice ``change_threshold`` is followed after this many frames.
        stride : int
            Fit on every ``stride``-th pixel in each direction (``>= 1``).
        min_pixels : int
            Fewest compared pixels for a fit (``>= 1``); fewer resets.
        max_gap : float
            Seconds (``> 0``); a longer gap between stamps resets.
        """
        if not 0 <= float(smoothing) < 1:
            raise QualityError(f'smoothing must be in [0, 1), got {smoothing}')
        if not 0 <= float(min_agreement) <= 1:
            raise QualityError(f'min_agreement must be in [0, 1], got {min_agreement}')
        for name, value, least in (('change_frames', change_frames, 2), ('stride', stride, 1),
                                   ('min_pixels', min_pixels, 1)):
            if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                    or value < least):
                raise QualityError(f'{name} must be an integer >= {least}, got {value!r}')
        self.shift = bool(shift)
        self.smoothing = float(smoothing)
        self.agree_tol = _positive('agree_tol', agree_tol)
        self.min_agreement = float(min_agreement)
        self.change_threshold = _positive('change_threshold', change_threshold)
        self.change_frames = int(change_frames)
        self.stride = int(stride)
        self.min_pixels = int(min_pixels)
        self.max_gap = _positive('max_gap', max_gap)
        self.reset()

    def reset(self) -> None:
        """Forget the previous output (the next frame starts afresh)."""
        self._output: Optional[np.ndarray] = None
        self._previous: Optional[np.ndarray] = None
        self._stamp: Optional[float] = None
        self._clear_level()

    def _clear_level(self) -> None:
        self._level = 0.0       # the output's log level, relative to the last reset
        self._up = self._down = 0.0             # CUSUM statistics, log units
        self._up_levels: list[float] = []       # input levels since up left 0
        self._down_levels: list[float] = []
        self._count = 1         # inputs averaged into the level since the last reset or change

    @property
    def output(self) -> Optional[np.ndarray]:
        """The latest output (read-only view, valid until the next :meth:`update` but one),
        None before the first frame."""
        return None if self._output is None else self._readonly(self._output)

    @property
    def previous(self) -> Optional[np.ndarray]:
        """The output before the latest one (read-only view, valid until the next
        :meth:`update`): what :func:`temporal_confidence` compares the latest output with.
        None after a reset."""
        return None if self._previous is None else self._readonly(self._previous)

    @staticmethod
    def _readonly(a: np.ndarray) -> np.ndarray:
        view = a.view()
        view.setflags(write=False)
        return view

    def update(self, depth, stamp: float,
               valid: ArrayOrNone = None) -> tuple[np.ndarray, StabilizerInfo]:
        """Stabilize one frame.

        Parameters
        ----------
        depth : array
            ``(H, W)`` prediction: metric depth (metres), relative depth or relative
            disparity; the output is in the same space and unit.
        stamp : float
            The frame's time, seconds.
        valid : array, optional
            ``(H, W)`` bool, False = invalid (NaN in the output, not compared).

        Returns
        -------
        output : np.ndarray
            ``(H, W)`` float32 ``scale * depth + shift``, NaN where invalid. A new array the
            caller may modify (the stabilizer keeps its own copy).
        info : StabilizerInfo
        """
        x = _image('depth', depth)
        bad = _invalid(x)
        if valid is not None:
            valid = np.asarray(valid)
            if valid.shape != x.shape or valid.dtype != bool:
                raise QualityError(f'valid must be a bool array of shape {x.shape}, got '
                                   f'{valid.dtype} {valid.shape}')
            bad |= ~valid
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise QualityError(f'stamp must be finite seconds, got {stamp}')
        reason = ''
        if self._output is None:
            reason = 'first frame'
        elif self._output.shape != x.shape:
            reason = f'image shape changed from {self._output.shape} to {x.shape}'
        elif stamp < self._stamp:
            reason = f'stamp went backwards by {self._stamp - stamp:.3f} s'
        elif stamp - self._stamp > self.max_gap:
            reason = f'gap of {stamp - self._stamp:.3f} s > max_gap {self.max_gap:g} s'
        fit = None if reason else self._fit(x, bad)
        if fit is not None and isinstance(fit, str):
            reason, fit = fit, None
        if fit is None:
            info = StabilizerInfo(1.0, 0.0, math.nan, math.nan, math.nan, math.nan, 0,
                                  reason != 'first frame', reason)
            self._clear_level()
            return self._emit(x, bad, 1.0, 0.0, stamp, info, keep_previous=False)
        raw_s, raw_t, level, agreement, n = fit
        # Log levels: the output was at self._level, this input sits at level_in, the gap is
        # g = -level. CUSUM with allowance c / 2 and the gap clipped to 2 c (at most 1.5 c per
        # frame), so that a glitch shorter than change_frames - 1 frames is never followed.
        level_in = self._level - level
        c = math.log1p(self.change_threshold)
        g = min(max(-level, -2 * c), 2 * c)
        self._up = max(0.0, self._up + g - c / 2)
        self._down = max(0.0, self._down - g - c / 2)
        self._up_levels = self._up_levels + [level_in] if self._up > 0 else []
        self._down_levels = self._down_levels + [level_in] if self._down > 0 else []
        limit = self.change_frames * c
        held = followed = False
        if self._up > limit or self._down > limit:
            followed = True
            levels = self._up_levels if self._up > limit else self._down_levels
            new_level = float(np.mean(levels))
            s, t = math.exp(new_level - level_in), 0.0
            self._up = self._down = 0.0
            self._up_levels, self._down_levels = [], []
            self._count = len(levels)
        elif abs(level) > 2 * c:
            held = True
            new_level = self._level
            s, t = raw_s, raw_t
        else:
            # The input's weight: 1 / (n + 1) while fewer than 1 / (1 - smoothing) inputs
            # make the level (a running mean after a reset or a change), then 1 - smoothing.
            w = max(1.0 - self.smoothing, 1.0 / (self._count + 1))
            self._count += 1
            new_level = self._level - w * level
            if self.shift:
                s, t = (1 - w) * raw_s + w, (1 - w) * raw_t
            else:
                s, t = math.exp((1 - w) * level), 0.0
        self._level = new_level
        info = StabilizerInfo(s, t, raw_s, raw_t, level, agreement, n, False, '', held,
                              followed)
        return self._emit(x, bad, s, t, stamp, info, keep_previous=True)

    def _emit(self, x: np.ndarray, bad: np.ndarray, s: float, t: float, stamp: float,
              info: StabilizerInfo, keep_previous: bool) -> tuple[np.ndarray, StabilizerInfo]:
        out = np.multiply(x, np.float32(s))
        if t:
            out += np.float32(t)
        np.copyto(out, _NAN, where=bad)
        # The state keeps its own copy, in the buffer of the output two frames back when it
        # fits (a fresh large array costs page faults): views from ``previous`` are valid
        # until the next update.
        spare = self._previous
        self._previous = self._output if keep_previous else None
        if spare is None or spare.shape != out.shape:
            spare = np.empty_like(out)
        np.copyto(spare, out)
        self._output = spare
        self._stamp = stamp
        return out, info

    def _fit(self, x: np.ndarray, bad: np.ndarray):
        """``(raw_s, raw_t, level, agreement, n)``, or the reason to reset (a str)."""
        k = self.stride
        xs = x[::k, ::k].astype(np.float64)
        ys = self._output[::k, ::k].astype(np.float64)
        with np.errstate(invalid='ignore'):
            use = ~bad[::k, ::k] & (ys > 0) & (ys < np.inf)
        xs, ys = xs[use], ys[use]
        n = int(xs.size)
        if n < self.min_pixels:
            return (f'too few valid pixels to compare with the previous output: {n} < '
                    f'min_pixels {self.min_pixels} (stride {k})')
        tol = math.log1p(self.agree_tol)
        log_ratio = np.log(ys / xs)
        med = float(np.median(log_ratio))
        if not self.shift:
            agree = np.abs(log_ratio - med) < tol
            frac = float(np.count_nonzero(agree)) / n
            if frac < self.min_agreement:
                return self._cut(frac)
            level = float(log_ratio[agree].mean())
            return math.exp(level), 0.0, level, frac, n
        s, t = _weighted_affine(xs, ys, np.ones_like(xs))
        for _ in range(5):
            if not math.isfinite(s):
                break
            r = (s * xs + t) / ys - 1.0
            r *= 1.0 / self.agree_tol
            s_new, t_new = _weighted_affine(xs, ys, 1.0 / (1.0 + r * r))
            if not math.isfinite(s_new):
                break
            s, t = s_new, t_new
        if not (math.isfinite(s) and s > 0):
            s, t = math.exp(med), 0.0      # no usable affine fit: fall back to the scale
        fitted = s * xs + t
        frac = float(np.count_nonzero(np.abs(fitted / ys - 1.0) < self.agree_tol)) / n
        if frac < self.min_agreement:
            return self._cut(frac)
        m = float(np.median(xs))
        level = math.log((s * m + t) / m) if (s * m + t) > 0 else med
        return s, t, level, frac, n

    def _cut(self, frac: float) -> str:
        return (f'scene cut: {frac:.0%} of the pixels agree with the previous output after '
                f'alignment (< min_agreement {self.min_agreement:.0%}, agree_tol '
                f'{self.agree_tol:g})')


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
    cur = _image('current', current)
    tau = _positive('tau', tau)
    radius = _window_radius(window, smallest=1)
    if not 0 <= float(unknown) <= 1:
        raise QualityError(f'unknown must be in [0, 1], got {unknown}')
    cur_bad = _invalid(cur)
    if previous is None:
        out = np.full(cur.shape, np.float32(unknown))
    else:
        prev = _image('previous', previous)
        if prev.shape != cur.shape:
            raise QualityError(f'previous must have the shape of current {cur.shape}, got '
                               f'{prev.shape}')
        with np.errstate(divide='ignore', invalid='ignore'):
            change = np.divide(cur, prev)
            np.log(change, out=change)
        np.copyto(change, _NAN, where=np.isinf(change))
        prev_bad = np.isnan(change)         # NaN, inf or <= 0 in either image (cur: below)
        sample = change[::4, ::4]
        sample = sample[np.isfinite(sample)]
        if sample.size:                     # the global level change is the stabilizer's job
            change -= np.float32(np.median(sample))
        np.abs(change, out=change)
        if radius:
            rows = _filter_rows(change, radius, np.fmax)
            out = _filter_cols(rows, radius, np.fmax, out=change)
        else:
            out = change
        soft_threshold(out, math.log1p(tau), out=out)
        np.copyto(out, np.float32(unknown), where=prev_bad)
    np.copyto(out, _NAN, where=cur_bad)
    return out


# ----------------------------------------------------------------------------------------------
# combination

def normalize_model_confidence(conf, mode: str = 'median') -> np.ndarray:
    """A model's own confidence map, any range, to ``[0, 1]`` (1 = trust).

    Modes
    -----
    ``'median'`` (default; any non-negative range, unknown scale)
        ``c / (c + m)`` with ``m`` the median of the frame's finite positive values (on every
        4th pixel each way): 0.5 at the frame's median, scale-free, monotone. Per frame, so it
        ranks pixels within a frame; it cannot say a whole frame is bad.
    ``'expp1'`` (Depth Anything 3 ``depth_conf``, VGGT, DUSt3R: ``c = 1 + exp(l)``)
        ``1 - 1 / c`` = ``sigmoid(l)``, the logit's own probability; values ``< 1`` give 0.
    ``'sigmoid'`` (raw logits)
        ``1 / (1 + exp(-c))``.
    ``'unit'`` (already a probability)
        clipped to ``[0, 1]``.

    NaN stays NaN. Returns ``(H, W)`` float32.
    """
    if mode not in _MODEL_MODES:
        raise QualityError(f'model confidence mode must be one of {_MODEL_MODES}, got {mode!r}')
    c = _image('model confidence', conf)
    if mode == 'median':
        sample = c[::4, ::4]
        with np.errstate(invalid='ignore'):
            sample = sample[(sample > 0) & (sample < np.inf)]
        m = np.float32(np.median(sample)) if sample.size else np.float32(1.0)
        with np.errstate(invalid='ignore'):
            out = np.maximum(c, 0)
        den = out + m
        with np.errstate(invalid='ignore', divide='ignore'):
            out /= den
        np.copyto(out, np.float32(1.0), where=np.isinf(c) & (c > 0))
        return out
    if mode == 'expp1':
        with np.errstate(divide='ignore', invalid='ignore'):
            out = np.maximum(c, 1)
            np.reciprocal(out, out=out)
        return np.subtract(1, out, out=out)
    if mode == 'sigmoid':
        with np.errstate(over='ignore'):
            out = np.negative(c)
            np.exp(out, out=out)
        out += 1
        return np.reciprocal(out, out=out)
    with np.errstate(invalid='ignore'):
        return np.clip(c, 0, 1)


def combine_confidence(cues: Mapping[str, Union[np.ndarray, None]], depth: ArrayOrNone = None,
                       weights: Optional[Mapping[str, float]] = None, model_key: str = 'model',
                       model_mode: str = 'median') -> np.ndarray:
    """One confidence from the enabled cues: their weighted geometric mean.

    ``exp(sum_i w_i log c_i / sum_i w_i)``. Why the geometric mean: it ranks pixels exactly as
    the product (an AND of independent cues: the same sparsification and AUSE), any cue near 0
    still vetoes the pixel, and unlike the product its scale does not sink as cues are added,
    so a downstream threshold (e.g. costmap gating at 0.5) keeps its meaning when a cue is
    switched on or off, and all cues at 0.5 give 0.5.

    Parameters
    ----------
    cues : dict
        name -> ``(H, W)`` array in ``[0, 1]`` (the functions of this module give that), or
        None for a disabled cue (skipped). The cue named ``model_key`` is the model's own
        confidence in any range, normalised by :func:`normalize_model_confidence` with
        ``model_mode``.
    depth : array, optional
        ``(H, W)`` depth; the result is NaN where it is invalid (NaN, inf, ``<= 0``). Any NaN
        in an enabled cue is NaN in the result too.
    weights : dict, optional
        name -> weight ``> 0`` (default 1 each); names not among the cues are an error.
    model_key, model_mode : str
        See ``cues``.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 in ``[0, 1]``; all ones (NaN where depth is invalid) when no cue is
        enabled.
    """
    if not isinstance(cues, Mapping):
        raise QualityError(f'cues must be a dict name -> array or None, got {type(cues)}')
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(cues))
    if unknown:
        raise QualityError(f'weights for cues that are not given: {unknown}')
    enabled = {}
    for name, cue in cues.items():
        if cue is None:
            continue
        a = _image(f'cue {name!r}', cue)
        if name == model_key:
            a = normalize_model_confidence(a, model_mode)
        enabled[name] = (a, _positive(f'weight of {name!r}', weights.get(name, 1.0)))
    d = _image('depth', depth, allow_none=True)
    shapes = {a.shape for a, _ in enabled.values()} | ({d.shape} if d is not None else set())
    if len(shapes) > 1:
        raise QualityError(f'cues and depth must share one (H, W) shape, got {sorted(shapes)}')
    if not shapes:
        raise QualityError('no cue enabled and no depth: nothing to give a shape')
    shape = shapes.pop()
    if not enabled:
        out = np.ones(shape, dtype=np.float32)
    else:
        total = sum(w for _, w in enabled.values())
        equal = len({w for _, w in enabled.values()}) == 1
        out = None
        with np.errstate(divide='ignore', invalid='ignore'):
            for a, w in enabled.values():
                if equal:                   # the product, then one log: fewer passes
                    out = a.copy() if out is None else np.multiply(out, a, out=out)
                else:
                    term = np.log(a)
                    term *= np.float32(w / total)
                    out = term if out is None else np.add(out, term, out=out)
            if equal:
                if len(enabled) > 1:
                    np.log(out, out=out)
                    out *= np.float32(1.0 / len(enabled))
                    np.exp(out, out=out)
            else:
                np.exp(out, out=out)
    if d is not None:
        np.copyto(out, _NAN, where=_invalid(d))
    return out


# ----------------------------------------------------------------------------------------------
# scoring a confidence

def _scored(error, confidence) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(error, dtype=np.float64).reshape(-1)
    c = np.asarray(confidence, dtype=np.float64)
    if c.shape != np.shape(error):
        raise QualityError(f'error and confidence must have the same shape, got '
                           f'{np.shape(error)} and {c.shape}')
    c = c.reshape(-1)
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
        Per-pixel error ``>= 0`` (e.g. ``|pred - gt| / gt``), any shape.
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
