"""GPU checks that measure: latency per mode, cameras dropping frames, precision per family.

Self-contained for a bare GPU machine: Depth Anything V2 Small / metric architectures with
RANDOM weights (timing and numerics only), the frames in ``sample_data/``; no ROS, no network,
no shared data. Measures, on one GPU:

- **latency**: ``predict`` at 640x480 (wall time of the call, which synchronises once) for
  eager, CUDA graphs and (``--compile``) torch.compile + reduce-overhead, in fp16, bf16 (where
  native) and fp32; p50 / p99, and the stage times from CUDA events;
- **cameras**: three cameras through ``predict_batch`` (batches warmed at 1 and 3) where one
  camera drops every 5th frame and two drop every 23rd: the batch is padded, so no new shape is
  captured mid-stream; the longest call against the median (the stall), the graphs captured and
  ``torch.cuda.memory_reserved()`` at the start, the end and its maximum;
- **precision**: fp16 and bf16 against fp32 on the same frame (mean relative difference,
  non-finite frames), relative and metric; and the preprocessing stage time from 640x480 to
  1920x1200.

Estimate to compare with (not a measurement): V2-Small at 640x480 (686x518 input) is about
168 GFLOP; eager fp16 on an H100 6-9 ms a frame (host-bound), with CUDA graphs 2-3 ms.

    python bench/bench_gpu.py --quick --out bench/results/gpu.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import sys
import time
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLES = REPO / 'sample_data'
SMALL, SMALL_METRIC = 'depth-anything-v2-small', 'depth-anything-v2-small-metric'


def _frames() -> dict[str, np.ndarray]:
    from PIL import Image

    from depth_node.sample_data import load_frame

    tum = load_frame(SAMPLES / 'tum_rgbd_1341847980.722988').image
    wide = np.ascontiguousarray(load_frame(SAMPLES / 'pjlab_distorted_autov2').image)
    hd = np.asarray(Image.fromarray(wide).resize((1280, 720), Image.BILINEAR))
    return {'640x480': tum, '1280x720': hd, '1920x1200': wide}


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1e3, 3) if values else math.nan


def _native_bf16() -> bool:
    import torch
    return torch.cuda.get_device_properties(0).major >= 8


def latency(args: argparse.Namespace, image: np.ndarray) -> list[dict[str, Any]]:
    from depth_node.estimator import DepthEstimator

    precisions = ['fp16', 'fp32'] + (['bf16'] if _native_bf16() else [])
    modes = [('eager', {'cuda_graphs': False}), ('graphs', {'cuda_graphs': True})]
    if args.compile:
        modes.append(('compile', {'cuda_graphs': True, 'compile': True}))
    rows = []
    for mode, options in modes:
        for precision in precisions:
            start = time.perf_counter()
            est = DepthEstimator(random_init=SMALL, device='cuda', precision=precision,
                                 **options)
            est.warmup(480, 640, iterations=3)
            startup = time.perf_counter() - start
            walls, stages = [], {}
            for _ in range(args.iterations):
                t0 = time.perf_counter()
                prediction = est.predict(image)
                walls.append(time.perf_counter() - t0)
                for stage, seconds in prediction.timings.items():
                    stages.setdefault(stage, []).append(seconds)
            row = {'mode': mode, 'precision': precision, 'p50_ms': _pct(walls, 50),
                   'p99_ms': _pct(walls, 99), 'startup_s': round(startup, 2),
                   'graphs': len(est.engine.graphs.graphs),
                   'eager_shapes': len(est.engine.graphs.eager)}
            row.update({f'{stage}_p50_ms': _pct(v, 50) for stage, v in stages.items()})
            rows.append(row)
            print(f"latency {mode:8s} {precision}: p50 {row['p50_ms']:.2f} ms, "
                  f"p99 {row['p99_ms']:.2f} ms, forward p50 {row.get('forward_p50_ms')} ms, "
                  f'startup {startup:.1f} s', flush=True)
            est.close()
    return rows


def cameras(args: argparse.Namespace, image: np.ndarray) -> list[dict[str, Any]]:
    import torch

    from depth_node.estimator import DepthEstimator

    rows = []
    for graphs in (False, True):
        est = DepthEstimator(random_init=SMALL, device='cuda', precision='fp16',
                             cuda_graphs=graphs)
        est.warmup(480, 640, iterations=2, batches=(1, 3))
        images = [image, image[:, ::-1].copy(), np.ascontiguousarray(image[::-1])]
        reserved = [torch.cuda.memory_reserved()]
        walls, sizes = [], []
        for i in range(args.frames):
            present = [0] + ([1] if i % 5 else []) + ([2] if i % 23 else [])
            t0 = time.perf_counter()
            est.predict_batch([images[c] for c in present])
            walls.append(time.perf_counter() - t0)
            sizes.append(len(present))
            if i % 100 == 0:
                reserved.append(torch.cuda.memory_reserved())
        reserved.append(torch.cuda.memory_reserved())
        median = float(np.median(walls))
        row = {'graphs': graphs, 'frames': args.frames, 'p50_ms': _pct(walls, 50),
               'p99_ms': _pct(walls, 99), 'max_ms': round(max(walls) * 1e3, 3),
               'stall_ms': round((max(walls) - median) * 1e3, 3),
               'batch_sizes': {n: sizes.count(n) for n in sorted(set(sizes))},
               'graphs_captured': len(est.engine.graphs.graphs),
               'eager_shapes': len(est.engine.graphs.eager),
               'reserved_mib_start': round(reserved[0] / 2**20, 1),
               'reserved_mib_end': round(reserved[-1] / 2**20, 1),
               'reserved_mib_max': round(max(reserved) / 2**20, 1)}
        rows.append(row)
        print(f"cameras graphs={graphs}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
              f"stall {row['stall_ms']} ms, graphs {row['graphs_captured']}, reserved "
              f"{row['reserved_mib_start']} -> {row['reserved_mib_end']} MiB "
              f"(max {row['reserved_mib_max']})", flush=True)
        est.close()
    return rows


def precision(args: argparse.Namespace, frames: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    from depth_node.estimator import DepthEstimator

    rows = []
    image = frames['640x480']
    for arch in (SMALL, SMALL_METRIC):
        reference = DepthEstimator(random_init=arch, device='cuda', precision='fp32')
        want = reference.predict(image).depth
        auto = DepthEstimator(random_init=arch, device='cuda')
        for name in ['fp16'] + (['bf16'] if _native_bf16() else []):
            est = DepthEstimator(random_init=arch, device='cuda', precision=name)
            prediction = est.predict(image)
            error = float(np.nanmean(np.abs(prediction.depth - want)) /
                          max(float(np.mean(np.abs(want))), 1e-12))
            rows.append({'arch': arch, 'precision': name, 'mean_rel_error': error,
                         'non_finite_frames': prediction.non_finite,
                         'auto_precision': str(auto.dtype)})
            print(f'precision {arch} {name} vs fp32: mean relative {error:.2e}, non-finite '
                  f'frames {prediction.non_finite} (auto = {auto.dtype})', flush=True)
            est.close()
        for size, frame in frames.items():
            height, width = frame.shape[:2]
            reference.warmup(height, width, iterations=1)
            pre = [reference.predict(frame).timings['preprocess'] for _ in range(20)]
            rows.append({'arch': arch, 'size': size, 'preprocess_p50_ms': _pct(pre, 50)})
            print(f'preprocess {size}: p50 {_pct(pre, 50)} ms', flush=True)
        reference.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer iterations and frames')
    ap.add_argument('--iterations', type=int, default=None, help='latency calls per config')
    ap.add_argument('--frames', type=int, default=None, help='camera frames (10k: soak)')
    ap.add_argument('--compile', action='store_true', help='also torch.compile (minutes)')
    ap.add_argument('--only', nargs='+', choices=['latency', 'cameras', 'precision'],
                    default=['latency', 'cameras', 'precision'])
    ap.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'gpu.json'))
    args = ap.parse_args(argv)
    args.iterations = args.iterations or (100 if args.quick else 500)
    args.frames = args.frames or (1000 if args.quick else 10000)

    import torch

    if not torch.cuda.is_available():
        print(f'CUDA is not available (torch {torch.__version__}, built for CUDA '
              f'{torch.version.cuda}): nothing measured', flush=True)
        return 0
    from depth_node.estimator.loading import RANDOM_WEIGHTS_WARNING

    print(f'{torch.cuda.get_device_name(0)}, torch {torch.__version__} CUDA {torch.version.cuda}'
          f'; {RANDOM_WEIGHTS_WARNING}', flush=True)
    frames = _frames()
    result: dict[str, Any] = {'device': torch.cuda.get_device_name(0),
                              'torch': torch.__version__, 'cuda': torch.version.cuda}
    steps = {'latency': lambda: latency(args, frames['640x480']),
             'cameras': lambda: cameras(args, frames['640x480']),
             'precision': lambda: precision(args, frames)}
    for name in args.only:
        try:
            result[name] = steps[name]()
        except Exception as exc:  # noqa: BLE001 - report and go on with the next measurement
            print(f'{name} failed: {type(exc).__name__}: {exc}', flush=True)
            result[name] = {'error': f'{type(exc).__name__}: {exc}'}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
