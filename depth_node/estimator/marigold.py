"""Marigold depth (diffusers' ``MarigoldDepthPipeline``) behind the estimator facade (ROS-free).

Marigold predicts affine-invariant depth (larger = farther, unknown scale and shift: not
disparity), so its output kind is ``'relative_depth'``: published on ``depth/relative`` and
aligned with LiDAR in depth space. It denoises a latent several times per frame (and
``ensemble_size`` times over): seconds a frame on a GPU, far longer on a CPU; the node still
keeps only the newest frame, and the bag tool runs it offline.

``diffusers`` is the optional extra ``depth_node[marigold]``.
"""

from __future__ import annotations

import importlib.util
import math
import time
from typing import Sequence

import numpy as np
import torch

from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.slow_base import SlowPath, check_kind


class MarigoldPath(SlowPath):
    """A Marigold depth checkpoint run by diffusers.

    Parameters
    ----------
    name, source : str
        What ``model.name`` said; the directory or hub id loaded.
    offline : bool
        Read only local files.
    device : torch.device
    dtype : torch.dtype
        fp32, fp16 (CUDA) or bf16.
    kind : str
        ``model.kind``; '' = ``'relative_depth'`` (what Marigold predicts).
    denoising_steps : int
        Denoising steps per prediction; 0 = the checkpoint's ``default_denoising_steps``.
    ensemble_size : int
        Predictions averaged per frame (each with its own noise); 0 = 1, the recommendation
        for the LCM / v1-1 checkpoints.

    The noise is seeded the same for every frame, so a still scene gives the same depth.
    """

    what = 'diffusers Marigold pipeline'

    def __init__(self, name: str, source: str, offline: bool, device: torch.device,
                 dtype: torch.dtype, kind: str = '', denoising_steps: int = 0,
                 ensemble_size: int = 0) -> None:
        super().__init__(device, dtype)
        try:
            from diffusers import MarigoldDepthPipeline  # the optional extra, heavy
        except ImportError as exc:
            raise EstimatorError(
                f"'{name}' is a Marigold checkpoint, which runs through diffusers; install "
                "the extra: pip install 'depth_node[marigold]' (or pip install diffusers)"
            ) from exc
        if int(denoising_steps) < 0 or int(ensemble_size) < 0:
            raise EstimatorError('model.denoising_steps and model.ensemble_size must be >= 0 '
                                 '(0 = the checkpoint default)')
        if int(ensemble_size) > 1 and importlib.util.find_spec('scipy') is None:
            raise EstimatorError('model.ensemble_size > 1 needs scipy (Marigold aligns the '
                                 'members with it): pip install scipy')
        try:
            pipe = MarigoldDepthPipeline.from_pretrained(source, dtype=dtype,
                                                         local_files_only=offline)
        except Exception as exc:  # noqa: BLE001 - missing files, bad config
            raise EstimatorError(f"could not load the Marigold checkpoint '{name}': {exc}") \
                from exc
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = self.model = pipe
        self.model_name, self.model_type = str(name), 'marigold'
        self.output_kind = check_kind(kind) or 'relative_depth'
        self.steps = int(denoising_steps) or int(pipe.default_denoising_steps or 1)
        self.ensemble_size = int(ensemble_size) or 1
        self.resolution = int(pipe.default_processing_resolution or 768)
        self.what = (f'diffusers Marigold, {self.steps} denoising steps, ensemble '
                     f'{self.ensemble_size}, {self.resolution} px')

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        """The long side resized to the processing resolution, padded to the VAE's multiple."""
        scale = self.resolution / max(height, width)
        multiple = int(getattr(self.pipe, 'vae_scale_factor', 8) or 8)
        return tuple(int(math.ceil(round(side * scale) / multiple) * multiple)
                     for side in (height, width))

    def forward(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        start = time.perf_counter()
        generator = torch.Generator(device=self.device).manual_seed(0)
        output = self.pipe(list(images), num_inference_steps=self.steps,
                           ensemble_size=self.ensemble_size,
                           processing_resolution=self.resolution, match_input_resolution=True,
                           batch_size=len(images), generator=generator, output_type='pt')
        depth = output.prediction.float()[:, 0].cpu().numpy()  # (B, 1, H, W) -> (B, H, W)
        self._sync()
        # The pipeline pre- and postprocesses inside its call: all of it counts as forward.
        timings = {'preprocess': 0.0, 'forward': time.perf_counter() - start,
                   'postprocess': 0.0}
        return np.ascontiguousarray(depth, dtype=np.float32), timings
