"""Marigold depth checkpoints (diffusers) behind the estimator and through the node.

A tiny random ``MarigoldDepthPipeline`` built from configs (:mod:`tiny_slow_models`, no
download) is loaded through ``model.name`` like a copy of ``prs-eth/marigold-depth-v1-1``.
Its output is affine-invariant depth: ``relative_depth``, aligned with LiDAR in depth space.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

pytest.importorskip('diffusers', reason='the marigold extra (diffusers) is not installed')

from depth_node.camera_info import intrinsics_from_fields  # noqa: E402
from depth_node.estimator import DepthEstimator, EstimatorError  # noqa: E402
from depth_node.messages import (camera_info_msg, image_msg, image_to_array,  # noqa: E402
                                 make_header, xyz_cloud_msg)
from ros_harness import holds_camera_info, holds_scan, status_values  # noqa: E402
from tiny_models import textured_image  # noqa: E402
from tiny_slow_models import make_tiny_marigold  # noqa: E402

WIDTH, HEIGHT = 160, 120
K = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 59.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope='module')
def marigold(tmp_path_factory):
    return str(make_tiny_marigold(tmp_path_factory.mktemp('marigold')))


@pytest.fixture(scope='module')
def frame():
    return textured_image(HEIGHT, WIDTH, top=200, noise=55, seed=11)


def test_marigold_is_relative_depth_at_the_image_size(marigold, frame):
    est = DepthEstimator(marigold, device='cpu', precision='fp32')
    assert (est.model_type, est.output_kind, est.is_metric) == ('marigold', 'relative_depth',
                                                                False)
    assert est.engine.steps == 2 and est.engine.ensemble_size == 1  # the checkpoint's defaults
    first = est.predict(frame)
    assert first.depth.shape == (HEIGHT, WIDTH) and first.depth.dtype == np.float32
    assert np.isfinite(first.depth).all() and np.ptp(first.depth) > 0
    # the noise is seeded per frame: the same frame gives the same depth
    np.testing.assert_array_equal(est.predict(frame).depth, first.depth)
    other = est.predict(np.ascontiguousarray(frame[::-1])).depth
    assert not np.allclose(other, first.depth, atol=1e-4)
    with pytest.raises(EstimatorError, match='inside its pipeline'):
        est.preprocess([frame])
    with pytest.raises(EstimatorError, match='not metres'):
        est.predict_points(frame, K)


def test_denoising_steps_and_ensemble_size_reach_the_pipeline(marigold, frame):
    base = DepthEstimator(marigold, device='cpu', precision='fp32').predict(frame).depth
    one = DepthEstimator(marigold, device='cpu', precision='fp32', denoising_steps=1)
    assert one.engine.steps == 1
    assert not np.allclose(one.predict(frame).depth, base, atol=1e-5)
    if importlib.util.find_spec('scipy') is None:  # diffusers ensembles with scipy
        with pytest.raises(EstimatorError, match='pip install scipy'):
            DepthEstimator(marigold, device='cpu', precision='fp32', ensemble_size=3)
        return
    three = DepthEstimator(marigold, device='cpu', precision='fp32', ensemble_size=3)
    assert three.engine.ensemble_size == 3
    assert not np.allclose(three.predict(frame).depth, base, atol=1e-5)


def test_without_diffusers_the_error_names_the_extra(marigold, monkeypatch):
    monkeypatch.setitem(sys.modules, 'diffusers', None)  # import diffusers -> ImportError
    with pytest.raises(EstimatorError, match=r"depth_node\[marigold\]"):
        DepthEstimator(marigold, device='cpu')


def test_other_diffusers_pipelines_and_onnx_engines_are_refused(marigold, tmp_path):
    (tmp_path / 'model_index.json').write_text(json.dumps({'_class_name':
                                                           'MarigoldNormalsPipeline'}))
    with pytest.raises(EstimatorError, match='not a depth model'):
        DepthEstimator(str(tmp_path), device='cpu')
    with pytest.raises(EstimatorError, match='runs in torch only'):
        DepthEstimator(marigold, device='cpu', engine='openvino')


@pytest.mark.ros
def test_node_aligns_marigold_with_lidar_in_depth_space(session, marigold, frame):
    """Through ROS: depth/relative without a scan; with a scan whose depth is exactly
    2 x prediction + 0.5 m the fit finds scale 2, shift 0.5 (depth space: in disparity space
    no affine map fits) and depth/image is that depth."""
    eye = [float(v) for v in np.eye(4).ravel()]
    node = session.start_depth_node({
        'model.name': marigold, 'model.device': 'cpu', 'model.precision': 'fp32',
        'model.warmup': False, 'lidar.enabled': True, 'lidar.T_camera_lidar': eye,
        'lidar.smoothing': 0.0, 'cloud.enabled': False,
        'filter.edges': False})  # compared with the fit pixel for pixel
    assert node.core.estimator.output_kind == 'relative_depth'
    probe = session.probe()
    assert probe.wait_subscribers('image') and probe.wait_subscribers('lidar/points')
    intr = intrinsics_from_fields(WIDTH, HEIGHT, K.ravel(), [0.0] * 5, 'plumb_bob',
                                  [0.0] * 12, [0.0] * 9)
    info = camera_info_msg(intr, make_header('cam_optical', 1, 0))
    probe.publish_until('camera_info', info, lambda: holds_camera_info(node, info),
                        'the node to take the camera_info')

    # no scan: relative depth only, never metres
    probe.publish('image', image_msg(frame, 'rgb8', make_header('cam_optical', 1, 0)))
    rel = probe.wait_stamp('depth/relative', (1, 0))
    assert rel is not None, 'no depth/relative from Marigold'
    prediction = node.core.estimator.predict(frame).depth
    np.testing.assert_allclose(image_to_array(rel), prediction, rtol=1e-4, atol=1e-5)
    assert probe.wait_stamp('depth/image', (1, 0), timeout=1.0) is None

    # a scan of the scene the prediction describes, as depth = 2 p + 0.5
    v, u = np.mgrid[2:HEIGHT:6, 2:WIDTH:6]
    z = 2.0 * prediction[v, u] + 0.5
    points = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1],
                       z], axis=-1).reshape(-1, 3).astype(np.float32)
    scan = xyz_cloud_msg(points, make_header('cam_optical', 2, 0))
    probe.publish_until('lidar/points', scan, lambda: holds_scan(node, scan),
                        'the node to store the scan')
    probe.publish('image', image_msg(frame, 'rgb8', make_header('cam_optical', 2, 0)))
    status = probe.wait_stamp('depth/alignment', (2, 0))
    assert status is not None, 'no depth/alignment'
    values = status_values(status)
    assert values['state'] == 'ok', values
    assert float(values['scale']) == pytest.approx(2.0, rel=0.02), values
    assert float(values['shift']) == pytest.approx(0.5, abs=0.02), values
    depth = probe.wait_stamp('depth/image', (2, 0))
    assert depth is not None and depth.header.frame_id == 'cam_optical'
    np.testing.assert_allclose(image_to_array(depth), 2.0 * prediction + 0.5, rtol=0.02,
                               atol=0.02)
