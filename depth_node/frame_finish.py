"""Everything after the network for one frame, ROS-free: LiDAR fit, temporal stability, flying
pixels, confidence, depth, camera_info, cloud and colour image, each handed to a sink.

The same code runs on numpy arrays (on the CPU) and on torch tensors (a frame the pipeline keeps
on the model's device, :attr:`depth_node.frame_pipeline.FramePipeline.on_device`): a tensor
output is copied back once, when it is handed to the sink, so a sink always gets numpy arrays.

The second half of :class:`depth_node.frame_pipeline.FramePipeline` (which runs the first: the
frame's arrival and the network) and what a camera keeps between frames
(:class:`CameraState`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Any, Callable, Optional

import numpy as np

from depth_node import config as cfg
from depth_node import prompt as pr
from depth_node.alignment import Aligner, AlignerConfig, Alignment
from depth_node.arrays import is_tensor, namespace, to_host
from depth_node.camera_info import CameraInfoError, fit_to_image, Intrinsics
from depth_node.cloud import depth_to_points, pack_cloud, strided_rgb
from depth_node.colormap import colorize
from depth_node.frame_input import Frame, Scan
from depth_node.frame_quality import assess, QualityState, stabilize
from depth_node.lidar import LidarError, prepare_points, projection_counts
from depth_node.packing import depth_to_uint16_mm
from depth_node.problems import Problem
from depth_node.telemetry import StageTimer
from depth_node.text import shorten

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
class Spec:
    """What both halves of the pipeline read: the parameters (replaced between frames on a
    run-time parameter change), whether the output is metric, its kind (``metric_depth``,
    ``relative_depth`` or ``relative_disparity``) and the depth prompt's source ('' none)."""

    config: cfg.NodeConfig
    is_metric: bool
    output_kind: str
    prompt_source: str


def fitted_intrinsics(state: CameraState, src_w: int, src_h: int, width: int,
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


class FrameFinisher:
    """Aligns, stabilises, filters and converts one frame's prediction into its outputs
    (:meth:`finish`), and makes the cameras' LiDAR fits (:meth:`new_aligner`)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    @property
    def config(self) -> cfg.NodeConfig:
        return self.spec.config

    @property
    def is_metric(self) -> bool:
        return self.spec.is_metric

    @property
    def prompt_source(self) -> str:
        return self.spec.prompt_source

    @property
    def output_kind(self) -> str:
        return self.spec.output_kind

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
                if is_tensor(value):  # the one copy back of a device output
                    value = to_host(value)
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
            intr = fitted_intrinsics(state, frame.src_w, frame.src_h, width, height)
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
            metric = namespace(prediction).where(prediction > 0, prediction, math.nan)
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
            emit('colored', colorize(to_host(shown if shown is not None else prediction),
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
        return pack_cloud(xyz, colors, organized=c['cloud.organized'],
                          voxel_size=c['cloud.voxel_size'])

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
                                           occlusion_window=window,
                                           device=prediction.device if is_tensor(prediction)
                                           else None)
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
