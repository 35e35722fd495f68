"""Several cameras through one node (``input.cameras``), in-process, through real rclpy and DDS.

Each camera has its own ``N/image``, ``N/camera_info`` and ``N/depth/*`` topics, its own stamps,
frames, intrinsics, LiDAR extrinsics and fit; frames waiting at the same time share one forward
pass when they have the same size.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from depth_node.config import ConfigError
from depth_node.demo import simulated_lidar
from depth_node.messages import (camera_info_msg, cloud_to_array, image_msg, image_to_array,
                                 make_header, xyz_cloud_msg)
from depth_node.sample_data import load_frame
from ros_harness import holds_camera_info, holds_scan, status_values

pytestmark = pytest.mark.ros

CAMERAS = ['front', 'rear']


@pytest.fixture(scope='module')
def tum_pair(real_data):
    first, second = sorted((real_data / 'tum_rgbd').iterdir())[:2]
    return load_frame(first), load_frame(second)


def _start(session, params, topic='image'):
    base = {'model.device': 'cpu', 'model.warmup': False, 'input.cameras': CAMERAS,
            'input.batch_wait': 1.0}
    base.update(params)
    node = session.start_depth_node(base)
    probes = {name: session.probe(namespace=name) for name in CAMERAS}
    root = session.probe()
    for probe in probes.values():
        assert probe.wait_subscribers(topic), 'node never subscribed a camera topic'
        assert probe.wait_subscribers('camera_info')
    return node, probes, root


def _counters_when(node, name, value, timeout=10.0):
    """The node's counters once ``name`` reaches ``value`` (a frame is counted just after its
    outputs are published)."""
    deadline = time.monotonic() + timeout
    while node.counters.get(name, 0) < value:
        assert time.monotonic() < deadline, node.counters
        time.sleep(0.01)
    return node.counters


def _land_info(node, probe, name, frame, header):
    """Publish camera ``name``'s camera_info and wait until the node holds it."""
    msg = camera_info_msg(frame.intrinsics(), header)
    probe.publish_until('camera_info', msg,
                        lambda: holds_camera_info(node, msg, CAMERAS.index(name)),
                        f'the node to take {name}/camera_info')


def _send(node, probes, name, frame, sec, frame_id, topic='image', image=None):
    header = make_header(frame_id, sec, 0)
    probe = probes[name]
    _land_info(node, probe, name, frame, header)  # before the image, on another topic
    probe.publish(topic, image_msg(frame.image if image is None else image,
                                   '32FC1' if topic == 'relative_depth' else 'rgb8', header))
    return (sec, 0)


def test_same_size_frames_of_two_cameras_share_one_forward_pass(session, models, tum_pair):
    node, probes, root = _start(session, {'model.name': models['relative'],
                                          'diagnostics.period': 0.2})
    front, rear = tum_pair
    # both images back to back (camera_info first), so they wait together
    for name, frame, sec in (('front', front, 11), ('rear', rear, 12)):
        _land_info(node, probes[name], name, frame, make_header(f'{name}_optical', sec, 0))
    for name, frame, sec in (('front', front, 11), ('rear', rear, 12)):
        probes[name].publish('image', image_msg(frame.image, 'rgb8',
                                                make_header(f'{name}_optical', sec, 0)))
    stamps = {'front': (11, 0), 'rear': (12, 0)}
    for name, frame in zip(CAMERAS, tum_pair):
        msg = probes[name].wait_stamp('depth/relative', stamps[name])
        assert msg is not None, f'no {name}/depth/relative'
        assert msg.header.frame_id == f'{name}_optical'
        # the batched prediction is the camera's own frame's prediction
        expected = node.core.estimator.predict(frame.image).depth
        np.testing.assert_allclose(image_to_array(msg), expected, rtol=1e-4, atol=1e-5)
    # neither camera's outputs leak onto the other's topics or the plain ones
    assert [m.header.frame_id for m in probes['front'].received['depth/relative']] == \
        ['front_optical']
    assert [m.header.frame_id for m in probes['rear'].received['depth/relative']] == \
        ['rear_optical']
    assert root.received['depth/relative'] == []
    counters = _counters_when(node, 'frames_processed', 2)
    assert (counters['forward_passes'], counters['forward_frames']) == (1, 2), counters
    assert counters['frames_processed.front'] == counters['frames_processed.rear'] == 1

    def has_both(msg):  # the counters of a diagnostics message sent after both frames
        values = status_values(msg.status[0])
        return all(int(values.get(f'frames_processed.{name}', 0)) >= 1 for name in CAMERAS)

    diag = root.wait_for('/diagnostics', has_both, timeout=5.0)
    assert diag is not None, 'batch counters never reached /diagnostics'
    values = status_values(diag.status[0])
    assert values['frames_processed.front'] == values['frames_processed.rear'] == '1'
    assert values['forward_passes'] == '1'


def test_batched_cameras_clouds_are_built_with_the_forward_pass(session, models, tum_pair):
    """Two cameras batched through a metric model: each camera's cloud is back-projected with
    the batch's forward pass (on the device on a GPU) and equals its published depth
    back-projected through its own camera_info."""
    from depth_node.cloud import depth_to_points

    node, probes, _ = _start(session, {'model.name': models['metric']})
    calls = []
    original = node.core.estimator.predict_batch

    def spy(images, *args, **kwargs):
        calls.append((len(images), kwargs.get('clouds')))
        return original(images, *args, **kwargs)

    node.core.estimator.predict_batch = spy
    front, rear = tum_pair
    for name, frame, sec in (('front', front, 31), ('rear', rear, 32)):
        _land_info(node, probes[name], name, frame, make_header(f'{name}_optical', sec, 0))
    for name, frame, sec in (('front', front, 31), ('rear', rear, 32)):
        probes[name].publish('image', image_msg(frame.image, 'rgb8',
                                                make_header(f'{name}_optical', sec, 0)))
    for name, frame, sec in (('front', front, 31), ('rear', rear, 32)):
        depth = probes[name].wait_stamp('depth/image', (sec, 0))
        cloud = probes[name].wait_stamp('depth/points', (sec, 0))
        assert depth is not None and cloud is not None, f'no {name} depth or cloud'
        expected = depth_to_points(image_to_array(depth), frame.K, stride=2, min_depth=0.1,
                                   max_depth=80.0)
        np.testing.assert_allclose(cloud_to_array(cloud), expected, rtol=1e-5, atol=1e-6,
                                   equal_nan=True)
    assert len(calls) == 1 and calls[0][0] == 2, calls
    clouds = calls[0][1]
    assert clouds is not None and all(c is not None and c['stride'] == 2 for c in clouds)


def test_cameras_of_different_sizes_get_their_own_depth_info_and_cloud(session, models,
                                                                       tum_pair, kitti):
    node, probes, _ = _start(session, {'model.name': models['metric']})
    tum = tum_pair[0]
    stamps = {'front': _send(node, probes, 'front', tum, 21, 'front_optical'),
              'rear': _send(node, probes, 'rear', kitti, 22, 'rear_optical')}
    for name, frame in (('front', tum), ('rear', kitti)):
        probe = probes[name]
        depth = probe.wait_stamp('depth/image', stamps[name])
        assert depth is not None, f'no {name}/depth/image'
        assert depth.header.frame_id == f'{name}_optical'
        assert (depth.width, depth.height) == (frame.width, frame.height)
        info = probe.wait_stamp('depth/camera_info', stamps[name])
        assert info is not None and info.header.frame_id == f'{name}_optical'
        np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), frame.K)
        cloud = probe.wait_stamp('depth/points', stamps[name])
        assert cloud is not None and cloud.header.frame_id == f'{name}_optical'
        xyz = cloud_to_array(cloud)
        np.testing.assert_allclose(xyz[..., 2], image_to_array(depth)[::2, ::2], rtol=1e-6,
                                   equal_nan=True)
    counters = _counters_when(node, 'frames_processed', 2)
    # two sizes cannot be stacked: one forward pass each
    assert (counters['forward_passes'], counters['forward_frames']) == (2, 2), counters


# LiDAR frame: x forward, y left, z up. The front camera looks forward; the rear camera looks
# backward (the front one turned 180 degrees about the LiDAR's z axis).
R_CAM_LIDAR = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
T_FRONT = np.eye(4)
T_FRONT[:3, :3] = R_CAM_LIDAR
T_TURN = np.diag([-1.0, -1.0, 1.0, 1.0])  # 180 degrees about z
T_REAR = T_FRONT @ T_TURN
SCALE, SHIFT = 3.0, 0.2   # prediction = SCALE / depth + SHIFT
REAR_FARTHER = 1.5        # the scene behind is the same scene, 1.5 times as far


def test_each_camera_fits_lidar_through_its_own_extrinsics(session, tum_pair):
    frame = tum_pair[0]
    gt = frame.depth_gt
    filled = np.where(np.isfinite(gt), gt, np.nanmedian(gt)).astype(np.float32)
    prediction = (SCALE / filled + SHIFT).astype(np.float32)
    points_cam = simulated_lidar(gt, frame.K)
    front_points = points_cam @ np.linalg.inv(T_FRONT)[:3, :3].T
    rear_points = (REAR_FARTHER * points_cam) @ np.linalg.inv(T_REAR)[:3, :3].T
    scan = np.concatenate([front_points, rear_points]).astype(np.float32)
    extrinsics = [float(v) for T in (T_FRONT, T_REAR) for v in T.ravel()]
    node, probes, root = _start(session, {'input.mode': 'relative_depth', 'lidar.enabled': True,
                                          'lidar.T_camera_lidar': extrinsics,
                                          'lidar.smoothing': 0.0, 'cloud.max_depth': 20.0},
                                topic='relative_depth')
    assert root.wait_subscribers('lidar/points')
    cloud = xyz_cloud_msg(scan, make_header('lidar', 31, 0))
    root.publish_until('lidar/points', cloud, lambda: holds_scan(node, cloud),
                       'the node to store the scan')
    stamps = {name: _send(node, probes, name, frame, 31, f'{name}_optical', topic='relative_depth',
                          image=prediction) for name in CAMERAS}
    for name, farther in (('front', 1.0), ('rear', REAR_FARTHER)):
        status = probes[name].wait_stamp('depth/alignment', stamps[name])
        assert status is not None, f'no {name}/depth/alignment'
        values = status_values(status)
        assert values['state'] == 'ok', values
        assert f'({name})' in status.name
        # a camera that used the other camera's extrinsics would see the other scene
        assert float(values['scale']) == pytest.approx(1 / (SCALE * farther), rel=0.02)
        depth = probes[name].wait_stamp('depth/image', stamps[name])
        assert depth is not None
        ratio = np.nanmedian(image_to_array(depth) / gt)
        assert ratio == pytest.approx(farther, rel=0.02)


def test_one_extrinsic_for_two_cameras_is_refused_at_startup(session):
    eye = [float(v) for v in np.eye(4).ravel()]
    with pytest.raises(ConfigError, match=r'16 values per camera \(32 for 2 cameras\)'):
        session.start_depth_node({'input.mode': 'relative_depth', 'lidar.enabled': True,
                                  'input.cameras': CAMERAS, 'lidar.T_camera_lidar': eye})
