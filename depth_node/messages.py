"""Build and read sensor_msgs messages from numpy arrays (no rclpy, only message types).

Used by the node to publish (:data:`MESSAGES`, the
:class:`~depth_node.outputs.MessageFactory` of the ROS 2 message classes), and by the demo,
benchmarks and tests to feed the node and read what it publishes.
"""

from __future__ import annotations

import importlib
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from depth_node.camera_info import Intrinsics, intrinsics_to_fields
from depth_node.cloud import PackedCloud, pack_cloud
from depth_node.encodings import IMAGE_ENCODINGS, POINTFIELD_DATATYPES
from depth_node.packing import fill_cloud, fill_image


def make_header(frame_id: str, sec: int = 0, nanosec: int = 0) -> Header:
    """A header with the given stamp and frame."""
    header = Header(frame_id=frame_id)
    header.stamp.sec = int(sec)
    header.stamp.nanosec = int(nanosec)
    return header


def image_msg(array: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image of ``array``: the samples of ``encoding``, as
    :func:`~depth_node.packing.fill_image` takes them."""
    msg = Image(header=header)
    fill_image(msg, array, encoding)
    return msg


def camera_info_msg(intr: Intrinsics, header: Header) -> CameraInfo:
    """A CameraInfo from :class:`~depth_node.camera_info.Intrinsics`."""
    return CameraInfo(header=header, **intrinsics_to_fields(intr))


def cloud_msg(packed: PackedCloud, header: Header) -> PointCloud2:
    """A PointCloud2 from a :class:`~depth_node.cloud.PackedCloud`."""
    msg = PointCloud2(header=header)
    fill_cloud(msg, packed, PointField)
    return msg


def status_msg(fields: dict[str, Any]) -> DiagnosticStatus:
    """A DiagnosticStatus from :func:`depth_node.outputs.alignment_status`'s fields."""
    return DiagnosticStatus(
        level=bytes([fields['level']]), name=fields['name'], message=fields['message'],
        hardware_id=fields['hardware_id'],
        values=[KeyValue(key=k, value=v) for k, v in fields['values'].items()])


class RosMessages:
    """The :class:`~depth_node.outputs.MessageFactory` of the ROS 2 message classes."""

    image = staticmethod(image_msg)
    camera_info = staticmethod(camera_info_msg)
    cloud = staticmethod(cloud_msg)
    status = staticmethod(status_msg)


MESSAGES = RosMessages()


def message_class(type_name: str) -> type:
    """The ROS 2 message class of ``type_name`` (``sensor_msgs/msg/Image``)."""
    package, _, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def xyz_cloud_msg(points: np.ndarray, header: Header) -> PointCloud2:
    """An unorganized x, y, z float32 PointCloud2 of ``points`` (N, 3), metres."""
    xyz = np.ascontiguousarray(points[:, :3], dtype=np.float32).reshape(1, -1, 3)
    return cloud_msg(pack_cloud(xyz, None, organized=False), header)


def image_to_array(msg: Image) -> np.ndarray:
    """Read an Image's samples back into numpy, a copy in native byte order: (H, W) for a
    single-channel encoding, else (H, W, channels) (the inverse of
    :func:`~depth_node.packing.fill_image`; no colour conversion)."""
    if msg.encoding not in IMAGE_ENCODINGS:
        raise ValueError(f'image_to_array: unsupported encoding {msg.encoding!r}')
    enc = IMAGE_ENCODINGS[msg.encoding]
    dtype, channels = enc.dtype.newbyteorder('>' if msg.is_bigendian else '<'), enc.channels
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    row = raw[:, :msg.width * channels * dtype.itemsize]
    out = np.ascontiguousarray(row).view(dtype).reshape(msg.height, msg.width, channels)
    return (out[..., 0] if channels == 1 else out).astype(dtype.newbyteorder('='))


def cloud_fields(msg: PointCloud2) -> list[tuple[str, int, int, int]]:
    """PointCloud2 fields as (name, offset, datatype, count) tuples."""
    return [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]


def cloud_to_array(msg: PointCloud2, names: tuple[str, ...] = ('x', 'y', 'z'),
                   ) -> np.ndarray:
    """Read fields of every point (NaN kept): (height, width, len(names)) float32.

    Each field is read with its own datatype and the message's byte order
    (:data:`~depth_node.encodings.POINTFIELD_DATATYPES`) and converted to float32; a FLOAT32
    field (``rgb`` included) keeps its bits, so ``.view(np.uint32)`` gives the packed colour.
    """
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in names if n not in fields]
    if missing:
        raise ValueError(f'cloud_to_array: fields {missing} not in the cloud')
    order = '>' if msg.is_bigendian else '<'
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.row_step)
    raw = raw[:, :msg.width * msg.point_step].reshape(msg.height, msg.width, msg.point_step)
    cols = []
    for name in names:
        offset = fields[name].offset
        dtype = POINTFIELD_DATATYPES[fields[name].datatype].newbyteorder(order)
        column = np.ascontiguousarray(raw[:, :, offset:offset + dtype.itemsize]).view(dtype)
        cols.append(column[..., 0].astype(np.float32))
    return np.stack(cols, axis=-1)


def stamp_of(msg: Any) -> tuple[int, int]:
    """(sec, nanosec) of a stamped message, for exact comparisons."""
    return int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)
