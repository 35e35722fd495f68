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
from typing import Any, Callable, Optional, Sequence

import numpy as np

from depth_node import config as cfg
from depth_node import prompt as pr
from depth_node.alignment import Aligner, AlignerConfig
from depth_node.camera_info import CameraInfoError
from depth_node.frame_finish import (  # noqa: F401 - what a camera keeps, re-exported
    AlignmentReport, CameraState, fitted_intrinsics, FrameFinisher, Outputs, Sink, Spec)
from depth_node.frame_input import (  # noqa: F401 - the frame's arrival, re-exported
    Frame, FrameDecoder, INPUT_TOPICS, read_camera_info, read_scan, Scan, stamp_to_sec)
from depth_node.image_codec import ImageDecodeError
from depth_node.outputs import alignment_status, image_encoding, OUTPUTS  # noqa: F401
from depth_node.problems import Problem, Reporter
from depth_node.telemetry import StageTimer
from depth_node.text import shorten

OUTPUT_TOPICS = {o.key: o.topic for o in OUTPUTS}
"""Output topic of each output key (relative to the camera's namespace;
:data:`depth_node.outputs.OUTPUTS` declares them)."""


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
class ForwardResult:
    """One forward pass: stage timings (s), frames with non-finite output, or the error."""

    timings: dict[str, float] = field(default_factory=dict)
    non_finite: int = 0
    error: Optional[BaseException] = None


def _refused(kind: str, camera: CameraState, topic: str, exc: Exception,
             reporter: Reporter) -> None:
    """Report a frame the codec refused (``bad_image``), naming ``topic`` (shortened) or the
    camera's input topic of ``kind``."""
    topic = shorten(topic) if topic else camera.topic(INPUT_TOPICS[kind])
    reporter.report(Problem('bad_image', f'{topic} refused: {exc}'))


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
        self.spec = Spec(config, bool(estimator is not None and estimator.is_metric),
                         estimator.output_kind if estimator is not None else (
                             'relative_depth' if config['input.relative_kind'] == 'depth'
                             else 'relative_disparity'), config['prompt.source'])
        self.decoder = FrameDecoder(config, estimator)
        self.finisher = FrameFinisher(self.spec)
        self.estimator = estimator
        self.needs_focal = bool(getattr(estimator, 'needs_focal', False))
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
            _refused(kind, camera, topic, exc, reporter)
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
            _refused(kind, camera, topic, exc, reporter)
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
            intr = fitted_intrinsics(job.camera, frame.src_w, frame.src_h, width, height)
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

            text = f'{type(exc).__name__}: {error_text(exc)}'
            outage = getattr(exc, 'outage', None)
            if outage is not None:  # a model server not answering: its frames are dropped
                reporter.report(Problem('server_down', text, n=len(group),
                                        group=f'outage {outage}'))
            else:
                reporter.report(Problem('device_lost' if is_device_lost(exc)
                                        else 'forward_failed', text))
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
    def new_camera(self, index: int = 0) -> CameraState:
        """A camera's state, with its aligner (:meth:`new_aligner`)."""
        return CameraState(index=index, aligner=self.new_aligner())

    @property
    def config(self) -> cfg.NodeConfig:
        """The parameters; may be replaced between frames (run-time parameter changes)."""
        return self.spec.config

    @config.setter
    def config(self, config: cfg.NodeConfig) -> None:
        self.spec.config = self.decoder.config = config

    @property
    def estimator(self) -> Any:
        """The model (None: relative depth arrives as input, or the model was released)."""
        return self.decoder.estimator

    @estimator.setter
    def estimator(self, estimator: Any) -> None:
        self.decoder.estimator = estimator

    @property
    def is_metric(self) -> bool:
        """Whether the network's output is metric depth."""
        return self.spec.is_metric

    @property
    def output_kind(self) -> str:
        """``metric_depth``, ``relative_depth`` or ``relative_disparity``."""
        return self.spec.output_kind

    @property
    def prompt_source(self) -> str:
        """``prompt.source``: where a depth prompt comes from ('' none)."""
        return self.spec.prompt_source

    def aligner_config(self) -> AlignerConfig:
        """:meth:`FrameFinisher.aligner_config`: the LiDAR fit's settings."""
        return self.finisher.aligner_config()

    def new_aligner(self) -> Optional[Aligner]:
        """:meth:`FrameFinisher.new_aligner`: a camera's LiDAR fit, or None."""
        return self.finisher.new_aligner()

    def finish(self, frame: Frame, state: CameraState, wanted: set[str], sink: Sink,
               scan: Optional[Scan] = None,
               lookup_tf: Optional[Callable[[str, Any], Optional[np.ndarray]]] = None,
               timer: Optional[StageTimer] = None) -> Outputs:
        """:meth:`FrameFinisher.finish`: everything after the network for one frame."""
        return self.finisher.finish(frame, state, wanted, sink, scan, lookup_tf, timer)

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
    @property
    def on_device(self) -> bool:
        """Whether a frame's work after the forward pass (LiDAR fit, quality, cloud) runs where
        the model's output is, as torch tensors, copied back once per published message
        (``model.keep_on_device``: ``auto`` when the model runs on CUDA). Models that take a
        depth prompt run on their slow path and give numpy arrays anyway."""
        est = self.estimator
        setting = self.config['model.keep_on_device']
        if est is None or setting == 'off' or getattr(est, 'takes_prompt', False):
            return False
        return setting == 'on' or getattr(getattr(est, 'device', None), 'type', '') == 'cuda'

    def _cloud_K(self, frame: Frame, state: CameraState) -> Optional[np.ndarray]:
        """The camera matrix to build the cloud with the forward pass, or None: only a metric
        model's own depth (no LiDAR correction to apply first) whose camera_info fits."""
        if not (self.is_metric and state.aligner is None and self.config['cloud.enabled']):
            return None
        height, width = frame.rgb.shape[:2]
        try:
            intr = fitted_intrinsics(state, frame.src_w, frame.src_h, width, height)
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
                intr = fitted_intrinsics(state, frame.src_w, frame.src_h, width, height)
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
            on_device = self.on_device
            Ks = [self._cloud_K(f, s) if want and not on_device else None
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
            if on_device:  # the outputs stay there; finish builds the cloud there
                result = self.estimator.predict_batch([f.rgb for f in frames], on_device=True,
                                                      **many)
                predictions, points = list(result.depth), [None] * len(frames)
            elif len(frames) == 1 and clouds[0] is not None:
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
                           [confidence] if len(frames) == 1 and not on_device
                           else list(confidence))
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory: skip the frames
            return ForwardResult(error=exc)
        for frame, prediction, xyz, conf in zip(frames, predictions, points, confidences):
            frame.prediction = prediction
            frame.points = xyz
            frame.confidence = conf
        return ForwardResult(timings=dict(result.timings), non_finite=result.non_finite)
