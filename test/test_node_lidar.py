"""Metric depth from LiDAR through the ROS interface (input.mode relative_depth: no network).

A relative disparity map with a known affine error is published on ``relative_depth`` together
with camera_info and a LiDAR-like scan in a LiDAR frame (x forward, y left, z up); the node must
publish metric depth, its camera_info and cloud with the input's stamp and frame, accurate
against the dense ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from depth_node.camera_info import intrinsics_from_fields
from depth_node.demo import simulated_lidar
from depth_node.evaluate import compute_metrics
from depth_node.messages import (camera_info_msg, cloud_fields, cloud_to_array, image_msg,
                                 image_to_array, make_header, xyz_cloud_msg)
from depth_node.sample_data import load_frame
from ros_harness import holds_camera_info, holds_scan, status_values
from synthetic_scene import (HEIGHT as SCENE_H, K as SCENE_K, T_CAMERA_LIDAR as SCENE_T,
                             WIDTH as SCENE_W, plate_and_wall)

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
            'cloud.max_depth': 10.0, 'filter.edges': False}  # compared pixel for pixel
    base.update(params)
    node = session.start_depth_node(base)
    probe = session.probe()
    assert probe.wait_subscribers('relative_depth'), 'node never subscribed relative_depth'
    assert probe.wait_subscribers('lidar/points')
    return node, probe


def _land(node, probe, intr=None, scans=(), header=None):
    """Publish camera_info and scans (``(points_lidar, sec, nanosec)``) and wait until the node
    holds each: they come on other topics than the frame, so a frame sent right after them
    could otherwise overtake them on a busy machine."""
    if intr is not None:
        info = camera_info_msg(intr, header)
        probe.publish_until('camera_info', info, lambda: holds_camera_info(node, info),
                            'the node to take the camera_info')
    for points, sec, nanosec in scans:
        cloud = xyz_cloud_msg(points, make_header('lidar', sec, nanosec))
        probe.publish_until('lidar/points', cloud, lambda: holds_scan(node, cloud),
                            f'the node to store the scan stamped {sec}.{nanosec:09d}')


def _publish(node, probe, tum, sec, nanosec=0, lidar=True):
    frame, prediction, points_lidar, intr = tum
    header = make_header(FRAME, sec, nanosec)
    _land(node, probe, intr, [(points_lidar, sec, nanosec)] if lidar else [], header)
    probe.publish('relative_depth', image_msg(prediction, '32FC1', header))
    return (sec, nanosec)


def _scaled_scan(points_lidar, factor):
    """The scan with every camera-frame depth times ``factor`` (a scene ``factor`` as far)."""
    T_inv = np.linalg.inv(T_CAMERA_LIDAR)
    cam = points_lidar @ T_CAMERA_LIDAR[:3, :3].T + T_CAMERA_LIDAR[:3, 3]
    return ((cam * factor) @ T_inv[:3, :3].T + T_inv[:3, 3]).astype(np.float32)


def test_metric_depth_image_info_and_cloud_from_lidar(session, tum):
    frame, _, _, intr = tum
    node, probe = _start(session)
    stamp = _publish(node, probe, tum, 100, 250)

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
    node, probe = _start(session, **{'output.encoding': '16UC1', 'cloud.enabled': False})
    stamp = _publish(node, probe, tum, 200)
    msg = probe.wait_stamp('depth/image', stamp)
    assert msg is not None and msg.encoding == '16UC1'
    mm = image_to_array(msg)
    gt = frame.depth_gt
    ok = np.isfinite(gt)
    assert np.median(np.abs(mm[ok].astype(float) / 1000.0 - gt[ok])) < 0.01
    assert probe.wait_stamp('depth/points', stamp, timeout=1.0) is None


def test_stale_fit_reused_then_dropped(session, tum):
    node, probe = _start(session)
    fresh = _publish(node, probe, tum, 300)
    assert status_values(probe.wait_stamp('depth/alignment', fresh))['state'] == 'ok'
    # 0.5 s later, no scan: the last fit is reused (younger than max_fit_age 1.0 s)
    stale = _publish(node, probe, tum, 300, 500_000_000, lidar=False)
    values = status_values(probe.wait_stamp('depth/alignment', stale))
    assert values['state'] == 'stale'
    assert float(values['fit_age']) == pytest.approx(0.5, abs=0.01)
    assert probe.wait_stamp('depth/image', stale) is not None
    # 5 s later: too old, no metric depth is published for that frame
    old = _publish(node, probe, tum, 305, 0, lidar=False)
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
    _land(node, probe, intr, [(points_lidar, 400, 200_000_000)], header)
    probe.publish('relative_depth', image_msg(prediction, '32FC1', header))
    values = status_values(probe.wait_stamp('depth/alignment', (400, 0)))
    assert values['state'] == 'no_fit'
    assert probe.wait_stamp('depth/image', (400, 0), timeout=1.0) is None
    assert node.counters.get('lidar_unpaired', 0) >= 1


def test_the_scan_nearest_in_stamp_is_paired_not_the_newest(session, tum):
    """Two scans within lidar.max_time_offset: 0.02 s before the frame (the TUM scene) and,
    arriving after it, 0.08 s after the frame (the scene 1.5x as far, so a fit on it would give
    a 1.5x scale). The alignment must use the nearer one."""
    node, probe = _start(session, **{'lidar.max_time_offset': 0.1})
    frame, prediction, points_lidar, intr = tum
    header = make_header(FRAME, 450, 100_000_000)
    _land(node, probe, intr, [(points_lidar, 450, 80_000_000),
                              (_scaled_scan(points_lidar, 1.5), 450, 180_000_000)], header)
    probe.publish('relative_depth', image_msg(prediction, '32FC1', header))
    values = status_values(probe.wait_stamp('depth/alignment', (450, 100_000_000)))
    assert values['state'] == 'ok', values
    assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.02), \
        f'scale {values["scale"]}: the newer scan (scale {1.5 / SCALE:.3f}) was paired'


@pytest.mark.parametrize('encoding', ['32FC1', '16UC1'])
def test_aligned_depth_out_of_range_is_invalid_not_zero(session, tum, encoding):
    """Rows whose aligned depth falls beyond cloud.max_depth (50 m against 10 m) or below
    cloud.min_depth (0.05 m against 0.1 m), or whose disparity is negative, are invalid: NaN
    in 32FC1, 0 in 16UC1. They are outside the scan's rows, so the fit is unchanged."""
    frame, prediction, points_lidar, intr = tum
    node, probe = _start(session, **{'output.encoding': encoding, 'cloud.enabled': False})
    prediction = prediction.copy()
    prediction[:15] = SCALE / 50.0 + SHIFT           # 50 m > cloud.max_depth
    prediction[15:30] = SCALE / 0.05 + SHIFT         # 0.05 m < cloud.min_depth
    prediction[30:40] = -1.0                         # negative disparity: no depth at all
    header = make_header(FRAME, 470, 0)
    _land(node, probe, intr, [(points_lidar, 470, 0)], header)
    probe.publish('relative_depth', image_msg(prediction, '32FC1', header))
    values = status_values(probe.wait_stamp('depth/alignment', (470, 0)))
    assert values['state'] == 'ok', values
    msg = probe.wait_stamp('depth/image', (470, 0))
    assert msg is not None and msg.encoding == encoding
    depth = image_to_array(msg)
    if encoding == '32FC1':
        assert np.isnan(depth[:40]).all(), 'out-of-range depth published as a number'
        metres = depth[40:]
    else:
        assert (depth[:40] == 0).all(), 'out-of-range depth published as a number'
        metres = np.where(depth[40:] > 0, depth[40:] / 1000.0, np.nan)
    gt = frame.depth_gt[40:]
    ok = np.isfinite(gt) & np.isfinite(metres)
    assert ok.sum() > 0.9 * np.isfinite(gt).sum()   # the rest is served
    assert np.median(np.abs(metres[ok] - gt[ok])) < 0.01


@pytest.mark.parametrize('window', [None, 0], ids=['default window', 'filter off'])
def test_lidar_returns_hidden_from_the_camera_are_not_used(session, window):
    """The plate-and-wall scene of test/synthetic_scene.py: the LiDAR, above and behind the
    camera, sees wall strips the plate hides from the camera. With the default
    lidar.occlusion_window the node projects none of them (points_projected on
    depth/alignment); with the filter off (0) it projects every point in view."""
    scene = plate_and_wall()
    assert np.array_equal(SCENE_T, T_CAMERA_LIDAR)    # the scene is built for _start's mount
    n_in_view, n_hidden = int(scene.in_view.sum()), int(scene.hidden.sum())
    near_edge = int((~scene.on_plate & ~scene.hidden & scene.in_view &
                     ~scene.outside_plate_by(8.0)).sum())
    params = {'cloud.enabled': False}
    if window is not None:
        params['lidar.occlusion_window'] = window
    node, probe = _start(session, **params)
    intr = intrinsics_from_fields(SCENE_W, SCENE_H, SCENE_K.ravel(), [0.0] * 5, 'plumb_bob',
                                  [0.0] * 12, [0.0] * 9)
    header = make_header(FRAME, 480, 0)
    _land(node, probe, intr, [(scene.points_lidar, 480, 0)], header)
    prediction = (SCALE / scene.depth + SHIFT).astype(np.float32)
    probe.publish('relative_depth', image_msg(prediction, '32FC1', header))
    values = status_values(probe.wait_stamp('depth/alignment', (480, 0)))
    projected = int(values['points_projected'])
    if window == 0:
        assert projected == n_in_view, values
    else:
        assert n_in_view - n_hidden - near_edge <= projected <= n_in_view - n_hidden, \
            (f'{projected} points projected; {n_in_view} in view, of which {n_hidden} '
             'hidden from the camera')
        assert values['state'] == 'ok', values
        assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.01)


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
    stamp = _publish(node, probe, tum, 600)
    values = status_values(probe.wait_stamp('depth/alignment', stamp))
    assert values['state'] == 'ok', values
    assert node.counters.get('bad_tf', 0) == 0


def test_tf_transform_to_matrix():
    from geometry_msgs.msg import Transform

    from depth_node.transforms import transform_to_matrix

    t = Transform()
    t.translation.x, t.translation.y, t.translation.z = (float(v) for v in T_CAMERA_LIDAR[:3, 3])
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = 0.5, -0.5, 0.5, 0.5
    np.testing.assert_allclose(transform_to_matrix(t), T_CAMERA_LIDAR, atol=1e-12)
