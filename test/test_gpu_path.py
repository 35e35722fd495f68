"""The GPU path's logic, on the CPU: what can be checked without CUDA is checked here.

Precision defaults per family, bf16 support read from the configured device, the per-shape CUDA
graph bookkeeping and its cap, re-warming a shape on a new thread, batch padding to the
warmed-up sizes, ZoeDepth-NK run frame by frame, the fp32 output layer, non-finite outputs, one
synchronisation per call (counted with a stand-in clock) and sticky CUDA errors. What needs a
GPU is in ``test_gpu.py`` (marker ``gpu``).
"""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import depth_node.estimator.device as device_module
from depth_node.estimator import DepthEstimator, EstimatorError, resolve_dtype
from depth_node.estimator.device import cuda_has_native_bf16, is_device_lost
from depth_node.estimator.engines import torch_engine
from depth_node.estimator.engines.torch_engine import (end_pool_routing, GraphCache,
                                                       keep_output_layer_fp32, ThreadWarmups)
from depth_node.estimator.facade import HostStageClock
from tiny_models import (make_tiny_depth_anything, make_tiny_depth_pro, make_tiny_dpt,
                         make_tiny_glpn, make_tiny_zoedepth)

CUDA = torch.device('cuda', 0)
FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return tmp_path_factory.mktemp('gpu_path_models')


@pytest.fixture(scope='module')
def relative(root):
    return DepthEstimator(str(make_tiny_depth_anything(root)), device='cpu', precision='fp32')


def _images(count: int, seed: int = 0, size=(120, 160)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size + (3,), dtype=np.uint8) for _ in range(count)]


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize('model_type, native, engine, expected', [
    # Depth Anything and Depth Pro: bf16 where the GPU has it, else fp16
    ('depth_anything', True, 'torch', BF16), ('depth_anything', False, 'torch', FP16),
    ('depth_pro', True, 'torch', BF16), ('depth_pro', False, 'torch', FP16),
    # DPT (MiDaS-style) and GLPN overflow fp16: bf16 or fp32
    ('dpt', True, 'torch', BF16), ('dpt', False, 'torch', FP32),
    ('glpn', True, 'torch', BF16), ('glpn', False, 'torch', FP32),
    # ZoeDepth: fp32 always (fp16 overflows, its bins head needs the precision)
    ('zoedepth', True, 'torch', FP32), ('zoedepth', False, 'torch', FP32),
    # the ONNX engines have no bf16 here: the GPU's bf16 does not matter
    ('depth_anything', True, 'onnxruntime', FP16), ('dpt', True, 'tensorrt', FP32),
    ('onnx', True, 'onnxruntime', FP16),
    # a model type the table does not know: never fp16
    ('something_new', True, 'torch', BF16), ('something_new', False, 'torch', FP32),
])
def test_auto_precision_on_cuda_per_family(model_type, native, engine, expected, monkeypatch):
    monkeypatch.setattr(device_module, 'cuda_has_native_bf16', lambda device: native)
    assert resolve_dtype('auto', CUDA, model_type, engine) == expected
    # explicit choices are kept
    assert resolve_dtype('fp32', CUDA, model_type, engine) == FP32
    assert resolve_dtype('fp16', CUDA, model_type, engine) == FP16


def test_bf16_support_is_read_from_the_configured_device(monkeypatch):
    """cuda:0 is a Volta (no native bf16), cuda:1 a Hopper; the current device is cuda:0."""
    majors = {0: 7, 1: 9}
    monkeypatch.setattr(torch.cuda, 'get_device_properties',
                        lambda device: SimpleNamespace(major=majors[torch.device(device).index]))
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Tesla V100')
    first, second = torch.device('cuda', 0), torch.device('cuda', 1)
    assert not cuda_has_native_bf16(first) and cuda_has_native_bf16(second)
    assert resolve_dtype('auto', second, 'dpt') == BF16
    assert resolve_dtype('auto', first, 'dpt') == FP32
    assert resolve_dtype('bf16', second) == BF16
    with pytest.raises(EstimatorError, match="not native on Tesla V100 .cuda:0.*'fp16' or"):
        resolve_dtype('bf16', first)


def test_cuda_auto_default_is_not_fp16_for_families_that_overflow():
    """The table itself: fp16 only where it is known not to overflow."""
    for model_type in ('dpt', 'zoedepth', 'glpn'):
        assert 'fp16' not in device_module.CUDA_AUTO_PRECISION[model_type]


# ------------------------------------------------------------------ fp32 output layer


@pytest.mark.parametrize('builder, layer, size', [
    (lambda root: make_tiny_depth_anything(root, metric=True), 'head.conv3', 224),
    (make_tiny_dpt, 'head.head.4', 384),
    (make_tiny_glpn, 'head.head.2', 224),
    (make_tiny_depth_pro, 'head.layers.4', 256),
])
def test_output_layer_fp32_finds_each_heads_last_layer(builder, layer, size, root):
    from transformers import AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(builder(root)).eval().to(BF16)
    name = keep_output_layer_fp32(model, whole_layer=True)
    assert name == layer
    wrapped = model.get_submodule(name)
    assert all(p.dtype == FP32 for p in wrapped.parameters())
    assert keep_output_layer_fp32(model) == name  # idempotent: not wrapped twice
    assert not isinstance(wrapped.layer, type(wrapped))
    x = torch.rand(1, 3, size, size, dtype=BF16)
    with torch.inference_mode():
        depth = model(pixel_values=x).predicted_depth
    assert depth.dtype == FP32


def test_zoedepth_has_no_output_layer_to_keep(root):
    from transformers import AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(make_tiny_zoedepth(root))
    assert keep_output_layer_fp32(model) is None


def test_metric_output_is_not_rounded_to_bf16(root):
    """CPU bf16: sigmoid * max_depth is computed in fp32 from the head's logit, so the depth
    carries more than bf16's 8 significant bits (in bf16 it would be on bf16's grid)."""
    est = DepthEstimator(str(make_tiny_depth_anything(root, metric=True)), device='cpu',
                         precision='bf16')
    assert est.engine.output_layer_fp32 == 'head.conv3'
    pixels = est.preprocess(_images(1))
    with torch.inference_mode():
        depth, _ = est.engine.run(pixels)
    assert depth.dtype == FP32
    off_grid = depth != depth.to(BF16).to(FP32)
    assert off_grid.float().mean() > 0.5
    # the weights stay bf16 on the CPU: only the layer's one-channel output is cast
    assert all(p.dtype == BF16 for p in est.model.parameters())


# ------------------------------------------------------------------ CUDA graph bookkeeping


def test_graph_cache_caps_and_disables_per_shape(caplog):
    cache = GraphCache(limit=2)
    captures = []

    def capture(key):
        def run():
            captures.append(key)
            if key == 'bad':  # as torch 2.11 words it on an H200, hints and all
                raise FakeAcceleratorError(torch_cuda_message(
                    'CUDA error: operation not permitted when stream is capturing',
                    'cudaErrorStreamCaptureUnsupported'))
            return f'graph {key}'
        return run

    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        assert cache.get('a', capture('a')) == 'graph a'
        assert cache.get('bad', capture('bad')) is None  # failed: eager from now on
        assert cache.get('b', capture('b')) == 'graph b'
        assert cache.get('c', capture('c')) is None  # over the cap
        for _ in range(3):  # decided once: no second capture, no second log line
            assert cache.get('a', capture('a')) == 'graph a'
            assert cache.get('bad', capture('bad')) is None
            assert cache.get('c', capture('c')) is None
    assert captures == ['a', 'bad', 'b']
    assert set(cache.graphs) == {'a', 'b'} and set(cache.eager) == {'bad', 'c'}
    assert 'capture failed' in cache.eager['bad'] and 'cap' in cache.eager['c']
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all('other input shapes keep theirs' in line for line in lines)
    # one line that names the error, without torch's hints
    assert 'operation not permitted when stream is capturing' in lines[0]
    assert '\n' not in lines[0] and 'TORCH_USE_CUDA_DSA' not in lines[0]


def test_graph_cache_raises_sticky_errors():
    """A lost device is not a shape problem: eager would fail the same way."""
    def capture():
        raise RuntimeError('CUDA error: an illegal memory access was encountered')

    cache = GraphCache()
    with pytest.raises(RuntimeError, match='illegal memory access'):
        cache.get('a', capture)
    assert 'a' not in cache.eager


def test_a_failed_capture_s_pool_routing_is_ended_or_captures_stop():
    """torch < 2.12 leaves the pool recording after a failed capture (the next shape's capture
    then failed on an H200): ended here; torch 2.12+'s "not currently recording" is as good;
    anything else, or no binding, says why (the engine then captures no further shape)."""
    calls = []

    def ends(index, pool):
        calls.append((index, pool))

    def already_ended(index, pool):
        raise RuntimeError('endAllocatePool: not currently recording to mempool_id')

    def fails(index, pool):
        raise FakeAcceleratorError(torch_cuda_message('CUDA error: invalid argument',
                                                      'cudaErrorInvalidValue'))

    assert end_pool_routing(ends, 1, (0, 7)) == '' and calls == [(1, (0, 7))]
    assert end_pool_routing(already_ended, 0, (0, 7)) == ''
    why = end_pool_routing(fails, 0, (0, 7))
    assert why == 'ending its memory routing failed: CUDA error: invalid argument'
    assert 'cannot end' in end_pool_routing(None, 0, (0, 7))


def test_thread_warmups_flag_the_first_run_on_another_thread():
    warmups = ThreadWarmups()
    assert not warmups.first_on_this_thread('a')  # where it warmed up
    assert not warmups.first_on_this_thread('a')
    seen = []
    worker = threading.Thread(target=lambda: seen.extend(
        [warmups.first_on_this_thread('a'), warmups.first_on_this_thread('a'),
         warmups.first_on_this_thread('b')]))
    worker.start()
    worker.join()
    assert seen == [True, False, False]  # 'b' ran nowhere before
    assert len(warmups.threads('a')) == 2


def test_shape_is_rewarmed_once_on_a_new_thread(root, caplog):
    """With torch.compile's per-thread CUDA graphs a shape warmed up on one thread is warmed up
    again, once and logged, on the thread that then predicts (torch_engine's rule, exercised
    through the estimator with the flag set on a CPU engine)."""
    est = DepthEstimator(str(make_tiny_depth_anything(root)), device='cpu', precision='fp32')
    est.engine._per_thread_graphs = True
    calls = []
    est.model.register_forward_pre_hook(lambda module, args: calls.append(
        threading.current_thread().name))
    image = _images(1, size=(112, 112))[0]
    est.warmup(112, 112, iterations=1)
    assert calls == ['MainThread']
    results = []
    worker = threading.Thread(target=lambda: results.extend(
        [est.predict(image).depth, est.predict(image).depth]), name='inference')
    with caplog.at_level(logging.INFO, logger='depth_node.estimator'):
        worker.start()
        worker.join()
    assert calls[1:] == ['inference'] * (torch_engine.THREAD_WARMUP_RUNS + 2)
    lines = [r.getMessage() for r in caplog.records if 're-warming' in r.getMessage()]
    assert len(lines) == 1 and 'thread inference' in lines[0]
    np.testing.assert_array_equal(results[0], results[1])


# ------------------------------------------------------------------ batching


def test_batches_are_padded_to_the_warmed_sizes(relative):
    est = DepthEstimator(str(relative.model_name), device='cpu', precision='fp32')
    images = _images(4)
    assert est.padded_batch(2) == 2  # nothing warmed up: no padding
    est.warmup(120, 160, iterations=1, batches=(1, 3))
    assert [est.padded_batch(n) for n in (1, 2, 3, 4)] == [1, 3, 3, 4]
    seen = []
    run = est.engine.run
    est.engine.run = lambda pixel_values: seen.append(pixel_values.shape[0]) or run(pixel_values)
    two = est.predict_batch(images[:2])
    four = est.predict_batch(images)
    assert seen == [3, 4]
    assert two.depth.shape == (2, 120, 160) and four.depth.shape == (4, 120, 160)
    for i in range(2):  # the padding changes nothing in the real frames
        single = relative.predict(images[i]).depth
        np.testing.assert_allclose(two.depth[i], single, rtol=1e-4,
                                   atol=1e-5 * float(np.abs(single).max()))


def test_zoedepth_nk_is_not_batched(root):
    """ZoeDepth-NK's domain vote sums over the batch: here the batched raw output of the
    second frame differs from its own, so predict_batch runs frame by frame."""
    est = DepthEstimator(str(make_tiny_zoedepth(root, nk=True)), device='cpu', precision='fp32')
    assert not est.batch_independent
    images = _images(2)
    images[1] = (images[1] // 8).astype(np.uint8)  # a dark frame that votes the other domain
    with torch.inference_mode():
        pixels = est.preprocess(images)
        both = est.model(pixel_values=pixels).predicted_depth
        alone = est.model(pixel_values=pixels[1:]).predicted_depth[0]
    assert float((both[1] - alone).abs().max()) > 1e-3, 'the tiny NK model stopped coupling'
    seen = []
    run = est.engine.run
    est.engine.run = lambda pixel_values: seen.append(pixel_values.shape[0]) or run(pixel_values)
    batch = est.predict_batch(images)
    assert seen == [1, 1]
    for i, image in enumerate(images):
        np.testing.assert_array_equal(batch.depth[i], est.predict(image).depth)
    single_bins = DepthEstimator(str(make_tiny_zoedepth(root)), device='cpu', precision='fp32')
    assert single_bins.batch_independent


# ------------------------------------------------------------------ one sync, non-finite


class CountingClock(HostStageClock):
    """A stand-in for the CUDA event clock: counts synchronisations and records the marks."""

    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def mark(self, stage: str) -> None:
        self.log.append(stage)
        super().mark(stage)

    def synchronize(self) -> None:
        self.log.append('sync')


def test_one_synchronisation_per_call(root):
    est = DepthEstimator(str(make_tiny_depth_anything(root, metric=True)), device='cpu',
                         precision='fp32')
    log: list = []
    est._new_clock = lambda: CountingClock(log)
    image = _images(1)[0]
    K = np.array([[100.0, 0, 80], [0, 100.0, 60], [0, 0, 1]])

    prediction = est.predict(image)
    assert log == ['preprocess', 'forward', 'postprocess', 'sync']
    assert set(prediction.timings) == {'preprocess', 'forward', 'postprocess'}
    log.clear()
    est.predict_batch(_images(3))
    assert log == ['preprocess', 'forward', 'postprocess', 'sync']
    log.clear()
    points = est.predict_points(image, K, stride=2)
    assert log == ['preprocess', 'forward', 'postprocess', 'cloud', 'sync']
    assert set(points.timings) == {'preprocess', 'forward', 'postprocess', 'cloud'}
    log.clear()
    clouds = [None, {'K': K, 'stride': 2, 'min_depth': 0.0, 'max_depth': 80.0}]
    batch = est.predict_batch(_images(2), clouds=clouds)
    assert log == ['preprocess', 'forward', 'postprocess', 'cloud', 'sync']
    assert batch.points[0] is None and batch.points[1].shape == (60, 80, 3)
    from depth_node.cloud import depth_to_points

    np.testing.assert_allclose(batch.points[1], depth_to_points(batch.depth[1], K, stride=2),
                               rtol=1e-6, equal_nan=True)


def test_clouds_need_one_entry_per_image_and_a_metric_model(relative):
    with pytest.raises(EstimatorError, match='one entry per image'):
        relative.predict_batch(_images(2), clouds=[None])
    with pytest.raises(EstimatorError, match='relative disparity'):
        relative.predict_batch(_images(1), clouds=[{'K': np.eye(3)}])


def test_non_finite_outputs_are_counted_and_nan(relative):
    """An overflowed frame (inf and NaN in the raw output) is counted and its non-finite pixels
    are NaN, never inf; the other frames of the batch are untouched."""
    images = _images(3)
    clean = relative.predict_batch(images)
    assert clean.non_finite == 0
    run = relative.engine.run

    def overflowing(pixel_values):
        depth, fov = run(pixel_values)
        depth = depth.clone()
        depth[1, :5] = float('inf')
        depth[1, 5:7] = float('nan')
        return depth, fov

    relative.engine.run = overflowing
    try:
        broken = relative.predict_batch(images)
    finally:
        del relative.engine.run
    assert broken.non_finite == 1
    assert not np.isinf(broken.depth).any()
    assert np.isnan(broken.depth[1]).any()
    np.testing.assert_array_equal(broken.depth[[0, 2]], clean.depth[[0, 2]])


# ------------------------------------------------------------------ sticky CUDA errors


class FakeAcceleratorError(RuntimeError):
    """Stands in for torch.AcceleratorError on a machine without CUDA."""


def torch_cuda_message(first_line: str, code: str) -> str:
    """A CUDA error as torch 2.11 words it: the error, then the hints it appends to every one
    (copied from an H200's log, where the hint "device-side assertions" once made every CUDA
    error read as sticky)."""
    return (f'{first_line}\nSearch for `{code}\' in https://docs.nvidia.com/cuda/'
            'cuda-runtime-api/group__CUDART__TYPES.html for more information.\nCUDA kernel errors '
            'might be asynchronously reported at some other API call, so the stacktrace below '
            'might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n'
            'Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n')


@pytest.mark.parametrize('exc, sticky', [
    (FakeAcceleratorError('CUDA error: an illegal memory access was encountered'), True),
    (RuntimeError('CUDA error: device-side assert triggered\nCUDA kernel errors might be '
                  'asynchronously reported'), True),
    (RuntimeError('CUDA error: unspecified launch failure'), True),
    (RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB'), False),
    (RuntimeError('operation not permitted when stream is capturing'), False),
    (FakeAcceleratorError(torch_cuda_message(
        'CUDA error: operation not permitted when stream is capturing',
        'cudaErrorStreamCaptureUnsupported')), False),
    (FakeAcceleratorError(torch_cuda_message('CUDA error: invalid argument',
                                             'cudaErrorInvalidValue')), False),
    (FakeAcceleratorError(torch_cuda_message('CUDA error: device-side assert triggered',
                                             'cudaErrorAssert')), True),
    (FakeAcceleratorError(torch_cuda_message('CUDA error: unspecified launch failure',
                                             'cudaErrorLaunchFailure')), True),
    (ValueError('illegal memory access'), False),  # not an error torch raises for CUDA
    (EstimatorError('forward failed with torch.compile on'), False),
])
def test_sticky_cuda_errors_are_told_apart(exc, sticky):
    assert is_device_lost(exc) is sticky


def test_sticky_error_is_found_behind_a_wrapping_error():
    try:
        try:
            raise FakeAcceleratorError('CUDA error: an illegal memory access was encountered')
        except RuntimeError as inner:
            raise EstimatorError('forward failed with torch.compile on') from inner
    except EstimatorError as outer:
        assert is_device_lost(outer)
