"""The ONNX Runtime engine: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from depth_node.estimator.engines.base import EngineOptions
from depth_node.estimator.engines.onnx_base import (CorruptFile, FixedOnnx, OnnxEngine,
                                                    OnnxSource, graph_input_dtype)
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.export import CacheEntry

logger = logging.getLogger('depth_node.estimator')

#: ONNX Runtime's tensor types -> torch dtypes (what an input is fed as, an output comes as).
ORT_DTYPES = {'tensor(float)': torch.float32, 'tensor(float16)': torch.float16,
              'tensor(double)': torch.float64}
_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}
GPU_PROVIDERS = ('CUDAExecutionProvider', 'TensorrtExecutionProvider')
#: ONNX Runtime's errors for a file that does not parse or load (the cache rebuilds it).
_CORRUPT = ('InvalidProtobuf', 'NoSuchFile', 'InvalidGraph', 'NoModel')


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise EstimatorError(
            "model.engine onnxruntime needs ONNX Runtime: pip install 'depth_node[onnxruntime]' "
            '(onnxruntime-gpu for the CUDA and TensorRT providers)') from exc
    return onnxruntime


def ort_dtype(type_name: str, what: str) -> torch.dtype:
    """The torch dtype of ONNX Runtime's ``type_name`` (``'tensor(float16)'``).

    Raises
    ------
    EstimatorError
        A type a depth model's input or output cannot be (integers, strings).
    """
    dtype = ORT_DTYPES.get(str(type_name))
    if dtype is None:
        raise EstimatorError(f'{what} is {type_name}; a depth model takes and gives floating '
                             f"point tensors ({', '.join(ORT_DTYPES)})")
    return dtype


def static_shape(dims: Sequence[Any]) -> Optional[tuple[int, ...]]:
    """``dims`` as ints, or None when one is symbolic (a name, None or negative): ONNX
    Runtime then allocates that output itself."""
    shape = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            return None
        shape.append(int(d))
    return tuple(shape)


def provider_options(providers: Sequence[str], device_index: int, trt_fp16: bool,
                     trt_cache: Optional[Path]) -> list[dict]:
    """Per-provider options: the device for CUDA and TensorRT, and the TensorRT provider's
    engine cache in ``trt_cache`` (one folder per cache entry: ONNX Runtime names its engines
    by a hash of the model's file name and tensor names, not its weights or shapes, so one
    shared folder would hand one model's engine to another)."""
    options = []
    for p in providers:
        if p == 'TensorrtExecutionProvider':
            trt = {'device_id': int(device_index), 'trt_fp16_enable': bool(trt_fp16)}
            if trt_cache is not None:
                trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache))
            options.append(trt)
        elif p == 'CUDAExecutionProvider':
            options.append({'device_id': int(device_index)})
        else:
            options.append({})
    return options


def check_session_providers(requested: Sequence[str], running: Sequence[str],
                            version: str) -> None:
    """Refuse a session that does not run every provider asked for.

    ONNX Runtime lists the CUDA and TensorRT providers as available whenever onnxruntime-gpu
    is installed, and falls back to the CPU with a log line only when their libraries (CUDA,
    cuDNN, TensorRT) fail to load: ``session.get_providers()`` says what it really runs.

    Raises
    ------
    EstimatorError
        Naming the providers that did not load.
    """
    missing = [p for p in requested if p not in running]
    if missing:
        raise EstimatorError(
            f"ONNX Runtime {version} could not load {', '.join(missing)} (the session runs on "
            f"{', '.join(running) or 'nothing'}): its CUDA, cuDNN or TensorRT libraries are "
            'missing or of another version than this onnxruntime-gpu was built for; install '
            "the versions ONNX Runtime's CUDA provider page lists, or set "
            "model.onnxruntime_providers to those that load (model.device 'cpu' with "
            'CPUExecutionProvider)')


@dataclass
class OrtSession:
    """One compiled input shape: the session and its I/O as it reports them."""

    session: Any
    input_name: str
    input_dtype: torch.dtype
    output_names: list[str]
    output_dtypes: list[torch.dtype]
    #: per output, its shape (None until known when the graph's is symbolic)
    output_shapes: list[Optional[tuple[int, ...]]] = field(default_factory=list)


class OnnxRuntimeEngine(OnnxEngine):
    """Runs the exported network in an ``onnxruntime.InferenceSession`` per input shape.

    On the CPU provider the input is a NumPy view of the CPU tensor (no copy). On CUDA (CUDA or
    TensorRT provider first) input and outputs stay on the device through I/O binding with torch
    tensors; an output whose shape the graph leaves symbolic is allocated by ONNX Runtime on its
    first run, and bound to a torch tensor of that shape afterwards. Input and output dtypes are
    the session's own. A session that silently fell back to the CPU (CUDA or TensorRT libraries
    that did not load) is refused. Precision: fp32 on the CPU (ONNX Runtime's CPU provider has no
    fast bf16 path); fp16 on CUDA runs an fp16 export (CUDA provider) or TensorRT's fp16 mode. A
    plain ONNX model (exported elsewhere) runs in its graph's own precision on the CPU and CUDA
    providers (an fp32 graph stays fp32, with a warning when fp16 was asked for); the TensorRT
    provider's fp16 mode casts it.
    """

    name = 'onnxruntime'

    def __init__(self, source: OnnxSource, cache_dir: Path, device: torch.device,
                 dtype: torch.dtype, options: EngineOptions) -> None:
        super().__init__(source, cache_dir)
        ort = import_onnxruntime()
        self._ort = ort
        self.version = ort.__version__
        cuda = device.type == 'cuda'
        providers = list(options.providers) or (
            ['CUDAExecutionProvider', 'CPUExecutionProvider'] if cuda
            else ['CPUExecutionProvider'])
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise EstimatorError(
                f'ONNX Runtime {ort.__version__} has no {", ".join(missing)} here (available: '
                f'{", ".join(available)}); install onnxruntime-gpu for CUDA/TensorRT, or set '
                'model.onnxruntime_providers to available ones')
        on_gpu = providers[0] in GPU_PROVIDERS
        if on_gpu != cuda:
            raise EstimatorError(
                f'model.onnxruntime_providers starts with {providers[0]} but model.device is '
                f"{device}: use a CUDA device with the CUDA/TensorRT providers, 'cpu' with "
                'CPUExecutionProvider')
        if dtype == torch.bfloat16:
            raise EstimatorError(
                "ONNX Runtime has no fast bf16 path: use model.precision fp32 with onnxruntime, "
                'or model.engine openvino (bf16 on CPUs with AMX/AVX512-BF16) or torch')
        if dtype == torch.float16 and not cuda:
            raise EstimatorError("precision 'fp16' is for CUDA; use fp32 on the CPU")
        self.device = device
        self.precision = 'fp16' if dtype == torch.float16 else 'fp32'
        self.trt_fp16 = providers[0] == 'TensorrtExecutionProvider' and dtype == torch.float16
        # TensorRT casts an fp32 graph itself; the CUDA provider runs an fp16 export.
        self.input_dtype = torch.float16 if dtype == torch.float16 and not self.trt_fp16 \
            else torch.float32
        graph_dtype = graph_input_dtype(source)
        if graph_dtype is not None:  # a plain ONNX model: feed what its graph takes
            if graph_dtype != self.input_dtype and not self.trt_fp16:
                logger.warning('%s takes %s input: ONNX Runtime runs it as exported (%s), not '
                               "in precision '%s' (TensorRT's fp16 mode casts an fp32 graph: "
                               'TensorrtExecutionProvider or model.engine tensorrt)',
                               source.path.name, str(graph_dtype).replace('torch.', ''),
                               'fp16' if graph_dtype == torch.float16 else 'fp32',
                               self.precision)
            self.input_dtype = graph_dtype
            if not self.trt_fp16:
                self.precision = 'fp16' if graph_dtype == torch.float16 else 'fp32'
        self.providers = providers
        self.device_index = device.index or 0
        self.threads = int(options.threads)

    def describe(self) -> str:
        providers = ', '.join(self.providers)
        return f'onnxruntime {self._ort.__version__} {self.precision} ({providers})'

    def _keyed_entries(self) -> bool:
        return 'TensorrtExecutionProvider' in self.providers

    def provider_options(self, entry: CacheEntry) -> list[dict]:
        """The providers' options for a session over ``entry`` (see :func:`provider_options`)."""
        trt_cache = None
        if 'TensorrtExecutionProvider' in self.providers and (
                entry.key or not isinstance(self.source, FixedOnnx)):
            trt_cache = entry.artefact(f'onnxruntime-{self.version}-trt'
                                       f'{"-fp16" if self.trt_fp16 else ""}')
        return provider_options(self.providers, self.device_index, self.trt_fp16, trt_cache)

    def _compile(self, path: Path, entry: CacheEntry, shape: tuple[int, ...]) -> OrtSession:
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads > 0:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        options = self.provider_options(entry)
        for option in options:
            if option.get('trt_engine_cache_path'):
                Path(option['trt_engine_cache_path']).mkdir(parents=True, exist_ok=True)
        try:
            session = ort.InferenceSession(str(path), so, providers=self.providers,
                                           provider_options=options)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's error types
            if type(exc).__name__ in _CORRUPT:
                raise CorruptFile(f'{type(exc).__name__}: {exc}') from exc
            raise
        check_session_providers(self.providers, session.get_providers(), self.version)
        return self._describe_session(session)

    @staticmethod
    def _describe_session(session: Any) -> OrtSession:
        """The session's I/O names, dtypes and static output shapes."""
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        return OrtSession(
            session=session, input_name=inputs[0].name,
            input_dtype=ort_dtype(inputs[0].type, f'input {inputs[0].name}'),
            output_names=[o.name for o in outputs],
            output_dtypes=[ort_dtype(o.type, f'output {o.name}') for o in outputs],
            output_shapes=[static_shape(o.shape) for o in outputs])

    def _output_names(self, compiled: OrtSession) -> list[str]:
        return compiled.output_names

    def _release(self, compiled: OrtSession) -> None:
        compiled.session = None

    def _infer(self, compiled: OrtSession, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        session = compiled.session
        x = pixel_values.to(compiled.input_dtype).contiguous()
        if self.device.type != 'cuda':
            outs = session.run(compiled.output_names, {compiled.input_name: x.numpy()})
            return [torch.from_numpy(np.ascontiguousarray(o)) for o in outs]
        # CUDA: input and outputs stay on the device, bound to torch tensors.
        binding = session.io_binding()
        index = self.device_index
        binding.bind_input(compiled.input_name, 'cuda', index, _NP[x.dtype], tuple(x.shape),
                           x.data_ptr())
        results: list[Optional[torch.Tensor]] = []
        for name, dtype, shape in zip(compiled.output_names, compiled.output_dtypes,
                                      compiled.output_shapes):
            if shape is None:  # symbolic: ONNX Runtime allocates it on the device
                binding.bind_output(name, 'cuda', index)
                results.append(None)
                continue
            out = torch.empty(shape, dtype=dtype, device=self.device)
            binding.bind_output(name, 'cuda', index, _NP[dtype], shape, out.data_ptr())
            results.append(out)
        torch.cuda.current_stream(self.device).synchronize()  # the input is written
        session.run_with_iobinding(binding)
        if any(r is None for r in results):
            values = binding.get_outputs()
            for i, value in enumerate(values):
                if results[i] is None:
                    # known from now on: later runs bind a torch tensor of this shape
                    compiled.output_shapes[i] = tuple(int(d) for d in value.shape())
                    results[i] = torch.from_numpy(np.ascontiguousarray(value.numpy())).to(
                        self.device)
        return results
