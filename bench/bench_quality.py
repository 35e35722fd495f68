#!/usr/bin/env python3
"""Depth quality benchmark: flying pixels, confidence cues, temporal stability and cost of
``depth_node.quality`` on real TUM RGB-D depth with simulated network errors.

A benchmark, not a test: it prints tables and PASS/FAIL against the targets, writes JSON, and
exits 0 either way (2 on bad arguments or missing data). Needs numpy, Pillow and the real
frames in ``../shared/data/real`` (``$DEPTH_NODE_REAL_DATA``); about a minute on 2 cores.

Ground truth. The three TUM RGB-D frames (640x480, fr3/long_office_household, 30 ms apart):
``depth_gt`` (Kinect, metres, NaN holes) is scored where valid; the "true dense depth" is
``depth_gt`` with every hole filled by its nearest valid pixel (``bench_alignment.nearest_fill``:
sharp edges kept), from which the predictions are made.

Simulated network error (what a monocular network does to that depth):

* (a) smoothing across silhouettes: a ``k`` x ``k`` box blur of the true depth, *in depth*
  (``k`` in 7-15 px), so the pixels of a silhouette get intermediate depths (a linear ramp:
  the hardest case for a slope test, with no tail to catch);
* (b) a low-frequency multiplicative warp ``1 + 0.15 sin(2 pi 0.8 x + p1) sin(2 pi 0.6 y + p2)``
  (``x, y`` in [0, 1], about one period across the image), as in ``bench_alignment.py``;
* (c) per-frame scale jitter ``exp(0.05 N(0, 1))`` (5 %);
* and pixel noise ``1 + 0.005 N(0, 1)``.

Sections and their targets (from the issue; every random draw comes from ``--seed``):

1. Flying pixels, (a) + (b) + noise, for ``k`` = 7, 11, 15 and two warp phases per frame. The
   error that counts is the one edge smoothing adds, ``|pred / (true * warp) - 1|``. A *GT
   depth discontinuity* is a pixel whose 4-neighbour true-depth ratio exceeds 1.10 (a jump
   that can make a 10 % error); *near silhouettes* = within ``K_NEAR`` = 10 px (square window)
   of one, more than the widest ramp (7 px). Target: at least 90 % of the near-silhouette
   pixels more than 10 % off are removed, while at least 95 % of the correct pixels (error
   <= 10 %) away from silhouettes are kept, for every ``k`` (worst case reported). Candidates:
   ``'jump'`` and ``'angle'`` at several thresholds, and the default with a 1-px dilation; the
   collateral (correct pixels near silhouettes removed) and the cost are printed too.
2. Confidence (AUSE), on sequences of the three real frames (4 draws, the frames 2 and 3 of
   each draw scored: 8 frames). Two scenarios: ``edges`` = (a) with a random ``k`` per frame,
   (c) and noise; ``full`` = the same plus (b) with a phase that drifts 0.3 rad per frame.
   Pipeline as the node would run it: ``TemporalStabilizer`` (scale only) -> a robust LiDAR
   scale fit (``alignment.fit_global``, ``space='depth'``, scale only) on a simulated scan
   (``demo.simulated_lidar``: 64 rows, every 4th column, of ``depth_gt``, through
   ``lidar.prepare_points``) -> the aligned depth. Error = ``|aligned - gt| / gt`` on valid
   ground truth minus the beam pixels (the LiDAR cue must not be scored where it measured).
   Cues: ``edge`` (discontinuity), ``lidar`` (residuals of the fit), ``temporal`` (against the
   previous output; windows 1-7 swept), and their geometric mean ``combined``. The model's own
   confidence is not measured: there is no model here (simulating one would be circular).
   Target: AUSE at most 0.5 x that of a constant confidence (random order) on the same frames
   (ratio of the means), for each cue on the scenario of the error it is built to see (edge
   and temporal: ``edges``; lidar and the combination: ``full``); the other cells are printed
   as information, with two bounds: a confidence that knows the edge error exactly and nothing
   else, and one that knows the warp exactly. In ``full`` the warp dominates the error, and
   even the exact edge error reaches only about 0.87: no local cue can pass there alone.
3. Temporal, on a static TUM stretch (frame 1, blurred with k = 11, repeated 120 times with
   pixel noise) with 5 % per-frame scale jitter: the frame-to-frame spread (std of the
   difference of the log median scale) of the output at least 5x smaller than of the input;
   a persistent 20 % scale change followed within 10 frames (the output within a quarter of
   the step of the new level, never falling back by half the step afterwards; 200 random
   trials, the worst reported); a scene cut (to a KITTI frame's depth) resets once; no reset
   on the static stretch. Also the held / falsely followed frames on a long static stream
   (30,000 frames, small image). Scale only (metric) is the target; scale + shift on disparity
   is printed too.
4. Cost: discontinuity confidence + flying mask (one shared ``log_spread``) + LiDAR residuals
   and confidence (the simulated scan, about 10k points) + ``TemporalStabilizer.update`` +
   temporal confidence + combination, per 640x480 frame, under 5 ms on this CPU: medians of 50
   repeats (``time.perf_counter``) per function and of the whole chain. The same code
   (``depth_node.quality`` takes numpy arrays or torch tensors, issue 25) is timed in the same
   run on numpy arrays and on torch tensors on ``--torch-device`` (default ``cpu``, with
   ``--torch-threads`` 1 like numpy's elementwise loops: on this shared 2-vCPU machine two
   OpenMP threads are at the mercy of the other jobs; ``cuda`` synchronizes before each clock
   reading), with the ratio torch / numpy; the target is the numpy figure (CPU engines run
   numpy). Skipped when torch is not installed.

Usage: ``python bench/bench_quality.py [--data DIR] [--out FILE] [--seed 0] [--cost-only]
[--torch-device cpu|cuda|none] [--torch-threads 1]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
import re
import sys
import time
from typing import Callable

import numpy as np

from common import DATA, loadavg, machine_info, REPO  # first: puts the checkout on sys.path
from bench_alignment import nearest_fill  # noqa: E402
from depth_node import quality as q  # noqa: E402
from depth_node.alignment import AlignerConfig, fit_global, sample_prediction  # noqa: E402
from depth_node.arrays import astype  # noqa: E402
from depth_node.camera_info import Intrinsics  # noqa: E402
from depth_node.demo import simulated_lidar  # noqa: E402
from depth_node.evaluate import write_json  # noqa: E402
from depth_node.lidar import prepare_points, project_points  # noqa: E402
from depth_node.quality.edges import _dilate  # noqa: E402
from depth_node.sample_data import frame_folders, load_frame  # noqa: E402

DEFAULT_OUT = REPO / 'bench' / 'results' / 'quality.json'

BLURS = (7, 11, 15)          # (a) box blur widths, pixels
WARP = 0.15                  # (b) amplitude of the low-frequency warp
JITTER = 0.05                # (c) per-frame scale jitter (log std)
NOISE = 0.005                # pixel noise (relative std)
PHASE_DRIFT = 0.3            # warp phase change per frame in the sequences, radians
GT_JUMP = 1.10               # 4-neighbour ratio that makes a GT depth discontinuity
K_NEAR = 10                  # pixels: "near silhouettes"
OFF = 0.10                   # "more than 10 % off"
CAP = 10.0                   # metres, TUM evaluation cap (evaluate.cap_for('tum'))

TARGET_REMOVED, TARGET_KEPT = 0.90, 0.95
TARGET_AUSE_RATIO = 0.5
TARGET_SPREAD_RATIO = 5.0
TARGET_FOLLOW_FRAMES = 10
TARGET_MS = 5.0
STEP = 1.2
STATIC_FRAMES, STEP_TRIALS, TIMING_REPEATS, AUSE_DRAWS = 120, 200, 50, 4
FALSE_FOLLOW_FRAMES = 30_000

CANDIDATES = ([('jump', t, 0) for t in (0.02, 0.03, 0.04, 0.05, 0.06)]
              + [('angle', t, 0) for t in (75.0, 80.0, 85.0, 87.5)]
              + [('jump', q.FLYING_JUMP, 1), ('angle', 85.0, 1)])


# ----------------------------------------------------------------------------------------------
# the machine

def cpu_report() -> dict:
    """CPU model and the SIMD flags that matter for numpy (avx2, avx512*, amx*)."""
    info = machine_info(with_torch=False)
    try:
        text = Path('/proc/cpuinfo').read_text()
        flags = set((re.search(r'flags\s*:\s*(.*)', text) or [None, ''])[1].split())
    except OSError:  # pragma: no cover - not Linux
        flags = set()
    info['avx2'] = 'avx2' in flags
    info['avx512_bf16'] = 'avx512_bf16' in flags
    info['amx'] = sorted(f for f in flags if f.startswith('amx'))
    return info


# ----------------------------------------------------------------------------------------------
# the simulation

def box_blur(image: np.ndarray, k: int) -> np.ndarray:
    """``k`` x ``k`` mean (odd ``k``), edges replicated; float64 (H, W)."""
    r = k // 2
    p = np.pad(image.astype(np.float64), r, mode='edge')
    c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = image.shape
    return (c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]) / (k * k)


def warp_field(shape: tuple, phase) -> np.ndarray:
    h, w = shape
    y = (np.arange(h) / h)[:, None]
    x = (np.arange(w) / w)[None, :]
    wx = np.sin(2 * np.pi * 0.8 * x + phase[0])
    wy = np.sin(2 * np.pi * 0.6 * y + phase[1])
    return 1 + WARP * wx * wy


def gt_discontinuities(true: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour true-depth ratio above GT_JUMP."""
    lt = np.log(true)
    jh = np.abs(np.diff(lt, axis=1)) > math.log(GT_JUMP)
    jv = np.abs(np.diff(lt, axis=0)) > math.log(GT_JUMP)
    out = np.zeros(true.shape, dtype=bool)
    out[:, 1:] |= jh
    out[:, :-1] |= jh
    out[1:] |= jv
    out[:-1] |= jv
    return out


class Scene:
    """One real TUM frame made ready: ground truth, true dense depth, beam pattern."""

    def __init__(self, folder: Path) -> None:
        frame = load_frame(folder)
        self.name = frame.name
        self.K = frame.K
        self.gt = frame.depth_gt                           # float32, NaN = invalid
        self.true = nearest_fill(self.gt)                  # float64, dense
        self.valid = np.isfinite(self.gt)
        camera = Intrinsics(K=frame.K, D=frame.D, distortion_model=frame.distortion_model,
                            width=frame.width, height=frame.height)
        scan = simulated_lidar(self.gt, frame.K)
        self.uv, self.z = prepare_points(scan, np.eye(4), camera, frame.width, frame.height)
        beam_uv, _, _ = project_points(scan, camera)
        self.beam = np.zeros(self.gt.shape, dtype=bool)
        self.beam[np.rint(beam_uv[:, 1]).astype(np.int64),
                  np.rint(beam_uv[:, 0]).astype(np.int64)] = True
        self.near = _dilate(gt_discontinuities(self.true), K_NEAR)

    def predict(self, k: int, phase, rng: np.random.Generator,
                scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(prediction float32, the same without edge smoothing float64); no warp when
        ``phase`` is None."""
        warp = 1.0 if phase is None else warp_field(self.true.shape, phase)
        pred = box_blur(self.true, k) * warp * scale
        pred *= 1 + NOISE * rng.standard_normal(pred.shape)
        return pred.astype(np.float32), self.true * warp * scale


# ----------------------------------------------------------------------------------------------
# 1. flying pixels

def flying_section(scenes: list[Scene], rng: np.random.Generator) -> dict:
    stats = {c: {k: {'off': 0, 'removed': 0, 'away': 0, 'kept': 0, 'near_ok': 0,
                     'collateral': 0} for k in BLURS} for c in CANDIDATES}
    outside = 0
    for scene in scenes:
        for k in BLURS:
            for _ in range(2):
                pred, ref = scene.predict(k, rng.uniform(0, 2 * np.pi, 2), rng)
                err = np.abs(pred / ref - 1)
                off = scene.valid & scene.near & (err > OFF)
                away = scene.valid & ~scene.near & (err <= OFF)
                near_ok = scene.valid & scene.near & (err <= OFF)
                outside += int(np.count_nonzero(scene.valid & ~scene.near & (err > OFF)))
                for cand in CANDIDATES:
                    method, threshold, dilate = cand
                    mask = q.flying_pixel_mask(pred, threshold, method=method, K=scene.K,
                                               dilate=dilate)
                    s = stats[cand][k]
                    s['off'] += int(off.sum())
                    s['removed'] += int(np.count_nonzero(mask & off))
                    s['away'] += int(away.sum())
                    s['kept'] += int(np.count_nonzero(~mask & away))
                    s['near_ok'] += int(near_ok.sum())
                    s['collateral'] += int(np.count_nonzero(mask & near_ok))
    pred = scenes[0].predict(11, (0.0, 0.0), rng)[0]
    rows = []
    for cand in CANDIDATES:
        method, threshold, dilate = cand
        per_k = stats[cand]
        removed = {k: per_k[k]['removed'] / max(per_k[k]['off'], 1) for k in BLURS}
        kept = {k: per_k[k]['kept'] / max(per_k[k]['away'], 1) for k in BLURS}
        collateral = {k: per_k[k]['collateral'] / max(per_k[k]['near_ok'], 1) for k in BLURS}
        ms = median_ms(lambda: q.flying_pixel_mask(pred, threshold, method=method,
                                                   K=scenes[0].K, dilate=dilate), 20)
        rows.append({'method': method, 'threshold': threshold, 'dilate': dilate,
                     'removed': removed, 'kept': kept, 'collateral': collateral,
                     'removed_min': min(removed.values()), 'kept_min': min(kept.values()),
                     'collateral_max': max(collateral.values()), 'ms': ms,
                     'pass': bool(min(removed.values()) >= TARGET_REMOVED
                                  and min(kept.values()) >= TARGET_KEPT)})
    n_off = {k: stats[CANDIDATES[0]][k]['off'] for k in BLURS}
    return {'rows': rows, 'off_pixels': n_off, 'off_outside_near': outside,
            'near_fraction': float(np.mean([s.near[s.valid].mean() for s in scenes]))}


# ----------------------------------------------------------------------------------------------
# 2. confidence

def lidar_fit(depth: np.ndarray, scene: Scene) -> float:
    config = AlignerConfig(space='depth', fit_shift=False, max_depth=CAP)
    fit = fit_global(sample_prediction(depth, scene.uv), scene.z, config, uv=scene.uv,
                     shape=depth.shape)
    if not fit.ok:
        raise RuntimeError(f'{scene.name}: LiDAR fit refused: {fit.reason}')
    return fit.scale


CUES = ('edge', 'lidar', 'temporal', 'combined')
BOUNDS = ('edge error alone', 'warp alone')
TEMPORAL_WINDOWS = (1, 3, 5, 7)
SWEEP = tuple(f'temporal w{w}' for w in TEMPORAL_WINDOWS)
#: Which scenario holds each cue's target: the error source it is built to see.
HOME = {'edge': 'edges', 'temporal': 'edges', 'lidar': 'full', 'combined': 'full'}


def confidence_section(scenes: list[Scene], rng: np.random.Generator) -> dict:
    """AUSE of each cue on two scenarios: 'edges' = (a) + (c) + noise, 'full' = (a) + (b) +
    (c) + noise. Bounds: confidences that know one error component exactly and nothing else
    (the best any cue blind to the other components could do)."""
    out = {}
    for scenario in ('edges', 'full'):
        runs = []
        for _ in range(AUSE_DRAWS):
            stab = q.TemporalStabilizer()
            phase = rng.uniform(0, 2 * np.pi, 2)
            for t, scene in enumerate(scenes):
                phase = phase + rng.normal(0, PHASE_DRIFT, 2)
                k = int(rng.choice([7, 9, 11, 13, 15]))
                jitter = math.exp(JITTER * rng.standard_normal())
                pred, _ = scene.predict(k, phase if scenario == 'full' else None, rng, jitter)
                out_t, info = stab.update(pred, 0.033 * t)
                if t == 0:
                    continue
                aligned = out_t * np.float32(lidar_fit(out_t, scene))
                residuals = q.lidar_residuals(aligned, scene.uv, scene.z)
                cues = {'edge': q.discontinuity_confidence(aligned),
                        'lidar': q.lidar_confidence(aligned.shape, scene.uv, residuals),
                        'temporal': q.temporal_confidence(out_t, stab.previous)}
                cues['combined'] = q.combine_confidence(cues, depth=aligned)
                scored = scene.valid & ~scene.beam
                error = np.where(scored, np.abs(aligned - scene.gt) / scene.gt, np.nan)
                run = {'constant': q.ause(error, np.ones_like(error)),
                       'resets': int(info.reset)}
                run.update({name: q.ause(error, cue) for name, cue in cues.items()})
                for w in TEMPORAL_WINDOWS:
                    run[f'temporal w{w}'] = q.ause(
                        error, q.temporal_confidence(out_t, stab.previous, window=w))
                run['edge error alone'] = q.ause(
                    error, -np.abs(box_blur(scene.true, k) / scene.true - 1))
                run['warp alone'] = (q.ause(error, -np.abs(warp_field(error.shape, phase) - 1))
                                     if scenario == 'full' else math.nan)
                mask = q.flying_pixel_mask(aligned)
                run['abs_rel'] = float(np.nanmean(error))
                run['abs_rel_masked'] = float(np.nanmean(np.where(mask, np.nan, error)))
                run['masked_fraction'] = float(mask[scored].mean())
                runs.append(run)
        mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
        mean['ratio'] = {name: mean[name] / mean['constant']
                         for name in CUES + BOUNDS + SWEEP}
        mean['evaluations'] = len(runs)
        out[scenario] = mean
    return out


# ----------------------------------------------------------------------------------------------
# 3. temporal

def level(a: np.ndarray, base: np.ndarray) -> float:
    """log of the median of a / base over the pixels valid in both (every 4th pixel)."""
    r = a[::4, ::4] / base[::4, ::4]
    return float(np.log(np.median(r[np.isfinite(r)])))


def run_static(base: np.ndarray, noise: list, shift: bool, scales: np.ndarray) -> dict:
    """The stabilizer on ``base * scales[i]`` times a pixel-noise field (cycled from
    ``noise``); input and output log levels (of disparity ``1 / depth`` when ``shift``)."""
    stab = q.TemporalStabilizer(shift=shift)
    ref = 1.0 / base if shift else base
    levels_in, levels_out, infos = [], [], []
    for i, s in enumerate(scales):
        pred = base * np.float32(s) * noise[i % len(noise)]
        x = 1.0 / pred if shift else pred
        out, info = stab.update(x, 0.033 * i)
        levels_in.append(level(x, ref))
        levels_out.append(level(out, ref))
        infos.append(info)
    return {'in': np.array(levels_in), 'out': np.array(levels_out), 'infos': infos}


def follow_frames(levels_out: np.ndarray, levels_in: np.ndarray, start: int,
                  step: float) -> int:
    """Frames from the change (its first frame counts 1) until the output is within a quarter
    of the step of the inputs' mean level since the change, and stays within half the step
    from then on; 10**6 when never.

    The reference is the inputs' mean since the change, the best level any causal method
    could know (with 5 % jitter the true new level is not in the data after a few frames); the
    output's own jitter (std ~0.02 in log against that mean) may leave the quarter band now
    and then, which is not a failure to follow, hence the half-step band afterwards."""
    ref = np.cumsum(levels_in[start:]) / np.arange(1, levels_in.size - start + 1)
    err = np.abs(levels_out[start:] - ref)
    for k in range(err.size):
        if err[k] < step / 4 and np.all(err[k + 1:] < step / 2):
            return k + 1
    return 10 ** 6


def false_follow_rate(rng: np.random.Generator, frames: int = FALSE_FOLLOW_FRAMES) -> dict:
    """Holds and (false) follows of the default stabilizer on a long static stream with 5 %
    jitter: a small image (the decision uses only the global level)."""
    base = np.exp(rng.uniform(0, 2, (96, 128))).astype(np.float32)
    stab = q.TemporalStabilizer()
    held = followed = resets = 0
    for i, j in enumerate(np.exp(JITTER * rng.standard_normal(frames))):
        info = stab.update(base * np.float32(j), 0.033 * i)[1]
        held += info.held
        followed += info.followed
        resets += info.reset
    return {'frames': frames, 'held': held, 'followed': followed, 'resets': resets}


def temporal_section(scene: Scene, cut_depth: np.ndarray, rng: np.random.Generator) -> dict:
    base = box_blur(scene.true, 11).astype(np.float32)
    noise = [(1 + NOISE * rng.standard_normal(base.shape)).astype(np.float32)
             for _ in range(8)]
    out = {}
    for mode, shift in (('scale', False), ('scale+shift', True)):
        scales = np.exp(JITTER * rng.standard_normal(STATIC_FRAMES))
        run = run_static(base, noise, shift, scales)
        d_in = np.diff(run['in'][1:])
        d_out = np.diff(run['out'][1:])
        step_frames, fired = [], []
        for _ in range(STEP_TRIALS):
            n = 40
            scales = np.exp(JITTER * rng.standard_normal(n))
            scales[n // 2:] *= STEP
            run_step = run_static(base, noise, shift, scales)
            step_frames.append(follow_frames(run_step['out'], run_step['in'], n // 2,
                                             math.log(STEP)))
            hits = [i - n // 2 + 1 for i, info in enumerate(run_step['infos'])
                    if info.followed and i >= n // 2]
            if hits:
                fired.append(hits[0])
        out[mode] = {
            'spread_in': float(np.std(d_in)), 'spread_out': float(np.std(d_out)),
            'ratio': float(np.std(d_in) / np.std(d_out)),
            'static_resets': sum(i.reset for i in run['infos']),
            'static_held': sum(i.held for i in run['infos']),
            'static_followed': sum(i.followed for i in run['infos']),
            'detector_fired': len(fired),
            'detector_median': float(np.median(fired)) if fired else math.nan,
            'detector_max': int(max(fired)) if fired else -1,
            'follow_median': float(np.median(step_frames)),
            'follow_p95': float(np.percentile(step_frames, 95)),
            'follow_max': int(max(step_frames))}
    stab = q.TemporalStabilizer()
    resets = []
    for i in range(30):
        x = base if i < 20 else cut_depth
        x = x * np.float32(math.exp(JITTER * rng.standard_normal()))
        resets.append(stab.update(x, 0.033 * i)[1])
    out['long_static'] = false_follow_rate(rng)
    out['cut'] = {'resets_before': sum(r.reset for r in resets[1:20]),
                  'reset_at_cut': bool(resets[20].reset), 'reason': resets[20].reason,
                  'resets_after': sum(r.reset for r in resets[21:])}
    return out


def kitti_depth(data: Path, shape: tuple) -> np.ndarray:
    """A KITTI frame's LiDAR depth, nearest-filled and resampled to ``shape``: a scene cut."""
    folder = sorted((data / 'kitti_object').glob('*/camera.json'))[0].parent
    frame = load_frame(folder)
    camera = Intrinsics(K=frame.K, D=frame.D, distortion_model=frame.distortion_model,
                        width=frame.width, height=frame.height)
    uv, z = prepare_points(frame.lidar, frame.T_camera_lidar, camera, frame.width,
                           frame.height)
    sparse = np.full((frame.height, frame.width), np.nan)
    sparse[np.rint(uv[:, 1]).astype(int), np.rint(uv[:, 0]).astype(int)] = z
    dense = nearest_fill(sparse)
    rows = np.linspace(0, frame.height - 1, shape[0]).astype(int)
    cols = np.linspace(0, frame.width - 1, shape[1]).astype(int)
    return dense[rows[:, None], cols[None, :]].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# 4. cost

def median_ms(fn: Callable, repeats: int = TIMING_REPEATS,
              sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``fn()`` in ms; ``sync`` waits for queued device work (CUDA), called
    before each clock reading."""
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(samples))


NODE_STEP = 'node step (frame_quality.stabilize + assess, as finish runs them)'


def cost_section(scene: Scene, rng: np.random.Generator, torch_device: str = 'cpu',
                 torch_threads: int = 1) -> dict:
    """Section 4 on numpy arrays, then the same code on torch tensors on ``torch_device``
    ('none': numpy only) with ``torch_threads`` CPU threads (0: torch's default)."""
    pred, _ = scene.predict(11, (0.3, 1.1), rng)
    frames = [pred * np.float32(math.exp(JITTER * rng.standard_normal())) for _ in range(4)]
    out = {'ms': cost_of(frames, scene.uv, scene.z, scene.K), 'n_points': int(scene.z.size),
           'load_average': loadavg()}
    if torch_device == 'none':
        return out
    try:
        import torch
    except ImportError:
        out['torch_skipped'] = 'torch is not installed'
        return out
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    device = torch.device(torch_device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)

    def put(a: np.ndarray):
        return torch.tensor(np.ascontiguousarray(a), device=device)

    out['torch'] = {'device': str(device), 'version': torch.__version__,
                    'threads': torch.get_num_threads(),
                    'ms': cost_of([put(f) for f in frames], put(scene.uv), put(scene.z),
                                  scene.K, sync)}
    out['load_average_after'] = loadavg()
    return out


def cost_of(frames: list, uv, z, K: np.ndarray,
            sync: Callable[[], None] = lambda: None) -> dict:
    """The medians of section 4 in ms, for ``frames`` (4 of them) and the scan ``(uv, z)`` as
    numpy arrays or as tensors (the same code runs on both)."""
    stab = q.TemporalStabilizer()

    def timed(fn: Callable) -> float:
        return median_ms(fn, sync=sync)

    clock = [0.0]

    def update():
        clock[0] += 0.033
        return stab.update(frames[int(clock[0] / 0.033) % 4], clock[0])

    for _ in range(3):
        update()
    out = astype(stab.output, np.float32, copy=True)
    spread = q.log_spread(out)
    edge = q.discontinuity_confidence(out, spread=spread)
    res = q.lidar_residuals(out, uv, z)
    lidar = q.lidar_confidence(out.shape, uv, res)
    temporal = q.temporal_confidence(out, stab.previous)
    cues = {'edge': edge, 'lidar': lidar, 'temporal': temporal}
    parts = {
        'log_spread': lambda: q.log_spread(out),
        'discontinuity_confidence': lambda: q.discontinuity_confidence(out, spread=spread),
        'flying_pixel_mask': lambda: q.flying_pixel_mask(out, spread=spread),
        'lidar_residuals': lambda: q.lidar_residuals(out, uv, z),
        'lidar_confidence': lambda: q.lidar_confidence(out.shape, uv, res),
        'TemporalStabilizer.update': update,
        'temporal_confidence': lambda: q.temporal_confidence(out, stab.previous),
        'combine_confidence': lambda: q.combine_confidence(cues, depth=out),
    }
    ms = {name: timed(fn) for name, fn in parts.items()}

    def chain():
        o, _ = update()
        s = q.log_spread(o)
        e = q.discontinuity_confidence(o, spread=s)
        m = q.flying_pixel_mask(o, spread=s)
        r = q.lidar_residuals(o, uv, z)
        li = q.lidar_confidence(o.shape, uv, r)
        t = q.temporal_confidence(o, stab.previous)
        o[m] = np.nan
        return q.combine_confidence({'edge': e, 'lidar': li, 'temporal': t}, depth=o)

    ms['chain (all of the above, per frame)'] = timed(chain)

    # what the node runs per frame: FramePipeline.finish calls these two (every cue on, the
    # cloud gated, temporal.enabled; metric depth with a LiDAR fit)
    from depth_node import config as cfg
    from depth_node.frame_quality import assess, QualityState, stabilize

    config = cfg.validate_values({'temporal.enabled': True, 'cloud.min_confidence': 0.5})
    state = QualityState()

    def node_step():
        clock[0] += 0.033
        o, _ = stabilize(config, state, frames[int(clock[0] / 0.033) % 4], clock[0], False)
        return assess(config, state, o, True, True, True, (uv, z))

    ms[NODE_STEP] = timed(node_step)
    ms['angle mask (candidate, not in chain)'] = timed(
        lambda: q.flying_pixel_mask(out, method='angle', K=K))
    return ms


# ----------------------------------------------------------------------------------------------
# report

def targets_of(flying: dict, conf: dict, temporal: dict, cost: dict) -> list[dict]:
    default = next(r for r in flying['rows'] if r['method'] == 'jump'
                   and r['threshold'] == q.FLYING_JUMP and r['dilate'] == 0)
    t = [{'target': f'flying: >= {TARGET_REMOVED:.0%} of >10%-off pixels near silhouettes '
                    f'removed (worst k)', 'value': default['removed_min'],
          'limit': TARGET_REMOVED, 'pass': default['removed_min'] >= TARGET_REMOVED},
         {'target': f'flying: >= {TARGET_KEPT:.0%} of correct pixels away from silhouettes '
                    'kept (worst k)', 'value': default['kept_min'], 'limit': TARGET_KEPT,
          'pass': default['kept_min'] >= TARGET_KEPT}]
    for name in CUES:
        for scenario in ('edges', 'full'):
            value = conf[scenario]['ratio'][name]
            home = HOME[name] == scenario
            t.append({'target': f'AUSE {name} / AUSE constant, scenario {scenario}'
                                + ('' if home else ' (info: not its error source)'),
                      'value': value, 'limit': TARGET_AUSE_RATIO,
                      'pass': value <= TARGET_AUSE_RATIO, 'info': not home})
    s = temporal['scale']
    t += [{'target': 'temporal: input / output frame-to-frame scale spread', 'value': s['ratio'],
           'limit': TARGET_SPREAD_RATIO, 'pass': s['ratio'] >= TARGET_SPREAD_RATIO},
          {'target': f'temporal: 20% step followed (frames, worst of {STEP_TRIALS})',
           'value': float(s['follow_max']), 'limit': float(TARGET_FOLLOW_FRAMES),
           'pass': s['follow_max'] <= TARGET_FOLLOW_FRAMES},
          {'target': 'temporal: scene cut resets once, static stretch never',
           'value': float(temporal['cut']['reset_at_cut'] and not temporal['cut']['resets_after']
                          and not temporal['cut']['resets_before'] and not s['static_resets']),
           'limit': 1.0, 'pass': bool(temporal['cut']['reset_at_cut']
                                      and not temporal['cut']['resets_after']
                                      and not temporal['cut']['resets_before']
                                      and not s['static_resets'])}]
    total = cost['ms'][NODE_STEP]
    t.append({'target': 'cost: the node\'s quality step per 640x480 frame, ms', 'value': total,
              'limit': TARGET_MS, 'pass': total <= TARGET_MS})
    return t


def print_report(info: dict, flying: dict, conf: dict, temporal: dict, cost: dict,
                 targets: list[dict]) -> None:
    amx = ' '.join(info['amx']) or 'no'
    print(f"CPU: {info.get('cpu')} ({info.get('cpus')} CPUs); avx2 "
          f"{'yes' if info['avx2'] else 'no'}; avx512_bf16 "
          f"{'yes' if info['avx512_bf16'] else 'no'}; amx {amx}; avx512/amx flags: "
          f"{' '.join(info.get('cpu_flags', [])) or 'none'}; numpy {np.__version__}")
    print(f'\n== 1. flying pixels: TUM x {len(BLURS)} blur widths x 2 warps; near = within '
          f'{K_NEAR} px of a >{GT_JUMP - 1:.0%} GT jump ({flying["near_fraction"]:.0%} of valid '
          f'px); off pixels per k {flying["off_pixels"]}, off outside near '
          f'{flying["off_outside_near"]} ==')
    print(f'{"method":<7} {"thr":>6} {"dil":>3} | removed off (k=7/11/15) | kept away '
          f'(k=7/11/15) | collateral near | {"ms":>5} | both')
    for r in flying['rows']:
        rem = '/'.join(f'{r["removed"][k]:.3f}' for k in BLURS)
        kept = '/'.join(f'{r["kept"][k]:.3f}' for k in BLURS)
        print(f'{r["method"]:<7} {r["threshold"]:>6g} {r["dilate"]:>3} | {rem:<23} | '
              f'{kept:<21} | {r["collateral_max"]:>15.3f} | {r["ms"]:>5.2f} | '
              f'{"PASS" if r["pass"] else "fail"}')
    print('\n== 2. confidence: AUSE of AbsRel per pixel (mean over frames) and / constant; '
          "'edges' = (a)+(c), 'full' = (a)+(b)+(c) ==")
    for scenario in ('edges', 'full'):
        m = conf[scenario]
        print(f'{scenario}: {m["evaluations"]} frames, AbsRel {m["abs_rel"]:.4f}, '
              f'{m["abs_rel_masked"]:.4f} after the flying mask ({m["masked_fraction"]:.1%} '
              f'removed), stabilizer resets {m["resets"]:.2f} per frame')
    print(f'{"cue":<36} {"edges":>8} {"/const":>7} | {"full":>8} {"/const":>7}')
    for name in ('constant',) + CUES + SWEEP + BOUNDS:
        cells = []
        for scenario in ('edges', 'full'):
            m = conf[scenario]
            ratio = 1.0 if name == 'constant' else m['ratio'][name]
            cells.append(f'{m[name]:>8.5f} {ratio:>7.3f}')
        label = f'(bound) oracle of {name}' if name in BOUNDS else name
        if name in SWEEP:
            label = f'  temporal, window {name[len("temporal w"):]}'
        print(f'{label:<36} ' + ' | '.join(cells))
    print('\n== 3. temporal: static stretch, 5% scale jitter; 20% step; scene cut ==')
    for mode in ('scale', 'scale+shift'):
        s = temporal[mode]
        print(f'{mode:<12} spread in {s["spread_in"]:.4f} out {s["spread_out"]:.4f} '
              f'(x{s["ratio"]:.1f}); static: resets {s["static_resets"]}, held '
              f'{s["static_held"]}, followed {s["static_followed"]} of {STATIC_FRAMES}')
        print(f'{"":<12} 20% step: followed after median {s["follow_median"]:.0f}, p95 '
              f'{s["follow_p95"]:.0f}, max {s["follow_max"]} frames; the change detector fired '
              f'in {s["detector_fired"]} of {STEP_TRIALS} (the EMA followed the others), after '
              f'median {s["detector_median"]:.0f}, max {s["detector_max"]} frames')
    lf = temporal['long_static']
    print(f'long static stream (96x128, 5% jitter): {lf["frames"]} frames, held {lf["held"]}, '
          f'followed (false) {lf["followed"]}, resets {lf["resets"]}')
    c = temporal['cut']
    print(f'scene cut: reset at cut {c["reset_at_cut"]} ({c["reason"]}); resets before '
          f'{c["resets_before"]}, after {c["resets_after"]}')
    print_cost(cost)
    print('\n== summary ==')
    print(f'{"":<4}  {"target":<72} {"value":>8} {"limit":>6}')
    for t in targets:
        verdict = ('pass' if t['pass'] else 'fail') if t.get('info') else (
            'PASS' if t['pass'] else 'FAIL')
        print(f'{verdict}  {t["target"]:<72} {t["value"]:>8.3f} {t["limit"]:>6g}')


def print_cost(cost: dict) -> None:
    tc = cost.get('torch')
    print(f'\n== 4. cost per 640x480 frame, median of {TIMING_REPEATS} ({cost["n_points"]} '
          f'LiDAR points; load average {cost["load_average"]}'
          + (f', after the torch run {cost["load_average_after"]}' if tc else '') + ') ==')
    if tc is None:
        for name, value in cost['ms'].items():
            print(f'{name:<40} {value:6.2f} ms')
        if cost.get('torch_skipped'):
            print(f'(torch: {cost["torch_skipped"]})')
        return
    print(f'the same code on numpy arrays and on torch {tc["version"]} tensors on '
          f'{tc["device"]} ({tc["threads"]} threads)')
    print(f'{"":<40} {"numpy":>8} {"torch":>8} {"torch/numpy":>12}')
    for name, value in cost['ms'].items():
        other = tc['ms'][name]
        print(f'{name:<40} {value:6.2f} ms {other:6.2f} ms {other / value:12.2f}')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, default=DATA,
                        help=f'real-data root (default {DATA})')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT,
                        help=f'JSON results (default {DEFAULT_OUT})')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cost-only', action='store_true',
                        help='run section 4 (cost) alone, and write no JSON')
    parser.add_argument('--torch-device', default='cpu',
                        help="device of the torch run of section 4: 'cpu' (default), 'cuda', "
                             "'cuda:1', or 'none' for numpy only")
    parser.add_argument('--torch-threads', type=int, default=1,
                        help="torch's CPU threads in section 4 (default 1, as numpy; 0: "
                             "torch's default)")
    args = parser.parse_args(argv)
    folders = frame_folders(args.data / 'tum_rgbd') if (args.data / 'tum_rgbd').is_dir() else []
    if not folders:
        print(f'bench_quality: error: no TUM RGB-D frames under {args.data}', file=sys.stderr)
        return 2
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    info = cpu_report()
    scenes = [Scene(f) for f in folders]
    # first, before the long sections warm anything
    cost = cost_section(scenes[0], rng, args.torch_device, args.torch_threads)
    if args.cost_only:
        print(f"CPU: {info.get('cpu')} ({info.get('cpus')} CPUs); numpy {np.__version__}")
        print_cost(cost)
        return 0
    flying = flying_section(scenes, rng)
    conf = confidence_section(scenes, rng)
    temporal = temporal_section(scenes[0], kitti_depth(args.data, scenes[0].gt.shape), rng)
    targets = targets_of(flying, conf, temporal, cost)
    print_report(info, flying, conf, temporal, cost, targets)
    elapsed = time.perf_counter() - started
    print(f'\ntotal {elapsed:.1f} s')
    report = {'benchmark': 'depth quality', 'seed': args.seed, 'data': str(args.data),
              'elapsed_s': elapsed, 'machine': info, 'numpy': np.__version__,
              'simulation': {'blurs': BLURS, 'warp': WARP, 'jitter': JITTER, 'noise': NOISE,
                             'phase_drift': PHASE_DRIFT, 'gt_jump': GT_JUMP, 'k_near': K_NEAR},
              'flying': flying, 'confidence': conf,
              'temporal': {k: v for k, v in temporal.items()}, 'cost': cost,
              'targets': targets}
    write_json(args.out, report)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
