"""The LiDAR cue: :func:`lidar_residuals` samples the aligned depth at the LiDAR points
(relative residuals), and :func:`lidar_confidence` spreads each point's agreement
``soft(residual, tau)`` over the image: summed on a coarse grid (:data:`LIDAR_CELL` pixels a
cell), smoothed by a 3 x 3 binomial normalized convolution with a neutral prior
(:data:`LIDAR_SUPPORT` points), and upsampled bilinearly from the cell centres.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np

from depth_node.arrays import (
    Array, as_array, asarray, astype, clip, full, is_tensor, namespace, nonzero, put_where,
    sum_by_index)
from depth_node.quality.common import (
    image, invalid, location, positive, QualityError, soft_threshold)

__all__ = ['LIDAR_CELL', 'LIDAR_SUPPORT', 'LIDAR_TAU', 'lidar_confidence', 'lidar_residuals']


#: Cell size of the :func:`lidar_confidence` grid, pixels.
LIDAR_CELL = 16
#: Relative LiDAR residual ``|fit - lidar| / lidar`` at which a point's agreement is 0.5.
LIDAR_TAU = 0.05
#: Prior weight, in points, of the neutral value in each :func:`lidar_confidence` cell.
LIDAR_SUPPORT = 2.0


def _points(shape, uv, like: Array, name: str = 'uv') -> tuple[int, int, Array]:
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise QualityError(f'shape must be (H, W), got {shape!r}') from None
    if height < 1 or width < 1:
        raise QualityError(f'shape must be positive (H, W), got {shape!r}')
    uv = asarray(uv, like=like, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise QualityError(f'{name} must be (M, 2) pixel coordinates (u, v), got shape '
                           f'{tuple(uv.shape)}')
    return height, width, uv


def lidar_residuals(depth, uv, z) -> Array:
    """Relative residuals ``|depth - z| / z`` of an aligned depth map at LiDAR points.

    Parameters
    ----------
    depth : array
        ``(H, W)`` metric depth after the LiDAR fit (``Alignment.depth``), metres; numpy, or a
        tensor on any device.
    uv : array
        ``(M, 2)`` pixel coordinates of the points in that image (``lidar.prepare_points``);
        sampled at the nearest pixel. Brought to ``depth``'s kind and device.
    z : array
        ``(M,)`` LiDAR depths along the optical axis, metres; likewise.

    Returns
    -------
    array
        ``(M,)`` float32 ``>= 0`` of ``depth``'s kind and device; NaN where the point is
        outside the image, ``z`` is not positive or the depth there is invalid.
    """
    depth = image('depth', depth)
    height, width, uv = _points(depth.shape, uv, depth)
    z = asarray(z, like=depth, dtype=np.float32).reshape(-1)
    if z.shape[0] != uv.shape[0]:
        raise QualityError(f'z must have one depth per point: {uv.shape[0]} points, '
                           f'{z.shape[0]} depths')
    xp = namespace(depth)
    with np.errstate(invalid='ignore'):
        col = xp.round(uv[:, 0])        # half to even, as np.rint
        row = xp.round(uv[:, 1])
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    with np.errstate(invalid='ignore', divide='ignore'):
        index = astype(xp.where(inside, row * width + col, 0), np.int64)
        d = depth.reshape(-1)[index]
        out = xp.abs(d - z) / z
        put_where(out, ~inside | ~(z > 0) | invalid(d), math.nan)
    return out


def _box3(grid: Array) -> Array:
    """3 x 3 binomial sum ([1, 2, 1] each way, not normalised), zero outside."""
    rows, cols = grid.shape
    g = full((rows + 2, cols + 2), 0, grid.dtype, like=grid)
    g[1:-1, 1:-1] = grid
    g = g[:-2] + 2 * g[1:-1] + g[2:]
    return g[:, :-2] + 2 * g[:, 1:-1] + g[:, 2:]


@functools.lru_cache(maxsize=16)
def _axis_weights(size: int, cells: int, cell: int, where: str = 'numpy') -> tuple:
    """Bilinear interpolation from cell centres (``(k + 0.5) cell - 0.5`` px) to pixels of one
    axis: ``(k0, k1, frac)``; beyond the outer centres the edge cell's value holds. numpy
    (read-only), or tensors on the torch device ``where`` (:func:`location`)."""
    if where != 'numpy':
        import torch
        return tuple(torch.from_numpy(a.copy()).to(where)
                     for a in _axis_weights(size, cells, cell))
    pos = np.clip((np.arange(size) + 0.5) / cell - 0.5, 0, cells - 1)
    k0 = np.minimum(pos.astype(np.int64), max(cells - 2, 0))
    k1 = np.minimum(k0 + 1, cells - 1)
    frac = (pos - k0).astype(np.float32)
    for a in (k0, k1, frac):
        a.setflags(write=False)
    return k0, k1, frac


def _upsample(grid: Array, height: int, width: int, cell: int) -> Array:
    """Bilinear ``(rows, cols)`` grid -> ``(height, width)`` float32: columns first on the
    small grid, then whole rows (contiguous copies)."""
    rows, cols = grid.shape
    g = astype(grid, np.float32)
    k0, k1, f = _axis_weights(width, cols, cell, location(grid))
    wide = g[:, k0] + (g[:, k1] - g[:, k0]) * f            # (rows, width), small
    k0, k1, f = _axis_weights(height, rows, cell, location(grid))
    step = wide[k1] - wide[k0] if rows > 1 else namespace(wide).zeros_like(wide[k0])
    out = wide[k0]                                           # (height, width)
    step *= f[:, None]
    out += step
    return out


def lidar_confidence(shape, uv, residual_rel, cell: int = LIDAR_CELL, tau: float = LIDAR_TAU,
                     support: float = LIDAR_SUPPORT,
                     neutral: Optional[float] = None) -> Array:
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
        The result is of its kind and device when it is a tensor, else of ``uv``'s (a tensor
        ``uv`` with numpy residuals gives a tensor too).
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
    array
        ``(H, W)`` float32 in ``[0, 1]``; it has no NaN (it does not look at the depth:
        :func:`combine_confidence` puts NaN where the depth is invalid).
    """
    like = residual_rel if is_tensor(residual_rel) else as_array(uv)
    height, width, uv = _points(shape, uv, like)
    res = asarray(residual_rel, like=like, dtype=np.float64).reshape(-1)
    if res.shape[0] != uv.shape[0]:
        raise QualityError(f'residual_rel must have one value per point: {uv.shape[0]} points, '
                           f'{res.shape[0]} residuals')
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or cell < 1:
        raise QualityError(f'cell must be an integer >= 1 (pixels), got {cell!r}')
    tau = positive('tau', tau)
    support = positive('support', support)
    xp = namespace(res)
    with np.errstate(invalid='ignore'):
        if bool((res < 0).any()):
            raise QualityError('residual_rel must be >= 0 (|fit - lidar| / lidar)')
        u, v = uv[:, 0], uv[:, 1]
        use = xp.isfinite(res) & (u > -0.5) & (u < width - 0.5) & (v > -0.5) & (v < height - 0.5)
    use = nonzero(use)              # one device sync (a count), then three gathers
    agree = soft_threshold(res[use], tau)
    if neutral is None:             # a 0-d array: no host round trip
        neutral = agree.mean() if agree.shape[0] else 0.5
    elif not 0 <= float(neutral) <= 1:
        raise QualityError(f'neutral must be in [0, 1], got {neutral}')
    else:
        neutral = float(neutral)
    rows, cols = -(-height // cell), -(-width // cell)
    ci = clip(astype(v[use] + 0.5, np.int64) // cell, None, rows - 1)
    cj = clip(astype(u[use] + 0.5, np.int64) // cell, None, cols - 1)
    index = ci * cols + cj
    ones = full(index.shape, 1.0, np.float64, like=agree)
    count = _box3(sum_by_index(index, ones, rows * cols).reshape(rows, cols))
    total = _box3(sum_by_index(index, agree, rows * cols).reshape(rows, cols))
    grid = (total + support * neutral) / (count + support)
    return _upsample(grid, height, width, int(cell))
