"""depth_node-bag against the bare forward pass: is the tool the bottleneck?

Builds a bag of N real frames (KITTI, cycled, raw rgb8 with camera_info and the LiDAR scan) in
a temporary folder, runs ``depth_node-bag`` on it in this process (with LiDAR alignment and
``depth/points``), then times the bare forward pass (``estimator.predict``) on the same decoded
frames with the same estimator settings. Prints the CPU (model, AVX-512 / AMX flags, torch
threads), both rates and their ratio; writes ``bench/results/bag.json``.

    python bench/bench_bag.py [--frames 12] [--arch depth-anything-v2-small]
        [--device cpu] [--engine torch] [--precision fp32] [--input-size 308]
        [--storage mcap]

The bare forward is timed before and after the tool's run (the machine's load may change in
between: on a shared machine read the two against each other first).

Random weights (``model.random_init``): the timing of the real architecture, no download.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import tempfile
import time
from typing import Any, Optional

from common import DATA, REPO, cpu_line, loadavg, machine_info, median

sys.path.insert(0, str(REPO / 'test'))  # bag_data: the bag writer the tests use


def build_bag(folder: Path, n: int, storage: str) -> tuple[Path, list, list[float]]:
    """A bag of ``n`` KITTI frames (cycled); the frames and the 16 values of the first
    frame's LiDAR-to-camera transform (each scan is re-expressed for it)."""
    import numpy as np

    from bag_data import BagFrame, write_bag
    from depth_node.sample_data import load_frame

    kitti = [load_frame(p) for p in sorted((DATA / 'kitti_object').iterdir())]
    T0 = kitti[0].T_camera_lidar
    frames = []
    for f in kitti:
        M = np.linalg.inv(T0) @ f.T_camera_lidar
        scan = (f.lidar[:, :3].astype(np.float64) @ M[:3, :3].T + M[:3, 3]).astype(np.float32)
        frames.append(BagFrame(f.image, f.intrinsics(), scan))
    chosen = [frames[i % len(frames)] for i in range(n)]
    return write_bag(folder / 'in', chosen, storage), chosen, [float(x) for x in T0.ravel()]


def load(params: dict[str, Any]) -> Any:
    """The estimator the tool loads for ``params`` (``load_estimator``, warmed up)."""
    from depth_node import config as cfg
    from depth_node.model import load_estimator

    return load_estimator(cfg.validate_values(params)).estimator


def bare_forward(est: Any, frames: list) -> float:
    """Median seconds of ``estimator.predict`` per frame over ``frames``."""
    for f in frames[:3]:
        est.predict(f.image)  # every input size warmed, as in the tool's first frames
    times = []
    for f in frames:
        t0 = time.perf_counter()
        est.predict(f.image)
        times.append(time.perf_counter() - t0)
    return median(times)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--frames', type=int, default=12)
    ap.add_argument('--arch', default='depth-anything-v2-small')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--engine', default='torch')
    ap.add_argument('--precision', default='fp32')
    ap.add_argument('--input-size', type=int, default=308,
                    help='model.input_size (0: the model\'s own, 518)')
    ap.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    ap.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'bag.json'))
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f'real data not found at {DATA} (set DEPTH_NODE_REAL_DATA)', file=sys.stderr)
        return 0
    from depth_node import bag

    info = machine_info()
    print(f"{cpu_line(info)}; {info['cpus']} cores, torch {info['torch']} with "
          f"{info['torch_threads']} threads; load {loadavg()}")
    params = {'model.random_init': args.arch, 'model.device': args.device,
              'model.engine': args.engine, 'model.precision': args.precision,
              'model.input_size': args.input_size}
    with tempfile.TemporaryDirectory(prefix='bench_bag_') as tmp:
        t0 = time.perf_counter()
        src, frames, T = build_bag(Path(tmp), args.frames, args.storage)
        print(f'bag of {args.frames} KITTI frames ({args.storage}) written in '
              f'{time.perf_counter() - t0:.1f} s')
        est = load(params)
        before_s = bare_forward(est, frames)
        overrides = [f'{k}:={v}' for k, v in params.items()]
        overrides += ['lidar.enabled:=true', 'lidar.T_camera_lidar:=' + json.dumps(T)]
        options = bag.parse_args([str(src), str(Path(tmp) / 'out'), '--storage', args.storage,
                                  '--points', *[a for o in overrides for a in ('-p', o)]])
        options.progress = False
        result: dict[str, Any] = {}
        code = bag.run(options, result)
        if code != 0:
            print(f'depth_node-bag exited with {code}', file=sys.stderr)
            return 0
        after_s = bare_forward(est, frames)
    forward_s = (before_s + after_s) / 2
    tool_fps, bare_fps = result['frames_per_s'], 1.0 / forward_s
    print(f"\n{'':24} {'frames/s':>9} {'ms/frame':>9}")
    print(f"{'depth_node-bag':24} {tool_fps:9.2f} {1e3 / tool_fps:9.1f}")
    if result.get('model_s'):
        print(f"{'  its model time':24} {1 / result['model_s']:9.2f} "
              f"{1e3 * result['model_s']:9.1f}")
    for what, t in (('bare forward, before', before_s), ('bare forward, after', after_s)):
        print(f"{what:24} {1 / t:9.2f} {1e3 * t:9.1f}")
    print(f'tool / bare forward (their mean): {tool_fps / bare_fps:.2f}')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'machine': info, 'load': loadavg(), 'args': vars(args),
                               'tool': result,
                               'bare_forward_s': [before_s, after_s],
                               'ratio': tool_fps / bare_fps}, indent=2))
    print(f'written {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
