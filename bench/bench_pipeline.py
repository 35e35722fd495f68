"""Pipeline speed: per-stage times, node end-to-end latency over DDS, and a naive baseline.

Measures, for each architecture (Depth Anything V2 Small / Base, RANDOM weights: timing only),
input size (640x480, 1280x720) and precision the device supports:

- the node's stages run in this process through the package's own per-frame pipeline
  (:class:`depth_node.frame_pipeline.FramePipeline`: ``decode``, ``forward``, ``finish``, the
  code the node and ``depth_node-bag`` run), for a relative model with LiDAR: ``decode``
  (rgb8 Image bytes -> array), ``preprocess``,
  ``forward``, ``postprocess`` (the estimator's own timings), ``alignment`` (LiDAR projection
  and fit), ``cloud`` (back-projection and packing), ``fill`` (all messages: relative depth,
  metric depth, camera_info, organized cloud) and ``publish`` (rclpy ``publish`` of those four
  to a subscriber in another process);
- the same work done naively, as many Python depth nodes do it: the transformers image
  processor on a PIL image, fp32 forward, ``post_process_depth_estimation``, the per-pixel
  Python cloud and ``msg.data = a.tolist()`` (``bench/naive.py``);
  the decode, alignment and publish code is shared, so only the naive stages differ;
- startup (model build and cast, warm-up), throughput (frames per second of back-to-back
  frames), peak memory (weights, and the extra resident memory one frame needs);
- the node itself (``depth_node`` console script in a subprocess, Fast DDS profile
  ``config/fastdds_shm.xml``) fed one frame at a time from this process: latency from image
  publish to ``depth/points`` received here, against the bare forward pass run in this process
  between the node's frames (same precision, same input), plus the node's own stage times from
  ``/diagnostics``;
- message fill: :func:`depth_node.packing.set_uint8_data` against ``tobytes()`` and
  ``tolist()``.

Runs of each configuration are interleaved frame by frame (and node frames with the bare
forward passes), so a shared machine's load drift hits both sides of every ratio alike.
Medians are reported. Prints tables and targets (PASS / FAIL) and writes JSON; exits 0 whatever
the figures. ``--device cuda`` runs the same on a GPU (fp32, fp16, bf16 where supported, and
fp16 with CUDA graphs).

Usage::

    python bench/bench_pipeline.py                  # ~10 min on 2 CPU cores
    python bench/bench_pipeline.py --quick          # ~2-3 min: Small only, fewer frames
    python bench/bench_pipeline.py --device cuda --out bench/results/pipeline_cuda.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from common import (cpu_split, DATA, loadavg, machine_info, markdown_table, median, prepare_run,
                    proc_kib, REPO, thread_times)
from naive import naive_cloud_points, naive_fill, naive_processor

FRAME_640 = 'tum_rgbd/1341847980.722988'      # 640x480
FRAME_720 = 'nuscenes_mini/CAM_FRONT'         # 1600x900, resized to 1280x720
ARCHS = {'small': 'depth-anything-v2-small', 'base': 'depth-anything-v2-base'}
SIZES = {'640x480': (480, 640), '1280x720': (720, 1280)}
SINK_TOPICS = {'relative': 'bench/relative', 'depth': 'bench/depth', 'info': 'bench/camera_info',
               'points': 'bench/points'}
"""The outputs the bench publishes (output key -> topic), as the node's of the same keys."""
MIN_DEPTH, MAX_DEPTH = 0.1, 80.0

# Targets (CPU; Small at 640x480 unless said otherwise).
TARGET_E2E_OVER_FORWARD = 1.10
TARGET_NODE_FORWARD_OVER_BARE = 1.05
TARGET_OVERHEAD_MS = {'640x480': 10.0, '1280x720': 20.0}
TARGET_SPEEDUP_VS_NAIVE = 2.5
TARGET_GPU_FPS = 150.0
TARGET_GPU_LATENCY_MS = 10.0


# ----------------------------------------------------------------------------------------------
# environment

def _reset_peak_rss() -> bool:
    try:
        Path('/proc/self/clear_refs').write_text('5')
        return True
    except OSError:
        return False


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 2) if math.isfinite(seconds) else math.nan


# ----------------------------------------------------------------------------------------------
# inputs

class Inputs:
    """One real frame at one size, its intrinsics, and a LiDAR scan consistent with a prediction.

    The scan is synthesised from the (random-weight) prediction itself: ``1/z = s * d + t`` with
    z from 1 to 20 m over the prediction's 5-95th percentile, sampled like a 64-beam scanner,
    so the alignment fits (as it would with a trained network) and the metric path runs.

    Some random networks predict a constant (Base's random head outputs 0 almost everywhere
    after its final ReLU); nothing can be aligned to that, so the in-process pipeline then
    aligns a synthetic disparity of the same size instead (:attr:`substitute`, a ground-plane
    ramp with image texture). Alignment costs the same on either; the record says which.
    """

    def __init__(self, size: str) -> None:
        from PIL import Image

        from depth_node.camera_info import intrinsics_from_fields
        from depth_node.sample_data import load_frame

        height, width = SIZES[size]
        frame = load_frame(DATA / (FRAME_640 if size == '640x480' else FRAME_720))
        rgb = frame.image
        K = frame.K.copy()
        if rgb.shape[:2] != (height, width):
            sx, sy = width / rgb.shape[1], height / rgb.shape[0]
            rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
            K[0] *= sx
            K[1] *= sy
        self.size = size
        self.rgb = np.ascontiguousarray(rgb)
        self.height, self.width = height, width
        self.intr = intrinsics_from_fields(width, height, K.ravel(), [], 'plumb_bob',
                                           [0.0] * 12, [0.0] * 9)
        self.K = self.intr.K
        self.scan: Optional[np.ndarray] = None
        self.substitute: Optional[np.ndarray] = None

    @staticmethod
    def degenerate(prediction: np.ndarray) -> bool:
        lo, hi = np.percentile(prediction, [5, 95])
        return not (np.mean(prediction > 0) > 0.5 and hi - lo > 1e-3 * max(abs(hi), 1e-6))

    def synthetic_prediction(self) -> np.ndarray:
        rows = np.linspace(0.2, 1.0, self.height, dtype=np.float32)[:, None]
        texture = self.rgb.mean(axis=2, dtype=np.float32) / 255.0
        return np.ascontiguousarray(rows * (0.8 + 0.2 * texture), dtype=np.float32)

    def alignment_input(self, prediction: np.ndarray) -> np.ndarray:
        """The prediction, or the synthetic substitute when the network's output is constant."""
        return prediction if self.substitute is None else self.substitute

    def make_scan(self, prediction: np.ndarray) -> np.ndarray:
        if self.degenerate(prediction):
            self.substitute = prediction = self.synthetic_prediction()
        h, w = prediction.shape
        v = np.linspace(h * 0.1, h * 0.9, 64).astype(int)
        u = np.arange(0, w, 4)
        vv, uu = np.meshgrid(v, u, indexing='ij')
        d = prediction[vv, uu].astype(np.float64)
        lo, hi = np.percentile(prediction, [5, 95])
        s = (1 / 1.0 - 1 / 20.0) / max(hi - lo, 1e-6)
        t = 1 / 20.0 - s * lo
        inv = s * d + t
        ok = inv > 1 / MAX_DEPTH
        z = 1 / inv[ok]
        K = self.K
        pts = np.stack([(uu[ok] - K[0, 2]) * z / K[0, 0], (vv[ok] - K[1, 2]) * z / K[1, 1], z],
                       axis=1)
        self.scan = pts.astype(np.float32)
        return self.scan


def _header(frame_id: str, sec: int) -> Any:
    from depth_node.messages import make_header
    return make_header(frame_id, sec, 0)


# ----------------------------------------------------------------------------------------------
# the pipeline, as the node runs it, and naively

class _AlignmentInput:
    """The estimator, its ``predict`` output swapped for :meth:`Inputs.alignment_input` (the
    synthetic prediction when a random network's output is constant); everything else, the
    timings included, is the estimator's own."""

    def __init__(self, estimator: Any, inputs: 'Inputs') -> None:
        self._est, self._inputs = estimator, inputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._est, name)

    def predict(self, rgb: np.ndarray, **kwargs: Any) -> Any:
        import dataclasses

        result = self._est.predict(rgb, **kwargs)
        return dataclasses.replace(result, depth=self._inputs.alignment_input(result.depth))

    def predict_batch(self, images: list, **kwargs: Any) -> Any:
        """The pipeline's call when it keeps frames on the device (``on_device``): the
        substitute goes where the output is, uploaded once."""
        import dataclasses

        from depth_node.arrays import is_tensor, stack

        result = self._est.predict_batch(images, **kwargs)
        if self._inputs.substitute is None:
            return result
        substitute = self._inputs.substitute
        if is_tensor(result.depth):
            cached = getattr(self, '_uploaded', None)
            if cached is None or cached.device != result.depth.device:
                import torch
                cached = self._uploaded = torch.from_numpy(substitute).to(result.depth.device)
            substitute = cached
        return dataclasses.replace(result, depth=stack([substitute] * len(images)))


class Pipeline:
    """One configuration: the node's stages in this process (or their naive versions)."""

    def __init__(self, label: str, inputs: Inputs, stride: int, publishers: Optional[dict],
                 estimator: Any = None, naive_model: Any = None, device: str = 'cpu',
                 keep_on_device: str = 'auto') -> None:
        from depth_node import config as cfg
        from depth_node.alignment import Aligner, AlignerConfig
        from depth_node.frame_pipeline import FramePipeline
        from depth_node.messages import image_msg
        from depth_node.problems import Reporter

        self.label = label
        self.inputs = inputs
        self.stride = stride
        self.pubs = publishers
        self.est = estimator
        self.naive_model = naive_model
        self.device = device
        self.image_msg = image_msg(inputs.rgb, 'rgb8', _header('camera', 0))
        # the package's own per-frame pipeline, as the node runs it (the scan is given in the
        # camera frame: identity extrinsics)
        self.config = cfg.validate_values({
            'lidar.enabled': True, 'lidar.T_camera_lidar': np.eye(4).ravel().tolist(),
            'lidar.smoothing': 0.0, 'cloud.min_depth': MIN_DEPTH, 'cloud.max_depth': MAX_DEPTH,
            'cloud.stride': stride, 'cloud.organized': True, 'output.relative': True,
            'input.max_pixels': 0, 'model.keep_on_device': keep_on_device})
        # the pipeline runs the network through _AlignmentInput: a random network's constant
        # output is swapped for the synthetic prediction the scan was made from
        self.frames = (FramePipeline(self.config, _AlignmentInput(estimator, inputs))
                       if estimator is not None else None)
        self.reporter = Reporter(lambda severity, line: print(f'[bench] {severity}: {line}'))
        self.state = self.frames.new_camera() if self.frames is not None else None
        if self.state is not None:
            self.state.intrinsics = inputs.intr
        # the naive baseline's own alignment (the same functions, called directly)
        self.aligner = Aligner(AlignerConfig(smoothing=0.0, min_depth=MIN_DEPTH,
                                             max_depth=MAX_DEPTH))
        self.camera = inputs.intr
        self.samples: list[dict[str, float]] = []
        self.stub_samples: list[dict[str, float]] = []
        self.stubbed = False
        self._naive_outputs: Any = None
        self.last_prediction: Optional[np.ndarray] = None
        self.processor = None
        if naive_model is not None:
            self.processor = naive_processor()

    def _sync(self) -> None:
        if self.device.startswith('cuda'):
            import torch
            torch.cuda.synchronize()

    def stub_forward(self, on: bool) -> None:
        """Replace the network by its last output (overhead-only frames), or restore it.

        Every other stage runs as usual on tensors of the real shapes, so many frames give a
        low-noise median of the overhead in seconds instead of minutes.
        """
        import torch

        self.stubbed = on
        if self.naive_model is not None or self.est is None:
            return
        engine = self.est.engine
        if not on:
            engine.__dict__.pop('run', None)
            return
        with torch.inference_mode():
            pixel_values = self.est.preprocessor.run([self.inputs.rgb], compute=True)
            cached = engine.run(pixel_values)
        engine.run = lambda pixel_values: cached

    def infer(self, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        if self.naive_model is None:
            prediction = self.est.predict(rgb)
            return prediction.depth, dict(prediction.timings)
        import torch
        from PIL import Image

        t0 = time.perf_counter()
        inputs = self.processor(images=Image.fromarray(rgb), return_tensors='pt')
        pixel_values = inputs['pixel_values'].to(self.device)
        self._sync()
        t1 = time.perf_counter()
        if self.stubbed and self._naive_outputs is not None:
            outputs = self._naive_outputs
        else:
            with torch.no_grad():
                outputs = self.naive_model(pixel_values=pixel_values)
            self._naive_outputs = outputs
        self._sync()
        t2 = time.perf_counter()
        post = self.processor.post_process_depth_estimation(
            outputs, target_sizes=[rgb.shape[:2]])
        prediction = post[0]['predicted_depth'].cpu().numpy()
        t3 = time.perf_counter()
        return prediction, {'preprocess': t1 - t0, 'forward': t2 - t1, 'postprocess': t3 - t2}

    def run(self, k: int, record: bool = True) -> dict[str, float]:
        """One frame through every stage; returns (and records) stage seconds."""
        stage = self._run_package(k) if self.naive_model is None else self._run_naive(k)
        stage['overhead'] = stage['total'] - stage['forward']
        if record:
            (self.stub_samples if self.stubbed else self.samples).append(stage)
        return stage

    def _run_package(self, k: int) -> dict[str, float]:
        """The node's own code: :meth:`depth_node.frame_pipeline.FramePipeline.run_batch`,
        with a sink that builds and publishes the messages as the node's does (relative depth,
        metric depth, camera_info, organized cloud: :func:`depth_node.outputs.build_message`)."""
        from depth_node.frame_pipeline import Job
        from depth_node.messages import MESSAGES
        from depth_node.outputs import build_message

        stage = {'fill': 0.0, 'publish': 0.0}
        sink_s: dict[str, float] = {}
        header = _header('camera', 1_000_000 + k)
        msg = self.image_msg
        msg.header = header

        def sink(job: Any, key: str, value: Any) -> None:
            if key not in SINK_TOPICS:
                return  # depth/alignment: the bench publishes what the node's e2e measures
            t = time.perf_counter()
            out = build_message(MESSAGES, key, value, header, 'bench')
            t1 = time.perf_counter()
            stage['fill'] += t1 - t
            if self.pubs is not None:
                self.pubs[SINK_TOPICS[key]].publish(out)
            t2 = time.perf_counter()
            stage['publish'] += t2 - t1
            sink_s[key] = t2 - t

        scans = [] if self.inputs.scan is None else [
            (header.stamp.sec + header.stamp.nanosec * 1e-9, 'camera', self.inputs.scan)]
        job = Job(self.state, 'image', msg, wanted=frozenset(SINK_TOPICS),
                  scans=lambda: scans)
        wall = time.perf_counter()
        result = self.frames.run_batch([job], sink, self.reporter)
        stage['total'] = time.perf_counter() - wall
        if not result.finished:
            raise RuntimeError(f'the frame was not finished: {self.reporter.counters.snapshot()}')
        times = result.timings
        stage.update({key: times[key] for key in ('decode', 'preprocess', 'forward',
                                                  'postprocess')})
        stage['alignment'] = times.get('alignment', 0.0)
        stage['cloud'] = times.get('cloud', 0.0) - sink_s.get('points', 0.0)
        return stage

    def _run_naive(self, k: int) -> dict[str, float]:
        """The same frame done naively (:meth:`infer`'s processor and fp32 forward, the
        per-pixel Python cloud, ``tolist()`` fills); decode and alignment are the package's."""
        from sensor_msgs.msg import Image as ImageMsg, PointCloud2

        from depth_node.image_codec import decode_image
        from depth_node.lidar import prepare_points
        from depth_node.messages import camera_info_msg

        stage = {'fill': 0.0, 'publish': 0.0}
        header = _header('camera', 1_000_000 + k)
        msg = self.image_msg
        wall = time.perf_counter()
        t = time.perf_counter()
        rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian),
                           msg.data)
        stage['decode'] = time.perf_counter() - t
        prediction, times = self.infer(rgb)
        stage.update(times)
        self.last_prediction = prediction

        def fill_image(array_: np.ndarray) -> Any:
            t = time.perf_counter()
            out = ImageMsg(header=header, height=array_.shape[0], width=array_.shape[1],
                           encoding='32FC1', step=array_.shape[1] * 4)
            naive_fill(out, array_)
            stage['fill'] += time.perf_counter() - t
            return out

        def publish(topic: str, out: Any) -> None:
            if self.pubs is None:
                return
            t = time.perf_counter()
            self.pubs[topic].publish(out)
            stage['publish'] += time.perf_counter() - t

        publish('bench/relative', fill_image(prediction))
        t = time.perf_counter()
        depth = None
        if self.inputs.scan is not None:
            uv, z = prepare_points(self.inputs.scan, np.eye(4), self.camera, self.inputs.width,
                                   self.inputs.height, occlusion_window=5)
            alignment = self.aligner.align(self.inputs.alignment_input(prediction), uv, z,
                                           float(k))
            depth = alignment.depth
        stage['alignment'] = time.perf_counter() - t
        if depth is None:  # no scan yet (first frame) or no fit: no metric outputs
            stage['cloud'] = 0.0
        else:
            publish('bench/depth', fill_image(depth))
            t = time.perf_counter()
            info = camera_info_msg(self.inputs.intr, header)
            stage['fill'] += time.perf_counter() - t
            publish('bench/camera_info', info)
            t = time.perf_counter()
            points = naive_cloud_points(depth, self.inputs.K, self.stride)
            stage['cloud'] = time.perf_counter() - t
            t = time.perf_counter()
            xyz = np.asarray(points, dtype=np.float32).reshape(-1, 3)
            cloud = PointCloud2(header=header, height=1, width=len(xyz), point_step=12,
                                row_step=12 * len(xyz), is_dense=True)
            naive_fill(cloud, xyz)
            stage['fill'] += time.perf_counter() - t
            publish('bench/points', cloud)
        stage['total'] = time.perf_counter() - wall
        return stage

    def summary(self) -> dict[str, float]:
        keys = ('decode', 'preprocess', 'forward', 'postprocess', 'alignment', 'cloud', 'fill',
                'publish', 'overhead', 'total')
        out = {f'{key}_ms': _ms(median([s[key] for s in self.samples])) for key in keys}
        out['frames'] = len(self.samples)
        if self.stub_samples:
            stub = {f'{key}_ms': _ms(median([s[key] for s in self.stub_samples]))
                    for key in keys if key not in ('forward', 'total')}
            stub['frames'] = len(self.stub_samples)
            out['overhead_only'] = stub
        return out


# ----------------------------------------------------------------------------------------------
# ROS side: a context, a sink process for the publish stage, the node under test

class Ros:
    """rclpy in this process: one node, an executor spinning in a thread."""

    def __init__(self) -> None:
        import rclpy

        from depth_node.spin import BackgroundExecutor

        rclpy.init(args=[])
        self.rclpy = rclpy
        # The default context: nodes made without one (DepthNode in bench_batching) spin here.
        self._spinner = BackgroundExecutor(rclpy.get_default_context())
        self.executor = self._spinner.executor
        self.thread = self._spinner.thread
        self.node = self._spinner.add(rclpy.create_node('depth_node_bench'))

    def reliable(self, depth: int = 1) -> Any:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=ReliabilityPolicy.RELIABLE)

    def close(self) -> None:
        self._spinner.close(timeout=1.0)
        self.rclpy.try_shutdown()


def _sink_main() -> int:
    """``--sink``: subscribe the bench topics and spin until stdin closes."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from depth_node.spin import BackgroundExecutor

    rclpy.init(args=[])
    node = rclpy.create_node('depth_node_bench_sink')
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    subs = [node.create_subscription(_sink_type(k), t, lambda m: None, qos)
            for k, t in SINK_TOPICS.items()]
    spinner = BackgroundExecutor(rclpy.get_default_context())
    spinner.add(node)
    sys.stdin.read()  # the parent closes our stdin when done
    del subs
    os._exit(0)


def _sink_type(key: str) -> type:
    """The message class of output ``key`` (the output table's)."""
    from depth_node.messages import message_class
    from depth_node.outputs import OUTPUTS_BY_KEY

    return message_class(OUTPUTS_BY_KEY[key].msg_type)


class Sink:
    """A subscriber process for the in-process publish stage."""

    def __init__(self, ros: Ros) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, '--sink'], stdin=subprocess.PIPE,
                                     env=dict(os.environ))
        self.pubs = {t: ros.node.create_publisher(_sink_type(k), t, ros.reliable())
                     for k, t in SINK_TOPICS.items()}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self.pubs.values()):
                break
            time.sleep(0.05)
        else:
            print('warning: the sink process did not subscribe; publish times are without a '
                  'subscriber', file=sys.stderr)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class NodeRun:
    """The depth_node console script in a subprocess, fed and watched from this process."""

    def __init__(self, ros: Ros, params: dict[str, Any], log_path: Path) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        self.ros = ros
        args = ['depth_node', '--ros-args']
        for key, value in params.items():
            args += ['-p', f'{key}:={_param_text(value)}']
        self.log_path = log_path
        self.log = open(log_path, 'w')
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ))
        node = ros.node
        self.pub_image = node.create_publisher(Image, 'image', ros.reliable())
        self.pub_info = node.create_publisher(CameraInfo, 'camera_info', ros.reliable())
        self.pub_lidar = node.create_publisher(PointCloud2, 'lidar/points', ros.reliable())
        self._cv = threading.Condition()
        self.arrivals: dict[tuple[str, int], float] = {}
        self.diagnostics: list[dict[str, str]] = []
        outputs = {'depth/relative': Image, 'depth/image': Image, 'depth/points': PointCloud2,
                   'depth/camera_info': CameraInfo}
        self.subs = [node.create_subscription(mtype, topic, self._on_output(topic),
                                              ros.reliable(5))
                     for topic, mtype in outputs.items()]
        self.subs.append(node.create_subscription(DiagnosticArray, '/diagnostics',
                                                  self._on_diag, ros.reliable(10)))

    def _on_output(self, topic: str) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            now = time.perf_counter()
            with self._cv:
                self.arrivals[(topic, msg.header.stamp.sec)] = now
                self._cv.notify_all()
        return callback

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.endswith(': pipeline'):
                with self._cv:
                    self.diagnostics.append({kv.key: kv.value for kv in status.values})
                    self._cv.notify_all()

    def wait_ready(self, timeout: float) -> Optional[float]:
        """Seconds from spawn until the node subscribes ``image`` (startup), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return None
            if self.pub_image.get_subscription_count() > 0 and \
                    self.pub_lidar.get_subscription_count() > 0 and \
                    self.ros.node.count_publishers('depth/points') > 0:
                return time.perf_counter() - self.t_spawn
            time.sleep(0.05)
        return None

    def frame(self, inputs: Inputs, sec: int, timeout: float) -> Optional[dict[str, float]]:
        """Publish scan, camera_info, then the image; wait for every output of this stamp."""
        from depth_node.messages import camera_info_msg, image_msg, xyz_cloud_msg

        header = _header('camera', sec)
        self.pub_info.publish(camera_info_msg(inputs.intr, header))
        self.pub_lidar.publish(xyz_cloud_msg(inputs.scan, _header('lidar', sec)))
        image = image_msg(inputs.rgb, 'rgb8', header)
        time.sleep(0.05)  # scan and camera_info delivered first, as from a running sensor
        t0 = time.perf_counter()
        self.pub_image.publish(image)
        deadline = time.monotonic() + timeout
        topics = ('depth/relative', 'depth/image', 'depth/camera_info', 'depth/points')
        with self._cv:
            while not all((t, sec) in self.arrivals for t in topics):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self._cv.wait(min(left, 0.1))
            return {t: self.arrivals[(t, sec)] - t0 for t in topics}

    def stage_times(self, processed: int, timeout: float = 3.0) -> dict[str, float]:
        """The node's ``time_ms.*`` once it reports ``frames_processed >= processed``."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for values in reversed(self.diagnostics):
                    if int(values.get('frames_processed', 0)) >= processed:
                        return {k[len('time_ms.'):]: float(v) for k, v in values.items()
                                if k.startswith('time_ms.')}
                left = deadline - time.monotonic()
                if left <= 0:
                    return {}
                self._cv.wait(min(left, 0.1))

    def peak_rss_mib(self) -> Optional[float]:
        kib = proc_kib('VmHWM', str(self.proc.pid))
        return round(kib / 1024, 1) if kib else None

    def startup_log(self) -> dict[str, float]:
        self.log.flush()
        text = self.log_path.read_text(errors='replace')
        match = re.search(r'load ([0-9.]+) s, warm-up ([0-9.]+) s', text)
        return {'model_load_s': float(match.group(1)),
                'warmup_s': float(match.group(2))} if match else {}

    def close(self) -> int:
        for sub in self.subs:
            self.ros.node.destroy_subscription(sub)
        for pub in (self.pub_image, self.pub_info, self.pub_lidar):
            self.ros.node.destroy_publisher(pub)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):  # integer lists stay integers (model.warmup_size)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return '[' + ','.join(str(v) if ints else repr(float(v)) for v in value) + ']'
    return str(value)


# ----------------------------------------------------------------------------------------------
# measurements

def _precisions(device: str) -> list[str]:
    import torch

    if device.startswith('cuda'):
        out = ['fp32', 'fp16']
        if torch.cuda.is_bf16_supported():
            out.append('bf16')
        return out
    out = ['fp32']
    if _cpu_bf16_ok():
        out.append('bf16')
    return out


def _cpu_bf16_ok() -> bool:
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover
        return False


def _fast_precision(device: str) -> str:
    if device.startswith('cuda'):
        return 'fp16'
    return 'bf16' if _cpu_bf16_ok() else 'fp32'


def _weights_mib(model: Any) -> float:
    return round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1)


def _frame_memory(run: Callable[[], Any], device: str) -> dict[str, Optional[float]]:
    """Extra resident memory (and CUDA memory) one frame needs, MiB."""
    import torch

    out: dict[str, Optional[float]] = {}
    cuda = device.startswith('cuda')
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    rss = proc_kib('VmRSS')
    reset = _reset_peak_rss()
    run()
    peak = proc_kib('VmHWM')
    out['frame_peak_rss_extra_mib'] = round(max(0, peak - rss) / 1024, 1) \
        if reset and peak and rss else None
    out['process_peak_rss_mib'] = round(peak / 1024, 1) if peak else None
    if cuda:
        out['frame_peak_cuda_extra_mib'] = round(
            (torch.cuda.max_memory_allocated() - base_cuda) / 2**20, 1)
        out['cuda_allocated_mib'] = round(base_cuda / 2**20, 1)
    return out


def measure_configs(args: argparse.Namespace, sink: Optional[Sink]) -> list[dict[str, Any]]:
    """Every (arch, size): all precisions and the naive baseline, interleaved frame by frame."""
    import torch

    from depth_node.estimator import DepthEstimator

    results = []
    for arch in args.archs:
        for size in args.sizes:
            inputs = Inputs(size)
            pipelines: list[Pipeline] = []
            records: dict[str, dict[str, Any]] = {}
            fp32_model = None
            variants = [(p, False, 'auto') for p in args.precisions]
            if args.device.startswith('cuda') and 'fp16' in args.precisions and \
                    not args.no_cuda_graphs:
                # on CUDA 'auto' keeps the frame on the GPU after the forward (issue 25); the
                # same with the finish on the host (model.keep_on_device off), for the ratio
                variants += [('fp16', True, 'auto'), ('fp16', True, 'off')]
            for precision, graphs, keep in variants:
                label = precision + ('+graphs' if graphs else '') + \
                    (', host finish' if keep == 'off' else '')
                print(f'[{arch} {size} {label}] building', flush=True)
                t = time.perf_counter()
                est = DepthEstimator(random_init=ARCHS[arch], device=args.device,
                                     precision=precision, compile=args.compile,
                                     cuda_graphs=graphs)
                build_s = time.perf_counter() - t
                warm_s = est.warmup(inputs.height, inputs.width, iterations=2)
                if precision == 'fp32' and not graphs:
                    fp32_model = est.model
                pipe = Pipeline(label, inputs, args.stride, sink.pubs if sink else None,
                                estimator=est, device=args.device, keep_on_device=keep)
                pipelines.append(pipe)
                records[label] = {'arch': arch, 'size': size, 'precision': label,
                                  'kind': 'node pipeline', 'build_s': round(build_s, 3),
                                  'warmup_s': round(warm_s, 3),
                                  'weights_mib': _weights_mib(est.model),
                                  'preprocess_backend': est.preprocess_backend,
                                  'channels_last': est.channels_last,
                                  'input_size': list(est.input_size(inputs.height,
                                                                    inputs.width))}
            if inputs.scan is None:
                inputs.make_scan(pipelines[-1].est.predict(inputs.rgb).depth)
            if not args.no_naive:
                if fp32_model is None:
                    fp32_model = DepthEstimator(random_init=ARCHS[arch], device=args.device,
                                                precision='fp32').model
                naive = Pipeline('naive', inputs, args.stride, sink.pubs if sink else None,
                                 naive_model=fp32_model, device=args.device)
                naive.run(0, record=False)  # warm-up
                pipelines.append(naive)
                records['naive'] = {'arch': arch, 'size': size, 'precision': 'naive',
                                    'kind': 'naive baseline (fp32 forward)',
                                    'weights_mib': _weights_mib(fp32_model)}
            for pipe in pipelines:  # one untimed frame each, with a scan, then memory
                records[pipe.label].update(_frame_memory(lambda: pipe.run(0, record=False),
                                                         args.device))
            iterations = args.iterations
            naive_every = max(1, args.naive_every)
            loop_time = {p.label: 0.0 for p in pipelines}
            loop_frames = {p.label: 0 for p in pipelines}
            print(f'[{arch} {size}] {iterations} interleaved frames of '
                  f'{", ".join(p.label for p in pipelines)}; load {loadavg()}', flush=True)
            for i in range(iterations):
                for pipe in pipelines:
                    if pipe.label == 'naive' and i % naive_every:
                        continue
                    t = time.perf_counter()
                    pipe.run(i + 1)
                    loop_time[pipe.label] += time.perf_counter() - t
                    loop_frames[pipe.label] += 1
            for pipe in pipelines:  # overhead-only frames: network stubbed, interleaved too
                pipe.stub_forward(True)
            for i in range(args.overhead_frames):
                for pipe in pipelines:
                    pipe.run(iterations + 1 + i)
                    time.sleep(0.05)  # as after a forward: the sink has read the messages
            for pipe in pipelines:
                pipe.stub_forward(False)
            for pipe in pipelines:
                rec = records[pipe.label]
                rec.update(pipe.summary())
                rec['alignment_input'] = 'model output' if inputs.substitute is None \
                    else 'synthetic (the random network predicts a constant)'
                rec['throughput_fps'] = round(loop_frames[pipe.label] / loop_time[pipe.label], 2) \
                    if loop_time[pipe.label] > 0 else math.nan
                rec['load_after'] = loadavg()
                results.append(rec)
            del pipelines
            if args.device.startswith('cuda'):
                torch.cuda.empty_cache()
    return results


def measure_device_path(args: argparse.Namespace) -> list[dict[str, Any]]:
    """CUDA: the whole GPU path of one frame, ``DepthEstimator.predict_points``.

    Upload, preprocessing, forward, upsampling and back-projection on the device, one copy
    back per output (depth and cloud), back to back: latency and frames per second. Uses the
    metric Small architecture (same network cost as Small; a cloud needs metric depth).
    """
    from depth_node.estimator import DepthEstimator

    out = []
    for size in args.sizes:
        inputs = Inputs(size)
        for graphs in (False, True):
            for precision in [p for p in args.precisions if p != 'fp32'] or ['fp32']:
                est = DepthEstimator(random_init='depth-anything-v2-small-metric',
                                     device=args.device, precision=precision,
                                     cuda_graphs=graphs, compile=args.compile)
                warm_s = est.warmup(inputs.height, inputs.width, iterations=3)
                latencies, stages = [], []
                loop = time.perf_counter()
                for _ in range(args.iterations):
                    t = time.perf_counter()
                    result = est.predict_points(inputs.rgb, inputs.K, stride=args.stride,
                                                min_depth=MIN_DEPTH, max_depth=MAX_DEPTH)
                    latencies.append(time.perf_counter() - t)
                    stages.append(dict(result.timings))
                loop = time.perf_counter() - loop
                rec = {'arch': 'small-metric', 'size': size,
                       'precision': precision + ('+graphs' if graphs else ''),
                       'latency_ms': _ms(median(latencies)),
                       'latency_p90_ms': _ms(float(np.percentile(latencies, 90))),
                       'throughput_fps': round(len(latencies) / loop, 1),
                       'warmup_s': round(warm_s, 3), 'graphs_active': est.cuda_graphs}
                for key in ('preprocess', 'forward', 'postprocess', 'cloud'):
                    rec[f'{key}_ms'] = _ms(median([st[key] for st in stages]))
                print(f'[device path {size} {rec["precision"]}] {rec["latency_ms"]} ms, '
                      f'{rec["throughput_fps"]} frames/s', flush=True)
                out.append(rec)
                del est
    return out


def measure_node(args: argparse.Namespace, ros: Ros) -> list[dict[str, Any]]:
    """The node end to end, one frame at a time, interleaved with the bare forward here."""
    import torch

    from depth_node.estimator import DepthEstimator, EstimatorError

    precision = args.node_precision or _fast_precision(args.device)
    results = []
    for arch, engine in [(a, e) for a in args.node_archs for e in args.node_engines]:
        log_path = Path(args.out).parent / f'node_{arch}_{engine}.log'
        first_h, first_w = SIZES[args.sizes[0]]
        params = {'model.random_init': ARCHS[arch], 'model.precision': precision,
                  'model.engine': engine, 'model.warmup_size': [first_w, first_h],
                  'model.device': args.device, 'lidar.enabled': True,
                  'lidar.T_camera_lidar': list(np.eye(4).ravel()), 'lidar.smoothing': 0.0,
                  'cloud.stride': args.stride, 'diagnostics.period': 0.2}
        print(f'[node {arch} {precision} {engine}] starting the depth_node process', flush=True)
        try:
            est = DepthEstimator(random_init=ARCHS[arch], device=args.device,
                                 precision=precision, engine=engine)
        except EstimatorError as exc:  # e.g. a precision this engine does not run
            print(f'[node {arch} {precision} {engine}] skipped: {exc}', file=sys.stderr)
            results.append({'arch': arch, 'engine': engine, 'error': str(exc)})
            continue
        first = len(results)
        node = NodeRun(ros, params, log_path)
        try:
            ready = node.wait_ready(timeout=300)
            if ready is None:
                print(f'the node did not come up; see {log_path}', file=sys.stderr)
                results.append({'arch': arch, 'engine': engine,
                                'error': f'node did not start; log {log_path}'})
                continue
            startup = {'ready_s': round(ready, 2), **node.startup_log()}
            processed = 0
            sec = 100
            for size in args.sizes:
                inputs = Inputs(size)
                est.warmup(inputs.height, inputs.width, iterations=1)
                inputs.make_scan(est.predict(inputs.rgb).depth)
                if inputs.substitute is not None:
                    results.append({'arch': arch, 'size': size, 'error': 'the random network '
                                    'predicts a constant: the node cannot align it'})
                    continue
                e2e, outputs, forwards, node_stages, cpu = [], [], [], [], []
                pool = torch.get_num_threads()
                for i in range(args.node_warmup + args.node_frames):
                    sec += 1
                    # Node frame and bare forward in alternating order (ABBA), so a drift of
                    # the machine's speed does not favour one side of the ratio.
                    bare_first = i % 2 == 1
                    if bare_first:
                        bare, bare_cpu = _bare_forward(est, inputs, pool)
                    before = thread_times(node.proc.pid)
                    got = node.frame(inputs, sec, timeout=120)
                    node_cpu = cpu_split(before, thread_times(node.proc.pid), pool)
                    if got is None:
                        print(f'[node {arch} {size}] frame {sec}: no output', file=sys.stderr)
                        break
                    processed += 1
                    stages = node.stage_times(processed)
                    if not bare_first:
                        bare, bare_cpu = _bare_forward(est, inputs, pool)
                    if i < args.node_warmup:
                        continue
                    e2e.append(got['depth/points'])
                    outputs.append(got)
                    forwards.append(bare.timings['forward'])
                    node_stages.append(stages)
                    cpu.append({'node': node_cpu, 'bare': bare_cpu})
                rec = _node_record(arch, size, precision, e2e, outputs, forwards, node_stages,
                                   cpu)
                rec['engine'] = est.engine.name
                rec['load_after'] = loadavg()
                print(f'[node {arch} {engine} {size}] e2e {rec["e2e_ms"]} ms, bare forward '
                      f'{rec["bare_forward_ms"]} ms: e2e / bare {rec["e2e_over_forward"]}, node '
                      f'forward / bare {rec["node_forward_over_bare"]}', flush=True)
                results.append(rec)
            for rec in results[first:]:  # this node process's records only
                rec['startup'] = startup
                rec['node_peak_rss_mib'] = node.peak_rss_mib()
        finally:
            code = node.close()
            if len(results) > first:
                results[-1]['node_exit_code'] = code
    return results


def _bare_forward(est: Any, inputs: Inputs, pool: int) -> tuple[Any, dict[str, float]]:
    """``est.predict`` on the frame here (the bare forward), with this process's CPU split."""
    before = thread_times()
    prediction = est.predict(inputs.rgb)
    return prediction, cpu_split(before, thread_times(), pool)


def _node_record(arch: str, size: str, precision: str, e2e: list[float],
                 outputs: list[dict[str, float]], forwards: list[float],
                 node_stages: list[dict[str, float]],
                 cpu: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians; every ratio is taken frame by frame, then its median.

    Each node frame is paired with the bare forward run here just before or after it
    (alternating), so the machine's speed, which drifts by tens of percent from minute to
    minute on a shared VM, divides out of ``node_forward_over_bare`` and ``e2e_over_forward``.
    The node's ``time_ms.forward`` of a frame is timed within the same second as that frame's
    end-to-end latency, for ``e2e_over_node_forward``. ``cpu`` holds, per frame, the node
    process's and the bare forward's CPU split (:func:`common.cpu_split`): what the node's other
    threads cost and how long its threads waited for a core, which wall times cannot tell
    apart from the machine's drift.
    """
    stage_keys = sorted({k for s in node_stages for k in s})
    node_ms = {k: round(median([s[k] for s in node_stages if k in s]), 2) for k in stage_keys}
    e2e_med = median(e2e)
    fwd_med = median(forwards)
    node_fwd = [s.get('forward', math.nan) / 1e3 for s in node_stages]
    pairs = [(a, b) for a, b in zip(e2e, node_fwd) if math.isfinite(b) and b > 0]
    fwd_pairs = [(a, b) for a, b in zip(node_fwd, forwards) if math.isfinite(a) and b > 0]

    def cpu_median(side: str, key: str) -> float:
        return round(median([c[side][key] for c in cpu if c[side].get(key) is not None]), 1)
    return {
        'arch': arch, 'size': size, 'precision': precision, 'frames': len(e2e),
        'per_frame': {'e2e_ms': [_ms(x) for x in e2e],
                      'bare_forward_ms': [_ms(x) for x in forwards],
                      'node_forward_ms': [s.get('forward', math.nan) for s in node_stages],
                      'node_total_ms': [s.get('total', math.nan) for s in node_stages]},
        'e2e_ms': _ms(e2e_med),
        'e2e_min_ms': _ms(min(e2e)) if e2e else math.nan,
        'first_output_ms': _ms(median([o['depth/relative'] for o in outputs])),
        'depth_image_ms': _ms(median([o['depth/image'] for o in outputs])),
        'bare_forward_ms': _ms(fwd_med),
        'e2e_over_forward': round(median([a / b for a, b in zip(e2e, forwards)
                                          if math.isfinite(a) and b > 0]), 3),
        'pairs': len(fwd_pairs),
        'node_forward_over_bare': round(median([a / b for a, b in fwd_pairs]), 3)
        if fwd_pairs else math.nan,
        'node_forward_over_bare_iqr': [round(float(q), 3) for q in np.percentile(
            [a / b for a, b in fwd_pairs], [25, 75])] if fwd_pairs else [],
        'e2e_over_node_forward': round(median([a / b for a, b in pairs]), 3)
        if pairs else math.nan,
        'node_stage_ms': node_ms,
        'e2e_minus_node_forward_ms': _ms(median([a - b for a, b in pairs]))
        if pairs else math.nan,
        'node_overhead_ms': _ms(median([(s['total'] - s['forward']) / 1e3
                                        for s in node_stages if 'total' in s and 'forward' in s])),
        'throughput_fps': round(1.0 / e2e_med, 2) if e2e else math.nan,
        'cpu_ms': {f'{side}_{key}': cpu_median(side, key) for side in ('node', 'bare')
                   for key in ('inference', 'other', 'runqueue_wait')},
    }


def measure_fill(args: argparse.Namespace) -> list[dict[str, Any]]:
    """set_uint8_data (one copy) against tobytes() and tolist() for the node's messages."""
    from sensor_msgs.msg import Image, PointCloud2

    from depth_node.cloud import depth_to_points, pack_cloud
    from depth_node.packing import set_uint8_data

    rng = np.random.default_rng(0)
    cases = []
    for size in args.sizes:
        h, w = SIZES[size]
        depth = rng.uniform(1, 20, (h, w)).astype(np.float32)
        K = np.array([[w * 0.8, 0, w / 2], [0, w * 0.8, h / 2], [0, 0, 1]])
        cases.append((f'depth {size} 32FC1', Image, depth))
        for stride in sorted({1, args.stride}):
            cloud = pack_cloud(depth_to_points(depth, K, stride=stride)).data
            cases.append((f'cloud {size} stride {stride}', PointCloud2, cloud))
    out = []
    for name, mtype, array_ in cases:
        def one_copy() -> None:
            set_uint8_data(mtype(), array_)

        def tobytes() -> None:
            mtype().data = array_.tobytes()

        def tolist() -> None:
            mtype().data = array_.view(np.uint8).ravel().tolist()

        row = {'message': name, 'mib': round(array_.nbytes / 2**20, 2)}
        for label, fn, reps in (('set_uint8_data', one_copy, 21), ('tobytes', tobytes, 21),
                                ('tolist', tolist, 3)):
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            row[f'{label}_ms'] = _ms(median(times))
        row['tolist_over_one_copy'] = round(row['tolist_ms'] / row['set_uint8_data_ms'], 1)
        row['tobytes_over_one_copy'] = round(row['tobytes_ms'] / row['set_uint8_data_ms'], 2)
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------
# report

STAGE_COLUMNS = [('arch', 'arch'), ('size', 'input'), ('precision', 'precision'),
                 ('decode_ms', 'decode'), ('preprocess_ms', 'pre'), ('forward_ms', 'forward'),
                 ('postprocess_ms', 'post'), ('alignment_ms', 'align'), ('cloud_ms', 'cloud'),
                 ('fill_ms', 'fill'), ('publish_ms', 'publish'), ('overhead_ms', 'overhead'),
                 ('total_ms', 'total'), ('throughput_fps', 'frames/s'),
                 ('build_s', 'build s'), ('warmup_s', 'warm-up s'), ('weights_mib', 'weights MiB'),
                 ('frame_peak_rss_extra_mib', 'frame RSS MiB'),
                 ('frame_peak_cuda_extra_mib', 'frame CUDA MiB')]


def ratios(configs: list[dict[str, Any]], nodes: list[dict[str, Any]],
           device: str) -> list[dict[str, Any]]:
    """Per (arch, size): naive over each precision, fp32 over the others, node against naive."""
    out = []
    for key in sorted({(r['arch'], r['size']) for r in configs}):
        rows = {r['precision']: r for r in configs if (r['arch'], r['size']) == key}
        naive = rows.get('naive')
        fp32 = rows.get('fp32')
        for label, row in rows.items():
            if label == 'naive':
                continue
            entry = {'arch': key[0], 'size': key[1], 'precision': label}
            if naive:
                entry['naive_over_total'] = round(naive['total_ms'] / row['total_ms'], 2)
                entry['naive_overhead_over_overhead'] = round(
                    naive['overhead_ms'] / row['overhead_ms'], 1)
            if fp32:
                entry['fp32_forward_over_forward'] = round(fp32['forward_ms'] / row['forward_ms'],
                                                           2)
            entry['overhead_share'] = round(row['overhead_ms'] / row['total_ms'], 3)
            node = next((n for n in nodes if (n.get('arch'), n.get('size')) == key
                         and n.get('precision') == label), None)
            if node and naive:
                entry['naive_over_node_e2e'] = round(naive['total_ms'] / node['e2e_ms'], 2)
            out.append(entry)
    return out


def targets(configs: list[dict[str, Any]], nodes: list[dict[str, Any]],
            device: str, device_path: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fast = _fast_precision(device)
    out = []

    def row(arch: str, size: str, precision: str) -> Optional[dict[str, Any]]:
        return next((r for r in configs if (r['arch'], r['size'], r['precision'])
                     == (arch, size, precision)), None)

    def node_runs(arch: str, size: str) -> list[dict[str, Any]]:
        return [n for n in nodes if (n.get('arch'), n.get('size')) == (arch, size)
                and 'e2e_ms' in n]

    def add(name: str, value: float, limit: float, ok: bool, note: str = '') -> None:
        out.append({'target': name, 'value': value, 'limit': limit,
                    'result': 'PASS' if ok else 'FAIL', 'note': note})

    if device.startswith('cuda'):
        paths = [d for d in device_path if d['size'] == '640x480']
        best = min(paths, key=lambda d: d['latency_ms'], default=None)
        if best:
            add(f'GPU path (predict_points) Small 640x480 {best["precision"]}: frames/s',
                best['throughput_fps'], TARGET_GPU_FPS, best['throughput_fps'] >= TARGET_GPU_FPS)
            add(f'GPU path (predict_points) Small 640x480 {best["precision"]}: latency ms',
                best['latency_ms'], TARGET_GPU_LATENCY_MS,
                best['latency_ms'] < TARGET_GPU_LATENCY_MS)
        r = row('small', '640x480', 'fp16+graphs') or row('small', '640x480', 'fp16')
        if r:
            add(f'GPU full pipeline Small 640x480 {r["precision"]}: frames/s',
                r['throughput_fps'], TARGET_GPU_FPS, r['throughput_fps'] >= TARGET_GPU_FPS,
                'with CPU alignment, fill and publish')
            add(f'GPU full pipeline Small 640x480 {r["precision"]}: latency ms', r['total_ms'],
                TARGET_GPU_LATENCY_MS, r['total_ms'] < TARGET_GPU_LATENCY_MS)
    for size in SIZES:
        runs = node_runs('small', size)
        for n in runs:
            what = f'Small {size} {n.get("engine", "")} {n["precision"]}'
            add(f'node e2e / its forward, same frame, {what}',
                n['e2e_over_node_forward'], TARGET_E2E_OVER_FORWARD,
                n['e2e_over_node_forward'] <= TARGET_E2E_OVER_FORWARD,
                f'median over {n["frames"]} frames')
            add(f'node e2e / bare forward here, {what}',
                n['e2e_over_forward'], TARGET_E2E_OVER_FORWARD,
                n['e2e_over_forward'] <= TARGET_E2E_OVER_FORWARD,
                f'median of {n["frames"]} paired frames')
            add(f'node forward (/diagnostics) / bare forward here, {what}',
                n['node_forward_over_bare'], TARGET_NODE_FORWARD_OVER_BARE,
                n['node_forward_over_bare'] <= TARGET_NODE_FORWARD_OVER_BARE,
                f'median of {n["pairs"]} paired frames, quartiles '
                f'{n["node_forward_over_bare_iqr"]}')
        n = runs[0] if runs else None
        r = row('small', size, fast)
        if r:
            add(f'pipeline overhead ms (all but forward, in-process), Small {size} {fast}',
                r['overhead_ms'], TARGET_OVERHEAD_MS[size],
                r['overhead_ms'] <= TARGET_OVERHEAD_MS[size])
        if r and r.get('overhead_only'):
            value = r['overhead_only']['overhead_ms']
            add(f'pipeline overhead ms, network stubbed, Small {size} {fast}', value,
                TARGET_OVERHEAD_MS[size], value <= TARGET_OVERHEAD_MS[size],
                f"median of {r['overhead_only']['frames']} frames")
        if n and math.isfinite(n.get('e2e_minus_node_forward_ms', math.nan)):
            add(f'node overhead ms (e2e over DDS - node forward), Small {size} '
                f'{n.get("engine", "")} {n["precision"]}',
                n['e2e_minus_node_forward_ms'], TARGET_OVERHEAD_MS[size],
                n['e2e_minus_node_forward_ms'] <= TARGET_OVERHEAD_MS[size],
                'includes both DDS hops and the node wake-up')
        naive = row('small', size, 'naive')
        if r and naive:
            ratio = round(naive['total_ms'] / r['total_ms'], 2)
            add(f'naive / pipeline, both in-process, Small {size} {fast}', ratio,
                TARGET_SPEEDUP_VS_NAIVE, ratio >= TARGET_SPEEDUP_VS_NAIVE,
                'interleaved frames')
        if n and naive:
            ratio = round(naive['total_ms'] / n['e2e_ms'], 2)
            add(f'naive (in-process) / node e2e (over DDS), Small {size}', ratio,
                TARGET_SPEEDUP_VS_NAIVE, ratio >= TARGET_SPEEDUP_VS_NAIVE,
                'not interleaved: different minutes of a shared machine')
    return out


def report(result: dict[str, Any]) -> str:
    lines = []
    m = result['machine']
    lines.append(f"machine: {m.get('cpu')} ({m.get('cpus')} CPUs, torch threads "
                 f"{m.get('torch_threads')}, {', '.join(m.get('cpu_flags', [])) or 'no AVX-512'})"
                 f"{', GPU ' + m['gpu'] if m.get('gpu') else ''}; torch {m.get('torch')}, "
                 f"transformers {m.get('transformers')}")
    lines.append(f"device {result['args']['device']}; load average at start "
                 f"{result['load_start']}, at end {result['load_end']}; "
                 f"{result['elapsed_s']:.0f} s")
    if result['configs']:
        lines.append('\nPer-stage medians (ms), in-process, interleaved (RANDOM weights):')
        lines.append(markdown_table(result['configs'], STAGE_COLUMNS))
    stub_rows = [{**{k: r[k] for k in ('arch', 'size', 'precision')}, **r['overhead_only']}
                 for r in result['configs'] if r.get('overhead_only')]
    if stub_rows:
        lines.append('\nOverhead-only frames (network stubbed by its last output; medians, ms):')
        columns = [c for c in STAGE_COLUMNS[:13] if c[0] not in ('forward_ms', 'total_ms')]
        lines.append(markdown_table(stub_rows, columns + [('frames', 'frames')]))
    if result['ratios']:
        lines.append('\nRatios (same run, interleaved frames):')
        lines.append(markdown_table(result['ratios'], [
            ('arch', 'arch'), ('size', 'input'), ('precision', 'precision'),
            ('naive_over_total', 'naive / total'),
            ('naive_overhead_over_overhead', 'naive overhead / overhead'),
            ('fp32_forward_over_forward', 'fp32 forward / forward'),
            ('overhead_share', 'overhead share'), ('naive_over_node_e2e', 'naive / node e2e')]))
    if result['node']:
        lines.append('\nNode end to end (depth_node process, image publish -> depth/points '
                     'received here over DDS; bare forward interleaved in this process):')
        rows = []
        for n in result['node']:
            if 'e2e_ms' not in n:
                rows.append({'arch': n.get('arch'), 'engine': n.get('engine'),
                             'size': n.get('error')})
                continue
            st = n['node_stage_ms']
            rows.append({**n, **{f'node_{k}': v for k, v in st.items()},
                         'startup_s': n.get('startup', {}).get('ready_s')})
        lines.append(markdown_table(rows, [
            ('arch', 'arch'), ('engine', 'engine'), ('size', 'input'),
            ('precision', 'precision'), ('frames', 'frames'), ('first_output_ms', 'relative'),
            ('depth_image_ms', 'depth/image'), ('e2e_ms', 'e2e (points)'),
            ('bare_forward_ms', 'bare forward'), ('e2e_over_forward', 'e2e / bare'),
            ('node_forward', 'node forward'), ('node_forward_over_bare', 'node fwd / bare'),
            ('e2e_over_node_forward', 'e2e / node fwd'),
            ('e2e_minus_node_forward_ms', 'e2e - node fwd'),
            ('node_overhead_ms', 'node total - fwd'),
            ('node_decode', 'n decode'), ('node_preprocess', 'n pre'),
            ('node_postprocess', 'n post'), ('node_publish_relative', 'n pub rel'),
            ('node_alignment', 'n align'), ('node_publish_depth', 'n pub depth'),
            ('node_cloud', 'n cloud'), ('node_total', 'n total'),
            ('node_peak_rss_mib', 'node peak RSS MiB'), ('startup_s', 'ready s')]))
        cpu_rows = [{'arch': n['arch'], 'engine': n.get('engine'), 'size': n['size'],
                     **n['cpu_ms']} for n in result['node'] if n.get('cpu_ms')]
        if cpu_rows:
            lines.append('\nCPU per frame (ms, medians; schedstat): the inference thread pool, '
                         'every other thread, and the time threads waited for a core; node = '
                         'the depth_node process over a whole frame, bare = this process over '
                         'its forward:')
            lines.append(markdown_table(cpu_rows, [('arch', 'arch'), ('engine', 'engine'),
                                                   ('size', 'input')] + [
                (f'{side}_{key}', f'{side} {key.replace("_", " ")}') for side in ('node', 'bare')
                for key in ('inference', 'other', 'runqueue_wait')]))
        for n in result['node']:
            if n.get('startup'):
                lines.append(f"node {n['arch']}: startup {n['startup']}")
                break
    if result.get('device_path'):
        lines.append('\nGPU path, predict_points (upload, pre, forward, post, cloud, copies '
                     'back):')
        lines.append(markdown_table(result['device_path'], [
            ('arch', 'arch'), ('size', 'input'), ('precision', 'precision'),
            ('preprocess_ms', 'pre'), ('forward_ms', 'forward'), ('postprocess_ms', 'post'),
            ('cloud_ms', 'cloud + copies'), ('latency_ms', 'latency'),
            ('latency_p90_ms', 'p90'), ('throughput_fps', 'frames/s'),
            ('graphs_active', 'graphs active')]))
    if result['fill']:
        lines.append('\nMessage fill (ms, median):')
        lines.append(markdown_table(result['fill'], [
            ('message', 'message'), ('mib', 'MiB'), ('set_uint8_data_ms', 'one copy'),
            ('tobytes_ms', 'tobytes'), ('tolist_ms', 'tolist'),
            ('tobytes_over_one_copy', 'tobytes / one copy'),
            ('tolist_over_one_copy', 'tolist / one copy')]))
    if result['targets']:
        lines.append('\nTargets:')
        lines.append(markdown_table(result['targets'], [
            ('target', 'target'), ('value', 'value'), ('limit', 'limit'), ('result', 'result'),
            ('note', 'note')]))
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------

def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'auto' (default cpu)")
    ap.add_argument('--quick', action='store_true',
                    help='Small only, fewer frames (~2-3 min on 2 CPU cores)')
    ap.add_argument('--archs', nargs='+', choices=sorted(ARCHS), default=None)
    ap.add_argument('--sizes', nargs='+', choices=list(SIZES), default=list(SIZES))
    ap.add_argument('--precisions', nargs='+', default=None,
                    help='default: every precision the device supports')
    ap.add_argument('--iterations', type=int, default=None,
                    help='timed frames per configuration (default 5 on CPU, 200 on CUDA)')
    ap.add_argument('--naive-every', type=int, default=None,
                    help='run the naive baseline every Nth frame (default 1; 10 on CUDA)')
    ap.add_argument('--overhead-frames', type=int, default=None,
                    help='frames per configuration with the network stubbed (its last output '
                         'reused), for a low-noise overhead median (default 30; quick 10)')
    ap.add_argument('--stride', type=int, default=2, help='cloud.stride (node default 2)')
    ap.add_argument('--compile', action='store_true', help='torch.compile the models')
    ap.add_argument('--no-cuda-graphs', action='store_true',
                    help='CUDA: skip the fp16 + CUDA graphs configuration')
    ap.add_argument('--no-naive', action='store_true')
    ap.add_argument('--no-configs', action='store_true',
                    help='skip the in-process stage measurements (node and fill only)')
    ap.add_argument('--no-node', action='store_true', help='skip the node end-to-end run')
    ap.add_argument('--no-publish', action='store_true',
                    help='skip the sink process (publish stage not measured)')
    ap.add_argument('--node-archs', nargs='+', choices=sorted(ARCHS), default=['small'])
    ap.add_argument('--node-engines', nargs='+', default=['torch'],
                    choices=['auto', 'torch', 'onnxruntime', 'openvino', 'tensorrt'],
                    help='model.engine of each node run (default torch)')
    ap.add_argument('--node-precision', default=None,
                    help='default: bf16 on CPUs that support it, fp16 on CUDA')
    ap.add_argument('--node-frames', type=int, default=None,
                    help='timed node frames per size (default 16; quick 4; CUDA 100); an even '
                         'number balances the alternating node / bare order')
    ap.add_argument('--node-warmup', type=int, default=2)
    ap.add_argument('--domain', type=int, default=1 + os.getpid() % 99,
                    help='ROS_DOMAIN_ID (default: a private one from the pid)')
    ap.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'pipeline.json'))
    args = ap.parse_args(argv)
    cuda = args.device.startswith('cuda')
    if args.archs is None:
        args.archs = ['small'] if args.quick else ['small', 'base']
    if args.iterations is None:
        args.iterations = (50 if args.quick else 200) if cuda else (2 if args.quick else 5)
    if args.overhead_frames is None:
        args.overhead_frames = 10 if args.quick else 30
    if args.naive_every is None:
        args.naive_every = 10 if cuda else 1
    if args.node_frames is None:
        args.node_frames = (30 if args.quick else 100) if cuda else (4 if args.quick else 16)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    if argv is None and '--sink' in sys.argv[1:]:
        return _sink_main()
    args = _parse_args(argv)
    device = prepare_run(args.domain, args.device)
    if device is None:
        return 2
    args.device = device
    import torch

    if args.precisions is None:
        args.precisions = _precisions(args.device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {'machine': machine_info(), 'args': vars(args).copy(),
                              'load_start': loadavg(),
                              'command': ' '.join([Path(sys.executable).name] + sys.argv)}
    print(f"machine: {result['machine']}; load {result['load_start']}", flush=True)
    torch.manual_seed(0)
    ros = Ros()
    sink = None if args.no_publish else Sink(ros)
    try:
        result['configs'] = [] if args.no_configs else measure_configs(args, sink)
        result['fill'] = measure_fill(args)
        result['device_path'] = measure_device_path(args) \
            if args.device.startswith('cuda') else []
    finally:
        if sink is not None:
            sink.close()
    try:
        result['node'] = [] if args.no_node else measure_node(args, ros)
    finally:
        ros.close()
    result['ratios'] = ratios(result['configs'], result['node'], args.device)
    result['targets'] = targets(result['configs'], result['node'], args.device,
                                result['device_path'])
    result['load_end'] = loadavg()
    result['elapsed_s'] = round(time.perf_counter() - started, 1)
    text = report(result)
    print('\n' + text)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f'\nwrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
