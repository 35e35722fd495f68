"""What the pipeline does to a frame's depth after the network and the LiDAR fit (ROS-free):
temporal stabilisation, flying-pixel removal and the per-pixel confidence.

The algorithms are :mod:`depth_node.quality`'s; this module applies them with the node's
parameters to one camera's frames, keeping what they need between frames
(:class:`QualityState`). :meth:`depth_node.frame_pipeline.FramePipeline.finish` calls
:func:`stabilize` on the prediction, then :func:`assess` on the depth it publishes.

Both take numpy arrays (CPU engines) or ``torch.Tensor`` s on any device (a model on CUDA: the
frame stays there) and return the same kind on the same device; nothing frame-sized comes back
to the host (the stabiliser's fit reads a 1/16 subsample, the LiDAR cue syncs to pick its
usable points; see :mod:`depth_node.quality`). The caller copies back what it publishes
(``depth_node.arrays.to_host``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from depth_node import quality as q
from depth_node.arrays import Array, put_where

CUES = ('discontinuity', 'lidar', 'temporal', 'model')
"""The confidence cues, each switched by ``confidence.<cue>``."""


@dataclass
class QualityState:
    """One camera's state between frames: its temporal stabiliser (``temporal.enabled``) and the
    depth-like image it published last (the temporal confidence cue compares with it)."""

    stabilizer: Optional[q.TemporalStabilizer] = None
    previous: Optional[Array] = None  # of the kind and device of the frames
    previous_metric: bool = False  # whether previous is metric depth (else relative)


@dataclass
class Assessment:
    """:func:`assess`'s result for one frame; every array of the kind and on the device of the
    depth handed in (numpy, or a tensor).

    ``depth``: the depth-like image to publish ((H, W) float32; flying pixels NaN when they were
    removed). ``removed``: (H, W) bool, the pixels the cloud must drop (flying pixels, and
    confidence under ``cloud.min_confidence``), or None for none. ``confidence``: (H, W) float32
    in [0, 1], NaN where ``depth`` is invalid, or None when not computed.
    """

    depth: Array
    removed: Optional[Array] = None
    confidence: Optional[Array] = None


def stabilize(config: Any, state: QualityState, values: Array, stamp: float,
              shift: bool) -> tuple[Array, Optional[q.StabilizerInfo]]:
    """``values`` ((H, W) float32: metric depth in metres, or the relative prediction; numpy or
    a tensor on any device) held to the camera's previous frames when ``temporal.enabled``
    (``shift``: fit scale and shift, for relative output; else scale only); unchanged otherwise
    (and the state dropped).

    Returns the values to publish (of ``values``' kind and device; a new array when the
    stabiliser is on) and what the stabiliser did (None when it is off).
    """
    if not config['temporal.enabled']:
        state.stabilizer = None
        return values, None
    if state.stabilizer is None or state.stabilizer.shift != shift:
        state.stabilizer = q.TemporalStabilizer(shift=shift,
                                                smoothing=config['temporal.smoothing'])
    state.stabilizer.smoothing = config['temporal.smoothing']
    return state.stabilizer.update(values, stamp)


def assess(config: Any, state: QualityState, depth: Array, metric: bool,
           want_confidence: bool, want_gate: bool, lidar: Optional[tuple] = None,
           model_confidence: Optional[Array] = None) -> Assessment:
    """Flying pixels and confidence of one frame's depth-like image ``depth`` ((H, W) float32,
    metres when ``metric``, else the relative prediction; numpy, or a tensor on any device:
    the result is of its kind and on its device). Flying pixels are written into it as NaN,
    in place: metric depth is always a fresh array (the LiDAR fit's, the stabiliser's or
    ``np.where``'s); relative output is never filtered, so the prediction is not touched).

    ``filter.edges`` makes flying pixels NaN in metric depth (relative output keeps every pixel:
    its confidence says where they are). The confidence is computed when ``want_confidence``
    (someone takes ``depth/confidence``) or ``want_gate`` (the cloud is gated by
    ``cloud.min_confidence``), from the cues ``confidence.*`` switches on: ``discontinuity``,
    ``lidar`` (``lidar``: the projected scan's ``(uv, z)``, pixels and metres, that the depth
    was fitted to; numpy or tensors), ``temporal`` (against the previous frame's image of this
    camera) and ``model`` (``model_confidence``, the network's own, (H, W); numpy or a tensor).
    Both are brought to ``depth``'s device when they are elsewhere. The image is kept for the
    next frame's temporal cue.
    """
    c = config
    cues_on = {cue for cue in CUES if c[f'confidence.{cue}']}
    edges = metric and c['filter.edges']
    need_conf = (want_confidence or want_gate) and bool(cues_on)
    spread = None
    if edges or (need_conf and 'discontinuity' in cues_on):
        spread = q.log_spread(depth)
    removed = None
    residuals = None
    if need_conf and 'lidar' in cues_on and lidar is not None and len(lidar[1]):
        residuals = q.lidar_residuals(depth, *lidar)  # before flying pixels go
    if edges:
        removed = q.flying_pixel_mask(depth, c['filter.edge_threshold'], spread=spread)
        put_where(depth, removed, np.nan)
    confidence = None
    if need_conf:
        cues: dict[str, Optional[Array]] = {}
        if 'discontinuity' in cues_on:
            cues['discontinuity'] = q.discontinuity_confidence(depth, spread=spread)
        if residuals is not None:
            cues['lidar'] = q.lidar_confidence(depth.shape, lidar[0], residuals)
        if 'temporal' in cues_on and state.previous is not None and \
                state.previous.shape == depth.shape and state.previous_metric == metric:
            cues['temporal'] = q.temporal_confidence(depth, state.previous)
        if 'model' in cues_on and model_confidence is not None and \
                model_confidence.shape == depth.shape:
            cues['model'] = model_confidence
        confidence = q.combine_confidence(cues, depth=depth)
        if want_gate:
            low = ~(confidence >= c['cloud.min_confidence'])  # NaN (invalid) counts as low
            removed = low if removed is None else removed | low
    state.previous = depth if 'temporal' in cues_on else None
    state.previous_metric = metric
    return Assessment(depth, removed, confidence if want_confidence else None)
