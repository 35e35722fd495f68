"""Batching: the throughput gain of running several cameras' frames through one forward pass.

Two measurements, Depth Anything V2 Small architecture (RANDOM weights: timing only), one real
640x480 frame per camera:

- **estimator**: for N cameras, N frames one after another (``predict`` N times) against the
  same N frames in one ``predict_batch``; frames per second of each and their ratio. Rounds of
  the two are interleaved, so load drift hits both sides alike.
- **node**: a ``DepthNode`` in this process with ``input.cameras`` = N names, fed over DDS.
  *One at a time*: a frame to one camera, wait for its ``depth/relative``, then the next
  camera. *Together*: one frame to every camera at once, wait for all N outputs (the node
  batches them). Frames per second of each, their ratio, the frame rate each camera gets
  together (``1 / together_s``: issue 25's per-camera figure for 1, 2 and 4 cameras), and the
  node's own mean batch size in the *together* phases (``forward_frames / forward_passes``).

Usage::

    python bench/bench_batching.py                 # ~2 min on 2 CPU cores
    python bench/bench_batching.py --device cuda --cameras 2 4 8 --rounds 50
    python bench/bench_batching.py --device cuda --node-cameras 1 2 4 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

from bench_pipeline import ARCHS, FRAME_640, Ros, _fast_precision
from common import DATA, loadavg, machine_info, median, prepare_run, REPO


def _frames(n: int) -> list[np.ndarray]:
    """``n`` different real 640x480 RGB frames (TUM RGB-D), repeated when there are fewer."""
    from depth_node.sample_data import load_frame

    folder = (DATA / FRAME_640).parent
    images = [load_frame(p).image for p in sorted(folder.iterdir())[:n]]
    return [images[i % len(images)] for i in range(n)]


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        import torch
        torch.cuda.synchronize()


def measure_estimator(args: argparse.Namespace) -> list[dict[str, Any]]:
    from depth_node.estimator import DepthEstimator

    est = DepthEstimator(random_init=ARCHS[args.arch], device=args.device,
                         precision=args.precision)
    frames = _frames(max(args.cameras))
    for n in args.cameras:  # warm up every shape first (batch size is part of the shape)
        est.predict(frames[0])
        est.predict_batch(frames[:n])
    times: dict[int, dict[str, list[float]]] = {n: {'seq': [], 'batch': []}
                                                for n in args.cameras}
    for _ in range(args.rounds):
        for n in args.cameras:
            _sync(args.device)
            t0 = time.perf_counter()
            for image in frames[:n]:
                est.predict(image)
            _sync(args.device)
            times[n]['seq'].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            est.predict_batch(frames[:n])
            _sync(args.device)
            times[n]['batch'].append(time.perf_counter() - t0)
    rows = []
    for n in args.cameras:
        seq, batch = median(times[n]['seq']), median(times[n]['batch'])
        rows.append({'level': 'estimator', 'cameras': n, 'precision': args.precision,
                     'one_at_a_time_fps': round(n / seq, 2), 'together_fps': round(n / batch, 2),
                     'per_camera_fps': round(1 / batch, 2),
                     'one_at_a_time_ms': round(seq * 1e3, 1),
                     'together_ms': round(batch * 1e3, 1), 'gain': round(seq / batch, 3)})
        print(f'estimator, {n} cameras: {rows[-1]}', flush=True)
    return rows


class _Outputs:
    """Records the stamps of every camera's depth/relative."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.seen: set[tuple[str, int]] = set()

    def callback(self, name: str) -> Any:
        def record(msg: Any) -> None:
            with self.cv:
                self.seen.add((name, msg.header.stamp.sec))
                self.cv.notify_all()
        return record

    def wait(self, wanted: set[tuple[str, int]], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cv:
            while not wanted <= self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(left)
        return True


def measure_node(args: argparse.Namespace, ros: Ros, n: int) -> dict[str, Any]:
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from depth_node.messages import image_msg, make_header
    from depth_node.node import DepthNode

    names = [f'cam{i}' for i in range(n)]
    params = {'model.random_init': ARCHS[args.arch], 'model.device': args.device,
              'model.precision': args.precision, 'input.cameras': names,
              'input.batch_wait': 0.05, 'model.warmup_size': [640, 480]}
    node = DepthNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    ros.executor.add_node(node)
    outputs = _Outputs()
    qos = ros.reliable(depth=5)
    pubs = {name: ros.node.create_publisher(Image, f'{name}/image', qos) for name in names}
    subs = [ros.node.create_subscription(Image, f'{name}/depth/relative',
                                         outputs.callback(name), qos) for name in names]
    deadline = time.monotonic() + 30
    while not all(p.get_subscription_count() > 0 for p in pubs.values()):
        if time.monotonic() > deadline:
            raise RuntimeError('the node never subscribed its camera topics')
        time.sleep(0.05)
    messages = {name: image_msg(image, 'rgb8', make_header(f'{name}_optical', 0))
                for name, image in zip(names, _frames(n))}
    timeout = 120.0
    seq, together = [], []
    passes = {'forward_passes': 0, 'forward_frames': 0}  # of the together phases
    sec = 0
    try:
        for round_ in range(args.warmup_rounds + args.rounds):
            t0 = time.perf_counter()
            for name in names:
                sec += 1
                messages[name].header.stamp.sec = sec
                pubs[name].publish(messages[name])
                if not outputs.wait({(name, sec)}, timeout):
                    raise RuntimeError(f'{name} frame {sec} was not served')
            t_seq = time.perf_counter() - t0
            sec += 1
            before = node.counters
            t0 = time.perf_counter()
            for name in names:
                messages[name].header.stamp.sec = sec
                pubs[name].publish(messages[name])
            if not outputs.wait({(name, sec) for name in names}, timeout):
                raise RuntimeError(f'frames {sec} were not all served')
            t_together = time.perf_counter() - t0
            after = node.counters
            if round_ >= args.warmup_rounds:
                seq.append(t_seq)
                together.append(t_together)
                for key in passes:
                    passes[key] += after.get(key, 0) - before.get(key, 0)
    finally:
        for sub in subs:
            ros.node.destroy_subscription(sub)
        for pub in pubs.values():
            ros.node.destroy_publisher(pub)
        ros.executor.remove_node(node)
        node.destroy_node()
    s, t = median(seq), median(together)
    row = {'level': 'node', 'cameras': n, 'precision': args.precision,
           'one_at_a_time_fps': round(n / s, 2), 'together_fps': round(n / t, 2),
           'per_camera_fps': round(1 / t, 2),
           'one_at_a_time_ms': round(s * 1e3, 1), 'together_ms': round(t * 1e3, 1),
           'gain': round(s / t, 3),
           'mean_batch': round(passes['forward_frames'] / max(1, passes['forward_passes']), 2)}
    print(f'node, {n} cameras: {row}', flush=True)
    return row


def report(rows: list[dict[str, Any]]) -> str:
    lines = ['| level | cameras | precision | one at a time (frames/s) | together (frames/s) | '
             'together, per camera (frames/s) | gain | node mean batch |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['level']} | {r['cameras']} | {r['precision']} | "
                     f"{r['one_at_a_time_fps']} | {r['together_fps']} | "
                     f"{r.get('per_camera_fps', '')} | {r['gain']:.2f}x | "
                     f"{r.get('mean_batch', '')} |")
    return '\n'.join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--precision', default=None, help='default: bf16 on CPUs with it, fp16 on '
                    'CUDA')
    ap.add_argument('--arch', choices=sorted(ARCHS), default='small')
    ap.add_argument('--cameras', type=int, nargs='+', default=[2, 4])
    ap.add_argument('--node-cameras', type=int, nargs='*', default=None,
                    help='camera counts for the node run (default: the smallest of --cameras)')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--warmup-rounds', type=int, default=1)
    ap.add_argument('--domain', type=int, default=1 + os.getpid() % 99)
    ap.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'batching.json'))
    args = ap.parse_args(argv)
    device = prepare_run(args.domain, args.device)
    if device is None:
        return 2
    args.device = device
    args.precision = args.precision or _fast_precision(args.device)
    if args.node_cameras is None:
        args.node_cameras = [min(args.cameras)]
    started = time.perf_counter()
    result: dict[str, Any] = {'machine': machine_info(), 'args': vars(args).copy(),
                              'load_start': loadavg()}
    print(f"machine: {result['machine']}; load {result['load_start']}", flush=True)
    rows = measure_estimator(args)
    ros = Ros()
    try:
        for n in args.node_cameras:
            rows.append(measure_node(args, ros, n))
    finally:
        ros.close()
    result['rows'] = rows
    result['load_end'] = loadavg()
    result['elapsed_s'] = round(time.perf_counter() - started, 1)
    print('\n' + report(rows))
    print(f"\nload {result['load_start']} -> {result['load_end']}, {result['elapsed_s']} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
