"""Depth a navigation stack can trust, through the ROS interface: depth/confidence, flying
pixels, confidence gating of the cloud and temporal stability (input.mode relative_depth: the
relative map is published, so the test controls the network's errors exactly).

The scene is a plate 2 m in front of a wall 6 m away (``synthetic_scene``); the "network" output
is its disparity smoothed across the silhouette by a box filter, as a network does, so the
fitted depth has points hanging between plate and wall.
"""

from __future__ import annotations

import numpy as np
import pytest

from depth_node.camera_info import intrinsics_from_fields
from depth_node.messages import (camera_info_msg, cloud_to_array, image_msg, image_to_array,
                                 make_header, xyz_cloud_msg)
from depth_node.sample_data import load_frame
from ros_harness import holds_camera_info, holds_scan, status_values
from synthetic_scene import (HEIGHT, K, PLATE_Z, T_CAMERA_LIDAR, WALL_Z, WIDTH,
                             plate_and_wall)

pytestmark = pytest.mark.ros

FRAME = 'cam_optical'
SCALE, SHIFT = 3.0, 0.2  # relative = SCALE / depth + SHIFT (the fit undoes it)
BLUR = 9  # px: the silhouette smoothing of the simulated network


def _box_blur(image: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` mean filter (edges replicated)."""
    pad = size // 2
    padded = np.pad(image.astype(np.float64), pad, mode='edge')
    c = np.cumsum(np.cumsum(padded, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0)))
    total = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    return (total / size ** 2).astype(np.float32)


@pytest.fixture(scope='module')
def scene():
    s = plate_and_wall()
    relative = _box_blur(SCALE / s.depth + SHIFT, BLUR)  # smooth across the silhouette
    intr = intrinsics_from_fields(WIDTH, HEIGHT, K.ravel(), [0.0] * 5, 'plumb_bob', [0.0] * 12,
                                  [0.0] * 9)
    return s, relative, intr


def _start(session, **params):
    base = {'input.mode': 'relative_depth', 'lidar.enabled': True,
            'lidar.T_camera_lidar': [float(v) for v in T_CAMERA_LIDAR.ravel()],
            'lidar.smoothing': 0.0, 'cloud.stride': 2, 'cloud.max_depth': 20.0}
    base.update(params)
    node = session.start_depth_node(base)
    probe = session.probe()
    assert probe.wait_subscribers('relative_depth')
    return node, probe


def _publish(node, probe, scene, sec, relative=None, lidar=True):
    s, default, intr = scene
    header = make_header(FRAME, sec, 0)
    info = camera_info_msg(intr, header)
    probe.publish_until('camera_info', info, lambda: holds_camera_info(node, info),
                        'the node to take the camera_info')
    if lidar:
        cloud = xyz_cloud_msg(s.points_lidar, make_header('lidar', sec, 0))
        probe.publish_until('lidar/points', cloud, lambda: holds_scan(node, cloud),
                            'the node to store the scan')
    probe.publish('relative_depth', image_msg(default if relative is None else relative,
                                              '32FC1', header))
    return (sec, 0)


def _between(z: np.ndarray) -> int:
    """Points more than 10 % off both surfaces, between plate and wall: flying pixels."""
    return int(((z > PLATE_Z * 1.1) & (z < WALL_Z * 0.9)).sum())


@pytest.mark.parametrize('edges', [True, False])
def test_flying_pixels_leave_no_points_between_plate_and_wall(session, scene, edges):
    node, probe = _start(session, **{'filter.edges': edges})
    stamp = _publish(node, probe, scene, 10)
    assert status_values(probe.wait_stamp('depth/alignment', stamp))['state'] == 'ok'
    z = cloud_to_array(probe.wait_stamp('depth/points', stamp))[..., 2]
    depth = image_to_array(probe.wait_stamp('depth/image', stamp))
    if edges:
        assert _between(z) == 0 and _between(depth) == 0
        # what stays: the plate and the wall, most of both
        assert np.isfinite(depth).mean() > 0.95
    else:  # the filter is what removes them: the smoothed silhouette has them
        assert _between(z) > 100 and _between(depth) > 400


def test_confidence_contract_and_gating_removes_exactly_the_low_points(session, scene):
    # flying pixels kept in depth/image (filter.edges off): the confidence says where they are
    node, probe = _start(session, **{'cloud.min_confidence': 0.5, 'filter.edges': False})
    stamp = _publish(node, probe, scene, 20)
    conf_msg = probe.wait_stamp('depth/confidence', stamp)
    depth_msg = probe.wait_stamp('depth/image', stamp)
    cloud_msg = probe.wait_stamp('depth/points', stamp)
    assert conf_msg is not None and depth_msg is not None and cloud_msg is not None
    # same header, size, encoding as depth/image
    assert conf_msg.header == depth_msg.header and conf_msg.header.frame_id == FRAME
    assert (conf_msg.encoding, conf_msg.height, conf_msg.width) == ('32FC1', HEIGHT, WIDTH)
    conf, depth = image_to_array(conf_msg), image_to_array(depth_msg)
    valid = np.isfinite(depth)
    assert np.array_equal(np.isfinite(conf), valid)  # NaN exactly where the depth is invalid
    assert (conf[valid] >= 0).all() and (conf[valid] <= 1).all()
    # low next to the silhouette, high on the flat plate and wall
    assert np.nanmedian(conf[200:280, 280:360]) > 0.8  # the plate's middle
    edge_row = conf[240, 200:240]  # across the plate's left edge (u = 219.5)
    assert np.nanmin(edge_row) < 0.2
    # gating: a strided point is NaN exactly where the confidence is low or the depth invalid
    xyz = cloud_to_array(cloud_msg)
    kept = np.isfinite(xyz).all(axis=-1)
    sampled = conf[::2, ::2]
    assert np.array_equal(kept, sampled >= 0.5), (
        f'{int((kept != (sampled >= 0.5)).sum())} points disagree with the gate')
    assert kept.mean() > 0.8
    assert _between(xyz[..., 2]) == 0  # the gate took the flying pixels out of the cloud


def test_temporal_holds_a_jittered_static_scene_and_follows_a_real_change(session, real_data):
    """Without LiDAR, relative output: per-frame scale jitter of 5 % is held (the output's
    frame-to-frame spread several times smaller), a persistent 20 % change is followed."""
    frame = load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])
    gt = frame.depth_gt
    base = (1.0 / np.where(np.isfinite(gt), gt, np.nanmedian(gt))).astype(np.float32)
    node = session.start_depth_node({'input.mode': 'relative_depth', 'temporal.enabled': True,
                                     'temporal.smoothing': 0.8})
    probe = session.probe()
    assert probe.wait_subscribers('relative_depth')
    rng = np.random.default_rng(7)
    jitter = 1.0 + 0.05 * rng.standard_normal(20)
    factors = list(jitter) + [1.2] * 12
    header_info = camera_info_msg(frame.intrinsics(), make_header(FRAME, 0, 0))
    probe.publish_until('camera_info', header_info,
                        lambda: holds_camera_info(node, header_info), 'the camera_info')
    out_scales = []
    for k, f in enumerate(factors):
        stamp = (100, k * 50_000_000)
        header = make_header(FRAME, *stamp)
        probe.publish('relative_depth', image_msg((base * f).astype(np.float32), '32FC1',
                                                  header))
        msg = probe.wait_stamp('depth/relative', stamp)
        assert msg is not None, f'no depth/relative for frame {k}'
        out = image_to_array(msg)
        ok = np.isfinite(out)
        out_scales.append(float(np.median(out[ok] / base[ok])))
    held = np.array(out_scales[5:20])
    given = jitter[5:20]
    assert np.std(np.diff(np.log(held))) * 3 < np.std(np.diff(np.log(given))), (held, given)
    level = np.mean(out_scales[15:20])
    after = np.array(out_scales[20:]) / level
    followed = int(np.argmax(np.abs(after - 1.2) < 0.06))
    assert np.abs(after[followed:] - 1.2).max() < 0.06 and followed < 10, after
    assert node.counters.get('temporal_resets', 0) == 0  # a change, not a scene cut


def test_a_bad_quality_parameter_stops_startup_with_the_fix(session):
    from depth_node.config import ConfigError

    with pytest.raises(ConfigError, match='every confidence.* cue is off: switch one on'):
        session.start_depth_node({
            'input.mode': 'relative_depth', 'cloud.min_confidence': 0.5,
            'confidence.discontinuity': False, 'confidence.lidar': False,
            'confidence.temporal': False, 'confidence.model': False})
    with pytest.raises(ConfigError, match='filter.edge_threshold must be >= 0.005'):
        session.start_depth_node({'input.mode': 'relative_depth',
                                  'filter.edge_threshold': 0.0})
