"""Tests for depth_node.evaluate: metrics, oracle alignments, SSIM, sparse ground truth, CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from depth_node.evaluate import (
    EvaluationError, affine_lstsq, cap_for, compute_metrics, load_map, main,
    oracle_align_disparity, oracle_scale_depth, points_to_sparse_gt, ssim)

REPO_ROOT = Path(__file__).resolve().parents[1]

# A small fixture with every case: good pixels, NaN / zero / negative / inf predictions,
# NaN / too-far / too-near ground truth, and predictions outside the cap (clipped).
GT = np.array([[2.0, 4.0, 8.0, np.nan],
               [1.0, 90.0, 3.0, 5.0],
               [0.0005, 10.0, 20.0, 40.0]])
PRED = np.array([[2.5, 3.0, 8.0, 1.0],
                 [np.nan, 50.0, 3.3, -1.0],
                 [1.0, 100.0, 0.0, np.inf]])


def reference_metrics(pred, gt, min_depth, max_depth):
    """Straightforward per-pixel loop over the KITTI / Eigen definitions."""
    rows = []
    n_gt = 0
    for p, g in zip(np.ravel(pred), np.ravel(gt)):
        if not (math.isfinite(g) and min_depth < g <= max_depth):
            continue
        n_gt += 1
        if not (math.isfinite(p) and p > 0):
            continue
        rows.append((min(max(p, min_depth), max_depth), g))
    n = len(rows)
    abs_rel = sum(abs(p - g) / g for p, g in rows) / n
    sq_rel = sum((p - g) ** 2 / g for p, g in rows) / n
    rmse = math.sqrt(sum((p - g) ** 2 for p, g in rows) / n)
    logs = [math.log(p) - math.log(g) for p, g in rows]
    rmse_log = math.sqrt(sum(e * e for e in logs) / n)
    silog = 100 * math.sqrt(sum(e * e for e in logs) / n - (sum(logs) / n) ** 2)
    deltas = [sum(1 for p, g in rows if max(p / g, g / p) < 1.25 ** k) / n for k in (1, 2, 3)]
    return dict(abs_rel=abs_rel, sq_rel=sq_rel, rmse=rmse, rmse_log=rmse_log, silog=silog,
                delta1=deltas[0], delta2=deltas[1], delta3=deltas[2], n=n, n_gt=n_gt,
                coverage=n / n_gt)


def smooth_map(height=48, width=64, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    base = 3.0 + 3.0 * x + 1.5 * np.sin(4 * y + rng.uniform(0, 3)) + 0.5 * np.cos(7 * x * y)
    return base.astype(np.float64)


@pytest.mark.parametrize('max_depth', [80.0, 10.0])
def test_metrics_match_reference_loop(max_depth):
    got = compute_metrics(PRED, GT, min_depth=1e-3, max_depth=max_depth)
    want = reference_metrics(PRED, GT, 1e-3, max_depth)
    assert set(want) <= set(got)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_metrics_on_random_maps_match_reference_loop():
    rng = np.random.default_rng(3)
    gt = rng.uniform(0.5, 100.0, (7, 9))
    pred = gt * rng.uniform(0.6, 1.5, gt.shape)
    gt[rng.random(gt.shape) < 0.2] = np.nan
    pred[rng.random(gt.shape) < 0.1] = np.nan
    got = compute_metrics(pred, gt, min_depth=1.0, max_depth=80.0)
    want = reference_metrics(pred, gt, 1.0, 80.0)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_perfect_prediction():
    gt = smooth_map()
    m = compute_metrics(gt.copy(), gt)
    assert m['abs_rel'] == 0.0
    assert m['sq_rel'] == 0.0
    assert m['rmse'] == 0.0
    assert m['silog'] == pytest.approx(0.0, abs=1e-9)
    assert m['delta1'] == 1.0
    assert m['coverage'] == 1.0
    assert m['n'] == gt.size


def test_constant_scale_error():
    gt = smooth_map()
    m = compute_metrics(1.1 * gt, gt)
    assert m['abs_rel'] == pytest.approx(0.1)
    # A global scale is a constant log error: scale-invariant SILog is zero.
    assert m['silog'] == pytest.approx(0.0, abs=1e-6)
    assert m['rmse_log'] == pytest.approx(math.log(1.1))
    assert m['delta1'] == 1.0


def test_nan_prediction_lowers_coverage_not_metrics():
    gt = smooth_map()
    pred = 1.2 * gt
    pred[:12] = np.nan  # a quarter of the rows missing
    m = compute_metrics(pred, gt)
    assert m['coverage'] == pytest.approx(0.75)
    assert m['n'] == int(0.75 * gt.size)
    assert m['n_gt'] == gt.size
    assert m['abs_rel'] == pytest.approx(0.2)


def test_cap_excludes_far_ground_truth_and_clips_prediction():
    gt = np.array([[5.0, 50.0, 90.0]])
    pred = np.array([[5.0, 200.0, 90.0]])
    m = compute_metrics(pred, gt, max_depth=80.0)
    assert m['n_gt'] == 2  # 90 m is beyond the cap
    assert m['abs_rel'] == pytest.approx((0 + 30 / 50) / 2)  # 200 m clipped to 80 m
    unclipped = compute_metrics(pred, gt, max_depth=80.0, clip_pred=False)
    assert unclipped['abs_rel'] == pytest.approx((0 + 150 / 50) / 2)
    indoor = compute_metrics(pred, gt, max_depth=cap_for('tum_rgbd'))
    assert indoor['n_gt'] == 1


def test_mask_restricts_evaluation():
    gt = smooth_map()
    pred = gt.copy()
    pred[:, :10] *= 2.0
    mask = np.zeros(gt.shape, dtype=bool)
    mask[:, 10:] = True
    assert compute_metrics(pred, gt, mask=mask)['abs_rel'] == 0.0
    assert compute_metrics(pred, gt)['abs_rel'] > 0.1


def test_no_valid_pixels_gives_nan_not_error():
    gt = np.full((4, 4), np.nan)
    m = compute_metrics(np.ones((4, 4)), gt)
    assert m['n'] == 0 and math.isnan(m['abs_rel']) and math.isnan(m['coverage'])
    m = compute_metrics(np.full((4, 4), np.nan), np.ones((4, 4)))
    assert m['n'] == 0 and m['coverage'] == 0.0 and math.isnan(m['delta1'])


def test_shape_mismatch_and_bad_range_raise():
    with pytest.raises(EvaluationError, match='resize'):
        compute_metrics(np.ones((4, 5)), np.ones((5, 4)))
    with pytest.raises(EvaluationError):
        compute_metrics(np.ones((4, 4)), np.ones((4, 4)), min_depth=10.0, max_depth=5.0)
    with pytest.raises(EvaluationError):
        compute_metrics(np.ones((2, 3, 4)), np.ones((2, 3, 4)))


def test_cap_for_presets():
    assert cap_for('kitti_object') == 80.0
    assert cap_for('nuscenes_mini') == 80.0
    assert cap_for('tum_rgbd') == 10.0
    assert cap_for('tum_rgbd/1341847980.722988') == 10.0
    assert cap_for('NYUv2') == 10.0
    assert cap_for('indoor') == 10.0
    assert cap_for('outdoor') == 80.0
    assert cap_for('autumn_drive') == 80.0  # 'tum' inside a word is not TUM
    assert cap_for('diode_indoor') == 10.0


def test_oracle_recovers_known_disparity_affine_exactly():
    rng = np.random.default_rng(1)
    gt = rng.uniform(1.0, 60.0, (30, 40))
    pred = 37.5 * (1.0 / gt) + 0.8  # relative disparity: unknown scale and shift
    gt_sparse = gt.copy()
    gt_sparse[rng.random(gt.shape) < 0.5] = np.nan  # NaN ground truth is ignored
    depth = oracle_align_disparity(pred, gt_sparse)
    assert depth.shape == gt.shape and depth.dtype == np.float32
    np.testing.assert_allclose(depth, gt, rtol=1e-5)
    assert compute_metrics(depth, gt)['abs_rel'] < 1e-5
    assert affine_lstsq(pred.ravel(), 1.0 / gt.ravel()) == pytest.approx((1 / 37.5, -0.8 / 37.5))


def test_oracle_uses_only_the_mask_and_marks_negative_disparity_nan():
    rng = np.random.default_rng(2)
    gt = rng.uniform(2.0, 30.0, (20, 20))
    pred = 5.0 / gt - 0.1
    corrupted = gt.copy()
    corrupted[:, :5] = 1000.0  # wrong ground truth, excluded by the mask
    mask = np.ones(gt.shape, dtype=bool)
    mask[:, :5] = False
    depth = oracle_align_disparity(pred, corrupted, mask)
    np.testing.assert_allclose(depth, gt, rtol=1e-5)
    pred[0, 0] = -100.0  # aligned disparity <= 0 has no depth
    assert np.isnan(oracle_align_disparity(pred, corrupted, mask)[0, 0])


def test_affine_fit_rejects_degenerate_input():
    with pytest.raises(EvaluationError):
        affine_lstsq(np.ones(10), np.arange(10.0))
    with pytest.raises(EvaluationError):
        affine_lstsq(np.array([1.0]), np.array([2.0]))


@pytest.mark.parametrize('method', ['median', 'lstsq'])
def test_oracle_scale_depth(method):
    gt = smooth_map()
    pred = 0.37 * gt
    pred[0, 0] = np.nan
    out = oracle_scale_depth(pred, gt, method=method)
    assert np.isnan(out[0, 0])
    np.testing.assert_allclose(out[1:], gt[1:], rtol=1e-6)
    with pytest.raises(EvaluationError):
        oracle_scale_depth(pred, gt, method='mean')


def test_ssim_identical_affine_noise():
    a = smooth_map(seed=4)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    assert ssim(a, 3.7 * a - 12.0) == pytest.approx(1.0, abs=1e-6)
    assert ssim(a, 3.7 * a - 12.0, window=11) == pytest.approx(1.0, abs=1e-6)
    noise = np.random.default_rng(5).random(a.shape)
    assert ssim(a, noise) < 0.1
    slightly_noisy = a + 0.01 * np.ptp(a) * np.random.default_rng(6).standard_normal(a.shape)
    assert 0.5 < ssim(a, slightly_noisy) < 1.0


def test_ssim_is_nan_aware():
    a = smooth_map(seed=7)
    b = a.copy()
    b[10:20, 10:30] = np.nan
    assert ssim(a, b) == pytest.approx(1.0, abs=1e-9)
    mask = np.zeros(a.shape, dtype=bool)
    mask[:, :32] = True
    c = a.copy()
    c[:, 32:] = np.random.default_rng(8).random((a.shape[0], a.shape[1] - 32))
    assert ssim(a, c, mask=mask) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(EvaluationError):
        ssim(a, np.full(a.shape, np.nan))


def test_points_to_sparse_gt_keeps_nearest_and_rounds_to_pixel_centres():
    uv = np.array([[1.49, 0.0], [1.51, 0.0], [1.6, 0.2], [-0.6, 0.0], [3.0, 2.4], [0.0, 0.0],
                   [2.0, 1.0]])
    z = np.array([5.0, 7.0, 6.0, 1.0, 4.0, np.nan, -1.0])
    gt = points_to_sparse_gt(uv, z, height=3, width=4)
    assert gt.dtype == np.float32 and gt.shape == (3, 4)
    assert gt[0, 1] == 5.0
    assert gt[0, 2] == 6.0  # two points on one pixel: the nearest is kept
    assert gt[2, 3] == 4.0
    assert np.isnan(gt[0, 0])  # NaN depth dropped; (-0.6, 0) rounds to column -1: outside
    assert np.isnan(gt[1, 2])  # negative depth dropped
    assert np.count_nonzero(np.isfinite(gt)) == 3
    with pytest.raises(EvaluationError):
        points_to_sparse_gt(uv, z[:3], 3, 4)


def test_load_map_formats(tmp_path):
    from PIL import Image

    raw = np.array([[0, 1000, 2500], [65535, 1, 40]], dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / 'd.png')
    depth = load_map(tmp_path / 'd.png', scale=0.001)
    assert np.isnan(depth[0, 0])
    np.testing.assert_allclose(depth[np.isfinite(depth)], raw[raw > 0] * 0.001, rtol=1e-6)

    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    header = b'Pf\n4 3\n-1.0\n'
    (tmp_path / 'd.pfm').write_bytes(header + np.flipud(values).astype('<f4').tobytes())
    np.testing.assert_array_equal(load_map(tmp_path / 'd.pfm'), values)

    Image.fromarray(values).save(tmp_path / 'd.tif')
    np.testing.assert_array_equal(load_map(tmp_path / 'd.tif'), values)

    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / 'rgb8.png')
    with pytest.raises(EvaluationError, match='16-bit'):
        load_map(tmp_path / 'rgb8.png')
    with pytest.raises(EvaluationError, match='no such file'):
        load_map(tmp_path / 'missing.npy')
    (tmp_path / 'x.jpg').write_bytes(b'')
    with pytest.raises(EvaluationError, match='unsupported'):
        load_map(tmp_path / 'x.jpg')


def test_cli_writes_json(tmp_path, capsys):
    gt = smooth_map() * 3.0
    np.save(tmp_path / 'gt.npy', gt)
    np.save(tmp_path / 'pred.npy', 1.1 * gt)
    out = tmp_path / 'res' / 'metrics.json'
    rc = main(['--pred', str(tmp_path / 'pred.npy'), '--gt', str(tmp_path / 'gt.npy'),
               '--json', str(out)])
    assert rc == 0
    assert 'abs_rel' in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report['max_depth'] == 80.0
    assert report['metrics']['abs_rel'] == pytest.approx(0.1, rel=1e-5)
    assert report['metrics']['coverage'] == 1.0

    rc = main(['--pred', str(tmp_path / 'pred.npy'), '--gt', str(tmp_path / 'gt.npy'),
               '--oracle', '--json', str(out)])
    assert rc == 0
    assert json.loads(out.read_text())['metrics']['abs_rel'] < 1e-6


def test_write_json_is_strict(tmp_path):
    from depth_node.evaluate import write_json

    path = write_json(tmp_path / 'a' / 'b.json', {'x': math.nan, 'y': [1.0, math.inf], 'n': 3})
    assert json.loads(path.read_text()) == {'x': None, 'y': [1.0, None], 'n': 3}


def test_cli_oracle_disparity_and_cap(tmp_path):
    gt = smooth_map()  # 1 to 8 m
    gt[0, :5] = 50.0  # beyond the indoor cap
    np.save(tmp_path / 'gt.npy', gt)
    np.save(tmp_path / 'disp.npy', 12.0 / gt + 3.0)
    out = tmp_path / 'm.json'
    rc = main(['--pred', str(tmp_path / 'disp.npy'), '--gt', str(tmp_path / 'gt.npy'),
               '--pred-kind', 'disparity', '--oracle', '--preset', 'indoor', '--json', str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report['max_depth'] == 10.0
    assert report['metrics']['n_gt'] == gt.size - 5
    assert report['metrics']['abs_rel'] < 1e-5
    assert report['metrics']['delta1'] == 1.0


def test_cli_bad_input_exits_2(tmp_path, capsys):
    np.save(tmp_path / 'a.npy', np.ones((4, 5)))
    np.save(tmp_path / 'b.npy', np.ones((5, 4)))
    assert main(['--pred', str(tmp_path / 'a.npy'), '--gt', str(tmp_path / 'b.npy')]) == 2
    assert 'resize' in capsys.readouterr().err
    assert main(['--pred', str(tmp_path / 'a.npy'), '--gt', str(tmp_path / 'a.npy'),
                 '--pred-kind', 'disparity']) == 2
    assert '--oracle' in capsys.readouterr().err
    assert main(['--pred', str(tmp_path / 'missing.npy'), '--gt', str(tmp_path / 'a.npy')]) == 2
    assert 'no such file' in capsys.readouterr().err
    np.save(tmp_path / 'far.npy', np.full((4, 5), 500.0))
    assert main(['--pred', str(tmp_path / 'a.npy'), '--gt', str(tmp_path / 'far.npy')]) == 2
    assert '--cap' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: --gt or --frame is required
        main(['--pred', str(tmp_path / 'a.npy')])
    assert exc.value.code == 2


def test_python_m_entry_point(tmp_path):
    gt = smooth_map()
    np.save(tmp_path / 'gt.npy', gt)
    np.save(tmp_path / 'pred.npy', 0.9 * gt)
    out = tmp_path / 'o.json'
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run(
        [sys.executable, '-m', 'depth_node.evaluate', '--pred', str(tmp_path / 'pred.npy'),
         '--gt', str(tmp_path / 'gt.npy'), '--json', str(out)],
        capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())['metrics']['abs_rel'] == pytest.approx(0.1, rel=1e-5)
    bad = subprocess.run(
        [sys.executable, '-m', 'depth_node.evaluate', '--pred', str(tmp_path / 'none.npy'),
         '--gt', str(tmp_path / 'gt.npy')], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and 'error' in bad.stderr


def test_cli_frame_with_dense_depth(real_data, tmp_path):
    folder = sorted((real_data / 'tum_rgbd').iterdir())[0]
    from depth_node.sample_data import load_frame

    gt = load_frame(folder).depth_gt
    np.save(tmp_path / 'pred.npy', np.nan_to_num(gt, nan=1.0) * 1.05)
    out = tmp_path / 'f.json'
    assert main(['--pred', str(tmp_path / 'pred.npy'), '--frame', str(folder),
                 '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    assert report['gt_source'] == 'depth_gt.png'
    assert report['max_depth'] == 10.0  # tum_rgbd is indoor
    assert report['metrics']['abs_rel'] == pytest.approx(0.05, rel=1e-4)
    np.save(tmp_path / 'small.npy', np.ones((10, 10)))
    assert main(['--pred', str(tmp_path / 'small.npy'), '--frame', str(folder)]) == 2


def test_cli_frame_with_lidar(real_data, tmp_path):
    """A prediction at half resolution is scored against the scan projected onto its grid:
    the scan rasterised here (nearest point per pixel) times 0.9 scores abs_rel 0.1 and
    delta1 1 on every pixel with ground truth."""
    lidar = pytest.importorskip('depth_node.lidar')
    from depth_node.camera_info import Intrinsics
    from depth_node.sample_data import load_frame

    folder = real_data / 'kitti_object' / '000000'
    frame = load_frame(folder)
    cam = Intrinsics(frame.K, frame.D, frame.distortion_model, frame.width,
                     frame.height).scaled(612, 185)
    uv, z, _ = lidar.project_points(
        lidar.transform_points(frame.T_camera_lidar, frame.lidar[:, :3]), cam)
    raster = np.full(185 * 612, np.inf)
    np.minimum.at(raster, (np.floor(uv[:, 1] + 0.5).astype(int) * 612 +
                           np.floor(uv[:, 0] + 0.5).astype(int)), z)
    raster[np.isinf(raster)] = np.nan
    np.save(tmp_path / 'pred.npy', (0.9 * raster).reshape(185, 612).astype(np.float32))
    out = tmp_path / 'l.json'
    assert main(['--pred', str(tmp_path / 'pred.npy'), '--frame', str(folder),
                 '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    assert report['gt_source'] == 'lidar.npy projected'
    assert report['max_depth'] == 80.0
    metrics = report['metrics']
    # the occlusion filter drops a few percent of the pixels (see test_lidar)
    in_range = int(np.count_nonzero(raster <= 80.0))
    assert 0.85 * in_range <= metrics['n'] <= in_range
    assert metrics['coverage'] == 1.0
    assert metrics['abs_rel'] == pytest.approx(0.1, abs=1e-5)
    assert metrics['delta1'] == 1.0


def test_cli_scores_a_confidence_by_ause(tmp_path, capsys):
    """--confidence: a confidence that knows where the prediction is wrong has a small AUSE
    against a constant's; an inverted one a larger; the curve goes to the JSON."""
    gt = smooth_map() * 3.0
    rng = np.random.default_rng(0)
    error = np.abs(rng.normal(0.0, 0.1, gt.shape))
    np.save(tmp_path / 'gt.npy', gt)
    np.save(tmp_path / 'pred.npy', gt * (1 + error))
    ratios = {}
    for name, conf in (('good', 1.0 / (1.0 + error)), ('inverted', error)):
        np.save(tmp_path / f'{name}.npy', conf.astype(np.float32))
        out = tmp_path / f'{name}.json'
        assert main(['--pred', str(tmp_path / 'pred.npy'), '--gt', str(tmp_path / 'gt.npy'),
                     '--confidence', str(tmp_path / f'{name}.npy'), '--json', str(out)]) == 0
        report = json.loads(out.read_text())['confidence']
        assert len(report['sparsification']) == len(report['oracle']) == 100
        ratios[name] = report['ause_ratio']
    assert ratios['good'] < 0.05 and ratios['inverted'] > 1.5, ratios
    assert 'AUSE' in capsys.readouterr().out
    np.save(tmp_path / 'small.npy', np.ones((2, 2), np.float32))
    assert main(['--pred', str(tmp_path / 'pred.npy'), '--gt', str(tmp_path / 'gt.npy'),
                 '--confidence', str(tmp_path / 'small.npy')]) == 2
