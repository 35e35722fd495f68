"""The LiDAR cue: :func:`lidar_residuals` samples the aligned depth at the LiDAR points
(relative residuals), and :func:`lidar_confidence` spreads each point's agreement
``soft(residual, tau)`` over the image: summed on a coarse grid (:data:`LIDAR_CELL` pixels a
cell), smoothed by a 3 x 3 binomial normalized convolution with a neutral prior
(:data:`LIDAR_SUPPORT` points), and upsampled bilinearly from the cell centres.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from depth_node.quality.common import image, invalid, positive, QualityError, soft_threshold

__all__ = ['LIDAR_CELL', 'LIDAR_SUPPORT', 'LIDAR_TAU', 'lidar_confidence', 'lidar_residuals']


#: Cell size of the :func:`lidar_confidence` grid, pixels.
LIDAR_CELL = 16
#: Relative LiDAR residual ``|fit - lidar| / lidar`` at which a point's agreement is 0.5.
LIDAR_TAU = 0.05
#: Prior weight, in points, of the neutral value in each :func:`lidar_confidence` cell.
LIDAR_SUPPORT = 2.0


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
    depth = image('depth', depth)
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
        out[~inside | ~(z > 0) | invalid(d)] = np.nan
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
    tau = positive('tau', tau)
    support = positive('support', support)
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
