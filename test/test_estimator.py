"""Tests for depth_node.estimator with tiny random models saved to disk (no download)."""

from __future__ import annotations

import logging
from pathlib import Path
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depth_node.estimator import (DEFAULT_MODEL, DepthEstimator, EstimatorError,
                                  RANDOM_WEIGHTS_WARNING, resolve_device, resolve_dtype)
from depth_node.sample_data import frame_folders, load_frame
from tiny_models import (make_tiny_depth_anything, make_tiny_depth_pro, make_tiny_dpt,
                         make_tiny_glpn, make_tiny_zoedepth)

# Real frames of three sizes: TUM 640x480, KITTI 1224x370, nuScenes 1600x900.
FRAMES = {
    'tum': 'tum_rgbd/1341847980.722988',
    'kitti': 'kitti_object/000000',
    'nuscenes': 'nuscenes_mini/CAM_FRONT',
}

BUILDERS = {
    'depth_anything': lambda root: make_tiny_depth_anything(root),
    'depth_anything_metric': lambda root: make_tiny_depth_anything(root, metric=True),
    'dpt': lambda root: make_tiny_dpt(root),
    'dpt_dinov2_pad': lambda root: make_tiny_dpt(root, backbone='dinov2', keep_aspect_ratio=True,
                                                 ensure_multiple_of=14, do_pad=True,
                                                 size_divisor=32),
    'glpn': lambda root: make_tiny_glpn(root),
    'zoedepth': lambda root: make_tiny_zoedepth(root),
    'depth_pro': lambda root: make_tiny_depth_pro(root),
}
# Models whose PIL image processor loads without torchvision, with their frames to compare on.
PROCESSOR_PARITY = ['depth_anything', 'dpt', 'dpt_dinov2_pad', 'glpn', 'zoedepth']


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
    """``tiny_dir(kind) -> Path``: one saved tiny model per kind for this module."""
    root = tmp_path_factory.mktemp('tiny_models')
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = BUILDERS[kind](root)
        return cache[kind]

    return get


@pytest.fixture(scope='module')
def estimator(tiny_dir):
    """``estimator(kind) -> DepthEstimator`` on CPU, fp32, loaded once per kind."""
    cache: dict[str, DepthEstimator] = {}

    def get(kind: str) -> DepthEstimator:
        if kind not in cache:
            cache[kind] = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32')
        return cache[kind]

    return get


@pytest.fixture(scope='module')
def frames(real_data) -> dict[str, np.ndarray]:
    return {key: load_frame(real_data / rel).image for key, rel in FRAMES.items()}


def _reference(model_dir: Path, image: np.ndarray):
    """``(pixel_values, depth)`` from transformers' own processor, model and post-processing."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForDepthEstimation.from_pretrained(model_dir).eval()
    inputs = processor(images=image, return_tensors='pt')
    with torch.inference_mode():
        outputs = model(**inputs)
    size = image.shape[:2]
    if model.config.model_type == 'zoedepth':
        # ZoeDepth's PIL processor post-processes with torchvision, absent here: the same steps
        # (bicubic resize to the padded source size, crop the reflect padding) in torch.
        pad_h, pad_w = int(np.sqrt(size[0] / 2) * 3), int(np.sqrt(size[1] / 2) * 3)
        depth = F.interpolate(outputs.predicted_depth[:, None],
                              size=(size[0] + 2 * pad_h, size[1] + 2 * pad_w), mode='bicubic',
                              align_corners=False)[0, 0, pad_h:-pad_h, pad_w:-pad_w]
    else:
        depth = processor.post_process_depth_estimation(
            outputs, target_sizes=[size])[0]['predicted_depth']
    return inputs['pixel_values'], depth.numpy()


@pytest.mark.parametrize('kind', PROCESSOR_PARITY)
def test_preprocess_bit_exact_with_image_processor(kind, tiny_dir, estimator, frames):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_dir(kind))
    est = estimator(kind)
    assert est.preprocess_backend == 'pil'
    for name, image in frames.items():
        expected = processor(images=image, return_tensors='pt')['pixel_values']
        got = est.preprocess([image])
        assert tuple(got.shape) == tuple(expected.shape), name
        assert tuple(got.shape[-2:]) == est.input_size(*image.shape[:2]), name
        assert got.dtype == torch.float32
        assert torch.equal(got, expected), f'{kind} {name}: {(got - expected).abs().max()}'


@pytest.mark.parametrize('kind', ['depth_anything', 'dpt'])
def test_torch_resize_backend_within_stated_tolerance(kind, tiny_dir, frames):
    """The device-side resize (used on CUDA) against PIL: <= 2 grey levels, very rarely."""
    exact = DepthEstimator(str(tiny_dir(kind)), device='cpu', preprocess_backend='pil')
    fast = DepthEstimator(str(tiny_dir(kind)), device='cpu', preprocess_backend='torch')
    std = min(exact._recipe.image_std)
    for name, image in frames.items():
        diff = (fast.preprocess([image]) - exact.preprocess([image])).abs()
        assert float(diff.max()) <= 2 / 255 / std + 1e-6, name
        assert float(diff.mean()) < 1e-4, name
        assert float((diff > 1e-6).float().mean()) < 1e-3, name


@pytest.mark.parametrize('kind, names', [
    ('depth_anything', ['tum', 'kitti']),
    ('depth_anything_metric', ['tum']),
    ('dpt', ['tum']),
    ('glpn', ['tum']),
    ('zoedepth', ['tum']),
])
def test_predict_matches_transformers_pipeline(kind, names, tiny_dir, estimator, frames):
    est = estimator(kind)
    for name in names:
        image = frames[name]
        _, expected = _reference(tiny_dir(kind), image)
        got = est.predict(image)
        assert got.shape == image.shape[:2] and got.dtype == np.float32
        assert np.isfinite(got).all()
        assert float(np.std(got)) > 1e-3 * float(np.abs(got).mean())  # not a constant map
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f'{kind} {name}')
        assert set(est.last_timings) == {'preprocess', 'forward', 'postprocess'}
        assert all(v >= 0 for v in est.last_timings.values())


def test_output_shape_dtype_on_all_sizes(estimator, frames):
    est = estimator('depth_anything')
    for name, image in frames.items():
        depth = est.predict(image)
        assert depth.shape == image.shape[:2], name
        assert depth.dtype == np.float32 and depth.flags.c_contiguous
        assert np.isfinite(depth).all()


def test_dpt_centre_padding_is_cropped(estimator, frames):
    est = estimator('dpt_dinov2_pad')
    image = frames['tum']
    assert est.input_size(480, 640) == (384, 544)  # resized 378x504, padded to /32
    depth = est.predict(image)
    assert depth.shape == (480, 640) and np.isfinite(depth).all()


@pytest.mark.parametrize('kind, metric', [
    ('depth_anything', False), ('depth_anything_metric', True), ('dpt', False),
    ('glpn', True), ('zoedepth', True), ('depth_pro', True),
])
def test_metric_or_relative_comes_from_the_config(kind, metric, estimator):
    est = estimator(kind)
    assert est.is_metric is metric
    assert est.output_kind == ('metric_depth' if metric else 'relative_disparity')


def test_depth_pro_focal_length_handling(estimator, frames):
    """DepthPro: inverse depth x W / f, bilinear resize, 1 / clamp (its post_process)."""
    est = estimator('depth_pro')
    image = frames['tum']
    height, width = image.shape[:2]
    pixels = est.preprocess([image])
    # Its processor (torchvision only): normalise with mean/std 0.5, then bilinear resize.
    raw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    manual = F.interpolate((raw - 127.5) / 127.5, size=(256, 256), mode='bilinear',
                           align_corners=False)
    torch.testing.assert_close(pixels, manual, rtol=0, atol=1e-6)
    with torch.inference_mode():
        outputs = est.model(pixel_values=pixels)
    inverse = outputs.predicted_depth[:, None]

    def expected(focal):
        scaled = F.interpolate(inverse * width / focal, size=(height, width), mode='bilinear',
                               align_corners=False)
        return (1.0 / torch.clamp(scaled, min=1e-4, max=1e4))[0, 0].numpy()

    np.testing.assert_allclose(est.predict(image, fx=535.4), expected(535.4), rtol=1e-5)
    fov = float(outputs.field_of_view[0])
    focal_from_fov = 0.5 * width / np.tan(0.5 * np.deg2rad(fov))
    np.testing.assert_allclose(est.predict(image), expected(focal_from_fov), rtol=1e-4)
    with pytest.raises(EstimatorError, match='fx'):
        est.predict(image, fx=-1.0)


def test_other_models_ignore_fx(estimator, frames):
    est = estimator('depth_anything_metric')
    image = frames['tum']
    np.testing.assert_array_equal(est.predict(image, fx=500.0), est.predict(image))


def test_bf16_runs_and_is_close_to_fp32(tiny_dir, estimator, frames):
    image = frames['tum']
    fp32 = estimator('depth_anything').predict(image)
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='bf16')
    assert est.dtype == torch.bfloat16
    bf16 = est.predict(image)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert float(np.abs(bf16 - fp32).mean()) < 0.05 * float(np.abs(fp32).mean())
    assert np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1] > 0.99


def test_predict_batch_equals_predict(real_data, estimator):
    est = estimator('depth_anything')
    images = [load_frame(p).image for p in frame_folders(real_data / 'tum_rgbd')[:2]]
    batch = est.predict_batch(images)
    assert len(batch) == 2
    for image, depth in zip(images, batch):
        np.testing.assert_allclose(depth, est.predict(image), rtol=1e-4, atol=1e-5)
    with pytest.raises(EstimatorError, match='one size'):
        est.predict_batch([images[0], images[0][:200]])
    with pytest.raises(EstimatorError, match='at least one'):
        est.predict_batch([])


@pytest.mark.parametrize('bad', [
    np.zeros((48, 64), np.uint8), np.zeros((48, 64, 4), np.uint8),
    np.zeros((48, 64, 3), np.uint16), [[0, 0, 0]],
])
def test_predict_rejects_non_rgb8(bad, estimator):
    with pytest.raises(EstimatorError, match='uint8 RGB'):
        estimator('depth_anything').predict(bad)


def test_warmup_and_upsample_option(tiny_dir):
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', upsample='bilinear')
    assert est._recipe.upsample == 'bilinear'
    assert est.warmup(60, 80, iterations=1) > 0
    assert est.predict(np.zeros((60, 80, 3), np.uint8)).shape == (60, 80)


def test_missing_local_directory_names_the_path(tmp_path):
    missing = tmp_path / 'no_such_model'
    with pytest.raises(EstimatorError) as info:
        DepthEstimator(str(missing), device='cpu')
    assert str(missing) in str(info.value) and 'does not exist' in str(info.value)


def test_local_directory_without_config(tmp_path):
    with pytest.raises(EstimatorError, match='config.json'):
        DepthEstimator(str(tmp_path), device='cpu')


def test_unsupported_model_type(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(EstimatorError, match="'vit' model"):
        DepthEstimator(str(tmp_path), device='cpu')


def test_hub_id_offline_explains_how_to_get_the_model(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')

    def no_network(*args, **kwargs):
        raise AssertionError('the test touched the network')

    monkeypatch.setattr(socket.socket, 'connect', no_network)
    monkeypatch.setattr(socket, 'create_connection', no_network)
    model_id = 'depth-node-tests/not-a-cached-model'
    with pytest.raises(EstimatorError) as info:
        DepthEstimator(model_id, device='cpu')
    message = str(info.value)
    assert model_id in message
    assert 'HF_HUB_OFFLINE' in message and 'not in the local cache' in message
    assert f'hf download {model_id} --local-dir DIR' in message
    assert 'model.name:=DIR' in message


def test_resolve_device():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    for bad in ('gpu', 'cuda:x', '', 'tpu'):
        with pytest.raises(EstimatorError, match='not understood'):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(EstimatorError, match='CUDA is not available'):
            resolve_device('cuda:0')
    else:
        with pytest.raises(EstimatorError, match='visible'):
            resolve_device(f'cuda:{torch.cuda.device_count()}')


def test_resolve_dtype():
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert resolve_dtype('auto', cpu) == torch.float32
    assert resolve_dtype('auto', cuda) == torch.float16
    assert resolve_dtype('fp32', cpu) == torch.float32
    assert resolve_dtype('BF16', cpu) == torch.bfloat16
    with pytest.raises(EstimatorError, match="use 'bf16'"):
        resolve_dtype('fp16', cpu)
    for bad in ('fp8', 'int8', 'double'):
        with pytest.raises(EstimatorError, match='not understood'):
            resolve_dtype(bad, cpu)
    with pytest.raises(EstimatorError, match='not understood'):
        DepthEstimator(DEFAULT_MODEL, device='cpu', precision='float64')


def test_random_init_warns_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        est = DepthEstimator(random_init='depth-anything-v2-small', device='cpu')
    assert any(RANDOM_WEIGHTS_WARNING in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert est.model_name == 'random-init:depth-anything-v2-small'
    assert not est.is_metric and est.output_kind == 'relative_disparity'
    assert est.input_size(480, 640) == (518, 686)
    assert est.input_size(370, 1224) == (518, 1708)  # as DPTImageProcessor: 122 x 14
    assert sum(p.numel() for p in est.model.parameters()) == pytest.approx(24.8e6, rel=0.01)
    with pytest.raises(EstimatorError, match='depth-anything-v2-small'):
        DepthEstimator(random_init='resnet', device='cpu')


def test_cpu_bf16_casts_the_model_and_uses_the_fast_resize(tiny_dir, estimator):
    fp32 = estimator('depth_anything')
    assert fp32.preprocess_backend == 'pil' and not fp32.channels_last
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='bf16')
    assert est.preprocess_backend == 'torch_uint8' and est.channels_last
    assert all(p.dtype == torch.bfloat16 for p in est.model.parameters())
    exact = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='bf16',
                           preprocess_backend='pil', channels_last=False)
    assert exact.preprocess_backend == 'pil' and not exact.channels_last


@pytest.mark.parametrize('kind, levels, fraction', [
    ('depth_anything', 2, 5e-3), ('dpt', 2, 5e-3),
    ('glpn', 1, 0.2),  # bilinear 1224x370 -> 1216x352: 1 level on 13 % (as the float path)
])
def test_torch_uint8_backend_within_stated_tolerance(kind, levels, fraction, tiny_dir, frames):
    """torch's SIMD uint8 resize against PIL, as the module docstring states."""
    exact = DepthEstimator(str(tiny_dir(kind)), device='cpu', preprocess_backend='pil')
    fast = DepthEstimator(str(tiny_dir(kind)), device='cpu', preprocess_backend='torch_uint8')
    scale = 1 / 255 / min(exact._recipe.image_std) if exact._recipe.do_normalize else 1 / 255
    for name, image in frames.items():
        got, expected = fast.preprocess([image]), exact.preprocess([image])
        assert got.dtype == torch.float32 and got.shape == expected.shape
        diff = (got - expected).abs()
        assert float(diff.max()) <= levels * scale + 1e-6, name
        assert float((diff > 1e-6).float().mean()) < fraction, name


def test_compute_dtype_table_equals_cast_float32_values(tiny_dir, frames):
    """The bf16 network input comes straight from a bf16 table: the float32 values, cast."""
    est = DepthEstimator(str(tiny_dir('dpt_dinov2_pad')), device='cpu', precision='bf16')
    image = frames['kitti']
    with torch.inference_mode():
        direct = est._preprocess([image], compute=True)
        reference = est.preprocess([image]).to(torch.bfloat16)
    assert direct.dtype == torch.bfloat16
    assert torch.equal(direct, reference)


def test_lookup_same_for_both_memory_formats(estimator, frames):
    est = estimator('depth_anything')
    pixels = torch.from_numpy(frames['tum'][:64, :80].copy()).permute(2, 0, 1)[None]
    assert pixels.is_contiguous(memory_format=torch.channels_last)
    channels_last = est._lookup(pixels, est._table_flat)
    contiguous = est._lookup(pixels.contiguous(), est._table_flat)
    assert torch.equal(channels_last, contiguous)
    manual = est._table[torch.arange(3)[:, None, None], pixels[0].long()]
    assert torch.equal(contiguous[0], manual)


def test_cuda_graphs_is_ignored_off_cuda(tiny_dir, estimator, frames, caplog):
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', cuda_graphs=True)
    assert not est.cuda_graphs
    assert any('cuda_graphs is ignored' in r.getMessage() for r in caplog.records)
    image = frames['tum']
    np.testing.assert_array_equal(est.predict(image), estimator('depth_anything').predict(image))


def test_predictions_own_their_memory(estimator, frames):
    est = estimator('depth_anything')
    first = est.predict(frames['tum'])
    kept = first.copy()
    second = est.predict(frames['tum'][::-1].copy())
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)


def test_unknown_or_misplaced_preprocess_backend(tiny_dir):
    with pytest.raises(EstimatorError, match='torch_uint8'):
        DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', preprocess_backend='cv2')
    if torch.cuda.is_available():
        with pytest.raises(EstimatorError, match='CPU kernel'):
            DepthEstimator(str(tiny_dir('depth_anything')), device='cuda',
                           preprocess_backend='torch_uint8')


def test_predict_points_equals_host_back_projection(estimator, frames):
    from depth_node.cloud import depth_to_points

    est = estimator('depth_anything_metric')
    image = frames['tum']
    K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
    depth, xyz = est.predict_points(image, K, stride=2, min_depth=0.5, max_depth=60.0)
    assert 'cloud' in est.last_timings
    np.testing.assert_array_equal(depth, est.predict(image))
    expected = depth_to_points(depth, K, stride=2, min_depth=0.5, max_depth=60.0)
    assert xyz.shape == (240, 320, 3) and xyz.dtype == np.float32
    np.testing.assert_array_equal(xyz, expected)  # NaN in the same places
    with pytest.raises(EstimatorError, match='relative disparity'):
        estimator('depth_anything').predict_points(image, K)


def test_depth_to_points_tensor_matches_numpy():
    from depth_node.cloud import CloudError, depth_to_points, depth_to_points_tensor

    rng = np.random.default_rng(3)
    depth = rng.uniform(-1.0, 30.0, (37, 53)).astype(np.float32)
    depth[::5, ::3] = np.nan
    depth[1, 1] = np.inf
    K = np.array([[40.0, 0.0, 26.0], [0.0, 41.0, 18.5], [0.0, 0.0, 1.0]])
    for stride, lo, hi in ((1, 0.0, float('inf')), (3, 0.5, 20.0)):
        got = depth_to_points_tensor(torch.from_numpy(depth), K, stride, lo, hi).numpy()
        np.testing.assert_array_equal(got, depth_to_points(depth, K, stride, lo, hi))
    with pytest.raises(CloudError):
        depth_to_points_tensor(torch.zeros(2, 3, 4), K)

