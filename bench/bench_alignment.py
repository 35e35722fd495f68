#!/usr/bin/env python3
"""Alignment accuracy benchmark: relative disparity made metric with real LiDAR scans.

A benchmark, not a test: it prints tables and PASS/FAIL against the targets, writes JSON, and
exits 0 either way (2 on bad arguments or missing data).

For every frame of ``../shared/data/real`` a prediction with a KNOWN error is built from the
frame's real depth and fed through the alignment, then scored against held-out ground truth:

* Ground truth. LiDAR sets (kitti_object, nuscenes_mini, pjlab_distorted): the scan is split
  into two random halves (fixed seed); the held-out half is projected with the real calibration
  and distortion (``lidar.prepare_points``, occlusion test included) onto the image grid and
  rasterised (nearest point per pixel). TUM RGB-D: the dense Kinect depth minus the beam pixels.
* "True" dense depth, from which the prediction is made: the ground truth filled to every pixel
  by nearest-neighbour interpolation (Euclidean nearest via jump flooding), so the true map
  equals the ground truth at every scored pixel and keeps depth edges sharp. For LiDAR sets only
  the held-out half is densified, not the full scan: densifying the fitting half as well would
  copy its real parallax returns into the prediction, where they would no longer be outliers.
* Prediction = unknown affine of a corrupted disparity: ``d = 1 / true``; edge bleeding (gaussian
  blur, sigma 1.5 px per 640 px of width, which smears disparity across depth edges); scenario
  ``warp`` only: a low-frequency multiplicative warp ``1 + 0.15 sin(..x..) sin(..y..)`` (about
  one period across the image; 4 predictions per frame with random phases, scores averaged:
  with one phase, a frame's local / oracle ratio ranged 0.4-0.8); pixel noise
  (x ``1 + 0.03 N(0, 1)``); then ``a d + b`` with ``a`` log-uniform in [2, 50] and ``b`` 5-50 %
  of the median, unknown to the methods.
* Fitting points. LiDAR sets: the other half of the real scan through ``prepare_points`` (its
  real parallax and occlusion intact). TUM: the 64-row x every-4th-column beam pattern of
  ``depth_node.demo.simulated_lidar`` through ``prepare_points``. Then, for every set, 10 % of
  the fitting points are replaced with parallax-like outliers: the farthest true depth among 16
  random pixels within 3 % of the image width of the point, at least 1.3 x the point's depth
  (a background return).

Methods, each scored with ``depth_node.evaluate.compute_metrics`` (AbsRel, delta1; cap 80 m, or
10 m for TUM) on the held-out ground truth: ``oracle`` least squares in disparity against all
scored ground truth (MiDaS protocol); ``lstsq`` plain least squares ``1/z ~ s d + t`` on the
fitting points; ``median`` median scaling ``1/z ~ s d``; ``global`` and ``local``:
``depth_node.alignment.Aligner`` with ``fit='global'`` / ``'local'`` (a fresh aligner per frame,
so no temporal smoothing). oracle, lstsq and median turn disparity into depth with
``alignment.disparity_to_depth``, the conversion (and ``[min_depth, cap]`` limits) the Aligner
applies. Set figures are means over frames; ratios are of those means.

Targets (from the issue): global AbsRel <= 1.10 x oracle with 10 % outlier points (scenario
``affine``: no warp, so the oracle is the best any global fit can do); local AbsRel <= 0.70 x
oracle when the error has a low-frequency warp (scenario ``warp``); ``Aligner.align`` under 5 ms
per frame for 20k points at 640x480.

Usage: ``python bench/bench_alignment.py [--data ../shared/data/real] [--out FILE]``.

``--kernels``: instead, time the per-frame functions (``prepare_points`` of a full KITTI scan,
``sample_prediction``, ``fit_global``, ``Aligner.align`` global and local, and the frame's
whole chain) on numpy and, the same code, on torch tensors on the CPU and on CUDA when present,
on one KITTI frame at its size; prints the medians in ms, the ratios to numpy, the agreement of
the fits and, on CUDA, the device syncs of one frame (torch's sync debug mode). Writes
``bench/results/alignment_kernels.json`` (or ``--out``). ``--torch-threads 1`` keeps torch on
one thread (its default thread pool stalls on a machine whose other cores are busy).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from dataclasses import dataclass
import math
import os
from pathlib import Path
import sys
import time
from typing import Optional
import zlib

import numpy as np

from common import (  # first: puts the checkout on sys.path
    cpu_line, DATA, loadavg, machine_info, REPO)
from depth_node.alignment import (  # noqa: E402
    Aligner, AlignerConfig, disparity_to_depth, fit_global, sample_prediction)
from depth_node.evaluate import (  # noqa: E402
    EvaluationError, affine_lstsq, cap_for, compute_metrics, gaussian_window,
    points_to_sparse_gt, separable_filter, write_json)
from depth_node.demo import simulated_lidar  # noqa: E402
from depth_node.camera_info import Intrinsics  # noqa: E402
from depth_node.lidar import prepare_points, project_points  # noqa: E402
from depth_node.sample_data import frame_folders, load_frame  # noqa: E402

DEFAULT_DATA = DATA
DEFAULT_OUT = REPO / 'bench' / 'results' / 'alignment.json'
DEFAULT_KERNELS_OUT = REPO / 'bench' / 'results' / 'alignment_kernels.json'
KERNEL_REPEATS = 30        # --kernels: timed calls per function and backend (after 2 warm-ups)

MIN_DEPTH = 1e-3           # evaluation floor, metres
WARP_AMPLITUDE = 0.15      # low-frequency multiplicative warp of disparity (scenario 'warp')
NOISE = 0.03               # per-pixel multiplicative gaussian noise on disparity
BLEED_SIGMA = 1.5          # edge-bleeding blur, pixels per 640 pixels of image width
OUTLIER_FRACTION = 0.10    # fitting points replaced by background returns
OUTLIER_RADIUS = 0.03      # neighbourhood of a background return, fraction of image width
OUTLIER_MIN_RATIO = 1.3    # a background return is at least this much farther
TIMING_SIZE, TIMING_POINTS, TIMING_REPEATS = (640, 480), 20_000, 50

WARP_DRAWS = 4             # warp scenario: predictions per frame, each with a random phase
SCENARIOS = {'affine': (0.0, 1), 'warp': (WARP_AMPLITUDE, WARP_DRAWS)}  # (warp, draws)
METHODS = ('oracle', 'lstsq', 'median', 'global', 'local')
SCORE_KEYS = ('abs_rel', 'delta1', 'coverage')
TARGET_GLOBAL = 1.10       # global / oracle AbsRel, scenario 'affine'
TARGET_LOCAL = 0.70        # local / oracle AbsRel, scenario 'warp'
TARGET_ALIGN_MS = 5.0      # Aligner.align at 640x480 with 20k points


@dataclass
class Case:
    """One frame made ready for the methods: truth, scored ground truth, fitting points."""

    set_name: str
    frame_name: str
    true_depth: np.ndarray   # (H, W) float64 metres, dense
    gt: np.ndarray           # (H, W) float32 metres, NaN where not scored
    uv: np.ndarray           # (M, 2) float32 fitting points, pixels
    z: np.ndarray            # (M,) float32 fitting depths (outliers injected), metres
    n_outliers: int
    cap: float
    prepare_ms: Optional[float]  # prepare_points on the full scan; None without a scan

    @property
    def height(self) -> int:
        return self.gt.shape[0]

    @property
    def width(self) -> int:
        return self.gt.shape[1]


def nearest_fill(sparse: np.ndarray) -> np.ndarray:
    """Fill every NaN pixel of ``sparse`` (H, W) with the value of the nearest finite pixel.

    Jump flooding (Rong and Tan 2006): passes with steps W/2, W/4, ..., 1 propagate the nearest
    seed seen by 8 neighbours at that step. JFA can miss the true nearest seed in rare layouts;
    spot-checked against brute force on the LiDAR frames here (4,400 random pixels, no miss).
    Returns float64.
    """
    height, width = sparse.shape
    seeds = np.isfinite(sparse)
    if not seeds.any():
        raise ValueError('nothing to fill from: no finite pixel')
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    nowhere = np.float32(-1e5)  # distance^2 ~ 1e10 > any real one, < inf
    seed_row = np.where(seeds, rows, nowhere)
    seed_col = np.where(seeds, cols, nowhere)
    best = np.where(seeds, 0.0, np.inf).astype(np.float32)
    step = 1 << max(0, int(math.ceil(math.log2(max(height, width)))) - 1)
    while step >= 1:
        for dy in (-step, 0, step):
            for dx in (-step, 0, step):
                if (dy == 0 and dx == 0) or abs(dy) >= height or abs(dx) >= width:
                    continue
                # pixel p (dst) looks at the seed stored at p + (dy, dx) (src)
                dst = (slice(max(0, -dy), height - max(0, dy)),
                       slice(max(0, -dx), width - max(0, dx)))
                src = (slice(max(0, dy), height - max(0, -dy)),
                       slice(max(0, dx), width - max(0, -dx)))
                cand_row, cand_col = seed_row[src], seed_col[src]
                dist = (rows[dst] - cand_row) ** 2 + (cols[dst] - cand_col) ** 2
                better = dist < best[dst]
                np.copyto(best[dst], dist, where=better)
                np.copyto(seed_row[dst], cand_row, where=better)
                np.copyto(seed_col[dst], cand_col, where=better)
        step //= 2
    return sparse[seed_row.astype(np.int64), seed_col.astype(np.int64)].astype(np.float64)


def inject_outliers(uv: np.ndarray, z: np.ndarray, true_depth: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Replace ``OUTLIER_FRACTION`` of the depths with background returns from nearby."""
    height, width = true_depth.shape
    n = int(round(OUTLIER_FRACTION * z.size))
    z = z.copy()
    if n == 0:
        return z, 0
    idx = rng.choice(z.size, n, replace=False)
    radius = max(3, int(round(OUTLIER_RADIUS * width)))
    col = np.rint(uv[idx, 0]).astype(np.int64)
    row = np.rint(uv[idx, 1]).astype(np.int64)
    offsets = rng.integers(-radius, radius + 1, size=(n, 16, 2))
    rr = np.clip(row[:, None] + offsets[..., 0], 0, height - 1)
    cc = np.clip(col[:, None] + offsets[..., 1], 0, width - 1)
    background = true_depth[rr, cc].max(axis=1)
    z[idx] = np.maximum(background, OUTLIER_MIN_RATIO * z[idx])
    return z, n


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with renormalised borders (no darkening at the image edge)."""
    if sigma <= 0:
        return image
    kernel = gaussian_window(2 * int(math.ceil(3 * sigma)) + 1, sigma)
    return separable_filter(image, kernel) / separable_filter(np.ones_like(image), kernel)


def make_prediction(true_depth: np.ndarray, warp: float, rng: np.random.Generator) -> np.ndarray:
    """A relative disparity map with a known error (see the module docstring); (H, W) float32."""
    height, width = true_depth.shape
    disp = blur(1.0 / true_depth, BLEED_SIGMA * width / 640.0)
    if warp:
        y = (np.arange(height) / height)[:, None]
        x = (np.arange(width) / width)[None, :]
        phase = rng.uniform(0, 2 * np.pi, 2)
        disp = disp * (1 + warp * np.sin(2 * np.pi * 0.8 * x + phase[0])
                       * np.sin(2 * np.pi * 0.6 * y + phase[1]))
    disp = disp * (1 + NOISE * rng.standard_normal(disp.shape))
    a = math.exp(rng.uniform(math.log(2.0), math.log(50.0)))
    b = rng.uniform(0.05, 0.5) * float(np.median(a * disp))
    return (a * disp + b).astype(np.float32)


def lidar_case(frame, set_name: str, rng: np.random.Generator) -> Case:
    camera = Intrinsics(K=frame.K, D=frame.D, distortion_model=frame.distortion_model,
                        width=frame.width, height=frame.height)
    width, height = frame.width, frame.height
    points = frame.lidar[:, :3]
    t0 = time.perf_counter()
    prepare_points(points, frame.T_camera_lidar, camera, width, height)
    prepare_ms = 1e3 * (time.perf_counter() - t0)
    held_out = rng.random(points.shape[0]) < 0.5
    uv_gt, z_gt = prepare_points(points[held_out], frame.T_camera_lidar, camera, width, height)
    uv, z = prepare_points(points[~held_out], frame.T_camera_lidar, camera, width, height)
    gt = points_to_sparse_gt(uv_gt, z_gt, height, width)
    true_depth = nearest_fill(gt)
    z, n_out = inject_outliers(uv, z, true_depth, rng)
    return Case(set_name, frame.name, true_depth, gt, uv, z, n_out, cap_for(set_name),
                prepare_ms)


def dense_case(frame, set_name: str, rng: np.random.Generator) -> Case:
    depth = frame.depth_gt
    height, width = depth.shape
    camera = Intrinsics(K=frame.K, D=frame.D, distortion_model=frame.distortion_model,
                        width=width, height=height)
    scan = simulated_lidar(depth, frame.K)  # camera frame: T_camera_lidar is the identity
    t0 = time.perf_counter()
    uv, z = prepare_points(scan, np.eye(4), camera, width, height)
    prepare_ms = 1e3 * (time.perf_counter() - t0)
    true_depth = nearest_fill(depth)
    z, n_out = inject_outliers(uv, z, true_depth, rng)
    beam_uv, _, _ = project_points(scan, camera)  # every beam pixel, occluded ones included
    gt = depth.copy()
    gt[np.rint(beam_uv[:, 1]).astype(np.int64), np.rint(beam_uv[:, 0]).astype(np.int64)] = np.nan
    return Case(set_name, frame.name, true_depth, gt, uv, z, n_out, cap_for(set_name),
                prepare_ms)


def align_methods(pred: np.ndarray, case: Case, options: dict) -> tuple[dict, dict]:
    """Depth maps of every method, and the align() times in ms of the two Aligner fits."""
    config = AlignerConfig(space='disparity', max_depth=case.cap, **options)

    def to_depth(scale, shift):
        return disparity_to_depth(pred, scale, shift, config.min_depth, config.max_depth)

    scored = np.isfinite(case.gt) & (case.gt > MIN_DEPTH) & (case.gt <= case.cap)
    depths = {'oracle': to_depth(*affine_lstsq(pred[scored], 1.0 / case.gt[scored]))}
    d = np.asarray(sample_prediction(pred, case.uv), dtype=np.float64)
    inv_z = 1.0 / case.z.astype(np.float64)
    depths['lstsq'] = to_depth(*affine_lstsq(d, inv_z))
    positive = d > 0
    depths['median'] = to_depth(float(np.median(inv_z[positive] / d[positive])), 0.0)
    times = {}
    for fit in ('global', 'local'):
        aligner = Aligner(dataclasses.replace(config, fit=fit))
        t0 = time.perf_counter()
        result = aligner.align(pred, case.uv, case.z, 0.0)
        times[fit] = 1e3 * (time.perf_counter() - t0)
        depths[fit] = (result.depth if result.depth is not None
                       else np.full(pred.shape, np.nan, dtype=np.float32))
    return depths, times


def score(depth: np.ndarray, case: Case) -> dict:
    m = compute_metrics(depth, case.gt, MIN_DEPTH, case.cap)
    return {key: m[key] for key in SCORE_KEYS}


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def mean_scores(runs: list[dict]) -> dict:
    """Average per-method scores over runs (warp draws, or frames), then the ratios to oracle.

    The ratios are of the mean AbsRels, not means of per-run ratios.
    """
    out = {m: {k: float(np.mean([r[m][k] for r in runs])) for k in SCORE_KEYS}
           for m in METHODS}
    out['global_over_oracle'] = ratio(out['global']['abs_rel'], out['oracle']['abs_rel'])
    out['local_over_oracle'] = ratio(out['local']['abs_rel'], out['oracle']['abs_rel'])
    return out


def run_frame(case: Case, rng: np.random.Generator, options: dict) -> dict:
    row = {'set': case.set_name, 'frame': case.frame_name, 'width': case.width,
           'height': case.height, 'cap': case.cap, 'n_fit': int(case.z.size),
           'n_outliers': case.n_outliers, 'n_gt': int(np.isfinite(case.gt).sum()),
           'prepare_ms': case.prepare_ms, 'scenarios': {}}
    align_ms = {'global': [], 'local': []}
    for scenario, (warp, draws) in SCENARIOS.items():
        runs = []
        for _ in range(draws):
            pred = make_prediction(case.true_depth, warp, rng)
            depths, times = align_methods(pred, case, options)
            for fit, ms in times.items():
                align_ms[fit].append(ms)
            runs.append({name: score(depths[name], case) for name in METHODS})
        row['scenarios'][scenario] = mean_scores(runs)
    row['align_global_ms'] = float(np.mean(align_ms['global']))
    row['align_local_ms'] = float(np.mean(align_ms['local']))
    return row


def summarise(frames: list[dict]) -> dict:
    """Per set and scenario: mean AbsRel / delta1 per method over frames, and the ratios."""
    sets: dict = {}
    for name in dict.fromkeys(f['set'] for f in frames):
        rows = [f for f in frames if f['set'] == name]
        entry = {'frames': len(rows)}
        for scenario in SCENARIOS:
            entry[scenario] = mean_scores([r['scenarios'][scenario] for r in rows])
        prep = [r['prepare_ms'] for r in rows if r['prepare_ms'] is not None]
        entry['prepare_ms'] = float(np.mean(prep)) if prep else None
        entry['align_global_ms'] = float(np.mean([r['align_global_ms'] for r in rows]))
        entry['align_local_ms'] = float(np.mean([r['align_local_ms'] for r in rows]))
        sets[name] = entry
    return sets


def timing_run(data: Path, seed: int, options: dict) -> dict:
    """Aligner.align at 640x480 with 20k points, and prepare_points of a full KITTI scan."""
    width, height = TIMING_SIZE
    rng = np.random.default_rng(seed)
    out: dict = {'size': f'{width}x{height}', 'repeats': TIMING_REPEATS,
                 'cpus': os.cpu_count(), 'load_average_1min': (loadavg() or [math.nan])[0]}
    tum = sorted((data / 'tum_rgbd').glob('*/camera.json'))
    if tum:
        frame = load_frame(tum[0].parent)
        true_depth = nearest_fill(frame.depth_gt)
        valid = np.flatnonzero(np.isfinite(frame.depth_gt))
        pick = rng.choice(valid, TIMING_POINTS, replace=False)
        uv = np.stack([pick % width, pick // width], axis=1).astype(np.float32)
        z = frame.depth_gt.ravel()[pick].astype(np.float32)
        pred = make_prediction(true_depth, WARP_AMPLITUDE, rng)
        out['n_points'] = int(z.size)
        for fit in ('global', 'local'):
            aligner = Aligner(AlignerConfig(space='disparity', fit=fit, max_depth=10.0,
                                            **options))
            samples = []
            for i in range(TIMING_REPEATS + 2):
                aligner.reset()
                t0 = time.perf_counter()
                aligner.align(pred, uv, z, float(i))
                samples.append(1e3 * (time.perf_counter() - t0))
            samples = samples[2:]  # warm-up
            out[f'align_{fit}_ms'] = float(np.median(samples))
            out[f'align_{fit}_min_ms'] = float(np.min(samples))
            out[f'align_{fit}_p90_ms'] = float(np.percentile(samples, 90))
    kitti = sorted((data / 'kitti_object').glob('*/camera.json'))
    if kitti:
        frame = load_frame(kitti[0].parent)
        camera = Intrinsics(K=frame.K, D=frame.D, distortion_model=frame.distortion_model,
                            width=frame.width, height=frame.height)
        samples = []
        for _ in range(TIMING_REPEATS // 3 + 1):
            t0 = time.perf_counter()
            uv, _ = prepare_points(frame.lidar, frame.T_camera_lidar, camera, width, height)
            samples.append(1e3 * (time.perf_counter() - t0))
        out['prepare_scan_points'] = int(frame.lidar.shape[0])
        out['prepare_kept_points'] = int(uv.shape[0])
        out['prepare_ms'] = float(np.median(samples[1:]))
    return out


def kernel_backends() -> list[str]:
    """``'numpy'``, then the torch devices this machine has: ``'cpu'``, ``'cuda'``."""
    try:
        import torch
    except ImportError:
        return ['numpy']
    return ['numpy', 'cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def kernels_run(data: Path, seed: int, repeats: int) -> Optional[dict]:
    """The per-frame functions on numpy and on torch tensors, one KITTI frame at its size.

    The prediction is a dense disparity with a known error (:func:`make_prediction`, warp
    scenario) of the nearest-filled projected scan. Backends are interleaved call by call, so
    a load that comes and goes hits them alike. CUDA calls are timed to completion (a
    synchronize before the clock stops).
    """
    import torch

    kitti = sorted((data / 'kitti_object').glob('*/camera.json'))
    if not kitti:
        return None
    frame = load_frame(kitti[0].parent)
    camera = Intrinsics(K=frame.K, D=frame.D, distortion_model=frame.distortion_model,
                        width=frame.width, height=frame.height)
    width, height, T, scan = frame.width, frame.height, frame.T_camera_lidar, frame.lidar
    rng = np.random.default_rng(seed)
    uv, z = prepare_points(scan, T, camera, width, height)
    true_depth = nearest_fill(points_to_sparse_gt(uv, z, height, width))
    pred = make_prediction(true_depth, WARP_AMPLITUDE, rng)
    config = AlignerConfig(space='disparity', max_depth=cap_for('kitti_object'), seed=seed)
    local = dataclasses.replace(config, fit='local')
    backends = kernel_backends()

    def inputs(backend: str) -> dict:
        if backend == 'numpy':
            arrays = {'pred': pred, 'uv': uv, 'z': z, 'device': None}
        else:
            device = torch.device(backend)
            arrays = {name: torch.from_numpy(value).to(device)
                      for name, value in (('pred', pred), ('uv', uv), ('z', z))}
            arrays['device'] = device
        arrays['samples'] = sample_prediction(arrays['pred'], arrays['uv'])
        return arrays

    data_of = {b: inputs(b) for b in backends}
    fits = (('global', config), ('local', local))
    aligners = {(b, fit): Aligner(c) for b in backends for fit, c in fits}

    def align(b: str, fit: str, uv_, z_):
        aligner = aligners[(b, fit)]
        aligner.reset()
        return aligner.align(data_of[b]['pred'], uv_, z_, 0.0)

    steps = {
        'prepare_points': lambda b, d: prepare_points(scan, T, camera, width, height,
                                                      device=d['device']),
        'sample_prediction': lambda b, d: sample_prediction(d['pred'], d['uv']),
        'fit_global': lambda b, d: fit_global(d['samples'], d['z'], config, uv=d['uv'],
                                              shape=(height, width)),
        'align global': lambda b, d: align(b, 'global', d['uv'], d['z']),
        'align local': lambda b, d: align(b, 'local', d['uv'], d['z']),
        'frame: prepare + align global': lambda b, d: align(
            b, 'global', *prepare_points(scan, T, camera, width, height, device=d['device'])),
    }

    def call(step, b):
        out = steps[step](b, data_of[b])
        if b == 'cuda':
            torch.cuda.synchronize()
        return out

    times = {step: {b: [] for b in backends} for step in steps}
    for step in steps:
        for b in backends:
            call(step, b)
            call(step, b)          # warm-up: caches, CUDA kernels, thread pools
        for _ in range(repeats):
            for b in backends:
                t0 = time.perf_counter()
                call(step, b)
                times[step][b].append(1e3 * (time.perf_counter() - t0))
    fits = {b: fit_global(data_of[b]['samples'], data_of[b]['z'], config, uv=data_of[b]['uv'],
                          shape=(height, width)) for b in backends}
    agreement = {b: max(abs(fits[b].scale / fits['numpy'].scale - 1),
                        abs(fits[b].shift - fits['numpy'].shift)
                        / (abs(fits['numpy'].scale) + abs(fits['numpy'].shift)))
                 for b in backends if b != 'numpy'}
    out = {'frame': frame.name, 'size': f'{width}x{height}', 'scan_points': int(len(scan)),
           'kept_points': int(len(z)), 'repeats': repeats, 'backends': backends,
           'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
           'load_average_1min': (loadavg() or [math.nan])[0],
           'median_ms': {step: {b: float(np.median(v)) for b, v in per.items()}
                         for step, per in times.items()},
           'fit_agreement_rel': agreement, 'fit_ok': {b: f.ok for b, f in fits.items()}}
    if 'cuda' in backends:
        out['cuda_syncs_per_frame'] = cuda_syncs(
            lambda: call('frame: prepare + align global', 'cuda'))
    return out


def cuda_syncs(run) -> int:
    """How many synchronizing CUDA operations ``run()`` makes (torch's sync debug mode warns
    once per synchronize, blocking copy and ``.item()``)."""
    import torch

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    return sum('synchroniz' in str(w.message) for w in caught)


def print_kernels(result: dict, machine: dict) -> None:
    backends = result['backends']
    print(f'== per-frame functions on numpy and on torch tensors: {result["frame"]} at '
          f'{result["size"]}, scan of {result["scan_points"]} points ({result["kept_points"]} '
          f'kept), median of {result["repeats"]} ==')
    print(f'{cpu_line(machine)}; {machine.get("cpus")} CPUs, torch {result["torch"]} with '
          f'{result["torch_threads"]} threads, load average {result["load_average_1min"]:.2f} '
          f'at the end{"; GPU " + machine["gpu"] if machine.get("gpu") else ""}')
    labels = {'numpy': 'numpy', 'cpu': 'torch-cpu', 'cuda': 'cuda'}
    head = f'{"ms":<30} {"numpy":>8}'
    for b in backends[1:]:
        head += f' {labels[b]:>10} {"/ numpy":>8}'
    print(head)
    for step, per in result['median_ms'].items():
        line = f'{step:<30} {per["numpy"]:>8.3f}'
        for b in backends[1:]:
            line += f' {per[b]:>10.3f} {per[b] / per["numpy"]:>8.2f}'
        print(line)
    for b, rel in result['fit_agreement_rel'].items():
        print(f'fit on {labels[b]} against numpy: s, t within {rel:.1e} relative '
              f'(ok: {result["fit_ok"][b]} / {result["fit_ok"]["numpy"]})')
    if 'cuda_syncs_per_frame' in result:
        print(f'CUDA syncs in one frame (prepare + align global): '
              f'{result["cuda_syncs_per_frame"]}')


def evaluate_targets(sets: dict, timing: dict) -> list[dict]:
    targets = []
    for name, entry in sets.items():
        value = entry['affine']['global_over_oracle']
        targets.append({'target': f'global <= {TARGET_GLOBAL:.2f} x oracle (affine, 10% outliers)',
                        'set': name, 'value': value, 'limit': TARGET_GLOBAL,
                        'pass': bool(value <= TARGET_GLOBAL)})
    for name, entry in sets.items():
        value = entry['warp']['local_over_oracle']
        targets.append({'target': f'local <= {TARGET_LOCAL:.2f} x oracle (low-frequency warp)',
                        'set': name, 'value': value, 'limit': TARGET_LOCAL,
                        'pass': bool(value <= TARGET_LOCAL)})
    for fit in ('global', 'local'):
        value = timing.get(f'align_{fit}_ms')
        if value is not None:
            targets.append({'target': f'align ({fit}) < {TARGET_ALIGN_MS:g} ms, '
                                      f'{timing["n_points"]} points at {timing["size"]}',
                            'set': 'timing', 'value': value, 'limit': TARGET_ALIGN_MS,
                            'pass': bool(value < TARGET_ALIGN_MS)})
    return targets


def _fmt(x, spec='.4f') -> str:
    return '-' if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _fmt_fraction(x) -> str:
    """A fraction in 4 characters: '.987', '1.00'."""
    text = _fmt(x, '.3f')
    return '1.00' if text.startswith('1') else text.lstrip('0')


def _method_cells(s: dict) -> str:
    return (' '.join(f'{_fmt(s[m]["abs_rel"])} {_fmt_fraction(s[m]["delta1"]):>4}'
                     for m in METHODS)
            + f' {_fmt(s["global_over_oracle"], ".2f"):>5}'
            f' {_fmt(s["local_over_oracle"], ".2f"):>5}')


def print_report(frames: list[dict], sets: dict, timing: dict, targets: list[dict]) -> None:
    head = (' '.join(f'{m:>11}' for m in METHODS) + f' {"g/o":>5} {"l/o":>5}')
    for scenario in SCENARIOS:
        title = ('affine + noise + edge bleeding' if scenario == 'affine'
                 else 'affine + noise + edge bleeding + low-frequency warp')
        print(f'\n== scenario {scenario}: {title}; 10% outlier points ==')
        print(f'{"AbsRel delta1":<40} {head}')
        for f in frames:
            print(f'{f["frame"]:<40} {_method_cells(f["scenarios"][scenario])}')
        for name, entry in sets.items():
            label = f'{name} (mean of {entry["frames"]})'
            print(f'{label:<40} {_method_cells(entry[scenario])}')
    print('\n== per frame: points, and timings in ms at native resolution (mean over the '
          "frame's predictions) ==")
    print(f'{"frame":<32} {"size":>9} {"n_fit":>6} {"n_gt":>7} {"prepare":>8} '
          f'{"global":>7} {"local":>7}')
    for f in frames:
        size = f'{f["width"]}x{f["height"]}'
        print(f'{f["frame"]:<32} {size:>9} {f["n_fit"]:>6} {f["n_gt"]:>7} '
              f'{_fmt(f["prepare_ms"], ".1f"):>8} {f["align_global_ms"]:>7.1f} '
              f'{f["align_local_ms"]:>7.1f}')
    if timing:
        print(f'\n== timing run at {timing["size"]}, median of {timing["repeats"]} '
              f'({timing["cpus"]} CPUs, load average {timing["load_average_1min"]:.1f} at '
              'start) ==')
        if 'n_points' in timing:
            for fit in ('global', 'local'):
                print(f'align {fit:<6} {timing["n_points"]} points: '
                      f'{timing[f"align_{fit}_ms"]:.2f} ms (min '
                      f'{timing[f"align_{fit}_min_ms"]:.2f}, p90 '
                      f'{timing[f"align_{fit}_p90_ms"]:.2f})')
        if 'prepare_ms' in timing:
            print(f'prepare_points, KITTI scan of {timing["prepare_scan_points"]} points '
                  f'({timing["prepare_kept_points"]} kept): {timing["prepare_ms"]:.2f} ms')
    print('\n== targets ==')
    for t in targets:
        print(f'{"PASS" if t["pass"] else "FAIL"}  {t["target"]:<58} {t["set"]:<16} '
              f'{_fmt(t["value"], ".3f")} (limit {t["limit"]:g})')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA,
                        help=f'real-data root (default {DEFAULT_DATA})')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT,
                        help=f'JSON results (default {DEFAULT_OUT})')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--sets', nargs='*', help='only these sets (default all)')
    parser.add_argument('--local-grid', type=int, nargs=2, metavar=('ROWS', 'COLS'),
                        help='AlignerConfig.local_grid (default: the AlignerConfig default)')
    parser.add_argument('--no-timing', action='store_true', help='skip the 640x480 timing run')
    parser.add_argument('--kernels', action='store_true',
                        help='only time the per-frame functions on numpy and on torch tensors '
                             '(CPU, and CUDA when present) on a KITTI frame')
    parser.add_argument('--repeats', type=int, default=KERNEL_REPEATS,
                        help=f'--kernels: timed calls per function and backend '
                             f'(default {KERNEL_REPEATS})')
    parser.add_argument('--torch-threads', type=int,
                        help="--kernels: torch's intra-op threads (default: torch's default)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f'bench_alignment: error: no real data at {args.data} (use --data)',
              file=sys.stderr)
        return 2
    if args.kernels:
        if args.torch_threads:
            import torch
            torch.set_num_threads(args.torch_threads)
        result = kernels_run(args.data, args.seed, max(1, args.repeats))
        if result is None:
            print(f'bench_alignment: error: no kitti_object frame under {args.data}',
                  file=sys.stderr)
            return 2
        machine = machine_info(with_torch=True)
        print_kernels(result, machine)
        out = DEFAULT_KERNELS_OUT if args.out == DEFAULT_OUT else args.out
        write_json(out, {'benchmark': 'alignment kernels, numpy against torch',
                         'data': str(args.data), 'machine': machine, 'numpy': np.__version__,
                         **result})
        print(f'wrote {out}')
        return 0
    folders = [f for f in frame_folders(args.data)
               if not args.sets or f.parent.name in args.sets]
    if not folders:
        print(f'bench_alignment: error: no frame folders under {args.data}', file=sys.stderr)
        return 2
    options = {'seed': args.seed}
    if args.local_grid:
        options['local_grid'] = tuple(args.local_grid)
    started = time.perf_counter()
    frames = []
    for folder in folders:
        frame = load_frame(folder)
        set_name = folder.parent.name
        # per-frame stream, independent of which other frames run
        rng = np.random.default_rng([args.seed, zlib.crc32(frame.name.encode())])
        if frame.depth_gt is not None:
            case = dense_case(frame, set_name, rng)
        elif frame.lidar is not None and frame.T_camera_lidar is not None:
            case = lidar_case(frame, set_name, rng)
        else:
            print(f'skip {frame.name}: no depth_gt.png and no LiDAR scan', file=sys.stderr)
            continue
        try:
            frames.append(run_frame(case, rng, options))
        except EvaluationError as exc:
            print(f'skip {frame.name}: {exc}', file=sys.stderr)
        print(f'{frame.name}: done ({time.perf_counter() - started:.1f} s)', file=sys.stderr)
    sets = summarise(frames)
    timing = {} if args.no_timing else timing_run(args.data, args.seed, options)
    targets = evaluate_targets(sets, timing)
    elapsed = time.perf_counter() - started
    print_report(frames, sets, timing, targets)
    print(f'\ntotal {elapsed:.1f} s')
    report = {
        'benchmark': 'alignment accuracy', 'seed': args.seed, 'data': str(args.data),
        'elapsed_s': elapsed, 'machine': machine_info(with_torch=False),
        'numpy': np.__version__,
        'aligner_options': options,
        'error_model': {'warp_amplitude': WARP_AMPLITUDE, 'warp_draws': WARP_DRAWS, 'noise': NOISE,
                        'bleed_sigma_px_per_640': BLEED_SIGMA,
                        'outlier_fraction': OUTLIER_FRACTION, 'outlier_radius': OUTLIER_RADIUS,
                        'outlier_min_ratio': OUTLIER_MIN_RATIO,
                        'tum_beam': 'depth_node.demo.simulated_lidar'},
        'frames': frames, 'sets': sets, 'timing_640x480': timing, 'targets': targets,
    }
    write_json(args.out, report)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
