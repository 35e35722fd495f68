"""The ONNX Runtime engine: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depth_node.estimator.engines.base import EngineOptions
from depth_node.estimator.engines.onnx_base import OnnxEngine, OnnxSource, graph_input_dtype
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.export import CacheEntry

logger = logging.getLogger('depth_node.estimator')
_NP = {torch.float32: np.float32, torch.float16: np.float16}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise EstimatorError(
            "model.engine onnxruntime needs ONNX Runtime: pip install 'depth_node[onnxruntime]' "
            '(onnxruntime-gpu for the CUDA and TensorRT providers)') from exc
    return onnxruntime


class OnnxRuntimeEngine(OnnxEngine):
    """Runs the exported network in an ``onnxruntime.InferenceSession`` per input shape.

    On the CPU provider the input is a float32 NumPy view of the CPU tensor (no copy). On CUDA
    (CUDA or TensorRT provider first) input and output stay on the device through I/O binding
    with torch tensors. Precision: fp32 on the CPU (ONNX Runtime's CPU provider has no fast bf16
    path); fp16 on CUDA runs an fp16 export (CUDA provider) or TensorRT's fp16 mode. A plain
    ONNX model (exported elsewhere) runs in its graph's own precision on the CPU and CUDA
    providers (its input dtype is the graph's: an fp32 graph stays fp32, with a warning when
    fp16 was asked for); the TensorRT provider's fp16 mode casts it.
    """

    name = 'onnxruntime'

    def __init__(self, source: OnnxSource, cache_dir: Path, device: torch.device,
                 dtype: torch.dtype, options: EngineOptions) -> None:
        super().__init__(source, cache_dir)
        ort = import_onnxruntime()
        self._ort = ort
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
        on_gpu = providers[0] in ('CUDAExecutionProvider', 'TensorrtExecutionProvider')
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
        trt_fp16 = providers[0] == 'TensorrtExecutionProvider' and dtype == torch.float16
        # TensorRT casts an fp32 graph itself; the CUDA provider runs an fp16 export.
        self.input_dtype = torch.float16 if dtype == torch.float16 and not trt_fp16 \
            else torch.float32
        graph_dtype = graph_input_dtype(source)
        if graph_dtype is not None:  # a plain ONNX model: feed what its graph takes
            if graph_dtype != self.input_dtype and not trt_fp16:
                logger.warning('%s takes %s input: ONNX Runtime runs it as exported (%s), not '
                               "in precision '%s' (TensorRT's fp16 mode casts an fp32 graph: "
                               'TensorrtExecutionProvider or model.engine tensorrt)',
                               source.path.name, str(graph_dtype).replace('torch.', ''),
                               'fp16' if graph_dtype == torch.float16 else 'fp32',
                               self.precision)
            self.input_dtype = graph_dtype
            if not trt_fp16:
                self.precision = 'fp16' if graph_dtype == torch.float16 else 'fp32'
        self.providers = providers
        self._provider_options = []
        for p in providers:
            if p == 'TensorrtExecutionProvider':
                self._provider_options.append({
                    'trt_fp16_enable': trt_fp16, 'trt_engine_cache_enable': True,
                    'trt_engine_cache_path': str(cache_dir / 'onnxruntime-trt')})
            elif p == 'CUDAExecutionProvider':
                self._provider_options.append({'device_id': device.index or 0})
            else:
                self._provider_options.append({})
        self.threads = int(options.threads)

    def describe(self) -> str:
        providers = ', '.join(self.providers)
        return f'onnxruntime {self._ort.__version__} {self.precision} ({providers})'

    def _compile(self, path: Path, entry: CacheEntry, shape: tuple[int, ...]) -> Any:
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads > 0:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        session = ort.InferenceSession(str(path), so, providers=self.providers,
                                       provider_options=self._provider_options)
        outputs = [o.name for o in session.get_outputs()]
        return session, session.get_inputs()[0].name, outputs

    def _output_names(self, compiled: Any) -> list[str]:
        return compiled[2]

    def _infer(self, compiled: Any, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        session, input_name, output_names = compiled
        x = pixel_values.to(self.input_dtype).contiguous()
        if self.device.type != 'cuda':
            outs = session.run(output_names, {input_name: x.numpy()})
            return [torch.from_numpy(np.ascontiguousarray(o)) for o in outs]
        # CUDA: input and outputs stay on the device, bound to torch tensors (static shapes).
        binding = session.io_binding()
        index = self.device.index or 0
        binding.bind_input(input_name, 'cuda', index, _NP[x.dtype], tuple(x.shape),
                           x.data_ptr())
        results = []
        for output in session.get_outputs():
            dtype = torch.float16 if output.type == 'tensor(float16)' else torch.float32
            out = torch.empty([int(d) for d in output.shape], dtype=dtype, device=self.device)
            binding.bind_output(output.name, 'cuda', index, _NP[dtype], tuple(out.shape),
                                out.data_ptr())
            results.append(out)
        torch.cuda.current_stream(self.device).synchronize()  # the input is written
        session.run_with_iobinding(binding)
        return results
