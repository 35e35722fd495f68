"""Metric depth from a network's prediction and sparse LiDAR depth.

ROS-free. Per frame, :class:`Aligner` samples the prediction at the LiDAR pixels (from
:func:`depth_node.lidar.prepare_points`), fits the prediction to the LiDAR depths robustly
(:func:`fit_global`), smooths the fit over frames, optionally adds a smooth spatially varying
correction, and returns a dense depth image in metres along the optical axis (NaN = invalid).

The fit itself, its settings and its result are in :mod:`depth_node.robust_fit`
(``AlignerConfig``, ``AlignmentError``, ``FitResult`` and ``fit_global`` are re-exported here).

The per-frame work (sampling, fit, applying it) is written once against
:mod:`depth_node.arrays`: it runs on numpy arrays, or on ``torch.Tensor`` s on the device of
the prediction (a model on CUDA keeps its frame there), with the same random samples (drawn on
the host) and the same results to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import math
from typing import Optional

import numpy as np

from depth_node import arrays
from depth_node.arrays import Array
from depth_node.robust_fit import (  # noqa: F401 - the fit's names, re-exported
    AlignerConfig, AlignmentError, fit_global, FitResult)

_LOCAL_MAX_LOG_RATIO = math.log(2.0)  # points off the global fit by more are not used locally


def sample_prediction(prediction: Array, uv: Array, mode: str = 'bilinear') -> Array:
    """Prediction values at pixel coordinates, NaN-aware.

    Parameters
    ----------
    prediction : np.ndarray or torch.Tensor
        ``(H, W)`` image. A tensor is sampled on its device (``uv`` is moved there).
    uv : np.ndarray or torch.Tensor
        ``(M, 2)`` pixel coordinates (pixel centres at integers); clamped to the image.
    mode : str
        ``'bilinear'``: NaN where the nearest pixel is NaN; otherwise NaN neighbours are left out
        and the weights of the others renormalised. ``'nearest'``: the nearest pixel.

    Returns
    -------
    np.ndarray or torch.Tensor
        ``(M,)`` float64, of ``prediction``'s kind and device. Bilinear sampling costs one
        device sync on a GPU (finding the samples next to a NaN).
    """
    img = arrays.as_array(prediction)
    xp = arrays.namespace(img)
    if img.ndim != 2:
        raise AlignmentError(f'prediction must be (H, W), got shape {tuple(img.shape)}')
    if not arrays.is_floating(img):
        img = arrays.astype(img, np.float64)
    uv = arrays.astype(arrays.asarray(uv, like=img), np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise AlignmentError(f'uv must be (M, 2), got shape {tuple(uv.shape)}')
    height, width = img.shape
    flat = img.reshape(-1)
    u = xp.clip(uv[:, 0], 0, width - 1)
    v = xp.clip(uv[:, 1], 0, height - 1)
    if mode == 'nearest':
        index = (arrays.astype(xp.round(v), np.int64) * width
                 + arrays.astype(xp.round(u), np.int64))
        return arrays.astype(flat[index], np.float64)
    if mode != 'bilinear':
        raise AlignmentError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    u0 = arrays.clip(arrays.astype(u, np.int64), None, max(width - 2, 0))
    v0 = arrays.clip(arrays.astype(v, np.int64), None, max(height - 2, 0))
    fu, fv = u - u0, v - v0
    du = 1 if width > 1 else 0
    dv = width if height > 1 else 0
    i00 = v0 * width + u0
    f00, f01 = flat[i00], flat[i00 + du]
    f10, f11 = flat[i00 + dv], flat[i00 + dv + du]
    with arrays.errstate(uv, invalid='ignore'):  # inf - inf in a neighbourhood: handled below
        top = f00 + fu * (f01 - f00)
        out = top + fv * (f10 + fu * (f11 - f10) - top)
    bad = arrays.nonzero(~xp.isfinite(out))
    if bad.shape[0]:  # a neighbour is NaN (or inf): renormalise over the finite ones
        vals = arrays.astype(arrays.stack([f00[bad], f01[bad], f10[bad], f11[bad]]),
                             np.float64)
        gu, gv = fu[bad], fv[bad]
        weights = arrays.stack([(1 - gu) * (1 - gv), gu * (1 - gv), (1 - gu) * gv, gu * gv])
        finite = xp.isfinite(vals)
        nearest_finite = finite[xp.argmax(weights, axis=0),
                                arrays.arange(0, bad.shape[0], 1, np.int64, like=bad)]
        weights = xp.where(finite, weights, 0.0)
        with arrays.errstate(uv, invalid='ignore', divide='ignore'):
            fixed = (xp.where(finite, vals, 0.0) * weights).sum(axis=0) / weights.sum(axis=0)
        out[bad] = xp.where(nearest_finite, fixed, math.nan)
    return out


def _depth_limits(depth: Array, min_depth: float, max_depth: float) -> Array:
    """NaN where ``depth`` is outside ``[min_depth, max_depth]`` (in place; returns it)."""
    with arrays.errstate(depth, invalid='ignore'):
        bad = depth < _float32(min_depth)
        bad |= depth > _float32(max_depth)
    arrays.put_where(depth, bad, math.nan)
    return depth


def _float32(value: float) -> float:
    """``value`` rounded to float32, as a Python float: a scalar that numpy and torch both
    apply to float32 arrays exactly as ``np.float32(value)``."""
    return float(np.float32(value))


def disparity_to_depth(disp: Array, scale: float, shift: float, min_depth: float,
                       max_depth: float) -> Array:
    """Depth ``1 / (scale * disp + shift)`` in metres, float32, of ``disp``'s kind and device.

    Pixels where the fitted disparity is ``<= 0`` or NaN, or the depth falls outside
    ``[min_depth, max_depth]`` (sky, trained toward zero disparity, lands here), are NaN.
    """
    x = arrays.astype(arrays.as_array(disp), np.float32) * _float32(scale)
    x += _float32(shift)
    with arrays.errstate(x, divide='ignore'):
        arrays.namespace(x).reciprocal(x, out=x)
    return _depth_limits(x, min_depth, max_depth)


@dataclass
class Alignment:
    """One frame's result from :meth:`Aligner.align`.

    Attributes
    ----------
    depth : np.ndarray or torch.Tensor or None
        ``(H, W)`` float32 metres along the optical axis, NaN where invalid, of the
        prediction's kind and device; None when no fit could be applied.
    state : str
        ``'ok'`` (fitted this frame), ``'stale'`` (reused the last fit, younger than
        ``max_fit_age``) or ``'no_fit'``.
    fit : FitResult or None
        This frame's raw fit; None when the frame had no LiDAR points.
    scale, shift : float
        The smoothed parameters applied (NaN when none).
    fit_age : float
        Seconds since the frame of the applied fit (0 when fitted this frame, NaN when none).
    n_projected : int
        LiDAR points given for this frame.
    local_correction : np.ndarray or None
        ``(rows, cols)`` log depth factors applied by the ``'local'`` fit (None for global).
    """

    depth: Optional[Array]
    state: str
    fit: Optional[FitResult]
    scale: float
    shift: float
    fit_age: float
    n_projected: int
    local_correction: Optional[np.ndarray] = None


@functools.lru_cache(maxsize=16)
def _interpolation_segments(size: int, cells: int) -> tuple:
    """Linear interpolation from cell centres to the pixels of one axis, as segments.

    Cell centres sit at ``(k + 0.5) * size / cells - 0.5`` pixels; beyond the outer centres the
    edge cell's value holds. Returns ``(start, stop, k0, k1, frac)`` per run of pixels between
    the same two cells: ``value = cell[k0] + frac * (cell[k1] - cell[k0])``.
    """
    pos = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    k0 = np.minimum(pos.astype(np.int64), max(cells - 2, 0))
    frac = (pos - k0).astype(np.float32)
    frac.setflags(write=False)
    bounds = [0, *(np.flatnonzero(np.diff(k0)) + 1).tolist(), size]
    return tuple((a, b, int(k0[a]), min(int(k0[a]) + 1, cells - 1), frac[a:b])
                 for a, b in zip(bounds[:-1], bounds[1:]))


def _upsample(grid: Array, height: int, width: int) -> Array:
    """Bilinear ``(rows, cols)`` -> ``(height, width)`` float32 from cell centres, of ``grid``'s
    kind and device.

    Broadcast per segment rather than a matrix product: OpenBLAS wakes its threads for the
    product, which costs milliseconds when the cores are busy.
    """
    xp = arrays.namespace(grid)
    g = arrays.astype(grid, np.float32)
    by_row = arrays.empty((height, g.shape[1]), np.float32, like=g)
    for a, b, k0, k1, frac in _segments(height, g.shape[0], g):
        by_row[a:b] = g[k0] + frac[:, None] * (g[k1] - g[k0])
    out = arrays.empty((height, width), np.float32, like=g)
    for a, b, k0, k1, frac in _segments(width, g.shape[1], g):
        left = by_row[:, k0, None]
        xp.multiply(by_row[:, k1, None] - left, frac, out=out[:, a:b])
        out[:, a:b] += left
    return out


def _segments(size: int, cells: int, like: Array) -> tuple:
    """:func:`_interpolation_segments` with the fractions on ``like``'s device."""
    if not arrays.is_tensor(like):
        return _interpolation_segments(size, cells)
    return _interpolation_segments_on(size, cells, arrays.location(like))


@functools.lru_cache(maxsize=16)
def _interpolation_segments_on(size: int, cells: int, device: str) -> tuple:
    """:func:`_interpolation_segments` with the fractions uploaded to ``device``, once."""
    return tuple((a, b, k0, k1, arrays.to_device(frac, device))
                 for a, b, k0, k1, frac in _interpolation_segments(size, cells))


def _smooth_grid(grid: np.ndarray) -> np.ndarray:
    """3 x 3 binomial ([1, 2, 1] / 4 each way) smoothing with replicated edges."""
    g = np.pad(grid, 1, mode='edge')
    g = (g[:-2] + 2 * g[1:-1] + g[2:]) / 4
    return (g[:, :-2] + 2 * g[:, 1:-1] + g[:, 2:]) / 4


class Aligner:
    """Turn per-frame predictions into metric depth with LiDAR, consistently over time.

    Per frame: fit (:func:`fit_global`), smooth ``(s, t)`` over frames, and apply.

    Smoothing: the applied ``(s, t)`` is an exponential moving average of good fits. The past's
    weight is ``smoothing * q_past / (smoothing * q_past + (1 - smoothing) * q_new)`` with ``q``
    the fit quality (:attr:`FitResult.quality`), so a poor fit moves the estimate less. The
    smoother restarts at the new fit when the scale changes by more than ``reset_jump``
    (relative), when the last good fit is older than ``max_fit_age`` (including a stamp jumping
    far forward), and on :meth:`reset` or a stamp going backwards (a bag looping).

    Without a good fit this frame the last smoothed fit is reused while younger than
    ``max_fit_age`` (state ``'stale'``), else the frame has no depth (``'no_fit'``).

    ``fit='local'``: after the global fit, the log-ratio ``log(z_lidar / z_global)`` of the points
    (those within a factor of 2) is averaged robustly (Huber) per cell of a ``local_grid``;
    cells with fewer than ``local_min_points`` points get 0 (the global fit), the grid is
    smoothed (3 x 3 binomial) and upsampled bilinearly, and depth is multiplied by
    ``exp(correction)``. The correction is multiplicative in depth (equivalently, divides the
    disparity), so it keeps the sign of depth and reads as a relative error. It is computed
    against this frame's raw global fit, smoothed over frames like ``(s, t)`` and reused with
    it on stale frames.

    The per-frame work runs where the prediction is: numpy on the CPU, or a ``torch.Tensor``
    on its device (a model on CUDA); the fit's parameters, the smoother and the local grid are
    host values either way.
    """

    def __init__(self, config: AlignerConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget all past fits."""
        self._scale = math.nan
        self._shift = math.nan
        self._quality = 0.0
        self._grid: Optional[np.ndarray] = None
        self._fit_stamp: Optional[float] = None
        self._last_stamp: Optional[float] = None

    def align(self, prediction: Array, uv: Optional[Array], z: Optional[Array],
              stamp: float) -> Alignment:
        """Metric depth for one frame.

        Parameters
        ----------
        prediction : np.ndarray or torch.Tensor
            ``(H, W)`` float prediction: relative disparity or metric depth per
            ``config.space``. A tensor keeps the work on its device.
        uv, z : np.ndarray or torch.Tensor, or None
            ``(M, 2)`` pixel coordinates in the prediction's grid and ``(M,)`` depths in metres
            (from :func:`depth_node.lidar.prepare_points`, on the prediction's device or
            uploaded there); None or empty when no scan was paired with this frame.
        stamp : float
            The frame's time, seconds.

        Returns
        -------
        Alignment
            Its ``depth`` is of ``prediction``'s kind and device; the other fields are host
            values. On a GPU a fitted frame costs 11 device syncs plus one per IRLS iteration
            (at most 6; see :func:`fit_global`, :func:`sample_prediction`), three more for
            ``fit='local'``, one more for each of ``uv`` and ``z`` given as numpy.
        """
        cfg = self.config
        pred = arrays.as_array(prediction)
        if pred.ndim != 2:
            raise AlignmentError(f'prediction must be (H, W), got shape {tuple(pred.shape)}')
        stamp = float(stamp)
        if self._last_stamp is not None and stamp < self._last_stamp:
            self.reset()
        self._last_stamp = stamp

        fit = None
        n_projected = 0
        if uv is not None and z is not None and len(z) > 0:
            uv = arrays.asarray(uv, like=pred)
            z = arrays.asarray(z, like=pred)
            n_projected = int(z.shape[0])
            if tuple(uv.shape) != (n_projected, 2) or z.ndim != 1:
                raise AlignmentError(f'uv must be (M, 2) and z (M,), got {tuple(uv.shape)} and '
                                     f'{tuple(z.shape)}')
            samples = sample_prediction(pred, uv)
            fit = fit_global(samples, z, cfg, uv=uv, shape=tuple(pred.shape))
            if fit.ok:
                grid = None
                if cfg.fit == 'local':
                    grid = self._local_grid(samples, z, uv, tuple(pred.shape), fit)
                self._update(fit, grid, stamp)

        if fit is not None and fit.ok:
            state, age = 'ok', 0.0
        elif self._fit_stamp is not None and stamp - self._fit_stamp <= cfg.max_fit_age:
            state, age = 'stale', stamp - self._fit_stamp
        else:
            return Alignment(None, 'no_fit', fit, math.nan, math.nan, math.nan, n_projected)
        depth = self._apply(pred)
        return Alignment(depth, state, fit, self._scale, self._shift, age, n_projected,
                         None if self._grid is None else self._grid.copy())

    def _update(self, fit: FitResult, grid: Optional[np.ndarray], stamp: float) -> None:
        cfg = self.config
        q = fit.quality
        blend = (self._fit_stamp is not None and cfg.smoothing > 0
                 and stamp - self._fit_stamp <= cfg.max_fit_age
                 and abs(fit.scale / self._scale - 1.0) <= cfg.reset_jump)
        if blend:
            past = cfg.smoothing * self._quality
            a = past / (past + (1 - cfg.smoothing) * q) if past > 0 else 0.0
            self._scale = a * self._scale + (1 - a) * fit.scale
            self._shift = a * self._shift + (1 - a) * fit.shift
            self._quality = a * self._quality + (1 - a) * q
            if grid is not None and self._grid is not None:
                grid = a * self._grid + (1 - a) * grid
            self._grid = grid
        else:
            self._scale, self._shift, self._quality, self._grid = \
                fit.scale, fit.shift, q, grid
        self._fit_stamp = stamp

    def _apply(self, pred: Array) -> Array:
        cfg = self.config
        xp = arrays.namespace(pred)
        if self._grid is None:
            if cfg.space == 'disparity':
                return disparity_to_depth(pred, self._scale, self._shift, cfg.min_depth,
                                          cfg.max_depth)
            depth = arrays.astype(pred, np.float32) * _float32(self._scale)
            depth += _float32(self._shift)
            return _depth_limits(depth, cfg.min_depth, cfg.max_depth)
        factor = _upsample(arrays.asarray(np.exp(self._grid), like=pred), *pred.shape)
        if cfg.space == 'disparity':
            x = arrays.astype(pred, np.float32) * _float32(self._scale)
            x += _float32(self._shift)
            with arrays.errstate(x, divide='ignore'):
                depth = xp.divide(factor, x, out=factor)
            # 1/x for x <= 0 is negative or inf; factor > 0 keeps it out of range.
        else:
            depth = arrays.astype(pred, np.float32) * _float32(self._scale)
            depth += _float32(self._shift)
            depth *= factor
        return _depth_limits(depth, cfg.min_depth, cfg.max_depth)

    def _local_grid(self, samples: Array, z: Array, uv: Array, shape: tuple[int, int],
                    fit: FitResult) -> np.ndarray:
        """Smoothed ``(rows, cols)`` log-correction of depth relative to this frame's fit (a host
        array; on a GPU, the kept points' count and the cell means cost two device syncs)."""
        cfg = self.config
        xp = arrays.namespace(samples)
        rows, cols = cfg.local_grid
        height, width = shape
        fitted = fit.scale * samples + fit.shift
        with arrays.errstate(samples, divide='ignore', invalid='ignore'):
            if cfg.space == 'disparity':
                log_ratio = xp.log(z * fitted)        # log(z / z_fit), z_fit = 1 / fitted
            else:
                log_ratio = xp.log(z / fitted)
        use, _ = arrays.selector(xp.abs(log_ratio) < _LOCAL_MAX_LOG_RATIO)    # False for NaN
        log_ratio = log_ratio[use]
        ci = arrays.clip(arrays.astype(uv[use, 1] * (rows / height), np.int64), None,
                         rows - 1)
        cj = arrays.clip(arrays.astype(uv[use, 0] * (cols / width), np.int64), None,
                         cols - 1)
        cell = ci * cols + cj
        n_cells = rows * cols
        counts = arrays.sum_by_index(cell, xp.ones_like(log_ratio), n_cells)
        with arrays.errstate(samples, invalid='ignore', divide='ignore'):
            mean = arrays.sum_by_index(cell, log_ratio, n_cells) / counts
            for _ in range(2):  # Huber-reweighted cell means
                err = xp.abs(log_ratio - mean[cell])
                w = arrays.clip(cfg.huber_delta / err, None, 1.0)
                mean = (arrays.sum_by_index(cell, w * log_ratio, n_cells)
                        / arrays.sum_by_index(cell, w, n_cells))
        mean, counts = arrays.to_host(arrays.stack([mean, counts]))
        mean[~(counts >= cfg.local_min_points) | ~np.isfinite(mean)] = 0.0
        return _smooth_grid(mean.reshape(rows, cols))
