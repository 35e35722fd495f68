"""Tests for depth_node.alignment: robust fits, smoothing over frames, local correction."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from depth_node.alignment import (
    Aligner, AlignerConfig, AlignmentError, FitResult, disparity_to_depth, fit_global,
    sample_prediction,
)
from depth_node.camera_info import Intrinsics
from depth_node.lidar import prepare_points
from depth_node.sample_data import frame_folders, load_frame

S_TRUE, T_TRUE = 2.0, -0.01   # 1/z = S_TRUE * d + T_TRUE


def synthetic(n=3000, outliers=0.15, noise=0.01, seed=0, z_range=(2.0, 50.0)):
    """LiDAR depths and the prediction's disparity at them, with gross outliers in z.

    Outliers mimic what survives on real robots: mostly returns from behind foreground edges
    (30-200 % farther than the surface the pixel shows), some spurious near returns (dust).
    """
    rng = np.random.default_rng(seed)
    z_surface = np.exp(rng.uniform(*np.log(z_range), n))
    d = (1.0 / z_surface * (1 + rng.normal(0, noise, n)) - T_TRUE) / S_TRUE
    z = z_surface.copy()
    bad = rng.random(n) < outliers
    far = rng.random(n) < 0.9
    z[bad & far] *= rng.uniform(1.3, 3.0, (bad & far).sum())
    z[bad & ~far] *= rng.uniform(0.2, 0.6, (bad & ~far).sum())
    return d, z, z_surface, bad


def median_rel_error(s, t, d, z_surface):
    return float(np.median(np.abs(1.0 / (s * d + t) - z_surface) / z_surface))


# ---------------------------------------------------------------- fit_global

@pytest.mark.parametrize('outliers', [0.1, 0.2])
def test_fit_recovers_scale_and_shift_despite_outliers(outliers):
    d, z, z_surface, bad = synthetic(outliers=outliers)
    fit = fit_global(d, z, AlignerConfig())
    assert fit.ok and fit.reason == '' and not fit.scale_only
    assert fit.scale == pytest.approx(S_TRUE, rel=0.01)
    assert fit.shift == pytest.approx(T_TRUE, abs=0.001)
    assert fit.n_points == np.count_nonzero(z <= 80.0)   # far outliers beyond max_depth go
    # Inliers: the clean points (1 % noise passes the 15 % threshold), few outliers.
    assert abs(fit.n_inliers - (~bad).sum()) <= 0.03 * len(z)
    assert fit.residual < 0.02


@pytest.mark.parametrize('outliers, factor', [(0.1, 3), (0.2, 8)])
def test_robust_fit_beats_least_squares(outliers, factor):
    d, z, z_surface, _ = synthetic(outliers=outliers)
    # The usual global least squares in disparity (MiDaS protocol) against the same LiDAR.
    s_ls, t_ls = np.linalg.lstsq(np.column_stack([d, np.ones_like(d)]), 1.0 / z, rcond=None)[0]
    # And least squares in relative terms (this module's residual, without robustness).
    a = np.column_stack([d * z, z])
    s_rel, t_rel = np.linalg.lstsq(a, np.ones_like(d), rcond=None)[0]
    fit = fit_global(d, z, AlignerConfig())
    robust = median_rel_error(fit.scale, fit.shift, d, z_surface)
    assert robust < 0.01                        # near the 1 % noise
    least_squares = median_rel_error(s_ls, t_ls, d, z_surface)
    assert least_squares > 0.02 and least_squares > factor * robust
    assert abs(s_ls / S_TRUE - 1) > 0.01        # the scale misses the 1 % tolerance above
    assert median_rel_error(s_rel, t_rel, d, z_surface) > 10 * robust


def test_fit_is_deterministic():
    d, z, _, _ = synthetic(outliers=0.2)
    assert fit_global(d, z, AlignerConfig()) == fit_global(d, z, AlignerConfig())


def test_msac_costs_truncate_and_count_non_finite_residuals_as_outliers():
    from depth_node.robust_fit import _msac_costs

    a1 = np.array([1.0, 2.0, 1.05, np.inf])
    a2 = np.array([1.0, 1.0, 1.0, -np.inf])  # the last residual is inf + 0 * -inf: NaN
    costs = _msac_costs(np.array([1.0, 0.5]), np.array([0.0, 0.0]), a1, a2, 0.1)
    # s = 1: residuals 0, 1 (truncated to 0.1^2), 0.05, NaN (an outlier: 0.1^2).
    # s = 0.5: -0.5 (truncated), 0, -0.475 (truncated), NaN.
    np.testing.assert_allclose(costs, [0.01 + 0.05 ** 2 + 0.01, 0.01 + 0.01 + 0.01])
    # The same in float32, as the RANSAC scores its hypotheses.
    costs32 = _msac_costs(np.float32([1.0, 0.5]), np.float32([0.0, 0.0]), a1.astype(np.float32),
                          a2.astype(np.float32), np.float32(0.1))
    assert costs32.dtype == np.float32
    np.testing.assert_allclose(costs32, costs, rtol=1e-5)


def test_metric_depth_scale_only():
    rng = np.random.default_rng(1)
    z = rng.uniform(1, 30, 2000)
    pred = z / 1.3 * (1 + rng.normal(0, 0.02, z.size))     # metric model, 30 % too short
    pred[:200] *= 3                                          # outliers
    cfg = AlignerConfig(space='depth', fit_shift=False)
    fit = fit_global(pred, z, cfg)
    assert fit.ok and fit.scale_only and fit.shift == 0.0
    assert fit.scale == pytest.approx(1.3, rel=0.005)


def test_metric_depth_with_shift():
    rng = np.random.default_rng(2)
    z = rng.uniform(1, 30, 2000)
    pred = (z - 0.5) / 1.1 * (1 + rng.normal(0, 0.01, z.size))
    fit = fit_global(pred, z, AlignerConfig(space='depth'))
    assert fit.ok and not fit.scale_only
    assert fit.scale == pytest.approx(1.1, rel=0.01)
    assert fit.shift == pytest.approx(0.5, abs=0.05)


def test_nan_predictions_and_out_of_range_depths_ignored():
    d, z, _, _ = synthetic(outliers=0.0)
    d[:100] = np.nan
    z[100:200] = 500.0     # beyond max_depth
    z[200:300] = 0.01      # below min_depth
    fit = fit_global(d, z, AlignerConfig())
    assert fit.ok and fit.n_points == len(z) - 300
    assert fit.scale == pytest.approx(S_TRUE, rel=0.01)


@pytest.mark.parametrize('case, match', [
    ('few', 'too few valid points'),
    ('constant_depth', 'too little depth spread'),
    ('negative', 'scale .* <= 0'),
    ('constant_prediction', 'no usable hypothesis'),
    ('noise', 'too few inliers'),
    ('small_region', 'cover too little of the image'),
])
def test_degenerate_inputs_refused(case, match):
    rng = np.random.default_rng(4)
    d, z, _, _ = synthetic(n=2000, outliers=0.0)
    uv = shape = None
    if case == 'few':
        d, z = d[:30], z[:30]
    elif case == 'constant_depth':
        z = np.full(2000, 5.0) * (1 + rng.normal(0, 0.005, 2000))
        d = (1.0 / z - T_TRUE) / S_TRUE
    elif case == 'negative':
        d = -d                        # e.g. metric depth fed in as disparity
    elif case == 'constant_prediction':
        d = np.full_like(d, 0.1)
    elif case == 'noise':
        d = rng.uniform(0, 1, d.size)
    elif case == 'small_region':
        uv = rng.uniform(300, 320, (d.size, 2))
        shape = (480, 640)
    fit = fit_global(d, z, AlignerConfig(), uv=uv, shape=shape)
    assert not fit.ok
    assert re.search(match, fit.reason), fit.reason
    assert fit.quality == 0.0


def test_constant_depth_in_metric_space_falls_back_to_scale_only():
    rng = np.random.default_rng(5)
    z = np.full(2000, 5.0) * (1 + rng.normal(0, 0.005, 2000))
    pred = z / 1.2
    fit = fit_global(pred, z, AlignerConfig(space='depth', fit_shift=True))
    assert fit.ok and fit.scale_only and fit.shift == 0.0
    assert fit.scale == pytest.approx(1.2, rel=0.005)


def test_points_along_one_line_are_enough():
    # A planar LiDAR sees one row of the image: narrow in v, but it spans the width.
    d, z, _, _ = synthetic(n=2000, outliers=0.0)
    uv = np.column_stack([np.linspace(0, 639, d.size), np.full(d.size, 240.0)])
    assert fit_global(d, z, AlignerConfig(), uv=uv, shape=(480, 640)).ok


def test_fit_input_errors():
    with pytest.raises(AlignmentError, match='same length'):
        fit_global(np.zeros(3), np.zeros(4), AlignerConfig())
    with pytest.raises(AlignmentError, match=r'\(M, 2\)'):
        fit_global(np.zeros(3), np.zeros(3), AlignerConfig(), uv=np.zeros((3, 3)))


@pytest.mark.parametrize('field, value', [('space', 'inverse'), ('fit', 'spline'),
                                          ('min_depth', 0.0), ('max_depth', 0.05),
                                          ('smoothing', 1.0), ('max_fit_age', 0.0),
                                          ('min_points', 0), ('local_grid', (0, 4)),
                                          ('min_depth_ratio', 0.5), ('inlier_threshold', -1)])
def test_config_validation(field, value):
    with pytest.raises(AlignmentError, match=field):
        AlignerConfig(**{field: value})


# ---------------------------------------------------------------- conversions and sampling

def test_disparity_to_depth_limits():
    disp = np.array([[0.25, 0.0, -0.1, np.nan], [0.001, 20.0, 0.05, 1.0]], dtype=np.float32)
    depth = disparity_to_depth(disp, 2.0, 0.0, 0.1, 80.0)
    assert depth.dtype == np.float32 and depth.shape == disp.shape
    assert depth[0, 0] == pytest.approx(2.0)
    assert np.isnan(depth[0, 1:]).all()        # zero, negative disparity, NaN
    assert np.isnan(depth[1, 0])                # 500 m > max_depth
    assert np.isnan(depth[1, 1])                # 0.025 m < min_depth
    assert depth[1, 2] == pytest.approx(10.0)
    assert depth[1, 3] == pytest.approx(0.5)
    # The shift applies before inverting: s*d + t <= 0 is invalid too.
    assert np.isnan(disparity_to_depth(np.array([0.1]), 1.0, -0.2, 0.1, 80.0)).all()


def test_sample_prediction_bilinear_and_nearest():
    v, u = np.mgrid[0:6, 0:8].astype(np.float32)
    img = 3 * u + 5 * v
    uv = np.array([[2.25, 3.5], [0.0, 0.0], [7.0, 5.0], [6.9, 4.2], [-3.0, 9.0]])
    np.testing.assert_allclose(sample_prediction(img, uv),
                               [3 * 2.25 + 5 * 3.5, 0, 3 * 7 + 5 * 5, 3 * 6.9 + 5 * 4.2,
                                5 * 5], atol=1e-5)  # the last one clamped to (0, 5)
    np.testing.assert_allclose(sample_prediction(img, uv, mode='nearest'),
                               [3 * 2 + 5 * 4, 0, 46, 3 * 7 + 5 * 4, 25])
    with pytest.raises(AlignmentError, match='mode'):
        sample_prediction(img, uv, mode='cubic')
    with pytest.raises(AlignmentError, match=r'\(H, W\)'):
        sample_prediction(img[0], uv)


def test_sample_prediction_nan_aware():
    img = np.ones((4, 4), dtype=np.float32)
    img[1, 2] = np.nan
    img[2, 2] = 5.0
    uv = np.array([[2.1, 1.1],     # nearest pixel (2, 1) is NaN -> NaN
                   [2.0, 1.6],     # nearest is (2, 2) = 5; NaN neighbour left out -> 5
                   [1.4, 1.4]])    # nearest (1, 1); NaN neighbour weight 0.16 left out
    out = sample_prediction(img, uv)
    assert np.isnan(out[0])
    assert out[1] == pytest.approx(5.0)
    w = np.array([0.6 * 0.6, 0.6 * 0.4, 0.4 * 0.4])   # (1,1), (1,2), (2,2) weights
    assert out[2] == pytest.approx((w[0] * 1 + w[1] * 1 + w[2] * 5) / w.sum())
    tiny = sample_prediction(np.full((1, 1), 7.0), np.array([[0.3, 0.2]]))
    assert tiny.tolist() == [7.0]


# ---------------------------------------------------------------- Aligner over frames

H, W = 60, 80


def frame(scale_jitter=1.0, seed=0, n=1500, outliers=0.1):
    """A smooth synthetic scene: dense prediction, and LiDAR pixels and depths."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W]
    gt = 2.0 + 30.0 * (v / H) ** 2 + 5.0 * (u / W)            # metres
    pred = ((1.0 / gt - T_TRUE) / (S_TRUE * scale_jitter)).astype(np.float32)
    uv = np.column_stack([rng.uniform(0, W - 1, n), rng.uniform(0, H - 1, n)])
    z = sample_prediction(gt, uv) * (1 + rng.normal(0, 0.005, n))
    bad = rng.random(n) < outliers
    z[bad] *= rng.uniform(1.5, 3, bad.sum())
    return pred, uv, z, gt


def test_align_single_frame():
    pred, uv, z, gt = frame()
    result = Aligner(AlignerConfig()).align(pred, uv, z, 10.0)
    assert result.state == 'ok' and result.fit.ok and result.fit_age == 0.0
    assert result.n_projected == len(z)
    assert result.depth.dtype == np.float32 and result.depth.shape == (H, W)
    assert np.nanmean(np.abs(result.depth - gt) / gt) < 0.01
    assert result.scale == result.fit.scale and result.shift == result.fit.shift


def test_smoothing_steadies_scale():
    # The network's scale flickers +-5 % from frame to frame; the applied scale should not.
    rng = np.random.default_rng(7)
    aligner = Aligner(AlignerConfig(smoothing=0.7))
    raw, applied = [], []
    for k in range(40):
        pred, uv, z, _ = frame(scale_jitter=1 + rng.normal(0, 0.05), seed=k)
        result = aligner.align(pred, uv, z, 0.1 * k)
        assert result.state == 'ok'
        raw.append(result.fit.scale)
        applied.append(result.scale)
    raw_steps = np.std(np.diff(raw))
    applied_steps = np.std(np.diff(applied))
    assert applied_steps < 0.5 * raw_steps
    # Without smoothing the applied scale is the raw one.
    plain = Aligner(AlignerConfig(smoothing=0.0))
    pred, uv, z, _ = frame(scale_jitter=1.1)
    plain.align(*frame()[:3], 0.0)
    result = plain.align(pred, uv, z, 0.1)
    assert result.scale == result.fit.scale


def test_poor_fit_moves_estimate_less():
    # Same first frame for both; then the scale moves 10 %, seen by a clean fit and by one with
    # half its points outliers (same raw scale, lower quality).
    first = frame(seed=1, outliers=0.0)
    clean = frame(scale_jitter=1.1, seed=2, outliers=0.0)
    noisy = frame(scale_jitter=1.1, seed=2, outliers=0.5)
    good, poor = Aligner(AlignerConfig()), Aligner(AlignerConfig())
    assert good.align(*first[:3], 0.0).scale == pytest.approx(S_TRUE, rel=1e-3)
    poor.align(*first[:3], 0.0)
    a = good.align(*clean[:3], 0.1)
    b = poor.align(*noisy[:3], 0.1)
    assert a.fit.scale == pytest.approx(b.fit.scale, rel=0.01)
    assert b.fit.quality < a.fit.quality
    assert S_TRUE < b.scale < a.scale < a.fit.scale


def test_reset_on_stamp_backwards_and_on_jump_and_gap():
    base = frame()
    shifted = frame(scale_jitter=1.2, seed=3)    # within reset_jump: normally blended
    aligner = Aligner(AlignerConfig())
    for k in range(5):
        aligner.align(*base[:3], 100.0 + 0.1 * k)
    blended = aligner.align(*shifted[:3], 100.5)
    assert blended.scale != pytest.approx(blended.fit.scale, rel=1e-3)
    # Bag loops: the stamp goes back; the old state must not leak into the new fit.
    looped = aligner.align(*shifted[:3], 100.0)
    assert looped.state == 'ok' and looped.scale == looped.fit.scale
    # A large jump of the scale restarts the smoother.
    jumped = aligner.align(*frame(scale_jitter=2.5, seed=4)[:3], 100.1)
    assert jumped.scale == jumped.fit.scale
    # So does a long gap (stamp jumps forward beyond max_fit_age).
    later = aligner.align(*shifted[:3], 200.0)
    assert later.scale == later.fit.scale


def test_stale_reuse_then_no_fit():
    pred, uv, z, gt = frame()
    aligner = Aligner(AlignerConfig(max_fit_age=1.0))
    first = aligner.align(pred, uv, z, 5.0)
    # No LiDAR for this frame: reuse.
    stale = aligner.align(pred, None, None, 5.4)
    assert stale.state == 'stale' and stale.fit is None
    assert stale.fit_age == pytest.approx(0.4) and stale.scale == first.scale
    np.testing.assert_array_equal(stale.depth, first.depth)
    # A degenerate frame (too few points) also reuses, and reports why its own fit failed.
    degenerate = aligner.align(pred, uv[:10], z[:10], 5.9)
    assert degenerate.state == 'stale' and not degenerate.fit.ok
    assert 'too few' in degenerate.fit.reason and degenerate.n_projected == 10
    # Past max_fit_age: no depth at all.
    gone = aligner.align(pred, np.empty((0, 2)), np.empty(0), 6.1)
    assert gone.state == 'no_fit' and gone.depth is None and gone.fit is None
    assert math.isnan(gone.scale) and math.isnan(gone.fit_age)
    # Nothing ever fitted: no_fit.
    fresh = Aligner(AlignerConfig())
    assert fresh.align(pred, None, None, 0.0).state == 'no_fit'
    # reset() forgets.
    aligner.align(pred, uv, z, 7.0)
    aligner.reset()
    assert aligner.align(pred, None, None, 7.1).state == 'no_fit'


def test_align_input_errors():
    aligner = Aligner(AlignerConfig())
    with pytest.raises(AlignmentError, match=r'\(H, W\)'):
        aligner.align(np.zeros(5), None, None, 0.0)
    with pytest.raises(AlignmentError, match=r'\(M, 2\)'):
        aligner.align(np.zeros((4, 4)), np.zeros((3, 3)), np.ones(3), 0.0)


def test_metric_prediction_aligned():
    pred, uv, z, gt = frame(outliers=0.0)
    metric = (gt / 1.25).astype(np.float32)   # a metric model reading 25 % short
    result = Aligner(AlignerConfig(space='depth', fit_shift=False)).align(metric, uv, z, 0.0)
    assert result.state == 'ok' and result.scale == pytest.approx(1.25, rel=0.005)
    assert np.nanmax(np.abs(result.depth - gt) / gt) < 0.02


def test_depth_limits_in_aligned_output():
    pred, uv, z, gt = frame(outliers=0.0)
    pred = pred.copy()
    pred[0, :10] = -1.0                               # disparity <= 0 after the fit
    pred[1, :10] = (1.0 / 500.0 - T_TRUE) / S_TRUE    # 500 m: beyond max_depth
    result = Aligner(AlignerConfig(max_depth=80.0)).align(pred, uv, z, 0.0)
    assert np.isnan(result.depth[0, :10]).all() and np.isnan(result.depth[1, :10]).all()
    assert np.isfinite(result.depth[2:]).all()


def warped_scene(seed=0):
    """A prediction whose error has low-frequency structure: a smooth multiplicative warp."""
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    v, u = np.mgrid[0:h, 0:w]
    gt = 3.0 + 25.0 * (v / h) ** 1.5 + 4.0 * np.sin(u / w * 3)
    warp = np.exp(0.15 * np.sin(2 * np.pi * u / w) * np.cos(np.pi * v / h))
    pred = ((1.0 / (gt * warp) - T_TRUE) / S_TRUE).astype(np.float32)
    n = 6000
    uv = np.column_stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)])
    z = sample_prediction(gt, uv) * (1 + rng.normal(0, 0.01, n))
    bad = rng.random(n) < 0.1
    z[bad] *= rng.uniform(1.5, 3, bad.sum())
    return pred, uv, z, gt


def test_local_fit_beats_global_on_low_frequency_warp():
    pred, uv, z, gt = warped_scene()
    glob = Aligner(AlignerConfig(fit='global')).align(pred, uv, z, 0.0)
    loc = Aligner(AlignerConfig(fit='local')).align(pred, uv, z, 0.0)
    assert glob.local_correction is None
    assert loc.local_correction.shape == (8, 8)
    err_g = np.nanmean(np.abs(glob.depth - gt) / gt)
    err_l = np.nanmean(np.abs(loc.depth - gt) / gt)
    assert err_g > 0.05
    assert err_l < 0.5 * err_g
    assert loc.fit.scale == glob.fit.scale    # the local step does not change the global fit


def test_local_fit_cells_without_points_keep_global():
    pred, uv, z, gt = warped_scene()
    h, w = pred.shape
    top = uv[:, 1] < h / 2                     # LiDAR only in the lower half
    loc = Aligner(AlignerConfig(fit='local', smoothing=0.0)).align(pred, uv[~top], z[~top],
                                                                   0.0)
    glob = Aligner(AlignerConfig(fit='global')).align(pred, uv[~top], z[~top], 0.0)
    grid = loc.local_correction
    # Cells two rows away from any point stay exactly global (the smoothing reaches one row).
    assert np.all(grid[:3] == 0.0)
    np.testing.assert_allclose(loc.depth[:int(h * 3 / 8) - 8], glob.depth[:int(h * 3 / 8) - 8],
                               rtol=1e-6)


def test_local_fit_on_stale_frames_and_metric_space():
    pred, uv, z, gt = warped_scene()
    aligner = Aligner(AlignerConfig(fit='local'))
    fresh = aligner.align(pred, uv, z, 0.0)
    stale = aligner.align(pred, None, None, 0.5)
    assert stale.state == 'stale'
    np.testing.assert_array_equal(stale.depth, fresh.depth)
    metric = (1.0 / (S_TRUE * pred + T_TRUE)).astype(np.float32)   # warped metric depth
    glob = Aligner(AlignerConfig(space='depth', fit_shift=False)).align(metric, uv, z, 0.0)
    loc = Aligner(AlignerConfig(space='depth', fit_shift=False, fit='local')).align(
        metric, uv, z, 0.0)
    assert np.nanmean(np.abs(loc.depth - gt) / gt) < 0.5 * np.nanmean(
        np.abs(glob.depth - gt) / gt)


# ---------------------------------------------------------------- real frame, end to end

def test_tum_frame_end_to_end(real_data):
    """Dense Kinect depth as ground truth; a beam pattern of it as the LiDAR.

    Prediction: disparity = a / (gt * (1 + n)) + b with n 2 % noise (in depth), at half
    resolution as a network would give. LiDAR: 16 beams sampled from the depth, back-projected
    to 3-D and expressed in a LiDAR frame (x forward), 10 % of returns corrupted. Bound: AbsRel
    < 0.02 against the dense ground truth (the noise alone gives about 0.016).
    """
    folders = [f for f in frame_folders(real_data) if f.parent.name == 'tum_rgbd']
    if not folders:
        pytest.skip('no tum_rgbd frames')
    fr = load_frame(folders[0])
    gt = fr.depth_gt
    rng = np.random.default_rng(0)
    # Half-resolution prediction and ground truth by 2 x 2 averaging (pixel-centre consistent).
    blocks = gt.reshape(240, 2, 320, 2)
    gt_half = blocks.mean(axis=(1, 3))                        # NaN if any sub-pixel is invalid
    pred = 0.8 / (gt_half * (1 + rng.normal(0, 0.02, gt_half.shape))) + 0.3
    pred[~np.isfinite(pred)] = 0.3 + 0.8 / 3.0                # the network predicts everywhere
    pred = pred.astype(np.float32)
    # 16 beams: rows spread over the image, one return every 2 pixels along each.
    rows = np.linspace(30, 450, 16).astype(int)
    vv, uu = np.meshgrid(rows, np.arange(0, 640, 2), indexing='ij')
    zz = gt[vv, uu]
    ok = np.isfinite(zz)
    uu, vv, zz = uu[ok], vv[ok], zz[ok].astype(np.float64)
    bad = rng.random(zz.size) < 0.1
    zz[bad] *= rng.uniform(1.3, 3.0, bad.sum())
    cam = Intrinsics(fr.K, fr.D, fr.distortion_model, fr.width, fr.height)
    x = (uu - fr.K[0, 2]) / fr.K[0, 0] * zz
    y = (vv - fr.K[1, 2]) / fr.K[1, 1] * zz
    T = np.eye(4)                       # camera optical <- LiDAR (x fwd, y left, z up)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    T[:3, 3] = [0.02, -0.05, 0.0]
    lidar = (np.column_stack([x, y, zz]) - T[:3, 3]) @ T[:3, :3]   # inverse transform
    uv, z = prepare_points(lidar, T, cam, 320, 240)
    assert len(z) > 3000
    result = Aligner(AlignerConfig()).align(pred, uv, z, 0.0)
    assert result.state == 'ok', result.fit
    valid = np.isfinite(gt_half)
    assert np.isfinite(result.depth[valid]).mean() > 0.99
    abs_rel = np.nanmean(np.abs(result.depth[valid] - gt_half[valid]) / gt_half[valid])
    assert abs_rel < 0.02, abs_rel
    # The fit finds the simulated affine map: 1/z = (pred - 0.3) / 0.8.
    assert result.scale == pytest.approx(1 / 0.8, rel=0.03)
    assert result.shift == pytest.approx(-0.3 / 0.8, abs=0.02)


def test_fit_result_fields_are_stable():
    # The evaluation tool and the benchmark read these by name.
    names = [f.name for f in dataclasses.fields(FitResult)]
    assert names[:7] == ['scale', 'shift', 'n_points', 'n_inliers', 'residual', 'ok', 'reason']
