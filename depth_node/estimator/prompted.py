"""Prompt Depth Anything: metric depth from an image and a coarse metric depth prompt.

``PromptDepthAnythingForDepthEstimation`` (transformers, model type
``prompt_depth_anything``) takes the image and a low-resolution metric depth map of the same
view (the prompt: an RGB-D camera's depth, a LiDAR scan) and returns metric depth at the
image's resolution. The network normalises the prompt by its minimum and maximum and maps its
output back with them, so the output is metres whatever its config's
``depth_estimation_type`` says, and a prompt holding a zero or NaN ruins the frame's scale: the
prompt's holes are filled first (:func:`depth_node.prompt.fill_holes`).

It runs in torch only, through its own image processor (the slow path of
:mod:`depth_node.estimator.generic`). A frame without a prompt gets no output (all NaN) and is
counted in :attr:`Prediction.no_prompt`; the caller decides what a frame needs (coverage,
age: :func:`depth_node.prompt.check_prompt`).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from depth_node.estimator.errors import EstimatorError, one_per_image
from depth_node.estimator.generic import GenericTransformersPath
from depth_node.estimator.slow_base import check_kind

MODEL_TYPE = 'prompt_depth_anything'


class PromptDepthPath(GenericTransformersPath):
    """A Prompt Depth Anything checkpoint: its image processor for the image, the prompt
    filled and passed as metres (``prompt_depth``, ``(B, 1, h, w)``)."""

    what = 'its own image processor and a depth prompt, no fast path'
    takes_prompt = True

    def __init__(self, name: str, source: str, offline: bool, config: Any,
                 device: torch.device, dtype: torch.dtype, kind: str) -> None:
        if check_kind(kind) not in ('', 'metric_depth'):
            raise EstimatorError(
                f"model.kind '{kind}' does not apply to '{name}': a Prompt Depth Anything model "
                'outputs metres, scaled by its depth prompt; leave model.kind empty')
        super().__init__(name, source, offline, config, device, dtype, 'metric_depth')

    def prompt_tensor(self, prompts: Sequence[np.ndarray]) -> torch.Tensor:
        """``prompt_depth`` of same-size prompts: holes filled, ``(B, 1, h, w)`` float32 metres
        on :attr:`device`; what the image processor makes of a hole-free prompt in metres
        (including its nudge of a constant prompt, whose minimum equals its maximum)."""
        from depth_node.prompt import PromptError, fill_holes

        filled = []
        for prompt in prompts:
            try:
                depth = fill_holes(prompt)
            except PromptError as exc:
                raise EstimatorError(f'unusable depth prompt: {exc}') from exc
            if depth.min() == depth.max():
                depth = depth.copy()
                depth[0, 0] += np.float32(1e-6)
            filled.append(depth)
        shapes = {p.shape for p in filled}
        if len(shapes) != 1:
            raise EstimatorError(f'prompts of one pass must share a size, got {sorted(shapes)}')
        return torch.from_numpy(np.stack(filled)[:, None]).to(self.device)

    def forward(self, images: Sequence[np.ndarray],
                prompts: Optional[Sequence[Optional[np.ndarray]]] = None,
                ) -> tuple[np.ndarray, dict[str, float]]:
        """``(B, H, W)`` float32 metres; NaN for the frames whose prompt is None."""
        images = list(images)
        prompts = one_per_image('prompts', prompts, len(images)) or [None] * len(images)
        height, width = images[0].shape[:2]
        depth = np.full((len(images), height, width), np.nan, dtype=np.float32)
        timings = {'preprocess': 0.0, 'forward': 0.0, 'postprocess': 0.0}
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, prompt in enumerate(prompts):
            if prompt is not None:
                groups.setdefault(tuple(np.shape(prompt)), []).append(i)
        for members in groups.values():  # one pass per prompt size
            start = time.perf_counter()
            inputs = self.processor(images=[images[i] for i in members], return_tensors='pt')
            pixel_values = inputs['pixel_values'].to(self.device, self.input_dtype)
            prompt_depth = self.prompt_tensor([prompts[i] for i in members])
            self._sync()
            after_pre = time.perf_counter()
            outputs = self.model(pixel_values=pixel_values,
                                 prompt_depth=prompt_depth.to(self.input_dtype))
            self._sync()
            after_forward = time.perf_counter()
            outputs.predicted_depth = outputs.predicted_depth.float()
            results = self.processor.post_process_depth_estimation(
                outputs, target_sizes=[(height, width)] * len(members))
            depth[members] = torch.stack(
                [r['predicted_depth'].reshape(height, width) for r in results]).cpu().numpy()
            timings['preprocess'] += after_pre - start
            timings['forward'] += after_forward - after_pre
            timings['postprocess'] += time.perf_counter() - after_forward
        return depth, timings
