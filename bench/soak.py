#!/usr/bin/env python3
"""Soak and overload benchmark: depth_node as a separate process, driven at camera rate.

A benchmark, not a test: it prints a table, writes JSON, and exits 0 whatever the figures (2 on
bad arguments or missing data).

The node runs through its console entry point (as ``ros2 run`` starts it) with the Fast DDS
shared-memory profile of ``config/``; this process plays camera, LiDAR and consumer over real
DDS. Each frame carries a unique stamp; end-to-end latency is the time from publishing an image
to receiving the depth image with that stamp. The node's resident memory is read from
``/proc/<pid>/status`` (VmRSS) once a second; its counters from ``/diagnostics``.

Phases (defaults: about 4 minutes on 2 CPU cores):

``soak``
    A tiny random Depth Anything, metric, input 140 px (about 15 ms a frame: the node keeps up),
    LiDAR on (scale correction with a simulated 64-beam scan at 10 Hz), cloud on. The real
    TUM RGB-D frame (640x480 rgb8) and its camera_info at ``--rate`` Hz for ``--soak-s``
    seconds. Every 10th image is bad (unknown encoding, short data, zero width, step too small,
    in turn), every 25th tick also sends a camera_info with a NaN in K before the good one, and
    every 30th a cloud without z. Memory growth: median RSS over the last 10 % of the run
    against the median over the 10 s after warm-up (the first ``--warmup-s`` seconds).
``overload``
    ``model.random_init: depth-anything-v2-small`` (full size, random weights: about 1 s a
    frame on a CPU) at ``--rate`` Hz for ``--overload-s`` seconds; relative depth only. The
    newest frame wins, so latency should stay within about 2x the forward time. The first two
    outputs (lazy initialisation) are left out of the latency figures; the memory baseline
    starts after ``--overload-warmup-s`` (about a dozen frames). At the end SIGINT is sent
    while a forward pass is running and the time to exit is recorded.

Memory is also given as a slope: a least-squares line through the medians of 5-s windows of
RSS after warm-up, MiB per minute (a leak shows as a steady slope, the allocator settling as a
step; the medians keep a forward pass's activations out). It needs 2 minutes after warm-up;
shorter runs show n/a (nan).

Usage: ``python bench/soak.py [--soak-s 90] [--overload-s 60] [--rate 30] [--out FILE]
[--skip-overload] [--data ../shared/data/real]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

import numpy as np

from common import DATA, isolate_ros, machine_info, proc_kib, REPO

# Camera optical frame from a LiDAR frame (x forward, y left, z up), 0.3 m above the camera.
R_CAM_LIDAR = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
T_CAMERA_LIDAR = np.eye(4)
T_CAMERA_LIDAR[:3, :3] = R_CAM_LIDAR
T_CAMERA_LIDAR[:3, 3] = R_CAM_LIDAR @ np.array([-0.1, 0.0, 0.3])
BAD_KINDS = ('unknown encoding', 'short data', 'zero width', 'step too small')


def _entry_point() -> list[str]:
    exe = shutil.which('depth_node', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'depth_node.node']


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {'n': 0}
    a = np.asarray(values, dtype=np.float64)
    return {'n': int(a.size), 'mean': float(a.mean()), 'p50': float(np.percentile(a, 50)),
            'p95': float(np.percentile(a, 95)), 'p99': float(np.percentile(a, 99)),
            'max': float(a.max()), 'min': float(a.min())}


class Driver:
    """Camera, LiDAR and consumer in one rclpy node, spinning in a background thread."""

    def __init__(self, namespace: str, output: str) -> None:
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        from depth_node.spin import BackgroundExecutor

        self._spinner = BackgroundExecutor(num_threads=2)
        self.context = self._spinner.context
        self.executor = self._spinner.executor
        self.node = rclpy.create_node('soak_driver', namespace=namespace, context=self.context)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {'image': self.node.create_publisher(Image, 'image', qos),
                    'camera_info': self.node.create_publisher(CameraInfo, 'camera_info', qos),
                    'lidar/points': self.node.create_publisher(PointCloud2, 'lidar/points', qos)}
        self._lock = threading.Lock()
        self.published: dict[tuple[int, int], float] = {}
        self.latencies: list[tuple[float, float]] = []  # (receive time, latency s)
        self.diagnostics: list[dict[str, str]] = []
        self.node.create_subscription(Image, output, self._on_output, qos)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, qos)
        self._hardware_id = f'{namespace}/depth_node'
        self._spinner.add(self.node)

    def _on_output(self, msg: Any) -> None:
        now = time.perf_counter()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._lock:
            sent = self.published.pop(key, None)
            if sent is not None:
                self.latencies.append((now, now - sent))

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id == self._hardware_id:
                values = {kv.key: kv.value for kv in status.values}
                values['_level'] = str(status.level[0] if isinstance(status.level, bytes)
                                       else status.level)
                values['_message'] = status.message
                with self._lock:
                    self.diagnostics.append(values)

    def publish_frame(self, msg: Any) -> None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._lock:
            self.published[key] = time.perf_counter()
        self.pub['image'].publish(msg)

    def wait_for_node(self, proc: subprocess.Popen, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if self.pub['image'].get_subscription_count() > 0:
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self._spinner.close(timeout=2.0)


def _bad_image(rgb: np.ndarray, kind: str, header: Any) -> Any:
    from depth_node.messages import image_msg
    msg = image_msg(rgb, 'rgb8', header)
    if kind == 'unknown encoding':
        msg.encoding = 'nv12'
    elif kind == 'short data':
        msg.data = bytes(msg.data)[:-100]
    elif kind == 'zero width':
        msg.width, msg.step, msg.data = 0, 0, b''
    else:  # step too small
        msg.step = msg.width * 3 - 3
        msg.data = bytes(msg.data)[:msg.step * msg.height]
    return msg


def run_phase(name: str, params: list[str], duration: float, rate: float, frame: Any,
              output: str, warmup_s: float, bad_inputs: bool, lidar: Optional[np.ndarray],
              skip_outputs: int, drain_s: float, tmp: Path) -> dict[str, Any]:
    """Start the node with ``params``, drive it for ``duration`` s at ``rate`` Hz, stop it."""
    from sensor_msgs.msg import PointField
    from depth_node.messages import camera_info_msg, image_msg, make_header, xyz_cloud_msg

    namespace = f'/soak_{name}'
    log_path = tmp / f'{name}_node.log'
    log = open(log_path, 'w')
    args = _entry_point() + ['--ros-args'] + [a for p in params for a in ('-p', p)] + [
        '-r', f'__ns:={namespace}']
    t_start = time.perf_counter()
    proc = subprocess.Popen(args, env=dict(os.environ, PYTHONUNBUFFERED='1'), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    driver = Driver(namespace, output)
    result: dict[str, Any] = {'phase': name, 'params': params, 'rate_hz': rate,
                              'duration_s': duration, 'node_log': str(log_path)}
    try:
        if not driver.wait_for_node(proc, 180.0):
            raise RuntimeError(f'{name}: the node never subscribed image; see {log_path}')
        result['startup_s'] = time.perf_counter() - t_start
        intr = frame.intrinsics()
        rss: list[tuple[float, int]] = []
        counts = {'images': 0, 'good_images': 0, 'bad_images': 0, 'bad_camera_info': 0,
                  'scans': 0, 'bad_scans': 0}
        period = 1.0 / rate
        t0 = time.perf_counter()
        next_tick, next_rss, i = t0, t0, 0
        while True:
            now = time.perf_counter()
            if now - t0 >= duration:
                break
            if now >= next_rss:
                value = proc_kib('VmRSS', proc.pid)
                if value is None:
                    raise RuntimeError(f'{name}: the node exited; see {log_path}')
                rss.append((now - t0, value))
                next_rss += 1.0
            if now < next_tick:
                time.sleep(min(next_tick - now, 0.005))
                continue
            next_tick += period
            if next_tick < now - 1.0:  # fell far behind (machine busy): do not burst
                next_tick = now + period
            sim = 1000.0 + i * period
            sec = int(sim)
            header = make_header('cam_optical', sec, int(round((sim - sec) * 1e9)))
            if bad_inputs and i % 25 == 12:
                bad = camera_info_msg(intr, header)
                bad.k[0] = float('nan')
                driver.pub['camera_info'].publish(bad)
                counts['bad_camera_info'] += 1
            driver.pub['camera_info'].publish(camera_info_msg(intr, header))
            if lidar is not None and i % 3 == 0:
                scan = xyz_cloud_msg(lidar, make_header('lidar', sec, header.stamp.nanosec))
                driver.pub['lidar/points'].publish(scan)
                counts['scans'] += 1
                if bad_inputs and i % 30 == 15:
                    scan.fields = [f for f in scan.fields if f.name != 'z'] + [PointField(
                        name='intensity', offset=8, datatype=PointField.FLOAT32, count=1)]
                    driver.pub['lidar/points'].publish(scan)
                    counts['bad_scans'] += 1
            if bad_inputs and i % 10 == 5:
                kind = BAD_KINDS[(i // 10) % len(BAD_KINDS)]
                driver.pub['image'].publish(_bad_image(frame.image, kind, header))
                counts['bad_images'] += 1
            else:
                driver.publish_frame(image_msg(frame.image, 'rgb8', header))
                counts['good_images'] += 1
            counts['images'] += 1
            i += 1
        elapsed = time.perf_counter() - t0
        # soak: let the last outputs and a diagnostics message arrive; overload: the worker
        # took the waiting frame as soon as it finished the last, so it is mid-forward now
        time.sleep(drain_s)
        t_sig = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        result['shutdown_s'] = time.perf_counter() - t_sig
        result['exit_code'] = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        driver.close()
        log.close()

    with driver._lock:
        latencies = list(driver.latencies)
        diagnostics = list(driver.diagnostics)
    served = len(latencies)
    kept = [lat for _, lat in latencies[skip_outputs:]]
    last = diagnostics[-1] if diagnostics else {}

    def counter(key: str) -> int:
        return int(last.get(key, 0))

    forward = []
    seen = set()
    for d in diagnostics:
        marker = d.get('frames_processed')
        if marker not in seen and 'time_ms.forward' in d:
            seen.add(marker)
            forward.append(float(d['time_ms.forward']) / 1e3)
            if 'time_ms.total' in d:
                result.setdefault('_total', []).append(float(d['time_ms.total']) / 1e3)
    total = result.pop('_total', [])
    forward = forward[skip_outputs:] or forward
    total = total[skip_outputs:] or total
    after = [v for t, v in rss if t >= warmup_s]
    first = [v for t, v in rss if warmup_s <= t < warmup_s + 10.0] or after[:5]
    tail = after[-max(3, len(after) // 10):]
    rss_start = float(np.median(first)) if first else float('nan')
    # slope through 5-s medians: a forward pass's activations come and go within a window
    windows: dict[int, list[int]] = {}
    for t, v in rss:
        if t >= warmup_s:
            windows.setdefault(int((t - warmup_s) // 5), []).append(v)
    centres = sorted(windows)
    slope = float(np.polyfit([5 * k + 2.5 for k in centres],
                             [np.median(windows[k]) for k in centres], 1)[0]) * 60 / 1024 \
        if len(centres) >= 24 else float('nan')  # under 2 minutes it is noise
    rss_end = float(np.median(tail)) if tail else float('nan')
    log_text = log_path.read_text(errors='replace')
    result.update({
        'elapsed_s': elapsed,
        'published': counts,
        'served': served,
        'good_images_not_served': counts['good_images'] - served,
        'node_counters': {k: int(v) for k, v in last.items()
                          if not k.startswith(('_', 'time_ms.')) and v.lstrip('-').isdigit()},
        'diagnostics_levels': sorted({d['_level'] for d in diagnostics}),
        'latency_s': _stats(kept),
        'forward_s': _stats(forward),
        'pipeline_total_s': _stats(total),
        'latency_over_forward': _stats([lat / float(np.median(forward)) for lat in kept])
        if forward else {'n': 0},
        'rss_kib': {'series': rss, 'warmup_s': warmup_s, 'after_warmup': rss_start,
                    'end': rss_end, 'growth_pct': 100.0 * (rss_end - rss_start) / rss_start
                    if first and tail else float('nan'), 'max': max(v for _, v in rss),
                    'slope_mib_per_min': slope},
        'traceback_in_log': 'Traceback' in log_text,
        'frames_dropped': counter('frames_dropped'),
    })
    return result


def _print_table(results: list[dict[str, Any]]) -> None:
    head = (f'{"phase":<9} {"pub":>6} {"bad":>5} {"recv":>6} {"proc":>6} {"drop":>6} '
            f'{"served":>6} {"lat p50":>8} {"p95":>7} {"max":>7} {"fwd p50":>8} '
            f'{"lat/fwd p95":>11} {"RSS MiB":>13} {"growth":>7} {"MiB/min":>7} {"stop":>6}')
    print(head)
    print('-' * len(head))
    nan = float('nan')
    for r in results:
        c = r['node_counters']
        lat, fwd, ratio, mem = r['latency_s'], r['forward_s'], r['latency_over_forward'], \
            r['rss_kib']
        ms = [v.get(k, nan) * 1e3
              for v, k in ((lat, 'p50'), (lat, 'p95'), (lat, 'max'), (fwd, 'p50'))]
        print(f'{r["phase"]:<9} {r["published"]["images"]:>6} '
              f'{r["published"]["bad_images"]:>5} '
              f'{c.get("frames_received", 0):>6} {c.get("frames_processed", 0):>6} '
              f'{c.get("frames_dropped", 0):>6} {r["served"]:>6} '
              f'{ms[0]:>6.0f}ms {ms[1]:>5.0f}ms {ms[2]:>5.0f}ms {ms[3]:>6.0f}ms '
              f'{ratio.get("p95", nan):>11.2f} '
              f'{mem["after_warmup"] / 1024:>6.0f}>{mem["end"] / 1024:<6.0f} '
              f'{mem["growth_pct"]:>6.2f}% {mem["slope_mib_per_min"]:>7.2f} '
              f'{r.get("shutdown_s", nan):>5.2f}s')
    print()
    for r in results:
        c = r['node_counters']
        bad = {k: v for k, v in c.items() if k.startswith('bad_') or k in (
            'forward_failures', 'frame_errors', 'lidar_unpaired')}
        print(f'{r["phase"]}: node counters {bad}; good images not served '
              f'{r["good_images_not_served"]}; diagnostics levels {r["diagnostics_levels"]}; '
              f'exit code {r.get("exit_code")}; traceback in log: {r["traceback_in_log"]}')


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--soak-s', type=float, default=90.0, help='soak duration (s)')
    ap.add_argument('--overload-s', type=float, default=60.0, help='overload duration (s)')
    ap.add_argument('--rate', type=float, default=30.0, help='camera rate (Hz)')
    ap.add_argument('--warmup-s', type=float, default=15.0,
                    help='soak: seconds before the memory baseline')
    ap.add_argument('--overload-warmup-s', type=float, default=30.0,
                    help='overload: seconds before the memory baseline (about 12 frames)')
    ap.add_argument('--skip-soak', action='store_true')
    ap.add_argument('--skip-overload', action='store_true')
    ap.add_argument('--data', type=Path, default=DATA)
    ap.add_argument('--out', type=Path, default=REPO / 'bench' / 'results' / 'soak.json')
    args = ap.parse_args(argv)
    tum = args.data / 'tum_rgbd'
    if not tum.is_dir():
        print(f'real data not found at {tum} (use --data)', file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix='depth_node_soak_'))
    # a private ROS graph: ROS_DOMAIN_ID as set, else one from the pid
    isolate_ros(int(os.environ.get('ROS_DOMAIN_ID', 150 + os.getpid() % 80)), profile=True,
                tmp=str(tmp))
    sys.path.insert(0, str(REPO / 'test'))
    from tiny_models import make_tiny_depth_anything
    from depth_node.demo import simulated_lidar
    from depth_node.sample_data import load_frame

    frame = load_frame(sorted(tum.iterdir())[0])
    points_cam = simulated_lidar(frame.depth_gt, frame.K)
    T_inv = np.linalg.inv(T_CAMERA_LIDAR)
    scan = (points_cam @ T_inv[:3, :3].T + T_inv[:3, 3]).astype(np.float32)
    results = []
    t_all = time.perf_counter()
    if not args.skip_soak:
        model = make_tiny_depth_anything(tmp, metric=True, size={'height': 140, 'width': 140})
        params = [f'model.name:={model}', 'model.device:=cpu', 'lidar.enabled:=true',
                  'lidar.T_camera_lidar:=[' + ','.join(repr(float(v)) for v in
                                                       T_CAMERA_LIDAR.ravel()) + ']',
                  'cloud.max_depth:=10.0', 'diagnostics.period:=1.0']
        results.append(run_phase('soak', params, args.soak_s, args.rate, frame, 'depth/image',
                                 args.warmup_s, True, scan, 0, 3.0, tmp))
    if not args.skip_overload:
        params = ['model.random_init:=depth-anything-v2-small', 'model.device:=cpu',
                  'model.warmup:=false', 'diagnostics.period:=1.0']
        results.append(run_phase('overload', params, args.overload_s, args.rate, frame,
                                 'depth/relative', args.overload_warmup_s, False, None, 2, 0.3,
                                 tmp))
    _print_table(results)
    report = {'benchmark': 'soak and overload', 'elapsed_s': time.perf_counter() - t_all,
              'machine': machine_info(), 'frame': str(frame.folder)
              if hasattr(frame, 'folder') else 'tum_rgbd[0]', 'phases': results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f'\nwrote {args.out} ({report["elapsed_s"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
