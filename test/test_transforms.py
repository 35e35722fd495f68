"""``depth_node.transforms``: tf messages to matrices, and the static transform tree that
``depth_node-bag`` composes the LiDAR-to-camera transform from (tf2's lookup, without tf2)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bag_data import matrix_quaternion
from depth_node.transforms import (from_messages, quaternion_matrix, StaticTransforms,
                                   transform_to_matrix)


def _random_rigid(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    T = np.eye(4)
    T[:3, :3] = q
    T[:3, 3] = rng.normal(scale=2.0, size=3)
    return T


def _msg(edges) -> SimpleNamespace:
    """A TFMessage-like object (the attributes rosbags and rclpy messages both have)."""
    out = []
    for parent, child, T, *scale in edges:
        x, y, z, w = (v * (scale[0] if scale else 1.0) for v in matrix_quaternion(T[:3, :3]))
        out.append(SimpleNamespace(
            header=SimpleNamespace(frame_id=parent), child_frame_id=child,
            transform=SimpleNamespace(
                translation=SimpleNamespace(x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                rotation=SimpleNamespace(x=x, y=y, z=z, w=w))))
    return SimpleNamespace(transforms=out)


def test_quaternion_round_trip_and_rotations_of_known_angles():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T = _random_rigid(rng)
        np.testing.assert_allclose(quaternion_matrix(*matrix_quaternion(T[:3, :3])), T[:3, :3],
                                   atol=1e-12)
    # 90 degrees about z: x -> y
    half = np.sqrt(0.5)
    np.testing.assert_allclose(quaternion_matrix(0, 0, half, half) @ [1, 0, 0], [0, 1, 0],
                               atol=1e-15)
    # not unit length (a recording rounded it): taken for its direction
    np.testing.assert_allclose(quaternion_matrix(0, 0, 2 * half, 2 * half),
                               quaternion_matrix(0, 0, half, half), atol=1e-15)
    for bad in ((0, 0, 0, 0), (np.nan, 0, 0, 1)):
        with pytest.raises(ValueError, match='not a rotation quaternion'):
            quaternion_matrix(*bad)


def test_lookup_composes_through_the_common_ancestor_as_tf2():
    """map <- base_link <- {lidar, camera_link <- camera_optical}: lookup(target, source)
    maps a point in source to target, in both directions, through the tree."""
    rng = np.random.default_rng(1)
    base_lidar, base_cam, cam_opt, map_base = (_random_rigid(rng) for _ in range(4))
    tree = from_messages([
        _msg([('base_link', 'lidar', base_lidar), ('base_link', 'camera_link', base_cam)]),
        _msg([('/camera_link', 'camera_optical', cam_opt, 1.001),  # leading '/', not unit
              ('map', 'base_link', map_base)]),
    ])
    assert tree.frames == ['base_link', 'camera_link', 'camera_optical', 'lidar', 'map']
    p_lidar = np.array([3.0, -1.0, 0.5, 1.0])
    p_base = base_lidar @ p_lidar
    p_optical = np.linalg.inv(base_cam @ cam_opt) @ p_base
    T = tree.lookup('camera_optical', 'lidar')
    np.testing.assert_allclose(T @ p_lidar, p_optical, atol=1e-9)
    np.testing.assert_allclose(tree.lookup('lidar', 'camera_optical') @ p_optical, p_lidar,
                               atol=1e-9)
    np.testing.assert_allclose(tree.lookup('map', '/lidar') @ p_lidar, map_base @ p_base,
                               atol=1e-9)
    np.testing.assert_array_equal(tree.lookup('lidar', 'lidar'), np.eye(4))
    assert tree.path('camera_optical', 'lidar') == ['lidar', 'base_link', 'camera_link',
                                                    'camera_optical']
    assert tree.path('base_link', 'camera_optical') == ['camera_optical', 'camera_link',
                                                        'base_link']


def test_unconnected_frames_republished_children_and_loops():
    rng = np.random.default_rng(2)
    A, B, C = (_random_rigid(rng) for _ in range(3))
    tree = StaticTransforms()
    tree.add('base_link', 'lidar', A)
    tree.add('odom', 'camera', B)
    assert tree.lookup('camera', 'lidar') is None  # two trees
    assert tree.path('camera', 'lidar') == []
    assert tree.lookup('nowhere', 'lidar') is None
    tree.add('base_link', 'camera', C)  # the camera published again: the latest parent wins
    np.testing.assert_allclose(tree.lookup('camera', 'lidar'), np.linalg.inv(C) @ A,
                               atol=1e-12)
    tree.add('lidar', 'base_link', A)  # a loop: no root, so no answer (and no endless walk)
    assert tree.lookup('camera', 'lidar') is None
    # a loop a <-> b with two children of a: no lookup walks into it, as tf2 refuses
    loop = StaticTransforms()
    loop.add('a', 'b', A)
    loop.add('b', 'a', B)
    loop.add('a', 'c', C)
    loop.add('a', 'd', C)
    assert loop.lookup('c', 'd') is None and loop.lookup('b', 'c') is None
    assert loop.path('c', 'd') == []
    assert 'camera' in tree.describe() and 'lidar' in tree.describe()
    assert StaticTransforms().describe() == 'none'


def test_bad_transforms_are_refused_with_the_frames_named():
    tree = StaticTransforms()
    with pytest.raises(ValueError, match="two different frame ids.*'a'.*'a'"):
        tree.add('a', '/a', np.eye(4))
    with pytest.raises(ValueError, match='not a finite 4x4'):
        tree.add('a', 'b', np.full((4, 4), np.nan))
    assert len(tree) == 0


def test_a_bad_transform_is_skipped_alone_as_tf2_does():
    """robot_state_publisher sends every fixed joint in one message: one bad entry must not
    cost the others (a self-transform, a zero or far-from-unit quaternion, NaN)."""
    rng = np.random.default_rng(4)
    good = [_random_rigid(rng) for _ in range(3)]
    nan = good[0].copy()
    nan[0, 3] = np.nan
    message = _msg([('base_link', 'lidar', good[0]), ('base_link', 'base_link', good[1]),
                    ('base_link', 'imu', good[1], 0.0), ('base_link', 'gps', good[1], 1.2),
                    ('base_link', 'radar', nan), ('base_link', 'camera', good[2], 1.004)])
    problems = StaticTransforms().add_message(message)
    tree = from_messages([message])
    assert tree.frames == ['base_link', 'camera', 'lidar']
    assert len(problems) == 4
    assert 'two different frame ids' in problems[0]
    assert "'base_link' -> 'imu' skipped" in problems[1]
    assert all('not a unit quaternion' in p for p in problems[1:3])
    assert 'not a finite 4x4' in problems[3]
    # the slightly denormalised camera rotation (|q|^2 = 1.008) is normalised, as tf2 accepts
    np.testing.assert_allclose(tree.lookup('base_link', 'camera'), good[2], atol=1e-9)


def test_transform_to_matrix_reads_geometry_msgs_transform():
    rng = np.random.default_rng(3)
    T = _random_rigid(rng)
    msg = _msg([('a', 'b', T)]).transforms[0].transform
    np.testing.assert_allclose(transform_to_matrix(msg), T, atol=1e-12)
