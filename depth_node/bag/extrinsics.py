"""Where ``depth_node-bag`` takes the LiDAR-to-camera transform from: the parameter, or the
bag's ``/tf_static`` composed as tf2 would."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from depth_node import config as cfg
from depth_node.bag.common import BagError, EXIT_INPUT, Log
from depth_node.text import bounded, shorten
from depth_node.transforms import StaticTransforms

TF_MESSAGE = 'tf2_msgs/msg/TFMessage'
TF_STATIC = '/tf_static'
SET_T_CAMERA_LIDAR = ('set lidar.T_camera_lidar (16 values, row-major, LiDAR to camera optical '
                      'frame, e.g. from `ros2 run tf2_ros tf2_echo CAMERA_FRAME LIDAR_FRAME`)')
"""The fix for LiDAR extrinsics the bag cannot give."""


class Extrinsics:
    """Where the LiDAR-to-camera transform comes from: ``lidar.T_camera_lidar``, or the
    bag's ``/tf_static`` composed as tf2 would (:class:`~depth_node.transforms.StaticTransforms`)
    when that parameter is unset; :meth:`lookup` is the pipeline's ``lookup_tf``."""

    def __init__(self, tree: Optional[StaticTransforms], log: Log) -> None:
        self.tree = tree
        self.log = log
        self.used: dict[tuple[str, str], list[str]] = {}
        self.missing: set[tuple[str, str]] = set()
        self._matrices: dict[tuple[str, str], np.ndarray] = {}

    @classmethod
    def read(cls, reader: Any, typestore: Any, config: cfg.NodeConfig, topics: Any,
             log: Log) -> 'Extrinsics':
        """From ``config`` when it sets ``lidar.T_camera_lidar`` (or no LiDAR topic is read),
        else from every ``/tf_static`` message of the bag.

        Raises
        ------
        BagError
            The LiDAR is used, the parameter is unset and the bag has no ``/tf_static``, or
            none of its messages can be read.
        """
        if topics.lidar is None or config.T_camera_lidar is not None:
            return cls(None, log)
        conns = [c for c in reader.connections
                 if c.topic == TF_STATIC and c.msgtype == TF_MESSAGE]
        if not conns:
            raise BagError(
                f'the LiDAR on {topics.lidar} needs its transform to the camera, and '
                f'lidar.T_camera_lidar is unset and the bag has no {TF_STATIC}: '
                f'{SET_T_CAMERA_LIDAR} or record {TF_STATIC}')
        tree, bad, skipped = StaticTransforms(), 0, []
        try:  # every /tf_static message: indexed mcap reads only their chunks
            for conn, _t, raw in reader.messages(connections=conns):
                try:
                    message = typestore.deserialize_cdr(raw, conn.msgtype)
                except Exception as exc:  # noqa: BLE001 - one corrupt message: counted
                    bad += 1
                    log(f'{TF_STATIC}: a message cannot be deserialized: '
                        f'{type(exc).__name__}: {bounded(exc, 300)}', 'tf_static')
                    continue
                skipped += tree.add_message(message)
        except Exception as exc:  # noqa: BLE001 - rosbags' read errors have no common base
            raise BagError(f'{TF_STATIC} could not be read from the input: '
                           f'{type(exc).__name__}: {bounded(exc, 300)}', EXIT_INPUT) from exc
        for line in skipped[:3]:
            log(f'{TF_STATIC}: {line}')
        if len(skipped) > 3:
            log(f'{TF_STATIC}: {len(skipped) - 3} more transforms skipped')
        if not len(tree):
            raise BagError(f'lidar.T_camera_lidar is unset and no transform could be read from '
                           f"the bag's {TF_STATIC} ({bad} messages unreadable, {len(skipped)} "
                           f'transforms skipped): {SET_T_CAMERA_LIDAR}')
        n = len(tree)
        log(f'LiDAR extrinsics from {TF_STATIC}: {n} transform{"s" if n != 1 else ""}, frames '
            f'{tree.describe()}' + (f'; {bad} messages unreadable' if bad else '') +
            (f'; {len(skipped)} transforms skipped' if skipped else ''))
        return cls(tree, log)

    def lookup(self, lidar_frame: str, header: Any) -> Optional[np.ndarray]:
        """(4, 4) LiDAR -> camera optical frame of ``header``, or None (logged once a pair).
        The tree is static: each pair is composed once."""
        if self.tree is None:
            return None
        key = (str(lidar_frame), str(header.frame_id))
        if key in self.missing:
            return None
        if key not in self._matrices:
            T = self.tree.lookup(key[1], key[0])
            if T is None:
                self.missing.add(key)
                self.log(f'no transform {shorten(key[0])} -> {shorten(key[1])} in {TF_STATIC} '
                         f'(frames there: {self.tree.describe()}): frames of that pair get no '
                         'LiDAR fit or LiDAR depth prompt, so no metric depth; set '
                         'lidar.T_camera_lidar or record the transform')
                return None
            self._matrices[key] = T
            self.used[key] = self.tree.path(key[1], key[0])
        return self._matrices[key]

    def summary(self) -> str:
        """What the summary says about the extrinsics."""
        if self.tree is None:
            return 'lidar.T_camera_lidar'
        used = '; '.join(' -> '.join(shorten(f) for f in path)
                         for path in self.used.values()) or 'no frame used it'
        missing = ', '.join(f'{shorten(a)} -> {shorten(b)}' for a, b in sorted(self.missing))
        return bounded(f'{TF_STATIC} ({used})' + (f'; MISSING: {missing}' if missing else ''),
                       500)
