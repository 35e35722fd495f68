"""The engine self-check (``model.verify``) and the startups that used to end in a traceback.

Tiny models on the CPU engines (ONNX Runtime, OpenVINO, torch bf16): each passes its check and
says so in the startup notes with its time; a deliberately perturbed engine output is caught
with a message naming the engine, its version, the device, the error and the fix; the settings
that allow it replace the failing engine (``precision auto``: fp32; ``engine auto``: torch).
Startup failures through the node's entry point (``depth_node.node.main``) are one
configuration-error line and exit 2: an engine that fails at warm-up (ONNX Runtime refusing
external weights outside the model's folder), a perturbed engine, ``model.cache_dir`` naming a
file or a folder that cannot be created. A card model whose depth output is ``[B, 1, H, W]``
starts and stops cleanly as a process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
import signal

import numpy as np
import pytest
import torch

from depth_node.estimator import DepthEstimator, EstimatorError
from depth_node.estimator.engines import engine_available
from depth_node.estimator.verify import (TOLERANCES, batch_error, output_error, seeded_image,
                                         seeded_input)
from test_engine_defects import write_model

CPU_ENGINES = [e for e in ('onnxruntime', 'openvino') if engine_available(e)]
needs_engines = pytest.mark.skipif(len(CPU_ENGINES) < 2, reason='needs onnxruntime and '
                                   "openvino (the 'engines' extra)")


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> str:
    from tiny_models import make_tiny_depth_anything

    return str(make_tiny_depth_anything(tmp_path_factory.mktemp('verify_tiny')))


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / 'cache')


def _perturb(monkeypatch, engine_class, factor=1.5, only_precision=None):
    """Make ``engine_class``'s raw outputs ``factor`` times too large (a wrong engine)."""
    original = engine_class._infer

    def wrong(self, compiled, pixel_values):
        outputs = original(self, compiled, pixel_values)
        if only_precision and self.precision != only_precision:
            return outputs
        return [o * factor for o in outputs]

    monkeypatch.setattr(engine_class, '_infer', wrong)


# ------------------------------------------------------------------------------ the pieces

def test_the_seeded_input_is_fixed_and_a_scene():
    from depth_node.estimator.recipe import Recipe

    a, b = seeded_image(64, 80), seeded_image(64, 80)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 80, 3) and a.dtype == np.uint8 and a.std() > 30
    assert not np.array_equal(a, seeded_image(64, 80, seed=1))
    recipe = Recipe(family='dpt', size=(64, 80), do_resize=True, resample=2,
                    keep_aspect_ratio=False, ensure_multiple_of=1, do_rescale=True,
                    rescale_factor=1 / 255, do_normalize=True, image_mean=(0.5, 0.5, 0.5),
                    image_std=(0.25, 0.25, 0.25), do_pad=False, size_divisor=None,
                    upsample='bilinear')
    x = seeded_input(recipe, (3, 3, 64, 80))
    assert x.shape == (3, 3, 64, 80) and x.dtype == torch.float32
    torch.testing.assert_close(x[2], x[0])
    expected = (a.transpose(2, 0, 1) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-5)


def test_the_error_measure():
    ref = torch.tensor([[1.0, 2.0, 3.0, float('nan')]])
    assert output_error(ref.clone(), ref) == (0.0, '')
    error, problem = output_error(ref * 1.1, ref)
    assert problem == '' and error == pytest.approx(0.1, rel=1e-5)
    error, problem = output_error(torch.tensor([[1.0, float('inf'), 3.0, 4.0]]), ref)
    assert math.isinf(error) and '1 non-finite values where the reference is finite' in problem
    assert 'shape' in output_error(ref[:, :2], ref)[1]
    logits = torch.tensor([[-1.0, 1.0, -1.0, 1.0]])   # centred on zero: its spread is the scale
    assert output_error(logits + 0.1, logits)[0] == pytest.approx(0.1 / logits.std().item())
    batch = torch.cat([ref, ref * 1.2])
    assert batch_error(batch, ref)[0] == pytest.approx(0.2, rel=1e-5)
    assert TOLERANCES['fp32'] < TOLERANCES['fp16'] < TOLERANCES['bf16'] < 0.15


# ------------------------------------------------------------------------------ engines

@needs_engines
@pytest.mark.parametrize('engine, precision', [('onnxruntime', 'fp32'), ('openvino', 'fp32'),
                                               ('openvino', 'bf16'), ('torch', 'bf16')])
def test_each_cpu_engine_passes_its_check_and_logs_it(engine, precision, tiny, cache):
    est = DepthEstimator(tiny, device='cpu', precision=precision, engine=engine,
                         cache_dir=cache)
    est.warmup(120, 160, batches=(1, 2))
    lines = [n for n in est.startup_notes if n.startswith('self-check')]
    # ONNX engines: one check per compiled shape (batch 1 and 2); torch: once
    assert len(lines) == (1 if engine == 'torch' else 2), est.startup_notes
    assert f'tolerance {TOLERANCES[precision]:.0e} for {precision}' in lines[0]
    assert 'against torch' in lines[0] and est.verify_seconds > 0
    est.predict(np.zeros((120, 160, 3), np.uint8))   # no second check
    assert len([n for n in est.startup_notes if n.startswith('self-check')]) == len(lines)


def test_torch_fp32_is_its_own_reference(tiny):
    est = DepthEstimator(tiny, device='cpu', precision='fp32')
    est.warmup(120, 160)
    assert any('none (torch fp32 is the reference itself)' in n for n in est.startup_notes)
    assert est.verify_seconds == 0


@needs_engines
def test_a_perturbed_engine_is_caught_naming_engine_version_device_and_fix(tiny, cache,
                                                                           monkeypatch):
    from depth_node.estimator.engines.openvino_engine import OpenVinoEngine

    _perturb(monkeypatch, OpenVinoEngine)
    est = DepthEstimator(tiny, device='cpu', precision='bf16', engine='openvino',
                         cache_dir=cache)
    with pytest.raises(EstimatorError) as info:
        est.prepare(120, 160)
    message = str(info.value)
    version = est.engine.version
    shape = (1, 3) + est.input_size(120, 160)
    for part in ('engine self-check failed', f'openvino {version} bf16 on CPU',
                 f'input {shape}', 'against torch',
                 'depth output is 5.0', 'over the bf16 tolerance 8e-02', "model.precision 'fp32'",
                 "model.engine 'torch'", f'another openvino version than {version}',
                 'model.verify false'):
        assert part in message, (part, message)
    # the same shape again: the same error, without running the check again
    calls = []
    original = est._check.run_engine
    est._check.run_engine = lambda x: calls.append(x) or original(x)
    with pytest.raises(EstimatorError, match='self-check failed'):
        est.predict(np.zeros((120, 160, 3), np.uint8))
    assert calls == []


@needs_engines
def test_non_finite_output_is_caught(tiny, cache, monkeypatch):
    from depth_node.estimator.engines.onnxruntime_engine import OnnxRuntimeEngine

    _perturb(monkeypatch, OnnxRuntimeEngine, factor=float('inf'))
    est = DepthEstimator(tiny, device='cpu', precision='fp32', engine='onnxruntime',
                         cache_dir=cache)
    with pytest.raises(EstimatorError, match='non-finite values where the reference is finite'):
        est.warmup(120, 160)


@needs_engines
def test_engine_auto_falls_back_to_torch_when_the_check_fails(tiny, cache, monkeypatch):
    from depth_node.estimator.engines.openvino_engine import OpenVinoEngine

    _perturb(monkeypatch, OpenVinoEngine)
    est = DepthEstimator(tiny, device='cpu', precision='fp32', engine='auto', cache_dir=cache)
    assert est.engine.name == 'openvino'
    est.warmup(120, 160)
    assert est.engine.name == 'torch'
    assert any('self-check failed' in n and 'falls back to torch' in n
               for n in est.startup_notes)
    ref = DepthEstimator(tiny, device='cpu', precision='fp32')
    image = seeded_image(120, 160)
    np.testing.assert_array_equal(est.predict(image).depth, ref.predict(image).depth)


@needs_engines
def test_precision_auto_runs_a_failing_bf16_engine_in_fp32(tiny, cache, monkeypatch):
    from depth_node.estimator import device as device_module
    from depth_node.estimator.engines.openvino_engine import OpenVinoEngine

    monkeypatch.setattr(device_module, 'cpu_has_native_bf16', lambda: True)
    _perturb(monkeypatch, OpenVinoEngine, only_precision='bf16')
    est = DepthEstimator(tiny, device='cpu', precision='auto', engine='openvino',
                         cache_dir=cache)
    assert est.engine.precision == 'bf16'
    est.warmup(120, 160)
    assert est.engine.name == 'openvino' and est.engine.precision == 'fp32'
    assert est.dtype == torch.float32
    assert any('model.precision auto runs it in fp32' in n for n in est.startup_notes)
    assert any(n.startswith('self-check of openvino') and 'fp32' in n
               for n in est.startup_notes)


def test_precision_auto_runs_a_failing_torch_bf16_in_fp32(tiny, monkeypatch):
    from depth_node.estimator import device as device_module
    from depth_node.estimator.engines.torch_engine import TorchEngine

    monkeypatch.setattr(device_module, 'cpu_has_native_bf16', lambda: True)
    original = TorchEngine.run

    def wrong(self, pixel_values):
        depth, fov = original(self, pixel_values)
        return (depth * 2 if self.precision == 'bf16' else depth), fov

    monkeypatch.setattr(TorchEngine, 'run', wrong)
    est = DepthEstimator(tiny, device='cpu', precision='auto', engine='torch')
    assert est.engine.precision == 'bf16'
    est.warmup(120, 160)
    assert est.engine.precision == 'fp32' and est.model.head is not None
    ref = DepthEstimator(tiny, device='cpu', precision='fp32', verify=False)
    image = seeded_image(120, 160)
    np.testing.assert_allclose(est.predict(image).depth, ref.predict(image).depth, rtol=1e-6)


@needs_engines
def test_a_new_input_shape_is_checked_before_its_first_frame(tiny, cache, monkeypatch):
    est = DepthEstimator(tiny, device='cpu', precision='fp32', engine='onnxruntime',
                         cache_dir=cache)
    est.warmup(120, 160)
    assert len([n for n in est.startup_notes if n.startswith('self-check')]) == 1
    est.predict(np.zeros((200, 100, 3), np.uint8))   # another network input size
    lines = [n for n in est.startup_notes if n.startswith('self-check')]
    shape = (1, 3) + est.input_size(200, 100)
    assert shape != (1, 3) + est.input_size(120, 160)
    assert len(lines) == 2 and f'input {shape}' in lines[1]


def test_verify_off_checks_nothing(tiny, cache):
    est = DepthEstimator(tiny, device='cpu', precision='bf16', verify=False)
    est.warmup(120, 160)
    assert not any(n.startswith('self-check') for n in est.startup_notes)
    assert est.verify_seconds == 0
    with pytest.raises(EstimatorError, match='verify_tolerance must be a number >= 0'):
        DepthEstimator(tiny, device='cpu', verify_tolerance=-1.0)


@needs_engines
def test_verify_tolerance_sets_the_bound(tiny, cache, monkeypatch):
    from depth_node.estimator.engines.onnxruntime_engine import OnnxRuntimeEngine

    _perturb(monkeypatch, OnnxRuntimeEngine, factor=1.01)   # 1 %: beyond fp32's 5e-3
    with pytest.raises(EstimatorError, match='over the fp32 tolerance 5e-03'):
        DepthEstimator(tiny, device='cpu', precision='fp32', engine='onnxruntime',
                       cache_dir=cache).prepare(120, 160)
    est = DepthEstimator(tiny, device='cpu', precision='fp32', engine='onnxruntime',
                         cache_dir=cache, verify_tolerance=0.02)
    est.prepare(120, 160)
    assert any('tolerance 2e-02' in n for n in est.startup_notes)


# ------------------------------------------------------------------------------ plain ONNX

@needs_engines
def test_plain_onnx_models_are_checked_against_onnx_runtime_on_the_cpu(tmp_path, monkeypatch):
    from depth_node.estimator.engines.openvino_engine import OpenVinoEngine

    model = str(write_model(tmp_path / 'm' / 'model.onnx'))
    ort = DepthEstimator(model, device='cpu', precision='fp32', engine='onnxruntime')
    ort.prepare(240, 320)
    assert any('none (ONNX Runtime on the CPU is the reference itself)' in n
               for n in ort.startup_notes)
    ov = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino')
    ov.prepare(240, 320)
    (line,) = [n for n in ov.startup_notes if n.startswith('self-check')]
    assert 'against onnxruntime' in line and 'fp32 (CPU)' in line
    _perturb(monkeypatch, OpenVinoEngine)
    bad = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino')
    with pytest.raises(EstimatorError, match="another engine .model.engine 'onnxruntime', "
                                             "model.engine 'tensorrt'"):
        bad.prepare(240, 320)


@needs_engines
def test_plain_onnx_without_onnx_runtime_says_there_is_no_reference(tmp_path, monkeypatch):
    import depth_node.estimator.verify as verify

    model = str(write_model(tmp_path / 'm' / 'model.onnx'))
    monkeypatch.setattr(verify, 'engine_available', lambda name: name != 'onnxruntime')
    est = DepthEstimator(model, device='cpu', precision='fp32', engine='openvino')
    est.prepare(240, 320)
    assert any('no reference: ONNX Runtime is not installed' in n for n in est.startup_notes)


# ------------------------------------------------------------------------------ cache folder

@needs_engines
def test_an_unusable_cache_dir_is_refused_for_onnx_engines(tiny, tmp_path, monkeypatch):
    afile = tmp_path / 'afile'
    afile.write_text('x')
    with pytest.raises(EstimatorError, match="model.cache_dir '.*afile' is a file, not a folder"):
        DepthEstimator(tiny, device='cpu', engine='openvino', cache_dir=str(afile))
    with pytest.raises(EstimatorError, match='cannot be created'):
        DepthEstimator(tiny, device='cpu', engine='openvino', cache_dir=str(afile / 'sub'))
    import depth_node.estimator.export as export

    def read_only(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')

    monkeypatch.setattr(export.tempfile, 'mkstemp', read_only)
    with pytest.raises(EstimatorError, match='is not writable .Permission denied.'):
        DepthEstimator(tiny, device='cpu', engine='onnxruntime', cache_dir=str(tmp_path / 'ro'))
    # torch never uses the cache: not checked
    DepthEstimator(tiny, device='cpu', engine='torch', cache_dir=str(afile))


# ------------------------------------------------------------------------------ export tool

@needs_engines
def test_the_export_tool_runs_the_same_check(tiny, cache, monkeypatch, capsys):
    from depth_node.estimator.engines.openvino_engine import OpenVinoEngine
    from depth_node.export_tool import main

    args = ['--model', tiny, '--engines', 'openvino', '--sizes', '160x120', '--device', 'cpu',
            '--precision', 'fp32', '--cache-dir', cache]
    assert main(args) == 0
    assert 'self-check of openvino' in capsys.readouterr().out
    _perturb(monkeypatch, OpenVinoEngine)
    assert main(args) == 1
    assert 'engine self-check failed' in capsys.readouterr().err
    assert main(args + ['--no-verify']) == 0
    afile = Path(cache) / 'afile'
    afile.write_text('x')
    assert main(args[:-2] + ['--cache-dir', str(afile)]) == 2
    assert 'is a file, not a folder' in capsys.readouterr().err


# ------------------------------------------------------------------------------ entry point

def _node_main(params: dict, capsys) -> tuple[int, str]:
    """``depth_node.node.main`` in this process with ``--ros-args -p`` ``params``; its exit
    code and what it printed."""
    from depth_node.node import main

    args = ['depth_node', '--ros-args', '-r', f'__ns:=/verify_{os.getpid()}']
    for key, value in params.items():
        args += ['-p', f'{key}:={value}']
    code = main(args, exit_process=False)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _assert_clean_exit_2(code: int, out: str, *fragments: str) -> None:
    assert code == 2, out
    assert 'configuration error' in out and 'Traceback' not in out, out
    for fragment in fragments:
        assert fragment in out, (fragment, out)


@pytest.mark.ros
@needs_engines
def test_entry_point_engine_error_at_warm_up_exits_2(tmp_path, capsys):
    """ONNX Runtime (rightly) refuses external weights outside the model's folder: the error
    comes at warm-up, where it used to escape as a traceback with exit 1."""
    import onnx

    path = write_model(tmp_path / 'm' / 'model.onnx')
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location='w.bin', size_threshold=0)
    (tmp_path / 'm' / 'w.bin').rename(tmp_path / 'w.bin')
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == 'location':
                entry.value = '../w.bin'
    onnx.save(model, str(path))
    code, out = _node_main({'model.name': str(path), 'model.device': 'cpu',
                            'model.engine': 'onnxruntime'}, capsys)
    _assert_clean_exit_2(code, out, 'failed at startup', 'escapes model directory')


@pytest.mark.ros
@needs_engines
def test_entry_point_perturbed_engine_exits_2(tiny, tmp_path, capsys, monkeypatch):
    from depth_node.estimator.engines.openvino_engine import OpenVinoEngine

    _perturb(monkeypatch, OpenVinoEngine)
    code, out = _node_main({'model.name': tiny, 'model.device': 'cpu',
                            'model.engine': 'openvino', 'model.precision': 'fp32',
                            'model.cache_dir': str(tmp_path / 'c')}, capsys)
    _assert_clean_exit_2(code, out, 'engine self-check failed', 'openvino',
                         "model.engine 'torch'")


@pytest.mark.ros
@needs_engines
@pytest.mark.parametrize('where, fragment', [('afile', 'is a file, not a folder'),
                                             ('afile/sub', 'cannot be created')])
def test_entry_point_unusable_cache_dir_exits_2(where, fragment, tiny, tmp_path, capsys):
    (tmp_path / 'afile').write_text('not a folder')
    code, out = _node_main({'model.name': tiny, 'model.device': 'cpu',
                            'model.engine': 'openvino',
                            'model.cache_dir': str(tmp_path / where)}, capsys)
    _assert_clean_exit_2(code, out, 'model.cache_dir', fragment)


@pytest.mark.ros
@pytest.mark.slow
@needs_engines
def test_entry_point_card_model_with_b1hw_output_starts_and_stops(tmp_path):
    """The most common export layout, ``[B, 1, H, W]`` depth, through the node as a process:
    warm-up runs the whole frame path (post-processing included), the self-check against ONNX
    Runtime passes, SIGTERM stops it cleanly."""
    from test_node_process import _start, wait_ready

    path = write_model(tmp_path / 'm' / 'model.onnx')
    import onnx
    dims = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 240, 320]
    proc = _start(['-p', f'model.name:={path}', '-p', 'model.device:=cpu', '-p',
                   'model.engine:=openvino', '-p', f'model.cache_dir:={tmp_path / "c"}',
                   '-r', '__ns:=/b1hw_test'])
    ready, out = wait_ready(proc, 90)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=20)
    out += rest
    assert ready, out
    assert 'self-check of openvino' in out and 'against onnxruntime' in out, out
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert 'Traceback' not in out, out
