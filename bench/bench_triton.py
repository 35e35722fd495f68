"""Nodes against one ``depth_node-serve`` (Triton) against the same nodes with local engines.

For 1, 2 and 4 client processes, each a node's model path (``load_estimator`` of its
parameters, then ``predict`` frame after frame, as the node's worker calls it; no DDS), for
``--seconds`` each: frames/s per node, median and 90th-percentile latency of a frame, and the
bytes each frame sends and receives. The same processes with ``model.engine: torch`` (the
model on each robot's own CPU) are the baseline, run in the same invocation. All processes
share this machine's cores: the server and the nodes compete for them (say so with a figure).

    python bench/bench_triton.py                      # tiny model (forward ~ms: the wire
                                                      # dominates, as on a GPU server)
    python bench/bench_triton.py --model small        # Depth Anything V2 Small, random weights

The server runs from the PyTriton venv (``.venv-triton``, see scripts/setup.sh) or
``--server-python``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / 'test'))

from common import cpu_line, loadavg, machine_info, markdown_table  # noqa: E402

WIDTH, HEIGHT = 640, 480
NET_W, NET_H = 686, 518   # Depth Anything's network input for 640x480


def client(args: argparse.Namespace) -> None:
    """One node's model path: load, say ready, wait for the common start (read from stdin
    once every client is ready), predict until the end."""
    from depth_node import config as cfg
    from depth_node.model import load_estimator
    from tiny_models import textured_image

    values = json.loads(args.values)
    est = load_estimator(cfg.validate_values(values)).estimator
    image = textured_image(HEIGHT, WIDTH, 200.0, 40, seed=os.getpid() % 1000)
    est.predict(image)
    print('ready', flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.005)
    latencies, dropped = [], 0
    end = start + args.seconds
    while time.time() < end:
        t0 = time.perf_counter()
        try:
            est.predict(image)
        except Exception:  # noqa: BLE001 - a dropped frame is counted, not fatal
            dropped += 1
            continue
        latencies.append(time.perf_counter() - t0)
    est.close()
    print(json.dumps({'frames': len(latencies), 'dropped': dropped, 'latencies': latencies}))


def run_clients(count: int, values: dict, seconds: float) -> dict:
    procs = [subprocess.Popen([sys.executable, __file__, '--client', '--values',
                               json.dumps(values), '--seconds', str(seconds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(count)]
    for proc in procs:   # every process loaded and warm before any starts timing
        if proc.stdout.readline().strip() != 'ready':
            raise SystemExit('a client process failed to load its model')
    start = time.time() + 0.5
    for proc in procs:
        proc.stdin.write(f'{start}\n')
        proc.stdin.flush()
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    lat = [x for r in results for x in r['latencies']]
    per_node = [r['frames'] / seconds for r in results]
    return {'nodes': count, 'fps_per_node': statistics.mean(per_node),
            'fps_total': sum(per_node),
            'latency_ms_median': 1e3 * statistics.median(lat) if lat else float('nan'),
            'latency_ms_p90': 1e3 * float(np.percentile(lat, 90)) if lat else float('nan'),
            'dropped': sum(r['dropped'] for r in results)}


def start_server(python: str, model: dict, grpc: int, http: int, metrics: int,
                 extra: list[str]) -> subprocess.Popen:
    args = [python, '-m', 'depth_node.serve', '--host', '127.0.0.1', '--grpc-port', str(grpc),
            '--http-port', str(http), '--metrics-port', str(metrics), *extra]
    for name, value in model.items():
        args += ['-p', f'{name}:={value}']
    log = open(Path(tempfile.gettempdir()) / f'bench_triton_serve_{grpc}.out', 'w')
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith('depth_node-serve ready:'):
            return proc
    raise SystemExit(f'depth_node-serve did not start (see {log.name})')


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--client', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--values', help=argparse.SUPPRESS)
    ap.add_argument('--seconds', type=float, default=10.0, help='per configuration')
    ap.add_argument('--model', choices=('tiny', 'small'), default='tiny')
    ap.add_argument('--nodes', type=int, nargs='+', default=[1, 2, 4])
    ap.add_argument('--server-python', default=str(ROOT / '.venv-triton' / 'bin' / 'python'))
    ap.add_argument('--setups', nargs='+', choices=('local', 'triton'),
                    default=['local', 'triton'], help='what to run (default both)')
    ap.add_argument('--json', type=Path, help='also write the rows here')
    args = ap.parse_args()
    if args.client:
        client(args)
        return
    info = machine_info()
    print(f'# {cpu_line(info)}; load average before: {loadavg()}')
    if args.model == 'tiny':
        from tiny_models import make_tiny_depth_anything
        model = {'model.name': str(make_tiny_depth_anything(tempfile.mkdtemp()))}
    else:
        model = {'model.random_init': 'depth-anything-v2-small'}
    model.update({'model.device': 'cpu', 'model.engine': 'torch', 'model.precision': 'fp32',
                  'model.warmup_size': [WIDTH, HEIGHT]})
    up, down = HEIGHT * WIDTH * 3, HEIGHT * WIDTH * 4
    print(f'# bytes per frame (tensor payload): up {up} (uint8 image), down {down} (float32 '
          f'depth) or {down // 2} (float16); the network input instead would be '
          f'{NET_H * NET_W * 3 * 4} up (float32 {NET_W}x{NET_H}) and {NET_H * NET_W * 4} down')
    rows = []
    for count in args.nodes if 'local' in args.setups else ():
        row = run_clients(count, model, args.seconds)
        rows.append({'setup': 'local torch fp32 per node', **row})
        print(json.dumps(rows[-1]), flush=True)
        if count > 1:  # N processes on these cores: torch's default threads oversubscribe them
            row = run_clients(count, {**model, 'model.threads': 1}, args.seconds)
            rows.append({'setup': 'local torch fp32 per node, 1 thread', **row})
            print(json.dumps(rows[-1]), flush=True)
    grpc, http, metrics = 18201, 18200, 18202
    for dtype in ('float32', 'float16') if 'triton' in args.setups else ():
        server = start_server(args.server_python, model, grpc, http, metrics,
                              ['--max-batch', '4', '--queue-delay-ms', '2',
                               '--output-dtype', dtype])
        try:
            schemes = ('grpc', 'http') if dtype == 'float32' else ('grpc',)
            for scheme in schemes:
                url = f'{scheme}://127.0.0.1:{grpc if scheme == "grpc" else http}'
                client_values = {'model.engine': 'triton', 'model.triton_url': url,
                                 'model.warmup': False, 'model.triton_timeout': 60.0}
                for count in (args.nodes if (scheme, dtype) == ('grpc', 'float32')
                              else args.nodes[:1]):
                    row = run_clients(count, client_values, args.seconds)
                    rows.append({'setup': f'triton {scheme}, depth {dtype}', **row})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            stop_server(server)
    base: dict = {}   # the better local setup per node count
    for r in rows:
        if r['setup'].startswith('local'):
            base[r['nodes']] = max(base.get(r['nodes'], 0.0), r['fps_per_node'])
    for r in rows:
        r['vs_local'] = r['fps_per_node'] / base[r['nodes']] if r['nodes'] in base else None
    print(markdown_table(rows, [('setup', 'setup'), ('nodes', 'nodes'),
                                ('fps_per_node', 'frames/s per node'),
                                ('fps_total', 'frames/s total'),
                                ('latency_ms_median', 'latency median ms'),
                                ('latency_ms_p90', 'latency p90 ms'),
                                ('vs_local', 'per node vs the better local'),
                                ('dropped', 'dropped')]))
    print(f'# load average after: {loadavg()}')
    if args.json:
        args.json.write_text(json.dumps({'machine': info, 'rows': rows}, indent=1))


if __name__ == '__main__':
    main()
