"""Property-based tests for the CameraInfo path: any field values either give usable intrinsics
or raise :class:`~depth_node.camera_info.CameraInfoError`; fitting them to an image of another
size scales them or refuses.

The node calls :func:`intrinsics_from_fields` on every CameraInfo message and
:func:`fit_to_image` on every frame, so these are the functions a misbehaving driver reaches.
test_camera_info.py holds the worked examples; here hypothesis draws the fields.
"""

from __future__ import annotations

import math

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np

from depth_node.camera_info import (
    CameraInfoError, fit_to_image, Intrinsics, intrinsics_from_fields, KNOWN_DISTORTION_MODELS)
from depth_node.lidar import project_points

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
# Magnitudes a calibration can have (pixels, coefficients), plus the special values drivers send.
PLAUSIBLE = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1.0, math.nan, math.inf, -math.inf])
SIZES = st.integers(-2, 5000) | st.sampled_from([0, 1, 2 ** 31, 2 ** 63])
MODELS = st.sampled_from(KNOWN_DISTORTION_MODELS + ('', 'none', 'fisheye', 'Plumb_Bob', 'kb4',
                                                    ' plumb_bob', 'unknown'))


@st.composite
def k_matrices(draw, values=PLAUSIBLE):
    """Mostly calibrated-looking K (positive fx, fy, cx, cy, last row 0 0 1), some corrupted."""
    fx, fy = draw(st.floats(1.0, 5000.0)), draw(st.floats(1.0, 5000.0))
    cx, cy = draw(st.floats(1.0, 4000.0)), draw(st.floats(1.0, 4000.0))
    k = [fx, draw(st.sampled_from([0.0, 0.0, 0.5])), cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    for _ in range(draw(st.integers(0, 3))):
        k[draw(st.integers(0, 8))] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        k = [0.0] * 9  # uncalibrated driver
    return k


@st.composite
def camera_info_fields(draw, values=PLAUSIBLE):
    """Field values of a CameraInfo as a driver might send them (lengths may be wrong too)."""
    model = draw(MODELS)
    d_len = draw(st.sampled_from([0, 4, 5, 8, 14]) | st.integers(0, 16))
    if draw(st.booleans()):
        d = [0.0] * d_len
    else:
        d = draw(st.lists(values, min_size=d_len, max_size=d_len))
    p = draw(st.sampled_from(['zeros', 'from_k', 'random']))
    k = draw(k_matrices(values))
    if p == 'zeros':
        p = [0.0] * 12
    elif p == 'from_k':
        p = k[:3] + [0.0] + k[3:6] + [0.0] + k[6:9] + [0.0]
    else:
        p = draw(st.lists(values, min_size=draw(st.sampled_from([12, 12, 9])), max_size=12))
    r = draw(st.sampled_from([[0.0] * 9, [1.0, 0, 0, 0, 1, 0, 0, 0, 1]]) |
             st.lists(values, min_size=9, max_size=9))
    return dict(width=draw(SIZES), height=draw(SIZES), k=k, d=d, distortion_model=model, p=p,
                r=r)


def _check_valid(intr: Intrinsics, fields: dict) -> None:
    """What every accepted CameraInfo guarantees to the rest of the node."""
    assert intr.width == fields['width'] > 0 and intr.height == fields['height'] > 0
    for name, shape in (('K', (3, 3)), ('P', (3, 4)), ('R', (3, 3))):
        a = getattr(intr, name)
        assert a.shape == shape and a.dtype == np.float64 and np.isfinite(a).all()
        assert not a.flags.writeable
    assert intr.D.ndim == 1 and np.isfinite(intr.D).all()
    assert intr.fx > 0 and intr.fy > 0 and intr.cx != 0 and intr.cy != 0
    np.testing.assert_array_equal(intr.K[2], [0.0, 0.0, 1.0])
    assert intr.P[0, 0] > 0 and intr.P[1, 1] > 0
    assert intr.distortion_model in KNOWN_DISTORTION_MODELS + ('', 'none')
    if intr.distortion_model in ('', 'none'):
        assert not intr.D.any()


@settings(max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(camera_info_fields(values=ANY_FLOAT | PLAUSIBLE))
def test_any_fields_give_valid_intrinsics_or_camera_info_error(fields):
    try:
        intr = intrinsics_from_fields(**fields)
    except CameraInfoError as exc:
        assert str(exc), 'the refusal must say why'
        return
    _check_valid(intr, fields)


@settings(max_examples=200, derandomize=True)
@given(camera_info_fields(), st.sampled_from([math.nan, math.inf, -math.inf]),
       st.integers(0, 8))
def test_non_finite_k_always_refused(fields, bad, index):
    fields['k'] = list(fields['k'])
    fields['k'][index] = bad
    try:
        intrinsics_from_fields(**fields)
    except CameraInfoError:
        return
    raise AssertionError(f'k with {bad} at {index} accepted: {fields}')


@settings(max_examples=100, derandomize=True)
@given(camera_info_fields(), st.sampled_from(['k', 'p']))
def test_zero_k_or_focal_lengths_refused(fields, which):
    fields[which] = [0.0] * (9 if which == 'k' else 12)
    if which == 'p':
        fields['p'] = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    try:
        intrinsics_from_fields(**fields)
    except CameraInfoError:
        return
    raise AssertionError(f'zero focal length accepted: {fields}')


@st.composite
def valid_intrinsics(draw):
    width, height = draw(st.integers(2, 4000)), draw(st.integers(2, 3000))
    fx, fy = draw(st.floats(10.0, 5000.0)), draw(st.floats(10.0, 5000.0))
    cx, cy = draw(st.floats(0.5, width)), draw(st.floats(0.5, height))
    model = draw(st.sampled_from(['plumb_bob', 'rational_polynomial', 'equidistant', '']))
    n = {'plumb_bob': 5, 'rational_polynomial': 8, 'equidistant': 4, '': 5}[model]
    d = [0.0] * n if model == '' else draw(st.lists(st.floats(-0.3, 0.3), min_size=n,
                                                    max_size=n))
    return intrinsics_from_fields(width, height, [fx, 0, cx, 0, fy, cy, 0, 0, 1], d, model,
                                  [0.0] * 12, [0.0] * 9)


@settings(max_examples=400, derandomize=True)
@given(valid_intrinsics(), st.integers(-1, 5000), st.integers(-1, 4000))
def test_fit_to_image_scales_when_aspect_matches_else_refuses(intr, width, height):
    try:
        fitted = fit_to_image(intr, width, height)
    except CameraInfoError as exc:
        if width > 0 and height > 0:
            sx, sy = width / intr.width, height / intr.height
            assert not math.isclose(sx, sy, rel_tol=0.01), exc
            assert 'aspect ratio' in str(exc)
        return
    assert width > 0 and height > 0
    sx, sy = width / intr.width, height / intr.height
    assert math.isclose(sx, sy, rel_tol=0.01)
    assert (fitted.width, fitted.height) == (width, height)
    # pixel centres map to pixel centres: a ray's pixel u becomes (u + 0.5) * sx - 0.5
    rays = np.array([[0.0, 0.0, 1.0], [0.3, -0.2, 1.0], [-0.5, 0.4, 1.0]]).T
    for M, N in ((intr.K, fitted.K), (intr.P[:, :3], fitted.P[:, :3])):
        u, u2 = M @ rays, N @ rays
        np.testing.assert_allclose(u2[0], (u[0] + 0.5) * sx - 0.5, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(u2[1], (u[1] + 0.5) * sy - 0.5, rtol=1e-9, atol=1e-9)
    assert math.isclose(fitted.fx, intr.fx * sx, rel_tol=1e-12)
    np.testing.assert_array_equal(fitted.K[2], [0, 0, 1])
    assert math.isclose(fitted.P[0, 3], intr.P[0, 3] * sx, rel_tol=1e-12, abs_tol=1e-12)
    np.testing.assert_array_equal(fitted.D, intr.D)
    assert fitted.distortion_model == intr.distortion_model
    # and back: the same camera again
    back = fit_to_image(fitted, intr.width, intr.height)
    np.testing.assert_allclose(back.K, intr.K, rtol=1e-9)


@settings(max_examples=200, derandomize=True)
@given(st.integers(200, 1000), st.integers(200, 1000), st.integers(1, 8), st.data())
def test_integer_binning_always_fits(width, height, factor, data):
    """A driver that bins by an integer factor (rounding down) keeps the aspect within 1 %."""
    full_w, full_h = width * factor + data.draw(st.integers(0, factor - 1)), \
        height * factor + data.draw(st.integers(0, factor - 1))
    intr = intrinsics_from_fields(full_w, full_h, [800.0, 0, full_w / 2, 0, 810.0, full_h / 2,
                                                   0, 0, 1], [], '', [0.0] * 12, [0.0] * 9)
    fitted = fit_to_image(intr, width, height)  # floor changes each side by < 0.5 %
    assert (fitted.width, fitted.height) == (width, height)
    assert math.isclose(fitted.fx, intr.fx * width / full_w, rel_tol=1e-12)
    assert math.isclose(fitted.fy, intr.fy * height / full_h, rel_tol=1e-12)


@settings(max_examples=200, derandomize=True)
@given(valid_intrinsics(), st.integers(1, 5000), st.integers(1, 4000))
def test_scaled_round_trip(intr, width, height):
    scaled = intr.scaled(width, height)
    assert (scaled.width, scaled.height) == (width, height)
    assert np.isfinite(scaled.K).all() and scaled.fx > 0 and scaled.fy > 0
    back = scaled.scaled(intr.width, intr.height)
    np.testing.assert_allclose(back.K, intr.K, rtol=1e-9, atol=1e-9)


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(camera_info_fields())
def test_accepted_camera_info_projects_a_scan(fields):
    """What the node does with accepted intrinsics when LiDAR is on: project the scan with them
    (the same camera model; nothing is refused later that was accepted on arrival)."""
    try:
        intr = intrinsics_from_fields(**fields)
    except CameraInfoError:
        return
    assert intr.max_radius > 0
    points = np.array([[0.0, 0.0, 5.0], [1.0, -0.5, 3.0], [-2.0, 1.0, 10.0], [50.0, 0.0, 1.0]])
    uv, z, index = project_points(points, intr)
    assert np.isfinite(uv).all() and (uv[:, 0] <= intr.width - 1).all()
    assert (uv[:, 1] <= intr.height - 1).all() and (uv >= 0).all()
