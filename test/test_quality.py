"""Tests for depth_node.quality: flying pixels, confidence cues, temporal stabilizer, AUSE.

ROS-free and fast: small synthetic images built here. Each test states what would make it fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from depth_node import quality as q
from depth_node.quality import QualityError

H, W = 96, 128
K = np.array([[120.0, 0.0, 63.5], [0.0, 120.0, 47.5], [0.0, 0.0, 1.0]])
FG, BG = 1.5, 3.0                       # metres: the box and the wall


def box_blur(image: np.ndarray, k: int) -> np.ndarray:
    """``k`` x ``k`` mean filter with replicated edges, as a network smooths a silhouette."""
    r = k // 2
    p = np.pad(image.astype(np.float64), r, mode='edge')
    c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (c[k:k + H, k:k + W] - c[:H, k:k + W] - c[k:k + H, :W] + c[:H, :W]) / (k * k)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian (3 sigma), replicated edges."""
    x = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    p = np.pad(image.astype(np.float64), x.size // 2, mode='edge')
    rows = sum(g[i] * p[:, i:i + W] for i in range(x.size))
    return sum(g[i] * rows[i:i + H] for i in range(x.size))


def wall() -> np.ndarray:
    """A wall around BG that slants (0.2 % of depth per pixel: seen at about 14 degrees)."""
    u = np.arange(W)[None, :].repeat(H, axis=0)
    return BG * (1 + 0.002 * (u - W / 2))


def box_scene() -> np.ndarray:
    """A box (FG) in front of :func:`wall`: true depth, metres, float64 (H, W)."""
    depth = wall()
    depth[30:70, 40:90] = FG
    return depth


def stream(base: np.ndarray, scales, noise: float = 0.002, seed: int = 0):
    rng = np.random.default_rng(seed)
    for s in scales:
        yield (base * s * (1 + noise * rng.standard_normal(base.shape))).astype(np.float32)


def log_level(a: np.ndarray, base: np.ndarray) -> float:
    r = a / base
    return float(np.log(np.median(r[np.isfinite(r)])))


# ----------------------------------------------------------------------------------------------
# edges and flying pixels

@pytest.mark.parametrize('method', ['jump', 'angle'])
def test_flying_mask_is_scale_free(method):
    # The same mask for metres, millimetres and a relative map: fails if a threshold is absolute.
    pred = box_blur(box_scene(), 9).astype(np.float32)
    mask = q.flying_pixel_mask(pred, method=method, K=K)
    assert 0 < mask.mean() < 0.5
    for k in (1e-3, 0.37, 1000.0):
        assert np.array_equal(q.flying_pixel_mask(pred * np.float32(k), method=method, K=K),
                              mask), k


def test_edge_cue_is_the_same_for_depth_and_disparity():
    # log(1 / z) = -log z: the spread, hence the cue, does not change (fails if it used depth
    # differences rather than log-depth ones).
    pred = box_blur(box_scene(), 7).astype(np.float32)
    np.testing.assert_allclose(q.log_spread(1.0 / pred), q.log_spread(pred), atol=1e-5)
    np.testing.assert_allclose(q.discontinuity_confidence(2.5 / pred),
                               q.discontinuity_confidence(pred), atol=1e-5)


@pytest.mark.parametrize('kind,size', [('box', 7), ('box', 11), ('box', 15), ('gauss', 2),
                                       ('gauss', 4)])
def test_no_point_left_between_box_and_wall(kind, size):
    # A network-like smoothed silhouette: after the mask no pixel sits between the two surfaces
    # (5 % margins), and the mask stays near the silhouette.
    true = box_scene()
    blur = box_blur if kind == 'box' else gaussian_blur
    pred = blur(true, size).astype(np.float32)
    mask = q.flying_pixel_mask(pred)
    between = ~mask & (pred > FG * 1.05) & (pred < wall() * 0.95)
    assert not between.any(), f'{between.sum()} pixels between the box and the wall remain'
    silhouette = np.zeros((H, W), dtype=bool)
    silhouette[30 - 12:70 + 12, 40 - 12:90 + 12] = True
    silhouette[30 + 12:70 - 12, 40 + 12:90 - 12] = False
    assert mask[~silhouette].mean() < 0.01      # the slanted wall and the box face are kept


def test_edge_confidence_low_on_silhouettes_high_on_surfaces():
    pred = box_blur(box_scene(), 9).astype(np.float32)
    conf = q.discontinuity_confidence(pred)
    assert conf[50, 40] < 0.2                   # on the box's left silhouette
    assert conf[50, 65] > 0.99 and conf[10, 10] > 0.9


def test_spread_shared_between_edge_cue_and_mask_matches():
    pred = box_blur(box_scene(), 9).astype(np.float32)
    spread = q.log_spread(pred)
    np.testing.assert_array_equal(q.discontinuity_confidence(pred, spread=spread),
                                  q.discontinuity_confidence(pred))
    np.testing.assert_array_equal(q.flying_pixel_mask(pred, spread=spread),
                                  q.flying_pixel_mask(pred))


def test_dilate_grows_the_mask():
    pred = box_blur(box_scene(), 5).astype(np.float32)
    m0 = q.flying_pixel_mask(pred)
    m2 = q.flying_pixel_mask(pred, dilate=2)
    assert m2[m0].all() and m2.sum() > m0.sum()


# ----------------------------------------------------------------------------------------------
# confidence ranges and invalid pixels

def invalid_depth() -> np.ndarray:
    d = box_blur(box_scene(), 7).astype(np.float32)
    d[5, 5], d[6, 6], d[7, 7], d[8, 8] = np.nan, 0.0, -1.0, np.inf
    d[40:44, 60:64] = np.nan
    return d


def check_unit(conf: np.ndarray, invalid: np.ndarray) -> None:
    assert conf.dtype == np.float32 and conf.shape == (H, W)
    assert np.isnan(conf[invalid]).all()
    valid = conf[~invalid]
    assert np.isfinite(valid).all() and valid.min() >= 0 and valid.max() <= 1


def test_confidences_in_unit_range_and_nan_where_depth_invalid():
    d = invalid_depth()
    invalid = ~(np.isfinite(d) & (d > 0))
    edge = q.discontinuity_confidence(d)
    check_unit(edge, invalid)
    previous = d * np.float32(1.03)
    previous[20:30, 20:30] = np.nan              # unknown there: 'unknown', not NaN
    temporal = q.temporal_confidence(d, previous)
    check_unit(temporal, invalid)
    assert np.all(temporal[22:28, 22:28] == 0.5)
    rng = np.random.default_rng(0)
    uv = rng.uniform([0, 0], [W - 1, H - 1], (300, 2))
    lidar = q.lidar_confidence((H, W), uv, np.abs(rng.normal(0, 0.1, 300)))
    assert lidar.dtype == np.float32 and np.isfinite(lidar).all()
    assert lidar.min() >= 0 and lidar.max() <= 1
    model = rng.uniform(1, 50, (H, W)).astype(np.float32)   # DA3-like: any range
    combined = q.combine_confidence({'edge': edge, 'lidar': lidar, 'temporal': temporal,
                                     'model': model, 'off': None}, depth=d)
    check_unit(combined, invalid)
    assert q.flying_pixel_mask(d)[invalid].sum() == 0        # invalid is never 'flying'


def test_geometric_mean_combination():
    a = np.full((4, 4), 0.25, np.float32)
    b = np.ones((4, 4), np.float32)
    np.testing.assert_allclose(q.combine_confidence({'a': a, 'b': b}), 0.5, rtol=1e-6)
    np.testing.assert_allclose(q.combine_confidence({'a': a, 'b': b}, weights={'a': 3}),
                               0.25 ** 0.75, rtol=1e-5)
    zero = a.copy()
    zero[0, 0] = 0
    assert q.combine_confidence({'a': zero, 'b': b})[0, 0] == 0     # a cue at 0 vetoes
    half = np.full((4, 4), 0.5, np.float32)
    np.testing.assert_allclose(q.combine_confidence({'a': half, 'b': half, 'c': half}), 0.5,
                               rtol=1e-6)  # the scale does not sink with more cues
    d = np.ones((4, 4), np.float32)
    d[1, 1] = np.nan
    assert np.isnan(q.combine_confidence({}, depth=d)[1, 1])


@pytest.mark.parametrize('mode,raw,expected', [
    ('expp1', [1.0, 2.0, 5.0], [0.0, 0.5, 0.8]),
    ('sigmoid', [0.0, 100.0, -100.0], [0.5, 1.0, 0.0]),
    ('unit', [-0.5, 0.3, 2.0], [0.0, 0.3, 1.0]),
])
def test_model_confidence_normalisation(mode, raw, expected):
    conf = np.array([raw], dtype=np.float32)
    np.testing.assert_allclose(q.normalize_model_confidence(conf, mode), [expected], atol=1e-6)


def test_median_normalisation_is_half_at_the_frame_median():
    conf = np.full((8, 8), 2.0, np.float32)     # the median (of every 4th pixel each way): 2
    conf[1, 1], conf[2, 2] = 1.0, 3.0
    out = q.normalize_model_confidence(conf)
    np.testing.assert_allclose([out[1, 1], out[0, 0], out[2, 2]], [1 / 3, 0.5, 0.6], rtol=1e-6)


def test_median_normalisation_is_scale_free():
    conf = np.random.default_rng(1).uniform(0.1, 9, (H, W)).astype(np.float32)
    np.testing.assert_allclose(q.normalize_model_confidence(conf * 300),
                               q.normalize_model_confidence(conf), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# LiDAR

def test_lidar_confidence_lower_near_high_residual_points():
    vv, uu = np.mgrid[2:H:6, 2:W:4]
    uv = np.stack([uu.ravel(), vv.ravel()], axis=1).astype(np.float32)
    residual = np.full(len(uv), 0.01)
    # The fit is 40 % off on a 48 x 48 px patch: three grid cells (LIDAR_CELL 16), the extent
    # of the cue's 3 x 3-cell smoothing.
    bad = (np.abs(uv[:, 0] - 96) < 24) & (np.abs(uv[:, 1] - 32) < 24)
    residual[bad] = 0.4
    conf = q.lidar_confidence((H, W), uv, residual)
    assert conf[32, 96] < 0.3 < 0.9 < conf[70, 20]
    # Far from every point: the neutral value (default: the frame's mean agreement).
    only_left = uv[:, 0] < 30
    conf = q.lidar_confidence((H, W), uv[only_left], residual[only_left], neutral=0.5)
    assert conf[50, W - 1] == pytest.approx(0.5, abs=1e-6)
    assert conf[50, 10] > 0.9


def test_lidar_residuals_at_points():
    depth = np.full((H, W), 2.0, np.float32)
    depth[0, 0] = np.nan
    uv = np.array([[10.2, 20.4], [0, 0], [W + 5, 3], [5, 5]], np.float32)
    z = np.array([2.5, 2.0, 2.0, 0.0], np.float32)
    res = q.lidar_residuals(depth, uv, z)
    assert res[0] == pytest.approx(0.2) and np.isnan(res[1:]).all()


# ----------------------------------------------------------------------------------------------
# time

@pytest.mark.parametrize('shift', [False, True])
def test_stabilizer_holds_a_jittered_static_scene(shift):
    base = box_blur(box_scene(), 7).astype(np.float32)
    rng = np.random.default_rng(3)
    scales = np.exp(0.05 * rng.standard_normal(80))
    stab = q.TemporalStabilizer(shift=shift)
    ref = 1 / base if shift else base
    lin, lout = [], []
    for i, x in enumerate(stream(base, scales)):
        x = 1 / x if shift else x
        out, info = stab.update(x, 0.033 * i)
        assert not info.reset and not info.followed
        lin.append(log_level(x, ref))
        lout.append(log_level(out, ref))
    ratio = np.std(np.diff(lin[5:])) / np.std(np.diff(lout[5:]))
    assert ratio > 5, ratio


@pytest.mark.parametrize('shift', [False, True])
def test_stabilizer_follows_a_persistent_20_percent_change(shift):
    base = box_blur(box_scene(), 7).astype(np.float32)
    rng = np.random.default_rng(4)
    scales = np.exp(0.05 * rng.standard_normal(40))
    scales[20:] *= 1.2
    stab = q.TemporalStabilizer(shift=shift)
    ref = 1 / base if shift else base
    out_levels, followed = [], []
    for i, x in enumerate(stream(base, scales)):
        out, info = stab.update(1 / x if shift else x, 0.033 * i)
        out_levels.append(abs(log_level(out, ref)))
        followed.append(info.followed)
    new = np.mean(np.log(scales[20:]))
    assert any(followed[20:30]) and not any(followed[:20])
    assert all(abs(lv - new) < math.log(1.2) / 4 for lv in out_levels[30:])


def test_stabilizer_ignores_a_single_glitch_frame():
    base = box_blur(box_scene(), 7).astype(np.float32)
    scales = np.ones(12)
    scales[6] = 3.0                               # a TensorRT-like scale glitch
    stab = q.TemporalStabilizer()
    for i, x in enumerate(stream(base, scales)):
        out, info = stab.update(x, 0.033 * i)
        assert abs(log_level(out, base)) < 0.01
        assert info.held == (i == 6)


def test_stabilizer_resets_on_scene_cut_once_with_reason():
    base = box_blur(box_scene(), 7).astype(np.float32)
    other = np.flipud(np.fliplr(base)) * np.float32(1.0) + np.float32(
        np.random.default_rng(5).uniform(0, 4, (H, W)))
    stab = q.TemporalStabilizer()
    first = stab.update(base, 0.0)[1]
    assert not first.reset and first.reason == 'first frame'
    frames = [base] * 5 + [other] * 5
    infos = [stab.update(x, 0.033 * (i + 1))[1] for i, x in enumerate(frames)]
    assert [i.reset for i in infos] == [False] * 5 + [True] + [False] * 4
    assert 'scene cut' in infos[5].reason and stab.previous is not None
    info = stab.update(other, 5.0)[1]             # 4.7 s after the last frame
    assert info.reset and 'max_gap' in info.reason
    assert stab.update(other, 0.0)[1].reason.startswith('stamp went backwards')
    assert 'shape changed' in stab.update(other[:, :-1], 0.1)[1].reason


def test_stabilizer_output_is_nan_where_invalid_and_state_is_private():
    d = invalid_depth()
    stab = q.TemporalStabilizer()
    valid = np.ones((H, W), dtype=bool)
    valid[0] = False
    out, _ = stab.update(d, 0.0, valid=valid)
    assert np.isnan(out[0]).all() and np.isnan(out[5, 5]) and np.isnan(out[6, 6])
    out[:] = 1.0                                  # the caller's copy: the state must not change
    assert np.isnan(stab.output[0]).all()
    with pytest.raises(ValueError):
        stab.output[1, 1] = 0                     # read-only view


def test_temporal_confidence_flags_flicker_not_global_scale():
    base = box_blur(box_scene(), 7).astype(np.float32)
    current = base * np.float32(1.1)              # global change: not the pixel's fault
    current[10:20, 10:20] *= np.float32(1.3)      # a flickering region
    conf = q.temporal_confidence(current, base)
    assert conf[15, 15] < 0.1 and conf[60, 110] > 0.99
    assert np.all(q.temporal_confidence(base, None) == 0.5)


# ----------------------------------------------------------------------------------------------
# sparsification and AUSE

def test_ause_oracle_zero_constant_worse_than_a_good_cue():
    rng = np.random.default_rng(6)
    error = np.abs(rng.normal(0, 1, 20000)) * rng.uniform(0.2, 2, 20000)
    assert q.ause(error, -error) == pytest.approx(0.0, abs=1e-12)   # the oracle
    good = -error * rng.uniform(0.5, 1.5, error.size)                # noisy but informative
    constant = np.ones_like(error)
    assert q.ause(error, constant) > 3 * q.ause(error, good) > 0


def test_constant_confidence_removes_at_random():
    # Random tie-breaking: the curve of a constant stays at the mean error (no credit for the
    # order the pixels happen to be stored in, here sorted by error).
    error = np.sort(np.random.default_rng(7).uniform(0, 1, 50000))
    fractions, curve, oracle = q.sparsification(error, np.zeros_like(error), steps=10)
    np.testing.assert_allclose(curve, error.mean(), rtol=0.03)
    assert oracle[0] == pytest.approx(error.mean()) and np.all(np.diff(oracle) < 0)
    assert fractions[0] == 0 and fractions[-1] == pytest.approx(0.9)


def test_sparsification_ignores_non_finite_pixels():
    error = np.array([0.1, np.nan, 0.5, 0.2, 0.9])
    conf = np.array([0.9, 0.5, np.nan, 0.8, 0.1])
    _, curve, oracle = q.sparsification(error, conf, steps=3)
    np.testing.assert_allclose(curve[0], (0.1 + 0.2 + 0.9) / 3)
    np.testing.assert_allclose(curve[1], (0.1 + 0.2) / 2)           # 0.9 (least confident) out
    np.testing.assert_allclose(oracle, curve)


# ----------------------------------------------------------------------------------------------
# argument validation

@pytest.mark.parametrize('call,match', [
    (lambda: q.log_spread(np.ones((3, 3, 3))), r'\(H, W\)'),
    (lambda: q.log_spread(np.ones((4, 4)), window=4), 'odd integer'),
    (lambda: q.discontinuity_confidence(np.ones((4, 4)), jump=0), 'jump must be positive'),
    (lambda: q.discontinuity_confidence(np.ones((4, 4)), spread=np.ones((3, 4))),
     'spread must have the shape'),
    (lambda: q.flying_pixel_mask(np.ones((4, 4)), method='normal'), 'method must be one of'),
    (lambda: q.flying_pixel_mask(np.ones((4, 4)), method='angle'), 'needs K'),
    (lambda: q.flying_pixel_mask(np.ones((4, 4)), 95, method='angle', K=K), r'\(0, 90\)'),
    (lambda: q.flying_pixel_mask(np.ones((4, 4)), dilate=-1), 'dilate'),
    (lambda: q.flying_pixel_mask(np.ones((4, 4)), threshold=-0.1), 'threshold'),
    (lambda: q.lidar_confidence((4, 4), np.ones((3, 3)), np.ones(3)), r'\(M, 2\)'),
    (lambda: q.lidar_confidence((4, 4), np.ones((3, 2)), np.ones(2)), 'one value per point'),
    (lambda: q.lidar_confidence((4, 4), np.ones((1, 2)), [-0.1]), '>= 0'),
    (lambda: q.lidar_confidence((4, 4), np.ones((1, 2)), [0.1], cell=0), 'cell'),
    (lambda: q.lidar_confidence((4, 4), np.ones((1, 2)), [0.1], neutral=2), 'neutral'),
    (lambda: q.lidar_confidence((0, 4), np.ones((1, 2)), [0.1]), 'shape'),
    (lambda: q.lidar_residuals(np.ones((4, 4)), np.ones((2, 2)), np.ones(3)), 'one depth'),
    (lambda: q.TemporalStabilizer(smoothing=1.0), 'smoothing'),
    (lambda: q.TemporalStabilizer(change_frames=1), 'change_frames'),
    (lambda: q.TemporalStabilizer(agree_tol=0), 'agree_tol'),
    (lambda: q.TemporalStabilizer(min_agreement=1.5), 'min_agreement'),
    (lambda: q.TemporalStabilizer().update(np.ones((4, 4)), math.nan), 'stamp'),
    (lambda: q.TemporalStabilizer().update(np.ones((4, 4)), 0.0, valid=np.ones((4, 4))),
     'valid must be a bool'),
    (lambda: q.temporal_confidence(np.ones((4, 4)), np.ones((4, 5))), 'shape'),
    (lambda: q.temporal_confidence(np.ones((4, 4)), None, window=2), 'odd integer'),
    (lambda: q.temporal_confidence(np.ones((4, 4)), None, unknown=-1), 'unknown'),
    (lambda: q.combine_confidence({'a': np.ones((4, 4)), 'b': np.ones((5, 4))}), 'one'),
    (lambda: q.combine_confidence({'a': np.ones((4, 4))}, weights={'z': 1}), 'not given'),
    (lambda: q.combine_confidence({'a': np.ones((4, 4))}, weights={'a': 0}), 'weight'),
    (lambda: q.combine_confidence({}), 'nothing to give a shape'),
    (lambda: q.combine_confidence([np.ones((4, 4))]), 'dict'),
    (lambda: q.normalize_model_confidence(np.ones((4, 4)), 'softmax'), 'mode'),
    (lambda: q.ause(np.ones(4), np.ones(5)), 'same shape'),
    (lambda: q.ause(np.full(4, np.nan), np.ones(4)), 'no pixel'),
    (lambda: q.ause(-np.ones(4), np.ones(4)), '>= 0'),
    (lambda: q.sparsification(np.ones(4), np.ones(4), steps=1), 'steps'),
])
def test_argument_validation(call, match):
    with pytest.raises(QualityError, match=match):
        call()
    assert issubclass(QualityError, ValueError)
