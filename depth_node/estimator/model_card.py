"""ONNX depth models exported elsewhere: the model card that says how to feed and read them.

``model.name`` may be a ``.onnx`` file, or a directory holding ``model.onnx``, with a card
``depth_node_model.yaml`` beside it (for a file ``x.onnx``: ``x.yaml`` or
``depth_node_model.yaml`` in its folder)::

    # fixed network input (a custom UNet trained on NYUv2 at 320x240):
    input_size: [240, 320]          # height, width in pixels
    keep_aspect: false              # optional: false stretches the image to input_size, true
                                    # letterboxes it (scaled uniformly, centred, the border
                                    # zero after normalisation; cropped off the outputs)
    # or a keep-aspect rule (Depth Anything exports with dynamic height/width):
    # short_side: 518
    # multiple: 14
    resize_filter: bilinear         # bilinear | bicubic
    mean: [0.485, 0.456, 0.406]     # after scaling to [0, 1]
    std: [0.229, 0.224, 0.225]
    output_kind: metric_depth       # relative_disparity | relative_depth | metric_depth
    output_scale: 1.0               # raw output x scale (metres for metric_depth)
    upsample: bilinear              # optional: how the outputs are resized to the image

Depth Anything 3 (DA3) exports, and other graphs with several outputs, add (all optional)::

    input_size: [280, 504]          # DA3 metric as the Nav2 pipeline deploys it
    mean: [0.0, 0.0, 0.0]           # RGB in [0, 1]: normalisation is inside the graph
    std: [1.0, 1.0, 1.0]
    outputs: {depth: depth, sky: sky, confidence: depth_conf}
                                    # role -> the graph's output name; only depth is needed
                                    # (default: the first output is depth)
    focal_scale: 300                # metric depth = output x focal / 300 (DA3 metric), focal
                                    # = mean of fx and fy in pixels at the network input: the
                                    # estimator then needs the camera's focal lengths
    sky_threshold: 0.0              # sky logits below this are sky (default 0.0)
    sky_depth: nan                  # sky pixels: nan (default) or a depth cap in metres > 0

Outputs may be ``(B, H, W)`` or ``(B, 1, H, W)``. A card that is missing, incomplete or
contradicts the network (input shape, output names) is refused with a message naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from pathlib import Path
from typing import Any, Optional

from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.recipe import PIL_BICUBIC, PIL_BILINEAR, Recipe

CARD_NAME = 'depth_node_model.yaml'
OUTPUT_KINDS = ('relative_disparity', 'relative_depth', 'metric_depth')
_FILTERS = {'bilinear': PIL_BILINEAR, 'bicubic': PIL_BICUBIC}
#: What ``outputs:`` may name: the depth output (required) and the optional sky logits and
#: depth confidence.
ROLES = ('depth', 'sky', 'confidence')
_KNOWN = {'input_size', 'short_side', 'multiple', 'keep_aspect', 'resize_filter', 'mean', 'std',
          'output_kind', 'output_scale', 'upsample', 'name', 'description', 'license',
          'outputs', 'focal_scale', 'sky_threshold', 'sky_depth'}


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
    input_type : str
        ``'float32'``, or ``'float16'`` for a graph whose input is half precision.
    output_names : tuple of str
        The graph's outputs, in order.
    outputs : dict
        Role (:data:`ROLES`) -> output name; always has ``'depth'``.
    focal_scale : float or None
        Metric depth = raw output x ``output_scale`` x focal / ``focal_scale``, focal the mean
        of fx and fy in pixels at the network input; None: no focal scaling.
    sky_threshold : float
        Sky logits below it are sky (with a ``'sky'`` output).
    sky_depth : float
        What sky pixels become: NaN, or a depth cap in metres.
    external_data : tuple of str
        The files holding its external weights (a model over protobuf's 2 GB limit), relative
        to the model's folder.
    """

    path: Path
    recipe: Recipe
    output_kind: str
    output_scale: float
    input_shape: tuple
    input_name: str
    input_type: str = 'float32'
    output_names: tuple = ()
    outputs: dict = field(default_factory=dict)
    focal_scale: Optional[float] = None
    sky_threshold: float = 0.0
    sky_depth: float = math.nan
    external_data: tuple = ()


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
    input_name, input_shape, input_type, output_shapes, external = _onnx_graph(path)
    output_names = tuple(output_shapes)
    recipe, kind, scale = parse_card(card, str(card_path), input_shape)
    outputs, focal_scale, sky_threshold, sky_depth = parse_output_fields(
        card, str(card_path), output_names, kind)
    for role, name in outputs.items():
        shape = output_shapes[name]
        if shape is not None and not (len(shape) == 3 or (len(shape) == 4
                                                          and shape[1] in (1, None))):
            raise EstimatorError(
                f"{path} output '{name}' ({role}) has shape {shape}; a depth, sky or "
                'confidence output must be (B, H, W) or (B, 1, H, W): export it so, or set '
                'outputs in the model card to the right output')
    return OnnxModel(path=path, recipe=recipe, output_kind=kind, output_scale=scale,
                     input_shape=input_shape, input_name=input_name, input_type=input_type,
                     output_names=output_names, outputs=outputs, focal_scale=focal_scale,
                     sky_threshold=sky_threshold, sky_depth=sky_depth,
                     external_data=external)


def _onnx_graph(path: Path) -> tuple[str, tuple, str, dict, tuple]:
    """The network's input name, ``(B, 3, H, W)`` shape (None where dynamic) and element type
    (``'float16'`` or ``'float32'``), its outputs in order: name -> shape (None where the
    graph does not say its rank; None for a dynamic dimension), and the files of its external
    weights (relative to its folder)."""
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
    half = inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    outputs = {}
    for output in model.graph.output:
        tensor = output.type.tensor_type
        outputs[output.name] = tuple(
            d.dim_value if d.HasField('dim_value') else None for d in tensor.shape.dim) \
            if tensor.HasField('shape') else None
    if not outputs:
        raise EstimatorError(f'{path} has no outputs')
    external = sorted({e.value for tensor in model.graph.initializer
                       if tensor.data_location == onnx.TensorProto.EXTERNAL
                       for e in tensor.external_data if e.key == 'location'})
    return inputs[0].name, shape, 'float16' if half else 'float32', outputs, tuple(external)


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
    if not isinstance(resize_filter, str) or resize_filter not in _FILTERS:
        raise EstimatorError(f"model card {where}: resize_filter {resize_filter!r} must be "
                             'bilinear or bicubic')
    upsample = _field(card, 'upsample', where, 'bilinear')
    if not isinstance(upsample, str) or upsample not in _FILTERS:
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
    keep_aspect = card.get('keep_aspect')
    if keep_aspect is not None and not isinstance(keep_aspect, bool):
        raise EstimatorError(f"model card {where}: keep_aspect must be true (letterbox into "
                             f"input_size, or keep aspect with short_side) or false (stretch), "
                             f'got {keep_aspect!r}')
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
        # keep_aspect: true letterboxes into the fixed size (false, the default, stretches)
        letterbox, keep_aspect, multiple = bool(keep_aspect), False, 1
    elif 'short_side' in card:
        try:
            short = int(_field(card, 'short_side', where))
            multiple = int(_field(card, 'multiple', where, 1))
        except (TypeError, ValueError):
            raise EstimatorError(f"model card {where}: short_side and multiple must be whole "
                                 f"numbers of pixels, got {card.get('short_side')!r} and "
                                 f"{card.get('multiple')!r}") from None
        if short <= 0 or multiple <= 0 or short % multiple:
            raise EstimatorError(f'model card {where}: short_side {short} must be a positive '
                                 f'multiple of multiple ({multiple})')
        if None not in static_hw:
            raise EstimatorError(
                f'model card {where}: short_side needs a network with dynamic height and width, '
                f'but its input is fixed at {static_hw[0]}x{static_hw[1]}: use input_size: '
                f'[{static_hw[0]}, {static_hw[1]}]')
        size, letterbox = (short, short), False
        keep_aspect = True if keep_aspect is None else keep_aspect
    else:
        raise EstimatorError(f"model card {where}: field 'input_size' (or 'short_side') is "
                             'missing')
    recipe = Recipe(family='dpt', size=size, do_resize=True, resample=_FILTERS[resize_filter],
                    keep_aspect_ratio=keep_aspect, ensure_multiple_of=multiple, do_rescale=True,
                    rescale_factor=1 / 255, do_normalize=True, image_mean=mean, image_std=std,
                    do_pad=False, size_divisor=None, upsample=upsample, letterbox=letterbox)
    return recipe, kind, scale


def _number(card: dict, key: str, where: str, rule: str) -> Optional[float]:
    """``card[key]`` as a float (None when absent); a bool, string, list or mapping is
    refused with ``rule`` (what the field must be)."""
    value = card.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    hint = ''
    if isinstance(value, str):
        try:
            float(value)
            hint = ' (text, not a number: unquote it; YAML reads 1e-3 as text, write 1.0e-3)'
        except ValueError:
            pass
    raise EstimatorError(f'model card {where}: {key} must be {rule}, got {value!r}{hint}')


def parse_output_fields(card: dict, where: str, output_names: tuple, kind: str,
                        ) -> tuple[dict, Optional[float], float, float]:
    """``(outputs, focal_scale, sky_threshold, sky_depth)`` of a card (module docstring).

    ``output_names`` are the graph's outputs in order; ``outputs`` maps each role the card
    names (:data:`ROLES`) to one of them (default: ``{'depth': output_names[0]}``).
    ``sky_depth`` is NaN or a cap in metres.

    Raises
    ------
    EstimatorError
        Naming the field and what it must be.
    """
    known = ', '.join(output_names)
    mapping = card.get('outputs')
    if mapping is None:
        outputs = {'depth': output_names[0]}
    else:
        if not isinstance(mapping, dict):
            raise EstimatorError(
                f'model card {where}: outputs must be a mapping of role to the output name of '
                f'the network, e.g. {{depth: {output_names[0]}}}, got {mapping!r} (its '
                f'outputs: {known})')
        unknown = sorted(str(r) for r in mapping if r not in ROLES)
        if unknown:
            raise EstimatorError(f"model card {where}: outputs has unknown role(s) "
                                 f"{', '.join(unknown)}; roles: {', '.join(ROLES)}")
        if mapping.get('depth') is None:
            raise EstimatorError(f"model card {where}: outputs must name the depth output, "
                                 f'e.g. depth: {output_names[0]} (its outputs: {known})')
        outputs = {}
        for role in ROLES:
            name = mapping.get(role)
            if name is None:
                continue
            if not isinstance(name, str) or name not in output_names:
                raise EstimatorError(
                    f'model card {where}: outputs {role}: {name!r} is not an output of the '
                    f'network; its outputs: {known}')
            if name in outputs.values():
                raise EstimatorError(f'model card {where}: outputs names {name!r} for two '
                                     'roles; give each role its own output')
            outputs[role] = name
    focal_scale = _number(card, 'focal_scale', where,
                          'a positive number of pixels (DA3 metric: 300)')
    if focal_scale is not None:
        if not (focal_scale > 0 and math.isfinite(focal_scale)):
            raise EstimatorError(
                f'model card {where}: focal_scale must be a positive number of pixels (metric '
                f'depth = output x focal / focal_scale; DA3 metric: 300), got '
                f"{card['focal_scale']!r}")
        if kind != 'metric_depth':
            raise EstimatorError(
                f'model card {where}: focal_scale makes the output metres: set output_kind: '
                f'metric_depth (it is {kind}), or remove focal_scale')
    for key in ('sky_threshold', 'sky_depth'):
        if card.get(key) is not None and 'sky' not in outputs:
            raise EstimatorError(
                f'model card {where}: {key} needs a sky output: add sky: <output name> under '
                f'outputs (its outputs: {known}), or remove {key}')
    threshold = _number(card, 'sky_threshold', where, 'a finite number (logits below it are '
                        'sky)')
    if threshold is None:
        threshold = 0.0
    elif not math.isfinite(threshold):
        raise EstimatorError(f'model card {where}: sky_threshold must be a finite number '
                             f"(logits below it are sky), got {card['sky_threshold']!r}")
    sky_depth = card.get('sky_depth')
    rule = "'nan' (sky pixels become NaN) or a depth cap in metres > 0"
    if sky_depth is None or (isinstance(sky_depth, str) and sky_depth.strip().lower() in
                             ('nan', '.nan')):
        cap = math.nan
    else:
        cap = _number(card, 'sky_depth', where, rule)
        if not math.isnan(cap) and not (cap > 0 and math.isfinite(cap)):
            raise EstimatorError(f'model card {where}: sky_depth must be {rule}, got '
                                 f'{sky_depth!r}')
    return outputs, focal_scale, threshold, cap


def fixed_shape(model: OnnxModel, shape: tuple[int, ...]) -> Optional[str]:
    """Why ``shape`` does not fit ``model``'s input (None when it does)."""
    for want, got in zip(model.input_shape, shape):
        if want is not None and want != got:
            return f'{model.path} takes input {model.input_shape}, the frame needs {shape}'
    return None
