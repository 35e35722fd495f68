"""Monocular depth estimation, free of ROS: load a model once, turn RGB frames into depth.

The package's parts, each found by name: :mod:`.device` (device and precision),
:mod:`.loading` (checkpoints), :mod:`.model_card` (plain ONNX models), :mod:`.recipe` (what the
image processor does), :mod:`.preprocess`, :mod:`.engines` (torch, onnxruntime, openvino,
tensorrt), :mod:`.export` (ONNX export and its cache), :mod:`.postprocess`, :mod:`.engine_setup`
(the engine in use: built, checked by :mod:`.verify`, replaced on failure), :mod:`.focal` (focal
lengths for ``focal_scale`` models), :mod:`.clock` (stage times), the slow path for
models without a fast path (:mod:`.slow_path` picks one of :mod:`.generic`, :mod:`.prompted`,
:mod:`.marigold`, all built on :mod:`.slow_base`), :class:`Prediction` (:mod:`.prediction`) and
the facade :class:`DepthEstimator` (:mod:`.facade`) that the node, the demo and the benchmarks
use. Only this ``__init__`` imports the facade; no module imports one that imports it
(``test/test_import_layout.py`` checks that there is no import circle).
"""

from depth_node.estimator.device import cpu_has_native_bf16, resolve_device, resolve_dtype
from depth_node.estimator.engines.base import ENGINES
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.facade import DepthEstimator
from depth_node.estimator.loading import (RANDOM_INIT_CHOICES, RANDOM_WEIGHTS_WARNING,
                                          SUPPORTED_MODEL_TYPES)
from depth_node.estimator.model_card import OUTPUT_KINDS
from depth_node.estimator.prediction import Prediction
from depth_node.hub import DEFAULT_MODEL

__all__ = ['DEFAULT_MODEL', 'ENGINES', 'OUTPUT_KINDS', 'RANDOM_INIT_CHOICES',
           'RANDOM_WEIGHTS_WARNING', 'SUPPORTED_MODEL_TYPES', 'DepthEstimator', 'EstimatorError',
           'Prediction', 'cpu_has_native_bf16', 'resolve_device', 'resolve_dtype']
