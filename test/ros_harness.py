"""Test harness: a real rclpy context, a spinning executor and a probe node that talks to the node.

Everything goes over real DDS (Fast DDS from the PyPI Jazzy wheels): the probe publishes inputs
with reliable QoS and subscribes to every output of depth_node.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Optional

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from depth_node.messages import message_class
from depth_node.outputs import OUTPUTS as OUTPUT_TABLE
from depth_node.spin import BackgroundExecutor

OUTPUTS = {o.topic: message_class(o.msg_type) for o in OUTPUT_TABLE}
OUTPUTS['/diagnostics'] = DiagnosticArray
"""Every topic the node publishes, with its message class (from the output table)."""


def status_stamp(status: DiagnosticStatus) -> tuple[int, int]:
    values = {kv.key: kv.value for kv in status.values}
    sec, nsec = values.get('stamp', '0.0').split('.')
    return int(sec), int(nsec)


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def holds_camera_info(node: Any, msg: CameraInfo, camera: int = 0) -> bool:
    """Whether ``node``'s current intrinsics for its ``camera``-th camera are those of ``msg``.

    Reads the node's private state: the one place tests do, so a rename is fixed here.
    """
    with node.core.lock:
        intr = node.core.cameras[camera].intrinsics
    return (intr is not None and (intr.width, intr.height) == (msg.width, msg.height) and
            bool(np.array_equal(intr.K.ravel(), np.asarray(msg.k))) and
            bool(np.array_equal(intr.D, np.asarray(msg.d))))


def holds_scan(node: Any, msg: PointCloud2) -> bool:
    """Whether ``node`` has stored a LiDAR scan with the stamp of ``msg`` (private state, as
    :func:`holds_camera_info`)."""
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    with node.core.lock:
        return any(scan[0] == stamp for scan in node.core.scans)


def holds_prompt(node: Any, msg: Image, camera: int = 0) -> bool:
    """Whether ``node`` has stored a ``prompt_depth`` image with the stamp of ``msg`` for its
    ``camera``-th camera (private state, as :func:`holds_camera_info`)."""
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    with node.core.lock:
        return any(p.stamp == stamp for p in node.core.cameras[camera].prompts)


class Probe:
    """Publishes inputs and records every output message, keyed by topic."""

    def __init__(self, context: Context, namespace: str = '',
                 outputs: Iterable[str] = tuple(OUTPUTS)) -> None:
        self.node = rclpy.create_node('depth_node_probe', namespace=namespace, context=context)
        self._cv = threading.Condition()
        self.received: dict[str, list[Any]] = {t: [] for t in OUTPUTS}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {
            'image': self.node.create_publisher(Image, 'image', reliable),
            'image/compressed': self.node.create_publisher(CompressedImage, 'image/compressed',
                                                           reliable),
            'camera_info': self.node.create_publisher(CameraInfo, 'camera_info', reliable),
            'lidar/points': self.node.create_publisher(PointCloud2, 'lidar/points', reliable),
            'relative_depth': self.node.create_publisher(Image, 'relative_depth', reliable),
            'prompt_depth': self.node.create_publisher(Image, 'prompt_depth', reliable),
        }
        self.subs = [self.node.create_subscription(OUTPUTS[t], t, self._callback(t), reliable)
                     for t in outputs]

    def _callback(self, topic: str) -> Callable[[Any], None]:
        def on_msg(msg: Any) -> None:
            with self._cv:
                self.received[topic].append(msg)
                self._cv.notify_all()
        return on_msg

    def publish(self, topic: str, msg: Any) -> None:
        self.pub[topic].publish(msg)

    def wait_for(self, topic: str, predicate: Callable[[Any], bool] = lambda m: True,
                 timeout: float = 30.0) -> Optional[Any]:
        """The first message on ``topic`` satisfying ``predicate``, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for msg in self.received[topic]:
                    if predicate(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, 0.1))

    def wait_stamp(self, topic: str, stamp: tuple[int, int], timeout: float = 30.0) -> Any:
        if topic == 'depth/alignment':
            return self.wait_for(topic, lambda m: status_stamp(m) == stamp, timeout)
        return self.wait_for(topic, lambda m: (m.header.stamp.sec, m.header.stamp.nanosec)
                             == stamp, timeout)

    def publish_until(self, topic: str, msg: Any, condition: Callable[[], bool], what: str,
                      timeout: float = 30.0, every: float = 2.0) -> None:
        """Publish ``msg`` until ``condition`` holds (the node took it), again every ``every``
        seconds (the node's sensor QoS is best effort); fail naming ``what`` after
        ``timeout``. Replaces sleeping for a while and hoping the message landed."""
        deadline = time.monotonic() + timeout
        while True:
            self.publish(topic, msg)
            resend = min(deadline, time.monotonic() + every)
            while time.monotonic() < resend:
                if condition():
                    return
                time.sleep(0.01)
            assert time.monotonic() < deadline, \
                f'timed out after {timeout:g} s waiting for {what}'

    def wait_subscribers(self, topic: str, timeout: float = 10.0) -> bool:
        """Wait until the node subscribes ``topic`` (discovery done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pub[topic].get_subscription_count() > 0:
                return True
            time.sleep(0.05)
        return False

    def clear(self) -> None:
        with self._cv:
            for msgs in self.received.values():
                msgs.clear()


class RosSession:
    """One rclpy context with a multi-threaded executor spinning in a background thread."""

    def __init__(self) -> None:
        self._spinner = BackgroundExecutor(num_threads=2)
        self.context = self._spinner.context
        self.executor = self._spinner.executor

    def add(self, node: Node) -> Node:
        return self._spinner.add(node)

    def start_depth_node(self, params: dict[str, Any]) -> Any:
        from depth_node.node import DepthNode
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        return self.add(DepthNode(context=self.context, parameter_overrides=overrides))

    def probe(self, **kwargs: Any) -> Probe:
        probe = Probe(self.context, **kwargs)
        self.add(probe.node)
        return probe

    def close(self) -> None:
        self._spinner.close(timeout=2.0)


def output_or_kill(proc: Any, timeout: float = 10.0) -> tuple[str, bool]:
    """The output of ``proc`` once it exits within ``timeout`` s; after that it is killed.
    Returns the output and whether it had to be killed."""
    import subprocess

    try:
        return proc.communicate(timeout=timeout)[0], False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0], True
