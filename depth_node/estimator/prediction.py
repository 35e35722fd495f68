"""What a prediction gives (ROS-free): :class:`Prediction`, shared by the facade
(:mod:`.facade`) and the slow paths (:mod:`.slow_base`) that build it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from depth_node.arrays import Array, concatenate


@dataclass
class Prediction:
    """What one :meth:`DepthEstimator.predict` (or ``predict_batch``, ``predict_points``) gives.

    Attributes
    ----------
    depth : np.ndarray or torch.Tensor
        ``(H, W)`` float32 (``(B, H, W)`` from ``predict_batch``): metres along the optical
        axis when the model is metric, else its relative output (see ``output_kind``). A
        ``torch.Tensor`` on the model's device from ``predict_batch(on_device=True)``, as are
        ``sky`` and ``confidence`` then.
    timings : dict[str, float]
        Seconds spent in ``'preprocess'``, ``'forward'`` and ``'postprocess'`` (and
        ``'cloud'`` with clouds); on CUDA from events on the stream (the device is synchronised
        once per call, not per stage).
    points : np.ndarray, list or None
        ``predict_points``: ``(ceil(H / stride), ceil(W / stride), 3)`` float32 points in the
        camera optical frame, metres, NaN where invalid. ``predict_batch`` with ``clouds``: a
        list with such an array (or None) per image.
    non_finite : int
        How many of the frames had NaN or infinity in the network's raw output (fp16 overflow);
        those values are NaN in ``depth``.
    no_prompt : int
        A model that takes a depth prompt (:attr:`DepthEstimator.takes_prompt`): how many of
        the frames had none; their ``depth`` is all NaN (no forward pass for them).
    sky : np.ndarray or None
        ``(H, W)`` bool (``(B, H, W)`` from ``predict_batch``) at the image's size: True where
        the model's sky logits (resized like depth) are below the card's ``sky_threshold``;
        those pixels are NaN in ``depth`` (or its ``sky_depth`` cap, metres). None when the
        model's card names no ``sky`` output.
    confidence : np.ndarray or None
        ``(H, W)`` float32 (``(B, H, W)`` from ``predict_batch``): the model's raw depth
        confidence output (DA3 ``depth_conf``: no unit, larger = more confident), cropped and
        resized to the image like depth. None when the card names no ``confidence`` output.
    """

    depth: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    points: Union[np.ndarray, list, None] = None
    non_finite: int = 0
    no_prompt: int = 0
    sky: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None

    @classmethod
    def concatenate(cls, parts: Sequence[Prediction]) -> Prediction:
        """One prediction of a batch from its frames' (in order, each of a batch of one):
        arrays joined along the batch axis, timings and counts summed, ``points`` one entry per
        frame (None when the frames have none)."""
        timings: dict[str, float] = {}
        for part in parts:
            for stage, seconds in part.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
        points = None if parts[0].points is None else [part.points[0] for part in parts]

        def joined(name: str) -> Optional[Array]:
            arrays = [getattr(part, name) for part in parts]
            return None if arrays[0] is None else concatenate(arrays)

        return cls(depth=joined('depth'), timings=timings,
                   points=points, non_finite=sum(part.non_finite for part in parts),
                   no_prompt=sum(part.no_prompt for part in parts),
                   sky=joined('sky'), confidence=joined('confidence'))
