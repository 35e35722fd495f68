"""One frame's way from a received message to output arrays, ROS-free.

The node, the bag tool (``depth_node-bag``), the demo and the benchmarks all run frames through
:class:`FramePipeline`; nothing re-implements it. It neither publishes nor logs: each output goes
to a ``sink(key, value)`` callable as soon as it is ready (the node publishes it there, so
``depth/relative`` leaves before the LiDAR fit runs; the bag tool writes it), and so does each
problem found, as ``sink('problem', Problem)``, for the caller to log and count; all of them
also come back in :class:`Outputs`.

Messages are read by duck typing (the usual ``sensor_msgs`` field names), so rclpy messages and
``rosbags`` messages both work. A frame's ``header`` is passed through untouched: every output
of a frame carries the input image's stamp and frame_id.

Output keys (:data:`OUTPUT_TOPICS`): ``relative`` ((H, W) float32, no unit, never metres),
``depth`` ((H, W) float32 metres with NaN invalid, or uint16 millimetres with 0 invalid, as
``output.encoding`` says), ``info`` (:class:`~depth_node.camera_info.Intrinsics` of the depth
image), ``points`` (:class:`~depth_node.cloud.PackedCloud` in the camera's optical frame),
``colored`` ((H, W, 3) uint8) and ``alignment`` (:class:`AlignmentReport`, or with a depth
prompt :class:`depth_node.prompt.PromptReport`).

A Prompt Depth Anything model (``prompt.source``) takes a metric depth prompt with each frame:
:meth:`FramePipeline.pair_prompt` finds it before :meth:`FramePipeline.forward`; a frame without
a usable one gets no metric output (:meth:`FramePipeline.finish` reports why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from depth_node import config as cfg
from depth_node import prompt as pr
from depth_node.alignment import Aligner, AlignerConfig, Alignment
from depth_node.camera_info import (
    CameraInfoError, Intrinsics, fit_to_image, intrinsics_from_fields)
from depth_node.cloud import depth_to_points, pack_cloud, strided_rgb
from depth_node.colormap import colorize
from depth_node.image_codec import (
    ImageDecodeError, decode_compressed, decode_image, decode_relative_depth, limit_pixels,
    limited_size, plan_compressed)
from depth_node.input_shape import check_input_shape, model_patch_size
from depth_node.lidar import LidarError, prepare_points, projection_counts, read_points_xyz
from depth_node.packing import depth_to_uint16_mm
from depth_node.telemetry import StageTimer
from depth_node.text import bounded, shorten

INPUT_TOPICS = {'image': 'image', 'compressed': 'image/compressed', 'relative': 'relative_depth'}
"""Input topic of each kind of frame (relative to the camera's namespace)."""

OUTPUT_TOPICS = {'depth': 'depth/image', 'relative': 'depth/relative',
                 'info': 'depth/camera_info', 'points': 'depth/points',
                 'colored': 'depth/colored', 'alignment': 'depth/alignment'}
"""Output topic of each output key (relative to the camera's namespace)."""

Scan = tuple[float, str, np.ndarray]
"""A LiDAR scan: (header stamp in seconds, frame_id, (N, 3) float32 x, y, z in metres in its
frame)."""

Sink = Callable[[str, Any], None]
"""Receives each output of a frame as it is ready: ``sink(key, value)``."""


def stamp_to_sec(stamp: Any) -> float:
    """``builtin_interfaces/Time`` (``sec``, ``nanosec``) to float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def read_camera_info(msg: Any) -> Intrinsics:
    """The :class:`~depth_node.camera_info.Intrinsics` of a ``sensor_msgs/CameraInfo``.

    Raises
    ------
    CameraInfoError
        When the message is unusable (the text says which field and why).
    """
    roi = msg.roi
    return intrinsics_from_fields(
        msg.width, msg.height, msg.k, msg.d, msg.distortion_model, msg.p, msg.r,
        msg.binning_x, msg.binning_y, (roi.x_offset, roi.y_offset, roi.width, roi.height))


def read_scan(msg: Any) -> Scan:
    """A ``sensor_msgs/PointCloud2`` as a :data:`Scan` (x, y, z in its frame, metres).

    Raises
    ------
    LidarError
        When the cloud has no float x, y, z or its layout does not match its data.
    """
    fields = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    xyz = read_points_xyz(fields, msg.point_step, msg.row_step, msg.width, msg.height,
                          msg.is_bigendian, msg.data)
    return (stamp_to_sec(msg.header.stamp), str(msg.header.frame_id), xyz)


def alignment_status(report: Any, node_name: str, camera: str = '') -> dict[str, Any]:
    """The ``diagnostic_msgs/DiagnosticStatus`` fields of ``depth/alignment`` for an
    :class:`AlignmentReport` (LiDAR fit) or a :class:`depth_node.prompt.PromptReport`:
    ``level`` (int), ``name``, ``message`` (the state), ``hardware_id`` (the frame_id) and
    ``values`` (a dict), every message string bounded for logs and diagnostics."""
    values = report.values()
    values['reason'] = bounded(values['reason'])
    which = f' ({camera})' if camera else ''
    what = 'depth prompt' if isinstance(report, pr.PromptReport) else 'lidar alignment'
    return {'level': report.level, 'name': f'{node_name}: {what}{which}',
            'message': values['state'], 'hardware_id': bounded(report.frame_id, 64),
            'values': values}


def image_encoding(key: str, value: np.ndarray) -> str:
    """The ``sensor_msgs/Image`` encoding of output ``key`` (``depth``, ``relative``,
    ``colored``) holding ``value``: ``16UC1`` (uint16 mm), ``32FC1`` or ``rgb8``."""
    return {'relative': '32FC1', 'colored': 'rgb8'}.get(
        key, '16UC1' if value.dtype == np.uint16 else '32FC1')


@dataclass
class Frame:
    """One received frame on its way through the pipeline.

    ``rgb`` is the network input ((H, W, 3) uint8, after ``input.max_pixels``), None for a
    ``relative`` frame; ``src_w`` x ``src_h`` is the image as received (pixels), which its
    camera_info describes. After :meth:`FramePipeline.forward`, ``prediction`` holds the network
    output ((H, W) float32 at the size of ``rgb``) and ``points`` the cloud built with it, if any.
    """

    kind: str
    header: Any
    rgb: Optional[np.ndarray] = None
    src_w: int = 0
    src_h: int = 0
    prediction: Optional[np.ndarray] = None
    points: Optional[np.ndarray] = None
    prompt: Optional[pr.PromptCheck] = None  # with prompt.source: its depth prompt
    prompt_points: int = 0  # LiDAR points projected for the prompt

    @property
    def stamp(self) -> float:
        """The header stamp, seconds."""
        return stamp_to_sec(self.header.stamp)


@dataclass
class CameraState:
    """What the pipeline keeps per camera: its latest camera_info and its LiDAR fit.

    ``index`` is the camera's place in ``input.cameras`` (it selects its block of
    ``lidar.T_camera_lidar``).
    """

    index: int = 0
    intrinsics: Optional[Intrinsics] = None
    aligner: Optional[Aligner] = None
    last_alignment: Optional[Alignment] = None


@dataclass(frozen=True)
class Problem:
    """Something the caller should log and count.

    ``key``: ``'camera_info'`` (a camera_info that does not fit or is unusable: a bad input),
    ``'no_camera_info'`` (none received yet), ``'no_fit'`` (no metric depth for this frame),
    ``'prompt_missing'``, ``'prompt_stale'``, ``'prompt_low_coverage'``, ``'prompt_bad'`` (no
    usable depth prompt: no metric depth for this frame).
    """

    key: str
    text: str


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


@dataclass
class LoadedModel:
    """:func:`load_estimator`'s result: the estimator, log lines for the caller and timings."""

    estimator: Any
    notes: list[tuple[str, str]]  # (level 'info' | 'warning', text)
    timings: dict[str, float]


def load_estimator(config: cfg.NodeConfig, batches: Sequence[int] = (1,),
                   on_note: Optional[Callable[[str, str], None]] = None) -> LoadedModel:
    """Load and warm up the model the ``model.*`` parameters name.

    ``batches``: batch sizes to warm up (the node: 1 and its number of cameras).
    ``on_note(level, text)`` receives each log line as it arises (level ``'info'`` or
    ``'warning'``), so that a note made before a failure (the hub cannot be reached) is logged
    before the error; the lines are also returned in :attr:`LoadedModel.notes`.

    Raises
    ------
    depth_node.config.ConfigError
        When the model cannot be loaded (the message says what to fix).
    """
    from depth_node.estimator import DepthEstimator, EstimatorError
    from depth_node.hub import is_local_model, prepare_hub_access

    c = config
    name = c['model.name']
    random_init = c['model.random_init'] or None
    notes: list[tuple[str, str]] = []

    def note_(level: str, text: str) -> None:
        notes.append((level, text))
        if on_note is not None:
            on_note(level, text)

    if not random_init:
        note = prepare_hub_access(name, is_local=is_local_model(name))
        if note:
            note_('warning', note)
    try:
        t0 = time.perf_counter()
        est = DepthEstimator(name, device=c['model.device'], precision=c['model.precision'],
                             random_init=random_init, compile=c['model.compile'],
                             cuda_graphs=c['model.cuda_graphs'], engine=c['model.engine'],
                             input_size=c['model.input_size'], cache_dir=c['model.cache_dir'],
                             threads=c['model.threads'],
                             providers=[p for p in c['model.onnxruntime_providers'] if p],
                             openvino_device=c['model.openvino_device'], kind=c['model.kind'],
                             denoising_steps=c['model.denoising_steps'],
                             ensemble_size=c['model.ensemble_size'])
        load_s = time.perf_counter() - t0
    except EstimatorError as exc:
        raise cfg.ConfigError(str(exc)) from exc
    if random_init:
        note_('warning', f'model.random_init={random_init}: RANDOM WEIGHTS, the output is '
                         'meaningless. Use this for pipeline smoke tests and timing only.')
    warm_s = 0.0
    if c['model.warmup']:
        width, height = c['model.warmup_size']
        # smaller batches are padded to one of the warmed sizes
        warm_s = est.warmup(height, width, batches=tuple(sorted(set(batches))))
    for note in est.startup_notes:  # engine; export / cache times
        note_('info', note)
    note_('info', f'model {random_init or name} on {est.device} ({est.dtype}), engine '
                  f'{est.engine.name}, {est.output_kind.replace("_", " ")}; load '
                  f'{load_s:.2f} s, warm-up {warm_s:.2f} s')
    return LoadedModel(est, notes, {'model_load': load_s, 'warmup': warm_s})


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
        self._patch_size = model_patch_size(estimator.config) if estimator is not None else 1
        self._shape_ok: Optional[tuple] = None  # the last shape check_input_shape passed
        self.prompt_source = config['prompt.source']
        if estimator is not None:
            why = pr.setup_error(bool(getattr(estimator, 'takes_prompt', False)),
                                 self.prompt_source, config['model.name'] or
                                 config['model.random_init'])
            if why:
                raise cfg.ConfigError(why)

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

    def check(self, kind: str, msg: Any) -> None:
        """O(1) checks of a frame on arrival, before it may displace a waiting one.

        A raw Image: data length, then the codec decodes its first two rows (encoding, size,
        step and its own rules), then ``input.max_pixels`` with ``refuse``. A CompressedImage:
        its header (container, size, ``input.max_pixels`` and whether it can be reduced while
        decoding). Then, for the network, the image's shape (``input.max_aspect``, at least a
        patch on each side).

        Raises
        ------
        ImageDecodeError
            When the frame is refused (the message says why).
        """
        max_pixels, oversize = self.config['input.max_pixels'], self.config['input.oversize']
        if kind == 'compressed':
            plan = plan_compressed(msg.format, msg.data, max_pixels, oversize)
            self._check_shape(plan.height, plan.width, (plan.out_height, plan.out_width))
            return
        decode = decode_relative_depth if kind == 'relative' else decode_image
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
        if len(msg.data) != step * height:
            raise ImageDecodeError(
                f'{shorten(msg.encoding)}: data is {len(msg.data)} bytes, step {step} x height '
                f'{height} needs {step * height}')
        rows = min(height, 2) if width > 0 else height  # an empty image says its real size
        decode(msg.encoding, rows, width, step, bool(msg.is_bigendian),
               memoryview(msg.data)[:step * rows])
        if kind == 'relative':
            return
        if oversize == 'refuse' and 0 < max_pixels < width * height:
            raise ImageDecodeError(
                f'{width}x{height} is over input.max_pixels={max_pixels} '
                '(set input.oversize:=downscale or raise the limit)')
        self._check_shape(height, width, limited_size(height, width, max_pixels))

    def _check_shape(self, height: int, width: int, resized: tuple[int, int]) -> None:
        """:func:`check_input_shape` with the estimator's input size rule; the last shape that
        passed is remembered (a camera keeps its size)."""
        key = (height, width, resized)
        if self.estimator is None or key == self._shape_ok:
            return
        check_input_shape(height, width, self.config['input.max_aspect'],
                          self.estimator.input_size, self._patch_size, resized)
        self._shape_ok = key

    def decode(self, kind: str, msg: Any) -> Frame:
        """Decode a frame of ``kind`` (:data:`INPUT_TOPICS`); a relative one is ready to finish.

        Raises
        ------
        ImageDecodeError
            When the frame is refused (corrupt, unsupported, over ``input.max_pixels``).
        """
        c = self.config
        frame = Frame(kind, msg.header)
        if kind == 'relative':
            frame.prediction = decode_relative_depth(msg.encoding, msg.height, msg.width,
                                                     msg.step, bool(msg.is_bigendian), msg.data)
            frame.src_w, frame.src_h = int(msg.width), int(msg.height)
            return frame
        limits = (c['input.max_pixels'], c['input.oversize'])
        if kind == 'compressed':
            # a JPEG over input.max_pixels comes out reduced; the source size is the header's
            plan = plan_compressed(msg.format, msg.data, *limits)
            rgb = decode_compressed(msg.format, msg.data, *limits)
            frame.src_h, frame.src_w = plan.height, plan.width
        else:
            rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step,
                               bool(msg.is_bigendian), msg.data)
            frame.src_h, frame.src_w = rgb.shape[:2]
        max_pixels = limits[0]
        if max_pixels and frame.src_h * frame.src_w > max_pixels:
            if limits[1] == 'refuse':
                raise ImageDecodeError(
                    f'{frame.src_w}x{frame.src_h} is over input.max_pixels={max_pixels} '
                    '(set input.oversize:=downscale or raise the limit)')
            rgb = limit_pixels(rgb, max_pixels)
        frame.rgb = rgb
        return frame

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
            if len(frames) == 1 and clouds[0] is not None:
                result = self.estimator.predict_points(frames[0].rgb, **clouds[0], **one)
                predictions, points = [result.depth], [result.points]
            elif len(frames) == 1:
                result = self.estimator.predict(frames[0].rgb, **one)
                predictions, points = [result.depth], [None]
            else:
                result = self.estimator.predict_batch(
                    [f.rgb for f in frames], clouds=clouds if any(clouds) else None,
                    **({'prompts': prompts} if self.prompt_source else {}))
                predictions, points = list(result.depth), result.points or [None] * len(frames)
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory: skip the frames
            return ForwardResult(error=exc)
        for frame, prediction, xyz in zip(frames, predictions, points):
            frame.prediction = prediction
            frame.points = xyz
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
        if not self.is_metric and c['output.relative'] and 'relative' in wanted:
            # first: whatever happens to the metric path, the prediction itself is served
            emit('relative', prediction)
            timer.mark('publish_relative')
        try:
            intr = self.intrinsics(state, frame.src_w, frame.src_h, width, height)
        except CameraInfoError as exc:
            emit('problem', Problem('camera_info', f'camera_info does not fit the image: {exc}'))
            intr = None
        if intr is None and state.intrinsics is None:
            emit('problem', Problem('no_camera_info', 'no camera_info received yet'))

        metric: Optional[np.ndarray] = None
        if state.aligner is not None:
            metric = self._align(frame, state, intr, scan, lookup_tf, emit)
            timer.mark('alignment')
        if metric is None and self.is_metric and wanted & {'depth', 'points', 'colored'}:
            # a metric model's own depth; LiDAR only refines it (depth/alignment says whether)
            metric = np.where(prediction > 0, prediction, np.float32(np.nan))

        if metric is not None and 'depth' in wanted:
            emit('depth', depth_to_uint16_mm(metric) if c['output.encoding'] == '16UC1'
                 else metric)
        if intr is not None and 'info' in wanted and (
                metric is not None or self.is_metric or c['output.relative']):
            # with every depth-like image (depth/image, depth/relative): its header, its size
            emit('info', intr)
        if metric is not None:
            timer.mark('publish_depth')
            if c['cloud.enabled'] and intr is not None and 'points' in wanted:
                emit('points', self._cloud(metric, intr, frame))
                timer.mark('cloud')
        if 'colored' in wanted:
            shown = metric if metric is not None else prediction
            emit('colored', colorize(shown, invert=metric is None))
            timer.mark('colored')
        return out

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

    def _cloud(self, depth: np.ndarray, intr: Intrinsics, frame: Frame) -> Any:
        """The packed cloud of ``depth`` (the points built with the forward when they fit)."""
        c = self.config
        stride = c['cloud.stride']
        xyz = frame.points
        expected = (-(-depth.shape[0] // stride), -(-depth.shape[1] // stride), 3)
        if xyz is None or xyz.shape != expected:  # none, or cloud.stride changed since
            xyz = depth_to_points(depth, intr.K, stride=stride, min_depth=c['cloud.min_depth'],
                                  max_depth=c['cloud.max_depth'])
        colors = None
        rgb = frame.rgb
        if c['cloud.color'] and rgb is not None and rgb.shape[:2] == depth.shape:
            colors = strided_rgb(rgb, stride)
        return pack_cloud(xyz, colors, organized=c['cloud.organized'])

    def _align(self, frame: Frame, state: CameraState, intr: Optional[Intrinsics],
               scan: Optional[Scan], lookup_tf: Optional[Callable],
               emit: Sink) -> Optional[np.ndarray]:
        """Fit the prediction to the LiDAR scan; emit the report; the metric depth or None."""
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
        return alignment.depth
