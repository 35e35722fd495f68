"""Depth Anything 3 exports through the ROS interface: the focal scaling from camera_info, the
sky mask in depth/image and the cloud, the model's confidence on depth/confidence, and frames
without camera_info skipped and counted.

The models are tiny ONNX graphs with the published input/output names and layouts
(``test_da3.write_model``): depth ``4 m + 1`` and sky logits ``m - 0.5`` for the mean ``m`` of
the RGB channels in [0, 1], so every expected value is computed by hand.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from depth_node import quality
from depth_node.camera_info import intrinsics_from_fields
from depth_node.messages import (camera_info_msg, cloud_to_array, image_msg, image_to_array,
                                 make_header)
from ros_harness import holds_camera_info
from test_da3 import METRIC_CARD, MONO_CARD, NET_H, NET_W, raw_depth, write_model

pytestmark = pytest.mark.ros

WIDTH, HEIGHT = 640, 480
FRAME = 'cam_optical'


def _intr(fx: float, fy: float):
    K = [fx, 0.0, 319.5, 0.0, fy, 239.5, 0.0, 0.0, 1.0]
    return intrinsics_from_fields(WIDTH, HEIGHT, K, [0.0] * 5, 'plumb_bob', [0.0] * 12,
                                  [0.0] * 9)


def _sky_image() -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
    image[:200] = 10  # dark rows: sky logits 10 / 255 - 0.5 < 0
    return image


def _start(session, folder, **params):
    base = {'model.name': folder, 'model.engine': 'onnxruntime', 'model.device': 'cpu',
            'model.precision': 'fp32', 'model.warmup': False, 'cloud.stride': 2}
    base.update(params)
    node = session.start_depth_node(base)
    probe = session.probe()
    assert probe.wait_subscribers('image')
    return node, probe


def _send(node, probe, image, sec, intr=None):
    header = make_header(FRAME, sec, 0)
    if intr is not None:
        info = camera_info_msg(intr, header)
        probe.publish_until('camera_info', info, lambda: holds_camera_info(node, info),
                            'the node to take the camera_info')
    probe.publish('image', image_msg(image, 'rgb8', header))
    return (sec, 0)


@pytest.fixture(scope='module')
def metric_model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp('da3') / 'metric', METRIC_CARD)


def test_metric_depth_scales_with_each_camera_infos_focal_and_sky_is_nan(session, metric_model):
    node, probe = _start(session, metric_model)
    assert node.core.is_metric
    for sec, (fx, fy) in ((10, (500.0, 500.0)), (11, (610.0, 455.0))):
        stamp = _send(node, probe, _sky_image(), sec, _intr(fx, fy))
        msg = probe.wait_stamp('depth/image', stamp)
        assert msg is not None, f'no depth/image for focal {fx, fy}'
        depth = image_to_array(msg)
        # stretched 640x480 -> 504x280: the focal at the network, over focal_scale 300
        expected = raw_depth(200) * 0.5 * (fx * NET_W / WIDTH + fy * NET_H / HEIGHT) / 300
        np.testing.assert_allclose(depth[210:], expected, rtol=1e-5)
        assert np.isnan(depth[:195]).all()  # sky
        cloud = cloud_to_array(probe.wait_stamp('depth/points', stamp))
        assert np.isnan(cloud[:97]).all()  # the sky rows of the strided cloud
        z = cloud[106:, :, 2]
        np.testing.assert_allclose(z[np.isfinite(z)], expected, rtol=1e-5)
        assert np.isfinite(z).mean() > 0.95


def test_sky_depth_caps_sky_through_the_node(session, tmp_path):
    folder = write_model(tmp_path / 'capped', dict(METRIC_CARD, sky_depth=50))
    node, probe = _start(session, folder, **{'filter.edges': False})
    stamp = _send(node, probe, _sky_image(), 20, _intr(500.0, 500.0))
    depth = image_to_array(probe.wait_stamp('depth/image', stamp))
    assert (depth[:195] == 50.0).all() and np.isfinite(depth).all()


def test_without_camera_info_the_frame_is_skipped_and_counted(session, metric_model):
    node, probe = _start(session, metric_model)
    stamp = _send(node, probe, _sky_image(), 30)  # no camera_info: no focal length
    deadline = time.monotonic() + 20
    while node.counters.get('frames_without_focal', 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.counters.get('frames_without_focal', 0) == 1
    assert probe.wait_stamp('depth/image', stamp, timeout=1.0) is None
    assert node.counters.get('forward_passes', 0) == 0  # skipped before the network


def test_the_models_own_confidence_on_depth_confidence(session, tmp_path):
    folder = write_model(tmp_path / 'mono', MONO_CARD, outputs=('depth', 'depth_conf'))
    only_model = {'confidence.discontinuity': False, 'confidence.lidar': False,
                  'confidence.temporal': False}
    node, probe = _start(session, folder, **only_model)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    stamp = _send(node, probe, image, 40, _intr(500.0, 500.0))
    msg = probe.wait_stamp('depth/confidence', stamp)
    relative = probe.wait_stamp('depth/relative', stamp)
    assert msg is not None and relative is not None
    assert msg.header == relative.header and (msg.height, msg.width) == (HEIGHT, WIDTH)
    raw = node.core.estimator.predict(image).confidence
    expected = quality.normalize_model_confidence(raw)
    np.testing.assert_allclose(image_to_array(msg), expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(expected) > 0.05  # a confidence that says something


def test_focal_scaling_without_a_cloud_too(session, metric_model):
    """cloud.enabled false: the forward is predict(focal=...) instead of predict_points(K)."""
    node, probe = _start(session, metric_model, **{'cloud.enabled': False})
    stamp = _send(node, probe, _sky_image(), 50, _intr(610.0, 455.0))
    depth = image_to_array(probe.wait_stamp('depth/image', stamp))
    expected = raw_depth(200) * 0.5 * (610.0 * NET_W / WIDTH + 455.0 * NET_H / HEIGHT) / 300
    np.testing.assert_allclose(depth[210:], expected, rtol=1e-5)
