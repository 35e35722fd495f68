"""The robust fit of a prediction to LiDAR depths: RANSAC (MSAC) over minimal samples, then
Huber IRLS on the inliers (:func:`fit_global`), with its settings (:class:`AlignerConfig`) and
result (:class:`FitResult`). ROS-free; :mod:`depth_node.alignment` applies it per frame.

Two kinds of prediction (``AlignerConfig.space``):

``'disparity'``
    Affine-invariant inverse depth (Depth Anything relative, MiDaS, DPT): fit
    ``1 / z = s * d + t``. Raw values are meaningless until fitted.
``'depth'``
    Metric depth (metric Depth Anything, ZoeDepth, Depth Pro): fit ``z = s * d`` (``+ t`` when
    ``fit_shift``), a correction close to ``s = 1``.

Both fits are linear in ``(s, t)`` with the relative residual ``r = (s * d + t) * z - 1``
(disparity) or ``r = (s * d + t) / z - 1`` (depth): every point weighs the same in relative
terms, which is what AbsRel-type errors measure; plain least squares on disparity would let the
nearest points dominate.

Written once against :mod:`depth_node.arrays`: numpy arrays or ``torch.Tensor`` s on any
device, the random hypotheses drawn on the host by the same generator for both.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Optional

import numpy as np

from depth_node import arrays
from depth_node.arrays import Array


class AlignmentError(ValueError):
    """Invalid configuration or inputs to the aligner; the message says what to fix."""


_SPACES = ('disparity', 'depth')
_FITS = ('global', 'local')
_IRLS_ITERATIONS = 6
_QUALITY_RESIDUAL = 0.05     # a fit with this median relative error gets half the weight


@dataclass
class AlignerConfig:
    """Settings of :class:`Aligner` and :func:`fit_global`.

    Attributes
    ----------
    space : str
        ``'disparity'`` (prediction is affine-invariant inverse depth; fit ``1/z = s*d + t``) or
        ``'depth'`` (prediction is metric depth; fit ``z = s*d``, ``+ t`` if ``fit_shift``).
    fit_shift : bool
        Fit ``t`` as well as ``s``. Set False for metric models (scale only).
    fit : str
        ``'global'`` (one ``(s, t)`` per frame) or ``'local'`` (plus a smooth per-region
        correction, see :class:`Aligner`).
    min_points : int
        Fewest inliers accepted for a fit.
    min_depth, max_depth : float
        Metres. LiDAR points outside are not fitted; aligned depth outside becomes NaN.
    smoothing : float
        In ``[0, 1)``: the EMA weight of the past fits, adjusted by fit quality; 0 = no smoothing.
    max_fit_age : float
        Seconds a last good fit may be reused on frames without one, and the largest gap across
        which a new fit is blended with the old (a longer gap, as when the stamp jumps forward,
        restarts the smoother).
    reset_jump : float
        A relative change of the scale larger than this restarts the smoother at the new fit.
    ransac_iterations : int
        Hypotheses drawn (2-point samples, 1-point for scale only).
    huber_delta : float
        Huber threshold on the relative residual during refinement, and on the log-ratio for the
        robust cell means of the local fit.
    local_grid : tuple[int, int]
        ``(rows, cols)`` of the local correction grid.
    local_min_points : int
        Fewest points a cell needs for its own correction; other cells keep the global fit.
    seed : int
        RANSAC seed; equal inputs give equal fits.
    inlier_threshold : float
        A point is an inlier while ``|r| < inlier_threshold`` (relative error of the fitted
        disparity or depth).
    min_inlier_ratio : float
        Fewest inliers accepted, as a fraction of the valid points.
    min_depth_ratio : float
        The shift is fitted only when the inliers' 90th / 10th percentile depth reaches this;
        otherwise ``'disparity'`` refuses the frame and ``'depth'`` fits the scale only.
    min_extent : float
        The points must spread over at least this fraction of the image's width or height
        (``sqrt(12) * std`` of u or v, the width of a uniform band with that spread).
    max_fit_points : int
        The fit (RANSAC scoring, refinement, spread and residual statistics) runs on a random
        subset of at most this many valid points; ``n_inliers`` still counts all of them. 2000
        points pin ``(s, t)`` far below any network's error and bound the cost.
    """

    space: str = 'disparity'
    fit_shift: bool = True
    fit: str = 'global'
    min_points: int = 50
    min_depth: float = 0.1
    max_depth: float = 80.0
    smoothing: float = 0.7
    max_fit_age: float = 1.0
    reset_jump: float = 0.5
    ransac_iterations: int = 100
    huber_delta: float = 0.05
    local_grid: tuple[int, int] = (8, 8)
    local_min_points: int = 20
    seed: int = 0
    inlier_threshold: float = 0.15
    min_inlier_ratio: float = 0.3
    min_depth_ratio: float = 1.25
    min_extent: float = 0.1
    max_fit_points: int = 2000

    def __post_init__(self) -> None:
        if self.space not in _SPACES:
            raise AlignmentError(f'space must be one of {_SPACES}, got {self.space!r}')
        if self.fit not in _FITS:
            raise AlignmentError(f'fit must be one of {_FITS}, got {self.fit!r}')
        if not 0 < self.min_depth < self.max_depth:
            raise AlignmentError(f'need 0 < min_depth < max_depth, got {self.min_depth}, '
                                 f'{self.max_depth}')
        if not 0 <= self.smoothing < 1:
            raise AlignmentError(f'smoothing must be in [0, 1), got {self.smoothing}')
        positive = {'max_fit_age': self.max_fit_age, 'reset_jump': self.reset_jump,
                    'huber_delta': self.huber_delta, 'inlier_threshold': self.inlier_threshold}
        for name, value in positive.items():
            if not value > 0:
                raise AlignmentError(f'{name} must be positive, got {value}')
        at_least_one = {'min_points': self.min_points, 'ransac_iterations': self.ransac_iterations,
                        'local_min_points': self.local_min_points,
                        'max_fit_points': self.max_fit_points}
        for name, value in at_least_one.items():
            if int(value) < 1:
                raise AlignmentError(f'{name} must be at least 1, got {value}')
        if (len(self.local_grid) != 2 or min(self.local_grid) < 1):
            raise AlignmentError(f'local_grid must be (rows, cols) >= 1, got {self.local_grid}')
        if not 0 <= self.min_inlier_ratio <= 1:
            raise AlignmentError(f'min_inlier_ratio must be in [0, 1], got '
                                 f'{self.min_inlier_ratio}')
        if self.min_depth_ratio < 1:
            raise AlignmentError(f'min_depth_ratio must be >= 1, got {self.min_depth_ratio}')
        if not 0 <= self.min_extent <= 1:
            raise AlignmentError(f'min_extent must be in [0, 1], got {self.min_extent}')


@dataclass
class FitResult:
    """One frame's fit of the prediction to the LiDAR depths.

    Attributes
    ----------
    scale, shift : float
        ``s`` and ``t`` (``t`` is 0 for a scale-only fit). Set to what the fit reached even when
        it is refused (NaN if it reached nothing); apply them only when ``ok``.
    n_points : int
        Valid points (finite prediction, LiDAR depth within ``[min_depth, max_depth]``).
    n_inliers : int
        Points with relative residual below ``inlier_threshold``.
    residual : float
        Median relative depth error ``|z_fit - z| / z`` over the valid points (over the random
        subset of ``max_fit_points`` when there are more), outliers included.
    ok : bool
        The fit can be used.
    reason : str
        ``''`` when ok, else why not.
    scale_only : bool
        The shift was not fitted (``fit_shift`` False, or too little depth spread in
        ``'depth'`` space).
    """

    scale: float
    shift: float
    n_points: int
    n_inliers: int
    residual: float
    ok: bool
    reason: str
    scale_only: bool = False

    @property
    def quality(self) -> float:
        """In ``[0, 1]``: the inlier ratio divided by ``1 + residual / 0.05`` (0 if not ok)."""
        if not self.ok or self.n_points == 0:
            return 0.0
        return (self.n_inliers / self.n_points) / (1.0 + self.residual / _QUALITY_RESIDUAL)


def _design(pred: Array, z: Array, space: str) -> tuple[Array, Array]:
    """Columns ``(a1, a2)`` with relative residual ``r = s * a1 + t * a2 - 1``."""
    if space == 'disparity':
        return pred * z, z
    inv_z = 1.0 / z
    return pred * inv_z, inv_z


def _relative_depth_error(r: Array, space: str) -> Array:
    """``|z_fit - z| / z`` from the relative residual (of disparity or depth)."""
    xp = arrays.namespace(r)
    if space == 'disparity':  # 1 + r = z / z_fit
        with arrays.errstate(r, divide='ignore', invalid='ignore'):
            return xp.abs(r / (1.0 + r))
    return xp.abs(r)


def _solve(a1: Array, a2: Optional[Array], w: Array) -> tuple[float, float]:
    """Weighted least squares for ``s * a1 + t * a2 = 1`` (``t = 0`` when ``a2`` is None).

    The five sums come to the host together: one device sync.
    """
    # einsum, not @: OpenBLAS threads long dot products, which stalls when a core is busy.
    xp = arrays.namespace(w)
    wa1 = w * a1
    if a2 is None:
        s11, b1 = arrays.to_floats(xp.einsum('i,i->', wa1, a1), wa1.sum())
        return (b1 / s11 if s11 > 0 else math.nan), 0.0
    wa2 = w * a2
    s11, b1, s12, s22, b2 = arrays.to_floats(
        xp.einsum('i,i->', wa1, a1), wa1.sum(), xp.einsum('i,i->', wa1, a2),
        xp.einsum('i,i->', wa2, a2), wa2.sum())
    det = s11 * s22 - s12 * s12
    if not det > 1e-12 * s11 * s22:
        return math.nan, math.nan
    return (b1 * s22 - b2 * s12) / det, (s11 * b2 - s12 * b1) / det


def _msac_costs(s: Array, t: Array, a1: Array, a2: Optional[Array], threshold: float) -> Array:
    """Truncated squared relative residual summed over the points, one cost per ``(s, t)``."""
    xp = arrays.namespace(a1)
    with arrays.errstate(a1, over='ignore', invalid='ignore'):  # inf, NaN: outliers
        r = s[:, None] * a1[None, :]  # (hypotheses, points): contiguous rows to reduce
        r -= 1.0
        if a2 is not None:
            r += t[:, None] * a2[None, :]
        r *= r
    # fmin: an overflowing (NaN) residual counts as an outlier.
    xp.fmin(r, arrays.full((), float(threshold ** 2), r.dtype, like=r), out=r)
    return r.sum(axis=1)


def _ransac(a1: Array, a2: Optional[Array], z: Array,
            config: AlignerConfig, rng: np.random.Generator) -> tuple[float, float]:
    """Best ``(s, t)`` by truncated squared residual (MSAC) over minimal samples.

    The samples are drawn on the host by ``rng`` (so numpy and a device pick the same ones) and
    uploaded at once; with a shift, the depths come to the host for the near / far partition.
    Device syncs: the upload, that download, and the best hypothesis.
    """
    xp = arrays.namespace(a1)
    n = a1.shape[0]
    iters = int(config.ransac_iterations)
    if a2 is None:
        i = arrays.asarray(rng.integers(0, n, size=iters), like=a1)
        with arrays.errstate(a1, divide='ignore'):
            s = 1.0 / a1[i]
        good = xp.isfinite(s)
        t = xp.zeros_like(s)
    else:
        # One point from the nearer half, one from the farther: well-conditioned pairs far
        # more often than uniform sampling. The halves need no order inside: a partition.
        half = max(1, n // 2)
        order = np.argpartition(arrays.to_host(z), sorted({half - 1, n - half}))
        pairs = np.concatenate([order[rng.integers(0, half, size=iters)],
                                order[rng.integers(n - half, n, size=iters)]])
        pairs = arrays.asarray(pairs, like=a1)
        i, j = pairs[:iters], pairs[iters:]
        p, q = a1[i] * a2[j], a2[i] * a1[j]
        det = p - q
        with arrays.errstate(a1, divide='ignore', invalid='ignore'):
            s = (a2[j] - a2[i]) / det
            t = (a1[i] - a1[j]) / det
        # Pairs with (nearly) the same prediction-to-depth relation do not determine a line.
        good = xp.isfinite(s) & xp.isfinite(t) & (xp.abs(det) > 1e-9 * (xp.abs(p) + xp.abs(q)))
    # Scored in float32: half the memory traffic of the (hypotheses, points) matrix, and
    # costs exact to ~1e-6 relative, far finer than the gaps between hypotheses that matter.
    # Unusable hypotheses are scored too (no data-dependent compaction), then ranked last.
    with arrays.errstate(a1, over='ignore'):  # a hypothesis beyond the float32 range: inf
        s32, t32 = arrays.astype(s, np.float32), arrays.astype(t, np.float32)
    costs = _msac_costs(s32, t32, arrays.astype(a1, np.float32),
                        None if a2 is None else arrays.astype(a2, np.float32),
                        np.float32(config.inlier_threshold))
    best = xp.argmin(xp.where(good, costs, math.inf))
    s_best, t_best, usable = arrays.to_floats(s[best], t[best], good[best])
    if not usable:
        return math.nan, math.nan
    return s_best, t_best


def _refine(a1: Array, a2: Optional[Array], s: float, t: float,
            config: AlignerConfig) -> tuple[float, float, Array]:
    """IRLS with Huber weights on the inliers of the current fit; returns s, t, residuals.

    One device sync per iteration (:func:`_solve`).
    """
    xp = arrays.namespace(a1)
    thr, delta = config.inlier_threshold, config.huber_delta
    with arrays.errstate(a1, divide='ignore'):  # delta / 0: weight 1, as for any |r| <= delta
        for _ in range(_IRLS_ITERATIONS):
            r = s * a1 - 1.0
            if a2 is not None:
                r += t * a2
            ar = xp.abs(r)
            w = xp.where(ar < thr, arrays.clip(delta / ar, None, 1.0), 0.0)
            s_new, t_new = _solve(a1, a2, w)
            if not math.isfinite(s_new):
                break
            done = (abs(s_new - s) <= 1e-7 * abs(s)
                    and abs(t_new - t) <= 1e-7 * (abs(t) + abs(s)))
            s, t = s_new, t_new
            if done:
                break
    r = s * a1 - 1.0
    if a2 is not None:
        r += t * a2
    return s, t, r


def fit_global(pred: Array, z: Array, config: AlignerConfig,
               uv: Optional[Array] = None,
               shape: Optional[tuple[int, int]] = None) -> FitResult:
    """Fit the prediction to LiDAR depths robustly: RANSAC, then Huber IRLS on the inliers.

    Parameters
    ----------
    pred : np.ndarray or torch.Tensor
        ``(M,)`` prediction values at the LiDAR pixels (see :func:`sample_prediction`);
        disparity or depth per ``config.space``. Non-finite values are ignored. A tensor keeps
        the fit on its device (``z`` and ``uv`` are moved there); the result is the same to
        rounding, with the same random samples (drawn on the host).
    z : np.ndarray or torch.Tensor
        ``(M,)`` LiDAR depths along the optical axis, metres.
    config : AlignerConfig
    uv, shape : optional
        ``(M, 2)`` pixel coordinates of the points and the image's ``(height, width)``; with
        both, points crowded into a small part of the image are refused (``min_extent``).

    Returns
    -------
    FitResult
        ``ok`` False, with the reason, for: fewer than ``min_points`` valid points or inliers,
        an inlier ratio below ``min_inlier_ratio``, points covering too little of the image, no
        usable hypothesis (e.g. a constant prediction), ``s <= 0`` (the prediction decreases
        where it should increase: wrong ``space``?), and, in ``'disparity'`` space with
        ``fit_shift``, too little depth spread among the inliers to observe the shift (the frame
        is refused rather than fitted with an arbitrary shift; :class:`Aligner` then reuses its
        last good fit). In ``'depth'`` space the same case falls back to scale only.

    On a GPU a fit costs 10 device syncs plus one per IRLS iteration (at most 6): host values
    for the decisions and random samples going up. They are the valid count, the subset upload
    (with more than ``max_fit_points``), the extent (with ``uv`` and ``shape``), three in the
    RANSAC (samples up, depths down for the near / far split, the best hypothesis), the inlier
    count and depth spread, the residual median and the final inlier count; the RANSAC and
    IRLS run twice when ``'depth'`` space drops the shift.
    """
    pred = arrays.astype(arrays.as_array(pred), np.float64).reshape(-1)
    z = arrays.astype(arrays.asarray(z, like=pred), np.float64).reshape(-1)
    xp = arrays.namespace(pred)
    if tuple(pred.shape) != tuple(z.shape):
        raise AlignmentError(f'pred and z must have the same length, got {tuple(pred.shape)} '
                             f'and {tuple(z.shape)}')
    if uv is not None:
        uv = arrays.asarray(uv, like=pred)
        if tuple(uv.shape) != (z.shape[0], 2):
            raise AlignmentError(f'uv must be (M, 2) for M = {z.shape[0]} points, got '
                                 f'{tuple(uv.shape)}')
    with arrays.errstate(z, invalid='ignore'):
        valid = xp.isfinite(pred) & (z >= config.min_depth) & (z <= config.max_depth)
    keep, n_valid = arrays.selector(valid)
    pred_all, z_all = pred, z
    if n_valid < z.shape[0]:
        pred, z = pred[keep], z[keep]
        if uv is not None:
            uv = uv[keep]

    def refused(reason: str, s: float = math.nan, t: float = math.nan, n_in: int = 0,
                residual: float = math.nan, scale_only: bool = False) -> FitResult:
        return FitResult(s, t, n_valid, n_in, residual, False, reason, scale_only)

    if n_valid < config.min_points:
        return refused(f'too few valid points: {n_valid} of {z_all.shape[0]} < min_points '
                       f'{config.min_points}{_invalid_causes(pred_all, z_all, valid, config)}')

    rng = np.random.default_rng(config.seed)
    all_pred, all_z = pred, z
    if n_valid > config.max_fit_points:
        subset = arrays.asarray(rng.integers(0, n_valid, size=int(config.max_fit_points)),
                                like=pred)
        pred, z = pred[subset], z[subset]
        if uv is not None:
            uv = uv[subset]
    if uv is not None and shape is not None:
        height, width = shape[:2]
        std_u, std_v = arrays.to_floats(arrays.std(uv[:, 0]), arrays.std(uv[:, 1]))
        extent = math.sqrt(12.0) * max(std_u / width, std_v / height)
        if extent < config.min_extent:
            return refused(f'points cover too little of the image: extent {extent:.3f} < '
                           f'min_extent {config.min_extent}')

    a1, a2 = _design(pred, z, config.space)
    scale_only = not config.fit_shift
    while True:
        s, t = _ransac(a1, None if scale_only else a2, z, config, rng)
        if not math.isfinite(s):
            return refused('no usable hypothesis: the prediction has no spread at the points',
                           scale_only=scale_only)
        s, t, r = _refine(a1, None if scale_only else a2, s, t, config)
        inliers = xp.abs(r) < config.inlier_threshold
        if scale_only or not s > 0:
            break
        inlier_rows, n_in = arrays.selector(inliers)
        if n_in < 2:
            break
        z10, z90 = arrays.percentile(z[inlier_rows], [10, 90])
        if z90 >= config.min_depth_ratio * z10:
            break
        if config.space == 'disparity':
            return refused(f'too little depth spread to fit the shift: inlier depths p90/p10 '
                           f'= {z90 / z10:.3f} < min_depth_ratio {config.min_depth_ratio}',
                           s, t, n_in)
        scale_only = True  # metric depth: the scale alone is still well determined
    residual = arrays.median(_relative_depth_error(r, config.space))
    if all_z.shape[0] > z.shape[0]:  # count inliers among all valid points, not the subset
        a1, a2 = _design(all_pred, all_z, config.space)
        r = s * a1 + t * a2 - 1.0
        inliers = xp.abs(r) < config.inlier_threshold
    n_in = arrays.count(inliers)
    if n_in < config.min_points:
        return refused(f'too few inliers: {n_in} < min_points {config.min_points}', s, t, n_in,
                       residual, scale_only)
    if n_in < config.min_inlier_ratio * n_valid:
        return refused(f'too few inliers: {n_in} of {n_valid} < min_inlier_ratio '
                       f'{config.min_inlier_ratio}', s, t, n_in, residual, scale_only)
    if not s > 0:  # a convincing fit, upside down
        return refused(f'scale {s:.4g} <= 0: the prediction falls where it should rise '
                       f'(is space {config.space!r} right for this model?)', s, t, n_in,
                       residual, scale_only)
    return FitResult(s, t, n_valid, n_in, residual, True, '', scale_only)


def _invalid_causes(pred: Array, z: Array, valid: Array, config: AlignerConfig) -> str:
    """Why points were not valid, as ``' (3 farther than max_depth 80 m, nearest at 95 m,
    ...)'``; empty when all were."""
    xp = arrays.namespace(z)
    if bool(valid.all()):
        return ''
    with arrays.errstate(z, invalid='ignore'):
        far = ~(z <= config.max_depth) & ~xp.isnan(z)
        near = z < config.min_depth
    no_depth = xp.isnan(z)
    no_pred = ~xp.isfinite(pred) & ~far & ~near & ~no_depth
    parts = []
    n_far = arrays.count(far)
    if n_far:
        parts.append(f'{n_far} farther than max_depth {config.max_depth:g} m, '
                     f'nearest at {float(xp.min(z[far])):.3g} m')
    for mask, what in ((near, f'nearer than min_depth {config.min_depth:g} m'),
                       (no_depth, 'without a depth (NaN)'),
                       (no_pred, 'where the prediction is not finite')):
        n = arrays.count(mask)
        if n:
            parts.append(f'{n} {what}')
    return ' (' + '; '.join(parts) + ')'
