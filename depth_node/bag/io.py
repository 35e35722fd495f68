"""Bag I/O of ``depth_node-bag``: the topics to read, the reader thread (pairing each frame
with its camera_info and LiDAR scan), message building and the writer thread."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
import math
from pathlib import Path
import queue
import shutil
import threading
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np

from depth_node import config as cfg
from depth_node import prompt as pr
from depth_node.bag.common import BagError, EXIT_INPUT, Log, NODE_NAME
from depth_node.camera_info import CameraInfoError, Intrinsics, intrinsics_to_fields
from depth_node.frame_pipeline import (
    CameraState, Frame, FramePipeline, read_camera_info, read_scan, Scan, stamp_to_sec)
from depth_node.image_codec import ImageDecodeError
from depth_node.lidar import LidarError
from depth_node.outputs import (
    build_message, CAMERA_INFO, COMPRESSED_IMAGE as COMPRESSED, IMAGE, OUTPUTS_BY_KEY,
    POINT_CLOUD)
from depth_node.packing import fill_cloud, fill_image
from depth_node.problems import Problem, Reporter
from depth_node.text import shorten

LOOKAHEAD_S = 1.0
"""Bag time (s) the reader reads past a frame, at most, for a camera_info or LiDAR scan stamped
near it but recorded later (beyond ``lidar.max_time_offset`` for scans)."""
QUEUE_SIZE = 16
"""Messages waiting between two threads, at most (back-pressure on the reader)."""

MAX_SCANS, MAX_INFOS, MAX_PROMPTS = 64, 256, 64
"""Scans, camera_infos and depth prompts kept for pairing, at most (the oldest go first):
the lookahead needs about (the time offset + LOOKAHEAD_S) x their rate; the caps bound memory
when the camera stops and the LiDAR goes on."""


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
    topic = OUTPUTS_BY_KEY[key].topic
    return f'/{ns}/{topic}' if ns else f'/{topic}'


# ---------------------------------------------------------------------------- messages
class MessageBuilder:
    """The :class:`~depth_node.outputs.MessageFactory` of ``rosbags``' message types: builds
    output messages from the pipeline's values (:meth:`build`), and serializes them (CDR) with
    the typestore."""

    def __init__(self, typestore: Any) -> None:
        self.typestore = typestore
        self.types = SimpleNamespace(**{name.rsplit('/', 1)[1]: cls for name, cls in
                                        typestore.types.items() if name.startswith((
                                            'sensor_msgs/msg/', 'diagnostic_msgs/msg/'))})

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

    def build(self, key: str, value: Any, header: Any) -> Any:
        """The message of output ``key`` (:func:`depth_node.outputs.build_message`)."""
        return build_message(self, key, value, header, NODE_NAME)

    def cloud(self, packed: Any, header: Any) -> Any:
        t = self.types
        filled = SimpleNamespace()
        fill_cloud(filled, packed, t.PointField)
        return t.PointCloud2(header=header, height=filled.height, width=filled.width,
                             fields=filled.fields, is_bigendian=filled.is_bigendian,
                             point_step=filled.point_step, row_step=filled.row_step,
                             data=np.frombuffer(filled.data, np.uint8),
                             is_dense=bool(filled.is_dense))

    def status(self, s: dict[str, Any]) -> Any:
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
    scans_seen: bool  # whether any scan was read before the pairing (unpaired vs no LiDAR)
    # the scans near it: run_batch pairs the nearest (lidar.max_time_offset); all for a
    # LiDAR depth prompt
    scans: list = field(default_factory=list)
    prompts: list = field(default_factory=list)  # the depth prompt images near it


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
                 reporter: Reporter, halt: threading.Event) -> None:
        super().__init__(name='depth_node_bag_reader', daemon=True)
        self.reader, self.connections, self.topics = reader, connections, topics
        self.pipeline, self.typestore = pipeline, typestore
        self.t0 = reader.start_time  # the bag's start (ns), for log lines
        self.window = (start, stop)
        self.every, self.copy, self.out = every, copy, out
        self.reporter, self.halt = reporter, halt
        self.camera = CameraState()  # names the problems' topics
        self.last_bag_time = 0  # of the last message read inside the window
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
                    self.last_bag_time = bag_time
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
            self.reporter.report(Problem(
                counter, f'{shorten(conn.topic)}: message at bag time '
                         f'{ns_to_s(self.t0, self.last_bag_time)} cannot be deserialized: '
                         f'{type(exc).__name__}: {exc}', group=f'{counter}_cdr'))
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
            self.reporter.report(Problem(f'bad_{key}', f'{shorten(conn.topic)} refused: {exc}'))
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
            self.reporter.count('frames_read')
            self.images += 1
            if (self.images - 1) % self.every:
                self.reporter.count('skipped_every')
                return
            msg = self._deserialize(conn, raw, 'bad_image')
            if msg is None:
                return
            kind = self.topics.kind
            if not self.pipeline.accepts(kind, msg, self.camera, self.reporter, topic):
                return
            frame = self.pipeline.decode_or_report(kind, msg, self.camera, self.reporter,
                                                   topic)
            if frame is None:
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
        read among equals) and the scans near it; state no later frame needs is dropped."""
        t = item.stamp
        intr = None
        best = -math.inf
        for stamp, candidate in self.infos:
            if best <= stamp <= t:
                best, intr = stamp, candidate
        seen = self.scans_seen
        if self.topics.lidar is not None:
            seen = bool(self.scans) or seen
            keep_after = t - self.max_offset - LOOKAHEAD_S
            self.scans = [s for s in self.scans if s[0] >= keep_after]
            self.scans_seen = seen
        if best > -math.inf:  # keep the one in use and everything newer
            self.infos = [(s, i) for s, i in self.infos if s >= best]
        near = t - self.max_offset - LOOKAHEAD_S
        self.prompts = [p for p in self.prompts if p.stamp >= near]
        return FrameJob(item.frame, item.bag_time, intr, seen, list(self.scans),
                        list(self.prompts))


def ns_to_s(t0: int, t: int) -> str:
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
                 copy_from: list, items: queue.Queue, log: Log) -> None:
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
                output_topic(self.namespace, key), OUTPUTS_BY_KEY[key].msg_type,
                typestore=self.builder.typestore)
        writer.write(conn, bag_time, self.builder.serialize(
            self.builder.build(key, value, header)))
        self.counts[conn.topic] += 1


def open_input(path: Path) -> Any:
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


def prepare_output(path: Path, overwrite: bool, input_path: Path, remove: bool = True,
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


def _copy_connections(writer: Any, reader_conns: list, typestore: Any, log: Log) -> dict:
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
