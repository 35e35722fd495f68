"""The ROS 2 node: parameters, QoS, subscriptions, the inference loop and publishing.

Everything a frame goes through (decoding, the network, LiDAR alignment, clouds, message
packing) lives in the ROS-free modules of this package, run by
:meth:`depth_node.frame_pipeline.FramePipeline.run_batch`; this module wires it to topics.
:class:`DepthCore` is that wiring, held by :class:`DepthNode` and by the managed
:class:`depth_node.lifecycle.DepthLifecycleNode`; the process runner is
:mod:`depth_node.runner`.

Subscribed: ``image`` (or ``image/compressed``, or ``relative_depth``), ``camera_info``,
``lidar/points``. Published: the outputs of :data:`depth_node.outputs.OUTPUTS`
(``depth/image``, ``depth/relative``, ``depth/camera_info``, ``depth/points``,
``depth/colored``, ``depth/alignment``) and ``/diagnostics``. With ``input.cameras`` each camera
``N`` has its own ``N/image``, ``N/camera_info`` and ``N/depth/*``, and the frames waiting at
the same time go through one forward pass.
"""

from __future__ import annotations

from collections import deque
import gc
import threading
import time
from typing import Any, Optional

import numpy as np
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.subscription import Subscription
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from depth_node import config as cfg
from depth_node import prompt as pr
from depth_node.camera_info import CameraInfoError
from depth_node.frame_pipeline import (
    CameraState, FramePipeline, Job, read_camera_info, read_scan)
from depth_node.image_codec import ImageDecodeError
from depth_node.lidar import LidarError
from depth_node.mailbox import FrameMailbox
from depth_node.messages import MESSAGES, message_class
from depth_node.model import load_estimator
from depth_node.outputs import build_message, output_topics, OUTPUTS_BY_KEY
from depth_node.problems import EXIT_DEVICE_LOST, Health, Problem, Reporter
from depth_node.runner import run_node
from depth_node.telemetry import StageTimer
from depth_node.text import shorten
from depth_node.transforms import transform_to_matrix

try:  # tf2 is part of every ROS 2 install but not of the PyPI wheels.
    from tf2_ros import Buffer as TfBuffer, TransformListener
except ImportError:  # pragma: no cover - exercised where tf2_ros is absent (CI)
    TfBuffer = None
    TransformListener = None

__all__ = ['DepthCore', 'DepthNode', 'HoldsCore', 'EXIT_DEVICE_LOST', 'main', 'NODE_NAME']

NODE_NAME = 'depth_node'

_CALLBACK_WITH_INFO = hasattr(Subscription, 'CallbackType')
"""Whether rclpy passes a subscription callback the message info (Iron and later)."""

SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.BEST_EFFORT)
"""Sensor-data QoS with depth 1: matches reliable and best-effort publishers, never queues."""

LIDAR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                       reliability=ReliabilityPolicy.BEST_EFFORT)
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.RELIABLE)

_PARAM_TYPES = {'bool': Parameter.Type.BOOL, 'int': Parameter.Type.INTEGER,
                'double': Parameter.Type.DOUBLE, 'string': Parameter.Type.STRING,
                'double_array': Parameter.Type.DOUBLE_ARRAY,
                'int_array': Parameter.Type.INTEGER_ARRAY,
                'string_array': Parameter.Type.STRING_ARRAY}


def _descriptor(spec: cfg.ParamSpec, read_only: bool = True) -> ParameterDescriptor:
    """The descriptor of ``spec``; ``read_only=False`` leaves a restart parameter writable.

    Ranges and choices are stated in ``additional_constraints`` but not given to rclpy as
    ranges to enforce: :mod:`depth_node.config` checks every value, at startup and on a change,
    with one message for both.
    """
    d = ParameterDescriptor(name=spec.name, type=_PARAM_TYPES[spec.type_name].value,
                            description=spec.description,
                            read_only=spec.read_only and read_only,
                            additional_constraints=spec.constraints)
    if spec.type_name == 'double' or spec.accepts_bool:
        # '-p cloud.max_depth:=20' arrives as an integer, 'model.cuda_graphs: true' as a bool;
        # accept them (validation converts them).
        d.dynamic_typing = True
    return d


def declare_parameters(node: Node, read_only: bool = True) -> dict[str, Any]:
    """Declare every parameter of :data:`depth_node.config.PARAMS` on ``node``; their values.

    ``read_only=False`` declares the restart parameters writable (the lifecycle node refuses
    changes to them in its own callback unless it is unconfigured).

    Raises
    ------
    depth_node.config.ConfigError
        When an override has the wrong type.
    """
    for spec in cfg.PARAMS:
        try:
            # ROS cannot type an empty list: declare an unset list by its type
            default = _PARAM_TYPES[spec.type_name] if spec.default == [] else spec.default
            node.declare_parameter(spec.name, default, _descriptor(spec, read_only))
        except ParameterException as exc:
            raise cfg.ConfigError(f'{spec.name}: {exc} ({spec.description})') from exc
    return parameter_values(node)


def parameter_values(node: Node) -> dict[str, Any]:
    """The current value of every declared parameter (an unset list: its default)."""
    values = {}
    for spec in cfg.PARAMS:
        try:
            value = node.get_parameter(spec.name).value
        except ParameterUninitializedException:  # a list declared by type, never set
            value = None
        values[spec.name] = spec.default if value is None else value
    return values


class _Camera(CameraState):
    """One camera: its publishers, recent depth prompts and the last sequence number seen,
    besides the pipeline's state (its latest camera_info and LiDAR fit).

    The node without ``input.cameras`` has one camera named ``''`` whose topics are the plain
    ``image``, ``camera_info`` and ``depth/*``.
    """

    def __init__(self, name: str, index: int, aligner: Any, prompts: int) -> None:
        super().__init__(index=index, aligner=aligner, name=name)
        self.last_sequence: Optional[int] = None  # publisher's sequence number of the last frame
        self.pubs: dict[str, Any] = {}
        self.prompts: deque = deque(maxlen=prompts)  # recent prompt_depth images


class DepthCore:
    """The node's work, held by :class:`DepthNode` and the managed
    :class:`depth_node.lifecycle.DepthLifecycleNode` (``managed``: lifecycle publishers).

    In the order both nodes call them: :meth:`configure` (configuration, model, outputs),
    :meth:`create_inputs`, :meth:`start`; undone by :meth:`stop_worker`,
    :meth:`destroy_interfaces` and :meth:`release_model`. Frames go from the subscriptions into
    a :class:`~depth_node.mailbox.FrameMailbox`, and from it, on the inference thread
    (:meth:`serve`), through :meth:`FramePipeline.run_batch` to the publishers.
    """

    def __init__(self, node: Node, managed: bool = False, serve_on_caller: bool = False,
                 restart: str = 'startup: restart the node') -> None:
        self.node = node
        self.managed = managed
        #: Whether :meth:`serve` is run by the caller (the entry points: on the main thread)
        #: instead of on a worker thread started here (in-process use, tests).
        self.serve_on_caller = serve_on_caller
        self.restart = restart  # how a restart parameter takes effect (a refused change says)
        self.processing = True  # False: frames arriving are dropped and counted (inactive)
        self.reporter = Reporter(self._log, on_fatal=self._device_lost)  # outlives cleanup
        self.health = Health()
        self.timer = StageTimer()
        self.last_timings: dict[str, float] = {}
        self.lock = threading.Lock()  # camera_info, scans and prompts between threads
        self.stop = threading.Event()  # set: no serving (until start(), and after stop_worker())
        self.stop.set()
        self.closed = False  # destroyed: serve() returns for good
        self.exit_code = 0  # EXIT_DEVICE_LOST after a sticky CUDA error
        self.inference_thread = ''  # name of the thread running the forward passes
        self.worker: Optional[threading.Thread] = None
        self.mailbox: FrameMailbox = FrameMailbox(1)
        self.estimator: Any = None
        self.frames: Optional[FramePipeline] = None
        self.cfg: Optional[cfg.NodeConfig] = None
        self.cameras: list[_Camera] = []
        self.scans: deque = deque()
        self.startup_timings: dict[str, float] = {}
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self.inputs: list[Any] = []   # subscriptions
        self._outputs: list[Any] = []  # publishers
        self._pub_diag: Any = None
        self._diag_timer: Any = None

    @property
    def counters(self) -> dict[str, int]:
        """Frame counters: received, processed, dropped, bad input per kind, failures."""
        return self.reporter.counters.snapshot()

    @property
    def is_metric(self) -> bool:
        """Whether the model outputs metric depth."""
        return self.frames.is_metric

    # ------------------------------------------------------------------- setup
    def configure(self, values: dict[str, Any]) -> None:
        """Validate ``values``, load and warm up the model, create the publishers.

        Raises
        ------
        depth_node.config.ConfigError
            When a value is invalid or the model cannot be loaded; nothing is advertised then.
        """
        c = self.cfg = cfg.validate_values(values,
                                           cfg.TF2_NOT_INSTALLED if TfBuffer is None else '')
        self.reporter.per_camera = bool(c['input.cameras'])
        self.reporter.reset()  # failures in a row, once-per-camera lines: a fresh start
        self.scans = deque(maxlen=c['lidar.scan_buffer'])
        self.estimator = None
        if c['input.mode'] == 'image':
            loaded = load_estimator(c, batches=(1, len(c.cameras)), on_note=self._log_note)
            self.estimator, self.startup_timings = loaded.estimator, loaded.timings
        try:
            self.frames = FramePipeline(c, self.estimator)
        except cfg.ConfigError:  # prompt.source does not suit the model
            self.estimator.close()
            self.estimator = None
            raise
        self.cameras = [_Camera(name, i, self.frames.new_aligner(), c['prompt.buffer'])
                        for i, name in enumerate(c.cameras)]
        self.mailbox.reset(len(self.cameras))  # the same mailbox: a waiting take() sees it
        self._tf_buffer = None
        if c['lidar.enabled'] and c.T_camera_lidar is None:
            self._tf_buffer = TfBuffer()  # validate_values made sure tf2_ros is there
            self._tf_listener = TransformListener(self._tf_buffer, self.node)
        self._create_outputs()

    def _log(self, severity: str, line: str) -> None:
        """A problem's log line: one call site per severity (rclpy refuses two from one)."""
        logger = self.node.get_logger()
        if severity == 'fatal':
            logger.fatal(line)
        elif severity == 'error':
            logger.error(line)
        elif severity == 'info':
            logger.info(line)
        else:
            logger.warning(line)

    def _log_note(self, level: str, text: str) -> None:
        """A startup line (``info`` or ``warning``)."""
        if level == 'warning':
            self.node.get_logger().warning(text)
        else:
            self.node.get_logger().info(text)

    def log_ready(self, what: str = 'ready') -> None:
        """One line saying what the node does now."""
        c = self.cfg
        kind = {'metric_depth': 'metric depth (metres)',
                'relative_depth': 'relative depth (larger is farther, no unit)',
                'relative_disparity': 'relative inverse depth'}[self.frames.output_kind]
        cameras = (f', {len(self.cameras)} cameras ({", ".join(c.cameras)}) batched'
                   if c['input.cameras'] else '')
        self.node.get_logger().info(
            f'{what}: input {c["input.mode"]}{cameras}, model output {kind}, LiDAR '
            f'{"on" if c["lidar.enabled"] else "off"}'
            + (f', depth prompt from {c["prompt.source"]}' if c['prompt.source'] else '')
            + (f', per-frame work on {self.estimator.device}' if self.frames.on_device else ''))

    def _create_outputs(self) -> None:
        """Every camera's publishers (:data:`depth_node.outputs.OUTPUTS`), ``/diagnostics``
        and its timer."""
        make = (self.node.create_lifecycle_publisher if self.managed
                else self.node.create_publisher)
        for cam in self.cameras:
            for out in output_topics(self.cfg):
                options = ({'qos_overriding_options':
                            QoSOverridingOptions.with_default_policies()}
                           if out.qos_overrides else {})
                cam.pubs[out.key] = make(message_class(out.msg_type), cam.topic(out.topic),
                                         OUTPUT_QOS, **options)
            self._outputs.extend(cam.pubs.values())
        # /diagnostics stays a plain publisher: counters (frames dropped while a lifecycle node
        # is inactive included) are reported in every configured state
        self._pub_diag = self.node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.node.create_timer(self.cfg['diagnostics.period'],
                                                  self.publish_diagnostics)

    def create_inputs(self) -> None:
        """Every camera's frame and camera_info subscriptions, and ``lidar/points``."""
        qos_opts = QoSOverridingOptions.with_default_policies
        c = self.cfg

        def subscribe(msg_type: Any, topic: str, callback: Any, qos: QoSProfile) -> None:
            self.inputs.append(self.node.create_subscription(
                msg_type, topic, callback, qos, qos_overriding_options=qos_opts()))

        for cam in self.cameras:
            if c['input.mode'] == 'relative_depth':
                kind, msg_type, topic = 'relative', Image, 'relative_depth'
            elif c['input.compressed']:
                kind, msg_type, topic = 'compressed', CompressedImage, 'image/compressed'
            else:
                kind, msg_type, topic = 'image', Image, 'image'
            subscribe(msg_type, cam.topic(topic), self._frame_callback(cam, kind), SENSOR_QOS)
            subscribe(CameraInfo, cam.topic('camera_info'),
                      lambda msg, cam=cam: self._on_camera_info(cam, msg), SENSOR_QOS)
            if c['prompt.source'] == 'depth_image':  # kept for pairing, as scans
                subscribe(Image, cam.topic('prompt_depth'),
                          lambda msg, cam=cam: self._on_prompt_depth(cam, msg), LIDAR_QOS)
        if c['lidar.enabled']:
            subscribe(PointCloud2, 'lidar/points', self._on_lidar, LIDAR_QOS)

    def on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """A ``ros2 param set``: checked by :func:`depth_node.config.validate_change`."""
        no_tf2 = '' if self._tf_buffer is not None else (
            cfg.TF2_NOT_INSTALLED if TfBuffer is None else cfg.TF2_NOT_STARTED)
        try:
            config = cfg.validate_change(self.cfg, {p.name: p.value for p in params}, no_tf2,
                                         self.restart)
        except cfg.ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self.lock:
            self.cfg = self.frames.config = config
            for cam in self.cameras:
                if cam.aligner is not None:
                    cam.aligner.config = self.frames.aligner_config()
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------- teardown
    def drop_pending(self, counter: str) -> None:
        """Drop every frame waiting for the inference thread, counting each in ``counter``."""
        for index in self.mailbox.drop_all():
            self.reporter.count(counter, self.cameras[index].name)

    def destroy_interfaces(self) -> None:
        """Destroy the subscriptions, publishers, timer and tf listener (the worker stopped)."""
        node = self.node
        for sub in self.inputs:
            node.destroy_subscription(sub)
        for pub in self._outputs:
            if self.managed:
                node.destroy_lifecycle_publisher(pub)
            else:
                node.destroy_publisher(pub)
        self.inputs, self._outputs = [], []
        for cam in self.cameras:
            cam.pubs = {}
        if self._diag_timer is not None:
            node.destroy_timer(self._diag_timer)
            node.destroy_publisher(self._pub_diag)
            self._diag_timer = self._pub_diag = None
        if self._tf_listener is not None and hasattr(self._tf_listener, 'unregister'):
            self._tf_listener.unregister()
        self._tf_listener = self._tf_buffer = None

    def release_model(self) -> None:
        """Drop the estimator and give its memory back (the CUDA cache included)."""
        estimator, self.estimator = self.estimator, None
        if estimator is None:
            return
        self.frames.estimator = None
        on_cuda = estimator.device.type == 'cuda'
        estimator.close()
        del estimator
        gc.collect()
        if on_cuda:
            import torch
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- callbacks
    def _frame_callback(self, cam: _Camera, kind: str) -> Any:
        """The camera's frame callback; with the message info where rclpy passes it (Iron and
        later), to count the frames lost before the callback."""
        if _CALLBACK_WITH_INFO:
            return lambda msg, info: self._submit(cam, kind, msg, info)
        return lambda msg: self._submit(cam, kind, msg)

    def count_lost(self, cam: _Camera, info: Any) -> None:
        """Count the frames the publisher sent that never reached this callback (overwritten in
        the depth-1 queue, or lost on the wire), from the gap in its sequence numbers.

        A sequence number at or below the last one (another publisher on the topic, or one that
        restarted) only restarts the count.
        """
        seq = info.get('publication_sequence_number') if isinstance(info, dict) else getattr(
            info, 'publication_sequence_number', None)
        if not seq:  # None (the RMW does not say) or 0 (unknown)
            return
        last, cam.last_sequence = cam.last_sequence, int(seq)
        if last is not None and seq > last + 1:
            self.reporter.count('frames_lost_before_callback', cam.name, int(seq - last - 1))

    def _submit(self, cam: _Camera, kind: str, msg: Any, info: Any = None) -> None:
        """Newest frame wins (:class:`~depth_node.mailbox.FrameMailbox`). A raw image whose
        fields cannot describe its data is refused here, so it never displaces a good frame
        that is waiting."""
        if info is not None:
            self.count_lost(cam, info)
        self.reporter.count('frames_received', cam.name)
        if not self.processing:  # a lifecycle node that is not active
            self.reporter.count('frames_dropped_inactive', cam.name)
            return
        if not self.frames.accepts(kind, msg, cam, self.reporter):
            return
        if self.mailbox.put(cam.index, (kind, msg)):
            self.reporter.count('frames_dropped', cam.name)

    def _on_camera_info(self, cam: _Camera, msg: CameraInfo) -> None:
        try:
            intr = read_camera_info(msg)
        except CameraInfoError as exc:
            self._bad_input('camera_info', f'{cam.topic("camera_info")} refused: {exc}')
            return
        with self.lock:
            cam.intrinsics = intr

    def _on_lidar(self, msg: PointCloud2) -> None:
        try:
            scan = read_scan(msg)
        except LidarError as exc:
            self._bad_input('lidar', f'lidar/points refused: {exc}')
            return
        with self.lock:
            self.scans.append(scan)

    def _on_prompt_depth(self, cam: _Camera, msg: Image) -> None:
        """Reduce a ``prompt_depth`` image to its prompt grid and keep it for pairing."""
        try:
            prompt = pr.prompt_from_message(msg, self.cfg['prompt.max_side'])
        except (ImageDecodeError, pr.PromptError) as exc:
            self._bad_input('prompt_depth', f'{cam.topic("prompt_depth")} refused: {exc}')
            return
        with self.lock:
            cam.prompts.append(prompt)

    def _bad_input(self, what: str, text: str) -> None:
        self.reporter.report(Problem(f'bad_{what}', text))

    # ---------------------------------------------------------------- inference
    def start(self) -> None:
        """Serve frames from now on: on a worker thread, or, when the process entry point runs
        :meth:`serve` on its main thread (``serve_on_caller``), there."""
        self.stop = threading.Event()
        if self.serve_on_caller:
            return
        self.worker = threading.Thread(target=self._work, name='depth_node_worker',
                                       daemon=True)
        self.worker.start()

    def serve(self) -> None:
        """Run the forward passes on the calling thread until the node is destroyed, serving
        stops for good (:meth:`end_serving`) or its context shuts down (a signal).

        The entry points call this on the process's main thread while the executor spins on a
        background thread: a forward pass on a non-main thread ran 1.09-1.16x slower on the same
        estimator (issue 14; ``bench/bench_threads.py``), and the main thread is the one the
        model was warmed up on. Between a lifecycle cleanup and the next configure it idles.
        """
        while not self.closed and self.node.context.ok():
            if self.stop.is_set():  # not started yet, or cleaned up: wait for the next start
                time.sleep(0.05)
                continue
            self._work()

    def end_serving(self) -> None:
        """Make :meth:`serve` return after the frame in hand."""
        self.closed = True
        self.stop.set()
        self.mailbox.wake()

    def stop_worker(self, timeout: float = 1.0) -> None:
        """Stop the worker: it finishes, or after ``timeout`` s abandons, the frame in hand."""
        self.stop.set()
        self.mailbox.wake()
        if self.worker is not None:
            self.worker.join(timeout=timeout)
            self.worker = None
        elif self.serve_on_caller and threading.current_thread() is not threading.main_thread():
            self.mailbox.idle.wait(timeout)  # serve() on the main thread finishes its frame

    def shutting_down(self) -> bool:
        """Whether the node is stopping: destroy_node() began, or a signal shut its context
        down first (SIGINT, SIGTERM), so publishing may fail."""
        return self.stop.is_set() or not self.node.context.ok()

    def _work(self) -> None:
        self.inference_thread = threading.current_thread().name
        while not self.shutting_down():
            taken = self.mailbox.take(self.shutting_down, self.cfg['input.batch_wait'])
            if not taken:
                continue
            try:
                self._run(taken)
            except Exception:  # noqa: BLE001 - e.g. from logging: the worker must live on
                self.reporter.count('frame_errors')
            finally:
                self.mailbox.done()

    def _run(self, taken: list[tuple[int, Any, Any]]) -> None:
        """The frames taken from the mailbox through :meth:`FramePipeline.run_batch`."""
        jobs = []
        for index, (kind, msg), displaced in taken:
            cam = self.cameras[index]
            # nothing is built for an output nobody subscribes (depth/alignment is always sent)
            wanted = frozenset(key for key, pub in cam.pubs.items()
                               if not OUTPUTS_BY_KEY[key].lazy
                               or pub.get_subscription_count() > 0)
            jobs.append(Job(cam, kind, msg, displaced[1] if displaced else None,
                            wanted=wanted, scans=self._scans_now,
                            prompts=lambda cam=cam: self._prompts_now(cam)))
        result = self.frames.run_batch(jobs, self._publish, self.reporter, self._lookup_tf,
                                       self.timer, self.shutting_down)
        if result.timings:
            self.last_timings = result.timings

    def _scans_now(self) -> list:
        with self.lock:
            return list(self.scans)

    def _prompts_now(self, cam: _Camera) -> list:
        with self.lock:
            return list(cam.prompts)

    def _publish(self, job: Job, key: str, value: Any) -> None:
        """Publish output ``key`` of a job's frame on its camera's topic, with its header."""
        cam = job.camera
        cam.pubs[key].publish(build_message(MESSAGES, key, value, job.frame.header,
                                            self.node.get_name(), cam.name))

    def _device_lost(self, problem: Problem) -> None:
        """A sticky CUDA error (logged once by the reporter): shut the node down with
        :data:`EXIT_DEVICE_LOST`, so that a supervisor (systemd, launch ``respawn``) restarts
        the process; nothing on this GPU works again in this process."""
        self.exit_code = EXIT_DEVICE_LOST
        self.stop.set()
        self.node.context.try_shutdown()

    def _lookup_tf(self, lidar_frame: str, header: Any) -> Optional[np.ndarray]:
        """The LiDAR-to-camera transform from tf2 at the frame's stamp; None (counted, logged)
        when there is none."""
        if self._tf_buffer is None:
            return None
        try:
            tf = self._tf_buffer.lookup_transform(header.frame_id, lidar_frame, header.stamp)
        except Exception as exc:  # noqa: BLE001 - tf2 raises several lookup exceptions
            self._bad_input('tf', f'no transform {shorten(lidar_frame)} -> '
                                  f'{shorten(header.frame_id)}: {exc}')
            return None
        return transform_to_matrix(tf.transform)

    # --------------------------------------------------------------- diagnostics
    def publish_diagnostics(self) -> None:
        """``/diagnostics``: the counters, the last frame's stage times, the level
        (:class:`depth_node.problems.Health`)."""
        counts = self.reporter.counters.snapshot()
        level, message = self.health.update(counts, self.reporter.in_a_row)
        values = [KeyValue(key=k, value=str(v)) for k, v in sorted(counts.items())]
        values += [KeyValue(key=f'time_ms.{k}', value=f'{v * 1e3:.2f}')
                   for k, v in self.last_timings.items()]
        if self.inference_thread:  # which thread runs the forward passes (issue 14)
            values.append(KeyValue(key='inference_thread', value=self.inference_thread))
        status = DiagnosticStatus(level=bytes([level]), name=f'{self.node.get_name()}: pipeline',
                                  message=message,
                                  hardware_id=self.node.get_fully_qualified_name(),
                                  values=values)
        from std_msgs.msg import Header
        header = Header(stamp=self.node.get_clock().now().to_msg())
        self._pub_diag.publish(DiagnosticArray(header=header, status=[status]))


class HoldsCore:
    """What :class:`DepthNode` and the lifecycle node show of their :class:`DepthCore`
    (``self.core``): nothing but delegating properties."""

    core: DepthCore

    @property
    def counters(self) -> dict[str, int]:
        """Frame counters (:attr:`DepthCore.counters`)."""
        return self.core.counters

    @property
    def last_timings(self) -> dict[str, float]:
        """The last frame's stage times, seconds."""
        return self.core.last_timings


class DepthNode(HoldsCore, Node):
    """Camera image in; depth image, relative depth, camera_info and point cloud out.

    Loads the model and starts serving in the constructor. The managed variant, configured and
    activated through lifecycle transitions, is :class:`depth_node.lifecycle.DepthLifecycleNode`.

    Raises
    ------
    depth_node.config.ConfigError
        From the constructor, before any topic is advertised, when a parameter is invalid or
        the model cannot be loaded.
    """

    def __init__(self, serve_on_caller: bool = False, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.core = DepthCore(self, serve_on_caller=serve_on_caller)
        self.core.configure(declare_parameters(self))
        self.add_on_set_parameters_callback(self.core.on_set_parameters)
        self.core.create_inputs()
        self.core.start()
        self.core.log_ready()

    def destroy_node(self) -> None:
        """Stop the worker (it finishes or abandons the frame in hand), then the node."""
        self.core.closed = True
        self.core.stop_worker()
        super().destroy_node()


def main(args: Optional[list[str]] = None, exit_process: bool = True) -> int:
    """Entry point of ``ros2 run depth_node depth_node``.

    ``args`` as ``rclpy.init`` takes them (``sys.argv`` when None); exit codes and
    ``exit_process`` as :func:`depth_node.runner.run_node`.
    """
    return run_node(lambda options: DepthNode(serve_on_caller=True), NODE_NAME, args,
                    exit_process)


if __name__ == '__main__':
    main()
