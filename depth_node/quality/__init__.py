"""Depth a navigation stack can trust: per-pixel confidence cues, flying pixels, temporal
stability, and the sparsification metrics that score a confidence.

ROS-free (no rclpy), vectorized, float32 images. Every function takes numpy arrays (CPU
engines) or ``torch.Tensor`` s on any device (a model on CUDA keeps its frame there) and
returns the same kind on the same device, from one implementation written against
:mod:`depth_node.arrays` (torch is imported only when a tensor is handed in). What runs on the
host: the stabiliser's fit (a 1/16 subsample, one transfer a frame, and its scalar
decisions), the LiDAR cue's input check and its choice of the usable points (a device sync
each, no copy), and the offline scores (:func:`sparsification`, :func:`ause`). Conventions:

* A depth image is ``(H, W)``; a pixel is *valid* when it is finite and ``> 0``. Metric depth is
  metres along the optical axis; relative depth or relative disparity (affine-invariant network
  output) has no unit. NaN marks invalid pixels in every image returned here.
* A confidence is ``(H, W)`` float32 in ``[0, 1]`` (1 = trust), NaN where the depth is invalid.
  All cues here map an error-like quantity ``x >= 0`` through the same soft threshold
  ``soft(x, t) = 1 / (1 + (x / t) ** 2)``: 1 at ``x = 0``, 0.5 at ``x = t``, 0.1 at ``x = 3 t``.
  Its tail is heavy enough that ranking survives large errors, and it costs no ``exp``.

Cues, what they measure, and the pipeline they are meant for (the wiring lives elsewhere)::

    spread = log_spread(depth)                               # once per frame, shared by:
    edge = discontinuity_confidence(depth, spread=spread)    # depth edges (scale-free)
    drop = flying_pixel_mask(depth, spread=spread)           # True = flying pixel: set NaN
    res = lidar_residuals(aligned_depth, uv, z)              # the LiDAR fit's residuals
    lid = lidar_confidence(depth.shape, uv, res)             # spread over the image
    out, info = stabilizer.update(depth, stamp)              # TemporalStabilizer
    tmp = temporal_confidence(out, stabilizer.previous)      # flicker against last output
    conf = combine_confidence({'edge': edge, 'lidar': lid, 'temporal': tmp,
                               'model': model_conf}, depth=out)

Flying pixels (:func:`flying_pixel_mask`). A network's depth is smooth across a silhouette, so
the pixels of the ramp between foreground and background sit in mid-air. Two classic
depth-sensor tests were implemented and measured on real TUM RGB-D depth with network-like
smoothing (``bench/bench_quality.py``; figures in :data:`FLYING_JUMP`): ``'jump'``, the
relative depth jump to the neighbours (max / min of depth in a window, as in the Kinect / PCL
"veil" or "shadow point" filters and the RealSense / Open3D edge filters on depth jumps), and
``'angle'``, the angle between the viewing ray and the local surface normal (PCL
``ShadowPoints``, laser ``ScanShadowsFilter``). Both are scale-free. ``'jump'`` is the default:
at 4 % it met both targets at every blur width (>= 97.8 % of the >10 %-off pixels near
silhouettes removed, >= 99.9 % of the correct pixels away from them kept), while no ``'angle'``
threshold met both without a dilation, which then removes more correct pixels near silhouettes
(27 % against 20 %); it needs no intrinsics and reuses :func:`log_spread`, which
:func:`discontinuity_confidence` computes anyway, so the mask is one comparison more (0.02 ms
at 640 x 480, against 0.5 ms for ``'angle'``). On a box-blurred ramp both tests see the same
slope: the ramp is locally a slanted plane, so a threshold trades silhouette ramps against
surfaces seen at grazing angles; figures at :data:`FLYING_JUMP`.

LiDAR (:func:`lidar_confidence`): per-point agreement ``soft(|fit - lidar| / lidar, tau)``
averaged over a coarse grid by normalized convolution, then bilinearly upsampled; where no
point is near, the frame's mean agreement (the neutral value).

Time (:class:`TemporalStabilizer`, :func:`temporal_confidence`): a robust global alignment of
each prediction to the previous output, smoothed by an EMA, with outlier-frame rejection, a
persistent-change detector and scene-cut resets; and the per-pixel agreement with the previous
output.

Combination (:func:`combine_confidence`): the weighted geometric mean of the enabled cues.

Scoring (:func:`sparsification`, :func:`ause`): the sparsification curve and the Area Under
the Sparsification Error against the oracle.

The package's modules: :mod:`~depth_node.quality.common` (:class:`QualityError`, the argument
checks, :func:`soft_threshold` and the array helpers the cues share),
:mod:`~depth_node.quality.edges` (:func:`log_spread`, :func:`discontinuity_confidence`,
:func:`flying_pixel_mask` and its ``'angle'`` test; ``EDGE_*``, ``FLYING_*``),
:mod:`~depth_node.quality.lidar` (:func:`lidar_residuals`, :func:`lidar_confidence` and its
grid; ``LIDAR_*``), :mod:`~depth_node.quality.stabilizer` (:class:`TemporalStabilizer`,
:class:`StabilizerInfo`), :mod:`~depth_node.quality.temporal` (:func:`temporal_confidence`;
``TEMPORAL_*``), :mod:`~depth_node.quality.combine` (:func:`normalize_model_confidence`,
:func:`combine_confidence`) and :mod:`~depth_node.quality.scoring`
(:func:`sparsification`, :func:`ause`). Each imports only :mod:`.common`; this package
re-exports every public name.
"""

from depth_node.quality.combine import combine_confidence, normalize_model_confidence
from depth_node.quality.common import QualityError, soft_threshold
from depth_node.quality.edges import (
    discontinuity_confidence, EDGE_JUMP, EDGE_WINDOW, FLYING_ANGLE_DEG, FLYING_JUMP,
    flying_pixel_mask, log_spread)
from depth_node.quality.lidar import (
    LIDAR_CELL, LIDAR_SUPPORT, LIDAR_TAU, lidar_confidence, lidar_residuals)
from depth_node.quality.scoring import ause, sparsification
from depth_node.quality.stabilizer import StabilizerInfo, TemporalStabilizer
from depth_node.quality.temporal import TEMPORAL_TAU, TEMPORAL_WINDOW, temporal_confidence

__all__ = [
    'QualityError', 'EDGE_WINDOW', 'EDGE_JUMP', 'FLYING_JUMP', 'FLYING_ANGLE_DEG',
    'LIDAR_CELL', 'LIDAR_TAU', 'LIDAR_SUPPORT', 'TEMPORAL_TAU', 'TEMPORAL_WINDOW',
    'soft_threshold', 'log_spread',
    'discontinuity_confidence', 'flying_pixel_mask', 'lidar_residuals', 'lidar_confidence',
    'StabilizerInfo', 'TemporalStabilizer', 'temporal_confidence',
    'normalize_model_confidence', 'combine_confidence', 'sparsification', 'ause',
]
