"""Tests for depth_node.cloud: back-projection, packing, PLY."""

import math
import struct

import numpy as np
import pytest

from depth_node import cloud
from depth_node.cloud import CloudError, depth_to_points, pack_cloud, strided_rgb, write_ply

H, W = 48, 64
FX, FY, CX, CY = 120.0, 110.0, 30.25, 21.75  # principal point deliberately off-centre
K = np.array([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])
U, V = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))


def decode(packed):
    """Read a PackedCloud back with np.frombuffer, as a subscriber would from its fields."""
    names = {'x', 'y', 'z', 'rgb'}
    dtype = np.dtype({'names': [f[0] for f in packed.fields if f[0] in names],
                      'formats': ['<f4' for f in packed.fields if f[0] in names],
                      'offsets': [f[1] for f in packed.fields if f[0] in names],
                      'itemsize': packed.point_step})
    assert packed.data.dtype == np.uint8 and packed.data.ndim == 1
    assert packed.data.size == packed.row_step * packed.height
    pts = np.frombuffer(packed.data.tobytes(), dtype=dtype).reshape(packed.height, packed.width)
    xyz = np.stack([pts['x'], pts['y'], pts['z']], axis=-1)
    rgb = None
    if 'rgb' in dtype.names:
        word = pts['rgb'].view('<u4')
        assert not np.any(word >> 24), 'alpha byte must be 0 (0x00RRGGBB)'
        rgb = np.stack([(word >> 16) & 255, (word >> 8) & 255, word & 255], -1).astype(np.uint8)
    return xyz, rgb


# ------------------------------------------------------------------------------------------
# depth_to_points

def test_fronto_parallel_plane_matches_analytic():
    depth = np.full((H, W), 2.0, dtype=np.float32)
    xyz = depth_to_points(depth, K)
    assert xyz.shape == (H, W, 3) and xyz.dtype == np.float32
    np.testing.assert_allclose(xyz[..., 0], (U - CX) * 2.0 / FX, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xyz[..., 1], (V - CY) * 2.0 / FY, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(xyz[..., 2], 2.0)
    # Optical frame: x right, y down; the principal point projects onto the z axis.
    assert xyz[0, -1, 0] > 0 and xyz[-1, 0, 1] > 0 and xyz[0, 0, 0] < 0 and xyz[0, 0, 1] < 0


def test_tilted_plane_points_lie_on_the_plane():
    # Plane z = 2 + 0.5 x - 0.25 y in the camera frame; along the ray of pixel (u, v),
    # z = 2 / (1 - 0.5 rx + 0.25 ry).
    rx, ry = (U - CX) / FX, (V - CY) / FY
    z = 2.0 / (1.0 - 0.5 * rx + 0.25 * ry)
    assert z.min() > 0
    xyz = depth_to_points(z.astype(np.float32), K).astype(np.float64)
    x, y, zz = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    np.testing.assert_allclose(zz - 0.5 * x + 0.25 * y, 2.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(x, rx * z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, ry * z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('stride', [1, 2, 3, 5, 64, 100])
def test_stride_samples_pixel_grid(stride):
    rng = np.random.default_rng(stride)
    depth = rng.uniform(0.5, 8.0, (H - 1, W - 3)).astype(np.float32)  # odd sizes
    full = depth_to_points(depth, K)
    sub = depth_to_points(depth, K, stride=stride)
    assert sub.shape == (math.ceil((H - 1) / stride), math.ceil((W - 3) / stride), 3)
    np.testing.assert_array_equal(sub, full[::stride, ::stride])
    # pixel (v, u) = (i * stride, j * stride)
    i, j = sub.shape[0] - 1, sub.shape[1] - 1
    z = depth[i * stride, j * stride]
    np.testing.assert_allclose(sub[i, j], [(j * stride - CX) * z / FX,
                                           (i * stride - CY) * z / FY, z], rtol=1e-6)


def test_invalid_depth_becomes_nan_in_all_coordinates():
    depth = np.full((4, 5), 3.0, dtype=np.float32)
    bad = [(0, 0, np.nan), (0, 1, np.inf), (0, 2, -np.inf), (1, 0, 0.0), (1, 1, -2.0)]
    for v, u, value in bad:
        depth[v, u] = value
    xyz = depth_to_points(depth, K)
    for v, u, _ in bad:
        assert np.isnan(xyz[v, u]).all(), (v, u)
    mask = np.ones((4, 5), bool)
    for v, u, _ in bad:
        mask[v, u] = False
    assert np.isfinite(xyz[mask]).all()
    assert np.isfinite(depth_to_points(depth.astype(np.float64), K)[mask]).all()


def test_min_max_depth_become_nan_not_clamped():
    depth = np.array([[0.5, 1.0, 3.0, 5.0, 10.0]], dtype=np.float32)
    xyz = depth_to_points(depth, K, min_depth=1.0, max_depth=5.0)
    z = xyz[0, :, 2]
    assert np.isnan(z[0]) and np.isnan(z[4])
    np.testing.assert_array_equal(z[1:4], [1.0, 3.0, 5.0])  # bounds inclusive, values untouched
    assert np.isnan(xyz[0, 0]).all() and np.isnan(xyz[0, 4]).all()


def test_ray_cache_follows_intrinsics():
    depth = np.full((6, 8), 1.0, dtype=np.float32)
    a = depth_to_points(depth, K)
    K2 = K.copy()
    K2[0, 2] += 1.0
    b = depth_to_points(depth, K2)
    np.testing.assert_allclose(a[..., 0] - b[..., 0], 1.0 / FX, rtol=1e-5)
    np.testing.assert_array_equal(depth_to_points(depth, K), a)  # cached rays: same answer
    for i in range(20):  # more shapes than the LRU holds
        depth_to_points(np.ones((3, 3 + i), np.float32), K)
    assert len(cloud._ray_cache) <= cloud._RAY_CACHE_SIZE


@pytest.mark.parametrize('kwargs, match', [
    ({'depth': np.ones((2, 2, 1), np.float32)}, '2-D'),
    ({'depth': np.ones((2, 2), np.uint16)}, 'float'),
    ({'K': np.eye(2)}, '3x3'),
    ({'K': np.diag([0.0, 1.0, 1.0])}, 'positive'),
    ({'K': np.array([[1, 0, np.nan], [0, 1, 0], [0, 0, 1.0]])}, 'finite'),
    ({'stride': 0}, 'stride'),
    ({'stride': 1.5}, 'stride'),
    ({'min_depth': float('nan')}, 'NaN'),
])
def test_depth_to_points_rejects_bad_input(kwargs, match):
    args = {'depth': np.ones((2, 2), np.float32), 'K': K}
    args.update(kwargs)
    with pytest.raises(CloudError, match=match):
        depth_to_points(**args)


def test_strided_rgb_is_aligned_with_points():
    depth = np.full((10, 13), 1.0, dtype=np.float32)
    rgb = np.zeros((10, 13, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(10)[:, None]  # red = row, green = column
    rgb[..., 1] = np.arange(13)[None, :]
    xyz = depth_to_points(depth, K, stride=3)
    col = strided_rgb(rgb, 3)
    assert col.shape == xyz.shape
    v, u = col[..., 0].astype(float), col[..., 1].astype(float)
    np.testing.assert_allclose(xyz[..., 0], (u - CX) / FX, rtol=1e-6)
    np.testing.assert_allclose(xyz[..., 1], (v - CY) / FY, rtol=1e-6)
    with pytest.raises(CloudError):
        strided_rgb(rgb[..., 0], 2)


# ------------------------------------------------------------------------------------------
# pack_cloud

def _sample_cloud():
    rng = np.random.default_rng(2)
    depth = rng.uniform(0.5, 5.0, (6, 7)).astype(np.float32)
    depth[1, 2] = np.nan
    depth[4, 6] = np.nan
    xyz = depth_to_points(depth, K)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    return xyz, rgb


def test_organized_xyz_layout_and_round_trip():
    xyz, _ = _sample_cloud()
    packed = pack_cloud(xyz)
    assert (packed.height, packed.width) == (6, 7)
    assert packed.point_step == 12 and packed.row_step == 12 * 7
    assert packed.fields == (('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1))
    assert packed.is_dense is False
    out, rgb = decode(packed)
    assert rgb is None
    np.testing.assert_array_equal(out, xyz)  # NaN points kept, bit-exact (NaN == NaN here)


def test_organized_xyzrgb_layout_and_round_trip():
    xyz, rgb = _sample_cloud()
    packed = pack_cloud(xyz, rgb)
    assert packed.point_step == 16 and packed.row_step == 16 * 7 and packed.height == 6
    assert packed.fields[-1] == ('rgb', 12, 7, 1)  # 7: PointField.FLOAT32
    assert packed.is_dense is False
    out, out_rgb = decode(packed)
    np.testing.assert_array_equal(out, xyz)
    np.testing.assert_array_equal(out_rgb, rgb)


@pytest.mark.parametrize('with_rgb', [False, True])
def test_unorganized_keeps_only_finite_points(with_rgb):
    xyz, rgb = _sample_cloud()
    packed = pack_cloud(xyz, rgb if with_rgb else None, organized=False)
    finite = np.isfinite(xyz).all(axis=2)
    assert packed.height == 1 and packed.width == int(finite.sum()) == 6 * 7 - 2
    assert packed.is_dense is True
    assert packed.row_step == packed.point_step * packed.width
    out, out_rgb = decode(packed)
    np.testing.assert_array_equal(out[0], xyz[finite])  # row-major order preserved
    if with_rgb:
        np.testing.assert_array_equal(out_rgb[0], rgb[finite])


def test_unorganized_drops_partially_non_finite_points():
    xyz = np.ones((1, 3, 3), np.float32)
    xyz[0, 1, 0] = np.inf
    packed = pack_cloud(xyz, organized=False)
    assert packed.width == 2
    assert pack_cloud(np.full((2, 2, 3), np.nan, np.float32), organized=False).width == 0


def test_rgb_packing_matches_pcl_convention():
    # PCL / RViz: float32 holding the bits of uint32 (r << 16) | (g << 8) | b.
    xyz = np.ones((1, 3, 3), np.float32)
    rgb = np.array([[[255, 0, 0], [0, 0, 255], [0x12, 0x34, 0x56]]], dtype=np.uint8)
    packed = pack_cloud(xyz, rgb)
    floats = np.frombuffer(packed.data.tobytes(), '<f4').reshape(3, 4)[:, 3]
    words = floats.view('<u4')
    assert words.tolist() == [0x00FF0000, 0x000000FF, 0x00123456]
    # Hand computed: 0x00FF0000 has exponent field 1 and mantissa 0x7F0000, so the float is
    # 2**-126 * (1 + 0x7F0000 / 2**23) = 2**-126 * 1.9921875 ~ 2.3418052e-38.
    assert floats[0] == pytest.approx(2.0 ** -126 * 1.9921875, rel=1e-7)
    assert floats[0] == pytest.approx(2.3418052e-38, rel=1e-6)
    assert struct.unpack('<f', bytes([0x56, 0x34, 0x12, 0x00]))[0] == floats[2]


def test_pack_accepts_float64_and_non_contiguous_views():
    xyz, rgb = _sample_cloud()
    view = xyz.astype(np.float64)[:, ::2]
    out, out_rgb = decode(pack_cloud(view, rgb[:, ::2]))
    np.testing.assert_array_equal(out, xyz[:, ::2])
    np.testing.assert_array_equal(out_rgb, rgb[:, ::2])


@pytest.mark.parametrize('xyz, rgb, match', [
    (np.ones((2, 3), np.float32), None, r'\(h, w, 3\)'),
    (np.ones((2, 3, 3), np.int32), None, 'float'),
    (np.ones((2, 3, 3), np.float32), np.ones((2, 2, 3), np.uint8), 'does not match'),
    (np.ones((2, 3, 3), np.float32), np.ones((2, 3, 3), np.float32), 'uint8'),
])
def test_pack_rejects_bad_input(xyz, rgb, match):
    with pytest.raises(CloudError, match=match):
        pack_cloud(xyz, rgb)


# ------------------------------------------------------------------------------------------
# write_ply

def read_ply(path):
    with open(path, 'rb') as f:
        raw = f.read()
    end = raw.index(b'end_header\n') + len(b'end_header\n')
    header = raw[:end].decode('ascii').splitlines()
    assert header[0] == 'ply' and header[1] == 'format binary_little_endian 1.0'
    count = int(next(line for line in header if line.startswith('element vertex')).split()[2])
    types = {'float': '<f4', 'uchar': 'u1'}
    props = [(line.split()[2], types[line.split()[1]])
             for line in header if line.startswith('property')]
    data = np.frombuffer(raw[end:], dtype=np.dtype(props))
    assert data.size == count
    return data


def test_write_ply_round_trip(tmp_path):
    xyz, rgb = _sample_cloud()
    n = write_ply(tmp_path / 'c.ply', xyz)
    data = read_ply(tmp_path / 'c.ply')
    finite = np.isfinite(xyz).all(axis=2)
    assert n == data.size == finite.sum()
    np.testing.assert_array_equal(np.stack([data['x'], data['y'], data['z']], -1), xyz[finite])

    n = write_ply(str(tmp_path / 'rgb.ply'), xyz, rgb)
    data = read_ply(tmp_path / 'rgb.ply')
    assert n == finite.sum()
    np.testing.assert_array_equal(np.stack([data['red'], data['green'], data['blue']], -1),
                                  rgb[finite])


def test_write_ply_empty_and_bad_rgb(tmp_path):
    assert write_ply(tmp_path / 'e.ply', np.full((2, 2, 3), np.nan, np.float32)) == 0
    assert read_ply(tmp_path / 'e.ply').size == 0
    with pytest.raises(CloudError):
        write_ply(tmp_path / 'b.ply', np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3)))


def test_real_depth_reprojects_onto_its_pixels(real_data):
    from depth_node.sample_data import frame_folders, load_frame

    frames = [load_frame(f) for f in frame_folders(real_data / 'tum_rgbd')]
    frames = [f for f in frames if f.depth_gt is not None]
    if not frames:
        pytest.skip('no dense depth frames in the real data')
    frame = frames[0]
    depth, K_real = frame.depth_gt, frame.K
    xyz = depth_to_points(depth, K_real, stride=2, min_depth=0.2, max_depth=8.0)
    z = depth[::2, ::2]
    valid = np.isfinite(z) & (z >= 0.2) & (z <= 8.0)
    assert valid.mean() > 0.5
    np.testing.assert_array_equal(np.isfinite(xyz[..., 2]), valid)
    # Projecting each point back through K lands on the pixel it came from.
    v, u = np.mgrid[0:depth.shape[0]:2, 0:depth.shape[1]:2]
    p = xyz[valid].astype(np.float64)
    np.testing.assert_allclose(p[:, 0] / p[:, 2] * K_real[0, 0] + K_real[0, 2], u[valid],
                               atol=1e-3)
    np.testing.assert_allclose(p[:, 1] / p[:, 2] * K_real[1, 1] + K_real[1, 2], v[valid],
                               atol=1e-3)
    # The coloured cloud of the real frame packs and decodes losslessly.
    packed = pack_cloud(xyz, strided_rgb(frame.image, 2))
    out, rgb = decode(packed)
    np.testing.assert_array_equal(out, xyz)
    np.testing.assert_array_equal(rgb, frame.image[::2, ::2])
