"""``depth_node-bag``: depth over a recorded ROS 2 bag, offline, every frame.

ROS-free: bags are read and written with ``rosbags`` (pure Python, both storage formats), so
no ROS install is needed; on a ROS 2 machine it works the same. Each frame goes through
:class:`depth_node.frame_pipeline.FramePipeline`, the node's own per-frame code, with the
node's parameters (the same YAML file, validated the same way).

Command line::

    depth_node-bag INPUT OUTPUT [--params-file FILE] [-p name:=value ...]
                   [--image-topic T] [--camera-info-topic T] [--lidar-topic T]
                   [--namespace NS] [--storage mcap|sqlite3] [--start S] [--duration D]
                   [--every N] [--no-copy] [--overwrite] [--colored] [--points]

Unlike the live node, nothing is dropped: every frame in the window is processed, in bag order.
A frame is paired with the camera_info of the latest stamp at or before its own and with the
LiDAR scan whose stamp is nearest (before or after it, within ``lidar.max_time_offset``): the
reader looks ahead in the bag for both. Each output message carries the input image's header and
is written at the input image's receive time (its bag timestamp), beside a copy of every input
topic (unless ``--no-copy``), so the output plays back as one recording. The LiDAR extrinsics
are ``lidar.T_camera_lidar``, or, when it is unset, the bag's ``/tf_static`` composed through the
frame tree (:class:`Extrinsics`).

Three threads: the reader (reads, deserializes and decodes the next frames, pairs them), the
main thread (the forward pass and everything after it, as the node's worker) and the writer
(builds, serializes and writes messages); bounded queues between them.

Exit codes: 0 done; 1 the input could not be read to its end (what was processed before is in
OUTPUT, a valid bag) or the output could not be written; 2 a usage or configuration error
(nothing written); 130 interrupted by SIGINT or SIGTERM (OUTPUT holds the frames processed until
then, a valid bag).
"""

from __future__ import annotations

import argparse
from collections import Counter, deque
from dataclasses import dataclass, field
import difflib
import math
from pathlib import Path
import queue
import shutil
import signal
import statistics
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from depth_node import config as cfg
from depth_node import prompt as pr
from depth_node.camera_info import CameraInfoError, Intrinsics, intrinsics_to_fields
from depth_node.frame_pipeline import (
    alignment_status, AlignmentReport, Frame, FramePipeline, image_encoding, load_estimator,
    nearest_scan, OUTPUT_TOPICS, Problem, read_camera_info, read_scan, Scan, stamp_to_sec)
from depth_node.image_codec import ImageDecodeError
from depth_node.lidar import LidarError
from depth_node.packing import fill_cloud, fill_image
from depth_node.telemetry import Counters, StageTimer, Throttle
from depth_node.text import bounded, shorten
from depth_node.transforms import StaticTransforms

PROG = 'depth_node-bag'
NODE_NAME = 'depth_node'
"""The node name the parameter file is read for, and the name in ``depth/alignment``."""

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
POINT_CLOUD = 'sensor_msgs/msg/PointCloud2'
DIAGNOSTIC_STATUS = 'diagnostic_msgs/msg/DiagnosticStatus'
TF_MESSAGE = 'tf2_msgs/msg/TFMessage'
TF_STATIC = '/tf_static'
SET_T_CAMERA_LIDAR = ('set lidar.T_camera_lidar (16 values, row-major, LiDAR to camera optical '
                      'frame, e.g. from `ros2 run tf2_ros tf2_echo CAMERA_FRAME LIDAR_FRAME`)')
"""The fix for LiDAR extrinsics the bag cannot give."""

OUTPUT_TYPES = {'depth': IMAGE, 'relative': IMAGE, 'info': CAMERA_INFO, 'points': POINT_CLOUD,
                'colored': IMAGE, 'alignment': DIAGNOSTIC_STATUS}
"""Message type of each output key (:data:`depth_node.frame_pipeline.OUTPUT_TOPICS`)."""

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

LOOKAHEAD_S = 1.0
"""Bag time (s) the reader reads past a frame, at most, for a camera_info or LiDAR scan stamped
near it but recorded later (beyond ``lidar.max_time_offset`` for scans)."""

PROGRESS_PERIOD_S = 10.0
"""Seconds between plain progress lines (when stderr is not a terminal)."""

QUEUE_SIZE = 16
"""Messages waiting between two threads, at most (back-pressure on the reader)."""

MAX_SCANS, MAX_INFOS, MAX_PROMPTS = 64, 256, 64
"""Scans, camera_infos and depth prompts kept for pairing, at most (the oldest go first):
the lookahead needs about (the time offset + LOOKAHEAD_S) x their rate; the caps bound memory
when the camera stops and the LiDAR goes on."""


def _ignored(name: str) -> bool:
    """A parameter a node's file may set that means nothing offline (ignored, not refused)."""
    return name == 'use_sim_time' or name.startswith('qos_overrides.')


class BagError(Exception):
    """A command line, parameter or bag the tool cannot work with; the message says what to
    do. ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------- parameters
def read_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The parameters a ROS 2 parameter file gives node ``node_name``.

    Sections apply as rcl applies them: ``/**`` (or ``**``) first, then the node's own
    (``depth_node``, ``/depth_node`` or ``/<namespace>/depth_node``), a later value winning.
    Nested keys are joined with dots (``model: {name: x}`` is ``model.name``).

    Raises
    ------
    BagError
        When the file cannot be read or has no ``ros__parameters`` for the node.
    """
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BagError(f'--params-file {path}: cannot read it: {exc}') from exc
    if not isinstance(doc, dict):
        raise BagError(f'--params-file {path}: expected a mapping of node names to '
                       "'ros__parameters', as ros2 run ... --params-file takes")
    wildcard, own = [], []
    for key, section in doc.items():
        name = str(key)
        if name in ('/**', '**'):
            wildcard.append(section)
        elif name.lstrip('/') == node_name or name.endswith('/' + node_name):
            own.append(section)
    values: dict[str, Any] = {}
    for section in wildcard + own:
        params = section.get('ros__parameters') if isinstance(section, dict) else None
        if not isinstance(params, dict):
            raise BagError(f"--params-file {path}: a section has no 'ros__parameters' mapping")
        values.update(_flatten(params))
    if not wildcard and not own:
        raise BagError(f"--params-file {path}: no '{node_name}:' or '/**:' section (found "
                       f'{", ".join(shorten(str(k)) for k in doc) or "none"})')
    return values


def _flatten(params: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``-p name:=value`` arguments as a dict; values are read as YAML, as ``ros2 run`` does
    (``true``, ``2``, ``0.5``, ``[1.0, 2.0]``, else a string).

    Raises
    ------
    BagError
        For an item without ``:=``.
    """
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition(':=')
        if not sep or not name:
            raise BagError(f'-p {shorten(item)}: write it as name:=value, e.g. '
                           '-p lidar.enabled:=true')
        try:
            values[name.strip()] = yaml.safe_load(text) if text.strip() else ''
        except yaml.YAMLError:
            values[name.strip()] = text
    return values


def node_config(params_file: Optional[str], overrides: Sequence[str]) -> cfg.NodeConfig:
    """The node's parameters: its defaults, then ``params_file``, then ``-p`` overrides,
    validated as the node validates them.

    Raises
    ------
    BagError
        For an unknown parameter (with the nearest known names) or an invalid value.
    """
    values = read_params_file(params_file) if params_file else {}
    values.update(parse_overrides(overrides))
    unknown = [n for n in values if n not in cfg.PARAMS_BY_NAME and not _ignored(n)]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, cfg.PARAMS_BY_NAME, n=2)
            hints.append(shorten(name) + (f' (did you mean {" or ".join(close)}?)' if close
                                          else ''))
        raise BagError(f'unknown parameter(s): {", ".join(hints)}; {PROG} --help lists them')
    try:
        config = cfg.validate_values(values)
    except cfg.ConfigError as exc:
        raise BagError(f'configuration error: {exc}') from exc
    if config['input.cameras']:
        raise BagError('input.cameras is set: depth_node-bag processes one camera per run; '
                       'run it once per camera with --image-topic (and --namespace)')
    return config


# ------------------------------------------------------------------------------ extrinsics
class Extrinsics:
    """Where the LiDAR-to-camera transform comes from: ``lidar.T_camera_lidar``, or the
    bag's ``/tf_static`` composed as tf2 would (:class:`~depth_node.transforms.StaticTransforms`)
    when that parameter is unset; :meth:`lookup` is the pipeline's ``lookup_tf``."""

    def __init__(self, tree: Optional[StaticTransforms], log: '_Log') -> None:
        self.tree = tree
        self.log = log
        self.used: dict[tuple[str, str], list[str]] = {}
        self.missing: set[tuple[str, str]] = set()
        self._matrices: dict[tuple[str, str], np.ndarray] = {}

    @classmethod
    def read(cls, reader: Any, typestore: Any, config: cfg.NodeConfig, topics: 'Topics',
             log: '_Log') -> 'Extrinsics':
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


# ---------------------------------------------------------------------------------- topics
@dataclass(frozen=True)
class Topics:
    """The input topics: the frames (``kind`` as :data:`~depth_node.frame_pipeline.INPUT_TOPICS`
    names it), their camera_info (or None), the LiDAR scans (or None) and, with
    ``prompt.source: depth_image``, the depth images that prompt the model (or None)."""

    image: str
    kind: str
    camera_info: Optional[str]
    lidar: Optional[str]
    prompt: Optional[str] = None


def _only(candidates: list[str], what: str, option: str) -> Optional[str]:
    if len(candidates) > 1:
        raise BagError(f'the bag has {len(candidates)} {what} topics: '
                       f'{", ".join(sorted(candidates))}; choose one with {option}')
    return candidates[0] if candidates else None


def select_topics(types: dict[str, str], config: cfg.NodeConfig, image: Optional[str] = None,
                  camera_info: Optional[str] = None, lidar: Optional[str] = None,
                  prompt: Optional[str] = None) -> Topics:
    """The topics to read, from the bag's ``{topic: message type}`` and the options given.

    Defaults: the only Image topic (a CompressedImage topic with ``input.compressed``, or when
    the bag has no Image topic), its ``camera_info`` sibling (else the only CameraInfo topic),
    the only PointCloud2 topic when ``lidar.enabled``. The depth prompt topic of
    ``prompt.source: depth_image`` is always named (``--prompt-topic``).

    Raises
    ------
    BagError
        For a missing topic, a topic of the wrong type, or an ambiguous bag (the candidates
        are listed).
    """
    def of_type(*msgtypes: str) -> list[str]:
        return [t for t, m in types.items() if m in msgtypes]

    def check(topic: str, option: str, *msgtypes: str) -> str:
        if topic not in types:
            have = ', '.join(sorted(of_type(*msgtypes))) or 'none'
            raise BagError(f'{option} {shorten(topic)}: no such topic in the bag ('
                           f'{" or ".join(m.rsplit("/", 1)[1] for m in msgtypes)} topics: '
                           f'{have})')
        if types[topic] not in msgtypes:
            raise BagError(f'{option} {shorten(topic)} is a {types[topic]}, not a '
                           f'{" or ".join(msgtypes)}')
        return topic

    relative = config['input.mode'] == 'relative_depth'
    if relative:
        preferred = [IMAGE]
    else:
        preferred = [COMPRESSED, IMAGE] if config['input.compressed'] else [IMAGE, COMPRESSED]
    if image is not None:
        check(image, '--image-topic', *preferred)
    else:
        for msgtype in preferred:
            image = _only(of_type(msgtype), msgtype.rsplit('/', 1)[1], '--image-topic')
            if image is not None:
                break
        if image is None:
            raise BagError(f'the bag has no {" or ".join(preferred)} topic')
    kind = 'relative' if relative else 'compressed' if types[image] == COMPRESSED else 'image'

    if camera_info is not None:
        check(camera_info, '--camera-info-topic', CAMERA_INFO)
    else:
        base = image[:-len('/compressed')] if image.endswith('/compressed') else image
        sibling = base.rsplit('/', 1)[0] + '/camera_info'
        camera_info = sibling if types.get(sibling) == CAMERA_INFO else _only(
            of_type(CAMERA_INFO), 'CameraInfo', '--camera-info-topic')

    if lidar is not None:
        check(lidar, '--lidar-topic', POINT_CLOUD)
    elif config['lidar.enabled']:
        lidar = _only(of_type(POINT_CLOUD), 'PointCloud2', '--lidar-topic')
        if lidar is None:
            raise BagError('lidar.enabled is true but the bag has no PointCloud2 topic')
    if not config['lidar.enabled']:
        lidar = None  # a --lidar-topic without lidar.enabled is not read
    if config['prompt.source'] == 'depth_image':
        if prompt is None:
            raise BagError("prompt.source is 'depth_image': name the registered depth images "
                           'with --prompt-topic (Image topics: '
                           f'{", ".join(sorted(t for t in of_type(IMAGE) if t != image))})')
        check(prompt, '--prompt-topic', IMAGE)
    else:
        prompt = None
    return Topics(image, kind, camera_info, lidar, prompt)


def output_topic(namespace: str, key: str) -> str:
    """The output topic of ``key`` under ``namespace`` (``/`` by default: ``/depth/image``)."""
    ns = namespace.strip('/')
    return f'/{ns}/{OUTPUT_TOPICS[key]}' if ns else f'/{OUTPUT_TOPICS[key]}'


# ---------------------------------------------------------------------------- messages
class MessageBuilder:
    """Builds output messages as ``rosbags`` objects from the pipeline's arrays, and
    serializes them (CDR) with the typestore."""

    def __init__(self, typestore: Any) -> None:
        self.typestore = typestore
        self.types = SimpleNamespace(**{name.rsplit('/', 1)[1]: cls for name, cls in
                                        typestore.types.items() if name.startswith((
                                            'sensor_msgs/msg/', 'diagnostic_msgs/msg/'))})

    def build(self, key: str, value: Any, header: Any) -> Any:
        """The message of output ``key`` (``depth``, ``relative``, ``colored``: an array;
        ``info``: Intrinsics; ``points``: PackedCloud; ``alignment``: AlignmentReport)."""
        t = self.types
        if key == 'info':
            return self.camera_info(value, header)
        if key == 'points':
            filled = SimpleNamespace()
            fill_cloud(filled, value, t.PointField)
            return t.PointCloud2(header=header, height=filled.height, width=filled.width,
                                 fields=filled.fields, is_bigendian=filled.is_bigendian,
                                 point_step=filled.point_step, row_step=filled.row_step,
                                 data=np.frombuffer(filled.data, np.uint8),
                                 is_dense=bool(filled.is_dense))
        if key == 'alignment':
            return self.alignment(value)
        return self.image(value, image_encoding(key, value), header)

    def image(self, array: np.ndarray, encoding: str, header: Any) -> Any:
        filled = SimpleNamespace()
        fill_image(filled, array, encoding)
        return self.types.Image(header=header, height=filled.height, width=filled.width,
                                encoding=filled.encoding, is_bigendian=filled.is_bigendian,
                                step=filled.step, data=np.frombuffer(filled.data, np.uint8))

    def camera_info(self, intr: Intrinsics, header: Any) -> Any:
        f = intrinsics_to_fields(intr)
        t = self.types
        return t.CameraInfo(
            header=header, height=f['height'], width=f['width'],
            distortion_model=f['distortion_model'],
            d=np.asarray(f['d'], np.float64), k=np.asarray(f['k'], np.float64),
            r=np.asarray(f['r'], np.float64), p=np.asarray(f['p'], np.float64),
            binning_x=0, binning_y=0,
            roi=t.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0,
                                   do_rectify=False))

    def alignment(self, report: AlignmentReport | pr.PromptReport) -> Any:
        s = alignment_status(report, NODE_NAME)
        return self.types.DiagnosticStatus(
            level=s['level'], name=s['name'], message=s['message'],
            hardware_id=s['hardware_id'],
            values=[self.types.KeyValue(key=k, value=v) for k, v in s['values'].items()])

    def serialize(self, msg: Any) -> memoryview:
        return self.typestore.serialize_cdr(msg, msg.__msgtype__)


# ------------------------------------------------------------------------------ reading
@dataclass
class _Pending:
    """A frame read but not yet released: the lookahead for its camera_info and scan."""

    frame: Frame
    bag_time: int  # receive time, ns
    stamp: float  # header stamp, s


@dataclass
class FrameJob:
    """A decoded frame with what was paired with it, ready for the forward pass."""

    frame: Frame
    bag_time: int
    intrinsics: Optional[Intrinsics]
    scan: Optional[Scan]
    scans_seen: bool  # whether any scan was read before the pairing (unpaired vs no LiDAR)
    scans: list = field(default_factory=list)  # the scans near it (a LiDAR depth prompt)
    prompts: list = field(default_factory=list)  # the depth prompt images near it


class _Stats:
    """Counts and fit statistics for the summary (thread-safe counters)."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.fit_states: Counter = Counter()
        self.no_fit_reasons: Counter = Counter()
        self.scales: list[float] = []
        self.residuals: list[float] = []
        self.inliers: list[int] = []
        self.model_s: list[float] = []
        self.last_bag_time = 0

    def count(self, name: str, n: int = 1) -> None:
        self.counters.add(name, n)

    def get(self, name: str) -> int:
        return self.counters.get(name)

    def alignment(self, report: AlignmentReport | pr.PromptReport) -> None:
        if isinstance(report, pr.PromptReport):
            self.fit_states[f'prompt {report.check.state}'] += 1
            if report.check.state != 'ok':
                self.no_fit_reasons[bounded(report.check.reason, 120)] += 1
            return
        a = report.alignment
        self.fit_states[a.state] += 1
        if a.state == 'no_fit':
            self.no_fit_reasons[bounded(report.reason, 120)] += 1
        elif math.isfinite(a.scale):
            self.scales.append(float(a.scale))
        if a.fit is not None and a.fit.n_inliers:
            self.inliers.append(int(a.fit.n_inliers))
            if math.isfinite(a.fit.residual):
                self.residuals.append(float(a.fit.residual))


class _Log:
    """Throttled, length-bounded lines on stderr that do not break a progress bar."""

    def __init__(self) -> None:
        self.throttle = Throttle(period=5.0)
        self.bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, text: str, key: Optional[str] = None) -> None:
        if key is not None and not self.throttle.ready(key):
            return
        line = f'[{PROG}] {bounded(text)}'
        with self._lock:
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)


class BagReader(threading.Thread):
    """Reads the bag in order on its own thread: camera_info and scans into the pairing state,
    every frame checked and decoded, every message (for the copy) passed on; events go to
    ``out`` in bag order.

    Events: ``('copy', connection, bag_time, raw)``, ``('frame', FrameJob)``, ``('error',
    exception)`` (the input could not be read on), then ``None`` (the end).
    """

    def __init__(self, reader: Any, connections: list, topics: Topics,
                 pipeline: FramePipeline, typestore: Any, start: Optional[int],
                 stop: Optional[int], every: int, copy: set, out: queue.Queue,
                 stats: _Stats, log: _Log, halt: threading.Event) -> None:
        super().__init__(name='depth_node_bag_reader', daemon=True)
        self.reader, self.connections, self.topics = reader, connections, topics
        self.pipeline, self.typestore = pipeline, typestore
        self.t0 = reader.start_time  # the bag's start (ns), for log lines
        self.window = (start, stop)
        self.every, self.copy, self.out = every, copy, out
        self.stats, self.log, self.halt = stats, log, halt
        c = pipeline.config
        self.lidar_offset = c['lidar.max_time_offset']
        # how far a scan or prompt may lie from its frame (the lookahead's horizon)
        self.max_offset = max(self.lidar_offset, c['prompt.max_time_offset'])
        self.max_side = c['prompt.max_side']
        self.pending: deque = deque()
        self.prompts: list[pr.PromptImage] = []
        self.latest_prompt_stamp = -math.inf
        self.infos: list[tuple[float, Intrinsics]] = []
        self.scans: list[Scan] = []
        self.scans_seen = False
        self.latest_info_stamp = -math.inf
        self.latest_scan_stamp = -math.inf
        self.images = 0

    def run(self) -> None:
        try:
            self._before_start()
            start, stop = self.window
            lookahead = int((self.max_offset + LOOKAHEAD_S) * 1e9)
            read_stop = None if stop is None else stop + lookahead
            for conn, bag_time, raw in self.reader.messages(self.connections, start,
                                                            read_stop):
                if self.halt.is_set():
                    return
                inside = stop is None or bag_time < stop
                if inside:
                    self.stats.last_bag_time = bag_time
                self._read(conn, bag_time, raw, inside)
                self._release(bag_time)
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt bag: stop reading
            self._release(None)
            self._put(('error', exc))
        else:
            self._release(None)
        finally:
            self._put(None)

    def _before_start(self) -> None:
        """With ``--start``: the latest camera_info before the window (a camera may send it
        once), and the scans just before it (the first frames may pair with them)."""
        start = self.window[0]
        if start is None:
            return
        infos = [c for c in self.connections if c.topic == self.topics.camera_info]
        for conn, bag_time, raw in self.reader.messages(infos, None, start) if infos else ():
            self._read(conn, bag_time, raw, inside=False)
        self.infos = self.infos[-1:]
        scans = [c for c in self.connections
                 if c.topic in (self.topics.lidar, self.topics.prompt)]
        lookahead = int((self.max_offset + LOOKAHEAD_S) * 1e9)
        for conn, bag_time, raw in (self.reader.messages(scans, start - lookahead, start)
                                    if scans else ()):
            self._read(conn, bag_time, raw, inside=False)

    def _put(self, event: Any) -> None:
        while not self.halt.is_set():
            try:
                self.out.put(event, timeout=0.1)
                return
            except queue.Full:
                continue

    def _deserialize(self, conn: Any, raw: bytes, counter: str) -> Any:
        try:
            return self.typestore.deserialize_cdr(raw, conn.msgtype)
        except Exception as exc:  # noqa: BLE001 - any corrupt message: counted, skipped
            self.stats.count(counter)
            self.log(f'{shorten(conn.topic)}: message at bag time '
                     f'{_ns_to_s(self.t0, self.stats.last_bag_time)} cannot be deserialized: '
                     f'{type(exc).__name__}: {exc}', counter)
            return None

    def _take(self, conn: Any, raw: bytes, key: str, errors: Any,
              parse: Callable[[Any], Any]) -> Any:
        """``parse`` of the deserialized message, or None for a bad one (counted in
        ``bad_<key>``, logged throttled with the reason)."""
        msg = self._deserialize(conn, raw, f'bad_{key}')
        if msg is None:
            return None
        try:
            return parse(msg)
        except errors as exc:
            self.stats.count(f'bad_{key}')
            self.log(f'{shorten(conn.topic)} refused: {exc}', key)
            return None

    def _read(self, conn: Any, bag_time: int, raw: bytes, inside: bool = True) -> None:
        """Take one message; outside the window only camera_info and scans (for pairing)."""
        topic = conn.topic
        if inside and topic in self.copy:
            self.pending.append(('copy', conn, bag_time, raw))
        if topic == self.topics.camera_info:
            info = self._take(conn, raw, 'camera_info', CameraInfoError, lambda msg: (
                stamp_to_sec(msg.header.stamp), read_camera_info(msg)))
            if info is not None:
                self.infos.append(info)
                del self.infos[:-MAX_INFOS]
                self.latest_info_stamp = max(self.latest_info_stamp, info[0])
        elif topic == self.topics.lidar:
            scan = self._take(conn, raw, 'lidar', LidarError, read_scan)
            if scan is not None:
                self.scans.append(scan)
                del self.scans[:-MAX_SCANS]
                self.latest_scan_stamp = max(self.latest_scan_stamp, scan[0])
        elif topic == self.topics.prompt:
            image = self._take(conn, raw, 'prompt_depth', (ImageDecodeError, pr.PromptError),
                               lambda msg: pr.prompt_from_message(msg, self.max_side))
            if image is not None:
                self.prompts.append(image)
                del self.prompts[:-MAX_PROMPTS]
                self.latest_prompt_stamp = max(self.latest_prompt_stamp, image.stamp)
        elif topic == self.topics.image and inside:
            self.stats.count('frames_read')
            self.images += 1
            if (self.images - 1) % self.every:
                self.stats.count('skipped_every')
                return
            msg = self._deserialize(conn, raw, 'bad_image')
            if msg is None:
                return
            kind = self.topics.kind
            try:
                self.pipeline.check(kind, msg)
                frame = self.pipeline.decode(kind, msg)
            except ImageDecodeError as exc:
                self.stats.count('bad_image')
                self.log(f'{shorten(topic)} refused: {exc}', 'image')
                return
            except Exception as exc:  # noqa: BLE001 - one frame must never stop the run
                self.stats.count('frame_errors')
                self.log(f'frame skipped: {type(exc).__name__}: {exc}', 'frame_error')
                return
            self.pending.append(('frame', _Pending(frame, bag_time, frame.stamp)))

    def _ready(self, item: _Pending, now: Optional[int]) -> bool:
        """Whether no camera_info or scan still to come can change the frame's pairing:
        the end of the bag, the lookahead spent, or both seen past the frame's stamp."""
        if now is None or now - item.bag_time > (self.max_offset + LOOKAHEAD_S) * 1e9:
            return True
        info_done = self.topics.camera_info is None or self.latest_info_stamp >= item.stamp
        scan_done = self.topics.lidar is None or \
            self.latest_scan_stamp > item.stamp + self.max_offset
        prompt_done = self.topics.prompt is None or \
            self.latest_prompt_stamp > item.stamp + self.max_offset
        return info_done and scan_done and prompt_done

    def _release(self, now: Optional[int]) -> None:
        while self.pending:
            head = self.pending[0]
            if head[0] == 'frame':
                if not self._ready(head[1], now):
                    return
                self._put(('frame', self._pair(head[1])))
            else:
                self._put(head)
            self.pending.popleft()

    def _pair(self, item: _Pending) -> FrameJob:
        """The frame with the camera_info of the latest stamp at or before its own (the last
        read among equals) and the nearest scan; state no later frame needs is dropped."""
        t = item.stamp
        intr = None
        best = -math.inf
        for stamp, candidate in self.infos:
            if best <= stamp <= t:
                best, intr = stamp, candidate
        scan = None
        seen = self.scans_seen
        if self.topics.lidar is not None:
            seen = bool(self.scans) or seen
            scan = nearest_scan(self.scans, t, self.lidar_offset)
            keep_after = t - self.max_offset - LOOKAHEAD_S
            self.scans = [s for s in self.scans if s[0] >= keep_after]
            self.scans_seen = seen
        if best > -math.inf:  # keep the one in use and everything newer
            self.infos = [(s, i) for s, i in self.infos if s >= best]
        near = t - self.max_offset - LOOKAHEAD_S
        self.prompts = [p for p in self.prompts if p.stamp >= near]
        return FrameJob(item.frame, item.bag_time, intr, scan, seen, list(self.scans),
                        list(self.prompts))


def _ns_to_s(t0: int, t: int) -> str:
    return f'{(t - t0) * 1e-9:.3f} s'


# ------------------------------------------------------------------------------ writing
class BagWriter(threading.Thread):
    """Opens the output bag, then builds, serializes and writes messages on its own thread,
    in the order they come, and closes the bag (its metadata written: a valid bag) after the
    end marker, whatever happened before. A SQLite writer lives on the thread that opened it.

    Items: ``('copy', input_connection, bag_time, raw)``, ``('out', key, value, header,
    bag_time)``, then ``None``. The first error (``error``) stops the writing; the items that
    follow are taken and dropped, so the caller never blocks.
    """

    def __init__(self, path: Path, storage: str, builder: MessageBuilder, namespace: str,
                 copy_from: list, items: queue.Queue, log: _Log) -> None:
        super().__init__(name='depth_node_bag_writer', daemon=True)
        self.path, self.storage, self.builder, self.namespace = path, storage, builder, namespace
        self.copy_from, self.items, self.log = copy_from, items, log
        self.copied: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.counts: Counter = Counter()
        self.error: Optional[BaseException] = None
        self.ready = threading.Event()  # set once the bag is open (or failed to open)

    def run(self) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        writer = None
        try:
            plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
            writer = Writer(self.path, version=8, storage_plugin=plugin[self.storage])
            writer.open()
            self.copied = _copy_connections(writer, self.copy_from, self.builder.typestore,
                                            self.log)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
        finally:
            self.ready.set()
        while True:
            item = self.items.get()
            if item is None:
                break
            if self.error is None:
                try:
                    self._write(writer, item)
                except Exception as exc:  # noqa: BLE001 - reported by the caller
                    self.error = exc
        if writer is not None and writer.storage is not None:
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001 - reported by the caller
                self.error = self.error or exc

    def _write(self, writer: Any, item: tuple) -> None:
        if item[0] == 'copy':
            _, conn, bag_time, raw = item
            out = self.copied.get(conn.topic)
            if out is not None:
                writer.write(out, bag_time, raw)
                self.counts[conn.topic] += 1
            return
        _, key, value, header, bag_time = item
        conn = self.outputs.get(key)
        if conn is None:
            conn = self.outputs[key] = writer.add_connection(
                output_topic(self.namespace, key), OUTPUT_TYPES[key],
                typestore=self.builder.typestore)
        writer.write(conn, bag_time, self.builder.serialize(
            self.builder.build(key, value, header)))
        self.counts[conn.topic] += 1


# ------------------------------------------------------------------------------ the run
@dataclass
class Options:
    """What the command line asks for (see :func:`build_parser`)."""

    input: Path
    output: Path
    params_file: Optional[str] = None
    params: list[str] = field(default_factory=list)
    image_topic: Optional[str] = None
    camera_info_topic: Optional[str] = None
    lidar_topic: Optional[str] = None
    prompt_topic: Optional[str] = None
    namespace: str = '/'
    storage: str = 'mcap'
    start: float = 0.0
    duration: Optional[float] = None
    every: int = 1
    copy: bool = True
    overwrite: bool = False
    colored: bool = False
    points: bool = False
    progress: Optional[bool] = None  # None: a bar on a terminal, plain lines otherwise


class _Interrupt:
    """SIGINT / SIGTERM: the first asks to stop after the current frame, a second stops now;
    once the output is being closed (:attr:`closing`) they are ignored, so that it is always
    closed as a valid bag. The handler only sets state (no I/O, no lock: it runs between any
    two bytecodes of the main thread, which may hold the log's lock)."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self.closing = False
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.closing:
            return
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name


def _open_input(path: Path) -> Any:
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise BagError(f'INPUT {path}: no such file or directory')
    try:
        reader = Reader(path)
        reader.open()
    except FileNotFoundError as exc:
        raise BagError(f'INPUT {path}: {exc} Is it a ROS 2 bag? A recording that was cut '
                       'off has no metadata.yaml: pass its .mcap or .db3 file itself, or run '
                       '`ros2 bag reindex` on it', EXIT_INPUT) from exc
    except Exception as exc:  # noqa: BLE001 - ReaderError, sqlite / mcap errors: all unreadable
        raise BagError(f'INPUT {path} cannot be read as a ROS 2 bag: {type(exc).__name__}: '
                       f'{exc}', EXIT_INPUT) from exc
    return reader


def _prepare_output(path: Path, overwrite: bool, input_path: Path, remove: bool = True,
                    ) -> None:
    """Refuse an existing OUTPUT unless ``overwrite``; then remove it (only a bag; with
    ``remove`` False only check, so that a run refused later leaves the old OUTPUT)."""
    if not path.exists():
        return
    resolved, source = path.resolve(), input_path.resolve()
    if resolved == source or resolved in source.parents:
        raise BagError(f'OUTPUT {path} is (or holds) the INPUT: choose another OUTPUT')
    if not overwrite:
        raise BagError(f'OUTPUT {path} exists: pass --overwrite to replace it, or choose '
                       'another OUTPUT')
    if path.is_dir():
        entries = list(path.iterdir())
        if entries and not (path / 'metadata.yaml').is_file():
            raise BagError(f'OUTPUT {path} is a folder that is not a ROS 2 bag (no '
                           'metadata.yaml): not removing it; choose another OUTPUT')
        if remove:
            shutil.rmtree(path)
    else:
        raise BagError(f'OUTPUT {path} is a file; a ROS 2 bag is a folder: choose another '
                       'OUTPUT')


def _copy_connections(writer: Any, reader_conns: list, typestore: Any, log: _Log) -> dict:
    """An output connection for every input topic (the same type, definition and QoS); a
    topic whose type is unknown and whose definition the bag lacks is left out (said)."""
    from rosbags.interfaces import MessageDefinitionFormat

    copied: dict[str, Any] = {}
    for conn in reader_conns:
        if conn.topic in copied:
            continue
        ext = conn.ext
        kwargs = dict(serialization_format=getattr(ext, 'serialization_format', 'cdr'),
                      offered_qos_profiles=getattr(ext, 'offered_qos_profiles', ()))
        msgdef = conn.msgdef
        if msgdef.format != MessageDefinitionFormat.NONE and msgdef.data and conn.digest:
            kwargs.update(msgdef=msgdef.data, rihs01=conn.digest)
        elif conn.msgtype in typestore.types:
            kwargs.update(typestore=typestore)
        else:
            log(f'{shorten(conn.topic)} ({shorten(conn.msgtype)}) is not copied: the bag does '
                'not hold its message definition')
            continue
        copied[conn.topic] = writer.add_connection(conn.topic, conn.msgtype, **kwargs)
    return copied


def run(options: Options, result: Optional[dict] = None) -> int:
    """Process ``options.input`` into ``options.output``; print the summary; the exit code.

    ``result``, when given, receives the figures of the summary: ``frames_processed``,
    ``frames_metric``, ``wall_s`` (from the first frame read to the output closed, without the
    model load), ``frames_per_s``, ``model_s`` (median model time per frame, or None).

    Raises
    ------
    BagError
        Before anything is written: usage, parameters, topics, an unreadable input.
    """
    from rosbags.typesys import get_typestore, Stores

    log = _Log()
    if options.every < 1:
        raise BagError(f'--every {options.every}: give 1 (every frame) or more')
    if options.start < 0 or (options.duration is not None and options.duration <= 0):
        raise BagError('--start must be >= 0 and --duration > 0 (seconds)')
    config = node_config(options.params_file, options.params)
    if options.points and not config['cloud.enabled']:
        raise BagError('--points needs cloud.enabled:=true')
    typestore = get_typestore(Stores.ROS2_JAZZY)
    _prepare_output(options.output, options.overwrite, options.input, remove=False)
    reader = _open_input(options.input)
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        topics = select_topics(types, config, options.image_topic,
                               options.camera_info_topic, options.lidar_topic,
                               options.prompt_topic)
        extrinsics = Extrinsics.read(reader, typestore, config, topics, log)
        # only now, with everything checked, is an old OUTPUT replaced (--overwrite)
        _prepare_output(options.output, options.overwrite, options.input)
        return _process(options, config, topics, reader, typestore, log, extrinsics,
                        {} if result is None else result)
    finally:
        reader.close()


def _process(options: Options, config: cfg.NodeConfig, topics: Topics, reader: Any,
             typestore: Any, log: _Log, extrinsics: Extrinsics, result: dict) -> int:
    t_start = time.monotonic()
    estimator = None
    if config['input.mode'] == 'image':
        try:
            # each note logged as it arises: the hub note comes before a failed load
            estimator = load_estimator(config, on_note=lambda _level, text: log(text)).estimator
        except cfg.ConfigError as exc:
            raise BagError(f'configuration error: {exc}') from exc
    pipeline = FramePipeline(config, estimator)
    state = pipeline.new_camera(0)
    builder = MessageBuilder(typestore)
    wanted = {'depth', 'relative', 'info', 'alignment'}
    wanted |= {'points'} if options.points else set()
    wanted |= {'colored'} if options.colored else set()

    bag_start = reader.start_time
    start = bag_start + int(options.start * 1e9) if options.start else None
    stop = (bag_start + int((options.start + options.duration) * 1e9)
            if options.duration is not None else None)
    outputs = {output_topic(options.namespace, k) for k in OUTPUT_TOPICS}
    shadowed = outputs & {c.topic for c in reader.connections}
    if shadowed and options.copy:
        log(f'input topics {", ".join(sorted(shadowed))} are not copied: the outputs replace '
            'them (choose another --namespace to keep both)')
    read_conns = [c for c in reader.connections if options.copy or c.topic in (
        topics.image, topics.camera_info, topics.lidar, topics.prompt)]
    copy = {c.topic for c in read_conns} - shadowed if options.copy else set()

    stats = _Stats()
    halt = threading.Event()
    events: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    items: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    interrupt = _Interrupt()
    input_error: Optional[BaseException] = None
    total = _expected_frames(reader, topics.image, options)
    progress = _Progress(total, log, options.progress)
    timer = StageTimer()
    bag_reader = None
    bag_writer = BagWriter(options.output, options.storage, builder, options.namespace,
                           [c for c in read_conns if c.topic in copy], items, log)
    bag_writer.start()
    bag_writer.ready.wait()
    t_loop = time.monotonic()
    try:
        if bag_writer.error is None:
            bag_reader = BagReader(reader, read_conns, topics, pipeline, typestore, start,
                                   stop, options.every, copy, events, stats, log, halt)
            bag_reader.start()
        interrupt.install()
        t_loop = time.monotonic()
        while bag_reader is not None and interrupt.signal is None:
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event is None:
                break
            if bag_writer.error is not None:
                break
            if event[0] == 'error':
                input_error = event[1]
                continue
            if event[0] == 'copy':
                items.put(event)
                continue
            _frame(event[1], pipeline, state, wanted, items, stats, log, timer,
                   extrinsics.lookup)
            progress.update(stats)
    except KeyboardInterrupt:
        interrupt.signal = interrupt.signal or 'SIGINT'
    finally:
        interrupt.closing = True
        if interrupt.signal is not None:
            log(f'{interrupt.signal}: stopped after the frame in hand; closing the output bag')
        halt.set()
        progress.close()
        _put_last(items, bag_writer)
        bag_writer.join()  # the bag closed, its metadata written: valid whatever happened
        interrupt.restore()
        if bag_reader is not None:
            bag_reader.join(timeout=5.0)
    wall = time.monotonic() - t_loop
    processed = stats.get('frames_processed')
    result.update(frames_processed=processed, frames_metric=stats.get('frames_metric'),
                  wall_s=wall, frames_per_s=processed / wall if wall > 0 else 0.0,
                  model_s=statistics.median(stats.model_s) if stats.model_s else None)
    write_error = bag_writer.error
    print(_summary(options, topics, stats, bag_writer.counts, wall, time.monotonic() - t_start,
                   total, interrupt.signal, input_error, write_error, reader,
                   extrinsics.summary()))
    if write_error is not None or input_error is not None:
        return EXIT_INPUT
    return EXIT_INTERRUPTED if interrupt.signal else EXIT_OK


def _put_last(items: queue.Queue, bag_writer: BagWriter) -> None:
    """Hand the writer its end marker (it drains what is queued first)."""
    while bag_writer.is_alive():
        try:
            items.put(None, timeout=0.1)
            return
        except queue.Full:
            continue


def _frame(job: FrameJob, pipeline: FramePipeline, state: Any, wanted: set,
           items: queue.Queue, stats: _Stats, log: _Log, timer: StageTimer,
           lookup_tf: Optional[Callable[[str, Any], Optional[np.ndarray]]] = None) -> None:
    """One frame through the pipeline, as the node's worker runs it; outputs to the writer.
    ``lookup_tf(lidar_frame, header)``: the LiDAR extrinsics where the parameter is unset."""
    frame = job.frame
    state.intrinsics = job.intrinsics
    timer.start()
    if pipeline.prompt_source:  # the prompt goes into the network with the image
        pipeline.pair_prompt(frame, state, job.prompts, job.scans, lookup_tf)
    if pipeline.estimator is not None:
        result = pipeline.forward([frame], [state], ['points' in wanted])
        if result.error is not None:
            stats.count('forward_failures')
            from depth_node.estimator.device import error_text  # loaded with the model

            log(f'forward pass failed: {type(result.error).__name__}: '
                f'{error_text(result.error)}', 'forward')
            return
        if result.non_finite:
            stats.count('non_finite_outputs', result.non_finite)
            log('frame(s) with NaN or infinite network output (written as NaN): an fp16 '
                'overflow? set model.precision to bf16 or fp32', 'non_finite')
        stats.model_s.append(sum(result.timings.get(k, 0.0) for k in
                                 ('preprocess', 'forward', 'postprocess')))
    if state.aligner is not None and job.scan is None and job.scans_seen:
        stats.count('lidar_unpaired')
    header, bag_time = frame.header, job.bag_time

    def sink(key: str, value: Any) -> None:
        if key == 'problem':
            _report(value, stats, log)
            return
        if key == 'alignment':
            stats.alignment(value)
        items.put(('out', key, value, header, bag_time))

    try:
        out = pipeline.finish(frame, state, wanted, sink, job.scan, lookup_tf, timer)
    except Exception as exc:  # noqa: BLE001 - one frame must never stop the run
        stats.count('frame_errors')
        log(f'frame skipped: {type(exc).__name__}: {exc}', 'frame_error')
        return
    stats.count('frames_processed')
    if out.metric:
        stats.count('frames_metric')


def _report(problem: Problem, stats: _Stats, log: _Log) -> None:
    if problem.key == 'camera_info':
        stats.count('bad_camera_info')
        log(problem.text, 'camera_info')
    elif problem.key == 'no_camera_info':
        stats.count('frames_without_camera_info')
        log('no camera_info at or before this frame: writing depth images only; no '
            'depth/points, depth/camera_info or LiDAR projection until one comes',
            'no_camera_info')
    elif problem.key == 'no_fit':
        log(problem.text, 'no_fit')


def _expected_frames(reader: Any, image_topic: str, options: Options) -> Optional[int]:
    """Frames to process, from the bag's index (None with a time window: not known)."""
    if options.start or options.duration is not None:
        return None
    count = sum(c.msgcount for c in reader.connections if c.topic == image_topic)
    return -(-count // options.every) if count else None


class _Progress:
    """A tqdm bar on a terminal (frames, frames per second, time left), else a plain line
    after the first frame and every :data:`PROGRESS_PERIOD_S` seconds."""

    def __init__(self, total: Optional[int], log: _Log, bar: Optional[bool]) -> None:
        self.total, self.log = total, log
        self.t0 = self.last = time.monotonic()
        self.bar = None
        self.done = 0
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = log.bar = tqdm(total=total, unit='frame', file=sys.stderr,
                                      dynamic_ncols=True, desc=PROG)

    def update(self, stats: _Stats) -> None:
        done = stats.get('frames_processed')
        if self.bar is not None:
            self.bar.update(done - self.done)
            self.done = done
            return
        now = time.monotonic()
        if self.done == 0 and done > 0 or now - self.last >= PROGRESS_PERIOD_S:
            self.done, self.last = done, now
            rate = done / max(now - self.t0, 1e-9)
            of = f'/{self.total}' if self.total else ''
            left = (f', about {_duration((self.total - done) / rate)} left'
                    if self.total and rate > 0 else '')
            self.log(f'{done}{of} frames, {rate:.2f} frames/s{left}')

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.log.bar = None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f'{seconds:.0f} s'
    return f'{seconds / 60:.0f} min' if seconds < 5400 else f'{seconds / 3600:.1f} h'


def _median(values: Sequence[float], fmt: str = '.4g') -> str:
    if not values:
        return '-'
    return (f'{statistics.median(values):{fmt}} (min {min(values):{fmt}}, '
            f'max {max(values):{fmt}})')


def _summary(options: Options, topics: Topics, stats: _Stats, written: Counter, wall: float,
             total_wall: float, expected: Optional[int], stopped_by: Optional[str],
             input_error: Optional[BaseException], write_error: Optional[BaseException],
             reader: Any, extrinsics: str = '') -> str:
    """The end-of-run report: frames, skips and why, bad messages, the fit, speed."""
    g = stats.get
    processed = g('frames_processed')
    skipped = {'bad image': g('bad_image'), 'forward failed': g('forward_failures'),
               'frame error': g('frame_errors'), f'left out by --every {options.every}':
               g('skipped_every')}
    lines = [f'[{PROG}] summary',
             f'  input: {options.input} ({topics.kind} frames on {topics.image}, camera_info '
             f'{topics.camera_info or "none"}, LiDAR {topics.lidar or "off"})',
             f'  output: {options.output} ({options.storage}), '
             f'{sum(written.values())} messages on {len(written)} topics']
    for topic in sorted(written):
        lines.append(f'    {topic}: {written[topic]}')
    lines.append(f'  frames read: {g("frames_read")}, processed: {processed}, with metric '
                 f'depth: {g("frames_metric")}')
    lines.append(f'  frames skipped: {sum(skipped.values())}' + (
        ' (' + ', '.join(f'{k}: {v}' for k, v in skipped.items() if v) + ')'
        if any(skipped.values()) else ''))
    bad = {k: g(f'bad_{k}') for k in ('image', 'camera_info', 'lidar', 'prompt_depth')}
    lines.append(f'  bad messages: {sum(bad.values())}' + (
        ' (' + ', '.join(f'{k}: {v}' for k, v in bad.items() if v) + ')'
        if any(bad.values()) else ''))
    if g('frames_without_camera_info'):
        lines.append(f'  frames without camera_info: {g("frames_without_camera_info")}')
    if topics.lidar is not None or topics.prompt is not None:
        states = ', '.join(f'{k}: {v}' for k, v in sorted(stats.fit_states.items())) or \
            'none'
        lines.append(f'  LiDAR fit / depth prompt: {states}; frames without a scan within '
                     f'lidar.max_time_offset: {g("lidar_unpaired")}')
        if topics.lidar is not None and extrinsics:
            lines.append(f'    LiDAR extrinsics: {extrinsics}')
        lines.append(f'    scale: {_median(stats.scales)}; residual: '
                     f'{_median(stats.residuals)}; inliers: {_median(stats.inliers, ".0f")}')
        for reason, n in stats.no_fit_reasons.most_common(3):
            lines.append(f'    no fit ({n}x): {reason}')
    if g('non_finite_outputs'):
        lines.append(f'  frames with non-finite network output: {g("non_finite_outputs")}')
    rate = processed / wall if wall > 0 else 0.0
    model = (f'; model alone (median) {statistics.median(stats.model_s) * 1e3:.1f} ms/frame = '
             f'{1.0 / statistics.median(stats.model_s):.2f} frames/s'
             if stats.model_s and statistics.median(stats.model_s) > 0 else '')
    lines.append(f'  speed: {processed} frames in {wall:.2f} s = {rate:.2f} frames/s{model}; '
                 f'{total_wall:.1f} s with the model load')
    if stopped_by is not None:
        where = _ns_to_s(reader.start_time, stats.last_bag_time) if stats.last_bag_time else \
            '0 s'
        of = f' of {expected}' if expected else ''
        lines.append(f'  stopped: {stopped_by} after {processed}{of} frames (bag read up to '
                     f'{where}); the output is a valid bag up to there')
    if input_error is not None:
        lines.append(f'  INPUT ERROR: {options.input} could not be read on after bag time '
                     f'{_ns_to_s(reader.start_time, stats.last_bag_time)}: '
                     f'{type(input_error).__name__}: {bounded(input_error, 300)}; the output '
                     'holds what was read before, a valid bag')
    if write_error is not None:
        lines.append(f'  OUTPUT ERROR: writing {options.output} failed: '
                     f'{type(write_error).__name__}: {bounded(write_error, 300)}')
    return '\n'.join(lines)


# ------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from depth_node.cli import parameter_summary

    import textwrap

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Depth over a recorded ROS 2 bag, offline: every frame of INPUT through the node's "
            'pipeline, written to the new bag OUTPUT with a copy of the input topics.', 99),
        epilog='Parameters are the node\'s (name, type, restart/runtime, default):\n'
               f'{parameter_summary()}\n\nExit codes: 0 done, 1 the input could not be read '
               'to its end (OUTPUT holds what was processed), 2 usage or configuration error, '
               '130 interrupted (OUTPUT holds what was processed).')
    parser.add_argument('input', type=Path, metavar='INPUT',
                        help='a ROS 2 bag: its folder, or an .mcap or .db3 file')
    parser.add_argument('output', type=Path, metavar='OUTPUT',
                        help='the bag to write (a new folder)')
    parser.add_argument('--params-file', metavar='FILE',
                        help="the node's YAML parameter file ('depth_node: ros__parameters:' "
                             "or '/**: ros__parameters:')")
    parser.add_argument('-p', dest='params', action='append', default=[],
                        metavar='name:=value', help='a parameter (after --params-file)')
    parser.add_argument('--image-topic', metavar='T',
                        help='the camera topic (Image or CompressedImage; default: the only '
                             'one in the bag)')
    parser.add_argument('--camera-info-topic', metavar='T',
                        help="default: the image's camera_info sibling, else the only "
                             'CameraInfo topic')
    parser.add_argument('--lidar-topic', metavar='T',
                        help='default with lidar.enabled: the only PointCloud2 topic')
    parser.add_argument('--prompt-topic', metavar='T',
                        help="with prompt.source 'depth_image': the registered depth images")
    parser.add_argument('--namespace', metavar='NS', default='/',
                        help='the outputs go to NS/depth/image, ... (default: /depth/image)')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                        help='output storage format (default: mcap)')
    parser.add_argument('--start', type=float, default=0.0, metavar='S',
                        help='start S seconds into the bag')
    parser.add_argument('--duration', type=float, metavar='D', help='process D seconds')
    parser.add_argument('--every', type=int, default=1, metavar='N',
                        help='process every Nth frame (default: every frame)')
    parser.add_argument('--no-copy', dest='copy', action='store_false',
                        help='write only the outputs, not the input topics')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing OUTPUT')
    parser.add_argument('--colored', action='store_true', help='also write depth/colored')
    parser.add_argument('--points', action='store_true', help='also write depth/points')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    """The :class:`Options` of a command line (``-h`` exits 0, a bad one 2)."""
    ns = build_parser().parse_args(argv)
    return Options(**vars(ns))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``depth_node-bag`` (see the module docstring for the exit codes)."""
    try:
        options = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return run(options)
    except BagError as exc:
        print(f'[{PROG}] {exc}', file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # before the run began (the model load)
        print(f'[{PROG}] interrupted before the first frame; nothing written', file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == '__main__':
    sys.exit(main())
