"""The GPU path on a real GPU (marker ``gpu``; skipped where CUDA is not available).

Run with ``python -m pytest -m gpu -q test/test_gpu.py`` (``bench/gpu_check.sh`` does, then runs
the GPU benchmarks). Needs no network, no ROS and no shared data: the architectures are built
with random weights (``random_init``) or from ``tiny_models``; the frames are the two in
``sample_data/``. What is checked:

- torch on CUDA against the CPU (fp32), per family; ONNX Runtime's CUDA provider against its
  CPU provider and TensorRT fp16 against fp32 where they are installed;
- device preprocessing against the CPU path, 640x480 to 1920x1200;
- CUDA graphs against eager, and that their output follows the input, batch 1, 2 and 3, on
  ``cuda:1`` too when there are two GPUs;
- warm-up on one thread and prediction on another, raw graphs and compile + reduce-overhead;
- a forced capture failure followed by correct frames on the default stream, and other shapes
  keeping their graphs;
- per family fp16 and bf16 against fp32: no non-finite values, relative error within a stated
  bound;
- the engines of issue 24 (``test_engine_*``, a step of their own in ``gpu_check.sh``): the
  startup self-check on each GPU engine and precision (its printed errors are the GPU column of
  the README's tolerances), TensorRT with a dynamic-shape ONNX (profile, outputs sized from the
  context, plans under the cache keyed by file and shape, its own stream), an fp16-input graph's
  dtypes, ``cuda:1``, ONNX Runtime's TensorRT provider cache per model, a plain fp32 ONNX with
  precision auto on the CUDA provider (symbolic output shapes).

The CPU-testable logic of the same path is in ``test_gpu_path.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
import threading

import numpy as np
import pytest
import torch

from depth_node.estimator import DepthEstimator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason='needs CUDA (a CUDA build of torch and a GPU)'),
]

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / 'sample_data'
SMALL = 'depth-anything-v2-small'
SMALL_METRIC = 'depth-anything-v2-small-metric'


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """Mean absolute difference relative to the mean magnitude of ``want``."""
    return float(np.mean(np.abs(got - want)) / max(float(np.mean(np.abs(want))), 1e-12))


@pytest.fixture(scope='module')
def frames() -> dict[str, np.ndarray]:
    """Real frames at 640x480, 1280x720 and 1920x1200 (resized with PIL from the samples)."""
    from PIL import Image

    from depth_node.sample_data import load_frame

    tum = load_frame(SAMPLES / 'tum_rgbd_1341847980.722988').image
    wide = load_frame(SAMPLES / 'pjlab_distorted_autov2').image
    hd = np.asarray(Image.fromarray(wide).resize((1280, 720), Image.BILINEAR))
    return {'640x480': tum, '1280x720': hd, '1920x1200': np.ascontiguousarray(wide)}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """``tiny(kind) -> str``: a tiny saved model; skips when this transformers cannot build it."""
    root = tmp_path_factory.mktemp('gpu_tiny')
    cache: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in cache:
            try:
                import tiny_models as tm

                builders = {
                    'depth_anything': lambda: tm.make_tiny_depth_anything(root),
                    'depth_anything_metric': lambda: tm.make_tiny_depth_anything(root,
                                                                                 metric=True),
                    'dpt': lambda: tm.make_tiny_dpt(root),
                    'glpn': lambda: tm.make_tiny_glpn(root),
                    'zoedepth': lambda: tm.make_tiny_zoedepth(root),
                    'zoedepth_nk': lambda: tm.make_tiny_zoedepth(root, nk=True),
                    'depth_pro': lambda: tm.make_tiny_depth_pro(root),
                }
                cache[kind] = str(builders[kind]())
            except ImportError as exc:
                pytest.skip(f'this transformers cannot build the tiny {kind}: {exc}')
        return cache[kind]

    return get


def _devices() -> list[str]:
    return ['cuda:0'] + (['cuda:1'] if torch.cuda.device_count() > 1 else [])


FAMILIES = ['depth_anything', 'depth_anything_metric', 'dpt', 'glpn', 'zoedepth', 'depth_pro']


# ------------------------------------------------------------------ parity with the CPU


@pytest.mark.parametrize('kind', FAMILIES)
def test_torch_cuda_fp32_matches_cpu(kind, tiny, frames):
    """fp32 on CUDA (TF32 matmuls and convolutions) against fp32 on the CPU."""
    cpu = DepthEstimator(tiny(kind), device='cpu', precision='fp32')
    gpu = DepthEstimator(tiny(kind), device='cuda', precision='fp32')
    image = frames['640x480']
    want, got = cpu.predict(image).depth, gpu.predict(image).depth
    assert np.isfinite(got).all()
    error = _rel_error(got, want)
    print(f'{kind}: CUDA fp32 (TF32) vs CPU fp32 mean relative error {error:.2e}')
    assert error < 1e-2


@pytest.mark.parametrize('size', ['640x480', '1280x720', '1920x1200'])
@pytest.mark.parametrize('kind', ['depth_anything', 'dpt', 'zoedepth'])
def test_device_preprocessing_matches_the_cpu_path(kind, size, tiny, frames):
    """The uint8 frame resized on the GPU (backend 'torch') against PIL on the CPU (bit-exact
    with the image processor): at most 2 grey levels, on at most 0.1 % of the values."""
    image = frames[size]
    cpu = DepthEstimator(tiny(kind), device='cpu', precision='fp32', preprocess_backend='pil')
    gpu = DepthEstimator(tiny(kind), device='cuda', precision='fp32')
    assert gpu.preprocess_backend == 'torch'
    want = cpu.preprocess([image])
    got = gpu.preprocess([image]).cpu()
    assert got.shape == want.shape
    std = torch.tensor(cpu.recipe.image_std if cpu.recipe.do_normalize else (1.0,) * 3)
    scale = 255.0 * cpu.recipe.rescale_factor if cpu.recipe.do_rescale else 1.0
    levels = ((got - want).abs() * std.view(1, 3, 1, 1) / scale * 255.0).round()
    off = float((levels > 0).float().mean())
    print(f'{kind} {size}: max {float(levels.max()):.0f} levels, {off:.4%} of values off')
    assert float(levels.max()) <= 2 and off <= 1e-3


def test_onnxruntime_cuda_matches_cpu(tiny, frames, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        pytest.skip(f'onnxruntime {ort.__version__} has no CUDA provider')
    name = tiny('depth_anything')
    image = frames['640x480']
    cpu = DepthEstimator(name, device='cpu', precision='fp32', engine='onnxruntime',
                         cache_dir=str(tmp_path))
    want = cpu.predict(image).depth
    for precision, bound in (('fp32', 1e-3), ('fp16', 2e-2)):
        gpu = DepthEstimator(name, device='cuda', precision=precision, engine='onnxruntime',
                             providers=['CUDAExecutionProvider'], cache_dir=str(tmp_path))
        got = gpu.predict(image).depth
        error = _rel_error(got, want)
        print(f'onnxruntime CUDA {precision} vs CPU fp32: {error:.2e}')
        assert np.isfinite(got).all() and error < bound


def test_tensorrt_fp16_close_to_fp32(tiny, frames, tmp_path):
    """TensorRT keeps LayerNorm in fp16 and warns; its fp16 output must stay within 2 % (mean
    relative) of its own fp32 and of torch fp32."""
    pytest.importorskip('tensorrt')
    name = tiny('depth_anything')
    image = frames['640x480']
    torch32 = DepthEstimator(name, device='cuda', precision='fp32').predict(image).depth
    trt32 = DepthEstimator(name, device='cuda', precision='fp32', engine='tensorrt',
                           cache_dir=str(tmp_path)).predict(image).depth
    trt16 = DepthEstimator(name, device='cuda', precision='fp16', engine='tensorrt',
                           cache_dir=str(tmp_path)).predict(image).depth
    print(f'tensorrt fp32 vs torch fp32 {_rel_error(trt32, torch32):.2e}, '
          f'fp16 vs fp32 {_rel_error(trt16, trt32):.2e}')
    assert _rel_error(trt32, torch32) < 1e-2
    assert np.isfinite(trt16).all() and _rel_error(trt16, trt32) < 2e-2


# ------------------------------------------------------------------ CUDA graphs


@pytest.mark.parametrize('device', _devices())
def test_cuda_graphs_equal_eager_and_follow_the_input(device, frames):
    """Batch 1, 2 and 3: a graph's output equals eager's and changes with the input (an empty
    graph, captured on the wrong device, would replay the warm-up's output forever)."""
    eager = DepthEstimator(random_init=SMALL, device=device, precision='fp16',
                           cuda_graphs='off')
    graphed = DepthEstimator(random_init=SMALL, device=device, precision='fp16',
                             cuda_graphs=True)
    images = [frames['640x480'], frames['640x480'][:, ::-1].copy(),
              np.ascontiguousarray(frames['640x480'][::-1])]
    for batch in (1, 2, 3):
        graphed.warmup(480, 640, iterations=1, batches=(batch,))
        first = graphed.predict_batch(images[:batch]).depth
        second = graphed.predict_batch((images[1:] + images[:1])[:batch]).depth
        assert not np.allclose(first, second), f'batch {batch}: the graph ignores its input'
        want = eager.predict_batch(images[:batch]).depth
        error = _rel_error(first, want)
        print(f'{device} batch {batch}: graph vs eager {error:.2e}')
        assert error < 1e-3
    engine = graphed.engine
    assert not engine.graphs.eager, engine.graphs.eager
    assert len(engine.graphs.graphs) == 3
    assert torch.cuda.current_stream(torch.device(device)) == \
        torch.cuda.default_stream(torch.device(device))


def test_graphs_warmed_on_one_thread_replay_on_another(frames):
    est = DepthEstimator(random_init=SMALL, device='cuda', precision='fp16', cuda_graphs=True)
    eager = DepthEstimator(random_init=SMALL, device='cuda', precision='fp16',
                           cuda_graphs='off')
    est.warmup(480, 640, iterations=2)
    captured = len(est.engine.graphs.graphs)
    image = frames['640x480']
    out = []
    worker = threading.Thread(target=lambda: out.extend(
        est.predict(im).depth for im in (image, image[:, ::-1].copy())))
    worker.start()
    worker.join()
    assert len(est.engine.graphs.graphs) == captured  # replayed, not captured again
    assert _rel_error(out[0], eager.predict(image).depth) < 1e-3
    assert _rel_error(out[1], eager.predict(image[:, ::-1].copy()).depth) < 1e-3


def test_compile_reduce_overhead_warmed_on_one_thread_predicts_on_another(tiny, frames,
                                                                          caplog):
    """torch.compile's CUDA graph trees are per thread: the shape is re-warmed on the worker
    (one log line) and its frames are correct. (The tiny model: compiling V2-Small takes
    minutes.)"""
    est = DepthEstimator(tiny('depth_anything'), device='cuda', precision='fp16',
                         cuda_graphs=True, compile=True)
    eager = DepthEstimator(tiny('depth_anything'), device='cuda', precision='fp16',
                           cuda_graphs='off')
    est.warmup(480, 640, iterations=3)
    image = frames['640x480']
    flipped = image[:, ::-1].copy()
    out = []
    with caplog.at_level(logging.INFO, logger='depth_node.estimator'):
        worker = threading.Thread(target=lambda: out.extend(
            est.predict(im).depth for im in (image, flipped, image)))
        worker.start()
        worker.join()
    assert sum('re-warming' in r.getMessage() for r in caplog.records) == 1
    assert _rel_error(out[0], eager.predict(image).depth) < 2e-2
    assert _rel_error(out[1], eager.predict(flipped).depth) < 2e-2
    np.testing.assert_allclose(out[2], out[0], rtol=1e-3, atol=1e-3)


def test_failed_capture_leaves_the_default_stream_and_other_shapes_graphed(frames, caplog):
    """A capture that fails (here: a host read inside the forward, as ZoeDepth's ``.item()``)
    leaves the worker on its default stream, that shape runs eagerly and correctly, and the
    next shape still gets its graph."""
    est = DepthEstimator(random_init=SMALL, device='cuda', precision='fp16', cuda_graphs=True)
    eager = DepthEstimator(random_init=SMALL, device='cuda', precision='fp16',
                           cuda_graphs='off')
    failures = {'left': 1}

    def host_read(module, args, output):
        if torch.cuda.is_current_stream_capturing() and failures['left']:
            failures['left'] -= 1
            output.predicted_depth.sum().item()  # not allowed while capturing

    handle = est.model.register_forward_hook(host_read)
    image = frames['640x480']
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        first = est.predict(image).depth
    assert any('capture failed' in r.getMessage() for r in caplog.records)
    device = est.device
    assert torch.cuda.current_stream(device) == torch.cuda.default_stream(device)
    for im in (image, image[:, ::-1].copy()):
        assert _rel_error(est.predict(im).depth, eager.predict(im).depth) < 1e-3
    assert _rel_error(first, eager.predict(image).depth) < 1e-3
    assert len(est.engine.graphs.eager) == 1 and not est.engine.graphs.graphs
    small = frames['640x480'][:240, :320].copy()  # another shape: captured normally
    got = est.predict(small).depth
    handle.remove()
    assert len(est.engine.graphs.graphs) == 1
    assert _rel_error(got, eager.predict(small).depth) < 1e-3


def test_zoedepth_nk_batch_equals_frames_on_cuda(tiny, frames):
    est = DepthEstimator(tiny('zoedepth_nk'), device='cuda', precision='fp32')
    images = [frames['640x480'], (frames['640x480'] // 8).astype(np.uint8)]
    batch = est.predict_batch(images).depth
    for i, image in enumerate(images):
        np.testing.assert_allclose(batch[i], est.predict(image).depth, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize('precision, bound', [('fp16', 2e-2), ('bf16', 5e-2)])
@pytest.mark.parametrize('kind', FAMILIES)
def test_reduced_precision_against_fp32(kind, precision, bound, tiny, frames):
    """No non-finite values and a mean relative error within ``bound`` (random tiny weights:
    the overflow of real DPT / ZoeDepth weights in fp16 is why 'auto' avoids it for them)."""
    if precision == 'bf16' and torch.cuda.get_device_properties(0).major < 8:
        pytest.skip('no native bf16 on this GPU')
    image = frames['640x480']
    reference = DepthEstimator(tiny(kind), device='cuda', precision='fp32').predict(image).depth
    prediction = DepthEstimator(tiny(kind), device='cuda', precision=precision).predict(image)
    assert prediction.non_finite == 0 and np.isfinite(prediction.depth).all()
    error = _rel_error(prediction.depth, reference)
    print(f'{kind} {precision} vs fp32: mean relative error {error:.2e}')
    assert error < bound


def test_auto_precision_and_fp32_head_on_this_gpu(tiny):
    native = torch.cuda.get_device_properties(0).major >= 8
    est = DepthEstimator(tiny('depth_anything_metric'), device='cuda')
    assert est.dtype == (torch.bfloat16 if native else torch.float16)
    assert est.engine.output_layer_fp32 == 'head.conv3'
    assert all(p.dtype == torch.float32 for p in est.model.head.conv3.parameters())
    zoe = DepthEstimator(tiny('zoedepth'), device='cuda')
    assert zoe.dtype == torch.float32


def test_stage_timings_come_from_events(frames):
    est = DepthEstimator(random_init=SMALL_METRIC, device='cuda', precision='fp16')
    est.warmup(480, 640, iterations=1)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    prediction = est.predict_points(frames['640x480'], K, stride=2)
    assert set(prediction.timings) == {'preprocess', 'forward', 'postprocess', 'cloud'}
    assert all(0 < t < 1.0 for t in prediction.timings.values()), prediction.timings
    assert prediction.points.shape == (240, 320, 3)


# ------------------------------------------------------------------ engines (issue 24)
# Named test_engine_*: bench/gpu_check.sh runs them in a step of their own (TensorRT builds).


def _self_checks(est: DepthEstimator) -> list[str]:
    return [n for n in est.startup_notes if n.startswith('self-check')]


def _needs(engine: str) -> None:
    """Skip unless ``engine`` can run on CUDA here."""
    if engine == 'tensorrt':
        pytest.importorskip('tensorrt')
    if engine == 'onnxruntime':
        ort = pytest.importorskip('onnxruntime')
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            pytest.skip(f'onnxruntime {ort.__version__} has no CUDA provider')


@pytest.mark.parametrize('engine, precision', [
    ('torch', 'fp16'), ('torch', 'bf16'), ('onnxruntime', 'fp32'), ('onnxruntime', 'fp16'),
    ('tensorrt', 'fp32'), ('tensorrt', 'fp16')])
def test_engine_self_check_passes_on_the_gpu(engine, precision, tiny, tmp_path):
    """Each GPU engine passes its startup self-check; the printed errors (TF32 in fp32) are the
    GPU column of the README's tolerance table."""
    from depth_node.estimator.device import cuda_has_native_bf16

    _needs(engine)
    if precision == 'bf16' and not cuda_has_native_bf16(torch.device('cuda')):
        pytest.skip('no native bf16 on this GPU')
    for kind in ('depth_anything', 'depth_anything_metric'):
        est = DepthEstimator(tiny(kind), device='cuda', precision=precision, engine=engine,
                             cache_dir=str(tmp_path))
        est.warmup(480, 640, iterations=1, batches=(1, 2))
        lines = _self_checks(est)
        print(f'{kind}: ' + ' | '.join(lines))
        assert lines and all('mean relative error' in line for line in lines), est.startup_notes
        assert est.engine.name == engine and est.engine.precision == precision


def test_engine_tensorrt_dynamic_onnx_builds_per_shape_and_matches_the_cpu(tmp_path):
    """A dynamic-shape ONNX (short_side card) builds with a profile at each camera's input
    shape, outputs sized from the context; the plans live under model.cache_dir keyed by the
    file and shape, nothing beside the model."""
    _needs('tensorrt')
    from test_engine_defects import write_model

    model = write_model(tmp_path / 'm' / 'model.onnx', dynamic=True)
    cache = tmp_path / 'cache'
    trt = DepthEstimator(str(model), device='cuda', precision='fp32', engine='tensorrt',
                         cache_dir=str(cache))
    cpu = DepthEstimator(str(model), device='cpu', precision='fp32', engine='onnxruntime')
    for h, w in ((480, 640), (720, 1280)):
        image = np.random.default_rng(h).integers(0, 255, (h, w, 3), dtype=np.uint8)
        got, want = trt.predict(image).depth, cpu.predict(image).depth
        print(f'{w}x{h}: tensorrt fp32 vs onnxruntime CPU {_rel_error(got, want):.2e}')
        assert _rel_error(got, want) < 5e-3
    assert len(list(cache.glob('onnx-*/tensorrt-*.plan'))) == 2
    assert sorted(p.name for p in model.parent.iterdir()) == ['model.onnx', 'model.yaml']
    assert trt.engine._stream is not None
    assert trt.engine._stream.cuda_stream != torch.cuda.default_stream().cuda_stream


def test_engine_tensorrt_half_input_graph_reads_its_dtypes(tmp_path):
    """An fp16-input, fp16-output graph (a DA3 export in half): the input is fed fp16 and the
    outputs read as fp16, picked by name (sky before depth in the graph)."""
    _needs('tensorrt')
    import yaml

    from test_da3 import METRIC_CARD, write_da3_graph

    path = write_da3_graph(tmp_path / 'da3' / 'model.onnx', outputs=('sky', 'depth'), half=True)
    (path.parent / 'depth_node_model.yaml').write_text(yaml.safe_dump(METRIC_CARD))
    trt = DepthEstimator(str(path), device='cuda', precision='fp16', engine='tensorrt',
                         cache_dir=str(tmp_path / 'c'))
    trt.warmup(480, 640, iterations=1)
    plan = next(iter(trt.engine._compiled.values()))
    assert plan.input_dtype == torch.float16 and plan.output_names == ['sky', 'depth']
    print(' | '.join(_self_checks(trt)))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs')
@pytest.mark.parametrize('engine', ['tensorrt', 'onnxruntime'])
def test_engine_on_the_second_gpu(engine, tiny, frames, tmp_path):
    """On cuda:1 the TensorRT plan is built and loaded there, and ONNX Runtime's providers get
    device_id 1: the output equals the CPU's within the fp32 bound."""
    _needs(engine)
    name = tiny('depth_anything')
    est = DepthEstimator(name, device='cuda:1', precision='fp32', engine=engine,
                         cache_dir=str(tmp_path))
    want = DepthEstimator(name, device='cpu', precision='fp32').predict(frames['640x480']).depth
    got = est.predict(frames['640x480']).depth
    assert _rel_error(got, want) < 5e-3


def test_engine_onnxruntime_trt_provider_cache_is_per_model(tiny, frames, tmp_path):
    """Relative and metric models through ONNX Runtime's TensorRT provider: each its own
    engine cache folder, each output right (they would load each other's engine with one
    shared folder)."""
    ort = pytest.importorskip('onnxruntime')
    if 'TensorrtExecutionProvider' not in ort.get_available_providers():
        pytest.skip('no TensorrtExecutionProvider')
    providers = ['TensorrtExecutionProvider', 'CUDAExecutionProvider']
    for kind in ('depth_anything', 'depth_anything_metric'):
        est = DepthEstimator(tiny(kind), device='cuda', precision='fp32', engine='onnxruntime',
                             providers=providers, cache_dir=str(tmp_path))
        want = DepthEstimator(tiny(kind), device='cpu', precision='fp32')
        image = frames['640x480']
        assert _rel_error(est.predict(image).depth, want.predict(image).depth) < 5e-3
    assert len(list(tmp_path.glob('*/onnxruntime-*-trt'))) == 2


def test_engine_onnxruntime_cuda_plain_fp32_onnx_with_auto_precision(tmp_path):
    """A plain fp32 ONNX model on the CUDA provider with precision auto: fed fp32 (no
    InvalidArgument), a dynamic graph's symbolic output allocated by ONNX Runtime."""
    _needs('onnxruntime')
    from test_engine_defects import write_model

    for dynamic in (False, True):
        model = write_model(tmp_path / f'm{dynamic}' / 'model.onnx', dynamic=dynamic)
        gpu = DepthEstimator(str(model), device='cuda', precision='auto', engine='onnxruntime',
                             providers=['CUDAExecutionProvider'])
        cpu = DepthEstimator(str(model), device='cpu', precision='fp32', engine='onnxruntime')
        image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        for _ in range(2):   # the second run binds a torch tensor of the learnt shape
            assert _rel_error(gpu.predict(image).depth, cpu.predict(image).depth) < 5e-3


def test_cuda_graphs_default_auto_captures_on_cuda(tiny, frames):
    """``model.cuda_graphs`` left at 'auto' captures on CUDA with torch >= 2.12 (issue 25) and
    the startup notes say so; the graph's output equals eager's."""
    from depth_node.estimator.device import resolve_cuda_graphs

    est = DepthEstimator(tiny('depth_anything'), device='cuda', precision='fp16')
    want, why = resolve_cuda_graphs('auto', est.device)
    assert est.cuda_graphs == want
    assert why in est.startup_notes
    eager = DepthEstimator(tiny('depth_anything'), device='cuda', precision='fp16',
                           cuda_graphs='off')
    est.warmup(480, 640, iterations=2)
    assert _rel_error(est.predict(frames['640x480']).depth,
                      eager.predict(frames['640x480']).depth) < 1e-3
