"""The naive baseline of ``bench_pipeline.py``: the pipeline as many Python depth nodes write it.

BASELINE for benchmarks only, not part of the installed package: the transformers image
processor on a PIL image, a per-pixel Python loop for the cloud, and ``msg.data = a.tolist()``.
``test/test_bench.py`` checks that the naive cloud holds the same points as the package's
vectorized :func:`depth_node.cloud.depth_to_points`, so the benchmark compares equal work.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def naive_cloud_points(depth: np.ndarray, K: np.ndarray, stride: int = 1) -> list:
    """Per-pixel Python back-projection.

    Loops over the pixels of ``depth`` ((H, W) metres), skips invalid depth and appends
    ``(x, y, z)`` tuples (camera optical frame, metres) to a list (later fed to
    ``sensor_msgs_py.point_cloud2``). The same points as ``depth_to_points(depth, K, stride)``
    with the invalid ones dropped, in row-major order.
    """
    depth = np.asarray(depth)
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    points = []
    height, width = depth.shape
    for v in range(0, height, stride):
        for u in range(0, width, stride):
            z = float(depth[v, u])
            if not math.isfinite(z) or z <= 0.0:
                continue
            points.append(((u - cx) * z / fx, (v - cy) * z / fy, z))
    return points


def naive_fill(msg: Any, array_: np.ndarray) -> None:
    """``msg.data = a.tolist()``: one Python int per byte, as many Python nodes fill messages."""
    msg.data = np.ascontiguousarray(array_).view(np.uint8).ravel().tolist()


def naive_processor() -> Any:
    """The transformers image processor of the Depth Anything V2 checkpoints (PIL backend)."""
    from PIL import Image
    try:
        from transformers import DPTImageProcessorPil as Processor
    except ImportError:  # older transformers: the PIL processor is DPTImageProcessor itself
        from transformers import DPTImageProcessor as Processor
    return Processor(do_resize=True, size={'height': 518, 'width': 518}, keep_aspect_ratio=True,
                     ensure_multiple_of=14, resample=Image.BICUBIC, do_rescale=True,
                     rescale_factor=1 / 255, do_normalize=True,
                     image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
