"""Metric depth from LiDAR through the ROS interface (input.mode relative_depth: no network).

A relative disparity map with a known affine error is published on ``relative_depth`` together
with camera_info and a LiDAR-like scan in a LiDAR frame (x forward, y left, z up); the node must
publish metric depth, its camera_info and cloud with the input's stamp and frame, accurate
against the dense ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from depth_node.demo import simulated_lidar
from depth_node.evaluate import compute_metrics
from depth_node.messages import (camera_info_msg, cloud_fields, cloud_to_array, image_msg,
                                 image_to_array, make_header, xyz_cloud_msg)
from depth_node.sample_data import load_frame
from ros_harness import status_values

pytestmark = pytest.mark.ros

# Camera optical frame (z forward, x right, y down) from a LiDAR frame (x forward, y left, z up),
# mounted 0.3 m above and 0.1 m behind the camera.
R_CAM_LIDAR = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
T_CAMERA_LIDAR = np.eye(4)
T_CAMERA_LIDAR[:3, :3] = R_CAM_LIDAR
T_CAMERA_LIDAR[:3, 3] = R_CAM_LIDAR @ np.array([-0.1, 0.0, 0.3])
FRAME = 'tum_rgb_optical_frame'
SCALE, SHIFT = 3.0, 0.2  # prediction = SCALE / depth + SHIFT (the error the fit must undo)


@pytest.fixture(scope='module')
def tum(real_data):
    frame = load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])
    gt = frame.depth_gt
    filled = np.where(np.isfinite(gt), gt, np.nanmedian(gt)).astype(np.float32)
    prediction = (SCALE / filled + SHIFT).astype(np.float32)
    points_cam = simulated_lidar(gt, frame.K)
    # express the scan in the LiDAR frame: p_lidar = T^-1 p_cam
    T_inv = np.linalg.inv(T_CAMERA_LIDAR)
    points_lidar = (points_cam @ T_inv[:3, :3].T + T_inv[:3, 3]).astype(np.float32)
    intr = frame.intrinsics()
    return frame, prediction, points_lidar, intr


def _start(session, **params):
    base = {'input.mode': 'relative_depth', 'lidar.enabled': True,
            'lidar.T_camera_lidar': [float(v) for v in T_CAMERA_LIDAR.ravel()],
            'lidar.smoothing': 0.0, 'lidar.max_fit_age': 1.0, 'cloud.stride': 2,
            'cloud.max_depth': 10.0}
    base.update(params)
    node = session.start_depth_node(base)
    probe = session.probe()
    assert probe.wait_subscribers('relative_depth'), 'node never subscribed relative_depth'
    assert probe.wait_subscribers('lidar/points')
    return node, probe


def _publish(probe, tum, sec, nanosec=0, lidar=True):
    frame, prediction, points_lidar, intr = tum
    header = make_header(FRAME, sec, nanosec)
    probe.publish('camera_info', camera_info_msg(intr, header))
    if lidar:
        probe.publish('lidar/points', xyz_cloud_msg(points_lidar, make_header('lidar', sec,
                                                                              nanosec)))
        probe.wait_for('depth/alignment', lambda m: False, timeout=0.3)  # let the scan land
    probe.publish('relative_depth', image_msg(prediction, '32FC1', header))
    return (sec, nanosec)


def test_metric_depth_image_info_and_cloud_from_lidar(session, tum):
    frame, _, _, intr = tum
    node, probe = _start(session)
    stamp = _publish(probe, tum, 100, 250)

    status = probe.wait_stamp('depth/alignment', stamp)
    assert status is not None, 'no depth/alignment for the frame'
    values = status_values(status)
    assert values['state'] == 'ok', values
    assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.02)
    assert float(values['shift']) == pytest.approx(-SHIFT / SCALE, abs=0.01)

    depth_msg = probe.wait_stamp('depth/image', stamp)
    assert depth_msg is not None
    assert depth_msg.header.frame_id == FRAME
    assert (depth_msg.encoding, depth_msg.height, depth_msg.width) == ('32FC1', 480, 640)
    depth = image_to_array(depth_msg)
    metrics = compute_metrics(depth, frame.depth_gt, max_depth=10.0)
    assert metrics['abs_rel'] < 0.01, metrics
    assert metrics['coverage'] > 0.95, metrics
    assert not np.any(depth[np.isfinite(depth)] <= 0), 'non-positive metres published'

    info = probe.wait_stamp('depth/camera_info', stamp)
    assert info is not None and info.header.frame_id == FRAME
    assert (info.width, info.height) == (640, 480)
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), frame.K, rtol=1e-9)

    cloud = probe.wait_stamp('depth/points', stamp)
    assert cloud is not None and cloud.header.frame_id == FRAME
    assert (cloud.height, cloud.width) == (240, 320)
    assert cloud.is_dense is False
    names = [f[0] for f in cloud_fields(cloud)]
    assert names[:3] == ['x', 'y', 'z']
    xyz = cloud_to_array(cloud)
    # the cloud is the depth image back-projected at the strided pixel centres
    z = depth[::2, ::2]
    v, u = np.mgrid[0:480:2, 0:640:2]
    K = frame.K
    np.testing.assert_allclose(xyz[..., 2], z, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(xyz[..., 0], (u - K[0, 2]) * z / K[0, 0], rtol=1e-4,
                               atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(xyz[..., 1], (v - K[1, 2]) * z / K[1, 1], rtol=1e-4,
                               atol=1e-5, equal_nan=True)
    assert np.array_equal(np.isnan(xyz[..., 2]), np.isnan(z))


def test_16uc1_output_in_millimetres(session, tum):
    frame = tum[0]
    _, probe = _start(session, **{'output.encoding': '16UC1', 'cloud.enabled': False})
    stamp = _publish(probe, tum, 200)
    msg = probe.wait_stamp('depth/image', stamp)
    assert msg is not None and msg.encoding == '16UC1'
    mm = image_to_array(msg)
    gt = frame.depth_gt
    ok = np.isfinite(gt)
    assert np.median(np.abs(mm[ok].astype(float) / 1000.0 - gt[ok])) < 0.01
    assert probe.wait_stamp('depth/points', stamp, timeout=1.0) is None


def test_stale_fit_reused_then_dropped(session, tum):
    _, probe = _start(session)
    fresh = _publish(probe, tum, 300)
    assert status_values(probe.wait_stamp('depth/alignment', fresh))['state'] == 'ok'
    # 0.5 s later, no scan: the last fit is reused (younger than max_fit_age 1.0 s)
    stale = _publish(probe, tum, 300, 500_000_000, lidar=False)
    values = status_values(probe.wait_stamp('depth/alignment', stale))
    assert values['state'] == 'stale'
    assert float(values['fit_age']) == pytest.approx(0.5, abs=0.01)
    assert probe.wait_stamp('depth/image', stale) is not None
    # 5 s later: too old, no metric depth is published for that frame
    old = _publish(probe, tum, 305, 0, lidar=False)
    values = status_values(probe.wait_stamp('depth/alignment', old))
    assert values['state'] == 'no_fit'
    assert probe.wait_stamp('depth/image', old, timeout=1.5) is None
    # relative depth is still published, never as metres
    rel = probe.wait_stamp('depth/relative', old)
    assert rel is not None and rel.encoding == '32FC1'


def test_scan_too_far_in_time_is_not_paired(session, tum):
    node, probe = _start(session, **{'lidar.max_time_offset': 0.05})
    frame, prediction, points_lidar, intr = tum
    header = make_header(FRAME, 400, 0)
    probe.publish('camera_info', camera_info_msg(intr, header))
    probe.publish('lidar/points', xyz_cloud_msg(points_lidar, make_header('lidar', 400,
                                                                          200_000_000)))
    probe.wait_for('depth/alignment', lambda m: False, timeout=0.3)
    probe.publish('relative_depth', image_msg(prediction, '32FC1', header))
    values = status_values(probe.wait_stamp('depth/alignment', (400, 0)))
    assert values['state'] == 'no_fit'
    assert probe.wait_stamp('depth/image', (400, 0), timeout=1.0) is None
    assert node.counters.get('lidar_unpaired', 0) >= 1


def test_extrinsics_from_tf2_where_available(session, tum):
    """With lidar.T_camera_lidar unset the node looks the transform up in tf2 at the stamp."""
    tf2_ros = pytest.importorskip('tf2_ros', reason='tf2_ros is not installed (PyPI wheels)')
    from geometry_msgs.msg import TransformStamped

    node = session.start_depth_node({
        'input.mode': 'relative_depth', 'lidar.enabled': True, 'lidar.smoothing': 0.0,
        'cloud.max_depth': 10.0})
    probe = session.probe()
    broadcaster = tf2_ros.StaticTransformBroadcaster(probe.node)
    tf = TransformStamped()
    tf.header.frame_id = FRAME
    tf.child_frame_id = 'lidar'
    tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = \
        (float(v) for v in T_CAMERA_LIDAR[:3, 3])
    # R_CAM_LIDAR as a quaternion (x, y, z, w)
    tf.transform.rotation.x, tf.transform.rotation.y = 0.5, -0.5
    tf.transform.rotation.z, tf.transform.rotation.w = 0.5, 0.5
    broadcaster.sendTransform(tf)
    assert probe.wait_subscribers('relative_depth')
    assert probe.wait_subscribers('lidar/points')
    stamp = _publish(probe, tum, 600)
    values = status_values(probe.wait_stamp('depth/alignment', stamp))
    assert values['state'] == 'ok', values
    assert node.counters.get('bad_tf', 0) == 0


def test_tf_transform_to_matrix():
    from geometry_msgs.msg import Transform

    from depth_node.node import _transform_to_matrix

    t = Transform()
    t.translation.x, t.translation.y, t.translation.z = (float(v) for v in T_CAMERA_LIDAR[:3, 3])
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = 0.5, -0.5, 0.5, 0.5
    np.testing.assert_allclose(_transform_to_matrix(t), T_CAMERA_LIDAR, atol=1e-12)
