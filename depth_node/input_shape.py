"""Whether an image's shape is one the depth network can sensibly take: checked on arrival.

ROS-free. Some shapes decode fine but make no sense to a network: a 1 x 49,000,000 image
keeps its aspect ratio through the model's resize and reaches it 0 pixels tall, or as a strip
thousands of patches long; a 100 x 2 image is one patch wide. Such a frame is bad input, and
the node refuses it on arrival with the reason, before it can take the place of a good frame
waiting for the model or fail inside the forward pass.

The rule (:func:`check_input_shape`):

* the long side may be at most ``max_aspect`` times the short side (``input.max_aspect``,
  16 by default: wide cameras are 2:1 to 4:1, KITTI 3.3:1);
* the network input the model's preprocessing makes of the image (after ``input.max_pixels``)
  must be at least one patch on each side, and the model's own size rule must accept it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from depth_node.image_codec import ImageDecodeError

DEFAULT_MAX_ASPECT = 16.0
"""Default of ``input.max_aspect``: the longest side over the shortest."""


def check_input_shape(height: int, width: int, max_aspect: float,
                      input_size: Optional[Callable[[int, int], tuple[int, int]]] = None,
                      patch_size: int = 1,
                      resized: Optional[tuple[int, int]] = None) -> None:
    """Refuse an image shape the network cannot sensibly take.

    Parameters
    ----------
    height, width : int
        The image's size as received, pixels (both > 0).
    max_aspect : float
        Largest ``max(height, width) / min(height, width)``; <= 0 lifts the limit.
    input_size : callable, optional
        ``(height, width) -> (net_height, net_width)``: the network input the model's
        preprocessing makes of an image of that size (``DepthEstimator.input_size``). It may
        raise ``ValueError`` or ``RuntimeError`` for a size it cannot take: the image is then
        refused with that message. None skips the network checks.
    patch_size : int
        The network's patch size, pixels: each side of the network input must be at least
        this (see :func:`model_patch_size`).
    resized : (int, int), optional
        ``(height, width)`` of the image after ``input.max_pixels`` (what reaches the
        network); default ``(height, width)``.

    Raises
    ------
    ImageDecodeError
        Naming the size, the rule and the parameter, e.g. ``1x49000000 has aspect ratio
        49000000:1, over the 16:1 the network can take (input.max_aspect)``.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'empty image {width}x{height} (width x height)')
    long_side, short_side = max(height, width), min(height, width)
    if max_aspect > 0 and long_side > max_aspect * short_side:
        raise ImageDecodeError(
            f'{width}x{height} has aspect ratio {_ratio(long_side, short_side)}:1, over the '
            f'{max_aspect:g}:1 the network can take (input.max_aspect)')
    if input_size is None:
        return
    net_h, net_w = resized if resized is not None else (height, width)
    shrunk = f' (downscaled to {net_w}x{net_h})' if (net_h, net_w) != (height, width) else ''
    try:
        in_h, in_w = input_size(net_h, net_w)
    except (ValueError, RuntimeError) as exc:
        raise ImageDecodeError(
            f'{width}x{height}{shrunk} cannot be fed to the network: {exc}') from None
    if min(in_h, in_w) < patch_size:
        raise ImageDecodeError(
            f'{width}x{height}{shrunk} would reach the network as {in_w}x{in_h}, a side below '
            f'its patch size {patch_size}: too small or too thin for the model')


def model_patch_size(config: Any) -> int:
    """The patch size of a transformers depth model's config, pixels; 1 when it has none.

    Read from ``config.patch_size`` or its ``backbone_config.patch_size`` (Depth Anything,
    DPT, ZoeDepth, DepthPro), or the first of ``patch_sizes`` (GLPN).
    """
    for source in (config, getattr(config, 'backbone_config', None)):
        for name in ('patch_size', 'patch_sizes'):
            value = getattr(source, name, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return 1


def _ratio(long_side: int, short_side: int) -> str:
    """``long_side / short_side`` as short text: ``49000000``, ``16.5``."""
    return f'{long_side / short_side:.1f}'.rstrip('0').rstrip('.')
