"""The OpenVINO engine: Intel CPUs (bf16 on AMX / AVX512-BF16), Intel GPUs and NPUs."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
import platform
import re
from typing import Any

import numpy as np
import torch

from depth_node.estimator.engines.base import EngineOptions
from depth_node.estimator.engines.onnx_base import (CorruptFile, FixedOnnx, OnnxEngine,
                                                    OnnxSource, graph_input_dtype)
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.export import CacheEntry, write_atomic

logger = logging.getLogger('depth_node.estimator')

_HINTS = {torch.float32: 'f32', torch.bfloat16: 'bf16', torch.float16: 'f16'}


def _cpu_model() -> str:
    """The CPU's model name (Linux), '' elsewhere."""
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='replace') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.partition(':')[2].strip()
    except OSError:
        pass
    return ''


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise EstimatorError(
            "model.engine openvino needs OpenVINO: pip install 'depth_node[openvino]'") from exc
    return openvino


class OpenVinoEngine(OnnxEngine):
    """Runs the exported network compiled by OpenVINO for ``options.openvino_device``.

    The input is always float32 NumPy (a view of the CPU tensor); the precision is OpenVINO's
    ``INFERENCE_PRECISION_HINT`` (``bf16`` on the CPU runs the AMX / AVX512-BF16 kernels:
    measured 1.36-1.43x faster than torch bf16 on a 2-core Xeon with AMX; ``f32`` matches torch
    fp32 to 1e-6). The compiled model is exported into the cache entry beside the ONNX file
    (written atomically, keyed by OpenVINO's version, the device, precision, threads and CPU), so
    a warm start imports it instead of compiling. ``PERFORMANCE_HINT: LATENCY``: one frame at a
    time.
    """

    name = 'openvino'

    def __init__(self, source: OnnxSource, cache_dir: Path, dtype: torch.dtype,
                 options: EngineOptions) -> None:
        super().__init__(source, cache_dir)
        ov = import_openvino()
        self._ov = ov
        self.version = ov.get_version().split('-')[0]
        self._core = ov.Core()
        self.ov_device = options.openvino_device or 'CPU'
        available = self._core.available_devices
        base = self.ov_device.split(':')[0].split('.')[0]
        if base not in ('AUTO', 'HETERO', 'MULTI') and \
                not any(d.split('.')[0] == base for d in available):
            raise EstimatorError(
                f"OpenVINO device '{self.ov_device}' is not available here (found: "
                f"{', '.join(available) or 'none'}); set model.openvino_device to one of them")
        self.device = torch.device('cpu')   # OpenVINO takes and returns host memory
        # float32 (OpenVINO casts to the precision hint), or what a plain ONNX graph takes
        self.input_dtype = graph_input_dtype(source) or torch.float32
        self.precision = {torch.float32: 'fp32', torch.bfloat16: 'bf16',
                          torch.float16: 'fp16'}[dtype]
        # No CACHE_DIR: OpenVINO writes its blobs in place, and a node killed mid-write (or a
        # second process reading meanwhile) left a blob that crashed the next process in
        # infer(). Compiled models are exported and written atomically by _compile instead.
        self._config = {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': _HINTS[dtype]}
        if options.threads > 0:
            self._config['INFERENCE_NUM_THREADS'] = int(options.threads)

    def describe(self) -> str:
        return (f'openvino {self._ov.get_version().split("-")[0]} {self.precision} on '
                f'{self.ov_device}')

    def _keyed_entries(self) -> bool:
        return False   # nothing is written for a plain ONNX model (no blob)

    def _blob_name(self) -> str:
        """The compiled model's file in a cache entry: OpenVINO version, device, precision,
        threads and the CPU (a blob holds kernels for the ISA it was compiled on)."""
        cpu = hashlib.sha256(platform.processor().encode() + _cpu_model().encode()).hexdigest()
        threads = self._config.get('INFERENCE_NUM_THREADS', 0)
        device = re.sub(r'[^A-Za-z0-9.]+', '_', self.ov_device)
        return (f'openvino-{self._ov.get_version().split("-")[0]}-{device}-{self.precision}-'
                f't{threads}-{cpu[:12]}.blob')

    def _compile(self, path: Path, entry: CacheEntry, shape: tuple[int, ...]) -> Any:
        blob = None if isinstance(self.source, FixedOnnx) else entry.artefact(self._blob_name())
        if blob is not None and blob.is_file():
            try:
                compiled = self._core.import_model(blob.read_bytes(), self.ov_device,
                                                   self._config)
                return compiled.create_infer_request(), self._names(compiled)
            except Exception as exc:  # noqa: BLE001 - a stale or damaged blob: compile again
                logger.warning('compiled OpenVINO model %s does not load (%s: %s); compiling '
                               'it again', blob, type(exc).__name__, exc)
                blob.unlink(missing_ok=True)
        try:
            model = self._core.read_model(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO's error types
            raise CorruptFile(f'{type(exc).__name__}: {exc}') from exc
        compiled = self._core.compile_model(model, self.ov_device, self._config)
        if blob is not None:
            data = compiled.export_model()
            data = data.getvalue() if hasattr(data, 'getvalue') else bytes(data)  # BytesIO
            write_atomic(blob, lambda tmp: tmp.write_bytes(data))
        return compiled.create_infer_request(), self._names(compiled)

    def _names(self, compiled: Any) -> list[str]:
        """Each output's name: the ONNX graph's name where OpenVINO keeps several."""
        graph = self.source.model.output_names if isinstance(self.source, FixedOnnx) else ()
        names = []
        for output in compiled.outputs:
            held = output.get_names()
            names.append(next((n for n in graph if n in held), None) or output.get_any_name())
        return names

    def _output_names(self, compiled: Any) -> list[str]:
        return compiled[1]

    def _infer(self, compiled: Any, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        request, names = compiled
        x = pixel_values.to(self.input_dtype).contiguous().numpy()
        request.infer({0: x})
        # The output tensors are reused by the next infer: copy them out.
        return [torch.from_numpy(np.array(request.get_output_tensor(i).data, copy=True))
                for i in range(len(names))]
