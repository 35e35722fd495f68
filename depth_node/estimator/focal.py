"""Focal lengths for models whose metric scale needs them (ROS-free).

A plain ONNX model whose card sets ``focal_scale`` (DA3 metric) outputs depth that is metric
only once multiplied by ``focal_net / focal_scale``, ``focal_net`` being the camera's focal
length in pixels at the network input. The facade takes ``(fx, fy)`` in pixels of each image
(:func:`check_focals`, or :func:`focal_of` a camera matrix) and scales the raw depth
(:func:`focal_factors`, :func:`scale_by_focals`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from depth_node.estimator.errors import EstimatorError, one_per_image


def focal_of(K: Any) -> tuple[float, float]:
    """``(fx, fy)`` of a ``(3, 3)`` camera matrix (checked where it is used)."""
    try:
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError) as exc:
        raise EstimatorError(f'K must be a (3, 3) camera matrix in pixels, got {K!r}') from exc
    return float(K[0, 0]), float(K[1, 1])


def check_focals(focals: Optional[Sequence[Any]], count: int, model_name: str,
                 ) -> list[tuple[float, float]]:
    """``(fx, fy)`` in pixels per image, for ``count`` images of ``model_name``, a model that
    needs them.

    Raises
    ------
    EstimatorError
        None given, not one per image, or not two finite positive numbers each.
    """
    if isinstance(focals, (str, bytes)) or not isinstance(focals, (Sequence, np.ndarray)):
        focals = None if focals is None else [focals]   # checked (and refused) below
    if focals is None or any(f is None for f in focals):
        raise EstimatorError(
            f"{model_name} needs the camera's focal lengths for metric depth (its "
            'card sets focal_scale): pass focal=(fx, fy) in pixels of the image given to '
            'predict, focals=[(fx, fy), ...] to predict_batch, or K to predict_points')
    focals = one_per_image('focals', focals, count)
    checked = []
    for focal in focals:
        try:
            pair = np.asarray(focal, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            pair = np.zeros(0)
        if pair.size != 2 or not bool(np.all(np.isfinite(pair) & (pair > 0))):
            raise EstimatorError(f'focal must be (fx, fy): two positive focal lengths in '
                                 f'pixels of the image given, got {focal!r}')
        checked.append((float(pair[0]), float(pair[1])))
    return checked


def focal_factors(focals: Sequence[tuple[float, float]], height: int, width: int,
                  resized: tuple[int, int], focal_scale: float) -> list[float]:
    """What the raw depth is multiplied by, per image: ``focal_net / focal_scale``.

    ``focals`` are ``(fx, fy)`` in pixels of the ``height`` x ``width`` image; they are
    scaled to the network input as the image is resized to ``resized`` ``(h, w)`` (stretched:
    ``fx * W_net / W``, ``fy * H_net / H``; letterboxed: both by the uniform scale, to the whole
    pixels of the letterboxed image), and ``focal_net`` is their mean, in pixels at the network
    input.
    """
    res_h, res_w = resized
    return [0.5 * (fx * res_w / width + fy * res_h / height) / focal_scale
            for fx, fy in focals]


def scale_by_focals(depth: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    """``(B, h, w)`` raw depth, each image's times its factor (:func:`focal_factors`), in
    float32; the factors stay host floats: no per-frame upload."""
    depth = depth.float()
    return depth * factors[0] if len(factors) == 1 else torch.cat(
        [depth[i:i + 1] * f for i, f in enumerate(factors)])
