"""Depth prompts (depth_node.prompt) and Prompt Depth Anything in the estimator, ROS-free.

A tiny random Prompt Depth Anything (:func:`tiny_slow_models.make_tiny_prompt_depth_anything`)
is compared with what transformers itself does with the same image and prompt.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from depth_node.estimator import DepthEstimator, EstimatorError
from depth_node.image_codec import ImageDecodeError
from depth_node import prompt as pr
from tiny_models import make_tiny_depth_anything, textured_image
from tiny_slow_models import make_tiny_prompt_depth_anything


@pytest.fixture(scope='module')
def pda_folder(tmp_path_factory):
    return str(make_tiny_prompt_depth_anything(tmp_path_factory.mktemp('pda')))


@pytest.fixture(scope='module')
def pda(pda_folder):
    return DepthEstimator(pda_folder, device='cpu', precision='fp32', engine='auto')


@pytest.fixture(scope='module')
def frame():
    return textured_image(48, 80, top=200, noise=50, seed=4)


def _mm_prompt(rows: int = 12, cols: int = 20) -> np.ndarray:
    """A hole-free 16UC1 depth map in millimetres: a slanted plane from 1.2 m to 3.4 m."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    return (1200 + 100 * xx + 20 * yy).astype(np.uint16)


def _reference(folder: str, image: np.ndarray, prompt_mm: np.ndarray) -> dict:
    """What transformers does: its processor on the image and the millimetre prompt (its
    default prompt_scale_to_meter 0.001), the model, post_process_depth_estimation."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    inputs = processor(images=[image], prompt_depth=[prompt_mm.astype(np.float32)],
                       return_tensors='pt')
    with torch.no_grad():
        outputs = model(**inputs)
    depth = processor.post_process_depth_estimation(
        outputs, target_sizes=[image.shape[:2]])[0]['predicted_depth']
    return {'pixel_values': inputs['pixel_values'], 'prompt_depth': inputs['prompt_depth'],
            'depth': depth.numpy()}


# ----------------------------------------------------------------- the estimator


def test_parity_with_the_image_processor_image_and_prompt(pda, pda_folder, frame):
    """A 16UC1 prompt message decoded to metres gives the network the image processor's
    inputs (image and prompt), and the estimator the model's own output."""
    mm = _mm_prompt()
    metres = pr.decode_prompt_image('16UC1', *mm.shape, mm.shape[1] * 2, False, mm.tobytes())
    assert metres.dtype == np.float32
    np.testing.assert_allclose(metres, mm / 1000.0, rtol=1e-6)
    ref = _reference(pda_folder, frame, mm)
    torch.testing.assert_close(pda.preprocess([frame]), ref['pixel_values'], rtol=0, atol=1e-6)
    torch.testing.assert_close(pda.preprocess_prompt([metres]), ref['prompt_depth'],
                               rtol=1e-6, atol=1e-7)
    prediction = pda.predict(frame, prompt=metres)
    assert prediction.no_prompt == 0 and prediction.depth.shape == (48, 80)
    np.testing.assert_allclose(prediction.depth, ref['depth'], rtol=1e-5, atol=1e-5)
    # metric: within the prompt's range (the model maps its output back with min and max)
    assert 1.2 - 1e-3 <= prediction.depth.min() and prediction.depth.max() <= 3.52 + 1e-3
    assert np.ptp(prediction.depth) > 0.01
    # a 32FC1 prompt in metres is the same prompt
    as_float = pr.decode_prompt_image('32FC1', *mm.shape, mm.shape[1] * 4, False,
                                      (mm / 1000.0).astype(np.float32).tobytes())
    np.testing.assert_allclose(pda.predict(frame, prompt=as_float).depth, prediction.depth,
                               rtol=1e-5, atol=1e-5)


def test_holes_are_filled_before_the_network(pda, pda_folder, frame):
    """NaN / zero cells would become the prompt's minimum (0 m) in the network's min-max
    normalisation; filled, the output keeps the measured scale."""
    mm = _mm_prompt()
    holed = (mm / 1000.0).astype(np.float32)
    holed[2:7, 3:9] = np.nan
    holed[0, :] = 0.0
    depth = pda.predict(frame, prompt=holed).depth
    assert np.isfinite(depth).all()
    assert depth.min() >= 1.2 - 1e-3 and depth.max() <= 3.52 + 1e-3
    # what the zeros would do in the model's own pipeline: the scale starts at 0 m, the
    # output falls below every measurement (1.2 m)
    zeros = np.where(np.isfinite(holed), holed, 0.0) * 1000.0
    ruined = _reference(pda_folder, frame, zeros)['depth']
    assert ruined.min() < 1.2 - 0.05
    # the filled prompt reaches the network: valid cells exact, no hole left
    tensor = pda.preprocess_prompt([holed])[0, 0].numpy()
    valid = pr.valid_mask(holed)
    np.testing.assert_array_equal(tensor[valid], holed[valid])
    assert (tensor > 0).all() and np.isfinite(tensor).all()


def test_without_a_prompt_no_output_and_counted(pda, frame):
    prediction = pda.predict(frame)
    assert prediction.no_prompt == 1 and np.isnan(prediction.depth).all()
    good = (_mm_prompt() / 1000.0).astype(np.float32)
    batch = pda.predict_batch([frame, frame], prompts=[None, good])
    assert batch.no_prompt == 1 and np.isnan(batch.depth[0]).all()
    np.testing.assert_allclose(batch.depth[1], pda.predict(frame, prompt=good).depth,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(EstimatorError, match='no valid value'):
        pda.predict(frame, prompt=np.full((12, 20), np.nan, np.float32))


def test_prompt_model_is_metric_torch_only(pda, pda_folder, tmp_path):
    assert (pda.output_kind, pda.is_metric, pda.takes_prompt) == ('metric_depth', True, True)
    assert pda.engine.name == 'torch'
    assert any('depth prompt' in note and 'torch only' in note for note in pda.startup_notes)
    for engine in ('onnxruntime', 'openvino'):
        with pytest.raises(EstimatorError, match="use model.engine 'torch' or 'auto'"):
            DepthEstimator(pda_folder, device='cpu', engine=engine)
    with pytest.raises(EstimatorError, match='outputs metres, scaled by its depth prompt'):
        DepthEstimator(pda_folder, device='cpu', kind='relative_disparity')
    # a relative-head checkpoint is metric too: the prompt gives the scale
    relative_head = make_tiny_prompt_depth_anything(tmp_path, depth_estimation_type='relative')
    assert DepthEstimator(str(relative_head), device='cpu').is_metric
    plain = DepthEstimator(str(make_tiny_depth_anything(tmp_path)), device='cpu')
    assert plain.takes_prompt is False
    with pytest.raises(EstimatorError, match='takes no depth prompt'):
        plain.predict(np.zeros((28, 28, 3), np.uint8), prompt=np.ones((4, 4), np.float32))


# ----------------------------------------------------------------- depth_node.prompt


def test_prompt_grid_keeps_aspect_and_never_upsamples():
    assert pr.prompt_grid(480, 640, 256) == (192, 256)
    assert pr.prompt_grid(720, 1280, 256) == (144, 256)
    assert pr.prompt_grid(100, 50, 256) == (100, 50)
    assert pr.prompt_grid(1, 4000, 256) == (1, 256)


def test_block_mean_of_valid_pixels():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 5, (31, 45)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.3] = np.nan
    depth[0, 0] = 0.0
    depth[4:13, 9:27] = np.nan  # some blocks entirely empty
    rows, cols = 7, 10
    out = pr.block_mean(depth, (rows, cols))
    for i in range(rows):
        for j in range(cols):
            block = depth[i * 31 // rows:(i + 1) * 31 // rows, j * 45 // cols:(j + 1) * 45 // cols]
            good = block[np.isfinite(block) & (block > 0)]
            if good.size:
                assert out[i, j] == pytest.approx(good.mean(), rel=1e-6)
            else:
                assert np.isnan(out[i, j])
    assert np.isnan(out).any()


def test_depth_image_prompt_registered_and_refused():
    depth = np.full((480, 640), 2.0, np.float32)
    depth[:, :320] = np.nan
    prompt = pr.from_depth_image(depth, (480, 640), 256)
    assert prompt.shape == (192, 256)
    assert pr.coverage(prompt) == pytest.approx(0.5)
    assert pr.from_depth_image(depth, (240, 320), 64).shape == (48, 64)  # any same-view size
    with pytest.raises(pr.PromptError, match='different aspect ratio'):
        pr.from_depth_image(depth, (720, 1280), 256)
    with pytest.raises(ImageDecodeError, match='16UC1 .millimetres. or 32FC1'):
        pr.decode_prompt_image('mono8', 2, 2, 2, False, bytes(4))
    floats = np.array([[1.0, np.nan], [-1.0, np.inf]], np.float32)
    decoded = pr.decode_prompt_image('32FC1', 2, 2, 8, False, floats.tobytes())
    assert decoded[0, 0] == 1.0 and np.isnan(decoded.ravel()[1:]).all()


def test_lidar_prompt_keeps_the_nearest_point_per_cell():
    uv = np.array([[0.0, 0.0], [1.0, 1.0], [639.0, 479.0], [320.2, 240.7], [321.0, 241.0]])
    z = np.array([4.0, 3.0, 9.0, 2.5, 2.0], np.float32)
    prompt = pr.from_lidar(uv, z, (480, 640), 64)
    assert prompt.shape == (48, 64)
    assert prompt[0, 0] == 3.0       # two points in one cell: the nearer
    assert prompt[47, 63] == 9.0
    assert prompt[24, 32] == 2.0
    assert np.isfinite(prompt).sum() == 3
    assert pr.coverage(prompt) == pytest.approx(3 / (48 * 64))


def test_fill_holes_push_pull():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:48, 0:64]
    plane = (1.0 + 0.05 * xx + 0.02 * yy).astype(np.float32)
    sparse = np.full_like(plane, np.nan)
    keep = rng.random(plane.shape) < 0.08  # LiDAR-like coverage
    sparse[keep] = plane[keep]
    sparse[30:46, 40:62] = np.nan           # and one large hole
    filled = pr.fill_holes(sparse)
    assert filled.dtype == np.float32 and np.isfinite(filled).all() and (filled > 0).all()
    valid = pr.valid_mask(sparse)
    np.testing.assert_array_equal(filled[valid], sparse[valid])
    # holes take values of their neighbourhood: within the valid range, near the plane
    assert filled.min() >= np.nanmin(sparse) and filled.max() <= np.nanmax(sparse)
    assert np.median(np.abs(filled - plane) / plane) < 0.1
    one = np.full((5, 7), np.nan, np.float32)
    one[2, 3] = 1.5
    np.testing.assert_array_equal(pr.fill_holes(one), np.full((5, 7), 1.5, np.float32))
    with pytest.raises(pr.PromptError, match='no valid value'):
        pr.fill_holes(np.zeros((4, 4), np.float32))


def test_coverage_threshold_and_pairing_states():
    prompt = np.full((10, 10), np.nan, np.float32)
    prompt[:2] = 2.0  # 20 %
    ok = pr.check_prompt(prompt, 10.0, 10.05, 0.1, 0.1)
    assert ok.state == 'ok' and ok.prompt is prompt and ok.coverage == pytest.approx(0.2)
    assert ok.time_offset == pytest.approx(0.05)
    low = pr.check_prompt(prompt, 10.0, 10.0, 0.1, 0.25)
    assert low.state == 'low_coverage' and low.prompt is None and '20.0 %' in low.reason
    stale = pr.check_prompt(prompt, 10.0, 10.3, 0.1, 0.1, what='prompt_depth')
    assert stale.state == 'stale' and 'prompt_depth' in stale.reason
    missing = pr.check_prompt(None, 10.0, math.nan, 0.1, 0.1)
    assert missing.state == 'missing' and math.isnan(missing.coverage)
    empty = pr.check_prompt(np.full((4, 4), np.nan, np.float32), 1.0, 1.0, 0.1, 0.0)
    assert empty.state == 'low_coverage'  # nothing valid is never enough


def test_agreement_is_the_median_relative_error():
    prompt = np.full((12, 16), np.nan, np.float32)
    prompt[::2, ::3] = np.linspace(1, 4, prompt[::2, ::3].size).reshape(prompt[::2, ::3].shape)
    depth = np.repeat(np.repeat(prompt, 5, axis=0), 5, axis=1)
    depth = np.where(np.isfinite(depth), depth, 7.0).astype(np.float32)
    assert pr.agreement(depth, prompt) == pytest.approx(0.0, abs=1e-6)
    assert pr.agreement(depth * 1.1, prompt) == pytest.approx(0.1, rel=1e-5)
    assert math.isnan(pr.agreement(depth, np.full((12, 16), np.nan, np.float32)))


def test_prompt_for_frame_lidar_states():
    """The LiDAR source's per-frame states without ROS: missing, stale, no camera_info, no
    transform, then ok with the scan's points gridded."""
    from depth_node.camera_info import intrinsics_from_fields
    from synthetic_scene import HEIGHT, K, T_CAMERA_LIDAR, WIDTH, plate_and_wall

    scene = plate_and_wall(step=0.01)
    intr = intrinsics_from_fields(WIDTH, HEIGHT, K.ravel(), [0.0] * 5, 'plumb_bob', [0.0] * 12,
                                  [0.0] * 9)
    common = dict(max_time_offset=0.1, min_coverage=0.05, max_side=32)
    scans = [(5.0, 'lidar', scene.points_lidar)]

    def run(stamp, **kwargs):
        args = dict(common, scans=scans, intrinsics=intr, transform=lambda _: T_CAMERA_LIDAR)
        args.update(kwargs)
        return pr.prompt_for_frame('lidar', stamp, (HEIGHT, WIDTH), **args)

    assert run(5.0, scans=())[0].state == 'missing'
    assert run(5.5)[0].state == 'stale'
    check, _ = run(5.0, intrinsics=None)
    assert check.state == 'bad' and 'camera_info' in check.reason
    check, _ = run(5.0, transform=lambda _: None)
    assert check.state == 'bad' and "'lidar'" in check.reason
    check, projected = run(5.05)
    assert check.state == 'ok' and projected > 0 and check.prompt.shape == (24, 32)
    assert np.nanmin(check.prompt) == pytest.approx(2.0, abs=1e-3)  # the plate
    assert np.nanmax(check.prompt) == pytest.approx(6.0, abs=1e-3)  # the wall
    with pytest.raises(pr.PromptError, match='not .depth_image. or .lidar.'):
        pr.prompt_for_frame('stereo', 5.0, (HEIGHT, WIDTH), **common)


def test_frame_pipeline_with_a_depth_prompt_without_ros(pda, pda_folder, frame, tmp_path):
    """FramePipeline (as the bag tool would run it, on message-like objects): a paired prompt
    gives metric depth and a prompt report; no prompt gives a prompt_missing problem and no
    depth; a prompt.source that does not suit the model is refused."""
    from types import SimpleNamespace

    from depth_node import config as cfg
    from depth_node.frame_pipeline import FramePipeline

    def msg(array, encoding, sec):
        a = np.ascontiguousarray(array)
        header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=0), frame_id='cam')
        return SimpleNamespace(header=header, height=a.shape[0], width=a.shape[1],
                               encoding=encoding, is_bigendian=0, step=a.strides[0],
                               data=a.view(np.uint8).reshape(-1))

    config = cfg.validate_values({'model.name': pda_folder, 'prompt.source': 'depth_image',
                                  'prompt.max_side': 16,
                                  'filter.edges': False})  # compared pixel for pixel
    pipe = FramePipeline(config, pda)
    state = pipe.new_camera()
    assert state.aligner is None
    mm = np.tile(np.linspace(1500, 2500, 40, dtype=np.float32), (24, 1)).astype(np.uint16)
    images = [pr.prompt_from_message(msg(mm, '16UC1', 3), 16)]
    results = {}
    for sec in (3, 9):  # paired; then 6 s from the prompt: stale
        seen = []
        f = pipe.decode('image', msg(frame, 'rgb8', sec))
        pipe.pair_prompt(f, state, images)
        assert pipe.forward([f], [state], [False]).error is None
        out = pipe.finish(f, state, {'depth'}, lambda key, value: seen.append(key))
        results[sec] = (f, out, seen)
    f, out, seen = results[3]  # (no camera_info here: depth images only)
    assert seen == ['alignment', 'problem', 'depth'], seen
    assert out.values['alignment'].check.state == 'ok'
    assert [p.key for p in out.problems] == ['no_camera_info']
    np.testing.assert_allclose(out.values['depth'],
                               pda.predict(frame, prompt=images[0].grid).depth, rtol=1e-5,
                               atol=1e-5)
    f, out, seen = results[9]
    assert seen == ['alignment', 'problem'] and 'depth' not in out.values  # nothing else
    assert [p.key for p in out.problems] == ['prompt_stale']
    with pytest.raises(cfg.ConfigError, match='takes no depth prompt'):
        FramePipeline(config, DepthEstimator(str(make_tiny_depth_anything(tmp_path)),
                                             device='cpu'))
