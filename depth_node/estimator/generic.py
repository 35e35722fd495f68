"""Depth models without a fast path: run through their own processor or pipeline (ROS-free).

The fast path (:mod:`.recipe`, :mod:`.preprocess`, :mod:`.engines`, :mod:`.postprocess`) knows
the model types in :data:`depth_node.estimator.loading.SUPPORTED_MODEL_TYPES`. Any other model
type registered for ``AutoModelForDepthEstimation`` (transformers 5.23: ``chmv2``,
``tipsv2_dpt``, ``prompt_depth_anything``, ...) runs here through its own
``AutoImageProcessor`` and ``post_process_depth_estimation``, in torch: slower (PIL or
torchvision preprocessing on the host, one copy per stage) but what its authors ship. A Marigold
checkpoint (diffusers) runs through :mod:`depth_node.estimator.marigold`.

:func:`depth_node.estimator.slow_path.open_slow_path` says which applies; the
:class:`DepthEstimator` facade then hands every frame to the returned
:class:`~depth_node.estimator.slow_base.SlowPath`. What such a model outputs:
:func:`depth_node.estimator.slow_base.kind_from_config`.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.slow_base import SlowPath, kind_from_config


class GenericTransformersPath(SlowPath):
    """A transformers depth model through ``AutoImageProcessor`` and its
    ``post_process_depth_estimation`` (which resizes to the image's size)."""

    what = 'its own image processor, no fast path'

    def __init__(self, name: str, source: str, offline: bool, config: Any,
                 device: torch.device, dtype: torch.dtype, kind: str) -> None:
        super().__init__(device, dtype)
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation  # heavy

        self.model_name, self.model_type = str(name), str(config.model_type)
        self.output_kind = kind_from_config(config, kind, self.model_name)
        try:
            self.processor = AutoImageProcessor.from_pretrained(source,
                                                                local_files_only=offline)
        except Exception as exc:  # noqa: BLE001 - missing file, missing torchvision, ...
            hint = (' Its image processor needs torchvision: pip install the torchvision '
                    f'build matching torch {torch.__version__}.'
                    if 'torchvision' in str(exc).lower() else '')
            raise EstimatorError(f"could not load the image processor of '{name}' "
                                 f'({self.model_type}): {exc}.{hint}') from exc
        if not hasattr(self.processor, 'post_process_depth_estimation'):
            raise EstimatorError(f"the image processor of '{name}' has no "
                                 'post_process_depth_estimation; it is not a depth model')
        try:
            model = AutoModelForDepthEstimation.from_pretrained(source, config=config,
                                                                local_files_only=offline)
        except (OSError, ValueError) as exc:
            raise EstimatorError(f"could not load the model in '{name}': {exc}") from exc
        self.model = model.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.config = model.config

    def run(self, images: Sequence[np.ndarray], compute: bool = False) -> torch.Tensor:
        """``DepthEstimator.preprocess``: ``(B, 3, h, w)`` float32 from the image processor."""
        return self.processor(images=list(images), return_tensors='pt')['pixel_values'].to(
            self.device)

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        shape = self.processor(images=[blank], return_tensors='pt')['pixel_values'].shape
        return int(shape[-2]), int(shape[-1])

    def forward(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        height, width = images[0].shape[:2]
        start = time.perf_counter()
        inputs = self.processor(images=list(images), return_tensors='pt')
        pixel_values = inputs['pixel_values'].to(self.device, self.input_dtype)
        self._sync()
        after_pre = time.perf_counter()
        outputs = self.model(pixel_values=pixel_values)
        self._sync()
        after_forward = time.perf_counter()
        outputs.predicted_depth = outputs.predicted_depth.float()
        results = self.processor.post_process_depth_estimation(
            outputs, target_sizes=[(height, width)] * len(images))
        depth = torch.stack([r['predicted_depth'] for r in results]).float().cpu().numpy()
        timings = {'preprocess': after_pre - start, 'forward': after_forward - after_pre,
                   'postprocess': time.perf_counter() - after_forward}
        return np.ascontiguousarray(depth, dtype=np.float32), timings
