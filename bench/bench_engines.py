"""Inference engines side by side: torch, ONNX Runtime, OpenVINO (and TensorRT on CUDA).

Times :meth:`depth_node.estimator.DepthEstimator.predict` (the code the node runs) for every
available engine and precision, Depth Anything V2 Small and Base (random weights), frame sizes
640x480 and 1280x720 and network input short sides 518 / 406 / 308. Engines are interleaved
frame by frame (round robin over the configurations of one architecture and size), so a busy
neighbour on a shared machine slows them all alike. Prints the CPU model and flags, medians,
ratios against torch at the same precision and the relative difference of each output against
torch fp32 on the same frame; and startup time (construct + warm-up) with a cold and a warm
engine cache.

    python bench/bench_engines.py                 # everything (about 15 min on 2 CPU cores)
    python bench/bench_engines.py --quick         # Small, 640x480, 518 and 308 (about 4 min)

Results go to ``bench/results/engines.json``; the node end to end per engine is
``bench/bench_pipeline.py --no-configs --node-engines torch openvino``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import ARCHS, SIZES, Inputs  # noqa: E402
from common import cpu_line, machine_info, median, REPO  # noqa: E402


def _configs(device: str, engines: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    from depth_node.estimator import cpu_has_native_bf16
    from depth_node.estimator.engines import engine_available

    out = []
    for engine in engines:
        if engine != 'torch' and not engine_available(engine):
            print(f'[skip] {engine} is not installed', flush=True)
            continue
        for precision in precisions:
            if precision == 'bf16' and (device != 'cpu' or not cpu_has_native_bf16()):
                continue
            if precision == 'fp16' and device == 'cpu':
                continue
            if engine == 'onnxruntime' and precision == 'bf16':
                continue  # ONNX Runtime's CPU provider has no fast bf16
            if engine == 'tensorrt' and device == 'cpu':
                continue
            out.append((engine, precision))
    return out


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from depth_node.estimator import DepthEstimator

    rows = []
    configs = _configs(args.device, args.engines, args.precisions)
    for arch in args.archs:
        for input_size in args.input_sizes:
            for size in args.sizes:
                inputs = Inputs(size)
                ests = {}
                for engine, precision in configs:
                    t0 = time.perf_counter()
                    est = DepthEstimator(random_init=ARCHS[arch], device=args.device,
                                         precision=precision, engine=engine,
                                         input_size=input_size, cache_dir=args.cache_dir,
                                         threads=args.threads)
                    est.warmup(inputs.height, inputs.width, iterations=1)
                    ests[(engine, precision)] = (est, time.perf_counter() - t0)
                times: dict[tuple, list[float]] = {k: [] for k in ests}
                outputs = {}
                for _ in range(args.iterations):
                    for key, (est, _) in ests.items():   # interleaved
                        prediction = est.predict(inputs.rgb)
                        times[key].append(prediction.timings['forward'])
                        outputs[key] = prediction.depth
                reference = outputs.get(('torch', 'fp32'))
                net = next(iter(ests.values()))[0].input_size(inputs.height, inputs.width)
                for (engine, precision), (est, startup) in ests.items():
                    torch_same = times.get(('torch', precision))
                    forward = median(times[(engine, precision)])
                    row = {'arch': arch, 'size': size, 'input': f'{net[1]}x{net[0]}',
                           'input_size': input_size, 'engine': engine,
                           'precision': precision, 'forward_ms': round(forward * 1e3, 1),
                           'min_ms': round(min(times[(engine, precision)]) * 1e3, 1),
                           'vs_torch_same_precision': (round(median(torch_same) / forward, 2)
                                                       if torch_same else None),
                           'startup_s': round(startup, 2)}
                    if reference is not None:
                        out = outputs[(engine, precision)]
                        row['rel_err_vs_torch_fp32'] = float(
                            np.mean(np.abs(out - reference)) / np.mean(np.abs(reference)))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                for est, _ in ests.values():
                    est.close()
    return rows


def measure_startup(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Construct + warm up at 640x480 with an empty cache, then again with the filled one."""
    from depth_node.estimator import DepthEstimator

    rows = []
    for engine, precision in _configs(args.device, args.engines, args.precisions):
        if engine == 'torch':
            continue
        cache = tempfile.mkdtemp(prefix='depth_node_bench_cache_')
        try:
            for state in ('cold', 'warm'):
                t0 = time.perf_counter()
                est = DepthEstimator(random_init=ARCHS['small'], device=args.device,
                                     precision=precision, engine=engine, cache_dir=cache)
                est.warmup(480, 640, iterations=1)
                row = {'engine': engine, 'precision': precision, 'cache': state,
                       'startup_s': round(time.perf_counter() - t0, 2),
                       'notes': est.startup_notes[1:]}
                est.close()
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return rows


def report(machine: dict, rows: list[dict], startup: list[dict]) -> str:
    lines = [f"{cpu_line(machine)}; {machine.get('cpus')} cores; torch {machine.get('torch')}"]
    lines.append('\n| arch | frame | net input | engine | precision | forward ms (median) | '
                 'vs torch same precision | rel. error vs torch fp32 |')
    lines.append('|---|---|---|---|---|---|---|---|')
    for r in rows:
        err = r.get('rel_err_vs_torch_fp32')
        lines.append(f"| {r['arch']} | {r['size']} | {r['input']} | {r['engine']} | "
                     f"{r['precision']} | {r['forward_ms']} | "
                     f"{r['vs_torch_same_precision'] or '-'} | "
                     f"{'-' if err is None else f'{err:.1e}'} |")
    if startup:
        lines.append('\n| engine | precision | cache | startup s (load + warm-up 640x480) |')
        lines.append('|---|---|---|---|')
        for r in startup:
            lines.append(f"| {r['engine']} | {r['precision']} | {r['cache']} | "
                         f"{r['startup_s']} |")
    return '\n'.join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--archs', nargs='+', choices=sorted(ARCHS), default=None)
    ap.add_argument('--sizes', nargs='+', choices=list(SIZES), default=None)
    ap.add_argument('--input-sizes', nargs='+', type=int, default=None)
    ap.add_argument('--engines', nargs='+', default=['torch', 'onnxruntime', 'openvino',
                                                     'tensorrt'])
    ap.add_argument('--precisions', nargs='+', default=['fp32', 'bf16', 'fp16'])
    ap.add_argument('--iterations', type=int, default=5)
    ap.add_argument('--threads', type=int, default=0)
    ap.add_argument('--no-startup', action='store_true')
    ap.add_argument('--cache-dir', default='', help='engine cache (default: a fresh temp dir)')
    ap.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'engines.json'))
    args = ap.parse_args(argv)
    args.archs = args.archs or (['small'] if args.quick else ['small', 'base'])
    args.sizes = args.sizes or (['640x480'] if args.quick else list(SIZES))
    args.input_sizes = args.input_sizes or ([518, 308] if args.quick else [518, 406, 308])
    if args.quick:
        args.iterations = min(args.iterations, 3)
    if args.device == 'cuda':
        args.precisions = [p for p in args.precisions if p != 'bf16']
    cleanup = not args.cache_dir
    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix='depth_node_bench_cache_')
    machine = machine_info()
    print(json.dumps(machine), flush=True)
    try:
        rows = measure(args)
        startup = [] if args.no_startup else measure_startup(args)
    finally:
        if cleanup:
            shutil.rmtree(args.cache_dir, ignore_errors=True)
    text = report(machine, rows, startup)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'machine': machine, 'rows': rows, 'startup': startup}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
