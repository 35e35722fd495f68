"""The ROS 2 node: parameters, QoS, subscriptions, the inference worker and publishing.

Everything else (decoding, the network, LiDAR alignment, clouds, message packing) lives in the
ROS-free modules of this package; this module wires them to topics.

Subscribed: ``image`` (or ``image/compressed``, or ``relative_depth``), ``camera_info``,
``lidar/points``. Published: ``depth/image``, ``depth/relative``, ``depth/camera_info``,
``depth/points``, ``depth/colored``, ``depth/alignment``, ``/diagnostics``. With
``input.cameras`` each camera ``N`` has its own ``N/image``, ``N/camera_info`` and ``N/depth/*``,
and the frames waiting at the same time go through one forward pass.
"""

from __future__ import annotations

from collections import deque
import gc
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Optional

import numpy as np
import rclpy
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
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
from depth_node.alignment import Aligner
from depth_node.camera_info import CameraInfoError
from depth_node.frame_pipeline import (
    alignment_status, AlignmentReport, CameraState, Frame, FramePipeline, image_encoding,
    INPUT_TOPICS, load_estimator, nearest_scan, Problem, read_camera_info, read_scan)
from depth_node.image_codec import ImageDecodeError
from depth_node.lidar import LidarError
from depth_node.messages import camera_info_msg, cloud_msg, image_msg
from depth_node.telemetry import Counters, StageTimer, Throttle
from depth_node.text import bounded as _bounded, shorten
from depth_node.transforms import transform_to_matrix

try:  # tf2 is part of every ROS 2 install but not of the PyPI wheels.
    from tf2_ros import Buffer as TfBuffer, TransformListener
except ImportError:  # pragma: no cover - exercised where tf2_ros is absent (CI)
    TfBuffer = None
    TransformListener = None

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

EXIT_DEVICE_LOST = 3
"""Exit code of :func:`main` after a sticky CUDA error (illegal memory access, device-side
assert, lost GPU): the process must restart to use the GPU again."""

PROBLEM_HOLD = 10.0
"""Seconds /diagnostics stays WARN after the last bad message or skipped frame."""

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
    if spec.type_name == 'double':
        # '-p cloud.max_depth:=20' arrives as an integer; accept it (validation converts it).
        d.dynamic_typing = True
    return d


_Job = tuple[str, Any]
"""A received frame: its kind ('image', 'compressed' or 'relative') and message."""


class _Camera(CameraState):
    """One camera: its topics, publishers and waiting frame, besides the pipeline's state (its
    latest camera_info and LiDAR fit).

    The node without ``input.cameras`` has one camera named ``''`` whose topics are the plain
    ``image``, ``camera_info`` and ``depth/*``.
    """

    def __init__(self, name: str, index: int, aligner: Optional[Aligner]) -> None:
        super().__init__(index=index, aligner=aligner)
        self.name = name
        self.prefix = f'{name}/' if name else ''
        self.warned_no_info = False
        self.pending: Optional[_Job] = None    # not started yet
        self.displaced: Optional[_Job] = None  # what pending replaced
        self.last_sequence: Optional[int] = None  # publisher's sequence number of the last frame
        self.pubs: dict[str, Any] = {}
        self.prompts: deque = deque()  # recent prompt_depth images (pr.PromptImage)

    def topic(self, name: str) -> str:
        return self.prefix + name


class DepthNodeBase:
    """The node's work, shared by :class:`DepthNode` and the managed
    :class:`depth_node.lifecycle.DepthLifecycleNode`: parameters, model, topics, the worker.

    A mixin for rclpy's ``Node`` or ``LifecycleNode`` (it uses their methods). The building
    blocks, in the order both nodes call them: :meth:`_init_pipeline` (once),
    :meth:`_declare_parameters` (once), :meth:`_configure` (configuration, model, outputs),
    :meth:`_create_inputs`, :meth:`_start_worker`; undone by :meth:`_stop_worker`,
    :meth:`_destroy_interfaces` and :meth:`_release_model`.
    """

    _processing = True
    """Whether frames arriving are processed (False: dropped and counted; a lifecycle node that
    is not active)."""

    #: Whether :meth:`serve` is run by the caller (the entry points: on the main thread)
    #: instead of on a worker thread the node starts itself (in-process use, tests).
    serve_on_caller = False

    #: How a restart parameter takes effect: the reason a change of one is refused.
    _restart = 'startup: restart the node'

    def _init_pipeline(self) -> None:
        """State that lives as long as the node (counters survive a lifecycle cleanup)."""
        self._counters = Counters()
        self._throttle = Throttle(period=5.0)
        self._timer = StageTimer()
        self.last_timings: dict[str, float] = {}
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._closed = False  # destroyed: serve() returns for good
        self.exit_code = 0  # EXIT_DEVICE_LOST after a sticky CUDA error
        self._inference_thread = ''  # name of the thread running the forward passes
        self._idle = threading.Event()  # set while the worker holds no frame
        self._idle.set()
        self._worker: Optional[threading.Thread] = None
        self._estimator = None
        self._tf_buffer = None
        self._tf_listener = None
        self._inputs: list[Any] = []   # subscriptions
        self._outputs: list[Any] = []  # publishers and the diagnostics timer
        self._cameras: list[_Camera] = []
        self._problems: dict[str, int] = {}  # problem counters at the last change
        self._problems_changed = -math.inf    # monotonic time of that change
        self._problems_new: list[str] = []    # the counters that changed then

    def _declare_parameters(self, read_only: bool = True) -> dict[str, Any]:
        """Declare every parameter of :data:`depth_node.config.PARAMS`; return their values.

        ``read_only=False`` declares the restart parameters writable (the lifecycle node
        refuses changes to them in its own callback unless it is unconfigured).

        Raises
        ------
        depth_node.config.ConfigError
            When an override has the wrong type.
        """
        for spec in cfg.PARAMS:
            try:
                # ROS cannot type an empty list: declare an unset list by its type
                default = _PARAM_TYPES[spec.type_name] if spec.default == [] else spec.default
                self.declare_parameter(spec.name, default, _descriptor(spec, read_only))
            except ParameterException as exc:
                raise cfg.ConfigError(f'{spec.name}: {exc} ({spec.description})') from exc
        return self._parameter_values()

    def _parameter_values(self) -> dict[str, Any]:
        """The current value of every declared parameter (an unset list: its default)."""
        values = {}
        for spec in cfg.PARAMS:
            try:
                value = self.get_parameter(spec.name).value
            except ParameterUninitializedException:  # a list declared by type, never set
                value = None
            values[spec.name] = spec.default if value is None else value
        return values

    def _configure(self, values: dict[str, Any]) -> None:
        """Validate ``values``, load and warm up the model, create the publishers.

        Raises
        ------
        depth_node.config.ConfigError
            When a value is invalid or the model cannot be loaded; nothing is advertised then.
        """
        self._cfg = cfg.validate_values(values,
                                        cfg.TF2_NOT_INSTALLED if TfBuffer is None else '')
        self._named = bool(self._cfg['input.cameras'])
        self._scans: deque = deque(maxlen=self._cfg['lidar.scan_buffer'])
        self._consecutive_failures = 0

        self._estimator = None
        if self._cfg['input.mode'] == 'image':
            loaded = load_estimator(self._cfg, batches=(1, len(self._cfg.cameras)),
                                    on_note=self._log_note)
            self._estimator, self.startup_timings = loaded.estimator, loaded.timings
        try:
            frames = FramePipeline(self._cfg, self._estimator)
        except cfg.ConfigError:  # prompt.source does not suit the model
            self._estimator.close()
            self._estimator = None
            raise
        self._frames = frames
        self._cameras = [_Camera(name, i, self._frames.new_aligner())
                         for i, name in enumerate(self._cfg.cameras)]
        for cam in self._cameras:
            cam.prompts = deque(maxlen=self._cfg['prompt.buffer'])

        self._tf_buffer = None
        if self._cfg['lidar.enabled'] and self._cfg.T_camera_lidar is None:
            self._tf_buffer = TfBuffer()  # validate_values made sure tf2_ros is there
            self._tf_listener = TransformListener(self._tf_buffer, self)
        self._create_outputs()

    def _log_note(self, level: str, text: str) -> None:
        """A startup line: one call site per severity (rclpy refuses two from one line)."""
        if level == 'warning':
            self.get_logger().warning(text)
        else:
            self.get_logger().info(text)

    def _log_ready(self, what: str = 'ready') -> None:
        output = self._frames.output_kind
        kind = {'metric_depth': 'metric depth (metres)',
                'relative_depth': 'relative depth (larger is farther, no unit)',
                'relative_disparity': 'relative inverse depth'}[output]
        cameras = (f', {len(self._cameras)} cameras ({", ".join(self._cfg.cameras)}) batched'
                   if self._named else '')
        self.get_logger().info(
            f'{what}: input {self._cfg["input.mode"]}{cameras}, model output {kind}, LiDAR '
            f'{"on" if self._cfg["lidar.enabled"] else "off"}'
            + (f', depth prompt from {self._cfg["prompt.source"]}'
               if self._cfg['prompt.source'] else ''))

    @property
    def _is_metric(self) -> bool:
        """Whether the model outputs metric depth."""
        return self._frames.is_metric

    def _make_publisher(self, msg_type: Any, topic: str, qos: Any, **kwargs: Any) -> Any:
        """A publisher for an output topic (the lifecycle node makes managed ones)."""
        return self.create_publisher(msg_type, topic, qos, **kwargs)

    def _destroy_publisher(self, pub: Any) -> None:
        self.destroy_publisher(pub)

    def _create_outputs(self) -> None:
        """Every camera's publishers, ``/diagnostics`` and its timer."""
        qos_opts = QoSOverridingOptions.with_default_policies
        for cam in self._cameras:
            if self._cfg['lidar.enabled'] or self._cfg['prompt.source']:
                cam.pubs['alignment'] = self._make_publisher(
                    DiagnosticStatus, cam.topic('depth/alignment'), OUTPUT_QOS)
            for key, msg_type, topic in (('depth', Image, 'depth/image'),
                                         ('relative', Image, 'depth/relative'),
                                         ('info', CameraInfo, 'depth/camera_info'),
                                         ('points', PointCloud2, 'depth/points')):
                cam.pubs[key] = self._make_publisher(msg_type, cam.topic(topic), OUTPUT_QOS,
                                                     qos_overriding_options=qos_opts())
            cam.pubs['colored'] = self._make_publisher(Image, cam.topic('depth/colored'),
                                                       OUTPUT_QOS)
            self._outputs.extend(cam.pubs.values())
        # /diagnostics stays a plain publisher: counters (frames dropped while a lifecycle node
        # is inactive included) are reported in every configured state
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(self._cfg['diagnostics.period'],
                                             self._publish_diagnostics)

    def _create_inputs(self) -> None:
        """Every camera's frame and camera_info subscriptions, and ``lidar/points``."""
        qos_opts = QoSOverridingOptions.with_default_policies
        mode = self._cfg['input.mode']
        for cam in self._cameras:
            if mode == 'relative_depth':
                kind, msg_type, topic = 'relative', Image, 'relative_depth'
            elif self._cfg['input.compressed']:
                kind, msg_type, topic = 'compressed', CompressedImage, 'image/compressed'
            else:
                kind, msg_type, topic = 'image', Image, 'image'
            self._inputs.append(self.create_subscription(
                msg_type, cam.topic(topic),
                self._frame_callback(cam, kind), SENSOR_QOS,
                qos_overriding_options=qos_opts()))
            self._inputs.append(self.create_subscription(
                CameraInfo, cam.topic('camera_info'),
                lambda msg, cam=cam: self._on_camera_info(cam, msg), SENSOR_QOS,
                qos_overriding_options=qos_opts()))
            if self._cfg['prompt.source'] == 'depth_image':  # kept for pairing, as scans
                self._inputs.append(self.create_subscription(
                    Image, cam.topic('prompt_depth'),
                    lambda msg, cam=cam: self._on_prompt_depth(cam, msg), LIDAR_QOS,
                    qos_overriding_options=qos_opts()))
        if self._cfg['lidar.enabled']:
            self._inputs.append(self.create_subscription(
                PointCloud2, 'lidar/points', self._on_lidar, LIDAR_QOS,
                qos_overriding_options=qos_opts()))

    def _start_worker(self) -> None:
        """Serve frames from now on: on a worker thread, or, when the process entry point runs
        :meth:`serve` on its main thread (``serve_on_caller``), there."""
        self._stop = threading.Event()
        if self.serve_on_caller:
            return
        self._worker = threading.Thread(target=self._work, name='depth_node_worker',
                                        daemon=True)
        self._worker.start()

    def serve(self) -> None:
        """Run the forward passes on the calling thread until the node is destroyed, serving
        stops for good (:meth:`_end_serving`) or its context shuts down (a signal).

        The entry points call this on the process's main thread while the executor spins on a
        background thread: a forward pass on a non-main thread ran 1.09-1.16x slower on the same
        estimator (issue 14; ``bench/bench_threads.py``), and the main thread is the one the
        model was warmed up on. Between a lifecycle cleanup and the next configure it idles.
        """
        while not self._closed and self.context.ok():
            if self._stop.is_set():  # stopped (lifecycle cleanup): wait for the next start
                time.sleep(0.05)
                continue
            self._work()

    def _end_serving(self) -> None:
        """Make :meth:`serve` return after the frame in hand."""
        self._closed = True
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def _stop_worker(self, timeout: float = 1.0) -> None:
        """Stop the worker: it finishes, or after ``timeout`` s abandons, the frame in hand."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=timeout)
            self._worker = None
        elif self.serve_on_caller and threading.current_thread() is not threading.main_thread():
            self._idle.wait(timeout)  # serve() on the main thread finishes the frame in hand

    def _drop_pending(self, counter: str) -> None:
        """Drop every frame waiting for the worker, counting each in ``counter``."""
        with self._cv:
            for cam in self._cameras:
                if cam.pending is not None:
                    self._count(counter, cam)
                cam.pending = cam.displaced = None

    def _destroy_interfaces(self) -> None:
        """Destroy the subscriptions, publishers, timer and tf listener (the worker stopped)."""
        for sub in self._inputs:
            self.destroy_subscription(sub)
        for pub in self._outputs:
            self._destroy_publisher(pub)
        self._inputs, self._outputs = [], []
        for cam in self._cameras:
            cam.pubs = {}
        if getattr(self, '_diag_timer', None) is not None:
            self.destroy_timer(self._diag_timer)
            self.destroy_publisher(self._pub_diag)
            self._diag_timer = self._pub_diag = None
        if self._tf_listener is not None and hasattr(self._tf_listener, 'unregister'):
            self._tf_listener.unregister()
        self._tf_listener = self._tf_buffer = None

    def _release_model(self) -> None:
        """Drop the estimator and give its memory back (the CUDA cache included)."""
        estimator, self._estimator = self._estimator, None
        if estimator is None:
            return
        self._frames.estimator = None
        on_cuda = estimator.device.type == 'cuda'
        estimator.close()
        del estimator
        gc.collect()
        if on_cuda:
            import torch
            torch.cuda.empty_cache()

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """A ``ros2 param set``: checked by :func:`depth_node.config.validate_change`."""
        no_tf2 = '' if self._tf_buffer is not None else (
            cfg.TF2_NOT_INSTALLED if TfBuffer is None else cfg.TF2_NOT_STARTED)
        try:
            config = cfg.validate_change(self._cfg, {p.name: p.value for p in params}, no_tf2,
                                         self._restart)
        except cfg.ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._lock:
            self._cfg = self._frames.config = config
            for cam in self._cameras:
                if cam.aligner is not None:
                    cam.aligner.config = self._frames.aligner_config()
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- callbacks
    def _frame_callback(self, cam: _Camera, kind: str) -> Any:
        """The camera's frame callback; with the message info where rclpy passes it (Iron and
        later), to count the frames lost before the callback."""
        if _CALLBACK_WITH_INFO:
            return lambda msg, info: self._submit(cam, kind, msg, info)
        return lambda msg: self._submit(cam, kind, msg)

    def _count_lost(self, cam: _Camera, info: Any) -> None:
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
            self._count('frames_lost_before_callback', cam, int(seq - last - 1))

    def _submit(self, cam: _Camera, kind: str, msg: Any, info: Any = None) -> None:
        """Newest frame wins: replace a frame the worker has not started, counting it dropped.

        A raw image whose fields cannot describe its data is refused here, so it never
        displaces a good frame that is waiting. The frame a newcomer displaces is kept until the
        worker starts, and served instead when the newcomer fails to decode (a corrupt JPEG).
        Each camera has its own waiting frame.
        """
        if info is not None:
            self._count_lost(cam, info)
        self._count('frames_received', cam)
        if not self._processing:  # a lifecycle node that is not active
            self._count('frames_dropped_inactive', cam)
            return
        try:
            self._frames.check(kind, msg)
        except ImageDecodeError as exc:
            self._bad_input('image', f'{cam.topic(INPUT_TOPICS[kind])} refused: {exc}')
            return
        with self._cv:
            if cam.pending is not None:
                self._count('frames_dropped', cam)
                cam.displaced = cam.pending
            cam.pending = (kind, msg)
            self._cv.notify()

    def _count(self, name: str, cam: _Camera, n: int = 1) -> None:
        """Add to a counter, and to the camera's own ``name.<camera>`` with input.cameras."""
        self._counters.add(name, n)
        if self._named:
            self._counters.add(f'{name}.{cam.name}', n)

    def _on_camera_info(self, cam: _Camera, msg: CameraInfo) -> None:
        try:
            intr = read_camera_info(msg)
        except CameraInfoError as exc:
            self._bad_input('camera_info', f'{cam.topic("camera_info")} refused: {exc}')
            return
        with self._lock:
            cam.intrinsics = intr

    def _on_lidar(self, msg: PointCloud2) -> None:
        try:
            scan = read_scan(msg)
        except LidarError as exc:
            self._bad_input('lidar', f'lidar/points refused: {exc}')
            return
        with self._lock:
            self._scans.append(scan)

    def _on_prompt_depth(self, cam: _Camera, msg: Image) -> None:
        """Reduce a ``prompt_depth`` image to its prompt grid and keep it for pairing."""
        try:
            prompt = pr.prompt_from_message(msg, self._cfg['prompt.max_side'])
        except (ImageDecodeError, pr.PromptError) as exc:
            self._bad_input('prompt_depth', f'{cam.topic("prompt_depth")} refused: {exc}')
            return
        with self._lock:
            cam.prompts.append(prompt)

    def _bad_input(self, key: str, text: str) -> None:
        self._counters.add(f'bad_{key}')
        if self._throttle.ready(key):
            self.get_logger().warning(f'{_bounded(text)} (bad {key} messages so far: '
                                      f'{self._counters.get("bad_" + key)})')

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        self._inference_thread = threading.current_thread().name
        while not self._shutting_down():
            with self._cv:
                while not any(c.pending for c in self._cameras) and not self._shutting_down():
                    self._cv.wait(0.1)
                wait = self._cfg['input.batch_wait']
                if wait > 0 and len(self._cameras) > 1:  # let the other cameras catch up
                    deadline = time.monotonic() + wait
                    while not all(c.pending for c in self._cameras) and not self._stop.is_set():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cv.wait(left)
                jobs = []
                for cam in self._cameras:
                    if cam.pending is not None:
                        jobs.append((cam, cam.pending, cam.displaced))
                        cam.pending = cam.displaced = None
                if jobs:
                    self._idle.clear()
            if jobs:
                try:
                    self._run_batch(jobs)
                except Exception:  # noqa: BLE001 - e.g. from logging: the worker must live on
                    self._counters.add('frame_errors')
                finally:
                    self._idle.set()

    def _run_batch(self, jobs: list[tuple[_Camera, _Job, Optional[_Job]]]) -> None:
        """Decode each camera's frame (its displaced one when the newest does not decode), run
        the network once per input size on all of them, then finish each frame."""
        timer = self._timer
        timer.start()
        frames: list[tuple[_Camera, Frame]] = []
        for cam, job, displaced in jobs:
            frame = self._decode_or_skip(cam, job)
            if frame is None and displaced is not None:
                self._count('frames_dropped', cam, -1)  # served after all
                frame = self._decode_or_skip(cam, displaced)
            if frame is not None:
                frames.append((cam, frame))
        if self._frames.prompt_source:  # the prompt goes into the network with the image
            for cam, frame in frames:
                with self._lock:
                    images, scans = list(cam.prompts), list(self._scans)
                self._frames.pair_prompt(frame, cam, images, scans, self._lookup_tf)
        timer.mark('decode')
        if self._estimator is not None:
            by_size: dict[tuple[int, int], list[tuple[_Camera, Frame]]] = {}
            for cam, frame in frames:
                by_size.setdefault(frame.rgb.shape[:2], []).append((cam, frame))
            for group in by_size.values():
                timings = self._forward(group)
                for stage in ('preprocess', 'forward', 'postprocess', 'cloud'):
                    if stage in timings:
                        timer.add(stage, timings[stage])
            timer.skip()  # the stages above are the whole of the forward passes
        for cam, frame in frames:
            if frame.prediction is None:
                continue  # its forward pass failed (counted)
            try:
                self._finish(cam, frame, timer)
            except Exception as exc:  # noqa: BLE001 - one frame must never stop the node
                if self._shutting_down():
                    return  # the publishers are gone, nothing went wrong
                self._frame_error(exc)
        if frames:
            self.last_timings = timer.finish()

    def _shutting_down(self) -> bool:
        """Whether the node is stopping: destroy_node() began, or a signal shut its context
        down first (SIGINT, SIGTERM), so publishing may fail."""
        return self._stop.is_set() or not self.context.ok()

    def _decode_or_skip(self, cam: _Camera, job: _Job) -> Optional[Frame]:
        """The decoded frame, or None when it is refused (logged and counted)."""
        try:
            return self._frames.decode(*job)
        except ImageDecodeError as exc:
            self._bad_input('image', f'{cam.topic(INPUT_TOPICS[job[0]])} refused: {exc}')
        except Exception as exc:  # noqa: BLE001 - one frame must never stop the node
            self._frame_error(exc)
        return None

    def _frame_error(self, exc: Exception) -> None:
        """Count a frame skipped by an unexpected error; log it (throttled)."""
        self._counters.add('frame_errors')
        if self._throttle.ready('frame_error'):
            self.get_logger().error(f'frame skipped: {type(exc).__name__}: {_bounded(exc)}')

    def _forward(self, group: list[tuple[_Camera, Frame]]) -> dict[str, float]:
        """One forward pass over same-size frames; its stage timings. When it fails, each frame
        is skipped, counted and logged (no timings)."""
        # a metric model's clouds are back-projected where the depth is (the GPU), and come
        # back with it, when depth/points has a subscriber
        want_points = [cam.pubs['points'].get_subscription_count() > 0 for cam, _ in group]
        result = self._frames.forward([f for _, f in group], [c for c, _ in group], want_points)
        exc = result.error
        if exc is not None:
            from depth_node.estimator.device import error_text, is_device_lost  # with the model

            self._counters.add('forward_failures')
            self._consecutive_failures += 1
            if is_device_lost(exc):
                self._device_lost(exc)
            elif self._throttle.ready('forward'):
                self.get_logger().error(
                    f'forward pass failed ({self._consecutive_failures} in a row): '
                    f'{type(exc).__name__}: {_bounded(error_text(exc))}')
            return {}
        self._consecutive_failures = 0
        self._counters.add('forward_passes')
        self._counters.add('forward_frames', len(group))
        if result.non_finite:
            self._counters.add('non_finite_outputs', result.non_finite)
            if self._throttle.ready('non_finite'):
                self.get_logger().warning(
                    f'{result.non_finite} frame(s) with NaN or infinite network output '
                    f'(published as NaN; so far {self._counters.get("non_finite_outputs")}): '
                    'an fp16 overflow? set model.precision to bf16 or fp32')
        return result.timings

    def _device_lost(self, exc: Exception) -> None:
        """A sticky CUDA error: log it once and shut the node down with
        :data:`EXIT_DEVICE_LOST`, so that a supervisor (systemd, launch ``respawn``) restarts
        the process; nothing on this GPU works again in this process."""
        if self.exit_code == EXIT_DEVICE_LOST:
            return
        self.exit_code = EXIT_DEVICE_LOST
        self.get_logger().fatal(
            f'the GPU is unusable in this process ({type(exc).__name__}: {exc}); exiting with '
            f'code {EXIT_DEVICE_LOST} so that a supervisor restarts the node')
        self._stop.set()
        self._request_shutdown()

    def _request_shutdown(self) -> None:
        """Shut the node's context down: ``main`` returns from spinning and exits."""
        self.context.try_shutdown()

    def _finish(self, cam: _Camera, frame: Frame, timer: StageTimer) -> None:
        """Everything after the network for one frame (:meth:`FramePipeline.finish`), each
        output published as soon as it is ready; then its problems logged and counted."""
        pubs = cam.pubs
        # nothing is built for an output nobody subscribes (depth/alignment is always sent)
        wanted = {key for key, pub in pubs.items() if pub.get_subscription_count() > 0}
        scan = None
        if cam.aligner is not None:
            with self._lock:
                scans = list(self._scans)
            scan = nearest_scan(scans, frame.stamp, self._cfg['lidar.max_time_offset'])
            if scan is None and scans:
                self._counters.add('lidar_unpaired')
        self._frames.finish(frame, cam, wanted, self._sink(cam, frame.header), scan,
                            self._lookup_tf, timer)
        self._count('frames_processed', cam)

    def _sink(self, cam: _Camera, header: Any) -> Callable[[str, Any], None]:
        """Publishes each output of a frame on the camera's topic, with the frame's header."""
        def publish(key: str, value: Any) -> None:
            if key == 'problem':
                self._report(cam, value)
                return
            pub = cam.pubs[key]
            if key == 'info':
                pub.publish(camera_info_msg(value, header))
            elif key == 'points':
                pub.publish(cloud_msg(value, header))
            elif key == 'alignment':
                pub.publish(self._alignment_msg(cam, value))
            else:
                pub.publish(image_msg(value, image_encoding(key, value), header))
        return publish

    def _report(self, cam: _Camera, problem: Problem) -> None:
        """Log (throttled, or once) and count a problem a frame ran into."""
        if problem.key == 'camera_info':
            self._bad_input('camera_info', problem.text)
        elif problem.key == 'no_camera_info' and not cam.warned_no_info:
            cam.warned_no_info = True
            self.get_logger().warning(
                f'no {cam.topic("camera_info")} received yet: publishing depth images only; '
                'no depth/points, depth/camera_info or LiDAR projection until it arrives')
        elif problem.key == 'no_fit' and self._throttle.ready('no_fit'):
            self.get_logger().warning(_bounded(problem.text))
        elif problem.key.startswith('prompt_'):  # no usable depth prompt (prompt.PROMPT_STATES)
            self._count(problem.key, cam)
            if self._throttle.ready('prompt'):
                self.get_logger().warning(
                    f'{_bounded(problem.text)} ({problem.key} so far: '
                    f'{self._counters.get(problem.key)})')

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

    # --------------------------------------------------------------- publishing
    def _alignment_msg(self, cam: _Camera,
                       report: AlignmentReport | pr.PromptReport) -> DiagnosticStatus:
        """``depth/alignment``: one frame's LiDAR fit, or its depth prompt."""
        status = alignment_status(report, self.get_name(), cam.name)
        return DiagnosticStatus(
            level=bytes([status['level']]), name=status['name'], message=status['message'],
            hardware_id=status['hardware_id'],
            values=[KeyValue(key=k, value=v) for k, v in status['values'].items()])

    def _publish_diagnostics(self) -> None:
        counts = self._counters.snapshot()
        now = time.monotonic()
        problems = {k: v for k, v in counts.items()
                    if k.startswith('bad_') or k in ('frame_errors', 'forward_failures',
                                                     'non_finite_outputs')}
        if problems != self._problems:
            new = sorted(k for k, v in problems.items() if v != self._problems.get(k))
            self._problems, self._problems_changed, self._problems_new = problems, now, new
        if self._consecutive_failures >= 3:
            level, message = DiagnosticStatus.ERROR, (
                f'forward pass failing ({self._consecutive_failures} in a row)')
        elif now - self._problems_changed < PROBLEM_HOLD:
            level, message = DiagnosticStatus.WARN, (
                f'bad input or skipped frames in the last {PROBLEM_HOLD:g} s: '
                + ', '.join(self._problems_new))
        else:
            level, message = DiagnosticStatus.OK, 'ok'
        values = [KeyValue(key=k, value=str(v)) for k, v in sorted(counts.items())]
        values += [KeyValue(key=f'time_ms.{k}', value=f'{v * 1e3:.2f}')
                   for k, v in self.last_timings.items()]
        if self._inference_thread:  # which thread runs the forward passes (issue 14)
            values.append(KeyValue(key='inference_thread', value=self._inference_thread))
        status = DiagnosticStatus(level=level, name=f'{self.get_name()}: pipeline',
                                  message=message, hardware_id=self.get_fully_qualified_name(),
                                  values=values)
        self._pub_diag.publish(DiagnosticArray(header=self._diag_header(), status=[status]))

    def _diag_header(self) -> Any:
        from std_msgs.msg import Header
        return Header(stamp=self.get_clock().now().to_msg())

    @property
    def counters(self) -> dict[str, int]:
        """Frame counters: received, processed, dropped, bad input per kind, failures."""
        return self._counters.snapshot()


class DepthNode(DepthNodeBase, Node):
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
        self.serve_on_caller = serve_on_caller
        self._init_pipeline()
        self._configure(self._declare_parameters())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._create_inputs()
        self._start_worker()
        self._log_ready()

    def destroy_node(self) -> None:
        """Stop the worker (it finishes or abandons the frame in hand), then the node."""
        self._closed = True
        self._stop_worker()
        super().destroy_node()


def main(args: Optional[list[str]] = None, exit_process: bool = True) -> int:
    """Entry point of ``ros2 run depth_node depth_node``.

    ``args`` as ``rclpy.init`` takes them (``sys.argv`` when None). ``-h``/``--help`` prints
    usage and exits 0 before rclpy or the model load; an unknown plain argument exits 2. Exit
    code 0 after SIGINT / SIGTERM, 2 for a configuration error, 3 (:data:`EXIT_DEVICE_LOST`)
    after a sticky CUDA error. With ``exit_process`` the
    process ends right after the node and rclpy are shut down, skipping the interpreter's own
    teardown: with torch loaded that takes 1-2 s on a small CPU and would break the promise that
    a signal stops the node within 2 s. Otherwise the code is returned.
    """
    return run_node(lambda options: DepthNode(serve_on_caller=True), NODE_NAME, args,
                    exit_process)


def run_node(make_node: Callable[[Any], Node], prog: str, args: Optional[list[str]],
             exit_process: bool, lifecycle: bool = False) -> int:
    """Parse the command line, start rclpy, spin ``make_node(options)`` until a signal.

    Shared by the ``depth_node`` and ``depth_node_lifecycle`` entry points (see :func:`main`
    for the exit codes); ``options`` are the parsed plain arguments.
    """
    from depth_node.cli import command_line, parse_command_line

    try:
        options = parse_command_line(command_line(args), prog, lifecycle=lifecycle)
    except SystemExit as exc:  # -h/--help: 0; an unknown argument: 2, usage printed
        return _exit(exc.code if isinstance(exc.code, int) else 2, exit_process)
    try:
        rclpy.init(args=args)
    except Exception as exc:  # noqa: BLE001 - rcl refuses a malformed command line (RCLError)
        print(f'[{prog}] configuration error: the command line does not parse: {exc}',
              file=sys.stderr)
        return _exit(2, exit_process)
    node = None
    code = 0
    try:
        executor = SingleThreadedExecutor()  # before the node: a signal may come at any time
        node = make_node(options)
        executor.add_node(node)
        if getattr(node, 'serve_on_caller', False):
            _serve_on_main_thread(node, executor, exit_process)
        else:
            executor.spin()
    except cfg.ConfigError as exc:
        print(f'[{prog}] configuration error: {exc}', file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT/SIGTERM during startup shut the context down under the constructor: a clean
        # stop, not an error.
    finally:
        if node is not None:
            code = code or node.exit_code
            node.destroy_node()
        rclpy.try_shutdown()
    return _exit(code, exit_process)


def _serve_on_main_thread(node: 'DepthNodeBase', executor: Any, exit_process: bool) -> None:
    """Spin ``executor`` on a background thread and run ``node.serve()`` here.

    On a signal rclpy shuts the context down: the spin thread ends and :meth:`serve` returns
    after the frame in hand. A forward pass cannot be interrupted, so when this thread has not
    come back 1 s after the spin thread ended, the process ends there with code 0 (the promise
    that a signal stops the node within 2 s). An error that stopped the executor is raised here.
    """
    done = threading.Event()
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            if rclpy.ok():
                errors.append(exc)
        finally:
            node._end_serving()
        if exit_process and not errors and not done.wait(1.0):
            # the main thread is inside a forward pass: do not wait for it
            _exit(getattr(node, 'exit_code', 0), True)

    spinner = threading.Thread(target=spin, name='depth_node_spin', daemon=True)
    spinner.start()
    try:
        node.serve()
    finally:
        done.set()
    if errors:
        raise errors[0]


def _exit(code: int, exit_process: bool) -> int:
    """End the process with ``code`` right away (see :func:`main`), or return it."""
    if exit_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == '__main__':
    main()
