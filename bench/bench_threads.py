"""Where the forward pass runs: the main thread, a worker thread, a worker beside a spinning
rclpy executor. The node's forward must cost what the bare forward costs.

Times :meth:`depth_node.estimator.DepthEstimator.predict` (the code the node runs) on one
640x480 frame, Depth Anything V2 Small (random weights), per engine, in rounds that alternate
the placements:

- ``main``: called on the process's main thread;
- ``worker``: called on a long-lived ``threading.Thread`` (the node's old design);
- ``worker+executor``: the same, while an rclpy ``SingleThreadedExecutor`` spins a node with a
  2 Hz timer on a third thread (what the node process had);
- ``main+executor``: on the main thread while the executor spins on a background thread (the
  node's design since issue 14: ``depth_node.node.main`` runs inference on the main thread).

Prints the CPU model and flags, the median forward of each placement, and its ratio to
``main``; a ratio above 1.05 is a regression of the node's design.

    python bench/bench_threads.py                      # torch and openvino, 3 rounds x 4 frames
    python bench/bench_threads.py --engines torch --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import queue
import sys
import threading
from typing import Any, Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import ARCHS, Inputs  # noqa: E402
from common import cpu_line, machine_info, median, prepare_run, REPO  # noqa: E402


class Worker:
    """A long-lived thread that runs what it is given and hands back the result."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name='bench_worker', daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._results.put(job())

    def call(self, job: Callable[[], Any]) -> Any:
        self._jobs.put(job)
        return self._results.get()

    def close(self) -> None:
        self._jobs.put(None)
        self.thread.join(timeout=5)


class Spinner:
    """An rclpy executor spinning one node with a 2 Hz timer on a background thread."""

    def __init__(self) -> None:
        import rclpy

        from depth_node.spin import BackgroundExecutor

        self.bg = BackgroundExecutor()
        node = rclpy.create_node('bench_threads_idle', context=self.bg.context)
        node.create_timer(0.5, lambda: None)
        self.bg.add(node)

    def close(self) -> None:
        self.bg.close()


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from depth_node.estimator import DepthEstimator

    inputs = Inputs('640x480')
    rows = []
    for engine in args.engines:
        est = DepthEstimator(random_init=ARCHS['small'], device='cpu', precision=args.precision,
                             engine=engine, cache_dir=args.cache_dir)
        worker = Worker()
        # warm up where each placement runs (compiled code, thread pools, AMX state)
        est.warmup(inputs.height, inputs.width, iterations=1)
        worker.call(lambda: est.warmup(inputs.height, inputs.width, iterations=1))

        def forward() -> float:
            return est.predict(inputs.rgb).timings['forward']

        times: dict[str, list[float]] = {p: [] for p in ('main', 'worker', 'worker+executor',
                                                         'main+executor')}
        for _ in range(args.rounds):
            for _ in range(args.frames):
                times['main'].append(forward())
            for _ in range(args.frames):
                times['worker'].append(worker.call(forward))
            spinner = Spinner()
            try:
                for _ in range(args.frames):
                    times['worker+executor'].append(worker.call(forward))
                for _ in range(args.frames):
                    times['main+executor'].append(forward())
            finally:
                spinner.close()
        worker.close()
        base = median(times['main'])
        for placement, values in times.items():
            row = {'engine': est.engine.name, 'precision': est.engine.precision,
                   'placement': placement, 'forward_ms': round(median(values) * 1e3, 1),
                   'p90_ms': round(float(np.percentile(values, 90)) * 1e3, 1),
                   'vs_main': round(median(values) / base, 3), 'n': len(values)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        est.close()
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--engines', nargs='+', default=['torch', 'openvino'])
    ap.add_argument('--precision', default='auto')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--frames', type=int, default=4, help='frames per placement per round')
    ap.add_argument('--cache-dir', default='')
    ap.add_argument('--domain', type=int, default=1 + os.getpid() % 99)
    ap.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'threads.json'))
    args = ap.parse_args(argv)
    if prepare_run(args.domain, 'cpu') is None:
        return 2
    machine = machine_info()
    print(json.dumps(machine), flush=True)
    rows = measure(args)
    print(f'\n{cpu_line(machine)}')
    print('| engine | precision | placement | forward ms (median) | p90 ms | vs main |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['engine']} | {r['precision']} | {r['placement']} | {r['forward_ms']} | "
              f"{r['p90_ms']} | {r['vs_main']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'machine': machine, 'rows': rows}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
