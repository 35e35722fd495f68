"""Tests for depth_node.cloud: back-projection, voxel grid, packing (numpy and torch), PLY."""

import math
import struct

import numpy as np
import pytest

from depth_node import cloud
from depth_node.cloud import (CloudError, depth_to_points, pack_cloud, strided_rgb,
                              voxel_downsample, write_ply)

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


# ------------------------------------------------------------------------------------------
# One implementation for numpy and torch: the same values and bytes on every device

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request):
    """A torch device name; 'cuda' runs only where CUDA is available (marker ``gpu``)."""
    torch = pytest.importorskip('torch')
    if request.param == 'cuda' and not torch.cuda.is_available():
        pytest.skip('needs CUDA (a CUDA build of torch and a GPU)')
    return request.param


def _tensor(array, device):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def _host(tensor):
    return tensor.detach().cpu().numpy()


def _awkward_depth(shape=(37, 53), seed=3):
    """Depth with every kind of invalid value: NaN, +-inf, 0, negative."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(-1.0, 30.0, shape).astype(np.float32)
    depth[::5, ::3] = np.nan
    depth[1, 1], depth[2, 2], depth[3, 3] = np.inf, -np.inf, 0.0
    return depth


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('stride, lo, hi', [(1, 0.0, float('inf')), (2, 0.5, 20.0),
                                            (3, 1.0, 8.0)])
def test_back_projection_is_the_same_on_every_device(device, dtype, stride, lo, hi):
    import torch

    depth = _awkward_depth().astype(dtype)
    want = depth_to_points(depth, K, stride, lo, hi)
    got = depth_to_points(_tensor(depth, device), K, stride, lo, hi)
    assert isinstance(got, torch.Tensor) and got.device.type == device
    assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
    # exact: the same float32 products; NaN in the same places
    np.testing.assert_array_equal(_host(got), want)
    with torch.inference_mode():  # as the estimator calls it
        np.testing.assert_array_equal(
            _host(depth_to_points(_tensor(depth, device), K, stride, lo, hi)), want)


def test_back_projection_of_a_strided_half_precision_tensor(device):
    import torch

    depth = np.random.default_rng(4).uniform(0.5, 9.0, (20, 30)).astype(np.float16)
    view = _tensor(depth, device).t()  # non-contiguous
    want = depth_to_points(depth.T, K, stride=2)
    np.testing.assert_array_equal(_host(depth_to_points(view, K, stride=2)), want)
    with pytest.raises(CloudError, match='2-D'):
        depth_to_points(torch.zeros(2, 3, 4, device=device), K)
    with pytest.raises(CloudError, match='float'):
        depth_to_points(torch.zeros(2, 3, dtype=torch.int32, device=device), K)


def test_rays_are_cached_per_kind_and_device():
    import torch

    cloud._ray_cache.clear()
    depth = np.full((6, 8), 1.0, np.float32)
    depth_to_points(depth, K)
    depth_to_points(torch.from_numpy(depth), K)
    kinds = sorted(key[-1] for key in cloud._ray_cache)
    assert kinds == ['cpu', 'numpy']
    rays = [v for key, v in cloud._ray_cache.items() if key[-1] == 'cpu'][0]
    assert all(isinstance(r, torch.Tensor) for r in rays)


def test_strided_rgb_of_a_tensor_is_a_view_on_its_device(device):
    rgb = np.random.default_rng(5).integers(0, 256, (10, 13, 3), dtype=np.uint8)
    t = _tensor(rgb, device)
    col = strided_rgb(t, 3)
    assert col.device == t.device and col.data_ptr() == t.data_ptr()
    np.testing.assert_array_equal(_host(col), rgb[::3, ::3])


@pytest.mark.parametrize('organized', [True, False])
@pytest.mark.parametrize('with_rgb', [False, True])
@pytest.mark.parametrize('stride', [1, 3])
def test_packed_bytes_are_the_same_on_every_device(device, organized, with_rgb, stride):
    depth = _awkward_depth()
    rgb = np.random.default_rng(6).integers(0, 256, depth.shape + (3,), dtype=np.uint8)
    xyz = depth_to_points(depth, K, stride, 0.5, 25.0)
    assert np.isnan(xyz).any() and np.isfinite(xyz).any()
    colors = strided_rgb(rgb, stride) if with_rgb else None
    want = pack_cloud(xyz, colors, organized=organized)
    t_xyz = depth_to_points(_tensor(depth, device), K, stride, 0.5, 25.0)
    t_colors = strided_rgb(_tensor(rgb, device), stride) if with_rgb else None
    got = pack_cloud(t_xyz, t_colors, organized=organized)
    assert isinstance(got.data, np.ndarray) and got.data.dtype == np.uint8
    assert got.data.ndim == 1
    assert got.data.tobytes() == want.data.tobytes()
    assert (got.height, got.width, got.point_step, got.row_step, got.fields, got.is_dense) == (
        want.height, want.width, want.point_step, want.row_step, want.fields, want.is_dense)
    if with_rgb:  # host colours with device points: moved to the points' device
        mixed = pack_cloud(t_xyz, colors, organized=organized)
        assert mixed.data.tobytes() == want.data.tobytes()


def test_organized_cpu_tensor_cloud_is_packed_without_a_copy():
    import torch

    xyz = torch.from_numpy(depth_to_points(_awkward_depth(), K))
    packed = pack_cloud(xyz)
    assert np.shares_memory(packed.data, xyz.numpy())


@pytest.mark.gpu
def test_organized_cuda_cloud_comes_back_in_one_copy():
    """One device-to-host copy per message: the packed records, built on the device."""
    torch = pytest.importorskip('torch')
    if not torch.cuda.is_available():
        pytest.skip('needs CUDA (a CUDA build of torch and a GPU)')
    from torch.profiler import profile, ProfilerActivity

    depth = _tensor(_awkward_depth((120, 160)), 'cuda')
    rgb = _tensor(np.zeros((120, 160, 3), np.uint8), 'cuda')
    xyz = depth_to_points(depth, K, 2, 0.5, 25.0)  # rays uploaded before profiling
    for colors in (None, strided_rgb(rgb, 2)):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            packed = pack_cloud(depth_to_points(depth, K, 2, 0.5, 25.0), colors)
            torch.cuda.synchronize()
        copies = sum(e.count for e in prof.key_averages() if 'DtoH' in e.key)
        assert copies == 1, [e.key for e in prof.key_averages()]
        assert packed.data.tobytes() == pack_cloud(
            _host(xyz), None if colors is None else _host(colors)).data.tobytes()


# ------------------------------------------------------------------------------------------
# voxel_downsample

def _voxel_reference(xyz, rgb, size):
    """Group the finite points by voxel with a dict: {voxel: (mean xyz, mean rgb)}."""
    groups = {}
    pts = xyz.reshape(-1, 3)
    cols = None if rgb is None else rgb.reshape(-1, 3)
    for k, p in enumerate(pts):
        if np.isfinite(p).all():
            key = tuple(int(math.floor(float(c) / size)) for c in p)
            groups.setdefault(key, []).append(k)
    out = {}
    for key, members in groups.items():
        mean = pts[members].astype(np.float64).mean(axis=0)
        col = None if cols is None else np.round(cols[members].astype(np.float64).mean(0))
        out[key] = (mean, col)
    return out


def _surface_depth(shape=(24, 31), seed=7):
    """A tilted plane 2-4 m away with 2 cm noise, NaN holes and out-of-range pixels."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:shape[0], 0:shape[1]]
    depth = (2.0 + 2.0 * u / shape[1] + rng.normal(0.0, 0.02, shape)).astype(np.float32)
    depth[::4, ::5] = np.nan
    depth[0, :3] = 30.0  # beyond max_depth 25
    return depth


def _voxels_of(points, size):
    return [tuple(int(math.floor(float(c) / size)) for c in p) for p in points]


@pytest.mark.parametrize('size', [0.05, 0.3, 2.0])
def test_voxel_grid_one_centroid_per_occupied_voxel(size):
    xyz = depth_to_points(_surface_depth(), K, 1, 0.5, 25.0)
    rgb = np.random.default_rng(8).integers(0, 256, xyz.shape, dtype=np.uint8)
    points, colors = voxel_downsample(xyz, size, rgb)
    ref = _voxel_reference(xyz, rgb, size)
    assert points.dtype == np.float32 and points.shape == (len(ref), 3)
    assert colors.dtype == np.uint8 and colors.shape == (len(ref), 3)
    assert np.isfinite(points).all()
    finite = int(np.isfinite(xyz).all(axis=2).sum())
    assert len(ref) <= finite
    if size >= 0.3:
        assert len(ref) < finite / 2  # coarse voxels merge points
    voxels = _voxels_of(points, size)
    assert len(set(voxels)) == len(voxels), 'two points in one voxel'
    assert voxels == sorted(voxels), 'voxels in ascending (i, j, k) order'
    for p, c, v in zip(points, colors, voxels):
        mean, col = ref[v]  # each centroid lies in the voxel of the points it replaces
        np.testing.assert_allclose(p, mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(c, col)


def test_voxel_grid_without_colour_and_of_nothing():
    xyz = depth_to_points(_awkward_depth((10, 12)), K)
    points, colors = voxel_downsample(xyz, 0.5)
    assert colors is None and points.shape[1] == 3 and len(points) > 0
    empty_points, empty_colors = voxel_downsample(np.full((3, 4, 3), np.nan, np.float32), 0.5,
                                                  np.zeros((3, 4, 3), np.uint8))
    assert empty_points.shape == (0, 3) and empty_colors.shape == (0, 3)
    packed = pack_cloud(np.full((3, 4, 3), np.nan, np.float32), organized=False,
                        voxel_size=0.5)
    assert (packed.height, packed.width, packed.data.size, packed.is_dense) == (1, 0, 0, True)


def test_voxel_grid_negative_coordinates_and_boundaries():
    # floor, not truncation: -0.1 and 0.1 are in different 0.5 m voxels; 0.5 starts a voxel
    xyz = np.array([[[-0.1, 0.0, 1.0], [0.1, 0.0, 1.0], [0.49, 0.0, 1.0], [0.5, 0.0, 1.0],
                     [-0.6, -0.2, 1.2]]], np.float32)
    points, _ = voxel_downsample(xyz, 0.5)
    np.testing.assert_allclose(points, [[-0.6, -0.2, 1.2], [-0.1, 0.0, 1.0],
                                        [0.295, 0.0, 1.0], [0.5, 0.0, 1.0]], rtol=1e-6)


@pytest.mark.parametrize('size', [0.0, -0.1, float('nan'), float('inf'), True])
def test_voxel_size_must_be_positive(size):
    with pytest.raises(CloudError, match='voxel_size'):
        voxel_downsample(np.ones((2, 2, 3), np.float32), size)


def test_voxel_grid_refuses_a_key_overflow_and_bad_input():
    xyz = np.array([[[0.0, 0.0, 1.0], [1e6, 1e6, 1e6]]], np.float32)
    with pytest.raises(CloudError, match='larger voxel_size'):
        voxel_downsample(xyz, 1e-4)
    with pytest.raises(CloudError, match='does not match'):
        voxel_downsample(xyz, 0.1, np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(CloudError, match='float'):
        voxel_downsample(np.ones((2, 3), np.int64), 0.1)


def test_voxel_grid_is_the_same_on_every_device(device):
    depth = _surface_depth((48, 64), seed=9)
    rgb = np.random.default_rng(10).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    xyz = depth_to_points(depth, K, 2, 0.5, 25.0)
    points, colors = voxel_downsample(xyz, 0.2, rgb)
    t_points, t_colors = voxel_downsample(depth_to_points(_tensor(depth, device), K, 2, 0.5,
                                                          25.0), 0.2, _tensor(rgb, device))
    assert t_points.device.type == device
    # the same voxels in the same order; centroids up to the float64 summation order
    assert _voxels_of(_host(t_points), 0.2) == _voxels_of(points, 0.2)
    np.testing.assert_allclose(_host(t_points), points, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(_host(t_colors), colors)


@pytest.mark.parametrize('with_rgb', [False, True])
def test_pack_voxel_cloud(device, with_rgb):
    depth = _surface_depth((30, 40), seed=11)
    rgb = np.random.default_rng(12).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    xyz = depth_to_points(depth, K, 1, 0.5, 25.0)
    colors = rgb if with_rgb else None
    with pytest.raises(CloudError, match='organized=False'):
        pack_cloud(xyz, colors, voxel_size=0.25)
    packed = pack_cloud(xyz, colors, organized=False, voxel_size=0.25)
    points, point_colors = voxel_downsample(xyz, 0.25, colors)
    assert (packed.height, packed.width, packed.is_dense) == (1, len(points), True)
    assert packed.width < np.isfinite(xyz).all(axis=2).sum()
    out, out_rgb = decode(packed)
    np.testing.assert_array_equal(out[0], points)
    if with_rgb:
        np.testing.assert_array_equal(out_rgb[0], point_colors)
    t = pack_cloud(depth_to_points(_tensor(depth, device), K, 1, 0.5, 25.0),
                   None if colors is None else _tensor(colors, device), organized=False,
                   voxel_size=0.25)
    assert (t.height, t.width, t.point_step, t.fields) == (
        1, packed.width, packed.point_step, packed.fields)
    t_out, t_rgb = decode(t)
    np.testing.assert_allclose(t_out, out, rtol=1e-6, atol=1e-7)
    if with_rgb:
        np.testing.assert_array_equal(t_rgb, out_rgb)


# ------------------------------------------------------------------------------------------
# cloud.voxel_size: the parameter and the node

def test_voxel_size_parameter_needs_an_unorganized_cloud():
    from depth_node.config import ConfigError, validate_change, validate_values

    with pytest.raises(ConfigError, match='set cloud.organized false'):
        validate_values({'cloud.voxel_size': 0.1})
    config = validate_values({'cloud.voxel_size': 0.1, 'cloud.organized': False})
    assert config['cloud.voxel_size'] == 0.1
    with pytest.raises(ConfigError, match='cloud.organized false'):
        validate_change(config, {'cloud.organized': True})
    assert validate_change(config, {'cloud.voxel_size': 0})['cloud.voxel_size'] == 0.0
    for bad in (-0.1, float('inf'), 11.0):
        with pytest.raises(ConfigError, match='cloud.voxel_size'):
            validate_values({'cloud.voxel_size': bad, 'cloud.organized': False})


@pytest.mark.ros
def test_node_publishes_one_point_per_voxel(session, models, kitti):
    """depth/points with cloud.voxel_size: the published depth's cloud, one coloured centroid
    per occupied 0.25 m voxel, unorganized and dense, with the image's header."""
    from depth_node.messages import (camera_info_msg, cloud_fields, cloud_to_array, image_msg,
                                     image_to_array, make_header)
    from ros_harness import holds_camera_info

    size = 0.25
    node = session.start_depth_node({
        'model.name': models['metric'], 'model.device': 'cpu', 'model.warmup': False,
        'cloud.organized': False, 'cloud.voxel_size': size, 'cloud.color': True})
    probe = session.probe()
    assert probe.wait_subscribers('image') and probe.wait_subscribers('camera_info')
    header = make_header('kitti_cam2_optical', 61, 7)
    info = camera_info_msg(kitti.intrinsics(), header)
    probe.publish_until('camera_info', info, lambda: holds_camera_info(node, info),
                        'the node to take the camera_info')
    probe.publish('image', image_msg(kitti.image, 'rgb8', header))
    depth_msg = probe.wait_stamp('depth/image', (61, 7))
    cloud = probe.wait_stamp('depth/points', (61, 7))
    assert depth_msg is not None and cloud is not None
    assert cloud.header.frame_id == 'kitti_cam2_optical'
    assert (cloud.header.stamp.sec, cloud.header.stamp.nanosec) == (61, 7)
    assert cloud.height == 1 and cloud.is_dense
    assert [f[0] for f in cloud_fields(cloud)] == ['x', 'y', 'z', 'rgb']
    got = cloud_to_array(cloud)[0]
    word = cloud_to_array(cloud, ('rgb',))[0, :, 0].view(np.uint32)
    got_rgb = np.stack([(word >> 16) & 255, (word >> 8) & 255, word & 255], -1)
    assert np.isfinite(got).all()

    # the dense cloud of the published depth, as the node builds it (stride 2, 0.1-80 m)
    dense = depth_to_points(image_to_array(depth_msg), kitti.K, stride=2, min_depth=0.1,
                            max_depth=80.0)
    finite = dense[np.isfinite(dense).all(axis=2)]
    dense_voxels = set(_voxels_of(finite, size))
    assert 0 < len(got) == len(dense_voxels) < len(finite) / 4
    voxels = _voxels_of(got, size)
    assert len(set(voxels)) == len(voxels) and set(voxels) == dense_voxels
    want, want_rgb = voxel_downsample(dense, size, strided_rgb(kitti.image, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_rgb, want_rgb)
