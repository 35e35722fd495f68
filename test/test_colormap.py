"""Tests for depth_node.colormap: turbo LUT, NaN handling, range and near = red convention."""

import colorsys

import numpy as np
import pytest

from depth_node.colormap import _robust_range, colorize, ColormapError, TURBO_LUT


def hue(rgb):
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255.0))[0] * 360.0


def test_lut_shape_and_ends():
    assert TURBO_LUT.shape == (256, 3) and TURBO_LUT.dtype == np.uint8
    assert TURBO_LUT[0].max() < 60  # very dark (the polynomial's first entries are grey-violet)
    r, g, b = TURBO_LUT[16].astype(int)
    assert b > r and b > g  # then blue (far)
    r, g, b = TURBO_LUT[255].astype(int)
    assert r > 100 and g < 30 and b < 30  # dark red (near)
    r, g, b = TURBO_LUT[128].astype(int)
    assert g > r and g > b  # green in the middle


def test_lut_hue_runs_monotonically_from_blue_to_red():
    hues = np.array([hue(c) for c in TURBO_LUT])
    assert np.all(np.diff(hues) <= 0.5)  # non-increasing, up to uint8 rounding (< 0.5 degree)
    assert hues[10] > 220 and hues[-1] < 10


def test_nan_and_inf_are_black():
    depth = np.linspace(1.0, 5.0, 20, dtype=np.float32).reshape(4, 5)
    depth[0, 0] = np.nan
    depth[1, 1] = np.inf
    depth[2, 2] = -np.inf
    out = colorize(depth)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    for v, u in [(0, 0), (1, 1), (2, 2)]:
        assert out[v, u].tolist() == [0, 0, 0]
    finite = np.isfinite(depth)
    assert (out[finite].max(axis=1) > 0).all()
    assert not colorize(np.full((3, 3), np.nan)).any()


def test_depth_near_is_red_and_disparity_invert():
    ramp = np.linspace(1.0, 10.0, 100, dtype=np.float32)[np.newaxis, :]
    out = colorize(ramp, vmin=1.0, vmax=10.0)
    assert out[0, 0].tolist() == TURBO_LUT[255].tolist()  # nearest depth: red
    assert out[0, -1].tolist() == TURBO_LUT[0].tolist()  # farthest: blue
    hues = [hue(c) for c in out[0, 10:]]
    assert np.all(np.diff(hues) >= -0.5)  # growing depth: hue goes red -> blue

    disparity = 1.0 / ramp  # larger = nearer
    inv = colorize(disparity, invert=True, vmin=0.1, vmax=1.0)
    assert inv[0, 0].tolist() == TURBO_LUT[255].tolist()
    assert inv[0, -1].tolist() == TURBO_LUT[0].tolist()


def test_explicit_range_clamps_outside_values():
    values = np.array([[-5.0, 0.0, 5.0, 10.0, 50.0]], dtype=np.float32)
    out = colorize(values, vmin=0.0, vmax=10.0)
    assert out[0, 0].tolist() == out[0, 1].tolist() == TURBO_LUT[255].tolist()
    assert out[0, 3].tolist() == out[0, 4].tolist() == TURBO_LUT[0].tolist()
    assert out[0, 2].tolist() in (TURBO_LUT[127].tolist(), TURBO_LUT[128].tolist())


def test_robust_range_ignores_outliers():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 5.0, (100, 100)).astype(np.float32)
    depth[0, :5] = 1e6  # a few wild values (0.05 %) must not squash the colour range
    out = colorize(depth)
    lo, hi = np.percentile(depth, [2, 98])
    idx = np.rint((hi - depth) * 255.0 / (hi - lo)).clip(0, 255).astype(int)
    np.testing.assert_array_equal(out, TURBO_LUT[idx])
    inside = depth < 5.0
    assert len(np.unique(out[inside].reshape(-1, 3), axis=0)) > 200  # full palette in use


def test_large_images_range_from_a_subsample_is_close():
    v, u = np.mgrid[0:720, 0:1280]
    depth = (1.0 + 0.01 * u + 0.002 * v).astype(np.float32)  # a tilted floor, 1 to 15 m
    depth[::7, ::5] = np.nan
    lo, hi = _robust_range(depth)
    exact = np.percentile(depth[np.isfinite(depth)], [2, 98])
    np.testing.assert_allclose([lo, hi], exact, atol=0.005 * (exact[1] - exact[0]))
    sparse = np.full((720, 1280), np.nan, np.float32)
    sparse[1, 1] = 3.0  # a single valid pixel off the sampling grid still sets the range
    assert _robust_range(sparse) == (3.0, 3.0)


def test_one_sided_range_and_constant_image():
    depth = np.linspace(1.0, 3.0, 50, dtype=np.float32).reshape(5, 10)
    out = colorize(depth, vmin=0.0)  # vmax from the 98th percentile
    assert out[-1, -1].tolist() == TURBO_LUT[0].tolist()
    const = colorize(np.full((4, 4), 2.0, np.float32))
    assert (const == TURBO_LUT[128]).all()  # no division by zero: mid-scale


def test_integer_input_and_errors():
    assert colorize(np.arange(12, dtype=np.uint16).reshape(3, 4)).shape == (3, 4, 3)
    with pytest.raises(ColormapError, match='2-D'):
        colorize(np.zeros((2, 2, 3)))
    with pytest.raises(ColormapError, match='below'):
        colorize(np.zeros((2, 2)), vmin=2.0, vmax=1.0)
    with pytest.raises(ColormapError, match='finite'):
        colorize(np.ones((2, 2)), vmin=0.0, vmax=np.inf)
    with pytest.raises(ColormapError, match='numeric'):
        colorize(np.array([['a']]))
