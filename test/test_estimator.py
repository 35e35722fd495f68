"""Tests for depth_node.estimator with tiny random models saved to disk (no download)."""

from __future__ import annotations

import logging
from pathlib import Path
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import depth_node.estimator.device as device_module
import depth_node.estimator.postprocess as postprocess_module
from depth_node.estimator import (DEFAULT_MODEL, DepthEstimator, EstimatorError,
                                  RANDOM_WEIGHTS_WARNING, cpu_has_native_bf16, resolve_device,
                                  resolve_dtype)
from depth_node.sample_data import frame_folders, load_frame

# Models whose PIL image processor loads without torchvision, with their frames to compare on.
PROCESSOR_PARITY = ['depth_anything', 'dpt', 'dpt_dinov2_pad', 'glpn', 'zoedepth']


@pytest.fixture(scope='module')
def estimator(tiny_dir):
    """``estimator(kind) -> DepthEstimator`` on CPU, fp32, loaded once per kind."""
    cache: dict[str, DepthEstimator] = {}

    def get(kind: str) -> DepthEstimator:
        if kind not in cache:
            cache[kind] = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32')
        return cache[kind]

    return get


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
    exact = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32',
                           preprocess_backend='pil')
    fast = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32',
                          preprocess_backend='torch')
    std = min(exact.recipe.image_std)
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
        prediction = est.predict(image)
        got = prediction.depth
        assert got.shape == image.shape[:2] and got.dtype == np.float32
        assert np.isfinite(got).all()
        assert float(np.std(got)) > 1e-3 * float(np.abs(got).mean())  # not a constant map
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f'{kind} {name}')
        assert set(prediction.timings) == {'preprocess', 'forward', 'postprocess'}
        assert all(v >= 0 for v in prediction.timings.values())


def test_output_shape_dtype_on_all_sizes(estimator, frames):
    est = estimator('depth_anything')
    for name, image in frames.items():
        depth = est.predict(image).depth
        assert depth.shape == image.shape[:2], name
        assert depth.dtype == np.float32 and depth.flags.c_contiguous
        assert np.isfinite(depth).all()


def test_dpt_centre_padding_is_cropped(estimator, frames):
    est = estimator('dpt_dinov2_pad')
    image = frames['tum']
    assert est.input_size(480, 640) == (384, 544)  # resized 378x504, padded to /32
    depth = est.predict(image).depth
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

    np.testing.assert_allclose(est.predict(image, fx=535.4).depth, expected(535.4), rtol=1e-5)
    fov = float(outputs.field_of_view[0])
    focal_from_fov = 0.5 * width / np.tan(0.5 * np.deg2rad(fov))
    np.testing.assert_allclose(est.predict(image).depth, expected(focal_from_fov), rtol=1e-4)
    with pytest.raises(EstimatorError, match='fx'):
        est.predict(image, fx=-1.0).depth


def test_other_models_ignore_fx(estimator, frames):
    est = estimator('depth_anything_metric')
    image = frames['tum']
    np.testing.assert_array_equal(est.predict(image, fx=500.0).depth, est.predict(image).depth)


def test_bf16_runs_and_is_close_to_fp32(tiny_dir, estimator, frames):
    image = frames['tum']
    fp32 = estimator('depth_anything').predict(image).depth
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='bf16')
    assert est.dtype == torch.bfloat16
    bf16 = est.predict(image).depth
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert float(np.abs(bf16 - fp32).mean()) < 0.05 * float(np.abs(fp32).mean())
    assert np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1] > 0.99


def test_predict_batch_equals_predict(real_data, estimator):
    est = estimator('depth_anything')
    images = [load_frame(p).image for p in frame_folders(real_data / 'tum_rgbd')[:2]]
    batch = est.predict_batch(images).depth
    assert len(batch) == 2
    for image, depth in zip(images, batch):
        np.testing.assert_allclose(depth, est.predict(image).depth, rtol=1e-4, atol=1e-5)
    with pytest.raises(EstimatorError, match='one size'):
        est.predict_batch([images[0], images[0][:200]]).depth
    with pytest.raises(EstimatorError, match='at least one'):
        est.predict_batch([]).depth


@pytest.mark.parametrize('bad', [
    np.zeros((48, 64), np.uint8), np.zeros((48, 64, 4), np.uint8),
    np.zeros((48, 64, 3), np.uint16), [[0, 0, 0]],
])
def test_predict_rejects_non_rgb8(bad, estimator):
    with pytest.raises(EstimatorError, match='uint8 RGB'):
        estimator('depth_anything').predict(bad).depth


def test_warmup_and_upsample_option(tiny_dir):
    """upsample='bilinear' resizes the network's output to the image bilinearly: a grey image
    reaches the network the same at any size, so the prediction of a 80x60 one is the
    prediction at the network's own size (no resize), resized as F.interpolate does; the
    model's default (bicubic) gives something else."""
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', upsample='bilinear')
    assert est.warmup(60, 80, iterations=1) > 0
    net_h, net_w = est.input_size(60, 80)
    assert est.input_size(net_h, net_w) == (net_h, net_w)
    native = torch.from_numpy(est.predict(np.full((net_h, net_w, 3), 120, np.uint8)).depth)

    def resized(mode):
        return F.interpolate(native[None, None], size=(60, 80), mode=mode,
                             align_corners=False)[0, 0].numpy()

    out = est.predict(np.full((60, 80, 3), 120, np.uint8)).depth
    assert out.shape == (60, 80)
    np.testing.assert_allclose(out, resized('bilinear'), rtol=1e-4, atol=1e-6)
    assert np.abs(out - resized('bicubic')).max() > 1e-3   # the two modes are told apart


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


def test_resolve_dtype(monkeypatch):
    monkeypatch.setattr(device_module, 'cuda_has_native_bf16', lambda device: False)
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    expected_auto = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype('auto', cpu) == expected_auto
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


@pytest.mark.parametrize('native', [True, False])
def test_auto_precision_on_cpu_is_bf16_only_with_native_bf16(native, monkeypatch, tiny_dir):
    monkeypatch.setattr(device_module, 'cpu_has_native_bf16', lambda: native)
    monkeypatch.setattr(device_module, 'cuda_has_native_bf16', lambda device: False)
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert resolve_dtype('auto', cpu) == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype(' AUTO ', cpu) == resolve_dtype('auto', cpu)
    assert resolve_dtype('auto', cuda) == torch.float16  # CUDA: unchanged by the CPU's flags
    assert resolve_dtype('fp32', cpu) == torch.float32  # explicit choices are kept
    assert resolve_dtype('bf16', cpu) == torch.bfloat16
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu')
    assert est.dtype == (torch.bfloat16 if native else torch.float32)
    assert all(p.dtype == est.dtype for p in est.model.parameters())
    # The bf16 defaults come with it: channels-last and the SIMD resize; fp32 stays exact.
    assert est.channels_last is native
    assert est.preprocess_backend == ('torch_uint8' if native else 'pil')


@pytest.mark.parametrize('capabilities, native', [
    ({'avx512_f': True, 'avx512_bf16': True, 'amx_bf16': False}, True),   # e.g. AMD Zen 4
    ({'avx512_f': True, 'avx512_bf16': False, 'amx_bf16': True}, True),   # AMX only
    ({'avx512_f': True, 'avx512_bf16': False, 'amx_bf16': False}, False),  # e.g. Skylake-SP
    ({'architecture': 'x86_64', 'avx2': True}, False),
])
def test_cpu_has_native_bf16_reads_torch_capabilities(capabilities, native, monkeypatch):
    monkeypatch.setattr(device_module, '_cpuinfo_flags',
                        lambda: frozenset({'avx512_bf16', 'amx_bf16'}))  # must not be read
    monkeypatch.setattr(torch.cpu, 'get_capabilities', lambda: capabilities)
    assert cpu_has_native_bf16() is native


def test_cpu_has_native_bf16_falls_back_to_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nmodel name\t: AMD EPYC\n'
                       'flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\n'
                       'processor\t: 1\nflags\t\t: fpu\n')
    assert 'avx512_bf16' in device_module._cpuinfo_flags(str(cpuinfo))
    assert device_module._cpuinfo_flags(str(tmp_path / 'missing')) == frozenset()

    def broken():
        raise RuntimeError('cpuinfo failed to initialize')

    monkeypatch.setattr(torch.cpu, 'get_capabilities', broken)
    for flags, native in (({'avx512f', 'avx512_bf16'}, True), ({'amx_bf16'}, True),
                          ({'avx512f', 'avx512_vnni'}, False), (set(), False)):
        monkeypatch.setattr(device_module, '_cpuinfo_flags', lambda f=flags: frozenset(f))
        assert cpu_has_native_bf16() is native, flags
    monkeypatch.delattr(torch.cpu, 'get_capabilities')  # an older torch
    monkeypatch.setattr(device_module, '_cpuinfo_flags', lambda: frozenset({'avx512_bf16'}))
    assert cpu_has_native_bf16() is True


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
    exact = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32',
                           preprocess_backend='pil')
    fast = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32',
                          preprocess_backend='torch_uint8')
    scale = 1 / 255 / min(exact.recipe.image_std) if exact.recipe.do_normalize else 1 / 255
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
        direct = est.preprocessor.run([image], compute=True)
        reference = est.preprocess([image]).to(torch.bfloat16)
    assert direct.dtype == torch.bfloat16
    assert torch.equal(direct, reference)


def test_lookup_same_for_both_memory_formats(estimator, frames):
    est = estimator('depth_anything')
    pixels = torch.from_numpy(frames['tum'][:64, :80].copy()).permute(2, 0, 1)[None]
    assert pixels.is_contiguous(memory_format=torch.channels_last)
    channels_last = est.preprocessor._lookup(pixels, est.preprocessor._table_flat)
    contiguous = est.preprocessor._lookup(pixels.contiguous(), est.preprocessor._table_flat)
    assert torch.equal(channels_last, contiguous)
    manual = est.preprocessor._table[torch.arange(3)[:, None, None], pixels[0].long()]
    assert torch.equal(contiguous[0], manual)


def test_cuda_graphs_is_ignored_off_cuda(tiny_dir, estimator, frames, caplog):
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='fp32',
                             cuda_graphs=True)
    assert not est.cuda_graphs
    assert any('cuda_graphs is ignored' in r.getMessage() for r in caplog.records)
    image = frames['tum']
    np.testing.assert_array_equal(est.predict(image).depth,
                                  estimator('depth_anything').predict(image).depth)


def test_predictions_own_their_memory(estimator, frames):
    est = estimator('depth_anything')
    first = est.predict(frames['tum']).depth
    kept = first.copy()
    second = est.predict(frames['tum'][::-1].copy()).depth
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
    result = est.predict_points(image, K, stride=2, min_depth=0.5, max_depth=60.0)
    depth, xyz = result.depth, result.points
    assert 'cloud' in result.timings
    np.testing.assert_array_equal(depth, est.predict(image).depth)
    expected = depth_to_points(depth, K, stride=2, min_depth=0.5, max_depth=60.0)
    assert xyz.shape == (240, 320, 3) and xyz.dtype == np.float32
    np.testing.assert_array_equal(xyz, expected)  # NaN in the same places
    with pytest.raises(EstimatorError, match='relative disparity'):
        estimator('depth_anything').predict_points(image, K)


def test_depth_to_points_tensor_matches_numpy():
    from depth_node.cloud import CloudError, depth_to_points

    rng = np.random.default_rng(3)
    depth = rng.uniform(-1.0, 30.0, (37, 53)).astype(np.float32)
    depth[::5, ::3] = np.nan
    depth[1, 1] = np.inf
    K = np.array([[40.0, 0.0, 26.0], [0.0, 41.0, 18.5], [0.0, 0.0, 1.0]])
    for stride, lo, hi in ((1, 0.0, float('inf')), (3, 0.5, 20.0)):
        got = depth_to_points(torch.from_numpy(depth), K, stride, lo, hi).numpy()
        np.testing.assert_array_equal(got, depth_to_points(depth, K, stride, lo, hi))
    with pytest.raises(CloudError):
        depth_to_points(torch.zeros(2, 3, 4), K)


def test_cpu_compile_freezes_this_model_only(monkeypatch, tiny_dir):
    """compile=True on CPU: torch.compile with Inductor freezing as per-model options."""
    import torch._inductor.config as inductor_config

    calls = []

    def fake_compile(model, **kwargs):
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, 'compile', fake_compile)
    freezing = inductor_config.freezing
    plain = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='fp32')
    assert calls == [] and not plain.engine.compiled
    assert plain.engine._forward_module is plain.model
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='fp32',
                         compile=True)
    assert est.engine.compiled
    assert calls == [{'options': {'freezing': True}}]
    assert inductor_config.freezing == freezing  # the process-wide config is left alone
    assert est.predict(np.zeros((60, 80, 3), np.uint8)).depth.shape == (60, 80)


@pytest.mark.slow
def test_cpu_compile_with_freezing_matches_eager(tiny_dir, estimator, frames):
    """A real Inductor compile (about 5-20 s): freezing runs, the output stays the same."""
    import torch._inductor.config as inductor_config
    import torch._inductor.freezing as inductor_freezing

    frozen = []
    original = inductor_freezing.freeze

    def spy(*args, **kwargs):
        frozen.append(True)
        return original(*args, **kwargs)

    freezing = inductor_config.freezing
    image = np.ascontiguousarray(frames['tum'][::8, ::8])  # 80x60: a small graph to compile
    eager = estimator('depth_anything').predict(image).depth
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='fp32',
                         compile=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inductor_freezing, 'freeze', spy)
        compiled = est.predict(image).depth
    assert frozen, 'Inductor did not freeze the model'
    assert inductor_config.freezing == freezing
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5 * float(np.abs(eager).max()))


@pytest.mark.parametrize('kind', ['depth_anything', 'dpt'])
def test_cpu_bf16_input_is_the_table_rounded(kind, tiny_dir, frames):
    """The bf16 network input: the exact float32 processor output rounded once, channels-last."""
    est = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='bf16')
    for name in ('tum', 'kitti'):
        image = frames[name]
        with torch.inference_mode():
            direct = est.preprocessor.run([image], compute=True)
            reference = est.preprocess([image]).to(torch.bfloat16)
        assert direct.dtype == torch.bfloat16
        assert direct.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(direct, reference), name


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('shape', [(2, 3, 6, 8), (1, 3, 5, 7), (1, 3, 1, 1)])  # even, odd
def test_host_lookup_pairs_and_single_pixels(dtype, shape, estimator):
    """Two pixels per lookup (even planes) or one (odd, strided): the same table values."""
    est = estimator('depth_anything')
    table = est.preprocessor._table_flat.to(dtype)
    rng = np.random.default_rng(sum(shape))
    values = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
    values[0, :, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    expected = table.view(3, 256)[torch.arange(3)[None, :, None, None], values.long()]
    for layout in (values, values.contiguous(memory_format=torch.channels_last)):
        for channels_last in (False, True):
            got = est.preprocessor._lookup(layout, table, channels_last=channels_last)
            assert got.dtype == dtype and got.shape == values.shape
            assert got.is_contiguous(memory_format=torch.channels_last) is channels_last or \
                shape[-2:] == (1, 1)
            assert torch.equal(got.view(torch.int16) if dtype == torch.bfloat16 else got,
                               expected.view(torch.int16) if dtype == torch.bfloat16
                               else expected)


@pytest.mark.parametrize('mode', ['bicubic', 'bilinear'])
@pytest.mark.parametrize('shape, size', [
    ((518, 924), (720, 1280)), ((518, 686), (480, 640)), ((518, 1708), (370, 1224)),
    ((518, 686), (60, 80)), ((37, 1), (5, 3)), ((1, 9), (1, 9)),
])
def test_separable_resize_equals_interpolate(mode, shape, size):
    from depth_node.estimator.postprocess import _resize_taps, _separable_resize

    rng = np.random.default_rng(sum(shape) + sum(size))
    depth = torch.from_numpy(rng.uniform(0.05, 1.0, (2, 1) + shape).astype(np.float32))
    rows, cols = _resize_taps(shape[0], size[0], mode), _resize_taps(shape[1], size[1], mode)
    assert rows is not None and cols is not None
    got = _separable_resize(depth.to(torch.bfloat16).float(), rows, cols)
    expected = F.interpolate(depth.to(torch.bfloat16).float(), size=size, mode=mode,
                             align_corners=False)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # a few float32 roundings
    # A bf16 input is read as its float32 value (the cast happens in the first copy).
    torch.testing.assert_close(_separable_resize(depth.to(torch.bfloat16), rows, cols), got,
                               rtol=0, atol=0)


def test_separable_resize_crop_and_fallback(estimator, monkeypatch, frames):
    """ZoeDepth's padded resize + crop, and F.interpolate when the taps cannot be trusted."""
    est = estimator('depth_anything')
    depth = torch.from_numpy(np.random.default_rng(5).uniform(1, 2, (1, 1, 40, 50))).float()
    crop = (3, 30, 4, 41)
    full = F.interpolate(depth, size=(36, 49), mode='bicubic', align_corners=False)
    expected = full[..., 3:33, 4:45]
    resize = est.postprocessor.resize
    torch.testing.assert_close(resize(depth, (36, 49), 'bicubic', crop=crop), expected,
                               rtol=0, atol=1e-6)
    image = frames['tum']
    separable = est.predict(image).depth
    monkeypatch.setattr(postprocess_module, '_resize_taps', lambda *args: None)
    torch.testing.assert_close(resize(depth, (36, 49), 'bicubic', crop=crop), expected,
                               rtol=0, atol=0)
    fallback = est.predict(image).depth
    np.testing.assert_allclose(separable, fallback, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(separable, fallback)  # the two paths did run


def test_resize_taps_refuse_a_rule_they_do_not_reproduce(monkeypatch):
    """The read-back weights are checked against F.interpolate; a mismatch means None."""
    from depth_node.estimator.postprocess import _resize_taps

    real = F.interpolate
    calls = []

    def shifted(x, *args, **kwargs):
        calls.append(x.shape)
        out = real(x, *args, **kwargs)
        return out + 0.01 if len(calls) > 1 else out  # the check sees another rule

    monkeypatch.setattr(postprocess_module.F, 'interpolate', shifted)
    _resize_taps.cache_clear()
    try:
        assert _resize_taps(23, 41, 'bicubic') is None
    finally:
        _resize_taps.cache_clear()
