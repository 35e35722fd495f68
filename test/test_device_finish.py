"""A frame kept on the model's device (issue 25): the same outputs as the CPU path.

``model.keep_on_device`` (``auto``: when the model runs on CUDA) keeps the network's output where
it is, as torch tensors, and runs the LiDAR fit, the flying-pixel filter, the confidence and the
cloud there, copying back one buffer per published message. ``on`` does that on the CPU too, with
torch on ``cpu``: these tests compare it, output by output, with ``off`` (numpy), ROS-free
through :class:`FramePipeline` and through the node's ROS interface. The ``gpu`` test at the end
runs the same comparison with the model on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depth_node import config as cfg
from depth_node.frame_pipeline import FramePipeline, Job
from depth_node.messages import camera_info_msg, cloud_to_array, image_msg, image_to_array, \
    make_header
from depth_node.problems import Reporter
import relative_frames as rf
from ros_harness import holds_camera_info

TOL = dict(rtol=2e-5, atol=2e-6)   # float32 arithmetic in another order (torch vs numpy)


@pytest.fixture(scope='module')
def tum(real_data):
    return rf.relative_tum(real_data)


def _same(a, b, key: str) -> None:
    """Two outputs of one key: arrays within :data:`TOL` (NaN at the same pixels), clouds byte
    for byte but for float rounding of x, y, z, reports by their values."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f'{key}: {type(b)} reached the sink, not numpy'
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if a.dtype.kind == 'f':
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=key)
            np.testing.assert_allclose(a, b, equal_nan=True, err_msg=key, **TOL)
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)
    elif hasattr(a, 'data') and hasattr(a, 'point_step'):  # a PackedCloud
        assert (a.height, a.width, a.point_step, a.is_dense) == \
            (b.height, b.width, b.point_step, b.is_dense), key
        assert [f[:3] for f in a.fields] == [f[:3] for f in b.fields], key
        xa = np.frombuffer(bytes(a.data), np.float32).reshape(-1, a.point_step // 4)
        xb = np.frombuffer(bytes(b.data), np.float32).reshape(-1, b.point_step // 4)
        np.testing.assert_allclose(xa[:, :3], xb[:, :3], equal_nan=True, err_msg=key, **TOL)
        np.testing.assert_array_equal(xa[:, 3:].view(np.uint32), xb[:, 3:].view(np.uint32))
    elif hasattr(a, 'values') and callable(a.values):   # AlignmentReport
        va, vb = a.values(), b.values()
        assert va.keys() == vb.keys() and va['state'] == vb['state'], (va, vb)
        for name in ('scale', 'shift'):
            if name in va:
                assert float(va[name]) == pytest.approx(float(vb[name]), rel=1e-5, abs=1e-9,
                                                        nan_ok=True), (name, va, vb)
    elif hasattr(a, 'K'):   # Intrinsics
        assert (a.width, a.height) == (b.width, b.height), key
        np.testing.assert_array_equal(a.K, b.K)
    else:
        assert a == b, key


def _finish_both(tum, wanted, **params):
    """The relative prediction finished on numpy and, as a torch tensor, on the 'device'."""
    frame_data, prediction, scan = tum
    values = {'input.mode': 'relative_depth', 'lidar.enabled': True,
              'lidar.T_camera_lidar': np.eye(4).ravel().tolist(), 'lidar.smoothing': 0.0,
              'cloud.stride': 2, 'cloud.max_depth': 10.0, 'confidence.discontinuity': True,
              'confidence.lidar': True}
    values.update(params)
    outs = []
    for on_device in (False, True):
        pipe = FramePipeline(cfg.validate_values(values))
        state = pipe.new_camera()
        state.intrinsics = frame_data.intrinsics()
        frame = pipe.decode('relative', rf.image(prediction, '32FC1', 7))
        if on_device:
            frame.prediction = torch.from_numpy(frame.prediction.copy())
        seen = []
        out = pipe.finish(frame, state, wanted, lambda key, value: seen.append(key),
                          scan=(frame.stamp, 'cam', scan))
        # the tensor frame was fitted as a tensor (not copied to numpy first)
        assert isinstance(state.last_alignment.depth, torch.Tensor) == on_device
        outs.append((seen, out))
    return outs


@pytest.mark.parametrize('params', [
    {},
    {'filter.edges': False, 'cloud.color': False},
    {'output.encoding': '16UC1', 'cloud.organized': False, 'cloud.min_confidence': 0.3},
    {'lidar.occlusion_window': 1, 'cloud.stride': 3},
])
def test_a_tensor_prediction_finishes_as_numpy_does(tum, params):
    """LiDAR projection and fit, flying pixels, confidence, depth and cloud from a tensor
    prediction: every output reaches the sink as numpy, equal to the CPU path's."""
    wanted = {'relative', 'depth', 'info', 'points', 'confidence', 'colored'}
    (seen_np, out_np), (seen_t, out_t) = _finish_both(tum, wanted, **params)
    assert seen_np == seen_t
    assert out_np.metric and out_t.metric, (out_np.problems, out_t.problems)
    assert [p.key for p in out_np.problems] == [p.key for p in out_t.problems]
    for key in seen_np:
        _same(out_np.values[key], out_t.values[key], key)
    depth = out_t.values['depth']
    gt = tum[0].depth_gt
    if depth.dtype == np.float32:   # the fit undid the affine error, on the tensor path too
        ok = np.isfinite(gt) & np.isfinite(depth) & (gt < 10)
        assert np.median(np.abs(depth[ok] - gt[ok]) / gt[ok]) < 0.01


def test_without_a_scan_the_tensor_path_reports_as_numpy_does(tum):
    frame_data, prediction, _ = tum
    pipe = FramePipeline(cfg.validate_values({
        'input.mode': 'relative_depth', 'lidar.enabled': True,
        'lidar.T_camera_lidar': np.eye(4).ravel().tolist()}))
    state = pipe.new_camera()
    state.intrinsics = frame_data.intrinsics()
    frame = pipe.decode('relative', rf.image(prediction, '32FC1', 8))
    frame.prediction = torch.from_numpy(frame.prediction.copy())
    seen = {}
    out = pipe.finish(frame, state, {'relative', 'depth'}, lambda k, v: seen.setdefault(k, v))
    assert [p.key for p in out.problems] == ['no_fit'] and 'depth' not in seen
    assert isinstance(seen['relative'], np.ndarray)
    np.testing.assert_array_equal(seen['relative'], prediction)


def _run_model(model_dir: str, image: np.ndarray, intr, keep: str, wanted, scans=(),
               **params):
    """One frame of ``image`` through run_batch with the tiny model: the sink's outputs."""
    from depth_node.model import load_estimator

    values = {'model.name': model_dir, 'model.device': 'cpu', 'model.precision': 'fp32',
              'model.warmup': False, 'model.keep_on_device': keep, 'cloud.stride': 2}
    values.update(params)
    config = cfg.validate_values(values)
    pipe = FramePipeline(config, load_estimator(config).estimator)
    assert pipe.on_device == (keep == 'on' or keep == 'auto' and config['model.device'] == 'cuda')
    state = pipe.new_camera()
    state.intrinsics = intr
    msg = image_msg(image, 'rgb8', make_header('cam_optical', 5))
    seen = {}
    job = Job(state, 'image', msg, wanted=frozenset(wanted), scans=lambda: list(scans))
    pipe.run_batch([job], lambda j, key, value: seen.setdefault(key, value),
                   Reporter(lambda severity, line: None))
    assert isinstance(job.frame.prediction, torch.Tensor) == pipe.on_device
    return seen


@pytest.mark.parametrize('kind', ['metric', 'relative'])
def test_the_model_output_kept_on_the_device_gives_the_cpu_outputs(models, tum, kind):
    """The network's output kept as a tensor (``model.keep_on_device: on``, torch on the CPU)
    through run_batch: the same outputs as ``off``; the relative model with a LiDAR scan."""
    frame_data, _, scan = tum
    wanted = {'relative', 'depth', 'info', 'points', 'confidence'}
    scans = [(5.0, 'cam', scan)] if kind == 'relative' else []   # the frame's stamp
    lidar = {'lidar.enabled': True, 'lidar.T_camera_lidar': np.eye(4).ravel().tolist(),
             } if kind == 'relative' else {}
    off = _run_model(models[kind], frame_data.image, frame_data.intrinsics(), 'off', wanted,
                     scans, **lidar)
    on = _run_model(models[kind], frame_data.image, frame_data.intrinsics(), 'on', wanted,
                    scans, **lidar)
    assert off.keys() == on.keys()
    assert ('depth' in on) == (kind == 'metric' or on['alignment'].values()['state'] == 'ok')
    for key in off:
        _same(off[key], on[key], key)


def _node_outputs(session, model: str, frame, keep: str, sec: int):
    node = session.start_depth_node({
        'model.name': model, 'model.device': 'cpu', 'model.precision': 'fp32',
        'model.warmup': False, 'model.keep_on_device': keep, 'cloud.stride': 2,
        'cloud.color': True})
    try:
        assert node.core.frames.on_device == (keep == 'on')
        probe = session.probe()
        assert probe.wait_subscribers('image') and probe.wait_subscribers('camera_info')
        header = make_header('cam_optical', sec)
        info = camera_info_msg(frame.intrinsics(), header)
        probe.publish_until('camera_info', info, lambda: holds_camera_info(node, info),
                            'the node to take the camera_info')
        probe.publish('image', image_msg(frame.image, 'rgb8', header))
        got = {topic: probe.wait_stamp(topic, (sec, 0))
               for topic in ('depth/image', 'depth/points', 'depth/confidence')}
        assert all(m is not None for m in got.values()), got
        for m in got.values():
            assert m.header.frame_id == 'cam_optical' and m.header.stamp.sec == sec
        return got
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_the_node_publishes_the_same_from_the_device_path(session, models, tum):
    """Through ROS: depth/image, depth/points (x, y, z, rgb) and depth/confidence of a metric
    model with ``model.keep_on_device: on`` equal those with ``off``."""
    frame = tum[0]
    off = _node_outputs(session, models['metric'], frame, 'off', 21)
    on = _node_outputs(session, models['metric'], frame, 'on', 22)
    for topic in ('depth/image', 'depth/confidence'):
        _same(image_to_array(off[topic]), image_to_array(on[topic]), topic)
    a, b = off['depth/points'], on['depth/points']
    assert (a.height, a.width, a.point_step) == (b.height, b.width, b.point_step)
    np.testing.assert_allclose(cloud_to_array(a), cloud_to_array(b), equal_nan=True, **TOL)
    np.testing.assert_array_equal(cloud_to_array(a, ('rgb',)), cloud_to_array(b, ('rgb',)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('kind, encoding', [('metric', '32FC1'), ('metric', '16UC1'),
                                            ('relative', '32FC1')])
def test_on_cuda_auto_keeps_the_frame_there_and_matches_the_cpu(models, tum, kind, encoding):
    """On CUDA ``auto`` keeps the frame on the GPU; its outputs equal the CPU path's within
    the float tolerance of another device (fp32 model on both); 16UC1 is converted there."""
    frame_data, _, scan = tum
    wanted = {'relative', 'depth', 'info', 'points', 'confidence'}
    scans = [(5.0, 'cam', scan)] if kind == 'relative' else []
    lidar = {'lidar.enabled': True, 'lidar.T_camera_lidar': np.eye(4).ravel().tolist(),
             } if kind == 'relative' else {}
    lidar['output.encoding'] = encoding
    cpu = _run_model(models[kind], frame_data.image, frame_data.intrinsics(), 'off', wanted,
                     scans, **lidar)
    gpu = _run_model(models[kind], frame_data.image, frame_data.intrinsics(), 'auto', wanted,
                     scans, **{**lidar, 'model.device': 'cuda'})
    assert cpu.keys() == gpu.keys()
    for key, value in cpu.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
            finite = np.isfinite(value) & np.isfinite(gpu[key])
            assert finite.mean() > 0.99 * np.isfinite(value).mean(), key
            np.testing.assert_allclose(gpu[key][finite], value[finite], rtol=1e-3, atol=1e-4)
        elif isinstance(value, np.ndarray) and value.dtype == np.uint16:   # millimetres
            both = (value > 0) & (gpu[key] > 0)
            assert both.mean() > 0.99 * (value > 0).mean(), key
            diff = np.abs(gpu[key][both].astype(np.int64) - value[both].astype(np.int64))
            assert diff.max() <= max(1, int(1e-3 * value.max())), key


def test_the_kept_output_is_never_the_engines_own_buffer(tiny_dir, tum):
    """A network whose output is already at the image's size (GLPN at 640x480): postprocessing
    makes no new tensor, and the engine's output buffer (a CUDA graph's, TensorRT's) is
    overwritten by its next call while the frame is still being finished. The kept depth must
    have its own storage, with the same values."""
    from depth_node.estimator import DepthEstimator

    est = DepthEstimator(str(tiny_dir('glpn')), device='cpu', precision='fp32')
    raw = []
    run = est.engine.run

    def spy(pixel_values):
        out = run(pixel_values)
        raw.append(out[0])
        return out

    est.engine.run = spy
    kept = est.predict_batch([tum[0].image], on_device=True).depth
    engine_out = raw[-1].reshape(kept.shape)   # the case under test: no resize, no cast
    np.testing.assert_array_equal(kept.numpy(), engine_out.numpy())
    assert kept.untyped_storage().data_ptr() != raw[-1].untyped_storage().data_ptr()
