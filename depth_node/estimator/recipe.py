"""The processor recipe: what a model's image processor does to a frame, as data (ROS-free).

:class:`Recipe` holds the input size rule, resampling filter, rescale, mean/std and padding of one
model, read from its ``preprocessor_config.json`` over the transformers 5.23 class defaults (or
from a :mod:`depth_node.estimator.model_card` for a plain ONNX model). :func:`input_size` gives
the network input size for an image size; :func:`normalisation_table` the rescale + normalise of
every uint8 value. Preprocessing and postprocessing both read it; no engine does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import math
from typing import Any, Optional

import numpy as np

from depth_node.estimator.errors import EstimatorError

PIL_NEAREST, PIL_BILINEAR, PIL_BICUBIC = 0, 2, 3
#: PIL resampling filter -> torch interpolate mode (the ones both have).
TORCH_MODES = {PIL_BILINEAR: 'bilinear', PIL_BICUBIC: 'bicubic'}


@dataclass(frozen=True)
class Recipe:
    """Preprocessing and postprocessing parameters of one model, as its image processor has them.

    ``family`` selects the pipeline: ``'dpt'`` (resize uint8, rescale, normalise, optional
    centre pad; DPT and Depth Anything), ``'glpn'`` (resize uint8 down to a multiple of
    ``size_divisor``, rescale, optional normalise), ``'zoedepth'`` (rescale, reflect pad, float
    resize with ``align_corners=True``, normalise) and ``'depth_pro'`` (rescale and normalise,
    then float bilinear resize to a fixed size).

    ``letterbox`` (``'dpt'`` with a fixed ``size``, plain ONNX cards with ``keep_aspect: true``):
    the image is scaled uniformly to fit inside ``size`` (:func:`letterbox_size`) and centred
    on it, the border padded with zeros after normalisation (:func:`letterbox_pad`); the
    outputs are cropped back to the image's part before they are resized to the image.
    """

    family: str
    size: Optional[tuple[int, int]]
    do_resize: bool
    resample: int
    keep_aspect_ratio: bool
    ensure_multiple_of: float
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    do_pad: bool
    size_divisor: Optional[int]
    upsample: str
    letterbox: bool = False


_IMAGENET_DEFAULT = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_IMAGENET_STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Class defaults of the transformers 5.23 image processors, used for keys a
# preprocessor_config.json leaves out.
_PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    'dpt': dict(size=(384, 384), do_resize=True, resample=PIL_BICUBIC, keep_aspect_ratio=False,
                ensure_multiple_of=1, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                image_mean=_IMAGENET_STANDARD[0], image_std=_IMAGENET_STANDARD[1], do_pad=False,
                size_divisor=None, upsample='bicubic'),
    'glpn': dict(size=None, do_resize=True, resample=PIL_BILINEAR, keep_aspect_ratio=False,
                 ensure_multiple_of=1, do_rescale=True, rescale_factor=1 / 255,
                 do_normalize=False, image_mean=_IMAGENET_STANDARD[0],
                 image_std=_IMAGENET_STANDARD[1], do_pad=False, size_divisor=32,
                 upsample='bicubic'),
    'zoedepth': dict(size=(384, 512), do_resize=True, resample=PIL_BILINEAR,
                     keep_aspect_ratio=True, ensure_multiple_of=1 / 32, do_rescale=True,
                     rescale_factor=1 / 255, do_normalize=True,
                     image_mean=_IMAGENET_STANDARD[0], image_std=_IMAGENET_STANDARD[1],
                     do_pad=True, size_divisor=None, upsample='bicubic'),
    'depth_pro': dict(size=(1536, 1536), do_resize=True, resample=PIL_BILINEAR,
                      keep_aspect_ratio=False, ensure_multiple_of=1, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True,
                      image_mean=_IMAGENET_STANDARD[0], image_std=_IMAGENET_STANDARD[1],
                      do_pad=False, size_divisor=None, upsample='bilinear'),
}

# What Depth Anything checkpoints ship (518, multiple of 14, keep aspect, bicubic, ImageNet).
_DEPTH_ANYTHING_PROCESSOR = dict(size=(518, 518), keep_aspect_ratio=True, ensure_multiple_of=14,
                                 resample=PIL_BICUBIC, image_mean=_IMAGENET_DEFAULT[0],
                                 image_std=_IMAGENET_DEFAULT[1])


def family_of(model_type: str) -> str:
    """The preprocessing pipeline a transformers ``model_type`` uses."""
    return 'dpt' if model_type in ('dpt', 'depth_anything') else model_type


def make_recipe(model_type: str, processor: Optional[dict]) -> Recipe:
    """Merge a ``preprocessor_config.json`` dict over the processor class defaults."""
    family = family_of(model_type)
    values = dict(_PROCESSOR_DEFAULTS[family])
    if processor is None:
        if model_type == 'depth_anything':
            values.update(_DEPTH_ANYTHING_PROCESSOR)
    else:
        for key in values:
            if key in processor and processor[key] is not None:
                values[key] = processor[key]
    size = values['size']
    if isinstance(size, int):
        size = (size, size)
    elif isinstance(size, dict):
        if 'height' not in size or 'width' not in size:
            raise EstimatorError(
                f'preprocessor_config.json size {size} is not supported for {model_type}; '
                'expected {"height": H, "width": W}')
        size = (int(size['height']), int(size['width']))
    elif size is not None:
        size = (int(size[0]), int(size[1]))
    values['size'] = size
    values['resample'] = int(values['resample'])
    values['image_mean'] = _triple(values['image_mean'])
    values['image_std'] = _triple(values['image_std'])
    return Recipe(family=family, **values)


def _triple(value: Any) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(v) for v in value)


def keep_aspect_resize_shape(height: int, width: int, recipe: Recipe) -> tuple[int, int]:
    """``get_resize_output_image_size`` of transformers' DPT and ZoeDepth processors.

    Both scale by the factor nearer to 1 when keeping the aspect ratio and round to the nearest
    multiple (Python's ``round`` and NumPy's ``np.round`` both round half to even).
    """
    out_h, out_w = recipe.size
    scale_h, scale_w = out_h / height, out_w / width
    if recipe.keep_aspect_ratio:
        if abs(1 - scale_w) < abs(1 - scale_h):
            scale_h = scale_w
        else:
            scale_w = scale_h
    multiple = recipe.ensure_multiple_of

    def constrain(value: float) -> int:
        x = round(value / multiple) * multiple
        if x < 0:
            x = math.ceil(value / multiple) * multiple
        return int(x)

    return constrain(scale_h * height), constrain(scale_w * width)


def zoe_pad(height: int, width: int) -> tuple[int, int]:
    """Reflect padding ZoeDepth adds around the image (and removes after the forward)."""
    return int(np.sqrt(height / 2) * 3), int(np.sqrt(width / 2) * 3)


def centre_pad(size: int, divisor: int) -> tuple[int, int]:
    extra = math.ceil(size / divisor) * divisor - size
    return extra // 2, extra - extra // 2


def normalisation_table(recipe: Recipe) -> np.ndarray:
    """``(3, 256)`` float32: the processor's rescale + normalise of every uint8 value.

    Built with the same NumPy operations the PIL processor applies (float64 rescale cast to
    float32, then float32 ``(x - mean) / std``), so looking values up is bit-exact.
    """
    values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)
    if recipe.do_rescale:
        table = (values.astype(np.float64) * recipe.rescale_factor).astype(np.float32)
    else:
        table = values.astype(np.float32)
    if recipe.do_normalize:
        mean = np.asarray(recipe.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(recipe.image_std, dtype=np.float32)[:, None]
        table = (table - mean) / std
    return np.ascontiguousarray(table, dtype=np.float32)


def letterbox_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of an image of ``height`` x ``width`` scaled uniformly by
    ``min(size[0] / height, size[1] / width)`` to fit inside ``size``, rounded to whole pixels
    (at least 1, at most ``size``)."""
    scale = min(size[0] / height, size[1] / width)
    return (min(size[0], max(1, round(height * scale))),
            min(size[1], max(1, round(width * scale))))


def letterbox_pad(recipe: Recipe, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` pixels of zero padding around the letterboxed image of
    ``height`` x ``width`` (centred; an odd remainder goes to the bottom / right); all zero when
    ``recipe`` does not letterbox."""
    if not recipe.letterbox:
        return 0, 0, 0, 0
    in_h, in_w = letterbox_size(height, width, recipe.size)
    extra_h, extra_w = recipe.size[0] - in_h, recipe.size[1] - in_w
    return extra_h // 2, extra_h - extra_h // 2, extra_w // 2, extra_w - extra_w // 2


def resized_size(recipe: Recipe, height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` in pixels after the processor's resize step only (before a DPT
    centre pad or a letterbox pad), for an image of ``height`` x ``width``."""
    if not recipe.do_resize:
        return height, width
    if recipe.letterbox:
        return letterbox_size(height, width, recipe.size)
    if recipe.family == 'dpt':
        return keep_aspect_resize_shape(height, width, recipe)
    if recipe.family == 'glpn':
        divisor = recipe.size_divisor or 1
        return height // divisor * divisor, width // divisor * divisor
    if recipe.family == 'zoedepth':
        if recipe.do_pad:
            pad_h, pad_w = zoe_pad(height, width)
            height, width = height + 2 * pad_h, width + 2 * pad_w
        return keep_aspect_resize_shape(height, width, recipe)
    return recipe.size


def input_size(recipe: Recipe, height: int, width: int, name: str = 'the model',
               ) -> tuple[int, int]:
    """Network input ``(height, width)`` in pixels for an image of ``height`` x ``width``.

    Padding added by the processor is included (ZoeDepth reflect pad before resizing, DPT
    ``do_pad`` or a letterbox after).

    Raises
    ------
    EstimatorError
        The image is empty, or would be resized to nothing.
    """
    if height < 1 or width < 1:
        raise EstimatorError(f'image size {height}x{width} is empty')
    out_h, out_w = resized_size(recipe, height, width)
    if out_h < 1 or out_w < 1:
        raise EstimatorError(f'image {width}x{height} is too small for {name} '
                             f'(it would be resized to {out_w}x{out_h})')
    if recipe.letterbox:
        return recipe.size
    if recipe.family == 'dpt' and recipe.do_pad and recipe.size_divisor:
        out_h += sum(centre_pad(out_h, recipe.size_divisor))
        out_w += sum(centre_pad(out_w, recipe.size_divisor))
    return out_h, out_w


def with_short_side(recipe: Recipe, short_side: int) -> Recipe:
    """The recipe with its resize target set to ``short_side`` pixels (``model.input_size``).

    Only for keep-aspect recipes that resize to a multiple (Depth Anything, DPT, ZoeDepth): the
    image is scaled so its shorter side is about ``short_side``, rounded to the multiple.

    Raises
    ------
    EstimatorError
        The model resizes to a fixed size or not at all, or ``short_side`` is not a positive
        multiple of the model's ``ensure_multiple_of`` (14 for Depth Anything: its patch size).
    """
    short_side = int(short_side)
    if recipe.family not in ('dpt', 'zoedepth') or not recipe.do_resize \
            or not recipe.keep_aspect_ratio:
        raise EstimatorError(
            f'model.input_size is for models that keep the aspect ratio (Depth Anything, DPT, '
            f'ZoeDepth); this one ({recipe.family}) resizes to {recipe.size}: leave it at 0')
    multiple = recipe.ensure_multiple_of
    if short_side <= 0 or abs(short_side / multiple - round(short_side / multiple)) > 1e-9:
        raise EstimatorError(
            f'model.input_size {short_side} must be a positive multiple of {multiple:g} (the '
            f"model's patch size / ensure_multiple_of), e.g. 518, 406 or 308 for Depth Anything")
    return replace(recipe, size=(short_side, short_side))
