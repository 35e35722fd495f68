"""A frame's arrival, ROS-free: reading input messages, the checks on arrival and decoding.

:class:`FrameDecoder` is the first stage of :class:`depth_node.frame_pipeline.FramePipeline`:
the O(1) checks a frame passes before it may displace a waiting one, then its decoding to the
network's input (``input.max_pixels`` applied). Messages are read by duck typing (the usual
``sensor_msgs`` field names), so rclpy messages and ``rosbags`` messages both work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from depth_node import config as cfg
from depth_node import prompt as pr
from depth_node.arrays import Array
from depth_node.camera_info import Intrinsics, intrinsics_from_fields
from depth_node.image_codec import (
    decode_compressed, decode_image, decode_relative_depth, ImageDecodeError, limit_pixels,
    limited_size, plan_compressed)
from depth_node.input_shape import check_input_shape, model_patch_size
from depth_node.lidar import read_points_xyz
from depth_node.text import shorten

INPUT_TOPICS = {'image': 'image', 'compressed': 'image/compressed', 'relative': 'relative_depth'}
"""Input topic of each kind of frame (relative to the camera's namespace)."""

Scan = tuple[float, str, np.ndarray]
"""A LiDAR scan: (header stamp in seconds, frame_id, (N, 3) float32 x, y, z in metres in its
frame)."""


def stamp_to_sec(stamp: Any) -> float:
    """``builtin_interfaces/Time`` (``sec``, ``nanosec``) to float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def read_camera_info(msg: Any) -> Intrinsics:
    """The :class:`~depth_node.camera_info.Intrinsics` of a ``sensor_msgs/CameraInfo``.

    Raises
    ------
    CameraInfoError
        When the message is unusable (the text says which field and why).
    """
    roi = msg.roi
    return intrinsics_from_fields(
        msg.width, msg.height, msg.k, msg.d, msg.distortion_model, msg.p, msg.r,
        msg.binning_x, msg.binning_y, (roi.x_offset, roi.y_offset, roi.width, roi.height))


def read_scan(msg: Any) -> Scan:
    """A ``sensor_msgs/PointCloud2`` as a :data:`Scan` (x, y, z in its frame, metres).

    Raises
    ------
    LidarError
        When the cloud has no float x, y, z or its layout does not match its data.
    """
    fields = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    xyz = read_points_xyz(fields, msg.point_step, msg.row_step, msg.width, msg.height,
                          msg.is_bigendian, msg.data)
    return (stamp_to_sec(msg.header.stamp), str(msg.header.frame_id), xyz)


@dataclass
class Frame:
    """One received frame on its way through the pipeline.

    ``rgb`` is the network input ((H, W, 3) uint8, after ``input.max_pixels``), None for a
    ``relative`` frame; ``src_w`` x ``src_h`` is the image as received (pixels), which its
    camera_info describes. After :meth:`FramePipeline.forward`, ``prediction`` holds the network
    output ((H, W) float32 at the size of ``rgb``) and ``points`` the cloud built with it, if any:
    numpy arrays, or ``torch.Tensor`` s on the model's device when the pipeline keeps the frame
    there (:attr:`FramePipeline.on_device`; then no ``points``, the finish builds the cloud).
    """

    kind: str
    header: Any
    rgb: Optional[np.ndarray] = None
    src_w: int = 0
    src_h: int = 0
    prediction: Optional[Array] = None
    points: Optional[np.ndarray] = None
    prompt: Optional[pr.PromptCheck] = None  # with prompt.source: its depth prompt
    prompt_points: int = 0  # LiDAR points projected for the prompt
    focal: Optional[tuple[float, float]] = None  # (fx, fy) pixels of rgb: a needs_focal model
    confidence: Optional[Array] = None  # the model's own (H, W) confidence, if it has one

    @property
    def stamp(self) -> float:
        """The header stamp, seconds."""
        return stamp_to_sec(self.header.stamp)


class FrameDecoder:
    """Checks and decodes frames for the network of ``estimator`` (None: frames arrive as
    relative depth, ``input.mode: relative_depth``) under ``config``'s ``input.*``."""

    def __init__(self, config: cfg.NodeConfig, estimator: Any = None) -> None:
        self.config = config
        self.estimator = estimator
        self._patch_size = model_patch_size(estimator.config) if estimator is not None else 1
        self._shape_ok: Optional[tuple] = None  # the last shape check_input_shape passed

    def check(self, kind: str, msg: Any) -> None:
        """O(1) checks of a frame on arrival, before it may displace a waiting one.

        A raw Image: data length, then the codec decodes its first two rows (encoding, size,
        step and its own rules), then ``input.max_pixels`` with ``refuse``. A CompressedImage:
        its header (container, size, ``input.max_pixels`` and whether it can be reduced while
        decoding). Then, for the network, the image's shape (``input.max_aspect``, at least a
        patch on each side).

        Raises
        ------
        ImageDecodeError
            When the frame is refused (the message says why).
        """
        max_pixels, oversize = self.config['input.max_pixels'], self.config['input.oversize']
        if kind == 'compressed':
            plan = plan_compressed(msg.format, msg.data, max_pixels, oversize)
            self._check_shape(plan.height, plan.width, (plan.out_height, plan.out_width))
            return
        decode = decode_relative_depth if kind == 'relative' else decode_image
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
        if len(msg.data) != step * height:
            raise ImageDecodeError(
                f'{shorten(msg.encoding)}: data is {len(msg.data)} bytes, step {step} x height '
                f'{height} needs {step * height}')
        rows = min(height, 2) if width > 0 else height  # an empty image says its real size
        decode(msg.encoding, rows, width, step, bool(msg.is_bigendian),
               memoryview(msg.data)[:step * rows])
        if kind == 'relative':
            return
        if oversize == 'refuse' and 0 < max_pixels < width * height:
            raise ImageDecodeError(
                f'{width}x{height} is over input.max_pixels={max_pixels} '
                '(set input.oversize:=downscale or raise the limit)')
        self._check_shape(height, width, limited_size(height, width, max_pixels))

    def _check_shape(self, height: int, width: int, resized: tuple[int, int]) -> None:
        """:func:`check_input_shape` with the estimator's input size rule; the last shape that
        passed is remembered (a camera keeps its size)."""
        key = (height, width, resized)
        if self.estimator is None or key == self._shape_ok:
            return
        check_input_shape(height, width, self.config['input.max_aspect'],
                          self.estimator.input_size, self._patch_size, resized)
        self._shape_ok = key

    def decode(self, kind: str, msg: Any) -> Frame:
        """Decode a frame of ``kind`` (:data:`INPUT_TOPICS`); a relative one is ready to finish.

        Raises
        ------
        ImageDecodeError
            When the frame is refused (corrupt, unsupported, over ``input.max_pixels``).
        """
        c = self.config
        frame = Frame(kind, msg.header)
        if kind == 'relative':
            frame.prediction = decode_relative_depth(msg.encoding, msg.height, msg.width,
                                                     msg.step, bool(msg.is_bigendian), msg.data)
            frame.src_w, frame.src_h = int(msg.width), int(msg.height)
            return frame
        limits = (c['input.max_pixels'], c['input.oversize'])
        if kind == 'compressed':
            # a JPEG over input.max_pixels comes out reduced; the source size is the header's
            plan = plan_compressed(msg.format, msg.data, *limits)
            rgb = decode_compressed(msg.format, msg.data, *limits)
            frame.src_h, frame.src_w = plan.height, plan.width
        else:
            rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step,
                               bool(msg.is_bigendian), msg.data)
            frame.src_h, frame.src_w = rgb.shape[:2]
        max_pixels = limits[0]
        if max_pixels and frame.src_h * frame.src_w > max_pixels:
            if limits[1] == 'refuse':
                raise ImageDecodeError(
                    f'{frame.src_w}x{frame.src_h} is over input.max_pixels={max_pixels} '
                    '(set input.oversize:=downscale or raise the limit)')
            rgb = limit_pixels(rgb, max_pixels)
        frame.rgb = rgb
        return frame
