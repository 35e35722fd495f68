"""The quality step on torch tensors (issue 25): one implementation, numpy against torch.

:mod:`depth_node.quality` and :mod:`depth_node.frame_quality` take numpy arrays (CPU engines)
or tensors on any device and return the same kind on the same device. Each test runs the same
inputs through both and compares; each torch result is checked to be a tensor on the device,
so a silent fall-back to numpy fails. The ``cpu`` cases run everywhere; the ``cuda`` ones are
marked ``gpu`` and skipped without CUDA (``bench/gpu_check.sh`` runs them).

Data: the three real TUM RGB-D frames of ``../shared/data/real`` (640x480 Kinect depth with
holes, network-like box blur, LiDAR simulated from the depth as ``bench/bench_quality.py``
does), a real KITTI scan (1224x370, projected through its calibration) for the LiDAR cue, and
small synthetic scenes (a box in front of a slanted wall; odd shapes).

Tolerances (float32). numpy and torch compute ``log`` and ``exp`` with different code (a few
ulps apart), so: ``log_spread`` within :data:`SPREAD_ATOL` (log units; measured 3.6e-7 on
torch-cpu), every confidence within :data:`CONF_ATOL` (measured 3.2e-6: the edge cue's soft
threshold multiplies a spread difference by up to about 13). NaN at exactly the same pixels.
Boolean masks (flying pixels, ``removed``) and the filtered depth exactly equal, except at a
pixel whose spread lies within :data:`SPREAD_ATOL` of the threshold (none on these frames;
counted); the ``'angle'`` test's mask may differ at 1 pixel in 100,000. The LiDAR residuals
and the stabiliser (its fit runs on the host from the same subsample) are bit-equal; the
LiDAR cue is within :data:`LIDAR_ATOL` (float64 sums in another order on a GPU; bit-equal on
the CPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from depth_node import config as cfg  # noqa: E402
from depth_node import quality as q  # noqa: E402
from depth_node.arrays import is_tensor, location, to_host  # noqa: E402
from depth_node.camera_info import Intrinsics  # noqa: E402
from depth_node.demo import simulated_lidar  # noqa: E402
from depth_node.frame_quality import assess, QualityState, stabilize  # noqa: E402
from depth_node.lidar import prepare_points  # noqa: E402
from depth_node.quality.edges import _dilate  # noqa: E402
from depth_node.sample_data import frame_folders, load_frame  # noqa: E402

SPREAD_ATOL = 1e-6
CONF_ATOL = 1e-5
LIDAR_ATOL = 1e-6

DEVICES = ['cpu', pytest.param('cuda', marks=[
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason='needs CUDA (a CUDA build of torch and a GPU)')])]


def box_blur(image: np.ndarray, k: int) -> np.ndarray:
    """``k`` x ``k`` mean (odd ``k``), edges replicated, NaN holes filled with the median
    first (a network predicts everywhere); float64 (H, W)."""
    r = k // 2
    filled = np.where(np.isfinite(image), image, np.nanmedian(image)).astype(np.float64)
    p = np.pad(filled, r, mode='edge')
    c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = image.shape
    return (c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]) / (k * k)


class Tum:
    """One real TUM frame: Kinect depth (NaN holes), a blurred prediction with the same holes,
    its camera matrix and a LiDAR-like scan of it (``uv`` pixels, ``z`` metres)."""

    def __init__(self, folder) -> None:
        frame = load_frame(folder)
        self.name = frame.name
        self.K = frame.K
        self.gt = frame.depth_gt
        self.pred = box_blur(self.gt, 9).astype(np.float32)
        self.pred[~np.isfinite(self.gt)] = np.nan
        camera = Intrinsics(K=frame.K, D=frame.D, distortion_model=frame.distortion_model,
                            width=frame.width, height=frame.height)
        self.uv, self.z = prepare_points(simulated_lidar(self.gt, frame.K), np.eye(4), camera,
                                         frame.width, frame.height)


@pytest.fixture(scope='module')
def tum(real_data) -> list[Tum]:
    folders = frame_folders(real_data / 'tum_rgbd')
    if not folders:
        pytest.skip(f'no TUM RGB-D frames under {real_data}')
    return [Tum(f) for f in folders]


def on(device: str, a: np.ndarray):
    """A copy of ``a`` as a tensor on ``device``."""
    return torch.tensor(np.ascontiguousarray(a), device=device)


def check_tensor(x, device: str):
    """``x`` is a tensor on ``device`` (not a numpy array: no silent fall-back); as numpy."""
    assert is_tensor(x), f'expected a tensor on {device}, got {type(x).__name__}'
    assert location(x).split(':')[0] == device, location(x)
    return to_host(x)


def same_nan(want: np.ndarray, got: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def close(want: np.ndarray, got, device: str, atol: float = CONF_ATOL) -> None:
    got = check_tensor(got, device)
    assert got.dtype == want.dtype and got.shape == want.shape
    same_nan(want, got)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, equal_nan=True)


def equal(want: np.ndarray, got, device: str) -> None:
    got = check_tensor(got, device)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def mostly_equal(want: np.ndarray, got, device: str) -> None:
    """Boolean masks that compare a value computed through ``log`` with a limit (the
    ``'angle'`` test): at most 1 pixel in 100,000 may differ, by float32 rounding."""
    got = check_tensor(got, device)
    assert got.dtype == np.bool_ and got.shape == want.shape
    assert np.count_nonzero(got != want) <= want.size // 100_000


def mask_equal(want: np.ndarray, got, device: str, spread: np.ndarray,
               threshold: float) -> int:
    """Masks equal but at pixels whose spread is within SPREAD_ATOL of log1p(threshold);
    returns how many such borderline pixels differ."""
    got = check_tensor(got, device)
    assert got.dtype == np.bool_ and got.shape == want.shape
    differ = got != want
    border = np.abs(spread - math.log1p(threshold)) <= SPREAD_ATOL
    assert not (differ & ~border).any(), f'{int((differ & ~border).sum())} pixels differ'
    return int(differ.sum())


# ----------------------------------------------------------------------------------------------
# the cues, one by one, on real frames

@pytest.mark.parametrize('device', DEVICES)
def test_edge_cues_and_flying_pixels_match_numpy(tum, device):
    for scene in tum:
        for depth in (scene.pred, scene.gt):
            d = on(device, depth)
            spread = q.log_spread(depth)
            close(spread, q.log_spread(d), device, SPREAD_ATOL)
            close(q.log_spread(depth, 5), q.log_spread(d, 5), device, SPREAD_ATOL)
            close(q.discontinuity_confidence(depth), q.discontinuity_confidence(d), device)
            close(q.discontinuity_confidence(depth, spread=spread),
                  q.discontinuity_confidence(d, spread=q.log_spread(d)), device)
            for threshold in (q.FLYING_JUMP, 0.03):
                mask = q.flying_pixel_mask(depth, threshold)
                assert 0 < mask.mean() < 0.5        # the test sees silhouettes
                got = q.flying_pixel_mask(d, threshold)
                mask_equal(mask, got, device, spread, threshold)
            # the dilation itself, exactly: of the device's own mask
            equal(_dilate(to_host(got), 2), q.flying_pixel_mask(d, 0.03, dilate=2), device)
            want = q.flying_pixel_mask(depth, method='angle', K=scene.K, dilate=1)
            got = q.flying_pixel_mask(d, method='angle', K=on(device, scene.K), dilate=1)
            assert 0.01 < want.mean() < 0.5
            mostly_equal(want, got, device)


@pytest.mark.parametrize('device', DEVICES)
def test_temporal_cue_matches_numpy(tum, device):
    for scene in tum:
        current = scene.pred
        previous = current * np.float32(1.03)      # a global change: taken out
        previous[100:160, 200:300] *= np.float32(1.25)   # a flickering region
        previous[300:320, 10:40] = np.nan           # unknown there
        for window in (1, 3, 5):
            want = q.temporal_confidence(current, previous, window=window)
            assert want[130, 250] < 0.2 < 0.9 < want[50, 600]
            close(want, q.temporal_confidence(on(device, current), on(device, previous),
                                              window=window), device)
        close(q.temporal_confidence(current, None),
              q.temporal_confidence(on(device, current), None), device)
        # previous without a valid pixel in the median's sample: no level is taken out
        empty = np.full_like(current, np.nan)
        close(q.temporal_confidence(current, empty),
              q.temporal_confidence(on(device, current), on(device, empty)), device)


@pytest.mark.parametrize('device', DEVICES)
def test_lidar_cue_matches_numpy(tum, real_data, device):
    for scene in tum:
        aligned = scene.pred * np.float32(1.02)
        residuals = q.lidar_residuals(aligned, scene.uv, scene.z)
        assert np.isfinite(residuals).mean() > 0.9
        got = q.lidar_residuals(on(device, aligned), on(device, scene.uv), on(device, scene.z))
        equal(residuals, got, device)
        # host points with a device depth: the points follow the depth
        equal(residuals, q.lidar_residuals(on(device, aligned), scene.uv, scene.z), device)
        want = q.lidar_confidence(aligned.shape, scene.uv, residuals)
        assert want.min() < 0.8 < want.max()
        close(want, q.lidar_confidence(aligned.shape, scene.uv, got), device, LIDAR_ATOL)
        close(q.lidar_confidence(aligned.shape, scene.uv[::5], residuals[::5], cell=7,
                                 neutral=0.3),
              q.lidar_confidence(aligned.shape, on(device, scene.uv[::5]), got[::5], cell=7,
                                 neutral=0.3), device, LIDAR_ATOL)
    # a real KITTI scan at 1224x370 (edge cells of a grid that does not divide the image)
    kitti = load_frame(sorted((real_data / 'kitti_object').glob('*/camera.json'))[0].parent)
    camera = Intrinsics(K=kitti.K, D=kitti.D, distortion_model=kitti.distortion_model,
                        width=kitti.width, height=kitti.height)
    uv, z = prepare_points(kitti.lidar, kitti.T_camera_lidar, camera, kitti.width,
                           kitti.height)
    rows = np.arange(kitti.height, dtype=np.float32)[:, None]
    depth = np.broadcast_to(8.0 + 0.05 * (kitti.height - rows), (kitti.height, kitti.width))
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    residuals = q.lidar_residuals(depth, uv, z)
    got = q.lidar_residuals(on(device, depth), on(device, uv), on(device, z))
    equal(residuals, got, device)
    close(q.lidar_confidence(depth.shape, uv, residuals),
          q.lidar_confidence(depth.shape, uv, got), device, LIDAR_ATOL)


@pytest.mark.parametrize('device', DEVICES)
def test_model_confidence_and_combination_match_numpy(tum, device):
    rng = np.random.default_rng(0)
    for scene in tum:
        depth = scene.pred
        model = rng.uniform(1, 50, depth.shape).astype(np.float32)
        model[5, 5], model[6, 6], model[7, 7] = np.inf, np.nan, -2.0
        for mode in ('median', 'expp1', 'sigmoid', 'unit'):
            close(q.normalize_model_confidence(model, mode),
                  q.normalize_model_confidence(on(device, model), mode), device)
        previous = depth * np.float32(1.02)
        residuals = q.lidar_residuals(depth, scene.uv, scene.z)
        cues = {'edge': q.discontinuity_confidence(depth),
                'lidar': q.lidar_confidence(depth.shape, scene.uv, residuals),
                'temporal': q.temporal_confidence(depth, previous), 'model': model,
                'off': None}
        on_device = {k: None if v is None else on(device, v) for k, v in cues.items()}
        d = on(device, depth)
        close(q.combine_confidence(cues, depth=depth),
              q.combine_confidence(on_device, depth=d), device)
        close(q.combine_confidence(cues, depth=depth, weights={'edge': 2.0, 'lidar': 0.5}),
              q.combine_confidence(on_device, depth=d, weights={'edge': 2.0, 'lidar': 0.5}),
              device)
        close(q.combine_confidence({}, depth=depth), q.combine_confidence({}, depth=d),
              device)
        # numpy cues with a device depth are brought to the depth's device
        close(q.combine_confidence(cues, depth=depth), q.combine_confidence(cues, depth=d),
              device)
        close(q.combine_confidence(cues), q.combine_confidence(on_device), device)


# ----------------------------------------------------------------------------------------------
# synthetic scenes and odd shapes

H, W = 96, 128


def box_scene() -> np.ndarray:
    """A box 1.5 m away in front of a slanted wall around 3 m, box-blurred across the
    silhouette, with invalid pixels of every kind; float32 (H, W)."""
    u = np.arange(W)[None, :].repeat(H, axis=0)
    depth = 3.0 * (1 + 0.002 * (u - W / 2))
    depth[30:70, 40:90] = 1.5
    pred = box_blur(depth, 7).astype(np.float32)
    pred[5, 5], pred[6, 6], pred[7, 7], pred[8, 8] = np.nan, 0.0, -1.0, np.inf
    pred[40:44, 60:64] = np.nan
    return pred


@pytest.mark.parametrize('device', DEVICES)
def test_synthetic_scene_matches_numpy(device):
    pred = box_scene()
    d = on(device, pred)
    spread = q.log_spread(pred)
    close(spread, q.log_spread(d), device, SPREAD_ATOL)
    mask = q.flying_pixel_mask(pred)
    assert mask[50, 40] and not mask[50, 65]        # the silhouette, not the box face
    mask_equal(mask, q.flying_pixel_mask(d), device, spread, q.FLYING_JUMP)
    close(q.discontinuity_confidence(pred), q.discontinuity_confidence(d), device)
    K = np.array([[120.0, 0.0, 63.5], [0.0, 120.0, 47.5], [0.0, 0.0, 1.0]])
    mostly_equal(q.flying_pixel_mask(pred, method='angle', K=K),
                 q.flying_pixel_mask(d, method='angle', K=K), device)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('shape', [(1, 1), (1, 7), (7, 1), (2, 3), (3, 2), (5, 9)])
def test_filters_on_small_and_odd_shapes(device, shape):
    # the row filter's flattened shifts mix neighbouring rows; its border redo must undo that
    # for any width, also when the window is wider than the image
    depth = np.random.default_rng(sum(shape)).uniform(0.5, 4, shape).astype(np.float32)
    depth.flat[0] = np.nan
    d = on(device, depth)
    for window in (3, 5, 7):
        close(q.log_spread(depth, window), q.log_spread(d, window), device, SPREAD_ATOL)
    equal(q.flying_pixel_mask(depth, 0.2, dilate=3), q.flying_pixel_mask(d, 0.2, dilate=3),
          device)
    close(q.temporal_confidence(depth, depth * 1.5), q.temporal_confidence(d, d * 1.5),
          device)


def test_numpy_in_numpy_out_without_torch_objects():
    # the CPU path stays numpy: no tensor is made from numpy input
    pred = box_scene()
    for out in (q.log_spread(pred), q.discontinuity_confidence(pred),
                q.flying_pixel_mask(pred), q.temporal_confidence(pred, pred),
                q.combine_confidence({'a': q.discontinuity_confidence(pred)}, depth=pred),
                q.TemporalStabilizer().update(pred, 0.0)[0]):
        assert isinstance(out, np.ndarray)


@pytest.mark.parametrize('call,match', [
    (lambda: q.log_spread(torch.ones(3, 3, 3)), r'\(H, W\)'),
    (lambda: q.log_spread(torch.ones(4, 4, dtype=torch.complex64)), 'numeric'),
    (lambda: q.discontinuity_confidence(torch.ones(4, 4), spread=torch.ones(3, 4)),
     'spread must have the shape'),
    (lambda: q.temporal_confidence(torch.ones(4, 4), torch.ones(4, 5)), 'shape'),
    (lambda: q.lidar_confidence((4, 4), torch.ones(1, 2), torch.tensor([-0.1])), '>= 0'),
    (lambda: q.lidar_residuals(torch.ones(4, 4), torch.ones(2, 2), torch.ones(3)),
     'one depth'),
    (lambda: q.TemporalStabilizer().update(torch.ones(4, 4), 0.0, valid=torch.ones(4, 4)),
     'valid must be a bool'),
])
def test_tensor_argument_validation(call, match):
    with pytest.raises(q.QualityError, match=match):
        call()


def test_scores_take_tensors_on_the_host():
    rng = np.random.default_rng(3)
    error = np.abs(rng.normal(0, 1, 5000))
    confidence = -error * rng.uniform(0.5, 1.5, error.size)
    assert q.ause(torch.from_numpy(error), torch.from_numpy(confidence)) == \
        q.ause(error, confidence)


# ----------------------------------------------------------------------------------------------
# the stabilizer

def infos_equal(a: q.StabilizerInfo, b: q.StabilizerInfo) -> bool:
    fields = ('scale', 'shift', 'raw_scale', 'raw_shift', 'level', 'agreement')
    same = all(getattr(a, f) == getattr(b, f) or (math.isnan(getattr(a, f))
                                                  and math.isnan(getattr(b, f)))
               for f in fields)
    return same and (a.n_compared, a.reset, a.reason, a.held, a.followed) == \
        (b.n_compared, b.reset, b.reason, b.held, b.followed)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('shift', [False, True])
def test_stabilizer_matches_numpy(tum, device, shift):
    # jitter, a glitch frame (held), a persistent 25 % change (followed), a scene cut, a gap
    # and a new shape (resets), a valid mask: the same decisions and outputs on both
    base = box_blur(tum[0].gt, 7).astype(np.float32)
    rng = np.random.default_rng(5)
    cut = (np.flipud(np.fliplr(base)) + rng.uniform(0, 4, base.shape)).astype(np.float32)
    scales = np.exp(0.05 * rng.standard_normal(34))
    scales[8] *= 3.0
    scales[16:] *= 1.25
    frames, stamps = [], []
    for i, s in enumerate(scales):
        x = base if i < 28 else cut
        frames.append(x * np.float32(s))
        stamps.append(0.033 * i + (2.0 if i >= 31 else 0.0))
    frames.append(frames[-1][:, :-8].copy())
    stamps.append(stamps[-1] + 0.033)
    valid = np.ones(base.shape, dtype=bool)
    valid[:40] = False
    ref, dev = q.TemporalStabilizer(shift=shift), q.TemporalStabilizer(shift=shift)
    seen = set()
    for i, (x, stamp) in enumerate(zip(frames, stamps)):
        x = 1 / x if shift else x
        mask = valid if i % 3 == 0 and x.shape == valid.shape else None
        want, want_info = ref.update(x, stamp, valid=mask)
        got, got_info = dev.update(on(device, x), stamp,
                                   valid=None if mask is None else on(device, mask))
        assert infos_equal(want_info, got_info), (i, want_info, got_info)
        equal(want, got, device)
        equal(np.asarray(ref.output), dev.output, device)
        if ref.previous is not None:
            equal(np.asarray(ref.previous), dev.previous, device)
        seen |= {k for k in ('held', 'followed', 'reset') if getattr(want_info, k)}
        seen |= {want_info.reason.split(' ')[0]} if want_info.reset else set()
    assert seen >= {'held', 'followed', 'reset', 'scene', 'gap', 'image'}, seen


def test_frames_moving_to_another_device_reset_the_stabilizer(tum):
    base = tum[0].pred
    stab = q.TemporalStabilizer()
    stab.update(base, 0.0)
    stab.update(base, 0.033)
    out, info = stab.update(torch.from_numpy(base.copy()), 0.066)
    assert info.reset and info.reason == 'the frames moved from numpy to cpu'
    assert is_tensor(out) and is_tensor(stab.output) and stab.previous is None
    out, info = stab.update(torch.from_numpy(base.copy()), 0.1)
    assert not info.reset and is_tensor(stab.previous)


# ----------------------------------------------------------------------------------------------
# the node's quality step: stabilize, then assess, over a stream

CUE_SETS = {
    'none': (), 'discontinuity': ('discontinuity',), 'lidar': ('lidar',),
    'temporal': ('temporal',), 'model': ('model',),
    'all': ('discontinuity', 'lidar', 'temporal', 'model'),
}


def node_config(cues: tuple, **values):
    values.update({f'confidence.{c}': c in cues
                   for c in ('discontinuity', 'lidar', 'temporal', 'model')})
    return cfg.validate_values(values)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('metric', [True, False])
@pytest.mark.parametrize('cues', list(CUE_SETS))
def test_node_step_matches_numpy(tum, device, metric, cues):
    # what FramePipeline.finish runs, frame after frame: the same filtered depth (NaN at the
    # same pixels), the same removed pixels and a confidence within CONF_ATOL, every output a
    # tensor on the device; the temporal state (stabilizer, previous image) carried across
    gate = metric and bool(CUE_SETS[cues])   # the cloud gated by the confidence
    config = node_config(CUE_SETS[cues], **{
        'temporal.enabled': True, 'cloud.min_confidence': 0.5 if gate else 0.0,
        'filter.edges': True})
    rng = np.random.default_rng(7)
    ref_state, dev_state = QualityState(), QualityState()
    borderline = 0
    for i in range(5):
        scene = tum[i % len(tum)] if i >= 3 else tum[0]     # a cut to the next frames at 3
        x = scene.pred * np.float32(math.exp(0.05 * rng.standard_normal()))
        x = x if metric else 1 / x
        model = rng.uniform(0.5, 5, x.shape).astype(np.float32)
        lidar = (scene.uv, scene.z) if metric else None
        want_x, want_info = stabilize(config, ref_state, x.copy(), 0.033 * i, not metric)
        got_x, got_info = stabilize(config, dev_state, on(device, x), 0.033 * i, not metric)
        assert infos_equal(want_info, got_info)
        equal(want_x, got_x, device)
        spread = q.log_spread(want_x)
        want = assess(config, ref_state, want_x, metric, True, gate, lidar, model)
        got = assess(config, dev_state, got_x, metric, True, gate,
                     None if lidar is None else (on(device, lidar[0]), on(device, lidar[1])),
                     on(device, model) if i % 2 else model)     # host or device input
        assert got.depth is got_x                   # flying pixels written in place
        borderline += mask_equal(np.isnan(want.depth), got.depth.isnan(), device, spread,
                                 config['filter.edge_threshold'])
        both = ~np.isnan(want.depth) & ~np.isnan(to_host(got.depth))
        np.testing.assert_array_equal(to_host(got.depth)[both], want.depth[both])
        if metric:
            assert np.isnan(want.depth).sum() > np.isnan(x).sum()   # flying pixels went
        assert (want.removed is None) == (got.removed is None)
        if want.removed is not None:
            mask_equal(want.removed, got.removed, device, spread,
                       config['filter.edge_threshold'])
        assert (want.confidence is None) == (got.confidence is None) == (not CUE_SETS[cues])
        if want.confidence is not None:
            close(want.confidence, got.confidence, device)
        if 'temporal' in CUE_SETS[cues]:
            check_tensor(dev_state.previous, device)
    assert borderline == 0


@pytest.mark.parametrize('device', DEVICES)
def test_node_step_without_filter_or_stabilizer(tum, device):
    # temporal.enabled and filter.edges off: the depth handed in is returned, untouched
    config = node_config(CUE_SETS['all'], **{'temporal.enabled': False,
                                             'filter.edges': False})
    scene = tum[1]
    state = QualityState()
    x = on(device, scene.pred)
    values, info = stabilize(config, state, x, 0.0, False)
    assert values is x and info is None
    out = assess(config, state, values, True, True, False, (scene.uv, scene.z))
    assert out.depth is x and out.removed is None
    close(assess(config, QualityState(), scene.pred.copy(), True, True, False,
                 (scene.uv, scene.z)).confidence, out.confidence, device)
    equal(scene.pred, out.depth, device)
