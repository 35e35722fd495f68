"""The TensorRT engine (CUDA only): a serialized TensorRT plan per input shape, cached."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import logging
from pathlib import Path
import re
from typing import Any

import torch

from depth_node.estimator.engines.base import EngineOptions
from depth_node.estimator.engines.onnx_base import (CorruptFile, OnnxEngine, OnnxSource,
                                                    graph_input_dtype)
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.export import CacheEntry, write_atomic

logger = logging.getLogger('depth_node.estimator')

#: TensorRT versions this engine is written for: ``[low, high)`` as ``(major, minor)``. The
#: TensorRT 10 API (``execute_async_v3``, named I/O tensors, ``BuilderFlag.FP16`` on weakly
#: typed networks); TensorRT 8 (JetPack 5) lacks it, TensorRT 11 drops weak typing.
TENSORRT_SUPPORTED = ((10, 0), (11, 0))

#: TensorRT ``DataType`` member names -> torch dtypes (members a TensorRT lacks are skipped).
_TRT_DTYPES = (('FLOAT', torch.float32), ('HALF', torch.float16), ('BF16', torch.bfloat16),
               ('INT32', torch.int32), ('INT64', torch.int64), ('INT8', torch.int8),
               ('UINT8', torch.uint8), ('BOOL', torch.bool))
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def tensorrt_version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``'10.3.0.30'``; ``(0, 0)`` when it does
    not start with two numbers."""
    match = re.match(r'\s*(\d+)\.(\d+)', str(text))
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_tensorrt_version(text: str) -> None:
    """Refuse a TensorRT outside :data:`TENSORRT_SUPPORTED`, saying what to do instead.

    Raises
    ------
    EstimatorError
        TensorRT 8 or 9 (JetPack 5), TensorRT 11 or later, an unreadable version.
    """
    low, high = TENSORRT_SUPPORTED
    version = tensorrt_version(text)
    if low <= version < high:
        return
    supported = f'TensorRT {low[0]}.x ({low[0]}.{low[1]} to below {high[0]}.{high[1]})'
    if version < low:
        why = (f'TensorRT {text} is older than this engine supports ({supported}: the '
               'execute_async_v3 / named-tensor API); on JetPack 5 use model.engine '
               "onnxruntime with model.onnxruntime_providers ['TensorrtExecutionProvider', "
               "'CUDAExecutionProvider'], or torch; or upgrade to JetPack 6")
    else:
        why = (f'TensorRT {text} is newer than this engine supports ({supported}; TensorRT 11 '
               'drops the fp16 builder flag of weakly typed networks): install tensorrt<11 '
               "(pip install 'tensorrt>=10,<11') or use model.engine onnxruntime or torch")
    raise EstimatorError(f'model.engine tensorrt: {why}')


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, once its version is checked (:func:`check_tensorrt_version`)."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EstimatorError(
            "model.engine tensorrt needs TensorRT's Python package: pip install "
            "'depth_node[tensorrt]' on a CUDA machine (on Jetson it comes with JetPack)") \
            from exc
    check_tensorrt_version(getattr(tensorrt, '__version__', '?'))
    return tensorrt


def torch_dtype(trt: Any, trt_dtype: Any, what: str) -> torch.dtype:
    """The torch dtype of TensorRT's ``trt_dtype`` (``engine.get_tensor_dtype(name)``).

    Raises
    ------
    EstimatorError
        A TensorRT type with no torch equivalent here (FP8, INT4, ...).
    """
    for member, dtype in _TRT_DTYPES:
        value = getattr(trt.DataType, member, None)
        if value is not None and value == trt_dtype:
            return dtype
    raise EstimatorError(f'{what} has TensorRT type {trt_dtype}, which this engine does not '
                         'read; export the model with float32 or float16 inputs and outputs')


@dataclass
class TrtPlan:
    """One input shape's engine, execution context, I/O and output buffers."""

    engine: Any
    context: Any
    input_name: str
    input_dtype: torch.dtype
    buffers: list[torch.Tensor]
    output_names: list[str]


class TensorRtEngine(OnnxEngine):
    """Builds a TensorRT plan from the ONNX file (fp16 with ``BuilderFlag.FP16``) and runs it
    with ``execute_async_v3`` on a stream of its own (ordered after torch's current stream for
    the input, and torch's current stream after it for the outputs), input and outputs in torch
    CUDA tensors of the dtypes the engine reports (``get_tensor_dtype``), outputs picked by
    name.

    A dynamic-shape ONNX file is built with an optimization profile fixed at the prepared shape,
    and the outputs are sized from the execution context once the input shape is set. Plans are
    cached in the export's cache entry (for a plain ONNX model, an entry keyed by the file's
    content and the shape under ``model.cache_dir``), named by TensorRT's version, the GPU's name
    and the precision (a plan only runs where it was built); they are built and loaded on the
    engine's own device. A plan that does not load (another driver, a damaged file) is rebuilt
    once. TensorRT keeps LayerNorm in fp16 and warns about it: the self-check
    (``model.verify``) compares the fp16 output with torch fp32 at startup."""

    name = 'tensorrt'

    def __init__(self, source: OnnxSource, cache_dir: Path, device: torch.device,
                 dtype: torch.dtype, options: EngineOptions) -> None:
        super().__init__(source, cache_dir)
        if device.type != 'cuda':
            raise EstimatorError("model.engine tensorrt runs on CUDA only; set model.device "
                                 "'cuda' (or use onnxruntime / openvino on the CPU)")
        trt = import_tensorrt()
        self._trt = trt
        self.version = str(trt.__version__)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime: Any = None
        self._stream: Any = None
        self.device = device
        # float32 (BuilderFlag.FP16 casts inside), or what a plain ONNX graph takes
        self.input_dtype = graph_input_dtype(source) or torch.float32
        if dtype == torch.bfloat16:
            raise EstimatorError("model.engine tensorrt runs 'fp16' or 'fp32'")
        self.precision = 'fp16' if dtype == torch.float16 else 'fp32'

    def describe(self) -> str:
        return f'tensorrt {self._trt.__version__} {self.precision}'

    def _device_scope(self) -> Any:
        """The engine's device as the current one, so that a plan is built, named and loaded
        for ``cuda:N`` and not for whatever device is current on this thread."""
        if self.device.type == 'cuda':
            return torch.cuda.device(self.device)
        return contextlib.nullcontext()

    def _plan_name(self) -> str:
        gpu = re.sub(r'[^A-Za-z0-9.]+', '_', torch.cuda.get_device_name(self.device))
        return f'tensorrt-{self._trt.__version__}-{gpu}-{self.precision}.plan'

    def _build(self, path: Path, shape: tuple[int, ...]) -> bytes:
        """A serialized plan of ``path`` for input ``shape`` (inside :meth:`_device_scope`).

        Raises
        ------
        CorruptFile
            The ONNX file does not parse.
        EstimatorError
            The builder refused (a flag this TensorRT lacks, a layer it cannot build).
        """
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        # from the file: external weights (a model over 2 GB) are read from beside it
        if not parser.parse_from_file(str(path)):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise CorruptFile(f'TensorRT {self.version} could not parse {path}: {errors}')
        config = builder.create_builder_config()
        profile = None
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(int(d) < 0 for d in tuple(tensor.shape)):  # dynamic: fix it at `shape`
                if profile is None:
                    profile = builder.create_optimization_profile()
                profile.set_shape(tensor.name, tuple(shape), tuple(shape), tuple(shape))
        if profile is not None:
            config.add_optimization_profile(profile)
        if self.precision == 'fp16':
            flag = getattr(trt.BuilderFlag, 'FP16', None)
            if flag is None:
                raise EstimatorError(
                    f'TensorRT {self.version} has no BuilderFlag.FP16 (weakly typed fp16 is '
                    "gone): use model.precision 'fp32', or tensorrt<11")
            config.set_flag(flag)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EstimatorError(
                f'TensorRT {self.version} could not build an engine from {path} for input '
                f'{tuple(shape)} in {self.precision} (the TensorRT log above says why); try '
                "model.precision 'fp32', or model.engine onnxruntime or torch")
        return bytes(plan)

    def _load(self, plan_path: Path) -> Any:
        """The engine deserialized from ``plan_path``, or None when it does not load."""
        if self._runtime is None:
            self._runtime = self._trt.Runtime(self._logger)
        try:
            return self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - TensorRT's own error types
            logger.warning('TensorRT %s: %s does not deserialize (%s: %s)', self.version,
                           plan_path, type(exc).__name__, exc)
            return None

    def _compile(self, path: Path, entry: CacheEntry, shape: tuple[int, ...]) -> TrtPlan:
        with self._device_scope():
            plan_path = entry.artefact(self._plan_name())
            built = False
            if not plan_path.is_file():
                plan = self._build(path, shape)
                write_atomic(plan_path, lambda tmp: tmp.write_bytes(plan))
                built = True
            engine = self._load(plan_path)
            if engine is None and not built:  # stale or damaged: build it again, once
                logger.warning('TensorRT plan %s does not load in TensorRT %s; building it '
                               'again', plan_path, self.version)
                plan_path.unlink(missing_ok=True)
                plan = self._build(path, shape)
                write_atomic(plan_path, lambda tmp: tmp.write_bytes(plan))
                engine = self._load(plan_path)
            if engine is None:
                plan_path.unlink(missing_ok=True)
                raise EstimatorError(
                    f'TensorRT {self.version} could not load the plan it built for {path} '
                    f'({plan_path}, removed) on {self.device}; check the TensorRT log above')
            return self._bind(engine, shape)

    def _bind(self, engine: Any, shape: tuple[int, ...]) -> TrtPlan:
        """An execution context of ``engine`` for input ``shape``, its outputs allocated."""
        trt = self._trt
        context = engine.create_execution_context()
        if context is None:
            raise EstimatorError(f'TensorRT {self.version} could not create an execution '
                                 f'context on {self.device} (out of GPU memory?)')
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1:
            raise EstimatorError(f'the TensorRT engine has inputs {inputs}; a depth model takes '
                                 'one image tensor')
        input_dtype = torch_dtype(trt, engine.get_tensor_dtype(inputs[0]),
                                  f'input {inputs[0]}')
        if input_dtype not in _FLOATS:
            raise EstimatorError(f'input {inputs[0]} of the TensorRT engine is {input_dtype}; '
                                 'a depth model takes a floating point image')
        if not context.set_input_shape(inputs[0], tuple(shape)):
            raise EstimatorError(f'TensorRT {self.version} refuses input shape {tuple(shape)} '
                                 f'for {inputs[0]}')
        buffers = []
        for n in outputs:
            out_shape = tuple(int(d) for d in context.get_tensor_shape(n))
            if any(d < 0 for d in out_shape):
                raise EstimatorError(f'TensorRT output {n} has no static shape ({out_shape}) '
                                     f'for input {tuple(shape)}')
            dtype = torch_dtype(trt, engine.get_tensor_dtype(n), f'output {n}')
            buffers.append(torch.empty(out_shape, dtype=dtype, device=self.device))
            context.set_tensor_address(n, buffers[-1].data_ptr())
        if self._stream is None:
            self._stream = self._new_stream()
        return TrtPlan(engine, context, inputs[0], input_dtype, buffers, outputs)

    def _new_stream(self) -> Any:
        """The stream TensorRT runs on (not the default stream: TensorRT 10 synchronises
        around work on it and warns)."""
        return torch.cuda.Stream(self.device)

    def _output_names(self, compiled: TrtPlan) -> list[str]:
        return compiled.output_names

    def _release(self, compiled: TrtPlan) -> None:
        compiled.context = compiled.engine = None
        compiled.buffers = []

    def _infer(self, compiled: TrtPlan, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        x = pixel_values.to(compiled.input_dtype).contiguous()
        current = torch.cuda.current_stream(self.device)
        stream = self._stream
        # the input is written, and the previous frame's outputs were read, on `current`
        stream.wait_stream(current)
        compiled.context.set_tensor_address(compiled.input_name, x.data_ptr())
        if not compiled.context.execute_async_v3(stream.cuda_stream):
            raise EstimatorError(f'TensorRT {self.version} execution failed on {self.device} '
                                 '(the TensorRT log above says why)')
        x.record_stream(stream)
        current.wait_stream(stream)  # postprocessing on `current` reads the outputs after
        # The buffers are reused by the next frame; postprocessing reads them before that.
        return list(compiled.buffers)
