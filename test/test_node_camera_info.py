"""depth/camera_info comes with every depth-like image: with depth/relative too (a relative
model without LiDAR), so RViz and image + camera_info tools can pair them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from depth_node.messages import camera_info_msg, image_msg, make_header
from depth_node.sample_data import load_frame

pytestmark = pytest.mark.ros


@pytest.fixture(scope='module')
def tum(real_data):
    return load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])


def _start(session, model, namespace, **params):
    from depth_node.node import DepthNode
    from rclpy.parameter import Parameter

    values = {'model.name': model, 'model.device': 'cpu', 'model.warmup': False, **params}
    node = DepthNode(context=session.context, namespace=namespace,
                     parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    session.add(node)
    probe = session.probe(namespace=namespace)
    assert probe.wait_subscribers('image') and probe.wait_subscribers('camera_info')
    return probe


def _send(probe, frame, info, sec):
    header = make_header('cam_optical', sec, 0)
    probe.publish('camera_info', camera_info_msg(info, header))
    time.sleep(0.1)
    probe.publish('image', image_msg(frame.image, 'rgb8', header))
    return sec, 0


def test_relative_depth_has_its_camera_info(session, models, tum):
    probe = _start(session, models['relative'], '/rel_info')
    # a camera_info at twice the image size: the published one is rescaled to the depth image
    big = tum.intrinsics().scaled(1280, 960)
    stamp = _send(probe, tum, big, 21)
    rel = probe.wait_stamp('depth/relative', stamp)
    info = probe.wait_stamp('depth/camera_info', stamp)
    assert rel is not None and info is not None
    assert info.header == rel.header
    assert (info.width, info.height) == (rel.width, rel.height) == (640, 480)
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), tum.K, rtol=1e-9)
    assert info.p[0] == pytest.approx(info.k[0]) and info.p[5] == pytest.approx(info.k[4])
    # and no metric depth
    assert probe.wait_stamp('depth/image', stamp, timeout=0.5) is None


def test_no_camera_info_without_a_depth_like_image(session, models, tum):
    probe = _start(session, models['relative'], '/rel_off', **{'output.relative': False})
    stamp = _send(probe, tum, tum.intrinsics(), 22)
    assert probe.wait_stamp('depth/colored', stamp) is not None  # the frame was processed
    assert probe.wait_stamp('depth/camera_info', stamp, timeout=0.5) is None
