"""Tests for depth_node.lidar: PointCloud2 decoding, projection, occlusion, real frames."""

from __future__ import annotations

import array
import math
import warnings

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from depth_node.camera_info import CameraInfoError, Intrinsics
from depth_node.encodings import POINTFIELD_DATATYPES
from depth_node.lidar import (
    LidarError, occlusion_mask, prepare_points,
    project_points, projection_counts, read_points_xyz, transform_points,
)
from depth_node.sample_data import frame_folders, load_frame
from synthetic_scene import (HEIGHT as SCENE_H, K as SCENE_K, PLATE_HALF_U, PLATE_HALF_V,
                             PLATE_Z, T_CAMERA_LIDAR as SCENE_T, WALL_Z, WIDTH as SCENE_W,
                             plate_and_wall)

FLOAT32, FLOAT64, UINT16, UINT8 = 7, 8, 4, 2

XYZ = np.array([[1.0, 2.0, 3.0], [-4.5, 0.25, 10.0], [0.0, -1.0, 7.5]], dtype=np.float64)


def pack(points: np.ndarray, layout: list[tuple[str, int, str]], point_step: int,
         width: int, height: int, row_step: int | None = None,
         big_endian: bool = False) -> tuple[list[tuple[str, int, int, int]], int, bytes]:
    """Pack ``points`` (columns x, y, z, then extras in layout order) into PointCloud2 bytes.

    ``layout``: (name, offset, numpy type char) per field. Returns (fields, row_step, data).
    """
    codes = {np.dtype(v): k for k, v in POINTFIELD_DATATYPES.items()}
    order = '>' if big_endian else '<'
    dtype = np.dtype({'names': [n for n, _, _ in layout],
                      'formats': [order + t for _, _, t in layout],
                      'offsets': [o for _, o, _ in layout], 'itemsize': point_step})
    row_step = width * point_step if row_step is None else row_step
    buf = np.zeros(row_step * height, dtype=np.uint8)
    rows = np.ndarray((height, width), dtype=dtype, buffer=buf, strides=(row_step, point_step))
    flat = points.reshape(height, width, -1)
    for i, (name, _, _) in enumerate(layout):
        rows[name] = flat[..., i]
    fields = [(n, o, codes[np.dtype(t)], 1) for n, o, t in layout]
    return fields, row_step, buf.tobytes()


# ---------------------------------------------------------------- read_points_xyz

def test_float32_xyz_plain():
    fields, row_step, data = pack(XYZ, [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')], 12,
                                  3, 1)
    out = read_points_xyz(fields, 12, row_step, 3, 1, False, data)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_array_equal(out, XYZ.astype(np.float32))


def test_float64_xyz_with_extra_fields_and_padding():
    # Ouster/Velodyne-like: xyz float64, intensity float32, ring uint16, padding to 40 bytes.
    extra = np.array([[0.5, 3], [0.7, 12], [0.9, 63]])
    pts = np.hstack([XYZ, extra])
    layout = [('x', 0, 'f8'), ('y', 8, 'f8'), ('z', 16, 'f8'), ('intensity', 24, 'f4'),
              ('ring', 28, 'u2')]
    fields, row_step, data = pack(pts, layout, 40, 3, 1)
    out = read_points_xyz(fields, 40, row_step, 3, 1, False, data)
    np.testing.assert_array_equal(out, XYZ.astype(np.float32))


def test_fields_in_any_order_and_offset():
    layout = [('ring', 0, 'u2'), ('z', 2, 'f4'), ('intensity', 6, 'u1'), ('x', 7, 'f4'),
              ('y', 11, 'f4')]
    pts = np.column_stack([XYZ, [1, 2, 3], [9, 8, 7]])  # x y z ring intensity
    pts = pts[:, [3, 2, 4, 0, 1]]                      # reorder to the layout's order
    fields, row_step, data = pack(pts, layout, 16, 3, 1)
    out = read_points_xyz(fields, 16, row_step, 3, 1, False, data)
    np.testing.assert_array_equal(out, XYZ.astype(np.float32))


def test_big_endian():
    fields, row_step, data = pack(XYZ, [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')], 16,
                                  3, 1, big_endian=True)
    out = read_points_xyz(fields, 16, row_step, 3, 1, True, data)
    np.testing.assert_array_equal(out, XYZ.astype(np.float32))


def test_organized_cloud_with_row_padding_and_big_point_step():
    rng = np.random.default_rng(0)
    height, width, point_step = 4, 5, 48
    pts = rng.normal(size=(height * width, 3))
    row_step = width * point_step + 24   # padding at the end of each row
    fields, row_step, data = pack(pts, [('x', 16, 'f4'), ('y', 20, 'f4'), ('z', 24, 'f4')],
                                  point_step, width, height, row_step=row_step)
    out = read_points_xyz(fields, point_step, row_step, width, height, False, data)
    np.testing.assert_array_equal(out, pts.astype(np.float32))   # row-major over (row, col)


def test_non_finite_points_dropped():
    pts = XYZ.copy()
    pts = np.vstack([pts, [np.nan, 1, 1], [1, np.inf, 1], [1, 1, -np.inf]])
    fields, row_step, data = pack(pts, [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')], 12,
                                  6, 1)
    out = read_points_xyz(fields, 12, row_step, 6, 1, False, data)
    np.testing.assert_array_equal(out, XYZ.astype(np.float32))


def test_float64_beyond_float32_range_dropped():
    pts = np.vstack([XYZ, [1e300, 0, 1]])
    fields, row_step, data = pack(pts, [('x', 0, 'f8'), ('y', 8, 'f8'), ('z', 16, 'f8')], 24,
                                  4, 1)
    out = read_points_xyz(fields, 24, row_step, 4, 1, False, data)
    np.testing.assert_array_equal(out, XYZ.astype(np.float32))


def test_all_points_non_finite_gives_empty():
    pts = np.full((2, 3), np.nan)
    fields, row_step, data = pack(pts, [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')], 12,
                                  2, 1)
    assert read_points_xyz(fields, 12, row_step, 2, 1, False, data).shape == (0, 3)


@pytest.mark.parametrize('wrap', [bytes, bytearray, memoryview,
                                  lambda b: array.array('B', b),
                                  lambda b: np.frombuffer(b, dtype=np.uint8)])
def test_data_types(wrap):
    fields, row_step, data = pack(XYZ, [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')], 12,
                                  3, 1)
    out = read_points_xyz(fields, 12, row_step, 3, 1, False, wrap(data))
    np.testing.assert_array_equal(out, XYZ.astype(np.float32))


def test_count_zero_read_as_one():
    fields, row_step, data = pack(XYZ, [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')], 12,
                                  3, 1)
    fields = [(n, o, d, 0) for n, o, d, _ in fields]
    np.testing.assert_array_equal(read_points_xyz(fields, 12, row_step, 3, 1, False, data),
                                  XYZ.astype(np.float32))


GOOD_FIELDS = [('x', 0, FLOAT32, 1), ('y', 4, FLOAT32, 1), ('z', 8, FLOAT32, 1)]
GOOD_DATA = bytes(12 * 3)


@pytest.mark.parametrize('kwargs, match', [
    (dict(fields=GOOD_FIELDS[:2]), 'no field z'),
    (dict(fields=[('x', 0, FLOAT32, 1), ('y', 4, FLOAT32, 1), ('z', 8, UINT16, 1)]),
     'only FLOAT32'),
    (dict(fields=GOOD_FIELDS + [('x', 8, FLOAT32, 1)]), 'more than once'),
    (dict(fields=[('x', 0, FLOAT32, 1), ('y', 4, FLOAT32, 1), ('z', 8, 99, 1)]),
     'unknown datatype'),
    (dict(fields=[('x', 0, FLOAT32, 1), ('y', 4, FLOAT32, 1), ('z', 8, FLOAT64, 1)]),
     'does not fit in point_step'),
    (dict(fields=GOOD_FIELDS + [('intensity', 10, FLOAT32, 1)]), 'does not fit'),
    (dict(fields=GOOD_FIELDS + [('ring', 11, UINT8, 2)]), 'does not fit'),
    (dict(fields=[('x', -4, FLOAT32, 1)] + GOOD_FIELDS[1:]), 'negative'),
    (dict(fields=[('x', 0)] + GOOD_FIELDS[1:]), 'must be \\(name'),
    (dict(point_step=8, row_step=24, data=bytes(24)), 'does not fit in point_step'),
    (dict(point_step=0), 'point_step must be positive'),
    (dict(row_step=35), 'row_step 35 is smaller'),
    (dict(data=bytes(35)), 'holds 35 bytes'),
    (dict(data=bytes(37)), 'holds 37 bytes'),
    (dict(width=0, data=b''), 'empty cloud'),
    (dict(height=0, data=b''), 'empty cloud'),
    (dict(width=-1), 'non-negative'),
    (dict(data=np.zeros(9, dtype=np.float32)), 'uint8'),
    (dict(data=[0] * 36), 'data must be'),
])
def test_read_errors(kwargs, match):
    args = dict(fields=GOOD_FIELDS, point_step=12, row_step=36, width=3, height=1,
                is_bigendian=False, data=GOOD_DATA)
    args.update(kwargs)
    with pytest.raises(LidarError, match=match):
        read_points_xyz(**args)


field_strategy = st.tuples(st.sampled_from(['x', 'y', 'z', 'intensity', 'ring', 't']),
                           st.integers(-2, 40), st.integers(0, 10), st.integers(0, 3))


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(field_strategy, max_size=7), point_step=st.integers(-1, 48),
       row_step=st.integers(-1, 200), width=st.integers(-1, 5), height=st.integers(-1, 3),
       big=st.booleans(), data=st.binary(max_size=400))
def test_random_layouts_never_crash(fields, point_step, row_step, width, height, big, data):
    try:
        out = read_points_xyz(fields, point_step, row_step, width, height, big, data)
    except LidarError:
        return
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == 3
    assert out.shape[0] <= max(width, 0) * max(height, 0)
    assert np.isfinite(out).all()


@settings(max_examples=100, deadline=None)
@given(pad=st.integers(0, 16), row_pad=st.integers(0, 16), width=st.integers(1, 6),
       height=st.integers(1, 4), f64=st.booleans(), big=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_random_valid_layouts_round_trip(pad, row_pad, width, height, f64, big, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(scale=50, size=(width * height, 3)).astype(np.float32)
    size = 8 if f64 else 4
    t = 'f8' if f64 else 'f4'
    layout = [('x', pad, t), ('y', pad + size, t), ('z', pad + 2 * size, t)]
    step = pad + 3 * size + pad
    fields, row_step, data = pack(pts.astype(np.float64), layout, step, width, height,
                                  row_step=width * step + row_pad, big_endian=big)
    out = read_points_xyz(fields, step, row_step, width, height, big, data)
    np.testing.assert_array_equal(out, pts)


# ---------------------------------------------------------------- camera model

K = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])


def test_camera_model_pads_and_validates():
    cam = Intrinsics(K, [], '', 640, 480)
    assert cam.coefficients.shape == (0,) and not cam.distorted
    cam = Intrinsics(K, [0.1, 0.01, 0, 0], 'plumb_bob', 640, 480)
    np.testing.assert_array_equal(cam.D, [0.1, 0.01, 0, 0])  # kept as given (camera_info)
    np.testing.assert_array_equal(cam.coefficients, [0.1, 0.01, 0, 0, 0])  # zero-padded to 5
    Intrinsics(K, [0.1, 0, 0, 0, 0, 0, 0, 0], 'plumb_bob', 640, 480)   # zero extras accepted
    with pytest.raises(CameraInfoError, match='non-zero extras'):
        Intrinsics(K, [0.1, 0, 0, 0, 0, 0.2], 'plumb_bob', 640, 480)
    with pytest.raises(CameraInfoError, match='unknown distortion_model'):
        Intrinsics(K, [], 'kannala', 640, 480)
    with pytest.raises(CameraInfoError, match='unknown distortion_model'):
        Intrinsics(K, [], 'Plumb_Bob', 640, 480)  # the ROS names, exactly
    with pytest.raises(CameraInfoError, match='positive fx'):
        Intrinsics(np.diag([0.0, 1.0, 1.0]), [], 'none', 640, 480)
    with pytest.raises(CameraInfoError, match='positive'):
        Intrinsics(K, [], 'none', 0, 480)
    with pytest.raises(CameraInfoError, match='3x3'):
        Intrinsics(np.eye(2), [], 'none', 640, 480)


def test_camera_scaled():
    cam = Intrinsics(K, [0.1, 0.01, 0.001, 0.002, 0.0], 'plumb_bob', 640, 480)
    half = cam.scaled(320, 240)
    assert (half.width, half.height) == (320, 240)
    # Pixel-centre convention: u' = (u + 0.5) * s - 0.5.
    np.testing.assert_allclose(half.K, [[250, 0, 159.75], [0, 240, 119.75], [0, 0, 1]])
    np.testing.assert_array_equal(half.D, cam.D)
    np.testing.assert_allclose(half.P[:, :3], half.K)
    assert cam.scaled(640, 480) is cam
    # Projecting into the scaled camera equals projecting then mapping the pixels.
    pts = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0], [0.1, 0.1, 1.0]])
    uv, _, _ = project_points(pts, cam)
    uv_half, _, _ = project_points(pts, half)
    np.testing.assert_allclose(uv_half, (uv + 0.5) * 0.5 - 0.5, atol=1e-9)
    np.testing.assert_allclose(cam.scaled(1280, 960).scaled(640, 480).K, cam.K, atol=1e-12)


# ---------------------------------------------------------------- projection

def expected_pixels(p: np.ndarray, K: np.ndarray, D: list[float], model: str) -> np.ndarray:
    """Hand-written OpenCV projection of one point, for reference."""
    x, y = p[0] / p[2], p[1] / p[2]
    r2 = x * x + y * y
    if model == 'equidistant':
        k1, k2, k3, k4 = D
        r = math.sqrt(r2)
        th = math.atan(r)
        thd = th * (1 + k1 * th ** 2 + k2 * th ** 4 + k3 * th ** 6 + k4 * th ** 8)
        xd, yd = x * thd / r, y * thd / r
    else:
        k1, k2, p1, p2, k3 = D[:5]
        radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        if model == 'rational_polynomial':
            k4, k5, k6 = D[5:]
            radial /= 1 + k4 * r2 + k5 * r2 ** 2 + k6 * r2 ** 3
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.array([K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2]])


POINTS = np.array([[0.4, -0.3, 2.0], [-1.2, 0.8, 5.0], [0.05, 0.02, 1.0]])


@pytest.mark.parametrize('model, D', [
    ('plumb_bob', [-0.28, 0.07, 0.0012, -0.0008, 0.01]),
    ('rational_polynomial', [0.5, -0.1, 0.001, 0.002, 0.01, 0.8, 0.05, 0.002]),
    ('equidistant', [-0.01, 0.005, -0.002, 0.0005]),
])
def test_distortion_models_match_hand_formula(model, D):
    Ks = K.copy()
    Ks[0, 1] = 0.7  # a little skew too
    cam = Intrinsics(Ks, D, model, 640, 480)
    uv, z, index = project_points(POINTS, cam)
    assert index.tolist() == [0, 1, 2]
    np.testing.assert_allclose(z, POINTS[:, 2])
    for i, p in enumerate(POINTS):
        np.testing.assert_allclose(uv[i], expected_pixels(p, Ks, D, model), atol=1e-9)
    # And the distortion matters: pixels differ from the pinhole projection.
    pin, _, _ = project_points(POINTS, Intrinsics(Ks, [], 'none', 640, 480))
    assert np.abs(uv - pin).max() > 1.0


def test_plumb_bob_hand_computed_numbers():
    # x = 0.2, y = -0.15, r2 = 0.0625; k1 = -0.2, p1 = 0.01, p2 = 0.02:
    # radial = 1 - 0.0125 = 0.9875; xd = 0.1975 + 2*0.01*0.2*-0.15 + 0.02*(0.0625 + 0.08)
    #       = 0.1975 - 0.0006 + 0.00285 = 0.19975
    # yd = -0.148125 + 0.01*(0.0625 + 0.045) + 2*0.02*0.2*-0.15 = -0.148125 + 0.001075 - 0.0012
    #    = -0.14825
    cam = Intrinsics(K, [-0.2, 0.0, 0.01, 0.02, 0.0], 'plumb_bob', 640, 480)
    uv, _, _ = project_points(np.array([[0.4, -0.3, 2.0]]), cam)
    np.testing.assert_allclose(uv[0], [500 * 0.19975 + 320, 480 * -0.14825 + 240], atol=1e-9)


@pytest.mark.parametrize('model, D', [('plumb_bob', [0, 0, 0, 0, 0]), ('none', []),
                                      ('rational_polynomial', [0] * 8),
                                      ('equidistant', [])])
def test_zero_distortion_is_pinhole(model, D):
    cam = Intrinsics(K, D, model, 640, 480)
    uv, _, _ = project_points(POINTS, cam)
    pin = POINTS[:, :2] / POINTS[:, 2:] * [500, 480] + [320, 240]
    if model == 'equidistant':   # equidistant with k = 0 is the fisheye model, not pinhole
        r = np.hypot(*(POINTS[:, :2] / POINTS[:, 2:]).T)
        pin = (POINTS[:, :2] / POINTS[:, 2:]) * (np.arctan(r) / r)[:, None] * [500, 480] \
            + [320, 240]
    np.testing.assert_allclose(uv, pin, atol=1e-9)


def test_behind_and_outside_dropped():
    cam = Intrinsics(K, [], 'none', 640, 480)
    pts = np.array([[0, 0, 5.0],        # centre: kept
                    [0, 0, -5.0],       # behind
                    [0, 0, 0.05],       # nearer than min_depth
                    [10, 0, 5.0],       # right of the image
                    [0, -10, 5.0],      # above the image
                    [np.nan, 0, 5.0],   # invalid
                    [0.1, 0.1, np.inf],
                    [-3.19, -2.49, 5.0]])  # pixel (1, 0.96): kept
    uv, z, index = project_points(pts, cam)
    assert index.tolist() == [0, 7]
    np.testing.assert_allclose(uv, [[320, 240], [1, 0.96]], atol=1e-9)
    np.testing.assert_allclose(z, [5, 5])
    assert project_points(pts, cam, min_depth=10.0)[2].size == 0
    assert project_points(np.empty((0, 3)), cam)[0].shape == (0, 2)
    with pytest.raises(LidarError, match=r'\(N, 3\)'):
        project_points(np.zeros((4, 2)), cam)


def test_far_field_points_do_not_fold_into_image():
    # Strong barrel distortion: r_d = r (1 - 0.35 r^2) peaks at r = 0.98 and then falls, so a
    # point far outside the field of view would fold back into the image without the guard.
    cam = Intrinsics(K, [-0.35, 0.0, 0.0, 0.0, 0.0], 'plumb_bob', 640, 480)
    assert cam.max_radius <= 1 / math.sqrt(3 * 0.35) + 1e-3
    far = np.array([[1.6, 0.0, 1.0]])    # r = 1.6: r_d = 0.166 -> u = 403, inside the image
    folded = 500 * 1.6 * (1 - 0.35 * 1.6 ** 2) + 320
    assert 0 <= folded < 640
    assert project_points(far, cam)[0].shape == (0, 2)
    # Points just inside the corner still project.
    corner = np.array([[-0.55, -0.45, 1.0]])
    assert project_points(corner, cam)[0].shape == (1, 2)


def test_transform_points():
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # LiDAR (x fwd, y left, z up) -> optical
    T[:3, 3] = [0.1, -0.2, 0.3]
    out = transform_points(T, np.array([[10.0, 2.0, 1.0]], dtype=np.float32))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[-2 + 0.1, -1 - 0.2, 10 + 0.3]])
    with pytest.raises(LidarError, match='bottom row'):
        transform_points(np.ones((4, 4)), np.zeros((1, 3)))
    with pytest.raises(LidarError, match=r'\(4, 4\)'):
        transform_points(np.eye(3), np.zeros((1, 3)))


# ---------------------------------------------------------------- occlusion

def test_occlusion_rejects_background_next_to_foreground():
    # A wall of foreground points at 5 m on a 4-pixel grid, a background point at 20 m leaking
    # through between them, and an isolated far point on its own.
    us, vs = np.meshgrid(np.arange(100, 141, 4), np.arange(100, 141, 4))
    fg = np.column_stack([us.ravel(), vs.ravel()]).astype(float)
    uv = np.vstack([fg, [[118.0, 121.0]], [[400.0, 300.0]]])
    z = np.concatenate([np.full(len(fg), 5.0), [20.0], [30.0]])
    keep = occlusion_mask(uv, z, 640, 480, window=5)
    assert keep[:len(fg)].all()
    assert not keep[-2]
    assert keep[-1]


def test_occlusion_tolerance_and_window():
    uv = np.array([[50.0, 50.0], [52.0, 50.0]])
    # Within tolerance: a slanted surface, both kept.
    assert occlusion_mask(uv, np.array([10.0, 10.5]), 100, 100, tolerance=0.1).all()
    # Beyond: the far one goes.
    assert occlusion_mask(uv, np.array([10.0, 12.0]), 100, 100, tolerance=0.1).tolist() == \
        [True, False]
    # Far apart in the image: both kept.
    apart = np.array([[50.0, 50.0], [60.0, 50.0]])
    assert occlusion_mask(apart, np.array([10.0, 50.0]), 100, 100, window=5).all()
    # window 1 disables the filter; empty input.
    assert occlusion_mask(uv, np.array([10.0, 50.0]), 100, 100, window=1).all()
    assert occlusion_mask(np.empty((0, 2)), np.empty(0), 100, 100).shape == (0,)
    # Edges of the image are handled.
    edge = np.array([[0.0, 0.0], [1.0, 0.0], [99.0, 99.0], [98.0, 99.0]])
    assert occlusion_mask(edge, np.array([5.0, 9.0, 5.0, 9.0]), 100, 100).tolist() == \
        [True, False, True, False]


def test_occlusion_window_contains_box():
    # For every offset within the window x window box the nearer point hides the farther one.
    rng = np.random.default_rng(3)
    for window in (3, 5, 7):
        h = window // 2
        for _ in range(50):
            p = rng.uniform(20, 80, 2).round()
            q = p + rng.integers(-h, h + 1, 2)
            keep = occlusion_mask(np.array([p, q]), np.array([10.0, 20.0]), 100, 100,
                                  window=window)
            assert keep.tolist() == [True, False]


def _occlusion_reference(uv, z, width, height, window, tolerance=0.1):
    """The documented rule, point by point: cells of window // 2 pixels, 3 x 3 block minimum."""
    half = window // 2
    if half < 1:
        return np.ones(len(z), dtype=bool)
    rows, cols = (height - 1) // half + 1, (width - 1) // half + 1
    cell_u = np.clip(np.floor(uv[:, 0] + 0.5).astype(int) // half, 0, cols - 1)
    cell_v = np.clip(np.floor(uv[:, 1] + 0.5).astype(int) // half, 0, rows - 1)
    keep = np.ones(len(z), dtype=bool)
    for i in range(len(z)):
        near = (np.abs(cell_u - cell_u[i]) <= 1) & (np.abs(cell_v - cell_v[i]) <= 1)
        keep[i] = z[near].min() >= (1.0 - tolerance) * z[i]
    return keep


@pytest.mark.parametrize('n', [40, 3000])  # sparse (gathers per point) and dense (whole grid)
def test_occlusion_matches_point_by_point_rule(n):
    rng = np.random.default_rng(n)
    for width, height, window in ((64, 48, 5), (33, 17, 3), (1, 9, 5), (50, 50, 9)):
        uv = np.column_stack([rng.uniform(0, width - 1, n), rng.uniform(0, height - 1, n)])
        z = rng.uniform(1.0, 10.0, n)
        keep = occlusion_mask(uv, z, width, height, window)
        np.testing.assert_array_equal(keep, _occlusion_reference(uv, z, width, height, window))
        assert 0 < keep.sum() < n  # the cases exercise both outcomes


# ---------------------------------------------------------------- prepare_points

def test_prepare_points_synthetic():
    cam = Intrinsics(K, [-0.1, 0.02, 0.0, 0.0, 0.0], 'plumb_bob', 640, 480)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    rng = np.random.default_rng(0)
    # LiDAR frame: x forward. Points ahead, behind and to the sides, plus intensity.
    pts = np.column_stack([rng.uniform(-20, 20, 5000), rng.uniform(-20, 20, 5000),
                           rng.uniform(-2, 2, 5000), rng.uniform(0, 1, 5000)])
    uv, z = prepare_points(pts, T, cam, 320, 240, occlusion_window=1)
    assert uv.dtype == np.float32 and z.dtype == np.float32
    # Same as projecting by hand into the half-size camera.
    cam_pts = transform_points(T, pts[:, :3])
    uv_ref, z_ref, _ = project_points(cam_pts, cam.scaled(320, 240))
    np.testing.assert_allclose(uv, uv_ref, atol=1e-3)
    np.testing.assert_allclose(z, z_ref, rtol=1e-6)
    assert (uv[:, 0] <= 319).all() and (uv[:, 1] <= 239).all() and (uv >= 0).all()
    # Occlusion filtering only ever removes points.
    assert len(prepare_points(pts, T, cam, 320, 240)[1]) <= len(z)
    empty = prepare_points(np.empty((0, 4)), T, cam, 320, 240)
    assert empty[0].shape == (0, 2) and empty[1].shape == (0,)
    with pytest.raises(LidarError, match=r'\(N, 3\)'):
        prepare_points(np.zeros((3, 2)), T, cam, 320, 240)


def _in_plate_outline(uv, slack=0.5):
    """Pixels on the synthetic plate's outline or inside it (``slack`` px around it)."""
    return ((np.abs(uv[:, 0] - SCENE_K[0, 2]) <= PLATE_HALF_U + slack) &
            (np.abs(uv[:, 1] - SCENE_K[1, 2]) <= PLATE_HALF_V + slack))


def test_prepare_points_removes_wall_returns_hidden_behind_a_plate():
    """A plate 2 m in front of a wall 6 m away, the LiDAR 0.3 m above and 0.1 m behind the
    camera: the wall returns the camera cannot see land on the plate's pixels. The default
    window removes every one of them and keeps the plate and the wall away from its edges; with
    the filter off (window 0 or 1) every point in view is kept, the hidden ones included."""
    scene = plate_and_wall()
    n_hidden = int(scene.hidden.sum())
    n_in_view = int(scene.in_view.sum())
    assert n_hidden > 2000 and scene.in_view[scene.hidden].all()   # the scene shows the effect
    cam = Intrinsics(SCENE_K, [], 'none', SCENE_W, SCENE_H)

    def split(uv, z):
        wall = z > 0.5 * (PLATE_Z + WALL_Z)
        return wall & _in_plate_outline(uv), ~wall, wall & ~_in_plate_outline(uv, slack=8.0)

    for window in (0, 1):
        uv, z = prepare_points(scene.points_lidar, SCENE_T, cam, SCENE_W, SCENE_H,
                               occlusion_window=window)
        hidden, plate, far_wall = split(uv, z)
        assert len(z) == n_in_view
        assert hidden.sum() >= n_hidden         # kept: nothing is filtered
    uv, z = prepare_points(scene.points_lidar, SCENE_T, cam, SCENE_W, SCENE_H)  # window 5
    hidden, plate, far_wall = split(uv, z)
    assert hidden.sum() == 0, f'{hidden.sum()} wall points behind the plate were kept'
    assert plate.sum() == scene.on_plate.sum()
    assert far_wall.sum() == (~scene.on_plate & scene.in_view &
                              scene.outside_plate_by(8.0)).sum()
    # besides the hidden points, only visible wall points next to the plate's outline go
    near_edge = ~scene.on_plate & ~scene.hidden & scene.in_view & ~scene.outside_plate_by(8.0)
    assert n_in_view - n_hidden - near_edge.sum() <= len(z) <= n_in_view - n_hidden


# ---------------------------------------------------------------- why few points are left

# LiDAR frame x forward, y left, z up -> camera optical frame z forward, x right, y down.
T_LIDAR = np.eye(4)
T_LIDAR[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]


def scan_ahead(n: int = 1000, seed: int = 0) -> np.ndarray:
    """``n`` points 5-15 m ahead of the LiDAR, inside a 640 x 480 camera's view."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(5, 15, n)
    return np.column_stack([x, rng.uniform(-0.5, 0.5, n) * x, rng.uniform(-0.4, 0.4, n) * x])


def explain(points: np.ndarray, T: np.ndarray = T_LIDAR, needed: int = 50) -> str:
    cam = Intrinsics(K, [], 'none', 640, 480)
    counts = projection_counts(points, T, cam, 640, 480, occlusion_window=1)
    uv, z = prepare_points(points, T, cam, 640, 480, occlusion_window=1)
    assert counts.visible == len(z)  # the same steps as prepare_points
    return counts.explain(needed)


def test_counts_agree_with_prepare_points_on_a_good_scan():
    cam = Intrinsics(K, [-0.1, 0.02, 0.0, 0.0, 0.0], 'plumb_bob', 640, 480)
    pts = np.concatenate([scan_ahead(), -scan_ahead(200, 1)])  # and 200 behind
    counts = projection_counts(pts, T_LIDAR, cam, 320, 240)
    assert (counts.in_scan, counts.behind, counts.in_front) == (1200, 200, 1000)
    assert counts.visible == len(prepare_points(pts, T_LIDAR, cam, 320, 240)[1])
    assert counts.explain(50) == ''


def test_all_behind_the_camera_says_so():
    assert explain(-scan_ahead()) == (
        '0 of 1000 points in front of the camera (1000 behind it): check lidar.T_camera_lidar '
        '(it maps LiDAR points into the camera optical frame, z forward)')


def test_all_on_the_camera_plane_says_so():
    pts = scan_ahead()
    pts[:, 0] = 0.0  # LiDAR x = camera z: every point on the plane through the camera
    assert explain(pts).startswith('0 of 1000 points in front of the camera (1000 within 0.1 m '
                                   'of the camera plane): check lidar.T_camera_lidar')


def test_coordinates_near_the_float32_limit_are_named_as_too_far():
    """A scan at 1e37-3e38 m straight ahead projects fine; the fit then says every point is
    beyond max_depth and how far the nearest is, not that there were too few points."""
    from depth_node.alignment import AlignerConfig, fit_global

    pts = scan_ahead() * 2e37
    assert np.isfinite(pts.astype(np.float32)).all()
    assert explain(pts) == ''
    uv, z = prepare_points(pts, T_LIDAR, Intrinsics(K, [], 'none', 640, 480), 640, 480)
    fit = fit_global(np.ones(len(z)), z, AlignerConfig(min_points=50))
    assert not fit.ok
    assert fit.reason.startswith(f'too few valid points: 0 of {len(z)} < min_points 50 '
                                 f'({len(z)} farther than max_depth 80 m, nearest at 1e+38 m')


def test_a_transform_overflowing_the_float_range():
    """Finite coordinates whose transform overflows float64 are named as not finite after
    the transform (and cause no warning)."""
    big = np.finfo(np.float32).max
    pts = np.column_stack([np.full(1000, big), np.full(1000, big), np.ones(1000)])
    T = T_LIDAR.copy()
    T[:3, :3] *= 1e300
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        message = explain(pts, T)
    assert message.startswith('0 of 1000 points in front of the camera (1000 not finite after '
                              'lidar.T_camera_lidar (coordinates near the float limit?))'), message


def test_all_outside_the_image_and_transform_name():
    pts = scan_ahead()
    pts[:, 1] += 100.0  # far to the left
    cam = Intrinsics(K, [], 'none', 640, 480)
    counts = projection_counts(pts, T_LIDAR, cam, 640, 480)
    assert counts.explain(50, 'the tf from lidar to cam') == (
        '0 of 1000 points in front of the camera fall inside the image (1000 in the scan): '
        'check the tf from lidar to cam and the camera_info')
    assert projection_counts(np.empty((0, 3)), T_LIDAR, cam, 640, 480).explain(50) == (
        'the scan holds no finite point (check the LiDAR driver)')


def test_field_names_in_errors_are_shortened():
    long_name = '\x1b[1m' + 'q' * 100_000
    fields = [(long_name, 0, 99, 1), ('x', 0, 7, 1), ('y', 4, 7, 1)] + [
        (f'extra{i}', 8, 7, 1) for i in range(1000)]
    with pytest.raises(LidarError) as info:
        read_points_xyz(fields, 12, 12, 1, 1, False, bytes(12))
    message = str(info.value)
    assert 'no field z' in message and '(1003 values)' in message and '(100004 chars)' in message
    assert '\x1b' not in message and len(message) < 1000
    with pytest.raises(LidarError) as info:
        read_points_xyz([(long_name, 0, 7, 1)] * 2, 12, 12, 1, 1, False, bytes(12))
    assert len(str(info.value)) < 400


# ---------------------------------------------------------------- real frames

def lidar_frames(real_data, sets):
    frames = [load_frame(f) for f in frame_folders(real_data) if f.parent.name in sets]
    frames = [f for f in frames if f.lidar is not None]
    if not frames:
        pytest.skip(f'no LiDAR frames of {sets} under {real_data}')
    return frames


@pytest.mark.parametrize('set_name, min_points', [('kitti_object', 15000),
                                                  ('nuscenes_mini', 2500),
                                                  ('pjlab_distorted', 8000)])
def test_real_frames_project_into_image(real_data, set_name, min_points):
    for frame in lidar_frames(real_data, {set_name}):
        cam = Intrinsics(frame.K, frame.D, frame.distortion_model, frame.width, frame.height)
        uv, z, index = project_points(transform_points(frame.T_camera_lidar,
                                                       frame.lidar[:, :3]), cam)
        # The data README: 3-20k points per image, depths 2.6-129 m, medians 8-23 m.
        assert min_points <= len(z) <= 25000, frame.name
        assert 2.0 <= z.min() and z.max() <= 130.0, frame.name
        assert 7.0 <= np.median(z) <= 25.0, frame.name
        # Points cover the image broadly (a gross calibration error would not).
        assert np.ptp(uv[:, 0]) > 0.6 * frame.width, frame.name
        # The occlusion filter removes a few percent (KITTI's LiDAR sits above the camera).
        kept = occlusion_mask(uv, z, frame.width, frame.height).mean()
        assert 0.85 <= kept <= 1.0, frame.name
        # prepare_points at the network's size gives the same depths, fewer or equal points.
        uv_s, z_s = prepare_points(frame.lidar, frame.T_camera_lidar, cam, 518, 392)
        assert 0.8 * len(z) <= len(z_s) <= len(z)
        assert (uv_s[:, 0] <= 517).all() and (uv_s[:, 1] <= 391).all()
        assert abs(np.median(z_s) - np.median(z)) < 0.1 * np.median(z)


def test_real_distorted_frames_need_distortion(real_data):
    # pjlab images are raw: projecting without D moves points by pixels near the edges.
    for frame in lidar_frames(real_data, {'pjlab_distorted'}):
        assert not frame.rectified
        cam = Intrinsics(frame.K, frame.D, frame.distortion_model, frame.width, frame.height)
        pin = Intrinsics(frame.K, [], 'none', frame.width, frame.height)
        pts = transform_points(frame.T_camera_lidar, frame.lidar[:, :3])
        uv, _, index = project_points(pts, cam)
        uv_pin, _, index_pin = project_points(pts, pin)
        common, a, b = np.intersect1d(index, index_pin, return_indices=True)
        shift = np.linalg.norm(uv[a] - uv_pin[b], axis=1)
        assert shift.max() > 20.0 and np.median(shift) > 1.0
