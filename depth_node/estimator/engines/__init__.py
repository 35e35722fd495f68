"""Inference engines: one class per runtime, each only runs the network.

``model.engine`` picks one; :func:`resolve_engine` turns ``'auto'`` into a name and says why.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from depth_node.estimator.engines.base import ENGINES, Engine, EngineOptions
from depth_node.estimator.errors import EstimatorError

__all__ = ['ENGINES', 'Engine', 'EngineOptions', 'resolve_engine', 'make_onnx_engine']


def engine_available(name: str) -> bool:
    """Whether ``name``'s Python package is importable (without importing it)."""
    module = {'torch': 'torch', 'onnxruntime': 'onnxruntime', 'openvino': 'openvino',
              'tensorrt': 'tensorrt'}[name]
    return importlib.util.find_spec(module) is not None


def resolve_engine(engine: str, device: torch.device, onnx_model: bool = False,
                   ) -> tuple[str, str]:
    """``(engine, reason)`` for ``model.engine`` on ``device``.

    ``'auto'`` picks, on the CPU, OpenVINO when it is installed (measured on a 2-core Xeon with
    AMX, V2-Small 518x686: OpenVINO bf16 171-177 ms against torch bf16 232-244 ms, fp32
    547-566 against 677-777 ms; see BENCHMARKS.md), else torch; on CUDA, torch (its path with
    CUDA graphs needs no build; TensorRT's build takes minutes and has not been measured here);
    for a plain ONNX model, OpenVINO on the CPU when installed, else ONNX Runtime.

    Raises
    ------
    EstimatorError
        Unknown name, torch for a plain ONNX model.
    """
    text = str(engine).strip().lower()
    if text not in ENGINES + ('auto',):
        raise EstimatorError(f"model.engine '{engine}' is not understood; use 'auto', "
                             f"{', '.join(repr(e) for e in ENGINES)}")
    if text == 'auto':
        if device.type == 'cpu' and engine_available('openvino'):
            return 'openvino', ('auto on CPU: OpenVINO is installed (1.3-1.4x faster than torch '
                                'at the same precision on AMX CPUs)')
        if onnx_model:
            return 'onnxruntime', 'auto for an ONNX model: ONNX Runtime'
        if device.type == 'cuda':
            return 'torch', 'auto on CUDA: torch (no engine build at startup)'
        return 'torch', 'auto on CPU: OpenVINO is not installed (pip install depth_node[openvino])'
    if text == 'torch' and onnx_model:
        raise EstimatorError("model.engine torch cannot run a plain ONNX model; use "
                             "'onnxruntime', 'openvino', 'tensorrt' or 'auto'")
    return text, 'set by model.engine'


def make_onnx_engine(name: str, source, cache_dir: Path, device: torch.device,
                     dtype: torch.dtype, options: EngineOptions) -> Engine:
    """An ONNX-based engine (``onnxruntime``, ``openvino`` or ``tensorrt``) over ``source``."""
    if name == 'onnxruntime':
        from depth_node.estimator.engines.onnxruntime_engine import OnnxRuntimeEngine
        return OnnxRuntimeEngine(source, cache_dir, device, dtype, options)
    if name == 'openvino':
        if device.type != 'cpu':
            raise EstimatorError(
                "model.engine openvino takes its device from model.openvino_device ('CPU', "
                f"'GPU', 'NPU'); set model.device to 'cpu' or 'auto', not '{device}'")
        from depth_node.estimator.engines.openvino_engine import OpenVinoEngine
        return OpenVinoEngine(source, cache_dir, dtype, options)
    if name == 'tensorrt':
        from depth_node.estimator.engines.tensorrt_engine import TensorRtEngine
        return TensorRtEngine(source, cache_dir, device, dtype, options)
    raise EstimatorError(f'{name} is not an ONNX engine')
