"""The per-frame LiDAR and alignment work on torch tensors against the same code on numpy.

``lidar.prepare_points`` (transform, culling, projection with distortion, occlusion filter),
``alignment.sample_prediction``, ``fit_global``, ``disparity_to_depth`` and ``Aligner.align``
are written once (``depth_node.arrays``) and run on numpy arrays or on tensors on any device.
Here the tensor path runs with torch on the CPU (``torch-cpu``) and, where CUDA is available,
on the GPU (``cuda``, marker ``gpu``: skipped without one; run them with
``python -m pytest -m gpu -q test/test_device_kernels.py``), on real KITTI, nuScenes and
distorted pjlab scans and on synthetic scenes with every distortion model, and must agree with
the numpy path:

- projections: the same points in the same order, uv and z equal within float32 rounding;
- fits: the same decision and reason, the same point and inlier counts, ``s``, ``t`` and the
  residual within 1e-6 relative (``t`` relative to ``|s| + |t|``); on the CPU they agree to
  about 1e-14, the sums being taken in another order;
- aligned depth: NaN at the same pixels, values within 1e-6 relative (float32 rounding).

Every comparison checks that the tensor path really ran in torch on the device (the outputs
are tensors there, and a :class:`torch.overrides.TorchFunctionMode` sees the key operations on
that device), so a path that fell back to numpy fails.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from depth_node.alignment import (
    Aligner, AlignerConfig, disparity_to_depth, fit_global, sample_prediction)
from depth_node.camera_info import Intrinsics
from depth_node.lidar import occlusion_mask, prepare_points, project_points, transform_points
from depth_node.sample_data import frame_folders, load_frame

torch = pytest.importorskip('torch')
from torch.overrides import TorchFunctionMode  # noqa: E402

DEVICES = [
    pytest.param('cpu', id='torch-cpu'),
    pytest.param('cuda', id='cuda', marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(),
                           reason='needs CUDA (a CUDA build of torch and a GPU)')]),
]
FIT_REL = 1e-6          # s, t, residual: relative agreement of the tensor fit with numpy's
DEPTH_REL = 1e-6        # aligned depth (float32): relative agreement


class TorchOps(TorchFunctionMode):
    """Records the name of every torch operation and the device types of its tensor results
    (an observer: it calls each operation unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, set[str]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, (tuple, list)) else (out,)
        devices = {r.device.type for r in results if isinstance(r, torch.Tensor)}
        self.calls.append((getattr(func, '__name__', str(func)), devices))
        return out

    def assert_ran(self, device: str, *names: str) -> None:
        """Each of ``names`` ran at least once with its result on ``device``."""
        kind = torch.device(device).type
        seen = {name for name, devices in self.calls if kind in devices}
        missing = [name for name in names if name not in seen]
        assert not missing, f'not run in torch on {kind}: {missing} (ran: {sorted(seen)})'


def on(device: str, x: np.ndarray):
    """A numpy array as a tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def host(x, device: str, dtype=None) -> np.ndarray:
    """A tensor result as numpy, after checking it is a tensor on ``device`` (and of
    ``dtype``)."""
    assert isinstance(x, torch.Tensor), f'expected a tensor, got {type(x).__name__}'
    assert x.device.type == torch.device(device).type, x.device
    if dtype is not None:
        assert x.dtype == dtype, x.dtype
    return x.detach().cpu().numpy()


def assert_same_fit(got, want) -> None:
    assert (got.ok, got.reason, got.scale_only) == (want.ok, want.reason, want.scale_only)
    assert (got.n_points, got.n_inliers) == (want.n_points, want.n_inliers)
    for name, bound in (('scale', FIT_REL * abs(want.scale)),
                        ('shift', FIT_REL * (abs(want.scale) + abs(want.shift))),
                        ('residual', FIT_REL * abs(want.residual))):
        a, b = getattr(got, name), getattr(want, name)
        if math.isnan(b):
            assert math.isnan(a), (name, a)
        else:
            assert abs(a - b) <= bound, (name, a, b)


def assert_same_depth(got, want: np.ndarray, device: str) -> None:
    depth = host(got, device, torch.float32)
    assert depth.shape == want.shape
    np.testing.assert_array_equal(np.isnan(depth), np.isnan(want))
    np.testing.assert_allclose(depth, want, rtol=DEPTH_REL, atol=0)


# ---------------------------------------------------------------- projection

def compare_prepare(device, points, T, camera, width, height, window=5):
    """prepare_points on numpy and on ``device``; asserts they agree, returns the numpy one."""
    uv, z = prepare_points(points, T, camera, width, height, occlusion_window=window)
    with TorchOps() as ops:
        uv_t, z_t = prepare_points(points, T, camera, width, height, occlusion_window=window,
                                   device=device)
    ops.assert_ran(device, 'nonzero', *(['scatter_reduce_'] if window > 1 and len(z) else []))
    uv_t, z_t = host(uv_t, device, torch.float32), host(z_t, device, torch.float32)
    assert uv_t.shape == uv.shape and z_t.shape == z.shape
    np.testing.assert_allclose(uv_t, uv, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(z_t, z, rtol=1e-6, atol=0)
    return uv, z


def lidar_frames(real_data, sets):
    frames = [load_frame(f) for f in frame_folders(real_data) if f.parent.name in sets]
    frames = [f for f in frames if f.lidar is not None and f.T_camera_lidar is not None]
    if not frames:
        pytest.skip(f'no LiDAR frames of {sets} under {real_data}')
    return frames


def camera_of(frame) -> Intrinsics:
    return Intrinsics(frame.K, frame.D, frame.distortion_model, frame.width, frame.height)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('set_name', ['kitti_object', 'nuscenes_mini', 'pjlab_distorted'])
def test_prepare_points_real_scans(device, set_name, real_data):
    """Full scans (KITTI 360-degree, nuScenes six cameras, pjlab raw plumb_bob images) at the
    native size and at a network's size."""
    for frame in lidar_frames(real_data, {set_name}):
        camera = camera_of(frame)
        for width, height in ((frame.width, frame.height), (518, 392)):
            uv, _ = compare_prepare(device, frame.lidar, frame.T_camera_lidar, camera, width,
                                    height)
            assert len(uv) > 2000, frame.name      # a real comparison, not of empty sets


K = np.array([[500.0, 0.4, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])
LENSES = {
    'none': [],
    'plumb_bob': [-0.28, 0.07, 0.0012, -0.0008, 0.01],
    'rational_polynomial': [0.5, -0.1, 0.001, 0.002, 0.01, 0.8, 0.05, 0.002],
    'equidistant': [-0.01, 0.005, -0.002, 0.0005],
}


def synthetic_scan(seed: int = 0, n: int = 60_000) -> tuple[np.ndarray, np.ndarray]:
    """A scan in a LiDAR frame (x forward, y left, z up) around a camera: a wall, a plate in
    front of it (occluding part of it), points all around (behind, beside), and a few
    coordinates near the float32 limit; with its ``T_camera_lidar``."""
    rng = np.random.default_rng(seed)
    around = rng.uniform(-40, 40, (n, 3))
    wall = np.column_stack([np.full(n // 3, 12.0), rng.uniform(-8, 8, n // 3),
                            rng.uniform(-3, 3, n // 3)])
    plate = np.column_stack([np.full(n // 6, 4.0), rng.uniform(-1, 1, n // 6),
                             rng.uniform(-0.5, 0.5, n // 6)])
    huge = np.array([[3e38, 0.0, 0.0], [1e38, 1e38, 0.0], [-3e38, 2e38, 1e38]])
    points = np.vstack([around, wall, plate, huge]).astype(np.float32)
    points = np.column_stack([points, rng.uniform(0, 1, len(points))]).astype(np.float32)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]   # LiDAR axes to camera optical axes
    T[:3, 3] = [0.02, 0.3, -0.05]                       # LiDAR above the camera: parallax
    return points[rng.permutation(len(points))], T


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('model', list(LENSES))
@pytest.mark.parametrize('size, window', [((640, 480), 5), ((320, 240), 3),
                                          ((64, 48), 5), ((640, 480), 1)])
def test_prepare_points_distortion_models(device, model, size, window):
    """Every lens model; sparse and dense occlusion grids (64 x 48: more points than cells),
    the filter off (window 1); points behind, beside and overflowing."""
    points, T = synthetic_scan()
    camera = Intrinsics(K, LENSES[model], model, 640, 480)
    uv, z = compare_prepare(device, points, T, camera, *size, window=window)
    assert len(z) > 500


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('model', ['plumb_bob', 'equidistant'])
def test_project_transform_and_occlusion_on_tensors(device, model):
    points, T = synthetic_scan(seed=1, n=20_000)
    camera = Intrinsics(K, LENSES[model], model, 640, 480)
    cam_np = transform_points(T, points[:, :3])
    with TorchOps() as ops:
        cam_t = transform_points(T, on(device, points[:, :3]))
        uv_t, z_t, index_t = project_points(cam_t, camera)
        keep_t = occlusion_mask(uv_t, z_t, 640, 480, window=5)
    ops.assert_ran(device, 'nonzero', 'scatter_reduce_')
    np.testing.assert_allclose(host(cam_t, device, torch.float64), cam_np, rtol=1e-12)
    uv, z, index = project_points(cam_np, camera)
    np.testing.assert_array_equal(host(index_t, device, torch.int64), index)
    np.testing.assert_allclose(host(uv_t, device, torch.float64), uv, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(host(z_t, device, torch.float64), z, rtol=1e-12)
    keep = occlusion_mask(uv, z, 640, 480, window=5)
    np.testing.assert_array_equal(host(keep_t, device, torch.bool), keep)
    assert 0 < keep.sum() < len(keep)                  # the plate hides part of the wall


@pytest.mark.parametrize('device', DEVICES)
def test_empty_results_on_tensors(device):
    """A scan entirely behind the camera, or outside the image: empty tensors of the right
    shapes and types there, as numpy gives empty arrays; an aligner given them has no fit."""
    camera = Intrinsics(K, LENSES['plumb_bob'], 'plumb_bob', 640, 480)
    behind = np.column_stack([np.zeros(100), np.zeros(100), -np.linspace(1, 50, 100)])
    beside = np.column_stack([np.linspace(50, 60, 100), np.zeros(100), np.full(100, 2.0)])
    for points in (behind, beside):
        uv, z = compare_prepare(device, points.astype(np.float32), np.eye(4), camera, 64, 48)
        assert uv.shape == (0, 2) and z.shape == (0,)
    uv_t, z_t = prepare_points(behind, np.eye(4), camera, 64, 48, device=device)
    pred = on(device, np.ones((48, 64), dtype=np.float32))
    result = Aligner(AlignerConfig()).align(pred, uv_t, z_t, 0.0)
    assert result.state == 'no_fit' and result.fit is None and result.depth is None


# ---------------------------------------------------------------- fit

S_TRUE, T_TRUE = 2.0, -0.01   # 1/z = S_TRUE * d + T_TRUE


def synthetic_fit(n: int, outliers: float, seed: int = 0, z_range=(2.0, 50.0)):
    """Disparity ``d`` at LiDAR points with depths ``z`` (gross outliers in z), pixels ``uv``
    spread over a 640 x 480 image."""
    rng = np.random.default_rng(seed)
    z_surface = np.exp(rng.uniform(*np.log(z_range), n))
    d = (1.0 / z_surface * (1 + rng.normal(0, 0.01, n)) - T_TRUE) / S_TRUE
    z = z_surface.copy()
    bad = rng.random(n) < outliers
    z[bad] *= rng.uniform(1.3, 3.0, bad.sum())
    uv = np.column_stack([rng.uniform(0, 639, n), rng.uniform(0, 479, n)]).astype(np.float32)
    return d, z.astype(np.float32), uv


def fit_case(case: str):
    """``(pred, z, config, uv, shape)`` for a named case: good fits of each kind and every
    refusal of fit_global."""
    rng = np.random.default_rng(7)
    d, z, uv = synthetic_fit(3000, 0.15)
    config, shape = AlignerConfig(), (480, 640)
    if case == 'subset':                 # more valid points than max_fit_points
        d, z, uv = synthetic_fit(20_000, 0.2, seed=1)
    elif case == 'invalid_points':       # NaN predictions, depths out of range and NaN
        d[:100] = np.nan
        z[100:150] = 200.0
        z[150:160] = 0.01
        z[160:170] = np.nan
    elif case == 'metric_scale':
        d = (1.0 / (S_TRUE * d + T_TRUE)) / 1.3
        config = AlignerConfig(space='depth', fit_shift=False)
    elif case == 'metric_shift':
        d = (1.0 / (S_TRUE * d + T_TRUE)) / 1.3 - 0.2
        config = AlignerConfig(space='depth')
    elif case == 'metric_flat':          # no depth spread: falls back to scale only
        z = (np.full(3000, 5.0) * (1 + rng.normal(0, 0.005, 3000))).astype(np.float32)
        d = z / 1.2
        config = AlignerConfig(space='depth')
    elif case == 'few':
        d, z, uv = d[:30], z[:30], uv[:30]
    elif case == 'all_invalid':
        z[:2960] = 500.0
    elif case == 'flat':                 # disparity: no depth spread for the shift
        z = (np.full(3000, 5.0) * (1 + rng.normal(0, 0.005, 3000))).astype(np.float32)
        d = (1.0 / z - T_TRUE) / S_TRUE
    elif case == 'negative':
        d = -d
    elif case == 'constant_prediction':
        d = np.full_like(d, 0.1)
    elif case == 'noise':
        d = rng.uniform(0, 1, d.size)
    elif case == 'small_region':
        uv = rng.uniform(300, 320, (d.size, 2)).astype(np.float32)
    elif case == 'zero_predictions':     # scale only: a zero disparity's residual is inf, and
        d[:3] = 0.0                       # the median residual must ignore it as numpy's does
        config = AlignerConfig(fit_shift=False)
    elif case.startswith('extent_'):     # spread a hair below / above min_extent
        d, z, uv = synthetic_fit(200, 0.0)    # all valid: the spread is of these 200
        factor = 1 - 1e-5 if case == 'extent_below' else 1 + 1e-5
        half = config.min_extent * shape[1] / math.sqrt(12.0) * factor   # population std
        uv[:, 0] = 320.0 + np.where(np.arange(200) % 2, half, -half)
        uv[:, 1] = 240.0
    return d, z, config, uv, shape


FIT_CASES = ['good', 'subset', 'invalid_points', 'metric_scale', 'metric_shift', 'metric_flat',
             'few', 'all_invalid', 'flat', 'negative', 'constant_prediction', 'noise',
             'small_region', 'extent_below', 'extent_above', 'zero_predictions']
REFUSED = {'few': 'too few valid points', 'all_invalid': 'farther than max_depth',
           'flat': 'too little depth spread', 'negative': '<= 0',
           'constant_prediction': 'no usable hypothesis', 'noise': 'too few inliers',
           'small_region': 'cover too little', 'extent_below': 'extent 0.100 < min_extent'}


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('case', FIT_CASES)
def test_fit_global_matches(device, case):
    d, z, config, uv, shape = fit_case(case)
    want = fit_global(d, z, config, uv=uv, shape=shape)
    assert want.ok == (case not in REFUSED)
    assert REFUSED.get(case, '') in want.reason
    with TorchOps() as ops:
        got = fit_global(on(device, d), on(device, z), config, uv=on(device, uv), shape=shape)
    if case != 'few':                    # refused before any arithmetic
        ops.assert_ran(device, 'isfinite')
    if want.ok:
        ops.assert_ran(device, 'einsum', 'argmin')
    assert_same_fit(got, want)


# ---------------------------------------------------------------- sampling and conversion

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
def test_sample_prediction_matches(device, mode):
    rng = np.random.default_rng(3)
    pred = rng.uniform(0.1, 1.0, (48, 64)).astype(np.float32)
    pred[rng.random(pred.shape) < 0.2] = np.nan     # NaN neighbours: renormalised weights
    pred[5, :] = np.inf
    uv = np.column_stack([rng.uniform(-2, 66, 5000), rng.uniform(-2, 50, 5000)])
    want = sample_prediction(pred, uv, mode)
    with TorchOps() as ops:
        got = sample_prediction(on(device, pred), on(device, uv), mode)
    ops.assert_ran(device, 'clip')
    got = host(got, device, torch.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert 0.05 < np.isnan(want).mean() < 0.5


@pytest.mark.parametrize('device', DEVICES)
def test_disparity_to_depth_matches(device):
    disp = np.array([[0.25, 0.0, -0.1, np.nan], [0.001, 20.0, 0.05, 1.0]], dtype=np.float32)
    want = disparity_to_depth(disp, 2.0, 0.003, 0.1, 80.0)
    with TorchOps() as ops:
        got = disparity_to_depth(on(device, disp), 2.0, 0.003, 0.1, 80.0)
    ops.assert_ran(device, 'reciprocal')
    assert_same_depth(got, want, device)
    assert np.isnan(want).sum() == 5


# ---------------------------------------------------------------- Aligner

def warped_scene(seed: int = 0, scale: float = 1.0):
    """A dense prediction whose error has a smooth warp (so the local grid matters), and
    LiDAR pixels and depths with outliers; a band of sky (disparity 0: NaN depth)."""
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    v, u = np.mgrid[0:h, 0:w]
    gt = 3.0 + 25.0 * (v / h) ** 1.5 + 4.0 * np.sin(u / w * 3)
    warp = np.exp(0.15 * np.sin(2 * np.pi * u / w) * np.cos(np.pi * v / h))
    pred = ((1.0 / (gt * warp) - T_TRUE) / (S_TRUE * scale)).astype(np.float32)
    pred[:6] = 0.0
    n = 6000
    uv = np.column_stack([rng.uniform(0, w - 1, n), rng.uniform(8, h - 1, n)])
    z = gt[np.rint(uv[:, 1]).astype(int), np.rint(uv[:, 0]).astype(int)]
    z = z * (1 + rng.normal(0, 0.01, n))
    bad = rng.random(n) < 0.1
    z[bad] *= rng.uniform(1.5, 3, bad.sum())
    return pred, uv.astype(np.float32), z.astype(np.float32)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('fit', ['global', 'local'])
@pytest.mark.parametrize('space', ['disparity', 'depth'])
def test_aligner_matches_over_frames(device, fit, space):
    """Three fitted frames (smoothing), a stale one and a refused one, the points given as
    tensors on the device or as numpy (uploaded)."""
    config = AlignerConfig(fit=fit, space=space, local_grid=(4, 6))
    numpy_aligner, tensor_aligner = Aligner(config), Aligner(config)
    for k, (scale, points) in enumerate([(1.0, 'tensor'), (1.1, 'numpy'), (0.95, 'tensor'),
                                         (1.0, 'none'), (1.0, 'few')]):
        pred, uv, z = warped_scene(seed=k, scale=scale)
        if space == 'depth':
            with np.errstate(divide='ignore'):
                pred = (1.0 / (S_TRUE * pred + T_TRUE)).astype(np.float32)
        if points == 'none':
            uv = z = None
        elif points == 'few':
            uv, z = uv[:10], z[:10]
        stamp = 0.1 * k
        want = numpy_aligner.align(pred, uv, z, stamp)
        if points in ('tensor', 'few'):
            uv, z = on(device, uv), on(device, z)
        with TorchOps() as ops:
            got = tensor_aligner.align(on(device, pred), uv, z, stamp)
        assert got.state == want.state and got.n_projected == want.n_projected
        assert want.state == ('ok' if points in ('tensor', 'numpy') else 'stale')
        if want.fit is None:
            assert got.fit is None
        else:
            assert_same_fit(got.fit, want.fit)
        for name in ('scale', 'shift'):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=FIT_REL)
        assert_same_depth(got.depth, want.depth, device)
        assert np.isnan(want.depth).any() and np.isfinite(want.depth).mean() > 0.9
        if fit == 'local':
            assert isinstance(got.local_correction, np.ndarray)
            np.testing.assert_allclose(got.local_correction, want.local_correction,
                                       rtol=1e-6, atol=1e-9)
            assert np.abs(want.local_correction).max() > 0.01
        else:
            assert got.local_correction is None and want.local_correction is None
        ops.assert_ran(device, 'isfinite' if points != 'none' else 'mul')


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('fit', ['global', 'local'])
def test_kitti_scan_end_to_end(device, fit, real_data):
    """A KITTI frame through both paths: the scan projected at a network's size, a
    prediction known only at the projected pixels (NaN elsewhere: the NaN-aware sampling and
    NaN output at the same pixels), noisy and affine in disparity, then aligned."""
    frame = lidar_frames(real_data, {'kitti_object'})[0]
    camera = camera_of(frame)
    width, height = 518, 392
    uv, z = compare_prepare(device, frame.lidar, frame.T_camera_lidar, camera, width, height)
    rng = np.random.default_rng(0)
    pred = np.full((height, width), np.nan, dtype=np.float32)
    noisy = 1.0 / z * (1 + rng.normal(0, 0.02, z.size))
    pred[np.rint(uv[:, 1]).astype(int), np.rint(uv[:, 0]).astype(int)] = 3.0 * noisy + 0.05
    z_fit = z.copy()
    bad = rng.random(z.size) < 0.1
    z_fit[bad] *= rng.uniform(1.3, 3.0, bad.sum()).astype(np.float32)
    config = AlignerConfig(fit=fit)
    want = Aligner(config).align(pred, uv, z_fit, 0.0)
    uv_t, z_t = prepare_points(frame.lidar, frame.T_camera_lidar, camera, width, height,
                               device=device)
    z_t = z_t.clone()
    z_t[on(device, np.flatnonzero(bad))] = on(device, z_fit[bad])
    with TorchOps() as ops:
        got = Aligner(config).align(on(device, pred), uv_t, z_t, 0.0)
    ops.assert_ran(device, 'einsum', 'argmin', 'isfinite')
    assert want.state == 'ok', want.fit
    assert got.state == 'ok'
    assert_same_fit(got.fit, want.fit)
    assert want.scale == pytest.approx(1 / 3.0, rel=0.05)
    assert_same_depth(got.depth, want.depth, device)
    assert 0.01 < np.isfinite(want.depth).mean() < 0.5


def test_alignment_fields_are_host_values():
    """The tensor path's FitResult and Alignment hold Python floats and ints (the node logs
    and publishes them), not tensors."""
    pred, uv, z = warped_scene()
    result = Aligner(AlignerConfig(fit='local', local_grid=(4, 6))).align(
        on('cpu', pred), on('cpu', uv), on('cpu', z), 0.0)
    for value in dataclasses.astuple(result.fit):
        assert type(value) in (float, int, bool, str), (value, type(value))
    assert type(result.scale) is float and type(result.shift) is float
    assert isinstance(result.local_correction, np.ndarray)
