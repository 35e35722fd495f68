"""``depth_node-export``: fill the engine cache ahead of time, so a robot starts fast.

Exports the model to ONNX at the network input size of each camera size and compiles it for each
engine, into ``model.cache_dir`` (the same cache, with the same keys, the node reads)::

    depth_node-export --model ~/models/da2s --engines openvino onnxruntime \\
        --sizes 640x480 1280x720 --precision auto
    depth_node-export --model ~/models/da2s --engines tensorrt --device cuda --precision fp16

Each engine runs the node's startup self-check (``model.verify``) on each size it compiles:
its output on a seeded input against torch fp32 (ONNX Runtime on the CPU for a plain ONNX
model); ``--no-verify`` skips it.

ROS-free. Exit code 0 when every engine is ready for every size (and passed its self-check), 2
on a configuration error (unknown model, engine not installed, an unusable cache folder), 1 when
an export or compile failed or an engine failed its self-check.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from typing import Optional

from depth_node.estimator import DEFAULT_MODEL, ENGINES, RANDOM_INIT_CHOICES, EstimatorError


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r'(\d+)x(\d+)', text.strip())
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise argparse.ArgumentTypeError(f"size '{text}' must be WIDTHxHEIGHT, e.g. 640x480")
    return int(match.group(1)), int(match.group(2))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog='depth_node-export', description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', default=DEFAULT_MODEL, help='model.name (hub id, directory, .onnx)')
    ap.add_argument('--random-init', choices=sorted(RANDOM_INIT_CHOICES), default=None,
                    help='TEST ONLY: a random-weight architecture instead of --model')
    ap.add_argument('--engines', nargs='+', choices=[e for e in ENGINES if e != 'torch'],
                    default=['openvino'])
    ap.add_argument('--sizes', nargs='+', type=_size, default=[(640, 480)],
                    help='camera image sizes WIDTHxHEIGHT (default 640x480)')
    ap.add_argument('--batch', type=int, default=1, help='frames per forward (cameras batched)')
    ap.add_argument('--device', default='auto', help="model.device (default 'auto')")
    ap.add_argument('--precision', default='auto', help="model.precision (default 'auto')")
    ap.add_argument('--input-size', type=int, default=0, help='model.input_size (0: model\'s)')
    ap.add_argument('--cache-dir', default='', help='model.cache_dir (default: the user cache)')
    ap.add_argument('--openvino-device', default='CPU')
    ap.add_argument('--providers', nargs='*', default=[],
                    help='ONNX Runtime execution providers in order')
    ap.add_argument('--no-verify', dest='verify', action='store_false',
                    help='skip the self-check against the reference (model.verify false)')
    ap.add_argument('--verify-tolerance', type=float, default=0.0,
                    help='model.verify_tolerance (0: per precision)')
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    from depth_node.estimator import DepthEstimator

    failed = False
    for engine in args.engines:
        t0 = time.perf_counter()
        try:
            est = DepthEstimator(args.model, device=args.device, precision=args.precision,
                                 random_init=args.random_init, engine=engine,
                                 input_size=args.input_size, cache_dir=args.cache_dir,
                                 providers=args.providers,
                                 openvino_device=args.openvino_device, verify=args.verify,
                                 verify_tolerance=args.verify_tolerance)
        except EstimatorError as exc:
            print(f'depth_node-export: {engine}: {exc}', file=sys.stderr)
            return 2
        for width, height in args.sizes:
            try:
                est.prepare(height, width, batch=args.batch)
            except EstimatorError as exc:
                print(f'depth_node-export: {engine} {width}x{height}: {exc}', file=sys.stderr)
                failed = True
        print(f'{engine}: {"; ".join(est.startup_notes)} ({time.perf_counter() - t0:.1f} s); '
              f'cache {est.cache_dir}')
        est.close()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
