"""The command line and the run of ``depth_node-bag``: the main thread runs each frame through
:meth:`depth_node.frame_pipeline.FramePipeline.run_batch` between the reader and writer
threads of :mod:`depth_node.bag.io`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
import queue
import signal
import statistics
import sys
import threading
import time
from typing import Any, Optional, Sequence

from depth_node import config as cfg
from depth_node.bag.common import (
    BagError, EXIT_GPU_LOST, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Log, PROG)
from depth_node.bag.extrinsics import Extrinsics
from depth_node.bag.io import (
    BagReader, BagWriter, FrameJob, MessageBuilder, open_input, output_topic, prepare_output,
    QUEUE_SIZE, select_topics, Topics)
from depth_node.bag.params import add_parameter_arguments, node_config
from depth_node.bag.report import expected_frames, Progress, Stats, summary
from depth_node.frame_pipeline import FramePipeline, Job
from depth_node.model import load_estimator
from depth_node.outputs import OUTPUTS
from depth_node.problems import Reporter
from depth_node.telemetry import StageTimer


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
    outputs: set = field(default_factory=set)  # the on-request outputs asked for (--points)
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

    log = Log()
    if options.every < 1:
        raise BagError(f'--every {options.every}: give 1 (every frame) or more')
    if options.start < 0 or (options.duration is not None and options.duration <= 0):
        raise BagError('--start must be >= 0 and --duration > 0 (seconds)')
    config = node_config(options.params_file, options.params)
    if 'points' in options.outputs and not config['cloud.enabled']:
        raise BagError('--points needs cloud.enabled:=true')
    typestore = get_typestore(Stores.ROS2_JAZZY)
    prepare_output(options.output, options.overwrite, options.input, remove=False)
    reader = open_input(options.input)
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        topics = select_topics(types, config, options.image_topic,
                               options.camera_info_topic, options.lidar_topic,
                               options.prompt_topic)
        extrinsics = Extrinsics.read(reader, typestore, config, topics, log)
        # only now, with everything checked, is an old OUTPUT replaced (--overwrite)
        prepare_output(options.output, options.overwrite, options.input)
        return _process(options, config, topics, reader, typestore, log, extrinsics,
                        {} if result is None else result)
    finally:
        reader.close()


def _process(options: Options, config: cfg.NodeConfig, topics: Topics, reader: Any,
             typestore: Any, log: Log, extrinsics: Extrinsics, result: dict) -> int:
    t_start = time.monotonic()
    estimator = None
    if config['input.mode'] == 'image':
        try:
            # each note logged as it arises: the hub note comes before a failed load
            estimator = load_estimator(config, on_note=lambda _level, text: log(text)).estimator
        except cfg.ConfigError as exc:
            raise BagError(f'configuration error: {exc}') from exc
    pipeline = FramePipeline(config, estimator)
    if pipeline.needs_focal and topics.camera_info is None:
        raise BagError('the model needs the focal length (focal_scale in its card) and the bag '
                       'has no CameraInfo topic: record the camera_info, or name it with '
                       '--camera-info-topic')
    state = pipeline.new_camera(0)
    builder = MessageBuilder(typestore)
    # every output but those written on request only (--points, --colored, --confidence)
    wanted = frozenset(o.key for o in OUTPUTS if not o.bag_option or o.key in options.outputs)

    bag_start = reader.start_time
    start = bag_start + int(options.start * 1e9) if options.start else None
    stop = (bag_start + int((options.start + options.duration) * 1e9)
            if options.duration is not None else None)
    outputs = {output_topic(options.namespace, o.key) for o in OUTPUTS}
    shadowed = outputs & {c.topic for c in reader.connections}
    if shadowed and options.copy:
        log(f'input topics {", ".join(sorted(shadowed))} are not copied: the outputs replace '
            'them (choose another --namespace to keep both)')
    read_conns = [c for c in reader.connections if options.copy or c.topic in (
        topics.image, topics.camera_info, topics.lidar, topics.prompt)]
    copy = {c.topic for c in read_conns} - shadowed if options.copy else set()

    halt = threading.Event()
    gpu_lost: list = []

    def stop_for_gpu(problem: Any) -> None:  # a sticky CUDA error: every next frame would fail
        gpu_lost.append(problem)
        halt.set()

    reporter = Reporter(log.severity, on_fatal=stop_for_gpu)
    stats = Stats(reporter.counters)
    events: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    items: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    interrupt = _Interrupt()
    input_error: Optional[BaseException] = None
    total = expected_frames(reader, topics.image, options)
    progress = Progress(total, log, options.progress)
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
                                   stop, options.every, copy, events, reporter, halt)
            bag_reader.start()
        interrupt.install()
        t_loop = time.monotonic()
        while bag_reader is not None and interrupt.signal is None and not gpu_lost:
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
            _frame(event[1], pipeline, state, wanted, items, reporter, stats, timer,
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
    if bag_reader is not None:
        stats.last_bag_time = bag_reader.last_bag_time
    processed = stats.get('frames_processed')
    result.update(frames_processed=processed, frames_metric=stats.get('frames_metric'),
                  wall_s=wall, frames_per_s=processed / wall if wall > 0 else 0.0,
                  model_s=statistics.median(stats.model_s) if stats.model_s else None)
    write_error = bag_writer.error
    print(summary(options, topics, stats, bag_writer.counts, wall, time.monotonic() - t_start,
                  total, interrupt.signal or ('the GPU was lost' if gpu_lost else None),
                  input_error, write_error, reader, extrinsics.summary()))
    if write_error is not None or input_error is not None:
        return EXIT_INPUT
    if gpu_lost:
        return EXIT_GPU_LOST
    return EXIT_INTERRUPTED if interrupt.signal else EXIT_OK


def _put_last(items: queue.Queue, bag_writer: BagWriter) -> None:
    """Hand the writer its end marker (it drains what is queued first)."""
    while bag_writer.is_alive():
        try:
            items.put(None, timeout=0.1)
            return
        except queue.Full:
            continue


def _frame(paired: FrameJob, pipeline: FramePipeline, state: Any, wanted: frozenset,
           items: queue.Queue, reporter: Reporter, stats: Stats, timer: StageTimer,
           lookup_tf: Any = None) -> None:
    """One frame through :meth:`FramePipeline.run_batch`, as the node runs it; outputs to the
    writer. ``lookup_tf(lidar_frame, header)``: the LiDAR extrinsics where the parameter is
    unset."""
    state.intrinsics = paired.intrinsics
    job = Job(state, frame=paired.frame, wanted=wanted, scans=lambda: paired.scans,
              scans_seen=paired.scans_seen, prompts=lambda: paired.prompts,
              tag=paired.bag_time)

    def sink(job: Job, key: str, value: Any) -> None:
        if key == 'alignment':
            stats.alignment(value)
        items.put(('out', key, value, job.frame.header, job.tag))

    result = pipeline.run_batch([job], sink, reporter, lookup_tf, timer)
    for forward in result.forwards:
        if forward.error is None:
            stats.model_s.append(sum(forward.timings.get(k, 0.0) for k in
                                     ('preprocess', 'forward', 'postprocess')))


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
               '3 the GPU became unusable (OUTPUT holds what was processed), 130 interrupted '
               '(OUTPUT holds what was processed).')
    parser.add_argument('input', type=Path, metavar='INPUT',
                        help='a ROS 2 bag: its folder, or an .mcap or .db3 file')
    parser.add_argument('output', type=Path, metavar='OUTPUT',
                        help='the bag to write (a new folder)')
    add_parameter_arguments(parser)
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
    for out in OUTPUTS:  # the outputs written on request: --colored, --points, --confidence
        if out.bag_option:
            parser.add_argument(out.bag_option, dest='outputs', action='append_const',
                                const=out.key, help=f'also write {out.topic}')
    parser.set_defaults(outputs=[])
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    """The :class:`Options` of a command line (``-h`` exits 0, a bad one 2)."""
    ns = build_parser().parse_args(argv)
    ns.outputs = set(ns.outputs)
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
