"""ONNX depth models exported elsewhere: the model card that says how to feed and read them.

``model.name`` may be a ``.onnx`` file, or a directory holding ``model.onnx``, with a card
``depth_node_model.yaml`` beside it (for a file ``x.onnx``: ``x.yaml`` or
``depth_node_model.yaml`` in its folder)::

    # fixed network input (a custom UNet trained on NYUv2 at 320x240):
    input_size: [240, 320]          # height, width in pixels
    # or a keep-aspect rule (Depth Anything exports with dynamic height/width):
    # short_side: 518
    # multiple: 14
    resize_filter: bilinear         # bilinear | bicubic
    mean: [0.485, 0.456, 0.406]     # after scaling to [0, 1]
    std: [0.229, 0.224, 0.225]
    output_kind: metric_depth       # relative_disparity | relative_depth | metric_depth
    output_scale: 1.0               # raw output x scale (metres for metric_depth)
    upsample: bilinear              # optional: how the output is resized to the image

A card that is missing, incomplete or contradicts the network's input shape is refused with a
message naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.recipe import PIL_BICUBIC, PIL_BILINEAR, Recipe

CARD_NAME = 'depth_node_model.yaml'
OUTPUT_KINDS = ('relative_disparity', 'relative_depth', 'metric_depth')
_FILTERS = {'bilinear': PIL_BILINEAR, 'bicubic': PIL_BICUBIC}
_KNOWN = {'input_size', 'short_side', 'multiple', 'keep_aspect', 'resize_filter', 'mean', 'std',
          'output_kind', 'output_scale', 'upsample', 'name', 'description', 'license'}


@dataclass(frozen=True)
class OnnxModel:
    """A plain ONNX depth model and its card.

    Attributes
    ----------
    path : Path
        The ``.onnx`` file.
    recipe : Recipe
        Preprocessing from the card (always the ``'dpt'`` pipeline: resize uint8, rescale by
        1/255, normalise, no pad).
    output_kind : str
        One of :data:`OUTPUT_KINDS`.
    output_scale : float
        The raw output is multiplied by this.
    input_shape : tuple
        ``(B, 3, H, W)`` of the network's input; None for a dynamic dimension.
    input_name : str
    """

    path: Path
    recipe: Recipe
    output_kind: str
    output_scale: float
    input_shape: tuple
    input_name: str


def is_onnx_model(name: str) -> bool:
    """Whether ``model.name`` names a plain ONNX model (a .onnx file or a dir with model.onnx)."""
    path = Path(str(name)).expanduser()
    return (path.suffix == '.onnx') or (path.is_dir() and (path / 'model.onnx').is_file()
                                        and not (path / 'config.json').is_file())


def _card_path(onnx_path: Path) -> Path:
    own = onnx_path.with_suffix('.yaml')
    return own if own.is_file() else onnx_path.parent / CARD_NAME


def load_onnx_model(name: str) -> OnnxModel:
    """Read ``model.name`` (a ``.onnx`` file or a directory with ``model.onnx``) and its card.

    Raises
    ------
    EstimatorError
        Missing file or card, an unknown or missing card field, a value out of range, or a
        card that contradicts the network's input shape.
    """
    path = Path(str(name)).expanduser()
    if path.is_dir():
        path = path / 'model.onnx'
    if not path.is_file():
        raise EstimatorError(f"ONNX model '{path}' does not exist; point model.name at a .onnx "
                             f'file or a directory holding model.onnx and {CARD_NAME}')
    card_path = _card_path(path)
    if not card_path.is_file():
        raise EstimatorError(
            f'{path} has no model card: write {card_path} (input_size or short_side, '
            'resize_filter, mean, std, output_kind; see README "ONNX models")')
    import yaml
    try:
        card = yaml.safe_load(card_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EstimatorError(f'could not read the model card {card_path}: {exc}') from exc
    if not isinstance(card, dict):
        raise EstimatorError(f'model card {card_path} must be a mapping of fields')
    input_name, input_shape = _onnx_input(path)
    recipe, kind, scale = parse_card(card, str(card_path), input_shape)
    return OnnxModel(path=path, recipe=recipe, output_kind=kind, output_scale=scale,
                     input_shape=input_shape, input_name=input_name)


def _onnx_input(path: Path) -> tuple[str, tuple]:
    try:
        import onnx
        model = onnx.load(str(path), load_external_data=False)
    except ImportError as exc:
        raise EstimatorError("ONNX models need the 'onnx' package: pip install "
                             "'depth_node[onnx]'") from exc
    except Exception as exc:  # noqa: BLE001 - any parse error
        raise EstimatorError(f'{path} is not a readable ONNX model: {exc}') from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise EstimatorError(f'{path} has {len(inputs)} inputs; a depth model takes one image '
                             'tensor (B, 3, H, W)')
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField('dim_value') else None for d in dims)
    if len(shape) != 4 or shape[1] not in (3, None):
        raise EstimatorError(f'{path} input {inputs[0].name} has shape {shape}; expected '
                             '(B, 3, H, W)')
    return inputs[0].name, shape


def _field(card: dict, key: str, where: str, default: Any = None) -> Any:
    if key in card and card[key] is not None:
        return card[key]
    if default is None:
        raise EstimatorError(f"model card {where}: field '{key}' is missing")
    return default


def _triple(card: dict, key: str, where: str) -> tuple[float, float, float]:
    value = _field(card, key, where)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or (key == 'std' and min(values) <= 0):
        raise EstimatorError(f"model card {where}: '{key}' must be 3 numbers"
                             f"{' > 0' if key == 'std' else ''}, got {value!r}")
    return values  # type: ignore[return-value]


def parse_card(card: dict, where: str, input_shape: tuple = (None,) * 4,
               ) -> tuple[Recipe, str, float]:
    """The recipe, output kind and output scale a card describes (see the module docstring).

    ``input_shape`` is the network's ``(B, 3, H, W)`` (None where dynamic): a fixed
    ``input_size`` must equal its static height and width; a ``short_side`` rule needs dynamic
    ones.
    """
    unknown = sorted(set(card) - _KNOWN)
    if unknown:
        raise EstimatorError(f"model card {where}: unknown field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(_KNOWN))}")
    kind = _field(card, 'output_kind', where)
    if kind not in OUTPUT_KINDS:
        raise EstimatorError(f"model card {where}: output_kind {kind!r} must be one of "
                             f"{', '.join(OUTPUT_KINDS)}")
    resize_filter = _field(card, 'resize_filter', where)
    if resize_filter not in _FILTERS:
        raise EstimatorError(f"model card {where}: resize_filter {resize_filter!r} must be "
                             'bilinear or bicubic')
    upsample = _field(card, 'upsample', where, 'bilinear')
    if upsample not in _FILTERS:
        raise EstimatorError(f"model card {where}: upsample {upsample!r} must be bilinear or "
                             'bicubic')
    try:
        scale = float(_field(card, 'output_scale', where, 1.0))
    except (TypeError, ValueError):
        scale = float('nan')
    if not scale > 0 or scale == float('inf'):
        raise EstimatorError(f"model card {where}: output_scale must be a positive number, got "
                             f"{card.get('output_scale')!r}")
    mean, std = _triple(card, 'mean', where), _triple(card, 'std', where)
    static_hw = tuple(input_shape[2:]) if len(input_shape) == 4 else (None, None)
    if 'input_size' in card and 'short_side' in card:
        raise EstimatorError(f"model card {where}: give either 'input_size' (fixed) or "
                             "'short_side' (keep aspect), not both")
    if 'input_size' in card:
        size = card['input_size']
        try:
            size = (int(size[0]), int(size[1]))
            assert len(card['input_size']) == 2 and min(size) > 0
        except (TypeError, ValueError, IndexError, AssertionError):
            raise EstimatorError(f"model card {where}: input_size must be [height, width] in "
                                 f"pixels, got {card['input_size']!r}") from None
        if None not in static_hw and size != static_hw:
            raise EstimatorError(
                f'model card {where}: input_size {list(size)} contradicts the network, whose '
                f'input is {static_hw[0]}x{static_hw[1]} (height x width): set input_size: '
                f'[{static_hw[0]}, {static_hw[1]}]')
        keep_aspect, multiple = False, 1
    elif 'short_side' in card:
        short = int(_field(card, 'short_side', where))
        multiple = int(_field(card, 'multiple', where, 1))
        if short <= 0 or multiple <= 0 or short % multiple:
            raise EstimatorError(f'model card {where}: short_side {short} must be a positive '
                                 f'multiple of multiple ({multiple})')
        if None not in static_hw:
            raise EstimatorError(
                f'model card {where}: short_side needs a network with dynamic height and width, '
                f'but its input is fixed at {static_hw[0]}x{static_hw[1]}: use input_size: '
                f'[{static_hw[0]}, {static_hw[1]}]')
        size, keep_aspect = (short, short), bool(card.get('keep_aspect', True))
    else:
        raise EstimatorError(f"model card {where}: field 'input_size' (or 'short_side') is "
                             'missing')
    recipe = Recipe(family='dpt', size=size, do_resize=True, resample=_FILTERS[resize_filter],
                    keep_aspect_ratio=keep_aspect, ensure_multiple_of=multiple, do_rescale=True,
                    rescale_factor=1 / 255, do_normalize=True, image_mean=mean, image_std=std,
                    do_pad=False, size_divisor=None, upsample=upsample)
    return recipe, kind, scale


def fixed_shape(model: OnnxModel, shape: tuple[int, ...]) -> Optional[str]:
    """Why ``shape`` does not fit ``model``'s input (None when it does)."""
    for want, got in zip(model.input_shape, shape):
        if want is not None and want != got:
            return f'{model.path} takes input {model.input_shape}, the frame needs {shape}'
    return None
