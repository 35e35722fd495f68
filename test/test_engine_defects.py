"""The GPU engine defects of issue 24, each checked on the CPU where its logic allows.

TensorRT is not installed here: a stub ``tensorrt`` module (:class:`StubTrt`, put in
``sys.modules`` by the ``stub_trt`` fixture, in this test only) records what the engine asks of
the builder, the parser, the runtime and the execution context. ONNX Runtime's CUDA and TensorRT
providers are "available" through a patched ``get_available_providers`` and a stub session that
reports what it runs. What only a GPU can show (a dedicated stream, ``cuda:N``, real plans) is in
``test_gpu.py``.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import logging
from pathlib import Path
import sys
import types
import warnings

import pytest
import torch

from depth_node.estimator import EstimatorError
from depth_node.estimator.device import is_device_lost
from depth_node.estimator.engines.base import EngineOptions
from depth_node.estimator.engines.onnx_base import CorruptFile, FixedOnnx, OnnxEngine
from depth_node.estimator.export import CacheEntry, OnnxExporter
from depth_node.estimator.loading import load_checkpoint
from depth_node.estimator.model_card import load_onnx_model

CARD = {'input_size': [240, 320], 'resize_filter': 'bilinear', 'mean': [0.5, 0.5, 0.5],
        'std': [0.25, 0.25, 0.25], 'output_kind': 'relative_depth'}
SHAPE = (1, 3, 240, 320)


class _Net(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(self.conv(x))   # (B, 1, H, W)


def write_model(path: Path, seed: int = 0, dynamic: bool = False, card: dict = CARD) -> Path:
    """A tiny ONNX depth model at ``path`` (a ``.onnx`` file) with its card beside it."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {'image': {0: 'b', 2: 'h', 3: 'w'}, 'depth': {0: 'b', 2: 'h', 3: 'w'}} \
        if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(_Net(seed).eval(), (torch.zeros(SHAPE),), str(path), opset_version=17,
                          dynamo=False, input_names=['image'], output_names=['depth'],
                          dynamic_axes=axes)
    if dynamic:
        card = {k: v for k, v in card.items() if k != 'input_size'}
        card.update(short_side=240, multiple=16)
    path.with_suffix('.yaml').write_text(yaml.safe_dump(card))
    return path


# ------------------------------------------------------------------------ the stub TensorRT

class StubTrt(types.ModuleType):
    """Just enough of the TensorRT 10 Python API, recording every call in :attr:`calls`.

    The built engine takes input ``image`` in ``input_type`` (HALF by default) and gives
    ``sky`` (FLOAT) before ``depth`` (HALF), both ``(B, 1, H, W)`` of the input set on the
    context; the engine itself reports -1 for dynamic dimensions, as TensorRT does.
    """

    def __init__(self, version: str = '10.12.0.36', fp16_flag: bool = True) -> None:
        super().__init__('tensorrt')
        self.__spec__ = importlib.machinery.ModuleSpec('tensorrt', None)
        self.__version__ = version
        self.calls: list[tuple] = []
        self.input_type = 'HALF'
        self.fail_loads = 0          # deserialize_cuda_engine returns None this many times
        self.parse_ok = True
        self.in_device_scope = None  # a callable: is the engine's device current now?
        self.DataType = types.SimpleNamespace(FLOAT='FLOAT', HALF='HALF', BF16='BF16',
                                              INT32='INT32', INT64='INT64', INT8='INT8',
                                              UINT8='UINT8', BOOL='BOOL', FP8='FP8')
        self.TensorIOMode = types.SimpleNamespace(INPUT='INPUT', OUTPUT='OUTPUT')
        self.BuilderFlag = types.SimpleNamespace(**({'FP16': 'FP16'} if fp16_flag else {}),
                                                 TF32='TF32')
        stub = self

        class Logger:
            WARNING = 'WARNING'

            def __init__(self, level):
                self.level = level

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self):
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class Parser:
            num_errors = 1

            def __init__(self, network, logger):
                self.network = network

            def parse(self, data):
                raise AssertionError('parse(bytes) cannot read external weights')

            def parse_from_file(self, path):
                stub.calls.append(('parse_from_file', path))
                import onnx
                model = onnx.load(path, load_external_data=False)
                dims = model.graph.input[0].type.tensor_type.shape.dim
                shape = tuple(d.dim_value if d.HasField('dim_value') else -1 for d in dims)
                self.network.inputs.append(Tensor(model.graph.input[0].name, shape))
                return stub.parse_ok

            def get_error(self, i):
                return 'In node 0: unsupported operator'

        class Profile:
            def set_shape(self, name, low, opt, high):
                stub.calls.append(('profile', name, low, opt, high))

        class Config:
            def set_flag(self, flag):
                stub.calls.append(('flag', flag))

            def add_optimization_profile(self, profile):
                stub.calls.append(('add_profile',))

        class Builder:
            def __init__(self, logger):
                stub.calls.append(('builder', stub.in_device_scope()
                                   if stub.in_device_scope else None))

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                stub.calls.append(('build', network.inputs[0].shape))
                return b'PLAN'

        class Context:
            def __init__(self):
                self.input_shape = None
                self.addresses = {}

            def set_input_shape(self, name, shape):
                stub.calls.append(('set_input_shape', name, tuple(shape)))
                self.input_shape = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                b, _, h, w = self.input_shape
                return (b, 1, h, w)

            def set_tensor_address(self, name, address):
                self.addresses[name] = address

        class Engine:
            names = ['image', 'sky', 'depth']
            num_io_tensors = 3

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_mode(self, name):
                return 'INPUT' if name == 'image' else 'OUTPUT'

            def get_tensor_dtype(self, name):
                return {'image': stub.input_type, 'sky': 'FLOAT', 'depth': 'HALF'}[name]

            def get_tensor_shape(self, name):
                return (-1, 3, -1, -1) if name == 'image' else (-1, 1, -1, -1)

            def create_execution_context(self):
                return Context()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                stub.calls.append(('load', data))
                if stub.fail_loads:
                    stub.fail_loads -= 1
                    return None
                return Engine()

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, Parser, \
            Runtime


@pytest.fixture
def stub_trt(monkeypatch):
    """A :class:`StubTrt` as ``tensorrt`` for this test; ``torch.cuda.get_device_name``
    patched (the plan is named by the GPU)."""
    import torch._dynamo  # noqa: F401 - loaded first: it looks the real tensorrt up on import

    trt = StubTrt()
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Stub GPU 80GB')
    return trt


def trt_engine(source, cache: Path, precision=torch.float16):
    """A TensorRtEngine over ``source`` made for ``cuda:0`` and then pointed at the CPU (its
    buffers are allocated there; nothing touches CUDA), with a stub stream."""
    from depth_node.estimator.engines.tensorrt_engine import TensorRtEngine

    engine = TensorRtEngine(source, cache, torch.device('cuda', 0), precision, EngineOptions())
    engine.device = torch.device('cpu')
    engine._new_stream = lambda: 'stream'
    return engine


# ------------------------------------------------------------------------ 4: the version gate

@pytest.mark.parametrize('version, message', [
    ('8.6.2', 'older than this engine supports.*JetPack 5'),
    ('9.3.0', 'older than this engine supports'),
    ('11.0.0', "newer than this engine supports.*tensorrt<11"),
    ('not a version', 'older than this engine supports'),
])
def test_tensorrt_outside_the_supported_range_is_refused(version, message, stub_trt, tmp_path):
    stub_trt.__version__ = version
    model = load_onnx_model(str(write_model(tmp_path / 'm.onnx')))
    with pytest.raises(EstimatorError, match=message):
        trt_engine(FixedOnnx(model, tmp_path / 'cache'), tmp_path / 'cache')
    assert not any(c[0] == 'builder' for c in stub_trt.calls)


@pytest.mark.parametrize('version', ['10.0.1', '10.3.0.30', '10.16.0'])
def test_tensorrt_10_is_accepted(version, stub_trt, tmp_path):
    stub_trt.__version__ = version
    model = load_onnx_model(str(write_model(tmp_path / 'm.onnx')))
    engine = trt_engine(FixedOnnx(model, tmp_path / 'cache'), tmp_path / 'cache')
    assert engine.version == version


def test_missing_fp16_flag_is_a_config_error_not_a_corrupt_export(stub_trt, tmp_path, caplog):
    """TensorRT 11 removed BuilderFlag.FP16: that is not a corrupt ONNX export (which would be
    deleted and exported again)."""
    from tiny_models import make_tiny_depth_anything

    del stub_trt.BuilderFlag.FP16
    exporter = OnnxExporter(load_checkpoint(str(make_tiny_depth_anything(tmp_path))),
                            tmp_path / 'cache')
    exports = []
    original = exporter.export
    exporter.export = lambda *a: exports.append(a) or original(*a)
    engine = trt_engine(exporter, tmp_path / 'cache')
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'), \
            pytest.raises(EstimatorError, match=r'no BuilderFlag\.FP16.*precision .fp32.'):
        engine.prepare((1, 3, 70, 70))
    assert len(exports) == 1 and not any('exporting it again' in r.getMessage()
                                         for r in caplog.records)
    entry, _ = exporter.entry((1, 3, 70, 70))
    assert entry.onnx.is_file()   # kept
    # a parse failure is what means a corrupt file: exported again once
    stub_trt.BuilderFlag.FP16 = 'FP16'
    stub_trt.parse_ok = False
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'), \
            pytest.raises(EstimatorError, match='even after exporting it again.*unsupported'):
        engine.prepare((1, 3, 70, 70))
    assert len(exports) == 2 and any('exporting it again' in r.getMessage()
                                     for r in caplog.records)


# ---------------------------------------------- 2, 3, 7, 10, 11, 12: build, load, I/O, plans

def test_plan_of_a_plain_onnx_model_is_keyed_by_content_and_shape_under_the_cache(stub_trt,
                                                                                  tmp_path):
    models = tmp_path / 'models'
    cache = tmp_path / 'cache'
    a = FixedOnnx(load_onnx_model(str(write_model(models / 'a.onnx', seed=0))), cache)
    b = FixedOnnx(load_onnx_model(str(write_model(models / 'b.onnx', seed=1))), cache)
    engine_a, engine_b = trt_engine(a, cache), trt_engine(b, cache)
    engine_a.prepare(SHAPE)
    engine_b.prepare(SHAPE)
    plans = sorted(cache.glob('onnx-*/tensorrt-*.plan'))
    assert len(plans) == 2 and plans[0].parent != plans[1].parent
    assert plans[0].name == 'tensorrt-10.12.0.36-Stub_GPU_80GB-fp16.plan'
    assert sorted(p.name for p in models.iterdir()) == ['a.onnx', 'a.yaml', 'b.onnx', 'b.yaml']
    # the same file at the same shape: the same entry; replaced (other weights): another one
    assert a.entry(SHAPE)[0].folder in {p.parent for p in plans}
    assert a.key((2,) + SHAPE[1:]) != a.key(SHAPE)   # another shape, another key
    before = a.entry(SHAPE)[0].folder
    write_model(models / 'a.onnx', seed=2)
    replaced = FixedOnnx(load_onnx_model(str(models / 'a.onnx')), cache)
    assert replaced.entry(SHAPE)[0].folder != before
    # external weight files are part of the key
    assert 'external_data' in type(replaced.model).__dataclass_fields__


def test_external_weight_files_change_the_key(tmp_path):
    import onnx

    path = write_model(tmp_path / 'big' / 'model.onnx')
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location='model.weights', size_threshold=0)
    card = load_onnx_model(str(path))
    assert card.external_data == ('model.weights',)
    source = FixedOnnx(card, tmp_path / 'cache')
    key = source.key(SHAPE)
    weights = tmp_path / 'big' / 'model.weights'
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert FixedOnnx(load_onnx_model(str(path)), tmp_path / 'cache').key(SHAPE) != key


def test_dynamic_onnx_builds_with_a_profile_and_outputs_sized_by_the_context(stub_trt, tmp_path):
    model = load_onnx_model(str(write_model(tmp_path / 'dyn.onnx', dynamic=True)))
    assert model.input_shape == (None, 3, None, None)
    engine = trt_engine(FixedOnnx(model, tmp_path / 'cache'), tmp_path / 'cache')
    shape = (2, 3, 240, 368)
    engine.prepare(shape)
    calls = stub_trt.calls
    assert ('profile', 'image', shape, shape, shape) in calls and ('add_profile',) in calls
    assert ('flag', 'FP16') in calls
    assert ('set_input_shape', 'image', shape) in calls
    # item 11: parsed from the file (external weights are read beside it), not from bytes
    assert ('parse_from_file', str(tmp_path / 'dyn.onnx')) in calls
    plan = engine._compiled[shape]
    # item 7: each tensor's own dtype, outputs in the engine's order, picked by name later
    assert plan.input_dtype == torch.float16 and engine.input_dtype == torch.float32
    assert plan.output_names == ['sky', 'depth']
    assert [b.dtype for b in plan.buffers] == [torch.float32, torch.float16]
    assert [tuple(b.shape) for b in plan.buffers] == [(2, 1, 240, 368)] * 2


def test_static_onnx_gets_no_profile(stub_trt, tmp_path):
    model = load_onnx_model(str(write_model(tmp_path / 's.onnx')))
    engine = trt_engine(FixedOnnx(model, tmp_path / 'cache'), tmp_path / 'cache', torch.float32)
    engine.prepare(SHAPE)
    assert not any(c[0] in ('profile', 'add_profile') for c in stub_trt.calls)
    assert not any(c[0] == 'flag' for c in stub_trt.calls)   # fp32: no FP16 flag


def test_tensor_types_map_to_torch_and_unknown_ones_are_refused(stub_trt):
    from depth_node.estimator.engines.tensorrt_engine import torch_dtype

    expected = {'FLOAT': torch.float32, 'HALF': torch.float16, 'BF16': torch.bfloat16,
                'INT32': torch.int32, 'INT64': torch.int64, 'INT8': torch.int8,
                'UINT8': torch.uint8, 'BOOL': torch.bool}
    for member, dtype in expected.items():
        assert torch_dtype(stub_trt, member, 'x') == dtype
    with pytest.raises(EstimatorError, match='output depth has TensorRT type FP8'):
        torch_dtype(stub_trt, 'FP8', 'output depth')


def test_an_integer_input_is_refused(stub_trt, tmp_path):
    stub_trt.input_type = 'INT32'
    model = load_onnx_model(str(write_model(tmp_path / 'm.onnx')))
    engine = trt_engine(FixedOnnx(model, tmp_path / 'cache'), tmp_path / 'cache')
    with pytest.raises(EstimatorError, match='floating point image'):
        engine.prepare(SHAPE)


def test_a_plan_that_does_not_load_is_rebuilt_once(stub_trt, tmp_path, caplog):
    model = load_onnx_model(str(write_model(tmp_path / 'm.onnx')))
    cache = tmp_path / 'cache'
    trt_engine(FixedOnnx(model, cache), cache).prepare(SHAPE)   # builds and writes the plan
    (plan,) = cache.glob('onnx-*/tensorrt-*.plan')
    plan.write_bytes(b'stale plan of another driver')
    stub_trt.calls.clear()
    stub_trt.fail_loads = 1
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        trt_engine(FixedOnnx(model, cache), cache).prepare(SHAPE)
    assert any('building it again' in r.getMessage() for r in caplog.records)
    assert [c[0] for c in stub_trt.calls if c[0] in ('load', 'build')] == \
        ['load', 'build', 'load']
    assert plan.read_bytes() == b'PLAN'
    # a plan that does not load even when just built: an error, the plan removed
    stub_trt.fail_loads = 2
    with pytest.raises(EstimatorError, match='could not load the plan it built'):
        trt_engine(FixedOnnx(model, cache), cache).prepare(SHAPE)
    assert not plan.exists()


def test_the_plan_is_built_with_the_engine_device_current(stub_trt, tmp_path):
    """Item 10: on cuda:N the build runs with cuda:N current (the plan is named for it)."""
    model = load_onnx_model(str(write_model(tmp_path / 'm.onnx')))
    engine = trt_engine(FixedOnnx(model, tmp_path / 'cache'), tmp_path / 'cache')
    current = []

    @contextlib.contextmanager
    def scope():
        current.append(True)
        try:
            yield
        finally:
            current.pop()

    engine._device_scope = scope
    stub_trt.in_device_scope = lambda: bool(current)
    engine.prepare(SHAPE)
    assert ('builder', True) in stub_trt.calls


# ------------------------------------------------- 1, 5, 8, 9: the ONNX Runtime GPU providers

class _Arg:
    def __init__(self, name, type_, shape):
        self.name, self.type, self.shape = name, type_, shape


class StubSession:
    """An ``InferenceSession`` that runs ``providers_run`` whatever was asked."""

    providers_run = ['CPUExecutionProvider']
    made: list = []

    def __init__(self, path, so=None, providers=(), provider_options=()):
        self.path, self.providers, self.options = path, providers, provider_options
        StubSession.made.append(self)

    def get_providers(self):
        return list(self.providers_run)

    def get_inputs(self):
        return [_Arg('image', 'tensor(float16)', ['batch', 3, 240, 320])]

    def get_outputs(self):
        return [_Arg('depth', 'tensor(float)', ['batch', 1, 240, 320]),
                _Arg('conf', 'tensor(float16)', [1, 1, 240, 320])]


@pytest.fixture
def gpu_ort(monkeypatch):
    """onnxruntime with its CUDA and TensorRT providers listed as available, sessions stubbed."""
    ort = pytest.importorskip('onnxruntime')
    monkeypatch.setattr(ort, 'get_available_providers', lambda: [
        'TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'])
    monkeypatch.setattr(ort, 'InferenceSession', StubSession)
    StubSession.made = []
    StubSession.providers_run = ['CPUExecutionProvider']
    return ort


def ort_engine(source, cache, providers, index=1, dtype=torch.float16):
    from depth_node.estimator.engines.onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(source, cache, torch.device('cuda', index), dtype,
                             EngineOptions(providers=tuple(providers)))


TRT_FIRST = ('TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider')


def test_ort_tensorrt_engine_cache_is_one_folder_per_model_and_shape(gpu_ort, tmp_path):
    cache = tmp_path / 'cache'
    sources = [FixedOnnx(load_onnx_model(str(write_model(tmp_path / 'm' / f'{n}.onnx', seed=i))),
                         cache) for i, n in enumerate(('indoor', 'outdoor'))]
    paths = set()
    for source in sources:
        engine = ort_engine(source, cache, TRT_FIRST)
        options = engine.provider_options(engine._entry(SHAPE)[0])
        trt, cuda, cpu = options
        # item 9: the TensorRT provider gets the device too, not only CUDA
        assert trt['device_id'] == 1 and cuda == {'device_id': 1} and cpu == {}
        assert trt['trt_fp16_enable'] and trt['trt_engine_cache_enable']
        path = Path(trt['trt_engine_cache_path'])
        assert cache in path.parents and path.parent.name.startswith('onnx-')
        paths.add(path)
    assert len(paths) == 2
    # an export of ours: one folder per export entry (model content, shape, versions)
    entries = [CacheEntry(cache / 'k1', 'k1'), CacheEntry(cache / 'k2', 'k2')]
    engine = ort_engine(sources[0], cache, TRT_FIRST)
    engine.source = object()   # not a FixedOnnx
    assert len({engine.provider_options(e)[0]['trt_engine_cache_path'] for e in entries}) == 2


def test_ort_falling_back_to_the_cpu_is_refused(gpu_ort, tmp_path):
    """Item 8: CUDA listed as available, but its libraries did not load: the session runs on
    the CPU only, which get_providers() tells."""
    source = FixedOnnx(load_onnx_model(str(write_model(tmp_path / 'm.onnx'))), tmp_path / 'c')
    engine = ort_engine(source, tmp_path / 'c', ['CUDAExecutionProvider'], index=0)
    with pytest.raises(EstimatorError, match='could not load CUDAExecutionProvider.*runs on '
                                             'CPUExecutionProvider.*cuDNN'):
        engine.prepare(SHAPE)
    StubSession.providers_run = ['CUDAExecutionProvider', 'CPUExecutionProvider']
    engine.prepare(SHAPE)   # both loaded: fine
    engine = ort_engine(source, tmp_path / 'c', TRT_FIRST)
    with pytest.raises(EstimatorError, match='could not load TensorrtExecutionProvider'):
        engine.prepare(SHAPE)


def test_ort_io_dtypes_and_symbolic_shapes_come_from_the_session(gpu_ort, tmp_path):
    """Item 5: an fp16-input graph is fed fp16, whatever the precision; a symbolic output
    dimension is allocated by ONNX Runtime (no int() of a name)."""
    from depth_node.estimator.engines.onnxruntime_engine import ort_dtype, static_shape

    StubSession.providers_run = ['CUDAExecutionProvider', 'CPUExecutionProvider']
    source = FixedOnnx(load_onnx_model(str(write_model(tmp_path / 'm.onnx'))), tmp_path / 'c')
    engine = ort_engine(source, tmp_path / 'c', ['CUDAExecutionProvider'], index=0,
                        dtype=torch.float32)
    engine.prepare(SHAPE)
    compiled = engine._compiled[SHAPE]
    assert compiled.input_dtype == torch.float16
    assert compiled.output_dtypes == [torch.float32, torch.float16]
    assert compiled.output_shapes == [None, (1, 1, 240, 320)]
    assert static_shape(['batch', 1, 240, 320]) is None and static_shape([1, -1]) is None
    assert static_shape([1, 1, 240, 320]) == (1, 1, 240, 320)
    with pytest.raises(EstimatorError, match='tensor\\(int64\\)'):
        ort_dtype('tensor(int64)', 'output depth')


def test_ort_plain_fp32_onnx_with_auto_precision_is_fed_its_own_dtype(tmp_path, monkeypatch):
    """Item 5 and 12: a plain fp32 ONNX model, precision auto on CUDA: the CUDA provider runs
    the graph as it is (fp32 input), no fp16 tensor reaches it."""
    ort = pytest.importorskip('onnxruntime')
    from depth_node.estimator import device as device_module

    monkeypatch.setattr(ort, 'get_available_providers',
                        lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    monkeypatch.setattr(device_module, 'cuda_has_native_bf16', lambda device: True)
    source = FixedOnnx(load_onnx_model(str(write_model(tmp_path / 'm.onnx'))), tmp_path / 'c')
    dtype = device_module.resolve_dtype('auto', torch.device('cuda', 0), 'onnx', 'onnxruntime')
    engine = ort_engine(source, tmp_path / 'c', ['CUDAExecutionProvider'], index=0,
                        dtype=dtype)
    assert engine.input_dtype == torch.float32 and engine.precision == 'fp32'


def test_a_non_corrupt_compile_error_does_not_re_export(tmp_path, monkeypatch, caplog):
    """Item 4: only a file that does not parse or load is exported again; a provider or
    builder error is reported as it is."""
    ort = pytest.importorskip('onnxruntime')
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from depth_node.estimator.engines.onnxruntime_engine import OnnxRuntimeEngine
    from tiny_models import make_tiny_depth_anything

    exporter = OnnxExporter(load_checkpoint(str(make_tiny_depth_anything(tmp_path))),
                            tmp_path / 'cache')
    engine = OnnxRuntimeEngine(exporter, tmp_path / 'cache', torch.device('cpu'),
                               torch.float32, EngineOptions())

    def refuse(*args, **kwargs):
        raise Fail('[ONNXRuntimeError] : 1 : FAIL : provider could not allocate a workspace')

    monkeypatch.setattr(ort, 'InferenceSession', refuse)
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'), \
            pytest.raises(EstimatorError, match='onnxruntime .* could not compile .*Fail.*'
                                                'workspace'):
        engine.prepare((1, 3, 70, 70))
    assert not any('exporting it again' in r.getMessage() for r in caplog.records)
    assert exporter.entry((1, 3, 70, 70))[1] is None   # the export is kept (a cache hit)


# ------------------------------------------------------------- 12: bounds, lost device

class _CountingEngine(OnnxEngine):
    name = 'counting'

    def __init__(self, source, max_shapes):
        super().__init__(source, Path('.'), max_shapes=max_shapes)
        self.released = []

    def _compile(self, path, entry, shape):
        return {'shape': shape}

    def _infer(self, compiled, pixel_values):
        return [torch.zeros(pixel_values.shape[0], 1, 4, 4)]

    def _output_names(self, compiled):
        return ['depth']

    def _release(self, compiled):
        self.released.append(compiled['shape'])


def test_compiled_shapes_are_bounded_least_recently_used_first(tmp_path, caplog):
    model = load_onnx_model(str(write_model(tmp_path / 'dyn.onnx', dynamic=True)))
    engine = _CountingEngine(FixedOnnx(model, tmp_path / 'c'), max_shapes=3)
    shapes = [(1, 3, 240, 16 * k) for k in range(20, 25)]
    with caplog.at_level(logging.WARNING, logger='depth_node.estimator'):
        for shape in shapes[:3]:
            engine.prepare(shape)
        engine.run_outputs(torch.zeros(shapes[0]))   # used again: the most recent now
        engine.prepare(shapes[3])
        engine.prepare(shapes[4])
    assert engine.compiled_shapes == [shapes[0], shapes[3], shapes[4]]
    assert engine.released == [shapes[1], shapes[2]]
    assert sum('keeps at most 3 compiled input shapes' in r.getMessage()
               for r in caplog.records) == 2
    engine.close()
    assert sorted(engine.released) == sorted(shapes[1:] + shapes[:1])


def test_the_default_bound_is_small():
    from depth_node.estimator.engines.onnx_base import MAX_COMPILED_SHAPES

    assert 2 <= MAX_COMPILED_SHAPES <= 8


def test_onnxruntime_errors_are_read_for_a_lost_device():
    """Item 12: ONNX Runtime's exceptions are not RuntimeError subclasses."""
    state = pytest.importorskip('onnxruntime.capi.onnxruntime_pybind11_state')
    lost = state.Fail('[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory '
                      'access was encountered ; GPU=0 ; hostname=x ; file=cuda_call.cc')
    assert not isinstance(lost, RuntimeError)
    assert is_device_lost(lost)
    assert is_device_lost(state.EPFail('CUDNN failure 8: CUDNN_STATUS_EXECUTION_FAILED'))
    assert is_device_lost(state.RuntimeException('unspecified launch failure'))
    assert not is_device_lost(state.Fail('CUDA failure 2: out of memory'))
    assert not is_device_lost(state.InvalidArgument('Unexpected input data type'))
    try:
        try:
            raise lost
        except Exception as exc:
            raise EstimatorError('forward failed') from exc
    except EstimatorError as wrapped:
        assert is_device_lost(wrapped)
    # an error of some other library is still not read
    other = type('Fail', (Exception,), {})('an illegal memory access was encountered')
    assert not is_device_lost(other)


def test_corrupt_file_is_its_own_type():
    assert not issubclass(CorruptFile, EstimatorError)


def test_a_reduced_precision_export_leaves_the_shared_fp32_model_untouched(tmp_path):
    """The checkpoint's fp32 model is the self-check's reference and the source of later fp32
    exports: an fp16 export traces a copy (casting the model itself rounded its weights)."""
    from tiny_models import make_tiny_depth_anything

    exporter = OnnxExporter(load_checkpoint(str(make_tiny_depth_anything(tmp_path))),
                            tmp_path / 'cache', dtype=torch.bfloat16)
    model = exporter.checkpoint.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        exporter.entry((1, 3, 70, 70))  # exports on a cache miss
    except EstimatorError:
        pass  # whether bf16 traces on this CPU does not matter here: the model must not move
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, before[name]), name


def test_a_reference_that_fails_refuses_the_engine_instead_of_skipping_the_check():
    """A self-check whose reference cannot run (out of memory next to the engine) must not let
    an unchecked engine serve: on the CPU there is no second try, the start is refused."""
    from depth_node.estimator.verify import EngineCheck, ReferenceFailed

    class Broken:
        name = 'broken reference'
        device = torch.device('cpu')

        def run(self, pixel_values):
            raise RuntimeError('out of memory')

        def release(self):
            pass

    check = EngineCheck.__new__(EngineCheck)
    check.reference = Broken()
    check.engine = type('E', (), {'describe': lambda self: 'openvino 2026 fp32 on CPU'})()
    with pytest.raises(ReferenceFailed, match='model.verify false'):
        check._reference_outputs(torch.zeros(1, 3, 14, 14))
