"""One frame's way from a received message to output arrays, ROS-free.

The node, the bag tool (``depth_node-bag``), the demo and the benchmarks all run frames through
:meth:`FramePipeline.run_batch`, the one per-frame sequence: decode, pair depth prompts, one
forward pass per image size, then finish each frame. Nothing re-implements it; callers differ
only in where frames come from (:class:`Job`) and where outputs go: each output goes to a
``sink(job, key, value)`` callable as soon as it is ready (the node publishes it there, so
``depth/relative`` leaves before the LiDAR fit runs; the bag tool writes it), and each problem
found to a :class:`depth_node.problems.Reporter`, which counts and logs it by the problem table.
The steps (:meth:`FramePipeline.check`, ``decode``, ``pair_prompt``, ``forward``, ``finish``)
stay public for tests and tools that look at one of them.

Messages are read by duck typing (:mod:`depth_node.frame_input`, the frame's arrival), so rclpy
messages and ``rosbags`` messages both work. A frame's ``header`` is passed through untouched:
every output of a frame carries the input image's stamp and frame_id.

Output keys (:data:`depth_node.outputs.OUTPUTS`): ``relative`` ((H, W) float32, no unit, never
metres), ``depth`` ((H, W) float32 metres with NaN invalid, or uint16 millimetres with 0 invalid,
as ``output.encoding`` says), ``info`` (:class:`~depth_node.camera_info.Intrinsics` of the depth
image), ``points`` (:class:`~depth_node.cloud.PackedCloud` in the camera's optical frame),
``colored`` ((H, W, 3) uint8) and ``alignment`` (:class:`AlignmentReport`, or with a depth prompt
:class:`depth_node.prompt.PromptReport`).

A Prompt Depth Anything model (``prompt.source``) takes a metric depth prompt with each frame:
:meth:`FramePipeline.pair_prompt` finds it before :meth:`FramePipeline.forward`; a frame without
a usable one gets no metric output (:meth:`FramePipeline.finish` reports why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from depth_node import config as cfg
from depth_node import prompt as pr
from depth_node.alignment import Aligner, AlignerConfig, Alignment
from depth_node.camera_info import CameraInfoError, fit_to_image, Intrinsics
from depth_node.cloud import depth_to_points, pack_cloud, strided_rgb
from depth_node.colormap import colorize
from depth_node.frame_input import (  # noqa: F401 - the frame's arrival, re-exported
    Frame, FrameDecoder, INPUT_TOPICS, read_camera_info, read_scan, Scan, stamp_to_sec)
from depth_node.frame_quality import assess, QualityState, stabilize
from depth_node.image_codec import ImageDecodeError
from depth_node.lidar import LidarError, prepare_points, projection_counts
from depth_node.outputs import alignment_status, image_encoding, OUTPUTS  # noqa: F401
from depth_node.packing import depth_to_uint16_mm
from depth_node.problems import Problem, Reporter
from depth_node.telemetry import StageTimer
from depth_node.text import shorten

OUTPUT_TOPICS = {o.key: o.topic for o in OUTPUTS}
"""Output topic of each output key (relative to the camera's namespace;
:data:`depth_node.outputs.OUTPUTS` declares them)."""

Sink = Callable[[str, Any], None]
"""Receives each output of a frame as it is ready: ``sink(key, value)``."""


@dataclass
class CameraState:
    """What the pipeline keeps per camera: its latest camera_info and its LiDAR fit.

    ``index`` is the camera's place in ``input.cameras`` (it selects its block of
    ``lidar.T_camera_lidar``); ``name`` its name there ('' for the one camera without
    ``input.cameras``), the namespace of its topics.
    """

    index: int = 0
    intrinsics: Optional[Intrinsics] = None
    aligner: Optional[Aligner] = None
    last_alignment: Optional[Alignment] = None
    name: str = ''
    quality: QualityState = field(default_factory=QualityState)

    def topic(self, name: str) -> str:
        """Topic ``name`` of this camera (``<camera>/name`` with ``input.cameras``)."""
        return f'{self.name}/{name}' if self.name else name


def _nothing() -> Sequence[Any]:
    return ()


@dataclass
class Job:
    """One camera's frame for :meth:`FramePipeline.run_batch`, with what to pair it with.

    Either ``msg`` (a received message of ``kind``, :data:`INPUT_TOPICS`; decoded by
    ``run_batch``, and ``fallback``, the frame it displaced, decoded instead when it is refused)
    or ``frame`` (decoded already: the bag tool decodes on its reader thread). ``wanted``: the
    output keys to build (:data:`depth_node.outputs.OUTPUTS`; the node: those with
    subscribers). ``scans()`` and ``prompts()`` give the LiDAR scans and depth prompt images to
    pair with, called when they are needed (after the forward pass for the LiDAR fit, so a scan
    that arrived meanwhile counts); ``scans_seen``: whether any scan was ever received (default:
    whether ``scans()`` gave any), so that a frame without one counts as ``lidar_unpaired``.
    ``tag``: the caller's own (the bag tool: the receive time), untouched.
    """

    camera: CameraState
    kind: str = 'image'
    msg: Any = None
    fallback: Any = None
    frame: Optional[Frame] = None
    wanted: frozenset = frozenset(OUTPUT_TOPICS)
    scans: Callable[[], Sequence[Scan]] = _nothing
    scans_seen: Optional[bool] = None
    prompts: Callable[[], Sequence[pr.PromptImage]] = _nothing
    tag: Any = None


JobSink = Callable[[Job, str, Any], None]
"""Receives each output of a job's frame as it is ready: ``sink(job, key, value)``."""


@dataclass
class BatchResult:
    """What :meth:`FramePipeline.run_batch` did: the stage times of the batch (s, with
    ``total``), each finished job with its :class:`Outputs`, and each forward pass's result."""

    timings: dict[str, float] = field(default_factory=dict)
    finished: list[tuple[Job, Outputs]] = field(default_factory=list)
    forwards: list[ForwardResult] = field(default_factory=list)


@dataclass
class AlignmentReport:
    """What ``depth/alignment`` says about one frame's LiDAR fit."""

    alignment: Alignment
    points_in_scan: int
    reason: str
    frame_id: str
    stamp: tuple[int, int]

    @property
    def level(self) -> int:
        """diagnostic_msgs/DiagnosticStatus level: 0 OK, 1 WARN (stale fit), 2 ERROR."""
        return {'ok': 0, 'stale': 1}.get(self.alignment.state, 2)

    def values(self) -> dict[str, str]:
        """The status's key/value pairs (``reason`` as given: the caller bounds its length)."""
        a = self.alignment
        fit = a.fit
        return {k: str(v) for k, v in {
            'state': a.state, 'scale': a.scale, 'shift': a.shift, 'fit_age': a.fit_age,
            'points_in_scan': self.points_in_scan, 'points_projected': a.n_projected,
            'inliers': fit.n_inliers if fit is not None else 0,
            'residual': fit.residual if fit is not None else math.nan,
            'reason': self.reason, 'stamp': f'{self.stamp[0]}.{self.stamp[1]:09d}'}.items()}


@dataclass
class Outputs:
    """Everything one frame produced (each also went to the sink), and the problems found."""

    values: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def metric(self) -> bool:
        """Whether the frame got metric depth."""
        return 'depth' in self.values


@dataclass
class ForwardResult:
    """One forward pass: stage timings (s), frames with non-finite output, or the error."""

    timings: dict[str, float] = field(default_factory=dict)
    non_finite: int = 0
    error: Optional[BaseException] = None


def nearest_scan(scans: Sequence[Scan], stamp: float, max_offset: float) -> Optional[Scan]:
    """The scan whose stamp is nearest ``stamp`` (s), or None when none is within
    ``max_offset`` (s). Scans may lie before or after the frame."""
    if not scans:
        return None
    best = min(scans, key=lambda s: abs(s[0] - stamp))
    return best if abs(best[0] - stamp) <= max_offset else None


class FramePipeline:
    """Decodes frames, runs the network, then aligns, converts and builds each frame's outputs.

    ``estimator`` is None with ``input.mode: relative_depth`` (frames arrive as relative depth).
    ``config`` may be replaced between frames (run-time parameter changes); the caller then
    also gives the aligners their new :meth:`aligner_config`.
    """

    def __init__(self, config: cfg.NodeConfig, estimator: Any = None) -> None:
        self.config = config
        self.estimator = estimator
        self.is_metric = bool(estimator is not None and estimator.is_metric)
        self.output_kind = estimator.output_kind if estimator is not None else (
            'relative_depth' if config['input.relative_kind'] == 'depth'
            else 'relative_disparity')
        self.decoder = FrameDecoder(config, estimator)
        self.needs_focal = bool(getattr(estimator, 'needs_focal', False))
        self.prompt_source = config['prompt.source']
        if estimator is not None:
            why = pr.setup_error(bool(getattr(estimator, 'takes_prompt', False)),
                                 self.prompt_source, config['model.name'] or
                                 config['model.random_init'])
            if why:
                raise cfg.ConfigError(why)

    # ------------------------------------------------------------ the sequence
    def run_batch(self, jobs: Sequence[Job], sink: JobSink, reporter: Reporter,
                  lookup_tf: Optional[Callable[[str, Any], Optional[np.ndarray]]] = None,
                  timer: Optional[StageTimer] = None,
                  stopping: Optional[Callable[[], bool]] = None) -> BatchResult:
        """The one way through frames, for the node, the bag tool, the demo and the benchmarks.

        1. Decode each job's message (its ``fallback`` when the message is refused: the frame
           it displaced is served after all, ``frames_dropped`` given back).
        2. Pair depth prompts (``prompt.source``).
        3. One forward pass per image size over all the frames of that size (``batch`` frames
           of several cameras); a failed pass skips its frames (``forward_failed``, or
           ``device_lost`` after a sticky CUDA error); non-finite output is reported.
        4. Finish each frame (:meth:`finish`): pair the nearest LiDAR scan, align, build the
           outputs the job wants, each to ``sink(job, key, value)`` as soon as it is ready.

        Every problem goes to ``reporter`` (counted and logged by
        :data:`depth_node.problems.PROBLEMS`), never raised: an error finishing one frame skips
        that frame (``frame_error``) unless ``stopping()`` says the caller is shutting down
        (its outputs are gone), which ends the batch quietly. ``lookup_tf(lidar_frame,
        header)``: the LiDAR-to-camera transform when ``lidar.T_camera_lidar`` is unset.
        ``timer`` records the stages (``decode``, ``preprocess``, ``forward``, ``postprocess``,
        ``cloud``, then :meth:`finish`'s).
        """
        timer = timer or StageTimer()
        timer.start()
        result = BatchResult()
        ready: list[Job] = []
        for job in jobs:
            if job.frame is None:
                job.frame = self.decode_or_report(job.kind, job.msg, job.camera, reporter)
                if job.frame is None and job.fallback is not None:
                    reporter.count('frames_dropped', job.camera.name, -1)  # served after all
                    job.frame = self.decode_or_report(job.kind, job.fallback, job.camera,
                                                      reporter)
            if job.frame is not None:
                ready.append(job)
        if self.prompt_source:  # the prompt goes into the network with the image
            for job in ready:
                self.pair_prompt(job.frame, job.camera, job.prompts(), job.scans(), lookup_tf)
        if self.needs_focal:  # its output is metric only with the camera's focal lengths
            ready = [job for job in ready if self._pair_focal(job, reporter)]
        timer.mark('decode')
        if self.estimator is not None:
            by_size: dict[tuple[int, int], list[Job]] = {}
            for job in ready:
                by_size.setdefault(job.frame.rgb.shape[:2], []).append(job)
            for group in by_size.values():
                forward = self._forward_jobs(group, reporter)
                result.forwards.append(forward)
                for stage in ('preprocess', 'forward', 'postprocess', 'cloud'):
                    if stage in forward.timings:
                        timer.add(stage, forward.timings[stage])
            timer.skip()  # the stages above are the whole of the forward passes
        for job in ready:
            if job.frame.prediction is None:
                continue  # its forward pass failed (reported)
            try:
                out = self._finish_job(job, sink, reporter, lookup_tf, timer)
            except Exception as exc:  # noqa: BLE001 - one frame must never stop the caller
                if stopping is not None and stopping():
                    break  # the outputs are gone, nothing went wrong
                reporter.report(Problem('frame_error', f'{type(exc).__name__}: {exc}'))
                continue
            result.finished.append((job, out))
        if ready:
            result.timings = timer.finish()
        return result

    def accepts(self, kind: str, msg: Any, camera: CameraState, reporter: Reporter,
                topic: str = '') -> bool:
        """:meth:`check` on arrival; a refused frame is reported (``bad_image``, naming
        ``topic``, by default the camera's input topic of ``kind``)."""
        try:
            self.check(kind, msg)
        except ImageDecodeError as exc:
            topic = shorten(topic) if topic else camera.topic(INPUT_TOPICS[kind])
            reporter.report(Problem('bad_image', f'{topic} refused: {exc}'))
            return False
        return True

    def decode_or_report(self, kind: str, msg: Any, camera: CameraState,
                         reporter: Reporter, topic: str = '') -> Optional[Frame]:
        """:meth:`decode`, or None with the problem reported (``bad_image`` for a refused
        frame, naming ``topic`` as :meth:`accepts` does; ``frame_error`` for anything
        unexpected)."""
        try:
            return self.decode(kind, msg)
        except ImageDecodeError as exc:
            topic = shorten(topic) if topic else camera.topic(INPUT_TOPICS[kind])
            reporter.report(Problem('bad_image', f'{topic} refused: {exc}'))
        except Exception as exc:  # noqa: BLE001 - one frame must never stop the caller
            reporter.report(Problem('frame_error', f'{type(exc).__name__}: {exc}'))
        return None

    def _pair_focal(self, job: Job, reporter: Reporter) -> bool:
        """Set the frame's focal lengths (pixels of its network input image) from its camera's
        camera_info, for a model whose card sets ``focal_scale``; False (the frame skipped,
        reported ``no_focal``) without a camera_info that fits."""
        frame = job.frame
        height, width = frame.rgb.shape[:2]
        try:
            intr = self.intrinsics(job.camera, frame.src_w, frame.src_h, width, height)
        except CameraInfoError as exc:
            intr, why = None, f'its camera_info does not fit the image: {exc}'
        else:
            why = f'no {job.camera.topic("camera_info")} received yet'
        if intr is None:
            reporter.report(Problem(
                'no_focal', f'frame skipped: {why}; the model (focal_scale in its card) needs '
                            'the focal length to give metres'), job.camera.name)
            return False
        frame.focal = (float(intr.K[0, 0]), float(intr.K[1, 1]))
        return True

    def _forward_jobs(self, group: Sequence[Job], reporter: Reporter) -> ForwardResult:
        """:meth:`forward` over same-size jobs, its failure or non-finite output reported."""
        result = self.forward([j.frame for j in group], [j.camera for j in group],
                              ['points' in j.wanted for j in group])
        exc = result.error
        if exc is not None:
            from depth_node.estimator.device import error_text, is_device_lost  # with the model

            key = 'device_lost' if is_device_lost(exc) else 'forward_failed'
            reporter.report(Problem(key, f'{type(exc).__name__}: {error_text(exc)}'))
            return result
        reporter.forward_ok()
        reporter.count('forward_passes')
        reporter.count('forward_frames', n=len(group))
        if result.non_finite:
            reporter.report(Problem('non_finite', n=result.non_finite))
        return result

    def _finish_job(self, job: Job, sink: JobSink, reporter: Reporter,
                    lookup_tf: Optional[Callable[[str, Any], Optional[np.ndarray]]],
                    timer: StageTimer) -> Outputs:
        """:meth:`finish` for a job: its LiDAR scan paired, its problems reported, its frame
        counted (``frames_processed``, ``frames_metric``)."""
        cam = job.camera
        scan = None
        if cam.aligner is not None:
            scans = job.scans()
            scan = nearest_scan(scans, job.frame.stamp, self.config['lidar.max_time_offset'])
            seen = bool(scans) if job.scans_seen is None else job.scans_seen
            if scan is None and seen:
                reporter.report(Problem('lidar_unpaired'))

        def emit(key: str, value: Any) -> None:
            if key == 'problem':
                reporter.report(value, cam.name, cam.topic('camera_info'))
            else:
                sink(job, key, value)

        out = self.finish(job.frame, cam, set(job.wanted), emit, scan, lookup_tf, timer)
        reporter.count('frames_processed', cam.name)
        if out.metric:
            reporter.count('frames_metric', cam.name)
        return out

    # ----------------------------------------------------------------- inputs
    def aligner_config(self) -> AlignerConfig:
        """The LiDAR fit's settings: in depth space for depth-like outputs, else disparity."""
        c = self.config
        space = 'depth' if self.output_kind in ('metric_depth', 'relative_depth') else \
            'disparity'
        return AlignerConfig(space=space,
                             fit_shift=False if self.is_metric else c['lidar.fit_shift'],
                             fit=c['lidar.fit'], min_points=c['lidar.min_points'],
                             min_depth=c['cloud.min_depth'], max_depth=c['cloud.max_depth'],
                             smoothing=c['lidar.smoothing'], max_fit_age=c['lidar.max_fit_age'])

    def new_aligner(self) -> Optional[Aligner]:
        """A camera's LiDAR fit when ``lidar.enabled``, else None (also with a depth prompt:
        the prompt makes the output metric, no LiDAR fit goes on top)."""
        if self.config['lidar.enabled'] and not self.prompt_source:
            return Aligner(self.aligner_config())
        return None

    def new_camera(self, index: int = 0) -> CameraState:
        """A camera's state, with its aligner (:meth:`new_aligner`)."""
        return CameraState(index=index, aligner=self.new_aligner())

    @property
    def config(self) -> cfg.NodeConfig:
        """The parameters; may be replaced between frames (run-time parameter changes)."""
        return self._config

    @config.setter
    def config(self, config: cfg.NodeConfig) -> None:
        self._config = config
        if hasattr(self, 'decoder'):
            self.decoder.config = config

    @property
    def estimator(self) -> Any:
        """The model (None: relative depth arrives as input, or the model was released)."""
        return self._estimator

    @estimator.setter
    def estimator(self, estimator: Any) -> None:
        self._estimator = estimator
        if hasattr(self, 'decoder'):
            self.decoder.estimator = estimator

    def check(self, kind: str, msg: Any) -> None:
        """:meth:`FrameDecoder.check`: the O(1) checks of a frame on arrival.

        Raises
        ------
        ImageDecodeError
            When the frame is refused (the message says why).
        """
        self.decoder.check(kind, msg)

    def decode(self, kind: str, msg: Any) -> Frame:
        """:meth:`FrameDecoder.decode`: the frame decoded for the network.

        Raises
        ------
        ImageDecodeError
            When the frame is refused (corrupt, unsupported, over ``input.max_pixels``).
        """
        return self.decoder.decode(kind, msg)

    # ---------------------------------------------------------------- network
    def intrinsics(self, state: CameraState, src_w: int, src_h: int, width: int,
                   height: int) -> Optional[Intrinsics]:
        """The camera's latest camera_info fitted to the ``src_w`` x ``src_h`` image and scaled
        to the ``width`` x ``height`` output; None before any camera_info.

        Raises
        ------
        CameraInfoError
            When the camera_info does not fit the image.
        """
        intr = state.intrinsics
        if intr is None:
            return None
        return fit_to_image(intr, src_w, src_h).scaled(width, height)

    def _cloud_K(self, frame: Frame, state: CameraState) -> Optional[np.ndarray]:
        """The camera matrix to build the cloud with the forward pass, or None: only a metric
        model's own depth (no LiDAR correction to apply first) whose camera_info fits."""
        if not (self.is_metric and state.aligner is None and self.config['cloud.enabled']):
            return None
        height, width = frame.rgb.shape[:2]
        try:
            intr = self.intrinsics(state, frame.src_w, frame.src_h, width, height)
        except CameraInfoError:
            return None
        return None if intr is None else intr.K

    def pair_prompt(self, frame: Frame, state: CameraState,
                    images: Sequence[pr.PromptImage] = (), scans: Sequence[Scan] = (),
                    lookup_tf: Optional[Callable[[str, Any], Optional[np.ndarray]]] = None,
                    ) -> None:
        """Set ``frame.prompt`` (and ``frame.prompt_points``) from the ``prompt_depth`` images
        (``images``) or the LiDAR scans (``scans``) the caller keeps, the one nearest the
        frame's stamp (:func:`depth_node.prompt.prompt_for_frame`). The LiDAR extrinsics come
        from ``lidar.T_camera_lidar``, else ``lookup_tf(lidar_frame, header)``."""
        c = self.config
        height, width = frame.rgb.shape[:2]
        intr = None
        if self.prompt_source == 'lidar':
            try:
                intr = self.intrinsics(state, frame.src_w, frame.src_h, width, height)
            except CameraInfoError:
                intr = None  # finish() reports the camera_info problem

        def transform(lidar_frame: str) -> Optional[np.ndarray]:
            T = c.T_camera_lidar_for(state.index)
            if T is not None:
                return np.asarray(T, dtype=np.float64).reshape(4, 4)
            return lookup_tf(lidar_frame, frame.header) if lookup_tf is not None else None

        frame.prompt, frame.prompt_points = pr.prompt_for_frame(
            self.prompt_source, frame.stamp, (height, width),
            max_time_offset=c['prompt.max_time_offset'], min_coverage=c['prompt.min_coverage'],
            max_side=c['prompt.max_side'], images=images, scans=scans, intrinsics=intr,
            transform=transform, occlusion_window=c['lidar.occlusion_window'])

    def forward(self, frames: Sequence[Frame], states: Sequence[CameraState],
                want_points: Sequence[bool]) -> ForwardResult:
        """One forward pass over same-size frames (``states[i]`` is ``frames[i]``'s camera).

        Sets each frame's ``prediction``, and its ``points`` when ``want_points[i]`` and the
        cloud can be built on the model's device with the depth. A model error (CUDA out of
        memory, ...) is returned in ``error``, never raised; the frames then keep no prediction.
        """
        try:
            c = self.config
            Ks = [self._cloud_K(f, s) if want else None
                  for f, s, want in zip(frames, states, want_points)]
            clouds = [None if K is None else {
                'K': K, 'stride': c['cloud.stride'], 'min_depth': c['cloud.min_depth'],
                'max_depth': c['cloud.max_depth']} for K in Ks]
            # a prompt model's frame without a usable prompt gets no forward (NaN, no output)
            prompts = [f.prompt.prompt if f.prompt is not None else None for f in frames]
            one = {'prompt': prompts[0]} if self.prompt_source else {}
            many = {'prompts': prompts} if self.prompt_source else {}
            if self.needs_focal:  # the focal lengths make its output metric (run_batch set them)
                one['focal'] = frames[0].focal
                many['focals'] = [f.focal for f in frames]
            if len(frames) == 1 and clouds[0] is not None:
                one.pop('focal', None)  # predict_points takes it from K
                result = self.estimator.predict_points(frames[0].rgb, **clouds[0], **one)
                predictions, points = [result.depth], [result.points]
            elif len(frames) == 1:
                result = self.estimator.predict(frames[0].rgb, **one)
                predictions, points = [result.depth], [None]
            else:
                result = self.estimator.predict_batch(
                    [f.rgb for f in frames], clouds=clouds if any(clouds) else None, **many)
                predictions, points = list(result.depth), result.points or [None] * len(frames)
            confidence = getattr(result, 'confidence', None)
            confidences = ([None] * len(frames) if confidence is None else
                           [confidence] if len(frames) == 1 else list(confidence))
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory: skip the frames
            return ForwardResult(error=exc)
        for frame, prediction, xyz, conf in zip(frames, predictions, points, confidences):
            frame.prediction = prediction
            frame.points = xyz
            frame.confidence = conf
        return ForwardResult(timings=dict(result.timings), non_finite=result.non_finite)

    # ------------------------------------------------------------ after it
    def finish(self, frame: Frame, state: CameraState, wanted: set[str], sink: Sink,
               scan: Optional[Scan] = None,
               lookup_tf: Optional[Callable[[str, Any], Optional[np.ndarray]]] = None,
               timer: Optional[StageTimer] = None) -> Outputs:
        """Everything after the network for one frame: alignment, depth, camera_info, cloud,
        colour image, each handed to ``sink`` as soon as it is ready.

        ``wanted``: the output keys to build (the node: those with subscribers;
        ``alignment`` is always sent when LiDAR or a depth prompt is on; a frame without a usable
        prompt gets nothing else, and a ``prompt_*`` problem). ``scan``: the LiDAR scan paired
        with the
        frame (None: none within ``lidar.max_time_offset``). ``lookup_tf(lidar_frame, header)``
        gives the LiDAR-to-camera transform (4x4) when ``lidar.T_camera_lidar`` is unset, or
        None when there is none (the caller reports why). ``timer`` records the stages.
        """
        c = self.config
        timer = timer or StageTimer()
        out = Outputs()

        def emit(key: str, value: Any) -> None:
            if key == 'problem':
                out.problems.append(value)
            else:
                out.values[key] = value
            sink(key, value)

        prediction = frame.prediction
        height, width = prediction.shape
        if self.prompt_source and not self._report_prompt(frame, emit):
            return out  # no usable depth prompt: no metric output (said in alignment)
        # temporal.enabled holds the scale where neither LiDAR nor a depth prompt does
        temporal = state.aligner is None and not self.prompt_source
        relative = None
        if not self.is_metric:
            relative = prediction
            if temporal:  # relative output: scale and shift
                relative = self._stabilize(state, prediction, frame, True, emit)
            if c['output.relative'] and 'relative' in wanted:
                # first: whatever happens to the metric path, the prediction is served (held
                # steady by temporal.enabled)
                emit('relative', relative)
                timer.mark('publish_relative')
        try:
            intr = self.intrinsics(state, frame.src_w, frame.src_h, width, height)
        except CameraInfoError as exc:
            emit('problem', Problem('bad_camera_info',
                                    f'camera_info does not fit the image: {exc}'))
            intr = None
        if intr is None and state.intrinsics is None:
            emit('problem', Problem('no_camera_info', 'no camera_info received yet'))

        metric: Optional[np.ndarray] = None
        lidar_points = None
        if state.aligner is not None:
            metric, lidar_points = self._align(frame, state, intr, scan, lookup_tf, emit)
            timer.mark('alignment')
        if metric is None and self.is_metric and wanted & {'depth', 'points', 'colored',
                                                           'confidence'}:
            # a metric model's own depth; LiDAR only refines it (depth/alignment says whether)
            metric = np.where(prediction > 0, prediction, np.float32(np.nan))
            if temporal:  # metric output: scale only
                metric = self._stabilize(state, metric, frame, False, emit)
                frame.points = None  # built with the forward from the unscaled depth
        cloud = c['cloud.enabled'] and intr is not None and 'points' in wanted
        shown = metric if metric is not None else relative
        checked = None
        if shown is not None:  # flying pixels out of metric depth; the confidence
            checked = assess(c, state.quality, shown, metric is not None,
                             'confidence' in wanted,
                             cloud and metric is not None and c['cloud.min_confidence'] > 0,
                             lidar_points if metric is not None else None,  # metres to metres
                             frame.confidence)
            metric = checked.depth if metric is not None else None
            timer.mark('quality')

        if metric is not None and 'depth' in wanted:
            emit('depth', depth_to_uint16_mm(metric) if c['output.encoding'] == '16UC1'
                 else metric)
        if intr is not None and 'info' in wanted and (
                metric is not None or self.is_metric or c['output.relative']):
            # with every depth-like image (depth/image, depth/relative): its header, its size
            emit('info', intr)
        if checked is not None and checked.confidence is not None:
            emit('confidence', checked.confidence)
        if metric is not None:
            timer.mark('publish_depth')
            if cloud:
                emit('points', self._cloud(metric, intr, frame, checked.removed))
                timer.mark('cloud')
        if 'colored' in wanted:
            emit('colored', colorize(shown if shown is not None else prediction,
                                     invert=metric is None))
            timer.mark('colored')
        return out

    def _stabilize(self, state: CameraState, values: np.ndarray, frame: Frame, shift: bool,
                   emit: Sink) -> np.ndarray:
        """:func:`depth_node.frame_quality.stabilize`; a reset after the first frame (a scene
        cut) is reported once (``temporal_reset``)."""
        values, info = stabilize(self.config, state.quality, values, frame.stamp, shift)
        if info is not None and info.reset and info.reason != 'first frame':
            emit('problem', Problem('temporal_reset', info.reason))
        return values

    def _report_prompt(self, frame: Frame, emit: Sink) -> bool:
        """Emit ``alignment`` (a :class:`depth_node.prompt.PromptReport`) for the frame's
        prompt, and a ``prompt_<state>`` problem when it has none usable; whether it has."""
        header = frame.header
        check = frame.prompt or pr.PromptCheck(
            'missing', reason='no prompt was paired with the frame (FramePipeline.pair_prompt)')
        ok = check.state == 'ok'
        emit('alignment', pr.PromptReport(
            check, pr.agreement(frame.prediction, check.prompt) if ok else math.nan,
            frame.prompt_points, self.prompt_source, str(header.frame_id),
            (int(header.stamp.sec), int(header.stamp.nanosec))))
        if not ok:
            emit('problem', Problem(f'prompt_{check.state}',
                                    f'no metric depth for this frame: {check.reason}'))
        return ok

    def _cloud(self, depth: np.ndarray, intr: Intrinsics, frame: Frame,
               removed: Optional[np.ndarray] = None) -> Any:
        """The packed cloud of ``depth`` (the points built with the forward when they fit);
        the points of ``removed`` pixels ((H, W) bool: flying, low confidence) NaN."""
        c = self.config
        stride = c['cloud.stride']
        xyz = frame.points
        expected = (-(-depth.shape[0] // stride), -(-depth.shape[1] // stride), 3)
        if xyz is None or xyz.shape != expected:  # none, or cloud.stride changed since
            xyz = depth_to_points(depth, intr.K, stride=stride, min_depth=c['cloud.min_depth'],
                                  max_depth=c['cloud.max_depth'])
        elif removed is not None:
            xyz = xyz.copy()  # built with the forward, before the pixels were removed
        if removed is not None:
            xyz[removed[::stride, ::stride]] = np.nan
        colors = None
        rgb = frame.rgb
        if c['cloud.color'] and rgb is not None and rgb.shape[:2] == depth.shape:
            colors = strided_rgb(rgb, stride)
        return pack_cloud(xyz, colors, organized=c['cloud.organized'])

    def _align(self, frame: Frame, state: CameraState, intr: Optional[Intrinsics],
               scan: Optional[Scan], lookup_tf: Optional[Callable],
               emit: Sink) -> tuple[Optional[np.ndarray], Optional[tuple]]:
        """Fit the prediction to the LiDAR scan; emit the report. The metric depth (or None) and
        the projected scan it was fitted to (``(uv, z)``: pixels, metres; None without one)."""
        c = self.config
        header, prediction = frame.header, frame.prediction
        uv = z = None
        n_scan = 0
        why = ('no LiDAR scan within lidar.max_time_offset' if scan is None else
               'no camera_info that fits the image' if intr is None else '')
        if scan is not None and intr is not None:
            T = c.T_camera_lidar_for(state.index)
            if T is not None:
                T = np.asarray(T, dtype=np.float64).reshape(4, 4)
                source = 'lidar.T_camera_lidar'
            else:
                T = lookup_tf(scan[1], header) if lookup_tf is not None else None
                source = f'the tf from {shorten(scan[1])} to {shorten(header.frame_id)}'
                why = '' if T is not None else f'no transform {shorten(scan[1])} -> camera'
            if T is not None:
                height, width = prediction.shape
                n_scan = len(scan[2])
                try:
                    window = c['lidar.occlusion_window']
                    uv, z = prepare_points(scan[2], T, intr, width, height,
                                           occlusion_window=window)
                    if len(z) < c['lidar.min_points']:  # say which step lost them
                        why = projection_counts(scan[2], T, intr, width, height,
                                                window).explain(c['lidar.min_points'], source)
                except LidarError as exc:  # the scan or transform (camera_info was checked
                    why = f'LiDAR projection failed: {exc}'  # when it arrived)
        alignment = state.aligner.align(prediction, uv, z, frame.stamp)
        state.last_alignment = alignment
        reason = why or (alignment.fit.reason if alignment.fit is not None else '')
        emit('alignment', AlignmentReport(
            alignment, n_scan, reason, str(header.frame_id),
            (int(header.stamp.sec), int(header.stamp.nanosec))))
        if alignment.state == 'no_fit':
            emit('problem', Problem('no_fit', f'no metric depth for this frame: {reason}'))
        return alignment.depth, (None if z is None else (uv, z))
