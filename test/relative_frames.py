"""A real TUM frame as a relative prediction with a known affine error and a LiDAR-like scan,
and message-like objects carrying it: what the ROS-free pipeline tests feed
:class:`depth_node.frame_pipeline.FramePipeline` (plain objects with the sensor_msgs field names,
as rosbags gives them: no rclpy message type needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from depth_node.demo import simulated_lidar
from depth_node.sample_data import Frame, load_frame

SCALE, SHIFT = 3.0, 0.2  # the relative input is SCALE / depth + SHIFT (what a fit must undo)


def header(sec: int, frame_id: str = 'cam_optical') -> SimpleNamespace:
    """A message-like Header stamped ``sec`` s and 250 ns."""
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=250), frame_id=frame_id)


def image(array: np.ndarray, encoding: str, sec: int) -> SimpleNamespace:
    """A message-like Image of ``array`` (numpy data, like rosbags' messages)."""
    a = np.ascontiguousarray(array)
    return SimpleNamespace(header=header(sec), height=a.shape[0], width=a.shape[1],
                           encoding=encoding, is_bigendian=0, step=a.strides[0],
                           data=a.view(np.uint8).reshape(-1))


def relative_tum(real_data: Path) -> tuple[Frame, np.ndarray, np.ndarray]:
    """The first TUM RGB-D frame, its ``(H, W)`` float32 relative prediction ``SCALE / depth +
    SHIFT`` (holes filled with the median depth) and an ``(N, 3)`` scan simulated from its dense
    ground truth in the camera optical frame (metres)."""
    frame = load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])
    gt = frame.depth_gt
    filled = np.where(np.isfinite(gt), gt, np.nanmedian(gt)).astype(np.float32)
    return frame, (SCALE / filled + SHIFT).astype(np.float32), simulated_lidar(gt, frame.K)
