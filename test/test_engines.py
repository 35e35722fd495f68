"""Inference engines: ONNX Runtime and OpenVINO against torch, the export cache, plain ONNX
models with their card, ``model.engine auto`` and ``depth_node-export`` (tiny models, CPU)."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path
import sys
import warnings

import numpy as np
import pytest
import torch

from depth_node.estimator import DepthEstimator, EstimatorError
from depth_node.estimator.engines import engine_available, resolve_engine
from depth_node.estimator.export import write_atomic
from depth_node.sample_data import load_frame
from conftest import FRAMES
from tiny_models import BUILDERS

CPU_ENGINES = [e for e in ('onnxruntime', 'openvino') if engine_available(e)]
pytestmark = pytest.mark.skipif(len(CPU_ENGINES) < 2,
                                reason='onnxruntime and openvino are installed by CI (the '
                                       "'engines' extra); install them to run these tests")


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Mean absolute difference over mean absolute reference (the 'relative mean error')."""
    return float(np.mean(np.abs(got - ref)) / np.mean(np.abs(ref)))


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / 'cache')


ORT_KINDS = ('depth_anything', 'depth_anything_metric', 'dpt', 'glpn')
"""The model types also run on ONNX Runtime here (it runs the same ONNX export as OpenVINO,
whose conversion is the riskier step; every type runs on OpenVINO). CI time."""


@pytest.mark.parametrize('kind, engine', [(kind, 'openvino') for kind in sorted(BUILDERS)]
                         + [(kind, 'onnxruntime') for kind in ORT_KINDS])
def test_every_tiny_model_runs_on_every_cpu_engine(kind, engine, tiny_dir, frames, cache):
    """Each model type exports and runs; fp32 output equals torch fp32 within 1e-4."""
    image = frames['tum'][::4, ::4].copy()  # 160x120: quick
    ref_est = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32')
    est = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32', engine=engine,
                         cache_dir=cache)
    assert est.engine.name == engine and est.output_kind == ref_est.output_kind
    # Depth Pro's scale depends on the focal length: give one so its path is the same.
    ref = ref_est.predict(image, fx=200.0).depth
    got = est.predict(image, fx=200.0).depth
    assert got.shape == ref.shape == image.shape[:2] and got.dtype == np.float32
    assert np.isfinite(got).all()
    assert rel_error(got, ref) < 1e-4


@pytest.mark.parametrize('engine, frame', [('openvino', 'kitti'), ('onnxruntime', 'nuscenes'),
                                           ('onnxruntime', 'tum'), ('openvino', 'tum')])
def test_fp32_parity_on_real_frames(engine, frame, tiny_dir, frames, cache):
    """Relative and metric Depth Anything on 640x480, 1224x370 and 1600x900 real frames: each
    engine on the 640x480 frame and on one of the others (every frame shape is exported once;
    CI time)."""
    for kind in ('depth_anything', 'depth_anything_metric'):
        ref = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32')
        est = DepthEstimator(str(tiny_dir(kind)), device='cpu', precision='fp32', engine=engine,
                             cache_dir=cache)
        expected = ref.predict(frames[frame]).depth
        assert np.std(expected) > 0, 'a constant reference would prove nothing'
        assert rel_error(est.predict(frames[frame]).depth, expected) < 1e-4


def test_openvino_bf16_within_the_error_of_torch_bf16(tiny_dir, frames, cache):
    """OpenVINO bf16 against torch fp32 errs no more than torch bf16 itself does (x1.5)."""
    if 'openvino' not in CPU_ENGINES:
        pytest.skip('openvino not installed')
    model = str(tiny_dir('depth_anything'))
    fp32 = DepthEstimator(model, device='cpu', precision='fp32').predict(frames['tum']).depth
    torch_bf16 = DepthEstimator(model, device='cpu', precision='bf16')
    ov_bf16 = DepthEstimator(model, device='cpu', precision='bf16', engine='openvino',
                             cache_dir=cache)
    assert ov_bf16.engine.precision == 'bf16'
    torch_err = rel_error(torch_bf16.predict(frames['tum']).depth, fp32)
    ov_err = rel_error(ov_bf16.predict(frames['tum']).depth, fp32)
    assert 0 < torch_err < 0.05
    assert ov_err <= 1.5 * torch_err, (ov_err, torch_err)


def test_onnxruntime_refuses_bf16_and_auto_precision_is_fp32(tiny_dir, cache):
    model = str(tiny_dir('depth_anything'))
    with pytest.raises(EstimatorError, match='no fast bf16'):
        DepthEstimator(model, device='cpu', precision='bf16', engine='onnxruntime',
                       cache_dir=cache)
    est = DepthEstimator(model, device='cpu', precision='auto', engine='onnxruntime',
                         cache_dir=cache)
    assert est.dtype == torch.float32 and est.engine.precision == 'fp32'


# ---------------------------------------------------------------------------------- cache

def _entries(cache: str) -> list[Path]:
    return sorted(p.parent for p in Path(cache).glob('*/model.onnx'))


def test_cache_miss_then_hit_keyed_by_shape(tiny_dir, frames, cache):
    model = str(tiny_dir('depth_anything'))
    first = DepthEstimator(model, device='cpu', precision='fp32', engine='onnxruntime',
                           cache_dir=cache)
    first.prepare(480, 640)
    assert any('cache miss, exported' in n for n in first.startup_notes), first.startup_notes
    (entry,) = _entries(cache)
    meta = json.loads((entry / 'meta.json').read_text())
    assert meta['key'] == entry.name and meta['shape'] == [1, 3, 518, 686]
    second = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino',
                            cache_dir=cache)
    second.prepare(480, 640)
    assert any('cache hit' in n for n in second.startup_notes), second.startup_notes
    assert _entries(cache) == [entry]  # one export serves both engines
    assert rel_error(first.predict(frames['tum']).depth,
                     second.predict(frames['tum']).depth) < 1e-4
    # another network input size is another entry
    third = DepthEstimator(model, device='cpu', precision='fp32', engine='onnxruntime',
                           cache_dir=cache, input_size=308)
    third.prepare(480, 640)
    assert len(_entries(cache)) == 2
    # other weights (a retrained model in the same folder) are another key
    other = tiny_dir('depth_anything_metric')
    fourth = DepthEstimator(str(other), device='cpu', precision='fp32', engine='onnxruntime',
                            cache_dir=cache)
    fourth.prepare(480, 640)
    assert len(_entries(cache)) == 3


def test_corrupt_cache_entry_is_rebuilt_with_a_warning(tiny_dir, frames, cache, caplog):
    model = str(tiny_dir('depth_anything'))
    image = frames['tum']
    est = DepthEstimator(model, device='cpu', precision='fp32', engine='onnxruntime',
                         cache_dir=cache)
    expected = est.predict(image).depth
    (entry,) = _entries(cache)
    (entry / 'model.onnx').write_bytes(b'not an onnx file')
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        again = DepthEstimator(model, device='cpu', precision='fp32', engine='onnxruntime',
                               cache_dir=cache)
        np.testing.assert_array_equal(again.predict(image).depth, expected)
    assert any('does not load' in r.getMessage() and 'exporting it again' in r.getMessage()
               for r in caplog.records)
    assert (entry / 'model.onnx').stat().st_size > 1000
    # an unreadable meta.json: rebuilt too
    (entry / 'meta.json').write_text('{')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        third = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino',
                               cache_dir=cache)
        third.prepare(480, 640)
    assert any('unreadable' in r.getMessage() for r in caplog.records)
    assert json.loads((entry / 'meta.json').read_text())['key'] == entry.name


def test_write_atomic_leaves_nothing_half_written(tmp_path):
    target = tmp_path / 'sub' / 'model.onnx'

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b'half')
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert not target.exists() and list(target.parent.iterdir()) == []
    write_atomic(target, lambda tmp: tmp.write_bytes(b'whole'))
    assert target.read_bytes() == b'whole' and len(list(target.parent.iterdir())) == 1


def _export_in_child(model: str, cache: str, queue) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        est = DepthEstimator(model, device='cpu', precision='fp32', engine='onnxruntime',
                             cache_dir=cache)
        image = np.full((120, 160, 3), 100, np.uint8)
        queue.put(est.predict(image).depth)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(repr(exc))


def test_two_processes_filling_one_cache_together(tiny_dir, cache):
    """Two nodes starting at once: both export the same entry; both read a whole file."""
    model = str(tiny_dir('depth_anything'))
    ctx = multiprocessing.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_export_in_child, args=(model, cache, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(r, np.ndarray) for r in results), results
    np.testing.assert_array_equal(results[0], results[1])
    (entry,) = _entries(cache)
    assert not [p for p in entry.iterdir() if p.name.endswith('.tmp')]


# ---------------------------------------------------------------------------------- auto

def test_auto_picks_openvino_on_cpu_when_installed(monkeypatch):
    import depth_node.estimator.engines as engines

    cpu = torch.device('cpu')
    assert resolve_engine('auto', cpu)[0] == ('openvino' if engine_available('openvino')
                                              else 'torch')
    monkeypatch.setattr(engines, 'engine_available', lambda name: False)
    name, why = resolve_engine('auto', cpu)
    assert name == 'torch' and 'not installed' in why
    assert resolve_engine('auto', cpu, onnx_model=True)[0] == 'onnxruntime'
    assert resolve_engine('openvino', cpu) == ('openvino', 'set by model.engine')
    with pytest.raises(EstimatorError, match="model.engine 'trt'"):
        resolve_engine('trt', cpu)
    with pytest.raises(EstimatorError, match='cannot run a plain ONNX model'):
        resolve_engine('torch', cpu, onnx_model=True)


def test_auto_falls_back_to_torch_when_the_export_fails(tiny_dir, frames, cache, monkeypatch,
                                                        caplog):
    from depth_node.estimator.export import OnnxExporter

    def broken(self, entry, shape, parts):
        raise EstimatorError('does not export to ONNX (injected)')

    monkeypatch.setattr(OnnxExporter, 'export', broken)
    model = str(tiny_dir('depth_anything'))
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        est = DepthEstimator(model, device='cpu', precision='fp32', engine='auto',
                             cache_dir=cache)
        got = est.predict(frames['tum']).depth
    assert est.engine.name == 'torch'
    assert any('falls back to torch' in n for n in est.startup_notes)
    ref = DepthEstimator(model, device='cpu', precision='fp32').predict(frames['tum']).depth
    np.testing.assert_array_equal(got, ref)
    # an engine asked for by name does not fall back: the error reaches the caller
    named = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino',
                           cache_dir=cache)
    with pytest.raises(EstimatorError, match='injected'):
        named.predict(frames['tum'])


def test_missing_engine_names_the_extra(tiny_dir, monkeypatch, cache):
    monkeypatch.setitem(sys.modules, 'openvino', None)  # import openvino -> ImportError
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    for engine in ('openvino', 'onnxruntime'):
        with pytest.raises(EstimatorError, match=rf"depth_node\[{engine}\]"):
            DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', engine=engine,
                           cache_dir=cache)
    with pytest.raises(EstimatorError, match='CUDA only'):
        DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', engine='tensorrt',
                       cache_dir=cache)


# ---------------------------------------------------------------------------------- input size

def test_input_size_sets_the_network_short_side(tiny_dir, frames, cache):
    model = str(tiny_dir('depth_anything'))
    full = DepthEstimator(model, device='cpu', precision='fp32')
    small = DepthEstimator(model, device='cpu', precision='fp32', input_size=308)
    assert full.input_size(480, 640) == (518, 686)
    assert small.input_size(480, 640) == (308, 406)
    assert small.input_size(900, 1600) == (308, 546)
    depth = small.predict(frames['tum']).depth
    assert depth.shape == (480, 640) and np.isfinite(depth).all()
    assert not np.allclose(depth, full.predict(frames['tum']).depth)
    for bad in (300, -14):
        with pytest.raises(EstimatorError, match='multiple of 14'):
            DepthEstimator(model, device='cpu', input_size=bad)
    with pytest.raises(EstimatorError, match='keep the aspect ratio'):
        DepthEstimator(str(tiny_dir('glpn')), device='cpu', input_size=308)


# ---------------------------------------------------------------------------------- ONNX models

class TinyEncoderDecoder(torch.nn.Module):
    """A 320x240 -> 320x240 metric encoder-decoder like the NYUv2 UNets of the literature."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.down = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mid = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 1, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.mid(torch.relu(self.down(x))))
        return torch.nn.functional.softplus(self.up(y))[:, 0] * 1000.0 + 500.0  # millimetres


CARD = {'input_size': [240, 320], 'resize_filter': 'bilinear',
        'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225],
        'output_kind': 'metric_depth', 'output_scale': 0.001}


def _write_onnx_model(folder: Path, card: dict | None = CARD) -> TinyEncoderDecoder:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    net = TinyEncoderDecoder().eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(net, (torch.zeros(1, 3, 240, 320),), str(folder / 'model.onnx'),
                          opset_version=17, dynamo=False, input_names=['image'],
                          output_names=['depth'])
    if card is not None:
        (folder / 'depth_node_model.yaml').write_text(yaml.safe_dump(card))
    return net


@pytest.mark.parametrize('engine', CPU_ENGINES)
def test_plain_onnx_model_with_its_card(engine, tmp_path, frames):
    from PIL import Image

    net = _write_onnx_model(tmp_path / 'unet')
    est = DepthEstimator(str(tmp_path / 'unet'), device='cpu', precision='fp32', engine=engine)
    assert est.is_metric and est.output_kind == 'metric_depth' and est.model_type == 'onnx'
    image = frames['tum']  # 640x480 -> the card's fixed 320x240
    got = est.predict(image).depth
    # the card's recipe by hand: PIL bilinear resize, scale, normalise, network, mm -> m,
    # bilinear upsampling back to the image
    small = np.asarray(Image.fromarray(image).resize((320, 240), Image.BILINEAR), np.float32)
    x = (small / 255.0 - np.array(CARD['mean'], np.float32)) / np.array(CARD['std'], np.float32)
    with torch.no_grad():
        raw = net(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))
        expected = torch.nn.functional.interpolate(raw[:, None] * 0.001, size=(480, 640),
                                                   mode='bilinear', align_corners=False)
    assert got.shape == (480, 640)
    np.testing.assert_allclose(got, expected[0, 0].numpy(), rtol=1e-4, atol=1e-5)
    assert 0.4 < np.median(got) < 3.0  # metres, not millimetres


def test_plain_onnx_model_auto_engine_and_relative_depth_kind(tmp_path):
    _write_onnx_model(tmp_path / 'rel', dict(CARD, output_kind='relative_depth',
                                             output_scale=1.0))
    est = DepthEstimator(str(tmp_path / 'rel' / 'model.onnx'), device='cpu', engine='auto')
    assert est.engine.name in CPU_ENGINES
    assert est.output_kind == 'relative_depth' and not est.is_metric
    with pytest.raises(EstimatorError, match='cannot run a plain ONNX model'):
        DepthEstimator(str(tmp_path / 'rel'), device='cpu', engine='torch')


@pytest.mark.parametrize('change, message', [
    ({'output_kind': None}, "field 'output_kind' is missing"),
    ({'output_kind': 'disparity'}, 'output_kind'),
    ({'input_size': [480, 640]}, r'input_size \[480, 640\] contradicts the network.*240x320'),
    ({'input_size': None, 'short_side': 518, 'multiple': 14},
     'short_side needs a network with dynamic'),
    ({'mean': [0.5, 0.5]}, "'mean' must be 3 numbers"),
    ({'std': [0.2, 0.0, 0.2]}, "'std' must be 3 numbers > 0"),
    ({'resize_filter': 'lanczos'}, 'resize_filter'),
    ({'output_scale': -1}, 'output_scale must be a positive number'),
    ({'colour': 'rgb'}, r'unknown field\(s\) colour'),
    ({'input_size': None}, "field 'input_size' \\(or 'short_side'\\) is missing"),
])
def test_bad_model_cards_are_refused_naming_the_field(change, message, tmp_path):
    card = {k: v for k, v in {**CARD, **change}.items() if v is not None}
    _write_onnx_model(tmp_path / 'm', card)
    with pytest.raises(EstimatorError, match=message):
        DepthEstimator(str(tmp_path / 'm'), device='cpu', engine='onnxruntime')


def test_onnx_model_without_a_card_is_refused(tmp_path):
    _write_onnx_model(tmp_path / 'm', card=None)
    with pytest.raises(EstimatorError, match='has no model card: write .*depth_node_model.yaml'):
        DepthEstimator(str(tmp_path / 'm'), device='cpu', engine='onnxruntime')


# ---------------------------------------------------------------------------------- export tool

def test_export_tool_fills_the_cache_the_estimator_reads(tiny_dir, cache, capsys):
    from depth_node.export_tool import main

    model = str(tiny_dir('depth_anything'))
    # 160x120 and 400x200 need two network inputs (518x686, 518x1036); 320x240 would share one
    code = main(['--model', model, '--engines', 'openvino', 'onnxruntime', '--sizes',
                 '160x120', '400x200', '--device', 'cpu', '--precision', 'fp32',
                 '--cache-dir', cache])
    assert code == 0
    assert len(_entries(cache)) == 2  # one export per network input size, shared by engines
    out = capsys.readouterr().out
    assert 'openvino' in out and 'onnxruntime' in out
    est = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino',
                         cache_dir=cache)
    est.prepare(200, 400)
    assert any('cache hit' in n for n in est.startup_notes)
    assert main(['--model', str(Path(cache) / 'missing'), '--engines', 'openvino',
                 '--cache-dir', cache]) == 2


# ---------------------------------------------------------------------------------- the node

def _node_outputs(model: str, engine: str, frame, topic: str) -> np.ndarray:
    """One frame through a node run with ``engine`` (fp32, its own ROS session)."""
    from depth_node.messages import image_to_array
    from ros_harness import RosSession
    from test_node import _send

    session = RosSession()
    try:
        node = session.start_depth_node({'model.name': model, 'model.device': 'cpu',
                                         'model.precision': 'fp32', 'model.engine': engine,
                                         'model.warmup_size': [640, 480],
                                         'filter.edges': False})  # compared pixel for pixel
        assert node.core.estimator.engine.name == engine
        probe = session.probe()
        assert probe.wait_subscribers('image') and probe.wait_subscribers('camera_info')
        stamp = _send(node, probe, frame, 40, 7, frame_id='tum_optical')
        msg = probe.wait_stamp(topic, stamp, timeout=120.0)
        assert msg is not None, f'no {topic} from the {engine} node'
        assert msg.header.frame_id == 'tum_optical'
        return image_to_array(msg)
    finally:
        session.close()


@pytest.mark.ros
@pytest.mark.parametrize('kind, topic', [('depth_anything', 'depth/relative'),
                                         ('depth_anything_metric', 'depth/image')])
def test_node_outputs_agree_across_engines(kind, topic, tiny_dir, real_data):
    """depth/relative (relative model) and depth/image (metric model) of one frame from node
    runs with torch, ONNX Runtime and OpenVINO: equal within 1e-4 relative mean error."""
    tum = load_frame(real_data / FRAMES['tum'])
    outputs = {e: _node_outputs(str(tiny_dir(kind)), e, tum, topic)
               for e in ['torch'] + CPU_ENGINES}
    reference = outputs.pop('torch')
    assert reference.shape == (480, 640) and np.std(reference) > 0
    for engine, got in outputs.items():
        assert rel_error(got, reference) < 1e-4, engine


@pytest.mark.parametrize('engine', CPU_ENGINES)
def test_predict_from_two_threads_at_once(engine, tiny_dir, frames, cache):
    """The node's worker and a caller (a test, a tool) may predict at the same time: calls
    take turns (an OpenVINO infer request is not thread-safe and crashed the process)."""
    import threading

    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='fp32',
                         engine=engine, cache_dir=cache)
    image = frames['tum'][::4, ::4].copy()
    expected = est.predict(image).depth
    results, errors = [], []

    def hammer():
        try:
            for _ in range(8):
                results.append(est.predict(image).depth)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 24
    for got in results:
        np.testing.assert_array_equal(got, expected)


def test_openvino_compiled_model_cached_atomically_and_rebuilt_when_damaged(tiny_dir, frames,
                                                                            cache, caplog):
    """The compiled model is written beside the export; the next start imports it; a damaged
    one (a node killed while writing, before writes were atomic) is compiled again."""
    if 'openvino' not in CPU_ENGINES:
        pytest.skip('openvino not installed')
    model = str(tiny_dir('depth_anything'))
    first = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino',
                           cache_dir=cache)
    expected = first.predict(frames['tum']).depth
    (entry,) = _entries(cache)
    (blob,) = entry.glob('openvino-*.blob')
    assert blob.stat().st_size > 1000 and not list(entry.glob('*.tmp'))
    blob.write_bytes(blob.read_bytes()[:100])   # truncated
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        again = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino',
                               cache_dir=cache)
        np.testing.assert_array_equal(again.predict(frames['tum']).depth, expected)
    assert any('does not load' in r.getMessage() for r in caplog.records)
    assert blob.stat().st_size > 1000
