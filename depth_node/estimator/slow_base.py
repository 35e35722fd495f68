"""The slow path's base (ROS-free): :class:`SlowPath` and the output kinds a model can have.

A model without a fast path runs through its own code (:mod:`.generic`, :mod:`.prompted`,
:mod:`.marigold`, each a :class:`SlowPath`); :func:`depth_node.estimator.slow_path.
open_slow_path` picks one, and the :class:`DepthEstimator` facade hands it every frame.

What such a model outputs is read from its config (``depth_estimation_type`` ``'metric'`` or
``'relative'``) and never guessed: when the config does not say, ``model.kind`` must
(:data:`KIND_CHOICES`); ``model.kind`` also overrides the config of any model (DPT's KITTI / NYU
checkpoints are metric, yet their config does not say so).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.model_card import OUTPUT_KINDS
from depth_node.estimator.prediction import Prediction
from depth_node.estimator.preprocess import Preprocessor

#: ``model.kind``: '' = from the model's config (or card); otherwise what the output is.
KIND_CHOICES = ('',) + OUTPUT_KINDS

_KIND_HELP = ("'metric_depth' (metres along the optical axis), 'relative_disparity' "
              "(affine-invariant inverse depth, larger = nearer) or 'relative_depth' "
              '(affine-invariant depth, larger = farther)')


def check_kind(kind: str) -> str:
    """``model.kind`` normalised ('' or one of :data:`KIND_CHOICES`).

    Raises
    ------
    EstimatorError
        Anything else; the message lists the choices.
    """
    text = str(kind or '').strip().lower()
    if text not in KIND_CHOICES:
        raise EstimatorError(f"model.kind '{kind}' is not understood; use '' (from the model's "
                             f'config), {_KIND_HELP}')
    return text


def kind_from_config(config: Any, kind: str, name: str) -> str:
    """The output kind of a model without a fast path: ``kind`` when set, else its config's.

    Raises
    ------
    EstimatorError
        The config does not say (no ``depth_estimation_type``) and ``kind`` is empty.
    """
    kind = check_kind(kind)
    if kind:
        return kind
    said = str(getattr(config, 'depth_estimation_type', '') or '').lower()
    if said == 'metric':
        return 'metric_depth'
    if said == 'relative':
        return 'relative_disparity'  # what transformers' relative depth heads predict
    raise EstimatorError(
        f"'{name}' is a '{getattr(config, 'model_type', '?')}' model whose config does not say "
        'whether it predicts metres or relative depth; set model.kind to ' + _KIND_HELP)


class SlowPath:
    """A model run by its own code in torch; plays the engine and the preprocessor for the
    facade (``name``, ``describe()``, ``prepare()``, ``input_size()``, ``check_images()``).

    Attributes
    ----------
    model_name, model_type, output_kind : str
    config : transformers.PretrainedConfig or None
    device : torch.device
    input_dtype : torch.dtype
        Compute precision.
    what : str
        What runs the model, for the startup log.
    """

    name = 'torch'
    channels_last = False
    takes_prompt = False  # Prompt Depth Anything (:mod:`.prompted`) takes a depth prompt
    backend = 'model processor'
    what = ''

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.input_dtype = device, dtype
        self.config = None
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def describe(self) -> str:
        return f'torch ({self.what}, {str(self.input_dtype).replace("torch.", "")})'

    def prepare(self, shape: Sequence[int]) -> None:
        """Nothing to build ahead (no export, no compile)."""
        return None

    def close(self) -> None:
        self.model = None

    def check_images(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        return Preprocessor.check_images(self, images)  # uses no state of the preprocessor

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input ``(height, width)`` for an image of ``height`` x ``width``."""
        key = (int(height), int(width))
        if key not in self._sizes:
            if len(self._sizes) >= 64:
                self._sizes.clear()
            self._sizes[key] = self._input_size(*key)
        return self._sizes[key]

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    def forward(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        """``(B, H, W)`` float32 predictions at the images' size and the seconds per stage
        (a model that :attr:`takes_prompt` also takes ``prompts``, one per image or None)."""
        raise NotImplementedError

    def run(self, images: Sequence[np.ndarray], compute: bool = False) -> torch.Tensor:
        """``DepthEstimator.preprocess``: the network input, where the model has one."""
        raise EstimatorError(f'{self.model_name} has no separate network input to show '
                             '(it is preprocessed inside its pipeline)')

    def predict(self, images: Sequence[np.ndarray], fx: Any,
                cloud: Optional[dict[str, Any]] = None,
                prompts: Optional[Sequence[Optional[np.ndarray]]] = None) -> Prediction:
        """What ``DepthEstimator._run`` returns, for this model (``fx`` is not used).

        ``prompts``: one ``(h, w)`` metric depth prompt (or None) per image, for a model that
        :attr:`takes_prompt`; a frame without one gets an all-NaN depth, counted in
        ``Prediction.no_prompt``.
        """
        images = list(images)
        self.check_images(images)
        no_prompt = 0
        with torch.inference_mode():
            if self.takes_prompt:
                prompts = list(prompts) if prompts is not None else [None] * len(images)
                no_prompt = sum(p is None for p in prompts)
                depth, timings = self.forward(images, prompts)
            else:
                depth, timings = self.forward(images)
        points = None
        if cloud is not None:
            from depth_node.cloud import depth_to_points  # loaded on use, as in the facade
            start = time.perf_counter()
            points = depth_to_points(depth[0], **cloud)
            timings['cloud'] = time.perf_counter() - start
        return Prediction(depth=depth, timings=timings, points=points, no_prompt=no_prompt)

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
