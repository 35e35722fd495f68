"""Write small ROS 2 bags from real frames with ``rosbags``, for the bag tool's tests and its
benchmark (``bench/bench_bag.py``).

Each frame of a bag is recorded as a camera would record it: the image at its bag time, its
camera_info 1 ms later (same header stamp), and, when a scan is given, the LiDAR scan 30 ms
later with a header stamp of its own (``scan_offset`` after the image's): the bag tool must look
ahead in the bag to pair them.
"""

from __future__ import annotations

from dataclasses import dataclass
import io
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from depth_node.camera_info import Intrinsics

IMAGE_TOPIC = '/camera/image_raw'
INFO_TOPIC = '/camera/camera_info'
LIDAR_TOPIC = '/lidar/points'
CAMERA_FRAME = 'camera_optical'
LIDAR_FRAME = 'lidar'
T0 = 1_700_000_000  # the first frame's stamp (s)
PERIOD_NS = 100_000_000  # 10 frames per second


@dataclass
class BagFrame:
    """One frame to record: ``image`` is (H, W, 3) uint8 RGB, or (H, W) float32 relative depth
    (``relative=True`` bags); ``scan`` (N, 3) float32 metres in the LiDAR frame or None."""

    image: np.ndarray
    intrinsics: Intrinsics
    scan: Optional[np.ndarray] = None
    scan_offset: float = 0.02  # scan stamp - image stamp (s)


def typestore() -> Any:
    from rosbags.typesys import get_typestore, Stores

    return get_typestore(Stores.ROS2_JAZZY)


def stamp_of(i: int) -> tuple[int, int]:
    """The header stamp (sec, nanosec) of frame ``i``."""
    ns = i * PERIOD_NS
    return T0 + ns // 1_000_000_000, ns % 1_000_000_000


def bag_time_of(i: int) -> int:
    """The receive time (ns) frame ``i``'s image is recorded at: 5 ms after its stamp."""
    sec, nanosec = stamp_of(i)
    return sec * 1_000_000_000 + nanosec + 5_000_000


def matrix_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a (3, 3) rotation matrix (Shepperd's method: the largest of the four
    squares first, so no division by a small number)."""
    m = np.asarray(R, dtype=np.float64)
    tr = np.trace(m)
    squares = [tr, m[0, 0], m[1, 1], m[2, 2]]
    k = int(np.argmax(squares))
    if k == 0:
        s = 2.0 * np.sqrt(1.0 + tr)
        q = (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4
    elif k == 1:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s
    elif k == 2:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s
    return tuple(float(v) for v in q)


class Messages:
    """rosbags input messages from numpy arrays (Image, CameraInfo and PointCloud2 through the
    tool's own :class:`depth_node.bag.MessageBuilder`; the tests check what it fills)."""

    def __init__(self, store: Any) -> None:
        from depth_node.bag import MessageBuilder

        self.store = store
        self.build = MessageBuilder(store)
        self.t = {n.rsplit('/', 1)[1]: c for n, c in store.types.items()
                  if n.startswith(('sensor_msgs/msg/', 'std_msgs/msg/',
                                   'builtin_interfaces/msg/'))}

    def header(self, sec: int, nanosec: int, frame_id: str) -> Any:
        return self.t['Header'](stamp=self.t['Time'](sec=sec, nanosec=nanosec),
                                frame_id=frame_id)

    def image(self, array: np.ndarray, encoding: str, header: Any) -> Any:
        return self.build.image(array, encoding, header)

    def jpeg(self, rgb: np.ndarray, header: Any, quality: int = 90) -> Any:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format='JPEG', quality=quality)
        return self.t['CompressedImage'](header=header, format='rgb8; jpeg compressed bgr8',
                                         data=np.frombuffer(buf.getvalue(), np.uint8))

    def camera_info(self, intr: Intrinsics, header: Any) -> Any:
        return self.build.camera_info(intr, header)

    def tf_static(self, edges: Sequence[tuple[str, str, np.ndarray]], sec: int,
                  nanosec: int) -> Any:
        """A ``tf2_msgs/TFMessage``: each (parent, child, (4, 4) child-to-parent matrix)."""
        t = {n.rsplit('/', 1)[1]: c for n, c in self.store.types.items()
             if n.startswith(('geometry_msgs/msg/', 'tf2_msgs/msg/'))}
        transforms = []
        for parent, child, T in edges:
            x, y, z, w = matrix_quaternion(T[:3, :3])
            transforms.append(t['TransformStamped'](
                header=self.header(sec, nanosec, parent), child_frame_id=child,
                transform=t['Transform'](translation=t['Vector3'](x=T[0, 3], y=T[1, 3],
                                                                  z=T[2, 3]),
                                         rotation=t['Quaternion'](x=x, y=y, z=z, w=w))))
        return t['TFMessage'](transforms=transforms)

    def cloud(self, xyz: np.ndarray, header: Any) -> Any:
        """An unorganized x, y, z float32 cloud of ``xyz`` (N, 3), metres."""
        from depth_node.cloud import pack_cloud

        pts = np.ascontiguousarray(xyz[:, :3], dtype=np.float32).reshape(1, -1, 3)
        return self.build.build('points', pack_cloud(pts, None, organized=False), header)


def write_bag(path: Path | str, frames: Sequence[BagFrame], storage: str = 'mcap',
              compressed: bool = False, relative: bool = False,
              extra: Sequence[tuple[str, str, int, bytes]] = (),
              info_once: bool = False) -> Path:
    """Record ``frames`` into a new bag at ``path``; ``extra`` messages (topic, type, bag time
    ns, raw CDR bytes: e.g. corrupt ones) are written at their times; ``info_once``: only the
    first frame's camera_info (a camera that sends it once). Returns ``path``."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = typestore()
    m = Messages(store)
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    image_type = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
    image_topic = IMAGE_TOPIC + '/compressed' if compressed else IMAGE_TOPIC
    records: list[tuple[int, str, str, bytes]] = []
    for i, f in enumerate(frames):
        sec, nanosec = stamp_of(i)
        t = bag_time_of(i)
        header = m.header(sec, nanosec, CAMERA_FRAME)
        if compressed:
            msg = m.jpeg(f.image, header)
        elif relative:
            msg = m.image(f.image.astype(np.float32), '32FC1', header)
        else:
            msg = m.image(f.image, 'rgb8', header)
        records.append((t, image_topic, image_type, store.serialize_cdr(msg, image_type)))
        info = m.camera_info(f.intrinsics, header)
        if not info_once or i == 0:
            records.append((t + 1_000_000, INFO_TOPIC, 'sensor_msgs/msg/CameraInfo',
                            store.serialize_cdr(info, 'sensor_msgs/msg/CameraInfo')))
        if f.scan is not None:
            ns = sec * 1_000_000_000 + nanosec + int(round(f.scan_offset * 1e9))
            cloud = m.cloud(f.scan, m.header(ns // 1_000_000_000, ns % 1_000_000_000,
                                             LIDAR_FRAME))
            records.append((t + 30_000_000, LIDAR_TOPIC, 'sensor_msgs/msg/PointCloud2',
                            store.serialize_cdr(cloud, 'sensor_msgs/msg/PointCloud2')))
    records += [(t, topic, msgtype, raw) for topic, msgtype, t, raw in extra]
    records.sort(key=lambda r: r[0])
    path = Path(path)
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        conns: dict[str, Any] = {}
        for t, topic, msgtype, raw in records:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[topic], t, raw)
    return path


def read_bag(path: Path | str) -> dict[str, list[tuple[int, Any]]]:
    """Every message of a bag, deserialized: ``{topic: [(bag time ns, message), ...]}`` (the
    raw bytes for a message that does not deserialize)."""
    from rosbags.serde import SerdeError
    from rosbags.rosbag2 import Reader

    store = typestore()
    out: dict[str, list[tuple[int, Any]]] = {}
    with Reader(Path(path)) as reader:
        for conn, t, raw in reader.messages():
            try:
                msg = store.deserialize_cdr(raw, conn.msgtype)
            except SerdeError:
                msg = bytes(raw)
            out.setdefault(conn.topic, []).append((t, msg))
    return out


def image_array(msg: Any) -> np.ndarray:
    """A rosbags Image of 32FC1, 16UC1 or rgb8 as numpy ((H, W) or (H, W, 3))."""
    dtype, channels = {'32FC1': ('<f4', 1), '16UC1': ('<u2', 1), 'rgb8': ('u1', 3)}[
        msg.encoding]
    rows = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)
    width_bytes = msg.width * channels * np.dtype(dtype).itemsize
    a = np.ascontiguousarray(rows[:, :width_bytes]).view(dtype)
    return a.reshape(msg.height, msg.width, channels)[..., 0] if channels == 1 else \
        a.reshape(msg.height, msg.width, 3)
