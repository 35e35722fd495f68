"""Depth evaluation: KITTI / Eigen metrics, oracle alignments, SSIM, the ``depth_node-eval`` CLI.

ROS-free. Conventions used throughout:

* Depth maps are ``(height, width)`` metres along the camera optical axis; NaN (or any
  non-finite value, or a value <= 0) means "no value".
* A ground-truth pixel is *valid* when it is finite and in ``(min_depth, max_depth]`` (and inside
  ``mask`` when one is given). ``max_depth`` is the evaluation cap: 80 m outdoors (KITTI,
  Garg / Eigen protocol), 10 m indoors (NYUv2); see :func:`cap_for`.
* A prediction pixel is *usable* when it is finite and > 0. Missing predictions (NaN, inf,
  <= 0) at valid ground-truth pixels are **not** penalised inside the error metrics; they are
  reported by ``coverage`` (fraction of valid ground-truth pixels that have a usable prediction).
  The error metrics are computed over the pixels where both are valid (``n`` of them). Read the
  metrics together with ``coverage``: a method that drops its hard pixels looks better otherwise.
* Usable predictions are clipped to ``[min_depth, max_depth]`` before the metrics, as in the
  Eigen / Monodepth evaluation code (``clip_pred=False`` turns that off).

Command line (also ``python -m depth_node.evaluate``)::

    depth_node-eval --pred pred.npy --gt gt.png [--pred-kind depth|disparity] [--oracle]
                    [--cap 80 | --preset indoor|outdoor] [--min-depth 0.001] [--json out.json]
    depth_node-eval --pred pred.npy --frame ../shared/data/real/kitti_object/000000
    depth_node-eval --pred depth.npy --gt gt.png --confidence conf.npy   # + AUSE of the confidence

Inputs may be ``.npy`` (float), 16-bit ``.png`` (scaled by ``--gt-scale`` / ``--pred-scale``,
default 0.001 m per unit, 0 = invalid), ``.tif``/``.tiff`` (float32 or 16-bit) or ``.pfm``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import re
import sys
from typing import Any, Optional, Sequence

import numpy as np

__all__ = [
    'EvaluationError', 'PRESETS', 'METRIC_NAMES', 'cap_for', 'compute_metrics', 'affine_lstsq',
    'oracle_align_disparity', 'oracle_scale_depth', 'gaussian_window', 'separable_filter',
    'ssim', 'points_to_sparse_gt', 'load_map', 'write_json', 'main',
]

#: Evaluation caps in metres: KITTI-style outdoor and NYUv2-style indoor.
PRESETS = {'outdoor': 80.0, 'indoor': 10.0}

#: Name words (prefixes) of data sets evaluated with the indoor cap; all others are outdoor.
_INDOOR_SETS = ('tum', 'nyu', 'scannet', 'void', 'indoor', 'sunrgbd')

#: Error metrics in the order they are printed.
METRIC_NAMES = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'silog', 'delta1', 'delta2', 'delta3')


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated: wrong shapes, no valid pixels, unreadable files."""


def cap_for(set_name: str) -> float:
    """Evaluation cap in metres for a data set or preset name.

    ``'indoor'`` / ``'outdoor'`` return the preset; a set name (``'tum_rgbd'``,
    ``'nyuv2'``, ``'kitti_object'``, or a ``set/frame`` path) is indoor (10 m) when one of its
    words starts with an indoor set's name (TUM, NYU, ScanNet, VOID, SUN RGB-D), else outdoor
    (80 m).
    """
    name = str(set_name).strip().lower()
    if name in PRESETS:
        return PRESETS[name]
    first = name.replace('\\', '/').strip('/').split('/')[0]
    words = re.split(r'[^a-z0-9]+', first)
    indoor = any(word.startswith(tag) for word in words for tag in _INDOOR_SETS)
    return PRESETS['indoor' if indoor else 'outdoor']


def _as_map(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise EvaluationError(f'{name} must be a (height, width) map, got shape {array.shape}')
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise EvaluationError(f'{name} must be numeric, got dtype {array.dtype}')
    return array.astype(np.float64, copy=False)


def _check_pair(pred: np.ndarray, gt: np.ndarray, mask) -> tuple:
    pred = _as_map('prediction', pred)
    gt = _as_map('ground truth', gt)
    if pred.shape != gt.shape:
        raise EvaluationError(
            f'prediction is {pred.shape[1]}x{pred.shape[0]} but ground truth is '
            f'{gt.shape[1]}x{gt.shape[0]} (width x height); resize the prediction to the '
            'ground-truth grid first')
    if mask is None:
        mask = np.ones(gt.shape, dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != gt.shape:
            raise EvaluationError(f'mask shape {mask.shape} differs from ground truth {gt.shape}')
    return pred, gt, mask


def compute_metrics(pred: np.ndarray, gt: np.ndarray, min_depth: float = 1e-3,
                    max_depth: float = 80.0, mask: Optional[np.ndarray] = None,
                    clip_pred: bool = True) -> dict:
    """KITTI / Eigen depth metrics of a metric prediction against ground truth.

    Parameters
    ----------
    pred, gt : np.ndarray
        ``(height, width)`` depth in metres; non-finite or <= 0 means no value.
    min_depth, max_depth : float
        Ground truth is valid in ``(min_depth, max_depth]`` metres; usable predictions are
        clipped to ``[min_depth, max_depth]`` when ``clip_pred`` is true.
    mask : np.ndarray, optional
        ``(height, width)`` bool, True where to evaluate (e.g. a Garg crop).

    Returns
    -------
    dict
        ``abs_rel = mean(|p - g| / g)``, ``sq_rel = mean((p - g)^2 / g)``,
        ``rmse = sqrt(mean((p - g)^2))`` (m), ``rmse_log = sqrt(mean((ln p - ln g)^2))``,
        ``silog = 100 sqrt(mean(e^2) - mean(e)^2)`` with ``e = ln p - ln g``,
        ``delta{1,2,3}`` = fraction with ``max(p / g, g / p) < 1.25^k``; ``n`` = number of
        pixels the metrics are computed over (valid ground truth with a usable prediction);
        ``n_gt`` = valid ground-truth pixels; ``coverage = n / n_gt``. With no pixel to
        evaluate the error metrics are NaN (``coverage`` is NaN when ``n_gt`` is 0).
    """
    if not (0.0 <= min_depth < max_depth):
        raise EvaluationError(f'need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}')
    pred, gt, mask = _check_pair(pred, gt, mask)
    with np.errstate(invalid='ignore'):
        valid_gt = mask & np.isfinite(gt) & (gt > min_depth) & (gt <= max_depth)
        usable = np.isfinite(pred) & (pred > 0)
    both = valid_gt & usable
    n_gt = int(valid_gt.sum())
    n = int(both.sum())
    result = {name: math.nan for name in METRIC_NAMES}
    result.update(n=n, n_gt=n_gt, coverage=(n / n_gt) if n_gt else math.nan)
    if n == 0:
        return result
    g = gt[both]
    p = pred[both]
    if clip_pred:
        p = np.clip(p, max(min_depth, np.finfo(np.float64).tiny), max_depth)
    err = p - g
    log_err = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    result.update(
        abs_rel=float(np.mean(np.abs(err) / g)),
        sq_rel=float(np.mean(err ** 2 / g)),
        rmse=float(np.sqrt(np.mean(err ** 2))),
        rmse_log=float(np.sqrt(np.mean(log_err ** 2))),
        silog=float(100.0 * np.sqrt(max(np.mean(log_err ** 2) - np.mean(log_err) ** 2, 0.0))),
        delta1=float(np.mean(ratio < 1.25)),
        delta2=float(np.mean(ratio < 1.25 ** 2)),
        delta3=float(np.mean(ratio < 1.25 ** 3)),
    )
    return result


def affine_lstsq(x: np.ndarray, y: np.ndarray) -> tuple:
    """Least-squares ``(scale, shift)`` with ``y ~ scale * x + shift`` over finite pairs.

    Raises :class:`EvaluationError` with fewer than two pairs or a constant ``x``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise EvaluationError(f'an affine fit needs at least 2 points, got {x.size}')
    x_mean, y_mean = x.mean(), y.mean()
    var = np.mean((x - x_mean) ** 2)
    if not var > 1e-12 * max(x_mean ** 2, 1e-300):
        raise EvaluationError('an affine fit needs a non-constant prediction')
    scale = np.mean((x - x_mean) * (y - y_mean)) / var
    return float(scale), float(y_mean - scale * x_mean)


def oracle_align_disparity(pred_disp: np.ndarray, gt: np.ndarray,
                           mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Align a relative (affine-invariant) disparity map to ground truth: the MiDaS protocol.

    Solves ``1 / gt ~ s * pred_disp + t`` by least squares over every pixel where ``gt`` is
    finite and > 0, ``pred_disp`` is finite, and ``mask`` (if given) is True; returns the depth
    ``1 / (s * pred_disp + t)`` in metres, ``(height, width)`` float32, NaN where the aligned
    disparity is <= 0 or non-finite. Uses ground truth: an upper reference, not a method.
    """
    pred_disp, gt, mask = _check_pair(pred_disp, gt, mask)
    with np.errstate(invalid='ignore'):
        fit = mask & np.isfinite(gt) & (gt > 0) & np.isfinite(pred_disp)
    scale, shift = affine_lstsq(pred_disp[fit], 1.0 / gt[fit])
    return _invert_disparity(scale * pred_disp + shift)


def _invert_disparity(disp: np.ndarray) -> np.ndarray:
    depth = np.full(disp.shape, np.nan, dtype=np.float32)
    with np.errstate(invalid='ignore'):
        ok = np.isfinite(disp) & (disp > 0)
    depth[ok] = 1.0 / disp[ok]
    return depth


def oracle_scale_depth(pred_depth: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None,
                       method: str = 'median') -> np.ndarray:
    """Scale a metric (or scale-ambiguous) depth map to ground truth with one factor.

    ``method='median'`` (default; the Monodepth / Eigen median scaling):
    ``s = median(gt) / median(pred)`` over pixels where both are usable.
    ``method='lstsq'``: ``s = sum(pred * gt) / sum(pred^2)`` (least squares in depth, no shift).
    Returns ``s * pred_depth`` as float32 with NaN where the prediction is unusable.
    """
    pred_depth, gt, mask = _check_pair(pred_depth, gt, mask)
    with np.errstate(invalid='ignore'):
        usable = np.isfinite(pred_depth) & (pred_depth > 0)
        fit = mask & usable & np.isfinite(gt) & (gt > 0)
    if not fit.any():
        raise EvaluationError('no pixel where both prediction and ground truth are valid')
    p, g = pred_depth[fit], gt[fit]
    if method == 'median':
        scale = np.median(g) / np.median(p)
    elif method == 'lstsq':
        scale = np.sum(p * g) / np.sum(p * p)
    else:
        raise EvaluationError(f"method must be 'median' or 'lstsq', got {method!r}")
    out = np.full(pred_depth.shape, np.nan, dtype=np.float32)
    out[usable] = scale * pred_depth[usable]
    return out


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D gaussian of odd length ``size`` and standard deviation ``sigma`` (pixels)."""
    if size < 1 or size % 2 == 0:
        raise EvaluationError(f'window size must be odd and positive, got {size}')
    x = np.arange(size, dtype=np.float64) - size // 2
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def separable_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate ``image`` (H, W) with ``kernel`` along both axes; zero padding, same size.

    For a NaN-aware (normalised) filter, filter ``values * weights`` and ``weights`` and divide.
    """
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    r = kernel.size // 2
    out = image
    for axis in (0, 1):
        padded = np.pad(out, [(r, r) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        acc = np.zeros(out.shape, dtype=np.float64)
        for i, k in enumerate(kernel):
            acc += k * (padded[i:i + n] if axis == 0 else padded[:, i:i + n])
        out = acc
    return out


def _minmax(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    lo, hi = x[valid].min(), x[valid].max()
    span = hi - lo
    return (x - lo) / span if span > 0 else np.zeros_like(x)


def ssim(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray] = None, window: int = 7,
         sigma: float = 1.5) -> float:
    """Mean structural similarity of two relative maps (depth, disparity, any affine scale).

    Each map is min-max normalised to [0, 1] over the pixels valid in both (finite, and inside
    ``mask``), so SSIM is invariant to a positive affine change of either map. Local means,
    variances and covariance use a gaussian window (``window`` 7 or 11 pixels, ``sigma``)
    computed NaN-aware: invalid pixels get zero weight and each window is renormalised.
    Constants ``C1 = 0.01^2``, ``C2 = 0.03^2`` (dynamic range 1). Returns the mean SSIM over
    the valid pixels: 1 for identical structure, about 0 for unrelated maps.
    """
    a, b, mask = _check_pair(a, b, mask)
    valid = mask & np.isfinite(a) & np.isfinite(b)
    if valid.sum() < 2:
        raise EvaluationError('SSIM needs at least 2 pixels valid in both maps')
    kernel = gaussian_window(window, sigma)
    weight = valid.astype(np.float64)
    an = np.where(valid, _minmax(a, valid), 0.0)
    bn = np.where(valid, _minmax(b, valid), 0.0)
    norm = separable_filter(weight, kernel)
    norm[norm <= 0] = np.inf

    def local_mean(x):
        return separable_filter(x, kernel) / norm

    mu_a, mu_b = local_mean(an), local_mean(bn)
    var_a = np.maximum(local_mean(an * an) - mu_a ** 2, 0.0)
    var_b = np.maximum(local_mean(bn * bn) - mu_b ** 2, 0.0)
    cov = local_mean(an * bn) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(np.mean(smap[valid]))


def points_to_sparse_gt(uv: np.ndarray, z: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise projected points into a sparse ``(height, width)`` float32 depth map.

    ``uv`` is ``(M, 2)`` pixel coordinates (u right, v down; OpenCV convention, the centre of
    the top-left pixel at (0, 0)); each point goes to the pixel whose centre is nearest.
    ``z`` is ``(M,)`` depth in metres. Where several points hit one pixel the nearest (smallest
    ``z``) is kept; points outside the image or with non-finite / non-positive depth are
    dropped; pixels with no point are NaN.
    """
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    z = np.asarray(z, dtype=np.float64).ravel()
    if uv.shape[0] != z.shape[0]:
        raise EvaluationError(f'uv has {uv.shape[0]} points but z has {z.shape[0]}')
    col = np.floor(uv[:, 0] + 0.5)
    row = np.floor(uv[:, 1] + 0.5)
    with np.errstate(invalid='ignore'):
        keep = (np.isfinite(z) & (z > 0) & (col >= 0) & (col < width)
                & (row >= 0) & (row < height))
    flat = row[keep].astype(np.int64) * width + col[keep].astype(np.int64)
    depth = np.full(height * width, np.inf)
    np.minimum.at(depth, flat, z[keep])
    depth[np.isinf(depth)] = np.nan
    return depth.reshape(height, width).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# File input

def _read_pfm(path: Path) -> np.ndarray:
    with open(path, 'rb') as f:
        header = f.readline().strip()
        if header not in (b'Pf', b'PF'):
            raise EvaluationError(f'{path}: not a PFM file (header {header[:8]!r})')
        dims = f.readline().split()
        while not dims:
            dims = f.readline().split()
        width, height = int(dims[0]), int(dims[1])
        scale = float(f.readline().strip())
        channels = 3 if header == b'PF' else 1
        data = np.frombuffer(f.read(), dtype='<f4' if scale < 0 else '>f4')
    if data.size < width * height * channels:
        raise EvaluationError(f'{path}: PFM data truncated')
    data = data[:width * height * channels].reshape(height, width, channels)[..., 0]
    return np.flipud(data).astype(np.float32)


def load_map(path, scale: float = 0.001) -> np.ndarray:
    """Read a ``(height, width)`` float map from ``.npy``, 16-bit ``.png``, ``.tif`` or ``.pfm``.

    Integer images (16-bit PNG / TIFF) are multiplied by ``scale`` (metres per unit) and 0 is
    read as NaN; float files are returned as stored. Raises :class:`EvaluationError`.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f'{path}: no such file')
    suffix = path.suffix.lower()
    try:
        if suffix == '.npy':
            array = np.load(path, allow_pickle=False)
        elif suffix == '.pfm':
            array = _read_pfm(path)
        elif suffix in ('.png', '.tif', '.tiff'):
            from PIL import Image
            with Image.open(path) as im:
                mode = im.mode
                array = np.asarray(im)
            if mode.startswith('I;16') or mode == 'I':
                raw = array.astype(np.float64)
                array = raw * scale
                array[raw == 0] = np.nan
            elif mode != 'F':
                raise EvaluationError(
                    f'{path}: image mode {mode} cannot hold depth; use a 16-bit PNG/TIFF, a '
                    'float TIFF, .npy or .pfm')
        else:
            raise EvaluationError(
                f'{path}: unsupported format {suffix!r}; use .npy, .png (16-bit), .tif or .pfm')
    except EvaluationError:
        raise
    except (OSError, ValueError) as exc:
        raise EvaluationError(f'{path}: cannot read: {exc}') from exc
    return _as_map(str(path), array).astype(np.float32)


def _frame_ground_truth(folder: Path, height: int, width: int) -> tuple:
    """Ground truth for a real-data frame folder on the prediction's grid, and its source."""
    from depth_node.sample_data import SampleDataError, load_frame

    try:
        frame = load_frame(folder)
    except (SampleDataError, OSError, KeyError, ValueError) as exc:
        raise EvaluationError(f'{folder}: {exc}') from exc
    if frame.depth_gt is not None:
        if frame.depth_gt.shape != (height, width):
            raise EvaluationError(
                f'prediction is {width}x{height} but {folder}/depth_gt.png is '
                f'{frame.width}x{frame.height}; predict at the image size')
        return frame.depth_gt, 'depth_gt.png'
    if frame.lidar is None or frame.T_camera_lidar is None:
        raise EvaluationError(f'{folder}: neither depth_gt.png nor lidar.npy with T_camera_lidar')
    from depth_node.camera_info import CameraInfoError, Intrinsics
    from depth_node.lidar import LidarError, prepare_points

    try:
        camera = Intrinsics(K=frame.K, D=frame.D, distortion_model=frame.distortion_model,
                            width=frame.width, height=frame.height)
        uv, z = prepare_points(frame.lidar[:, :3], frame.T_camera_lidar, camera, width, height)
    except (CameraInfoError, LidarError) as exc:
        raise EvaluationError(f'{folder}: cannot project the scan: {exc}') from exc
    return points_to_sparse_gt(uv, z, height, width), 'lidar.npy projected'


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, report: dict) -> Path:
    """Write ``report`` as strict JSON (NaN and inf become null), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(report), indent=1, allow_nan=False) + '\n')
    return path


def _format_table(metrics: dict) -> str:
    lines = [f'{"metric":<10} {"value":>10}']
    for name in METRIC_NAMES:
        lines.append(f'{name:<10} {metrics[name]:>10.4f}')
    lines.append(f'{"coverage":<10} {metrics["coverage"]:>10.4f}')
    lines.append(f'{"n":<10} {metrics["n"]:>10d}')
    return '\n'.join(lines)


def confidence_report(pred: np.ndarray, gt: np.ndarray, confidence: np.ndarray,
                      mask: np.ndarray, steps: int = 100) -> dict[str, Any]:
    """How well ``confidence`` ((H, W), higher = more trusted, any range; a saved
    ``depth/confidence``) orders the absolute relative error of ``pred`` against ``gt`` (metres)
    on ``mask`` (the valid ground truth where the prediction is usable): the sparsification
    curve, the oracle's, AUSE and the AUSE of a constant confidence (pixels removed at random),
    and their ratio (below 1: the confidence helps; 0: it orders errors perfectly)."""
    from depth_node.quality import ause, sparsification

    if confidence.shape != pred.shape:
        raise EvaluationError(f'confidence is {confidence.shape[1]}x{confidence.shape[0]} but '
                              f'the prediction is {pred.shape[1]}x{pred.shape[0]}')
    with np.errstate(invalid='ignore', divide='ignore'):
        use = mask & np.isfinite(pred) & (pred > 0) & np.isfinite(confidence)
        error = np.where(use, np.abs(pred - gt) / gt, np.nan)
    if use.sum() < 2:
        raise EvaluationError('fewer than 2 pixels have ground truth, a prediction and a '
                              'finite confidence')
    fractions, curve, oracle = sparsification(error, confidence, steps)
    constant = ause(error, np.ones_like(confidence), steps)
    value = ause(error, confidence, steps)
    return {'ause': value, 'ause_constant': constant,
            'ause_ratio': value / constant if constant > 0 else float('nan'),
            'pixels': int(use.sum()), 'fractions': fractions.tolist(),
            'sparsification': curve.tolist(), 'oracle': oracle.tolist()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='depth_node-eval',
        description='Evaluate a depth (or relative disparity) map against ground truth with the '
                    'KITTI / Eigen metrics.')
    parser.add_argument('--pred', required=True, help='prediction: .npy, 16-bit .png, .tif, .pfm')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--gt', help='ground-truth depth in metres: .npy, 16-bit .png, .tif, .pfm')
    source.add_argument('--frame', help='real-data frame folder: depth_gt.png if present, else '
                                        'lidar.npy projected onto the prediction grid')
    parser.add_argument('--pred-kind', choices=('depth', 'disparity'), default='depth',
                        help='depth: metres (default); disparity: relative, needs --oracle')
    parser.add_argument('--oracle', action='store_true',
                        help='align to ground truth first: least squares in disparity for '
                             'disparity, median scaling for depth')
    cap = parser.add_mutually_exclusive_group()
    cap.add_argument('--cap', type=float, help='max ground-truth depth in metres (default 80, '
                                               'or the set preset with --frame)')
    cap.add_argument('--preset', choices=sorted(PRESETS), help='cap preset: outdoor 80, indoor 10')
    parser.add_argument('--min-depth', type=float, default=1e-3, help='min depth, metres')
    parser.add_argument('--gt-scale', type=float, default=0.001,
                        help='metres per unit of 16-bit ground truth (default 0.001)')
    parser.add_argument('--pred-scale', type=float, default=0.001,
                        help='metres per unit of a 16-bit prediction (default 0.001)')
    parser.add_argument('--confidence', help='a per-pixel confidence of the prediction (a saved '
                        'depth/confidence: .npy, .tif, .pfm): its sparsification curve and AUSE '
                        'against the absolute relative error, beside a constant confidence\'s')
    parser.add_argument('--json', help='write the result as JSON to this file')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns 0, or 2 on bad input (message on stderr)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.pred_kind == 'disparity' and not args.oracle:
            raise EvaluationError('a relative disparity has no metric scale; add --oracle to '
                                  'align it to the ground truth (or pass metric depth)')
        pred = load_map(args.pred, args.pred_scale)
        if args.frame is not None:
            folder = Path(args.frame)
            gt, gt_source = _frame_ground_truth(folder, *pred.shape)
            default_cap = cap_for(folder.parent.name)
        else:
            gt = load_map(args.gt, args.gt_scale)
            gt_source = args.gt
            default_cap = PRESETS['outdoor']
        max_depth = (args.cap if args.cap is not None
                     else PRESETS[args.preset] if args.preset else default_cap)
        pred, gt, _ = _check_pair(pred, gt, None)
        with np.errstate(invalid='ignore'):
            eval_mask = np.isfinite(gt) & (gt > args.min_depth) & (gt <= max_depth)
        if not eval_mask.any():
            raise EvaluationError(
                f'no ground-truth pixel in ({args.min_depth}, {max_depth}] m; check --gt-scale '
                'and --cap')
        alignment = 'none'
        if args.oracle and args.pred_kind == 'disparity':
            pred = oracle_align_disparity(pred, gt, eval_mask)
            alignment = 'least squares in disparity (oracle)'
        elif args.oracle:
            pred = oracle_scale_depth(pred, gt, eval_mask)
            alignment = 'median scaling (oracle)'
        metrics = compute_metrics(pred, gt, args.min_depth, max_depth)
        confidence = None
        if args.confidence:
            conf = load_map(args.confidence, 1.0)
            confidence = confidence_report(pred, gt, conf, eval_mask)
    except EvaluationError as exc:
        print(f'depth_node-eval: error: {exc}', file=sys.stderr)
        return 2
    print(f'pred: {args.pred} ({args.pred_kind}), gt: {args.frame or gt_source}'
          f'{" (" + gt_source + ")" if args.frame else ""}')
    print(f'valid gt in ({args.min_depth:g}, {max_depth:g}] m, alignment: {alignment}')
    print(_format_table(metrics))
    if confidence is not None:
        print(f'confidence {args.confidence}: AUSE {confidence["ause"]:.4f} against '
              f'{confidence["ause_constant"]:.4f} for a constant confidence (ratio '
              f'{confidence["ause_ratio"]:.3f}; 0 = the oracle), {confidence["pixels"]} pixels')
    if args.json:
        report = {
            'pred': str(args.pred), 'gt': str(args.frame or args.gt), 'gt_source': gt_source,
            'pred_kind': args.pred_kind, 'alignment': alignment, 'min_depth': args.min_depth,
            'max_depth': max_depth, 'metrics': metrics, 'confidence': confidence,
        }
        try:
            write_json(args.json, report)
        except OSError as exc:
            print(f'depth_node-eval: error: cannot write {args.json}: {exc}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
