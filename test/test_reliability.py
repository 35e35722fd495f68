"""Reliability through ROS: bad messages, injected faults and signals against a running node.

Every case publishes the bad input to a running node, checks that it was counted and logged
with a clear reason, and then publishes a good frame that must come out right (its stamp, and
values equal to a reference computed without ROS). Three nodes are started once for the module,
each in its own namespace: an image node and a compressed-image node with a tiny random Depth
Anything model (``input.max_pixels`` 320 x 240 with ``input.oversize: refuse``), and a LiDAR node
in ``input.mode: relative_depth`` (no network). Signals are tested on the entry point as a
subprocess with a full-size random model, so that a forward pass is in progress. TESTING.md
lists the cases and their results.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image as PILImage
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

from depth_node.camera_info import intrinsics_from_fields, intrinsics_to_fields
from depth_node.config import ConfigError, TF2_NOT_STARTED
from depth_node.demo import simulated_lidar
from depth_node.evaluate import compute_metrics
from depth_node.messages import (camera_info_msg, image_msg, image_to_array, make_header,
                                 xyz_cloud_msg)
from depth_node.node import DepthNode
from depth_node.telemetry import Throttle
from depth_node.sample_data import load_frame
from ros_harness import RosSession, holds_camera_info, holds_scan, status_values
from tiny_models import make_tiny_depth_anything

pytestmark = pytest.mark.ros

MAX_PIXELS = 320 * 240
IMAGE_PARAMS = {'model.device': 'cpu', 'model.warmup': False, 'input.max_pixels': MAX_PIXELS,
                'input.oversize': 'refuse', 'diagnostics.period': 0.2}
# Camera optical frame from a LiDAR frame (x forward, y left, z up), as in test_node_lidar.py.
R_CAM_LIDAR = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
T_CAMERA_LIDAR = np.eye(4)
T_CAMERA_LIDAR[:3, :3] = R_CAM_LIDAR
T_CAMERA_LIDAR[:3, 3] = R_CAM_LIDAR @ np.array([-0.1, 0.0, 0.3])
SCALE, SHIFT = 3.0, 0.2  # prediction = SCALE / depth + SHIFT
FRAME = 'cam_optical'
TIMEOUT = 30.0


# ------------------------------------------------------------------------------ helpers
class LogRecorder:
    """Stands in for the node's logger: records each line, then passes it on."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def _record(self, level: str, text: str) -> None:
        with self._lock:
            self.lines.append((level, text))

    # one call site per severity: rclpy refuses two severities from one line of code
    def warn(self, text: str, **kwargs: Any) -> Any:
        self._record('warning', text)
        return self._logger.warning(text, **kwargs)

    warning = warn

    def error(self, text: str, **kwargs: Any) -> Any:
        self._record('error', text)
        return self._logger.error(text, **kwargs)

    def matching(self, fragment: str) -> list[str]:
        with self._lock:
            return [text for _, text in self.lines if fragment in text]

    def wait_matching(self, fragment: str, timeout: float = 5.0) -> list[str]:
        """The lines with ``fragment`` once there is one (the worker logs a frame's problems
        after its outputs are sent), or none after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self.matching(fragment) and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.matching(fragment)

    def clear(self) -> None:
        with self._lock:
            self.lines.clear()


class Rig:
    """A running DepthNode, its probe, its recorded log and the reference it is judged by."""

    def __init__(self, session: RosSession, namespace: str, params: dict[str, Any],
                 inputs: tuple[str, ...]) -> None:
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = session.add(DepthNode(context=session.context, namespace=namespace,
                                          parameter_overrides=overrides))
        self.log = LogRecorder(self.node.get_logger())
        self.node._logger = self.log
        self.probe = session.probe(namespace=namespace)
        for topic in inputs:
            assert self.probe.wait_subscribers(topic), f'{namespace}: never subscribed {topic}'
        self.reference: dict[str, np.ndarray] = {}

    def fresh_log(self) -> None:
        """Forget the log and the throttle, so the next bad message logs its own line."""
        self.log.clear()
        self.node.core.reporter.throttle = Throttle(period=5.0)

    def count(self, key: str) -> int:
        return self.node.counters.get(key, 0)

    def wait_count(self, key: str, value: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while self.count(key) < value:
            assert time.monotonic() < deadline, f'{key} stayed at {self.count(key)} < {value}'
            time.sleep(0.01)

    def diagnostics(self, predicate: Callable[[DiagnosticStatus], bool]) -> DiagnosticStatus:
        """The first status of this node on /diagnostics from now on that fits ``predicate``."""
        name = self.node.get_fully_qualified_name()
        old = {id(m) for m in list(self.probe.received['/diagnostics'])}

        def mine(msg: Any) -> bool:
            return id(msg) not in old and any(s.hardware_id == name and predicate(s)
                                              for s in msg.status)
        msg = self.probe.wait_for('/diagnostics', mine, timeout=TIMEOUT)
        assert msg is not None, f'no /diagnostics of {name} as expected'
        return next(s for s in msg.status if s.hardware_id == name)


_stamps = itertools.count(1000, 10)


def next_stamp() -> tuple[int, int]:
    """A stamp 10 s after the previous one: no fit is reused across cases (max_fit_age 1 s)."""
    return next(_stamps), 0


def raw(array: np.ndarray, layout: str, stamp: tuple[int, int], **fields: Any) -> Image:
    """An Image of ``array`` in encoding ``layout``, then ``fields`` overwritten (the fault)."""
    msg = image_msg(array, layout, make_header(FRAME, *stamp))
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def encoded(rgb: np.ndarray, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def served_right(rig: Rig, stamp: tuple[int, int], reference: np.ndarray) -> None:
    """The frame ``stamp`` comes out on depth/relative with the reference's values."""
    msg = rig.probe.wait_stamp('depth/relative', stamp, timeout=TIMEOUT)
    assert msg is not None, f'good frame {stamp} not served'
    assert msg.header.frame_id == FRAME
    np.testing.assert_allclose(image_to_array(msg), reference, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def session():
    s = RosSession()
    yield s
    s.close()


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return str(make_tiny_depth_anything(tmp_path_factory.mktemp('reliability'), metric=False))


@pytest.fixture(scope='module')
def tum(real_data):
    return load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])


@pytest.fixture(scope='module')
def small(tum):
    """The TUM frame at 160 x 120, RGB, and its grey version."""
    rgb = np.ascontiguousarray(tum.image[::4, ::4])
    return rgb, rgb.mean(axis=2).astype(np.uint8)


@pytest.fixture(scope='module')
def image_rig(session, model_dir, small):
    rig = Rig(session, '/rel_image', {'model.name': model_dir, **IMAGE_PARAMS},
              ('image', 'camera_info'))
    rgb, grey = small
    rig.reference['rgb'] = rig.node.core.estimator.predict(rgb).depth
    rig.reference['grey'] = rig.node.core.estimator.predict(
        np.repeat(grey[..., None], 3, axis=2)).depth
    return rig


@pytest.fixture(scope='module')
def compressed_rig(session, model_dir, small):
    rig = Rig(session, '/rel_compressed',
              {'model.name': model_dir, 'input.compressed': True, **IMAGE_PARAMS},
              ('image/compressed', 'camera_info'))
    rig.reference['rgb'] = rig.node.core.estimator.predict(small[0]).depth
    return rig


LIDAR_PARAMS = {'input.mode': 'relative_depth', 'lidar.enabled': True,
                'lidar.T_camera_lidar': [float(v) for v in T_CAMERA_LIDAR.ravel()],
                'lidar.max_fit_age': 1.0, 'lidar.max_time_offset': 0.1, 'lidar.smoothing': 0.7,
                'cloud.max_depth': 10.0, 'diagnostics.period': 0.2,
                # compared with the ground truth pixel for pixel: flying pixels stay
                # (filter.edges is tested in test_node_quality.py)
                'filter.edges': False}


@pytest.fixture(scope='module')
def lidar_rig(session, tum):
    rig = Rig(session, '/rel_lidar', LIDAR_PARAMS,
              ('relative_depth', 'camera_info', 'lidar/points'))
    gt = tum.depth_gt
    filled = np.where(np.isfinite(gt), gt, np.nanmedian(gt)).astype(np.float32)
    rig.reference['prediction'] = (SCALE / filled + SHIFT).astype(np.float32)
    points_cam = simulated_lidar(gt, tum.K)
    T_inv = np.linalg.inv(T_CAMERA_LIDAR)

    def scan(depth_factor: float = 1.0) -> np.ndarray:
        """The simulated scan in the LiDAR frame, its camera-frame depths times a factor."""
        p = points_cam * depth_factor
        return (p @ T_inv[:3, :3].T + T_inv[:3, 3]).astype(np.float32)

    rig.scan = scan
    rig.reference['gt'] = gt
    rig.intr = intrinsics_from_fields(tum.width, tum.height, tum.K.ravel(), tum.D,
                                      tum.distortion_model, [0.0] * 12, [0.0] * 9)
    good_metric_frame(rig)  # every case starts from a node that has a good camera_info
    return rig


# ------------------------------------------------------------------------ raw images
def _bad_images(rgb: np.ndarray, stamp: tuple[int, int]) -> dict[str, tuple[Image, str]]:
    """Bad sensor_msgs/Image messages and a fragment of the reason the node must log."""
    h, w = rgb.shape[:2]
    good = raw(rgb, 'rgb8', stamp)
    data = bytes(good.data)
    big = np.zeros((480, 640, 3), np.uint8)
    return {
        'unknown encoding': (raw(rgb, 'rgb8', stamp, encoding='nv12'),
                             "unsupported encoding 'nv12'"),
        'empty encoding': (raw(rgb, 'rgb8', stamp, encoding=''), "unsupported encoding ''"),
        'data shorter than step*height': (raw(rgb, 'rgb8', stamp, data=data[:-1]),
                                          f'data is {len(data) - 1} bytes'),
        'data longer than step*height': (raw(rgb, 'rgb8', stamp, data=data + bytes(7)),
                                         f'data is {len(data) + 7} bytes'),
        'step smaller than width*bpp': (raw(rgb, 'rgb8', stamp, step=w * 3 - 3,
                                            data=data[:(w * 3 - 3) * h]),
                                        f'step {w * 3 - 3} is smaller'),
        'zero width': (raw(rgb, 'rgb8', stamp, width=0, step=0, data=b''),
                       f'empty image 0x{h}'),
        'zero height': (raw(rgb, 'rgb8', stamp, height=0, data=b''), f'empty image {w}x0'),
        'odd width yuv422': (raw(rgb, 'rgb8', stamp, encoding='yuv422', width=w - 1,
                                 step=(w - 1) * 2, data=data[:(w - 1) * 2 * h]), 'odd'),
        'bayer one row': (raw(rgb[:1, :, 0], 'mono8', stamp, encoding='bayer_rggb8'),
                          'smaller than one 2x2 Bayer cell'),
        'above input.max_pixels (refuse)': (raw(big, 'rgb8', stamp),
                                            f'640x480 is over input.max_pixels={MAX_PIXELS}'),
    }


BAD_IMAGE_CASES = list(_bad_images(np.zeros((120, 160, 3), np.uint8), (0, 0)))


@pytest.mark.parametrize('case', BAD_IMAGE_CASES)
def test_bad_image_is_counted_logged_and_the_next_good_frame_served(image_rig, small, case):
    rig = image_rig
    rgb = small[0]
    rig.fresh_log()
    bad_stamp, good_stamp = next_stamp(), next_stamp()
    msg, reason = _bad_images(rgb, bad_stamp)[case]
    before = rig.count('bad_image')
    rig.probe.publish('image', msg)
    rig.wait_count('bad_image', before + 1)
    lines = rig.log.matching('refused')
    assert len(lines) == 1 and reason in lines[0], (reason, lines)
    assert 'bad image messages so far' in lines[0]
    rig.probe.publish('image', raw(rgb, 'rgb8', good_stamp))
    served_right(rig, good_stamp, rig.reference['rgb'])
    assert rig.probe.wait_stamp('depth/relative', bad_stamp, timeout=0.01) is None
    assert rig.count('bad_image') == before + 1


def test_bad_images_are_throttled_to_one_line_with_a_running_count(image_rig, small):
    rig = image_rig
    rgb = small[0]
    rig.fresh_log()
    before = rig.count('bad_image')
    for i in range(5):  # one at a time: the subscription keeps only the newest message
        rig.probe.publish('image', raw(rgb, 'rgb8', next_stamp(), encoding='nv12'))
        rig.wait_count('bad_image', before + i + 1)
    lines = rig.log.matching('refused')
    assert len(lines) == 1, lines
    assert f'(bad image messages so far: {before + 1})' in lines[0]
    good = next_stamp()
    rig.probe.publish('image', raw(rgb, 'rgb8', good))
    served_right(rig, good, rig.reference['rgb'])


@pytest.mark.parametrize('encoding', ['mono16', 'bgr16'])
def test_big_endian_16_bit_is_decoded_not_refused(image_rig, small, encoding):
    rig = image_rig
    rgb, grey = small
    rng = np.random.default_rng(0)
    if encoding == 'mono16':
        high, reference = grey, rig.reference['grey']
    else:
        high, reference = np.ascontiguousarray(rgb[..., ::-1]), rig.reference['rgb']
    samples = (high.astype('>u2') << 8) | rng.integers(0, 256, high.shape).astype('>u2')
    channels = 1 if samples.ndim == 2 else 3
    stamp = next_stamp()
    msg = Image(header=make_header(FRAME, *stamp), height=120, width=160, encoding=encoding,
                is_bigendian=1, step=160 * 2 * channels)
    msg.data = samples.astype('>u2').tobytes()
    before = rig.count('bad_image')
    rig.probe.publish('image', msg)
    served_right(rig, stamp, reference)
    assert rig.count('bad_image') == before


@contextlib.contextmanager
def held_forward(estimator: Any, entered: threading.Event,
                 release: threading.Event) -> Iterator[None]:
    """Hold every forward pass until ``release`` is set; ``entered`` is set when one starts."""
    predict = estimator.predict

    def held(image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        entered.set()
        release.wait(TIMEOUT)
        return predict(image, *args, **kwargs)

    estimator.predict = held
    try:
        yield
    finally:
        release.set()
        del estimator.predict


def test_bad_frame_never_displaces_a_waiting_good_frame(image_rig, small):
    """The model is held inside a forward pass: frame A in the model, good frame B waiting,
    then a bad frame C arrives. B must still be served, right."""
    rig = image_rig
    rgb = small[0]
    entered, release = threading.Event(), threading.Event()
    with held_forward(rig.node.core.estimator, entered, release):
        a, b, c = next_stamp(), next_stamp(), next_stamp()
        received = rig.count('frames_received')
        dropped, bad = rig.count('frames_dropped'), rig.count('bad_image')
        rig.probe.publish('image', raw(rgb, 'rgb8', a))
        assert entered.wait(TIMEOUT)
        rig.probe.publish('image', raw(rgb, 'rgb8', b))
        rig.wait_count('frames_received', received + 2)
        rig.probe.publish('image', raw(rgb, 'rgb8', c, encoding='nv12'))
        rig.wait_count('bad_image', bad + 1)
        release.set()
        served_right(rig, a, rig.reference['rgb'])
        served_right(rig, b, rig.reference['rgb'])
        assert rig.count('frames_dropped') == dropped


# -------------------------------------------------------------------- compressed images
def _bad_compressed(rgb: np.ndarray) -> dict[str, tuple[str, bytes, str]]:
    """(format, data, reason fragment) of bad CompressedImage messages."""
    jpeg = encoded(rgb, 'JPEG', quality=90)
    return {
        'garbage bytes': ('jpeg', bytes(np.random.default_rng(1).integers(
            0, 256, 5000, dtype=np.uint8)), 'neither JPEG nor PNG'),
        'empty data': ('jpeg', b'', 'neither JPEG nor PNG'),
        'truncated JPEG': ('jpeg', jpeg[:len(jpeg) // 2], 'do not decode'),
        'corrupt JPEG header': ('jpeg', jpeg[:3] + bytes(40) + jpeg[43:], 'JPEG'),
        'unsupported format (BMP)': ('bmp', encoded(rgb, 'BMP'), 'neither JPEG nor PNG'),
        'unsupported format (compressedDepth)': ('16UC1; compressedDepth png',
                                                 encoded(rgb, 'PNG'), 'compressedDepth'),
        'above input.max_pixels (refuse)': (
            'png', encoded(np.zeros((480, 640, 3), np.uint8), 'PNG'),
            f'more than max_pixels={MAX_PIXELS}'),
    }


BAD_COMPRESSED_CASES = list(_bad_compressed(np.zeros((120, 160, 3), np.uint8)))


def compressed(stamp: tuple[int, int], fmt: str, data: bytes) -> CompressedImage:
    return CompressedImage(header=make_header(FRAME, *stamp), format=fmt, data=data)


@pytest.mark.parametrize('case', BAD_COMPRESSED_CASES)
def test_bad_compressed_image_is_counted_logged_and_the_next_good_frame_served(
        compressed_rig, small, case):
    rig = compressed_rig
    rgb = small[0]
    rig.fresh_log()
    fmt, data, reason = _bad_compressed(rgb)[case]
    bad_stamp, good_stamp = next_stamp(), next_stamp()
    before = rig.count('bad_image')
    rig.probe.publish('image/compressed', compressed(bad_stamp, fmt, data))
    rig.wait_count('bad_image', before + 1)
    lines = rig.log.matching('image/compressed refused')
    assert len(lines) == 1 and reason in lines[0], (reason, lines)
    rig.probe.publish('image/compressed', compressed(good_stamp, 'png', encoded(rgb, 'PNG')))
    served_right(rig, good_stamp, rig.reference['rgb'])
    assert rig.probe.wait_stamp('depth/relative', bad_stamp, timeout=0.01) is None


def test_corrupt_jpeg_displacing_a_waiting_frame_falls_back_to_it(compressed_rig, small):
    """A corrupt JPEG can only be told by decoding it; when it displaced a waiting good
    frame, that frame is served instead."""
    rig = compressed_rig
    rgb = small[0]
    entered, release = threading.Event(), threading.Event()
    png = encoded(rgb, 'PNG')
    jpeg = encoded(rgb, 'JPEG', quality=90)
    with held_forward(rig.node.core.estimator, entered, release):
        a, b, c = next_stamp(), next_stamp(), next_stamp()
        received = rig.count('frames_received')
        dropped, bad = rig.count('frames_dropped'), rig.count('bad_image')
        rig.probe.publish('image/compressed', compressed(a, 'png', png))
        assert entered.wait(TIMEOUT)
        rig.probe.publish('image/compressed', compressed(b, 'png', png))
        rig.wait_count('frames_received', received + 2)
        rig.probe.publish('image/compressed', compressed(c, 'jpeg', jpeg[:len(jpeg) // 2]))
        rig.wait_count('frames_received', received + 3)
        release.set()
        served_right(rig, a, rig.reference['rgb'])
        served_right(rig, b, rig.reference['rgb'])
        assert rig.count('bad_image') == bad + 1
        assert rig.count('frames_dropped') == dropped


# ------------------------------------------------------------------------------ faults
def test_forward_failures_skip_frames_turn_diagnostics_error_and_recover(image_rig, small):
    rig = image_rig
    rgb = small[0]
    rig.fresh_log()
    estimator = rig.node.core.estimator
    predict = estimator.predict
    failures = {'left': 4}

    def failing(image, *args, **kwargs):
        if failures['left'] > 0:
            failures['left'] -= 1
            raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return predict(image, *args, **kwargs)

    estimator.predict = failing
    try:
        before = rig.count('forward_failures')
        failed = []
        for i in range(4):
            failed.append(next_stamp())
            rig.probe.publish('image', raw(rgb, 'rgb8', failed[-1]))
            rig.wait_count('forward_failures', before + i + 1)
        # ERROR starts at 3 failures in a row: wait for the status that counts all 4, not for
        # the first ERROR (one sent between the 3rd and 4th failure may still be on its way)
        status = rig.diagnostics(lambda s: 'forward pass failing (4 in a row)' in s.message)
        assert status.level == DiagnosticStatus.ERROR
        assert int(status_values(status)['forward_failures']) >= before + 4
        lines = rig.log.matching('forward pass failed')
        assert len(lines) == 1 and 'CUDA out of memory' in lines[0], lines

        good = next_stamp()
        rig.probe.publish('image', raw(rgb, 'rgb8', good))
        served_right(rig, good, rig.reference['rgb'])
        # the first status after the recovery: ERROR is over, the failures are still news
        status = rig.diagnostics(lambda s: s.level != DiagnosticStatus.ERROR)
        assert status.level == DiagnosticStatus.WARN and 'forward_failures' in status.message
        for stamp in failed:
            assert rig.probe.wait_stamp('depth/relative', stamp, timeout=0.01) is None
    finally:
        del estimator.predict


def test_an_exception_after_the_forward_pass_skips_only_that_frame(image_rig, small, monkeypatch):
    from depth_node import frame_finish

    rig = image_rig
    rgb = small[0]
    rig.fresh_log()

    def broken(*args, **kwargs):
        raise ValueError('injected fault')

    # the first step after the forward pass and depth/relative
    monkeypatch.setattr(frame_finish, 'fitted_intrinsics', broken)
    try:
        stamp = next_stamp()
        before = rig.count('frame_errors')
        rig.probe.publish('image', raw(rgb, 'rgb8', stamp))
        rig.wait_count('frame_errors', before + 1)
        # the prediction itself was published before the fault
        served_right(rig, stamp, rig.reference['rgb'])
        assert 'ValueError: injected fault' in rig.log.matching('frame skipped')[0]
    finally:
        monkeypatch.undo()
    good = next_stamp()
    rig.probe.publish('image', raw(rgb, 'rgb8', good))
    served_right(rig, good, rig.reference['rgb'])


@pytest.mark.parametrize('params, fragment', [
    ({'cloud.stride': 0}, 'cloud.stride'),
    ({'cloud.max_depth': 0.05}, 'cloud.max_depth must be greater than cloud.min_depth'),
    ({'model.precision': 'fp8'}, 'model.precision must be one of'),
    ({'model.device': 'gpu'}, "model.device must be 'auto'"),
    ({'lidar.T_camera_lidar': [1.0, 2.0]}, 'lidar.T_camera_lidar'),
    ({'model.name': '/nonexistent/model/dir'}, '/nonexistent/model/dir'),
], ids=['stride 0', 'max_depth < min_depth', 'precision fp8', 'device gpu', 'T 2 values',
        'model missing'])
def test_configuration_error_before_any_topic_is_advertised(session, monkeypatch, params,
                                                            fragment):
    created = []
    for method in ('create_publisher', 'create_subscription'):
        original = getattr(Node, method)

        def recording(self, msg_type, topic, *args, _original=original, **kwargs):
            created.append(topic)
            return _original(self, msg_type, topic, *args, **kwargs)
        monkeypatch.setattr(DepthNode, method, recording)
    overrides = [Parameter(k, value=v) for k, v in
                 {'model.device': 'cpu', 'model.warmup': False, **params}.items()]
    with pytest.raises(ConfigError, match=fragment.replace('.', r'\.').replace('(', r'\(')):
        DepthNode(context=session.context, namespace='/rel_config',
                  parameter_overrides=overrides)
    # only what every rclpy node has; none of depth_node's topics
    assert set(created) <= {'/parameter_events', '/rosout'}, created


@pytest.mark.parametrize('change', [
    {'cloud.stride': 0}, {'cloud.max_depth': 0.05}, {'lidar.smoothing': 1.5},
    {'lidar.T_camera_lidar': [1.0, 2.0]}, {'lidar.T_camera_lidar': [0.0]},
], ids=['stride 0', 'max_depth < min_depth', 'smoothing 1.5', 'T 2 values', 'T unset'])
def test_runtime_change_refused_with_the_startup_message(session, lidar_rig, change):
    """``ros2 param set`` of a bad value on a running node is refused, the node keeps its
    configuration, and the reason is the message the same value gets at startup."""
    before = dict(lidar_rig.node.core.cfg.values)
    result = lidar_rig.node.set_parameters([Parameter(k, value=v) for k, v in change.items()])
    assert not result[0].successful
    assert lidar_rig.node.core.cfg.values == before
    if 'lidar.T_camera_lidar' in change and change['lidar.T_camera_lidar'] == [0.0] and \
            importlib.util.find_spec('tf2_ros') is not None:
        # with tf2 a node may start without extrinsics; this one started with them
        assert TF2_NOT_STARTED in result[0].reason
        return
    overrides = [Parameter(k, value=v) for k, v in {**LIDAR_PARAMS, **change}.items()]
    with pytest.raises(ConfigError) as at_startup:
        DepthNode(context=session.context, namespace='/rel_config_same',
                  parameter_overrides=overrides)
    assert result[0].reason == str(at_startup.value)


# ------------------------------------------------------------------- LiDAR and CameraInfo
def publish_lidar_frame(rig: Rig, stamp: tuple[int, int], info: Any = 'good',
                        scan: Any = 'good', scan_offset: float = 0.0,
                        prediction: Any = None) -> dict[str, str]:
    """camera_info (a CameraInfo, 'good' or None), a scan ('good', a PointCloud2 or None) at
    ``stamp + scan_offset``, then the relative depth; returns the frame's depth/alignment."""
    header = make_header(FRAME, *stamp)
    if isinstance(info, str):
        info = camera_info_msg(rig.intr, header)
    if info is not None:
        bad_info = rig.count('bad_camera_info')
        rig.probe.publish('camera_info', info)
        # camera_info and image come on different topics: wait until the node holds this one
        # (or refused it)
        deadline = time.monotonic() + TIMEOUT
        while rig.count('bad_camera_info') == bad_info and not holds_camera_info(rig.node, info):
            assert time.monotonic() < deadline, 'the camera_info never arrived'
            time.sleep(0.01)
    if isinstance(scan, str):
        t = stamp[0] + stamp[1] * 1e-9 + scan_offset
        sec = int(np.floor(t))
        scan = _cloud(rig.scan(), (sec, int(round((t - sec) * 1e9))))
    received = rig.count('frames_received')
    if scan is not None:
        bad_before = rig.count('bad_lidar')
        rig.probe.publish('lidar/points', scan)
        # let the scan land before the frame: stored, or refused and counted
        deadline = time.monotonic() + TIMEOUT
        while rig.count('bad_lidar') == bad_before and not holds_scan(rig.node, scan):
            assert time.monotonic() < deadline, 'the scan never arrived'
            time.sleep(0.01)
    frame = prediction if prediction is not None else rig.reference['prediction']
    rig.probe.publish('relative_depth', image_msg(frame, '32FC1', header))
    rig.wait_count('frames_received', received + 1)
    status = rig.probe.wait_stamp('depth/alignment', stamp, timeout=TIMEOUT)
    assert status is not None, f'no depth/alignment for {stamp}'
    return status_values(status)


def good_metric_frame(rig: Rig) -> None:
    """A good frame after a bad one: metric depth accurate against ground truth, right K."""
    stamp = next_stamp()
    values = publish_lidar_frame(rig, stamp)
    assert values['state'] == 'ok', values
    assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.02)
    depth_msg = rig.probe.wait_stamp('depth/image', stamp, timeout=TIMEOUT)
    assert depth_msg is not None and depth_msg.header.frame_id == FRAME
    depth = image_to_array(depth_msg)
    metrics = compute_metrics(depth, rig.reference['gt'], max_depth=10.0)
    assert metrics['abs_rel'] < 0.01 and metrics['coverage'] > 0.95, metrics
    info = rig.probe.wait_stamp('depth/camera_info', stamp, timeout=TIMEOUT)
    assert info is not None
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), rig.intr.K)


@pytest.fixture
def lidar(lidar_rig):
    lidar_rig.fresh_log()
    return lidar_rig


def _camera_info(rig: Rig, stamp: tuple[int, int], **changes: Any) -> CameraInfo:
    fields = intrinsics_to_fields(rig.intr)
    fields.update(changes)
    return CameraInfo(header=make_header(FRAME, *stamp), **fields)


def _k_with(index: int, value: float) -> dict[str, list[float]]:
    k = [535.4, 0.0, 320.1, 0.0, 539.2, 247.6, 0.0, 0.0, 1.0]  # the TUM frame's K
    k[index] = value
    return {'k': k}


BAD_CAMERA_INFO = {
    'zero K': (dict(k=[0.0] * 9), 'not calibrated'),
    'NaN fx': (_k_with(0, float('nan')), 'non-finite'),
    'Inf cx': (_k_with(2, float('inf')), 'non-finite'),
    'negative fx': (_k_with(0, -535.4), 'positive fx'),
    'zero principal point': (_k_with(5, 0.0), 'zero principal point'),
    'unknown distortion model': (dict(distortion_model='kannala_brandt'),
                                 "unknown distortion_model 'kannala_brandt'"),
    'zero size': (dict(width=0, height=0), 'positive'),
    'NaN in D': (dict(d=[0.0, float('nan'), 0.0, 0.0, 0.0]), 'non-finite'),
}


@pytest.mark.parametrize('case', list(BAD_CAMERA_INFO))
def test_bad_camera_info_refused_and_the_last_good_one_kept(lidar, case):
    changes, reason = BAD_CAMERA_INFO[case]
    stamp = next_stamp()
    before = lidar.count('bad_camera_info')
    values = publish_lidar_frame(lidar, stamp, info=_camera_info(lidar, stamp, **changes))
    lidar.wait_count('bad_camera_info', before + 1)
    lines = lidar.log.matching('camera_info refused')
    assert len(lines) == 1 and reason in lines[0], (reason, lines)
    # the frame used the last good camera_info: metric depth with the right K
    assert values['state'] == 'ok', values
    info = lidar.probe.wait_stamp('depth/camera_info', stamp, timeout=TIMEOUT)
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), lidar.intr.K)
    good_metric_frame(lidar)


def test_camera_info_of_another_size_same_aspect_is_scaled(lidar):
    stamp = next_stamp()
    K2 = lidar.intr.scaled(1280, 960).K  # the same camera at twice the size
    info = _camera_info(lidar, stamp, width=1280, height=960, k=[float(v) for v in K2.ravel()],
                        p=[0.0] * 12)
    before = lidar.count('bad_camera_info')
    values = publish_lidar_frame(lidar, stamp, info=info)
    assert values['state'] == 'ok'
    assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.02)
    out = lidar.probe.wait_stamp('depth/camera_info', stamp, timeout=TIMEOUT)
    assert (out.width, out.height) == (640, 480)
    np.testing.assert_allclose(np.asarray(out.k).reshape(3, 3), lidar.intr.K, rtol=1e-12)
    assert lidar.count('bad_camera_info') == before


def test_camera_info_of_another_aspect_ratio_is_refused(lidar):
    stamp = next_stamp()
    before = lidar.count('bad_camera_info')
    values = publish_lidar_frame(lidar, stamp, info=_camera_info(lidar, stamp, height=360))
    lidar.wait_count('bad_camera_info', before + 1)
    assert 'different aspect ratio' in lidar.log.matching('camera_info')[0]
    assert values['state'] == 'no_fit'  # no projection without intrinsics that fit
    assert lidar.probe.wait_stamp('depth/image', stamp, timeout=0.5) is None
    assert lidar.probe.wait_stamp('depth/camera_info', stamp, timeout=0.01) is None
    assert lidar.probe.wait_stamp('depth/relative', stamp, timeout=TIMEOUT) is not None
    good_metric_frame(lidar)


def test_distortion_with_more_coefficients_than_the_model_is_refused(lidar):
    """plumb_bob with 8 non-zero coefficients is refused on arrival (the projection could not
    use it); the frame still gets its relative depth and nothing fails."""
    stamp = next_stamp()
    before = lidar.count('bad_camera_info')
    errors = lidar.count('frame_errors')
    publish_lidar_frame(lidar, stamp, info=_camera_info(
        lidar, stamp, d=[0.01, 0.0, 0.0, 0.0, 0.0, 0.01, 0.01, 0.01]))
    lidar.wait_count('bad_camera_info', before + 1)
    assert 'plumb_bob uses 5 distortion coefficients' in lidar.log.matching('camera_info')[0]
    assert lidar.probe.wait_stamp('depth/relative', stamp, timeout=TIMEOUT) is not None
    assert lidar.count('frame_errors') == errors
    good_metric_frame(lidar)


def _cloud(points: np.ndarray, stamp: tuple[int, int], **changes: Any) -> PointCloud2:
    msg = xyz_cloud_msg(points, make_header('lidar', *stamp))
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


def _bad_clouds(points: np.ndarray, stamp: tuple[int, int]) -> dict[str, tuple[Any, str]]:
    good = _cloud(points, stamp)
    n = good.width
    data = bytes(good.data)
    xy = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
          for f in good.fields if f.name != 'z']
    return {
        'missing z': (_cloud(points, stamp, fields=xy), 'no field z'),
        'point_step too small': (_cloud(points, stamp, point_step=8, row_step=8 * n,
                                        data=data[:8 * n]), 'does not fit in point_step'),
        'row_step too small': (_cloud(points, stamp, row_step=12 * n - 1),
                               'smaller than width * point_step'),
        'data shorter than row_step*height': (_cloud(points, stamp, data=data[:-12]),
                                              'the header does not describe the data'),
        'data longer than row_step*height': (_cloud(points, stamp, data=data + bytes(12)),
                                             'the header does not describe the data'),
        'empty cloud': (_cloud(points, stamp, width=0, row_step=0, data=b''), 'empty cloud'),
        'integer coordinates': (_cloud(points, stamp, fields=xy + [PointField(
            name='z', offset=8, datatype=PointField.UINT32, count=1)]), 'only FLOAT32'),
    }


BAD_CLOUD_CASES = list(_bad_clouds(np.zeros((4, 3), np.float32), (0, 0)))


@pytest.mark.parametrize('case', BAD_CLOUD_CASES)
def test_bad_point_cloud_is_counted_logged_and_not_used(lidar, case):
    stamp = next_stamp()
    cloud, reason = _bad_clouds(lidar.scan(), stamp)[case]
    before = lidar.count('bad_lidar')
    values = publish_lidar_frame(lidar, stamp, scan=cloud)
    assert lidar.count('bad_lidar') == before + 1
    lines = lidar.log.matching('lidar/points refused')
    assert len(lines) == 1 and reason in lines[0], (reason, lines)
    assert values['state'] == 'no_fit', values  # the frame got no scan
    assert lidar.probe.wait_stamp('depth/image', stamp, timeout=0.5) is None
    good_metric_frame(lidar)


def test_non_finite_points_are_dropped_and_the_rest_fitted(lidar):
    points = lidar.scan().copy()
    rng = np.random.default_rng(2)
    bad = rng.random(len(points)) < 0.3
    points[bad, rng.integers(0, 3, bad.sum())] = rng.choice(
        [np.nan, np.inf, -np.inf], bad.sum())
    stamp = next_stamp()
    before = lidar.count('bad_lidar')
    values = publish_lidar_frame(lidar, stamp, scan=_cloud(points, stamp))
    assert values['state'] == 'ok', values
    assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.02)
    assert int(values['points_in_scan']) == int((~bad).sum())
    assert lidar.count('bad_lidar') == before


def test_all_nan_cloud_gives_no_fit_not_nonsense(lidar):
    points = np.full((1000, 3), np.nan, np.float32)
    stamp = next_stamp()
    values = publish_lidar_frame(lidar, stamp, scan=_cloud(points, stamp))
    assert values['state'] == 'no_fit', values
    assert lidar.probe.wait_stamp('depth/image', stamp, timeout=0.5) is None
    good_metric_frame(lidar)


def test_huge_cloud_is_served(lidar):
    """2 million points (24 MB), most behind the camera or far outside the image."""
    rng = np.random.default_rng(3)
    extra = rng.normal(scale=30.0, size=(2_000_000, 3)).astype(np.float32)
    extra[:, 0] = -np.abs(extra[:, 0]) - 1.0  # LiDAR x < 0: behind the camera
    points = np.concatenate([lidar.scan(), extra])
    stamp = next_stamp()
    values = publish_lidar_frame(lidar, stamp, scan=_cloud(points, stamp))
    assert values['state'] == 'ok', values
    assert int(values['points_in_scan']) == len(points)
    assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.02)


@pytest.mark.parametrize('offset', [0.5, -100.0, 1e6], ids=['future 0.5 s', 'past 100 s',
                                                            'future 11 days'])
def test_scan_far_from_the_image_or_in_the_future_is_not_paired(lidar, offset):
    stamp = next_stamp()
    before = lidar.count('lidar_unpaired')
    values = publish_lidar_frame(lidar, stamp, scan_offset=offset)
    assert values['state'] == 'no_fit', values
    assert lidar.count('lidar_unpaired') == before + 1
    assert lidar.probe.wait_stamp('depth/image', stamp, timeout=0.5) is None
    good_metric_frame(lidar)


def test_stamps_going_backwards_reset_the_smoothing(lidar):
    """A bag that loops: after the jump back, the fit starts afresh instead of blending with
    (or reusing) fits from the "future"."""
    first = next_stamp()
    values = publish_lidar_frame(lidar, first)
    assert values['state'] == 'ok'
    s1, s2 = float(values['scale']), 1 / (1.2 * SCALE)
    # 0.1 s later, LiDAR depths 20 % larger: the smoothing (0.7) blends the two fits
    later = (first[0], 100_000_000)
    values = publish_lidar_frame(lidar, later, scan=_cloud(lidar.scan(1.2), later))
    blended = float(values['scale'])
    assert s2 * 1.03 < blended < s1 * 0.98, (s1, blended, s2)
    # the bag loops back 5 s: the 20 % fit alone, not blended with the fits "from the future"
    loop = (first[0] - 5, 0)
    values = publish_lidar_frame(lidar, loop, scan=_cloud(lidar.scan(1.2), loop))
    assert values['state'] == 'ok'
    assert float(values['scale']) == pytest.approx(s2, rel=0.01)
    assert float(values['fit_age']) == 0.0
    # back another 0.5 s, without a scan: no fit to reuse (not "stale" with a negative age)
    back = (first[0] - 6, 500_000_000)
    values = publish_lidar_frame(lidar, back, scan=None)
    assert values['state'] == 'no_fit', values
    assert lidar.probe.wait_stamp('depth/image', back, timeout=0.5) is None
    good_metric_frame(lidar)


def test_non_finite_relative_depth_never_becomes_metres(lidar):
    prediction = lidar.reference['prediction'].copy()
    prediction[:40] = np.nan
    prediction[40:80] = np.inf
    prediction[80:120] = -np.inf
    prediction[120:160] = -5.0
    stamp = next_stamp()
    values = publish_lidar_frame(lidar, stamp, prediction=prediction)
    assert values['state'] == 'ok', values
    depth = image_to_array(lidar.probe.wait_stamp('depth/image', stamp, timeout=TIMEOUT))
    assert not np.isinf(depth).any()
    finite = depth[np.isfinite(depth)]
    assert (finite > 0).all() and (finite <= 10.0).all()
    assert np.isnan(depth[:160]).all()


def test_bad_relative_depth_image_counted_and_next_served(lidar):
    stamp = next_stamp()
    before = lidar.count('bad_image')
    msg = image_msg(lidar.reference['prediction'], '32FC1', make_header(FRAME, *stamp))
    msg.encoding = 'rgb8'
    lidar.probe.publish('relative_depth', msg)
    lidar.wait_count('bad_image', before + 1)
    assert 'relative_depth refused' in lidar.log.matching('refused')[0]
    good_metric_frame(lidar)


# ------------------------------------------------------------------------------ signals
def _entry_point() -> list[str]:
    exe = shutil.which('depth_node', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'depth_node.node']


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_signal_in_the_middle_of_a_forward_pass_stops_within_2_s(small, signum):
    """A full-size random Depth Anything V2 Small (about a second per frame on a CPU); frames
    keep coming at 10 Hz, so the worker starts the next forward pass as soon as one output
    is out, and the signal is sent right then."""
    ns = f'/rel_signal_{signum}'
    proc = subprocess.Popen(
        _entry_point() + ['--ros-args', '-p', 'model.random_init:=depth-anything-v2-small',
                          '-p', 'model.device:=cpu', '-p', 'model.warmup:=false',
                          '-p', 'model.engine:=torch', '-r', f'__ns:={ns}'],
        env={**os.environ, 'PYTHONUNBUFFERED': '1'}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    session = RosSession()
    elapsed = None
    try:
        probe = session.probe(namespace=ns, outputs=('depth/relative',))
        assert probe.wait_subscribers('image', timeout=120.0), 'node never subscribed image'
        rgb = small[0]
        for i in itertools.count():
            assert i < 1200, 'no output within 120 s'
            probe.publish('image', raw(rgb, 'rgb8', (7, i)))
            if probe.wait_for('depth/relative', timeout=0.1) is not None:
                break
        # the worker took the waiting frame as soon as it had published; let that forward
        # pass get going (it takes 0.5-3 s on the CPUs this runs on)
        probe.publish('image', raw(rgb, 'rgb8', (8, 0)))
        time.sleep(0.25)
        t0 = time.monotonic()
        proc.send_signal(signum)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        elapsed = time.monotonic() - t0
    finally:
        session.close()
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    print(f'{signal.Signals(signum).name} mid-forward: stopped in {elapsed:.2f} s')
    assert elapsed is not None and elapsed < 2.0, f'shutdown took {elapsed} s:\n{out}'
    assert proc.returncode in (0, -signum), out
    assert 'Traceback' not in out, out
    assert 'frame skipped' not in out, out  # the abandoned frame is not an error


def test_malformed_command_line_exits_2_with_what_to_fix():
    """rcl itself refuses the arguments (an array mixing integers and doubles), before the node
    exists: a configuration error, not a traceback."""
    proc = subprocess.run(_entry_point() + ['--ros-args', '-p', 'lidar.T_camera_lidar:=[0,1.0]'],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert 'configuration error' in out and 'lidar.T_camera_lidar' in out, out
    assert 'Traceback' not in out, out
