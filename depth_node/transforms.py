"""Rigid transforms from tf messages, without tf2: the static transform tree of ``/tf_static``.

ROS-free. The node asks tf2 (``tf2_ros.Buffer``) where ROS has it; ``depth_node-bag`` reads a
recording's ``/tf_static`` into :class:`StaticTransforms` and composes the LiDAR-to-camera
transform from it, the way ``tf2_ros.Buffer.lookup_transform(target, source, time)`` would for
transforms that do not change.

Conventions (REP 103, tf2): a ``geometry_msgs/TransformStamped`` with ``header.frame_id``
``parent`` and ``child_frame_id`` ``child`` gives the child frame's pose in the parent, so its
(4, 4) matrix maps points in ``child`` to ``parent``: ``p_parent = T @ p_child``. Frame ids
are compared without a leading ``/``, as tf2 does.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from depth_node.text import shorten


def quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """The (3, 3) rotation of quaternion (x, y, z, w), taken for its direction (a quaternion
    that is not quite unit length, as a recording's rounding leaves it, is normalised).

    Raises
    ------
    ValueError
        A zero or non-finite quaternion: no rotation.
    """
    n2 = x * x + y * y + z * z + w * w
    if not np.isfinite(n2) or n2 < 1e-12:
        raise ValueError(f'(x, y, z, w) = ({x}, {y}, {z}, {w}) is not a rotation quaternion')
    s = 2.0 / n2
    return np.array([[1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
                     [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
                     [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)]])


def transform_to_matrix(transform: Any) -> np.ndarray:
    """``geometry_msgs/Transform`` (translation in metres, rotation quaternion x, y, z, w) to
    a (4, 4) float64 matrix (:func:`quaternion_matrix`)."""
    q = transform.rotation
    T = np.eye(4)
    T[:3, :3] = quaternion_matrix(q.x, q.y, q.z, q.w)
    t = transform.translation
    T[:3, 3] = [t.x, t.y, t.z]
    return T


#: How far a transform's squared quaternion norm may be from 1 (tf2's
#: QUATERNION_NORMALIZATION_TOLERANCE): within it the rotation is normalised, beyond it the
#: transform is skipped.
QUATERNION_TOLERANCE = 0.01


def _frame(name: Any) -> str:
    """A frame id as tf2 compares it: without its leading '/'."""
    name = str(name)
    return name[1:] if name.startswith('/') else name


class StaticTransforms:
    """The tree of static transforms: each child frame's (4, 4) pose in its parent frame,
    from ``tf2_msgs/TFMessage`` messages; :meth:`lookup` composes the transform between any
    two frames of one tree.

    A child published again (another parent, or new values) replaces its earlier transform, as
    tf2's static buffer does. Rotations are normalised on the way in
    (:func:`quaternion_matrix`). A lookup whose walk runs into a loop of parents has no answer.
    """

    def __init__(self) -> None:
        self._parent: dict[str, tuple[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._parent)

    @property
    def frames(self) -> list[str]:
        """Every frame named, sorted."""
        names = set(self._parent)
        names.update(parent for parent, _ in self._parent.values())
        return sorted(names)

    def add(self, parent: str, child: str, T: np.ndarray) -> None:
        """Set ``child``'s pose in ``parent``: ``T`` (4, 4) maps points in ``child`` to
        ``parent``."""
        parent, child = _frame(parent), _frame(child)
        if not parent or not child or parent == child:
            raise ValueError(f'a transform needs two different frame ids, got parent '
                             f'{shorten(parent)} and child {shorten(child)}')
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise ValueError(f'the transform {shorten(parent)} -> {shorten(child)} is not a '
                             'finite 4x4 matrix')
        self._parent[child] = (parent, T)

    def add_message(self, message: Any) -> list[str]:
        """Add every valid transform of a ``tf2_msgs/TFMessage``; what was wrong with the
        others, one line each (empty when all were added).

        As tf2 does, a bad transform is skipped on its own and the rest of the message kept:
        no two frame ids (or a frame its own parent), a non-finite translation, or a rotation
        whose squared norm is not within :data:`QUATERNION_TOLERANCE` of 1 (small rounding is
        normalised away).
        """
        problems = []
        for stamped in message.transforms:
            parent, child = stamped.header.frame_id, stamped.child_frame_id
            q = stamped.transform.rotation
            try:
                n2 = q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w
                if not abs(n2 - 1.0) < QUATERNION_TOLERANCE:  # also NaN
                    raise ValueError(f'the rotation (x, y, z, w) = ({q.x}, {q.y}, {q.z}, '
                                     f'{q.w}) is not a unit quaternion')
                self.add(parent, child, transform_to_matrix(stamped.transform))
            except ValueError as exc:
                problems.append(f'{shorten(parent)} -> {shorten(child)} skipped: {exc}')
        return problems

    def _to_root(self, frame: str) -> tuple[list[str], Optional[np.ndarray]]:
        """The frames from ``frame`` up to its tree's root, and the root-from-frame matrix;
        None for the matrix when the walk runs into a loop (no root: no answer, as tf2)."""
        chain, T = [frame], np.eye(4)
        while chain[-1] in self._parent:
            parent, T_parent_child = self._parent[chain[-1]]
            if parent in chain:
                return chain, None
            T = T_parent_child @ T
            chain.append(parent)
        return chain, T

    def _walks(self, target: str, source: str,
               ) -> Optional[tuple[list[str], np.ndarray, list[str], np.ndarray]]:
        """Both frames' walks to their root (:meth:`_to_root`): ``source`` chain and matrix,
        then ``target``'s; None when they do not reach one root."""
        source_chain, T_root_source = self._to_root(source)
        target_chain, T_root_target = self._to_root(target)
        if T_root_source is None or T_root_target is None or \
                source_chain[-1] != target_chain[-1]:
            return None
        return source_chain, T_root_source, target_chain, T_root_target

    def lookup(self, target: str, source: str) -> Optional[np.ndarray]:
        """The (4, 4) matrix that maps points in ``source`` to ``target`` (tf2's
        ``lookup_transform(target, source)``), or None when the two frames are not in one
        tree."""
        target, source = _frame(target), _frame(source)
        if target == source:
            return np.eye(4)
        walks = self._walks(target, source)
        if walks is None:
            return None
        _, T_root_source, _, T_root_target = walks
        return np.linalg.inv(T_root_target) @ T_root_source

    def path(self, target: str, source: str) -> list[str]:
        """The frames from ``source`` to ``target`` through their common ancestor (empty when
        they are not connected): what a log line says the transform went through."""
        target, source = _frame(target), _frame(source)
        if target == source:
            return [source]
        walks = self._walks(target, source)
        if walks is None:
            return []
        source_chain, _, target_chain, _ = walks
        common = next(f for f in source_chain if f in target_chain)
        up = source_chain[:source_chain.index(common) + 1]
        down = target_chain[:target_chain.index(common)]
        return up + down[::-1]

    def describe(self, limit: int = 8) -> str:
        """The frames known, for an error message: ``'base_link, camera, velodyne'``."""
        names = self.frames
        shown = ', '.join(shorten(n) for n in names[:limit])
        return (shown + (f', ... ({len(names)} frames)' if len(names) > limit else '')) \
            if names else 'none'


def from_messages(messages: Iterable[Any]) -> StaticTransforms:
    """A :class:`StaticTransforms` of ``tf2_msgs/TFMessage`` messages, in order (bad
    transforms skipped)."""
    tree = StaticTransforms()
    for message in messages:
        tree.add_message(message)
    return tree
