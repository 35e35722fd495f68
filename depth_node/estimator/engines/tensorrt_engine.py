"""The TensorRT engine (CUDA only): a serialized TensorRT plan per input shape, cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from depth_node.estimator.engines.base import EngineOptions
from depth_node.estimator.engines.onnx_base import OnnxEngine, OnnxSource, graph_input_dtype
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.export import CacheEntry, write_atomic


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EstimatorError(
            "model.engine tensorrt needs TensorRT's Python package: pip install "
            "'depth_node[tensorrt]' on a CUDA machine (on Jetson it comes with JetPack)") \
            from exc
    return tensorrt


class TensorRtEngine(OnnxEngine):
    """Builds a TensorRT plan from the fp32 ONNX export (fp16 with ``BuilderFlag.FP16``) and
    runs it with ``execute_async_v3`` on torch's current stream, input and outputs in torch
    CUDA tensors. Plans are cached beside the ONNX file, keyed by TensorRT's version and the
    GPU's name (a plan only runs where it was built). TensorRT keeps LayerNorm in fp16 and
    warns about it; check the fp16 output against fp32 on your model
    (``test/test_gpu.py::test_tensorrt_fp16_close_to_fp32``)."""

    name = 'tensorrt'

    def __init__(self, source: OnnxSource, cache_dir: Path, device: torch.device,
                 dtype: torch.dtype, options: EngineOptions) -> None:
        super().__init__(source, cache_dir)
        if device.type != 'cuda':
            raise EstimatorError("model.engine tensorrt runs on CUDA only; set model.device "
                                 "'cuda' (or use onnxruntime / openvino on the CPU)")
        trt = import_tensorrt()
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.device = device
        # float32 (BuilderFlag.FP16 casts inside), or what a plain ONNX graph takes
        self.input_dtype = graph_input_dtype(source) or torch.float32
        if dtype == torch.bfloat16:
            raise EstimatorError("model.engine tensorrt runs 'fp16' or 'fp32'")
        self.precision = 'fp16' if dtype == torch.float16 else 'fp32'

    def describe(self) -> str:
        return f'tensorrt {self._trt.__version__} {self.precision}'

    def _plan_name(self) -> str:
        gpu = torch.cuda.get_device_name(self.device).replace(' ', '_').replace('/', '_')
        return f'tensorrt-{self._trt.__version__}-{gpu}-{self.precision}.plan'

    def _build(self, path: Path) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(path.read_bytes()):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EstimatorError(f'TensorRT could not parse {path}: {errors}')
        config = builder.create_builder_config()
        if self.precision == 'fp16':
            config.set_flag(trt.BuilderFlag.FP16)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EstimatorError(f'TensorRT could not build an engine from {path}')
        return bytes(plan)

    def _compile(self, path: Path, entry: CacheEntry, shape: tuple[int, ...]) -> Any:
        trt = self._trt
        plan_path = entry.artefact(self._plan_name())
        if not plan_path.is_file():
            plan = self._build(path)
            write_atomic(plan_path, lambda tmp: tmp.write_bytes(plan))
        with torch.cuda.device(self.device):
            engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan_path.read_bytes())
            if engine is None:
                plan_path.unlink(missing_ok=True)
                raise EstimatorError(f'TensorRT could not load {plan_path} (removed; it is '
                                     'rebuilt on the next start)')
            context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        buffers = []
        for n in outputs:
            dtype = torch.float16 if engine.get_tensor_dtype(n) == trt.DataType.HALF \
                else torch.float32
            buffers.append(torch.empty(tuple(engine.get_tensor_shape(n)), dtype=dtype,
                                       device=self.device))
            context.set_tensor_address(n, buffers[-1].data_ptr())
        return engine, context, inputs[0], buffers, outputs

    def _output_names(self, compiled: Any) -> list[str]:
        return compiled[4]

    def _infer(self, compiled: Any, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        engine, context, input_name, buffers, _ = compiled
        x = pixel_values.to(self.input_dtype).contiguous()
        context.set_tensor_address(input_name, x.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise EstimatorError('TensorRT execution failed')
        # The buffers are reused by the next frame; postprocessing reads them before that.
        return list(buffers)
