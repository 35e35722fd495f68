"""Prompt Depth Anything through the ROS interface: a depth prompt from an RGB-D camera's depth
image (``prompt_depth``) or from the LiDAR scan, paired with the colour image by stamp.

A tiny random Prompt Depth Anything model; every published depth is compared with the model's
prediction of the same image and prompt made without ROS (:mod:`depth_node.prompt` builds the
expected prompt), and ``depth/alignment`` reports the prompt's state, coverage and agreement.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from depth_node import prompt as pr
from depth_node.camera_info import intrinsics_from_fields
from depth_node.config import ConfigError
from depth_node.messages import camera_info_msg, image_msg, image_to_array, make_header, \
    xyz_cloud_msg
from ros_harness import holds_camera_info, holds_prompt, holds_scan, status_values
from synthetic_scene import (HEIGHT as SCENE_H, K as SCENE_K, T_CAMERA_LIDAR as SCENE_T,
                             WIDTH as SCENE_W, plate_and_wall)
from tiny_models import textured_image
from tiny_slow_models import make_tiny_prompt_depth_anything

pytestmark = pytest.mark.ros

FRAME = 'rgbd_color_optical_frame'
W, H = 96, 72  # colour image; the RGB-D depth is registered to it at half the size


@pytest.fixture(scope='module')
def pda_folder(tmp_path_factory):
    return str(make_tiny_prompt_depth_anything(tmp_path_factory.mktemp('pda_node')))


@pytest.fixture(scope='module')
def rgb():
    return textured_image(H, W, top=180, noise=70, seed=7)


def _depth_mm(low: float, high: float, holes: float = 0.0, seed: int = 0) -> np.ndarray:
    """A 16UC1 RGB-D depth image (48x36, millimetres): a slanted plane from ``low`` to ``high``
    metres, ``holes`` of its pixels 0 (no measurement)."""
    plane = np.linspace(low, high, W // 2)[None, :] * np.ones((H // 2, 1))
    mm = np.round(plane * 1000).astype(np.uint16)
    mm[np.random.default_rng(seed).random(mm.shape) < holes] = 0
    return mm


def _start(session, folder, **params):
    base = {'model.name': folder, 'model.device': 'cpu', 'model.precision': 'fp32',
            'model.warmup': False, 'prompt.source': 'depth_image', 'prompt.max_side': 32,
            'prompt.min_coverage': 0.3, 'filter.edges': False}  # compared pixel for pixel
    base.update(params)
    node = session.start_depth_node(base)
    probe = session.probe()
    assert probe.wait_subscribers('image'), 'node never subscribed image'
    return node, probe


def _land_prompt(node, probe, mm, sec, nanosec=0):
    msg = image_msg(mm, '16UC1', make_header(FRAME, sec, nanosec))
    probe.publish_until('prompt_depth', msg, lambda: holds_prompt(node, msg),
                        f'the node to store the prompt stamped {sec}.{nanosec:09d}')


def _expected_prompt(mm: np.ndarray, max_side: int = 32) -> np.ndarray:
    metres = np.where(mm > 0, mm / 1000.0, np.nan).astype(np.float32)
    return pr.from_depth_image(metres, (H, W), max_side)


def test_rgbd_depth_prompt_pairing_holes_stale_and_missing(session, pda_folder, rgb):
    node, probe = _start(session, pda_folder)
    assert probe.wait_subscribers('prompt_depth'), 'node never subscribed prompt_depth'
    est = node.core.estimator
    assert est.takes_prompt and node.core.is_metric

    # missing: no prompt received yet -> no metric output, counted, said on depth/alignment
    probe.publish('image', image_msg(rgb, 'rgb8', make_header(FRAME, 10, 0)))
    values = status_values(probe.wait_stamp('depth/alignment', (10, 0)))
    assert values['state'] == 'missing' and 'no prompt_depth' in values['reason'], values
    assert probe.wait_stamp('depth/image', (10, 0), timeout=1.0) is None
    assert node.counters.get('prompt_missing', 0) == 1

    # a prompt with 30 % holes 0.02 s before the image: metric depth, the holes filled
    holed = _depth_mm(1.0, 3.0, holes=0.3)
    _land_prompt(node, probe, holed, 20, 0)
    probe.publish('image', image_msg(rgb, 'rgb8', make_header(FRAME, 20, 20_000_000)))
    msg = probe.wait_stamp('depth/image', (20, 20_000_000))
    assert msg is not None and msg.header.frame_id == FRAME
    assert (msg.encoding, msg.height, msg.width) == ('32FC1', H, W)
    depth = image_to_array(msg)
    grid = _expected_prompt(holed)
    expected = est.predict(rgb, prompt=grid).depth
    np.testing.assert_allclose(depth, expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(depth).all() and depth.min() >= 0.99 and depth.max() <= 3.01
    values = status_values(probe.wait_stamp('depth/alignment', (20, 20_000_000)))
    assert values['state'] == 'ok' and values['prompt_source'] == 'depth_image', values
    assert float(values['prompt_coverage']) == pytest.approx(pr.coverage(grid), abs=1e-6)
    assert 0.5 < float(values['prompt_coverage']) < 1.0  # some 2x2 blocks lost every pixel
    assert float(values['prompt_agreement']) == pytest.approx(pr.agreement(expected, grid),
                                                              rel=1e-3, abs=1e-6)
    assert float(values['prompt_time_offset']) == pytest.approx(0.02, abs=1e-6)

    # pairing by stamp: two prompts within prompt.max_time_offset (0.1 s), the nearer one
    # (1-2 m, 0.02 s before) is used, not the newer one (5-6 m, 0.07 s after)
    _land_prompt(node, probe, _depth_mm(1.0, 2.0), 30, 0)
    _land_prompt(node, probe, _depth_mm(5.0, 6.0), 30, 90_000_000)
    probe.publish('image', image_msg(rgb, 'rgb8', make_header(FRAME, 30, 20_000_000)))
    depth = image_to_array(probe.wait_stamp('depth/image', (30, 20_000_000)))
    assert depth.min() >= 0.99 and depth.max() <= 2.01, 'the newer prompt was paired'

    # stale: the nearest prompt is 9.9 s away
    probe.publish('image', image_msg(rgb, 'rgb8', make_header(FRAME, 40, 0)))
    values = status_values(probe.wait_stamp('depth/alignment', (40, 0)))
    assert values['state'] == 'stale' and 'prompt.max_time_offset' in values['reason'], values
    assert probe.wait_stamp('depth/image', (40, 0), timeout=1.0) is None
    assert node.counters.get('prompt_stale', 0) == 1

    # too few measurements (90 % holes) for prompt.min_coverage 0.3
    _land_prompt(node, probe, _depth_mm(1.0, 3.0, holes=0.97, seed=1), 50, 0)
    probe.publish('image', image_msg(rgb, 'rgb8', make_header(FRAME, 50, 0)))
    values = status_values(probe.wait_stamp('depth/alignment', (50, 0)))
    assert values['state'] == 'low_coverage', values
    assert float(values['prompt_coverage']) < 0.3
    assert probe.wait_stamp('depth/image', (50, 0), timeout=1.0) is None
    assert node.counters.get('prompt_low_coverage', 0) == 1

    # a prompt that is not a depth image is refused on arrival, counted; the node serves on
    bad = image_msg(np.zeros((H // 2, W // 2), np.uint8), 'mono8', make_header(FRAME, 60, 0))
    probe.publish_until('prompt_depth', bad,
                        lambda: node.counters.get('bad_prompt_depth', 0) >= 1,
                        'the node to refuse a mono8 prompt')
    _land_prompt(node, probe, _depth_mm(2.0, 4.0), 60, 0)
    probe.publish('image', image_msg(rgb, 'rgb8', make_header(FRAME, 60, 0)))
    assert probe.wait_stamp('depth/image', (60, 0)) is not None
    # a prompt of another view (aspect ratio) is bad input for that frame, never metres
    other = image_msg(np.full((H // 2, H // 2), 2000, np.uint16), '16UC1',
                      make_header(FRAME, 70, 0))
    probe.publish_until('prompt_depth', other, lambda: holds_prompt(node, other),
                        'the node to store the square prompt')
    probe.publish('image', image_msg(rgb, 'rgb8', make_header(FRAME, 70, 0)))
    values = status_values(probe.wait_stamp('depth/alignment', (70, 0)))
    assert values['state'] == 'bad' and 'aspect ratio' in values['reason'], values
    assert probe.wait_stamp('depth/image', (70, 0), timeout=1.0) is None
    assert node.counters.get('prompt_bad', 0) == 1


def test_lidar_prompt_through_ros(session, pda_folder):
    """The plate-and-wall scene (test/synthetic_scene.py): the scan projected, occlusion-
    filtered and gridded is the prompt; the output lies between the plate (2 m) and the wall
    (6 m), with its cloud; a frame with no scan near it has no metric output."""
    scene = plate_and_wall(step=0.006)
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, size=(SCENE_H, SCENE_W, 3), dtype=np.uint8)
    node, probe = _start(session, pda_folder, **{
        'prompt.source': 'lidar', 'prompt.max_side': 64, 'prompt.min_coverage': 0.05,
        'lidar.enabled': True, 'lidar.T_camera_lidar': [float(v) for v in SCENE_T.ravel()],
        'cloud.stride': 4})
    assert probe.wait_subscribers('lidar/points')
    assert node.core.cameras[0].aligner is None  # the prompt makes the output metric, no fit
    intr = intrinsics_from_fields(SCENE_W, SCENE_H, SCENE_K.ravel(), [0.0] * 5, 'plumb_bob',
                                  [0.0] * 12, [0.0] * 9)
    header = make_header(FRAME, 100, 0)
    info = camera_info_msg(intr, header)
    probe.publish_until('camera_info', info, lambda: holds_camera_info(node, info),
                        'the node to take the camera_info')
    cloud = xyz_cloud_msg(scene.points_lidar, make_header('lidar', 100, 30_000_000))
    probe.publish_until('lidar/points', cloud, lambda: holds_scan(node, cloud),
                        'the node to store the scan')
    probe.publish('image', image_msg(rgb, 'rgb8', header))

    msg = probe.wait_stamp('depth/image', (100, 0))
    assert msg is not None and msg.header.frame_id == FRAME
    depth = image_to_array(msg)
    grid, projected = pr.lidar_prompt(scene.points_lidar, SCENE_T, intr, (SCENE_H, SCENE_W), 64)
    expected = node.core.estimator.predict(rgb, prompt=grid).depth
    np.testing.assert_allclose(depth, expected, rtol=1e-5, atol=1e-5)
    assert depth.min() >= 2.0 - 1e-3 and depth.max() <= 6.0 + 1e-3
    values = status_values(probe.wait_stamp('depth/alignment', (100, 0)))
    assert values['state'] == 'ok' and values['prompt_source'] == 'lidar', values
    assert int(values['points_projected']) == projected > 0
    assert float(values['prompt_coverage']) == pytest.approx(pr.coverage(grid), abs=1e-6)
    assert float(values['prompt_time_offset']) == pytest.approx(0.03, abs=1e-6)
    assert math.isfinite(float(values['prompt_agreement']))
    assert probe.wait_stamp('depth/points', (100, 0)) is not None

    # 5 s later, no scan: the scan at 100 s is stale (prompt.max_time_offset 0.1 s)
    probe.publish('image', image_msg(rgb, 'rgb8', make_header(FRAME, 105, 0)))
    values = status_values(probe.wait_stamp('depth/alignment', (105, 0)))
    assert values['state'] == 'stale', values
    assert probe.wait_stamp('depth/image', (105, 0), timeout=1.0) is None


def test_prompt_source_must_suit_the_model(session, pda_folder, models):
    with pytest.raises(ConfigError, match="set prompt.source to 'depth_image'"):
        session.start_depth_node({'model.name': pda_folder, 'model.device': 'cpu',
                                  'model.warmup': False})
    with pytest.raises(ConfigError, match='takes no depth prompt'):
        session.start_depth_node({'model.name': models['metric'], 'model.device': 'cpu',
                                  'model.warmup': False, 'prompt.source': 'depth_image'})
