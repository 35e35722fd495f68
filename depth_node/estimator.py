"""Monocular depth network wrapper, free of ROS: load once, preprocess, forward, postprocess.

:class:`DepthEstimator` loads a Hugging Face depth model (hub id or local directory) once and
turns ``(H, W, 3)`` uint8 RGB frames into ``(H, W)`` float32 predictions at the input
resolution. Whether the prediction is metric depth or relative disparity is read from the model
config (:attr:`DepthEstimator.is_metric`, :attr:`DepthEstimator.output_kind`), never guessed.

Supported model types (checked against transformers 5.23 sources):

===================  ===============================  ==========================================
``model_type``       output                           preprocessing replica
===================  ===============================  ==========================================
``depth_anything``   relative disparity, or metres    ``DPTImageProcessor``: exact on CPU
                     when ``depth_estimation_type``
                     is ``'metric'`` (V1/V2 Metric)
``dpt``              relative disparity (MiDaS-style  ``DPTImageProcessor``: exact on CPU
                     inverse depth)
``glpn``             metres                           ``GLPNImageProcessor``: exact on CPU
``zoedepth``         metres                           ``ZoeDepthImageProcessor`` (reflect pad,
                                                      torch resize): exact on CPU
``depth_pro``        metres (needs the focal length:  ``DepthProImageProcessor`` replicated in
                     ``fx`` or the model's FoV head)  torch; that processor needs torchvision,
                                                      so parity was not measured here
===================  ===============================  ==========================================

Preprocessing tolerance against the model's own (PIL-backed) image processor:

* ``preprocess_backend='pil'`` (the default on CPU in fp32): the uint8 image is resized with
  PIL exactly as the processor does, then normalised through a 256-entry lookup table built with
  the processor's own arithmetic, so ``pixel_values`` are bit-identical.
* ``'torch_uint8'`` (the default on CPU in bf16): torch's SIMD antialiased uint8 resize
  (``interpolate`` on a channels-last uint8 tensor, the kernel torchvision uses), then the same
  table. Measured on the real frames against PIL: Depth Anything and DPT (bicubic) at most 2
  grey levels off on at most 0.5 % of values; GLPN (bilinear, a slight downscale to a multiple
  of 32) at most 1 level, on up to 13 % of values of one KITTI frame (the float ``'torch'``
  path differs there just as much). 4-5x faster than PIL on the project's 2-core VM
  (640x480 -> 686x518: 1.0 ms against 4.9 ms; 1280x720 -> 924x518: 2.0 ms against 11 ms).
  Depth Anything V2 Small's prediction moves by 0.04 % (mean relative) against 0.8 % for bf16
  itself, so exactness buys nothing there.
* ``'torch'`` (the default on CUDA): the uint8 frame is uploaded once and resized on the device
  with ``torch.nn.functional.interpolate`` in float (antialiased, separable, rounded to integers
  after each pass as PIL does), then normalised through the same table. Measured with this code
  on the CPU against PIL on the real frames (640x480, 1224x370, 1242x375, 1600x900,
  1920x1200): at most 2 grey levels off on at most 0.04 % of pixels, i.e. ``pixel_values`` max
  abs difference <= 2 / 255 / std (0.035 with ImageNet std) and mean abs difference < 1e-4
  (``test/test_estimator.py`` checks this bound). The CUDA kernels of the same torch ops were
  not measured (no GPU when this was written); expect the same bound.

On the CPU the table is applied with NumPy, single-threaded (``np.take`` per channel plane, two
pixels per lookup through a 65536-entry table of value pairs, written straight into the layout
the network reads): 1.0 ms at 924x518, where torch's two-thread gather took 2 ms plus 0.3 ms to
reorder for the network, and stalled for milliseconds whenever another process (a DDS
subscriber reading the last frame) held the other core. In bf16 the table holds the float32
values rounded once, so the network input is exactly the float32 ``pixel_values`` cast.

Postprocessing upsamples the prediction back to ``(H, W)`` with the mode the model's
``post_process_depth_estimation`` uses (bicubic, ``align_corners=False`` for DPT, Depth
Anything, GLPN and ZoeDepth; bilinear for DepthPro), then makes one device-to-host copy. On
CUDA that is ``F.interpolate``. On the CPU the same resampling runs in its separable form (each
axis's weights read back from ``F.interpolate`` itself, then one row-gathering weighted sum per
axis): within a few float32 roundings of ``F.interpolate`` (1e-6 relative) and faster
(518x924 -> 720x1280: 1.0-1.6 ms against 3.8 ms; 518x686 -> 480x640: 0.5-1.0 ms against 1.4).

Speed (see ``BENCHMARKS.md``):

* CPU bf16 (``precision='auto'`` picks it where the CPU has AVX512-BF16 or AMX-BF16): the
  model is cast to bf16 and run channels-last (not under ``torch.autocast``, which re-casts
  every weight on every forward): Depth Anything V2 Small at 518x686 on 2 AVX512-BF16 cores (no
  AMX) 0.80 s against 0.91 s with autocast and 1.2 s in fp32. The attention kernel
  (``scaled_dot_product_attention``, half of the time) runs no faster in bf16 than in fp32 on
  such a CPU. ``compile`` (Inductor with weight freezing and oneDNN pre-packing) brought it to
  0.70 s, after a first compile of about 21 s.
* CUDA: the frame goes through one pinned staging buffer to the device (one host-to-device
  copy), is resized and normalised there, runs in fp16 channels-last (cuDNN autotuning on), is
  upsampled there and comes back with one device-to-host copy into pinned memory (the caching
  host allocator recycles it, so nothing is pinned per frame after warm-up). ``cuda_graphs``
  captures the forward per input shape (warm up with the camera's size); ``compile`` wraps the
  model in ``torch.compile`` (``mode='reduce-overhead'`` together with ``cuda_graphs``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import functools
import json
import logging
import math
import os
from pathlib import Path
import re
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DEFAULT_MODEL = 'depth-anything/Depth-Anything-V2-Small-hf'

RANDOM_WEIGHTS_WARNING = ('RANDOM WEIGHTS: output is meaningless, for pipeline tests and timing '
                          'only')

#: Architectures ``random_init`` can build, with the published checkpoint each one mirrors.
RANDOM_INIT_CHOICES = {
    'depth-anything-v2-small': 'depth-anything/Depth-Anything-V2-Small-hf',
    'depth-anything-v2-base': 'depth-anything/Depth-Anything-V2-Base-hf',
    'depth-anything-v2-small-metric': 'depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf',
}

_METRIC_MODEL_TYPES = ('zoedepth', 'depth_pro', 'glpn')
_RELATIVE_MODEL_TYPES = ('dpt',)
SUPPORTED_MODEL_TYPES = ('depth_anything',) + _RELATIVE_MODEL_TYPES + _METRIC_MODEL_TYPES

_PRECISIONS = {
    'fp32': torch.float32, 'float32': torch.float32,
    'fp16': torch.float16, 'float16': torch.float16, 'half': torch.float16,
    'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
}
_PIL_NEAREST, _PIL_BILINEAR, _PIL_BICUBIC = 0, 2, 3
_TORCH_MODES = {_PIL_BILINEAR: 'bilinear', _PIL_BICUBIC: 'bicubic'}
_HUB_ID = re.compile(r'^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$')
_TRUE = ('1', 'true', 'yes', 'on')
_BACKENDS = ('auto', 'pil', 'torch_uint8', 'torch')
_BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')  # /proc/cpuinfo and cpuinfo names
_CPU_COMPILE_OPTIONS = {'freezing': True}  # Inductor config, scoped to one model


class EstimatorError(RuntimeError):
    """The model could not be loaded or run; the message says what to change."""


def resolve_device(device: str) -> torch.device:
    """Turn a device string into a usable :class:`torch.device`.

    Parameters
    ----------
    device : str
        ``'auto'`` (first CUDA device when one is usable, else CPU), ``'cpu'``, ``'cuda'`` or
        ``'cuda:N'``.

    Raises
    ------
    EstimatorError
        Unknown string, or CUDA asked for but not usable (CPU-only torch build, no driver, or
        index out of range).
    """
    text = str(device).strip().lower()
    if text == 'auto':
        return torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu')
    if text == 'cpu':
        return torch.device('cpu')
    match = re.fullmatch(r'cuda(?::(\d+))?', text)
    if match is None:
        raise EstimatorError(
            f"device '{device}' is not understood; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        build = 'a CPU-only torch build' if torch.version.cuda is None else 'no usable CUDA driver'
        raise EstimatorError(
            f"device '{device}' asked for, but CUDA is not available ({build}, torch "
            f"{torch.__version__}); use device 'cpu' or 'auto'")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise EstimatorError(
            f"device '{device}' asked for, but only {count} CUDA device(s) are visible "
            f'(cuda:0..cuda:{count - 1}); check CUDA_VISIBLE_DEVICES')
    return torch.device('cuda', index)


def _cpuinfo_flags(path: str = '/proc/cpuinfo') -> frozenset[str]:
    """CPU feature flags of the first processor in ``path`` (Linux); empty when unreadable."""
    try:
        with open(path, encoding='ascii', errors='replace') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'flags':
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 arithmetic natively (AVX512-BF16 or AMX-BF16).

    Read from ``torch.cpu.get_capabilities()`` (cpuinfo, what PyTorch's own kernel dispatch
    sees), or from the ``flags`` of ``/proc/cpuinfo`` where that torch function is missing.
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` is not used: it is also True on AVX512
    CPUs without bf16 instructions, where oneDNN emulates bf16 and fp32 is as fast or faster.
    """
    get_capabilities = getattr(getattr(torch, 'cpu', None), 'get_capabilities', None)
    if get_capabilities is not None:
        try:
            capabilities = get_capabilities()
        except Exception:  # noqa: BLE001 - cpuinfo failed to initialise: read the flags
            capabilities = None
        if capabilities is not None:
            return any(bool(capabilities.get(flag, False)) for flag in _BF16_CPU_FLAGS)
    return bool(_cpuinfo_flags() & set(_BF16_CPU_FLAGS))


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Pick the compute dtype for ``precision`` on ``device``.

    Parameters
    ----------
    precision : str
        ``'auto'``, ``'fp32'``, ``'fp16'`` or ``'bf16'``. ``'auto'`` is fp16 on CUDA; on CPU
        bf16 where the CPU has native bf16 instructions (:func:`cpu_has_native_bf16`: AVX512-BF16
        or AMX-BF16; Depth Anything V2 Small at 640x480 on 2 AVX512-BF16 cores without AMX:
        0.79 s against 1.15 s in fp32; the prediction moves by about 0.8 % mean relative),
        fp32 on other CPUs (bf16 is emulated there and no faster).
    device : torch.device
        Where the model runs.

    Raises
    ------
    EstimatorError
        Unknown string; fp16 on CPU (refused: PyTorch has no fast fp16 matmul on most CPUs, it
        measured 7x slower than fp32 here, so use bf16 or fp32); bf16 on a GPU without bf16.
    """
    text = str(precision).strip().lower()
    device = torch.device(device)
    if text == 'auto':
        if device.type == 'cuda':
            return torch.float16
        if device.type == 'cpu' and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if text not in _PRECISIONS:
        raise EstimatorError(
            f"precision '{precision}' is not understood; use 'auto', 'fp32', 'fp16' or 'bf16'")
    dtype = _PRECISIONS[text]
    if dtype == torch.float16 and device.type == 'cpu':
        raise EstimatorError(
            "precision 'fp16' is refused on CPU: PyTorch emulates half-precision matmuls there "
            "(measured 7x slower than fp32 on the project's CPU); use 'bf16' (about "
            "1.5x faster than fp32 on CPUs with AVX512-BF16, more with AMX) or 'fp32'")
    if dtype == torch.bfloat16 and device.type == 'cuda':
        if not torch.cuda.is_bf16_supported():
            raise EstimatorError(
                f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; "
                "use 'fp16' or 'fp32'")
    return dtype


@dataclass(frozen=True)
class _Recipe:
    """Preprocessing and postprocessing parameters of one model, as its image processor has them.

    ``family`` selects the pipeline: ``'dpt'`` (resize uint8, rescale, normalise, optional
    centre pad; DPT and Depth Anything), ``'glpn'`` (resize uint8 down to a multiple of
    ``size_divisor``, rescale, optional normalise), ``'zoedepth'`` (rescale, reflect pad, float
    resize with ``align_corners=True``, normalise) and ``'depth_pro'`` (rescale and normalise,
    then float bilinear resize to a fixed size).
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


_IMAGENET_DEFAULT = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_IMAGENET_STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Class defaults of the transformers 5.23 image processors, used for keys a
# preprocessor_config.json leaves out.
_PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    'dpt': dict(size=(384, 384), do_resize=True, resample=_PIL_BICUBIC, keep_aspect_ratio=False,
                ensure_multiple_of=1, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                image_mean=_IMAGENET_STANDARD[0], image_std=_IMAGENET_STANDARD[1], do_pad=False,
                size_divisor=None, upsample='bicubic'),
    'glpn': dict(size=None, do_resize=True, resample=_PIL_BILINEAR, keep_aspect_ratio=False,
                 ensure_multiple_of=1, do_rescale=True, rescale_factor=1 / 255,
                 do_normalize=False, image_mean=_IMAGENET_STANDARD[0],
                 image_std=_IMAGENET_STANDARD[1], do_pad=False, size_divisor=32,
                 upsample='bicubic'),
    'zoedepth': dict(size=(384, 512), do_resize=True, resample=_PIL_BILINEAR,
                     keep_aspect_ratio=True, ensure_multiple_of=1 / 32, do_rescale=True,
                     rescale_factor=1 / 255, do_normalize=True,
                     image_mean=_IMAGENET_STANDARD[0], image_std=_IMAGENET_STANDARD[1],
                     do_pad=True, size_divisor=None, upsample='bicubic'),
    'depth_pro': dict(size=(1536, 1536), do_resize=True, resample=_PIL_BILINEAR,
                      keep_aspect_ratio=False, ensure_multiple_of=1, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True,
                      image_mean=_IMAGENET_STANDARD[0], image_std=_IMAGENET_STANDARD[1],
                      do_pad=False, size_divisor=None, upsample='bilinear'),
}

# What Depth Anything checkpoints ship (518, multiple of 14, keep aspect, bicubic, ImageNet).
_DEPTH_ANYTHING_PROCESSOR = dict(size=(518, 518), keep_aspect_ratio=True, ensure_multiple_of=14,
                                 resample=_PIL_BICUBIC, image_mean=_IMAGENET_DEFAULT[0],
                                 image_std=_IMAGENET_DEFAULT[1])


def _family(model_type: str) -> str:
    return 'dpt' if model_type in ('dpt', 'depth_anything') else model_type


def _make_recipe(model_type: str, processor: Optional[dict]) -> _Recipe:
    """Merge a ``preprocessor_config.json`` dict over the processor class defaults."""
    family = _family(model_type)
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
    return _Recipe(family=family, **values)


def _triple(value: Any) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(v) for v in value)


def _keep_aspect_resize_shape(height: int, width: int, recipe: _Recipe) -> tuple[int, int]:
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


def _zoe_pad(height: int, width: int) -> tuple[int, int]:
    """Reflect padding ZoeDepth adds around the image (and removes after the forward)."""
    return int(np.sqrt(height / 2) * 3), int(np.sqrt(width / 2) * 3)


def _centre_pad(size: int, divisor: int) -> tuple[int, int]:
    extra = math.ceil(size / divisor) * divisor - size
    return extra // 2, extra - extra // 2


def _normalisation_table(recipe: _Recipe) -> np.ndarray:
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


def _offline() -> bool:
    """True when the Hugging Face hub must not be contacted (env read at call time)."""
    if any(os.environ.get(k, '').strip().lower() in _TRUE
           for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _download_hint(model_id: str) -> str:
    return (f'On a machine with network access run `hf download {model_id} --local-dir DIR` '
            f'(older huggingface_hub: `huggingface-cli download {model_id} --local-dir DIR`), '
            'copy DIR here and pass model.name:=DIR (the local directory) instead of the hub id.')


def _randomize_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Draw every weight matrix from N(0, 1/fan_in) and biases from N(0, 0.01), seeded.

    The transformers initialisation leaves a randomly initialised depth head almost constant
    (relative heads output ~0 after their ReLU), which hides pipeline bugs; these weights give
    an output that varies over the image. Still meaningless as depth.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                fan_in = max(1, param[0].numel())
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith('bias'):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _random_depth_anything(choice: str) -> torch.nn.Module:
    """Build a Depth Anything V2 architecture from a config written here, random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    base = choice.startswith('depth-anything-v2-base')
    hidden, heads = (768, 12) if base else (384, 6)
    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=12, num_attention_heads=heads,
                            image_size=518, patch_size=14, out_indices=[3, 6, 9, 12],
                            reshape_hidden_states=False, apply_layernorm=True)
    metric = choice.endswith('-metric')
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=14,
        neck_hidden_sizes=[96, 192, 384, 768] if base else [48, 96, 192, 384],
        fusion_hidden_size=128 if base else 64,
        depth_estimation_type='metric' if metric else 'relative',
        max_depth=80 if metric else 1)
    model = DepthAnythingForDepthEstimation(config)
    _randomize_weights(model)
    return model


_TAP_WINDOW = 6   # consecutive input samples that hold one output sample's taps, and more


@functools.lru_cache(maxsize=32)
def _resize_taps(n_in: int, n_out: int, mode: str,
                 ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """torch's own 1-D resampling weights of one axis: ``(n_out, k)`` input indices and weights.

    ``F.interpolate(..., mode, align_corners=False)`` is separable: its 2-D output is the 1-D
    rule applied along the rows, then along the columns. The weights are read back from torch
    itself rather than recomputed (its float32 source coordinates and cubic coefficients, with
    whatever rounding its build uses): impulses on every 8th sample of a ``(1, n_in)`` row, one
    residue class per batch entry, are interpolated to ``(1, n_out)`` (the vertical weights of
    a 1 -> 1 resize are exactly ``[0, 1, 0, 0]``), so each output gives the weight of the one
    input of each class among its taps. Border taps clamped onto one sample come back summed.
    None when the read-back weights do not reproduce ``F.interpolate`` (then it is used as is).
    """
    probes = torch.zeros(8, 1, 1, n_in)
    for k in range(8):
        probes[k, 0, 0, k::8] = 1.0
    with torch.inference_mode():
        response = F.interpolate(probes, size=(1, n_out), mode=mode,
                                 align_corners=False)[:, 0, 0].numpy()     # (8, n_out)
    # The taps of output j lie within _TAP_WINDOW inputs from floor(source) - 2: at most one of
    # each residue class, so the class's response is that input's weight.
    source = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    window = np.floor(source).astype(np.int64)[:, None] - 2 + np.arange(_TAP_WINDOW)
    window = np.clip(window, 0, n_in - 1)
    weights = response[window % 8, np.arange(n_out)[:, None]].astype(np.float32)
    weights[:, 1:][window[:, 1:] == window[:, :-1]] = 0.0   # a clamped input counted once
    # Nonzero taps first, then as few columns as the densest row needs.
    order = np.argsort(weights == 0, axis=1, kind='stable')
    window = np.take_along_axis(window, order, axis=1)
    weights = np.take_along_axis(weights, order, axis=1)
    taps = max(1, int(np.count_nonzero(weights, axis=1).max()))
    window, weights = window[:, :taps].copy(), weights[:, :taps].copy()
    unused = weights == 0
    window[unused] = np.broadcast_to(window[:, :1], window.shape)[unused]  # weight 0, a real tap
    # Check against torch on a smooth and a rough probe; any doubt: use F.interpolate.
    x = np.arange(n_in, dtype=np.float64)
    for probe in (np.sin(x * 0.37) + 2.0, (x * 7919 % 13) / 13.0 + 0.5):
        probe32 = torch.from_numpy(probe.astype(np.float32))
        with torch.inference_mode():
            expected = F.interpolate(probe32.view(1, 1, 1, n_in), size=(1, n_out), mode=mode,
                                     align_corners=False).view(-1).double().numpy()
        got = (probe32.double().numpy()[window] * weights).sum(axis=1)
        if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
            logger.warning('%s resize %d -> %d: read-back weights do not reproduce '
                           'F.interpolate; using it as is', mode, n_in, n_out)
            return None
    return torch.from_numpy(window), torch.from_numpy(weights)


def _separable_resize(depth: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor],
                      cols: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(B, 1, h, w)`` CPU image -> ``(B, 1, H, W)`` float32 with the taps of both axes.

    Each pass is one ``embedding_bag`` (a fused gather and weighted sum of whole rows, FBGEMM on
    x86): along the width on the transposed image, then along the height, with one transposing
    copy before each (the first also casts to float32): 4 + 4 multiply-adds per output where
    ``F.interpolate``'s bicubic does 16 (518x924 -> 720x1280 on 2 cores: 1.0-1.6 ms against
    3.8 ms). It matches ``F.interpolate`` to a few float32 rounding steps.
    """
    row_index, row_weight = rows
    col_index, col_weight = cols
    batch, _, height, width = depth.shape
    out_h, out_w = row_index.shape[0], col_index.shape[0]
    planes = []
    for b in range(batch):
        src_t = torch.empty((width, height), dtype=torch.float32)
        src_t.copy_(depth[b, 0].t())
        across_t = F.embedding_bag(col_index, src_t, per_sample_weights=col_weight, mode='sum')
        across = torch.empty((height, out_w), dtype=torch.float32)
        across.copy_(across_t.t())
        planes.append(F.embedding_bag(row_index, across, per_sample_weights=row_weight,
                                      mode='sum'))
    if batch == 1:
        return planes[0].view(1, 1, out_h, out_w)
    return torch.stack(planes).unsqueeze(1)


class DepthEstimator:
    """A depth network loaded once, turning RGB frames into depth or disparity images.

    Parameters
    ----------
    name : str
        Hugging Face hub id or local directory holding ``config.json``, the weights and
        ``preprocessor_config.json``. With ``HF_HUB_OFFLINE=1`` only the local cache is read.
    device : str
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (see :func:`resolve_device`).
    precision : str
        ``'auto'`` (fp16 on CUDA; bf16 on a CPU with native bf16 instructions, fp32 on other
        CPUs), ``'fp32'``, ``'fp16'`` or ``'bf16'`` (see :func:`resolve_dtype`). The model is
        cast to the dtype on every device (on CPU this beat ``torch.autocast`` by 10 %: see the
        module docstring).
    random_init : str or None
        ``None`` to load ``name``. One of :data:`RANDOM_INIT_CHOICES` builds that architecture
        with random weights and the stock Depth Anything preprocessing, for pipeline tests and
        timing without a download; a loud warning is logged. ``name`` is then not loaded.
    channels_last : bool or None
        Run convolutions in channels-last memory format; ``None`` means on for CUDA and for CPU
        bf16 (oneDNN's bf16 convolutions and upsampling are faster there: 7-10 % of the whole
        forward), off for CPU fp32 (no measurable difference).
    compile : bool
        Wrap the model in ``torch.compile`` (off by default); compilation happens on the first
        frame of each input shape (use :meth:`warmup`), and each new shape compiles again. On
        CPU the model is compiled with Inductor's freezing (weights folded in as constants and
        pre-packed for oneDNN; set for this model only, through ``torch.compile``'s
        ``options``, not in the process-global Inductor config): Depth Anything V2 Small bf16
        at 640x480 on 2 AVX512-BF16 cores ran 0.70 s against 0.80 s eager, after a first
        compile of about 21 s (more for larger models), and the frozen copy of the weights
        adds their size in memory. On CUDA it is compiled as it is (``mode='reduce-overhead'``
        together with ``cuda_graphs``).
    preprocess_backend : str
        ``'auto'`` (``'torch'`` on CUDA; on CPU ``'pil'`` in fp32 and ``'torch_uint8'``
        otherwise), ``'pil'`` (bit-exact, resize on the CPU), ``'torch_uint8'`` (CPU only:
        torch's SIMD uint8 resize, 4-5x faster than PIL) or ``'torch'`` (float resize on the
        device). See the module docstring for their tolerances.
    cuda_graphs : bool
        CUDA only (ignored with a warning elsewhere): capture the forward pass in a CUDA graph
        for each input shape, on the first frame of that shape (use :meth:`warmup`), and replay
        it afterwards. Keep the camera's size fixed; every new size captures another graph.
    upsample : str
        How the prediction is resized to the image: ``'auto'`` (what the model's
        ``post_process_depth_estimation`` does: bicubic for most, bilinear for DepthPro),
        ``'bilinear'`` or ``'bicubic'``. Bicubic can overshoot by a few percent at depth edges.

    Attributes
    ----------
    is_metric : bool
        True when the prediction is metric depth, told from the model config.
    output_kind : str
        ``'metric_depth'`` (metres along the camera optical z axis) or ``'relative_disparity'``
        (affine-invariant inverse depth, larger = nearer, unknown scale and shift).
    device : torch.device
    dtype : torch.dtype
        Compute dtype; the weights are cast to it.
    model_name : str
        The hub id or directory loaded, or ``'random-init:<choice>'``.
    model_type : str
        ``config.model_type`` of the network.
    last_timings : dict[str, float]
        Seconds spent in ``'preprocess'``, ``'forward'`` and ``'postprocess'`` by the last
        :meth:`predict` or :meth:`predict_batch` call (CUDA is synchronised for each).
    """

    def __init__(self, name: str = DEFAULT_MODEL, device: str = 'auto', precision: str = 'auto',
                 random_init: str | None = None, channels_last: bool | None = None,
                 compile: bool = False, preprocess_backend: str = 'auto',
                 upsample: str = 'auto', cuda_graphs: bool = False) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        cuda = self.device.type == 'cuda'
        if preprocess_backend not in _BACKENDS:
            raise EstimatorError(
                f"preprocess_backend '{preprocess_backend}' is not understood; use "
                f"{', '.join(repr(b) for b in _BACKENDS)}")
        if preprocess_backend == 'torch_uint8' and cuda:
            raise EstimatorError("preprocess_backend 'torch_uint8' is a CPU kernel; use 'torch' "
                                 "(or 'auto') on CUDA")
        if upsample not in ('auto', 'bilinear', 'bicubic'):
            raise EstimatorError(
                f"upsample '{upsample}' is not understood; use 'auto', 'bilinear' or 'bicubic'")
        if preprocess_backend == 'auto':
            if cuda:
                preprocess_backend = 'torch'
            else:
                preprocess_backend = 'pil' if self.dtype == torch.float32 else 'torch_uint8'
        self.preprocess_backend = preprocess_backend
        if cuda_graphs and not cuda:
            logger.warning('cuda_graphs is ignored on %s (CUDA only)', self.device)
        self.cuda_graphs = bool(cuda_graphs) and cuda

        if random_init:  # None or '' (an unset ROS string parameter) loads ``name``
            model, processor = self._build_random(random_init, name)
            self.model_name = f'random-init:{random_init}'
        else:
            model, processor = self._load(name)
            self.model_name = str(name)
        config = model.config
        self.model_type = str(config.model_type)
        self.is_metric = self._config_is_metric(config)
        self.output_kind = 'metric_depth' if self.is_metric else 'relative_disparity'
        self._recipe = _make_recipe(self.model_type, processor)
        if upsample != 'auto':
            self._recipe = replace(self._recipe, upsample=upsample)
        self._check_resample()

        model.eval()
        model.requires_grad_(False)
        model.to(device=self.device, dtype=self.dtype)
        if channels_last is None:
            channels_last = cuda or self.dtype != torch.float32
        self.channels_last = bool(channels_last)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True  # input sizes are fixed per camera
        self.model = model
        self.compiled = bool(compile)
        if compile:
            if cuda:
                mode = 'reduce-overhead' if self.cuda_graphs else None
                self._forward_module = torch.compile(model, mode=mode)
            else:
                # Freezing constant-folds the (never trained) weights and lets Inductor pre-pack
                # them for oneDNN (``cpp.weight_prepack``, on by default); given as options it
                # applies to this model's compilation only.
                self._forward_module = torch.compile(model, options=_CPU_COMPILE_OPTIONS)
        else:
            self._forward_module = model
        self._graphs: dict[tuple, tuple] = {}  # input shape -> captured CUDA graph
        self._table = torch.from_numpy(_normalisation_table(self._recipe)).to(self.device)
        self._table_flat = self._table.reshape(-1)
        # The table in the compute dtype: looking it up gives exactly the float32 values cast.
        self._table_compute = self._table_flat.to(self.dtype)
        self._table_offsets = torch.arange(3, dtype=torch.int32, device=self.device) * 256
        # compute dtype -> (3, 256) NumPy table and (3, 65536) pair table (CPU lookups)
        self._host_tables: dict[torch.dtype, tuple[np.ndarray, np.ndarray]] = {}
        self._staging: Optional[torch.Tensor] = None   # pinned upload buffer (CUDA)
        self._staging_done: Optional[Any] = None       # its last host-to-device copy (event)
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}
        self._warned_no_focal = False
        self.last_timings: dict[str, float] = {'preprocess': 0.0, 'forward': 0.0,
                                               'postprocess': 0.0}
        logger.info('depth model %s (%s, %s) on %s, %s%s, preprocessing %s%s%s',
                    self.model_name, self.model_type, self.output_kind, self.device,
                    str(self.dtype).replace('torch.', ''),
                    ', channels-last' if self.channels_last else '', self.preprocess_backend,
                    ', torch.compile' if self.compiled else '',
                    ', CUDA graphs' if self.cuda_graphs else '')

    # ------------------------------------------------------------------ loading

    @staticmethod
    def _config_is_metric(config: Any) -> bool:
        model_type = config.model_type
        if model_type == 'depth_anything':
            return getattr(config, 'depth_estimation_type', 'relative') == 'metric'
        return model_type in _METRIC_MODEL_TYPES

    @staticmethod
    def _build_random(choice: str, name: str) -> tuple[torch.nn.Module, None]:
        if choice not in RANDOM_INIT_CHOICES:
            raise EstimatorError(
                f"random_init '{choice}' is not known; use one of "
                f"{', '.join(sorted(RANDOM_INIT_CHOICES))} (or leave it empty to load a model)")
        logger.warning('%s (random_init=%s builds the %s architecture; no weights loaded)',
                       RANDOM_WEIGHTS_WARNING, choice, RANDOM_INIT_CHOICES[choice])
        if name and name != DEFAULT_MODEL:
            logger.warning("random_init is set, so model name '%s' is not loaded", name)
        try:
            return _random_depth_anything(choice), None
        except Exception as exc:  # transformers config/API change
            raise EstimatorError(f'could not build random_init={choice}: {exc}') from exc

    def _load(self, name: str) -> tuple[torch.nn.Module, Optional[dict]]:
        from transformers import AutoConfig, AutoModelForDepthEstimation

        name = str(name).strip()
        if not name:
            raise EstimatorError('model name is empty; pass a hub id such as '
                                 f"'{DEFAULT_MODEL}' or a local model directory")
        path = Path(name).expanduser()
        local = path.exists() or not _HUB_ID.match(name)
        if local:
            if not path.is_dir():
                what = 'is a file, not a directory' if path.exists() else 'does not exist'
                raise EstimatorError(
                    f"model directory '{path}' {what}. Point model.name at a directory holding "
                    'config.json, the weights (model.safetensors) and preprocessor_config.json, '
                    f"or at a hub id such as '{DEFAULT_MODEL}'.")
            if not (path / 'config.json').is_file():
                raise EstimatorError(
                    f"model directory '{path}' has no config.json; it must hold a model saved "
                    'with save_pretrained or downloaded with `hf download <id> --local-dir DIR`')
            source, offline = str(path), True
        else:
            source, offline = name, _offline()

        try:
            config = AutoConfig.from_pretrained(source, local_files_only=offline)
        except (OSError, ValueError) as exc:
            raise self._load_error(name, local, offline, exc) from exc
        model_type = getattr(config, 'model_type', None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise EstimatorError(
                f"'{name}' is a '{model_type}' model, which this node does not support; use a "
                f"depth model of type {', '.join(SUPPORTED_MODEL_TYPES)}")
        try:
            model = AutoModelForDepthEstimation.from_pretrained(
                source, config=config, local_files_only=offline)
        except (OSError, ValueError) as exc:
            raise self._load_error(name, local, offline, exc) from exc
        return model, self._read_processor(source, local, offline, name)

    @staticmethod
    def _load_error(name: str, local: bool, offline: bool, exc: Exception) -> EstimatorError:
        if local:
            return EstimatorError(f"could not load the model in '{name}': {exc}")
        if offline:
            reason = ('the Hugging Face hub is not contacted (HF_HUB_OFFLINE / '
                      'TRANSFORMERS_OFFLINE is set) and the model is not in the local cache')
        else:
            reason = (f'it could not be fetched from the Hugging Face hub or found in the local '
                      f'cache ({exc.__class__.__name__}: {exc})')
        hint = _download_hint(name)
        if '/' in name:
            hint += (f" (If '{name}' was meant as a local directory: it does not exist under "
                     f"'{Path.cwd()}'.)")
        return EstimatorError(f"could not load model '{name}': {reason}. {hint}")

    @staticmethod
    def _read_processor(source: str, local: bool, offline: bool, name: str) -> Optional[dict]:
        file = Path(source) / 'preprocessor_config.json' if local else None
        if not local:
            try:
                from huggingface_hub import hf_hub_download
                file = Path(hf_hub_download(source, 'preprocessor_config.json',
                                            local_files_only=offline))
            except Exception as exc:  # missing file or unreachable hub after the weights loaded
                logger.warning('no preprocessor_config.json for %s (%s); using the processor '
                               'defaults of its model type', name, exc)
                return None
        if not file.is_file():
            logger.warning('%s has no preprocessor_config.json; using the processor defaults of '
                           'its model type', name)
            return None
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise EstimatorError(f"could not read '{file}': {exc}") from exc

    def _check_resample(self) -> None:
        recipe = self._recipe
        if recipe.family in ('zoedepth', 'depth_pro') and recipe.resample not in _TORCH_MODES:
            raise EstimatorError(f'{self.model_type} preprocessing with resample='
                                 f'{recipe.resample} is not supported (bilinear or bicubic)')
        if self.preprocess_backend in ('torch', 'torch_uint8') \
                and recipe.resample not in _TORCH_MODES and recipe.family in ('dpt', 'glpn'):
            logger.warning('resample=%d has no torch equivalent; resizing with PIL on the CPU',
                           recipe.resample)
            self.preprocess_backend = 'pil'

    # ------------------------------------------------------------------ shapes

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input ``(height, width)`` in pixels for an image of ``height`` x ``width``.

        Padding added by the processor is included (ZoeDepth reflect pad before resizing, DPT
        ``do_pad`` after).
        """
        key = (int(height), int(width))
        size = self._sizes.get(key)
        if size is None:
            size = self._compute_input_size(*key)
            self._sizes[key] = size
        return size

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size after the resize step only (before a DPT centre pad)."""
        recipe = self._recipe
        if not recipe.do_resize:
            return height, width
        if recipe.family == 'dpt':
            return _keep_aspect_resize_shape(height, width, recipe)
        if recipe.family == 'glpn':
            divisor = recipe.size_divisor or 1
            return height // divisor * divisor, width // divisor * divisor
        if recipe.family == 'zoedepth':
            if recipe.do_pad:
                pad_h, pad_w = _zoe_pad(height, width)
                height, width = height + 2 * pad_h, width + 2 * pad_w
            return _keep_aspect_resize_shape(height, width, recipe)
        return recipe.size

    def _compute_input_size(self, height: int, width: int) -> tuple[int, int]:
        if height < 1 or width < 1:
            raise EstimatorError(f'image size {height}x{width} is empty')
        out_h, out_w = self._resized_size(height, width)
        if out_h < 1 or out_w < 1:
            raise EstimatorError(f'image {width}x{height} is too small for {self.model_name} '
                                 f'(it would be resized to {out_w}x{out_h})')
        recipe = self._recipe
        if recipe.family == 'dpt' and recipe.do_pad and recipe.size_divisor:
            out_h += sum(_centre_pad(out_h, recipe.size_divisor))
            out_w += sum(_centre_pad(out_w, recipe.size_divisor))
        return out_h, out_w

    # ------------------------------------------------------------------ preprocessing

    def _check_images(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        if len(images) == 0:
            raise EstimatorError('predict_batch needs at least one image')
        shape = None
        for image in images:
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
                    or image.dtype != np.uint8:
                got = (f'{image.dtype} array of shape {image.shape}'
                       if isinstance(image, np.ndarray) else type(image).__name__)
                raise EstimatorError(f'expected an (H, W, 3) uint8 RGB array, got {got}; '
                                     'convert BGR/mono/16-bit images before predicting')
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise EstimatorError(f'predict_batch needs images of one size, got {shape} and '
                                     f'{image.shape}; predict them separately')
        return int(shape[0]), int(shape[1])

    def _upload(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 on the device (channels-last memory), one host-to-device copy.

        On CUDA the frames are copied into one pinned staging buffer (kept while the frame size
        stays the same) and uploaded from there asynchronously.
        """
        if self.device.type == 'cuda':
            return self._upload_cuda(images)
        batch = np.stack(images) if len(images) > 1 else images[0][None]
        with warnings.catch_warnings():
            # Frames decoded by PIL are read-only; the tensor is only ever read.
            warnings.simplefilter('ignore', UserWarning)
            tensor = torch.from_numpy(np.ascontiguousarray(batch))
        return tensor.permute(0, 3, 1, 2)

    def _upload_cuda(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        shape = (len(images),) + tuple(images[0].shape)
        staging = self._staging
        if staging is None or tuple(staging.shape) != shape:
            staging = self._staging = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        elif self._staging_done is not None:
            self._staging_done.synchronize()  # the last upload from it has finished
        host = staging.numpy()
        for i, image in enumerate(images):
            np.copyto(host[i], image)
        tensor = staging.to(self.device, non_blocking=True)
        self._staging_done = torch.cuda.Event()
        self._staging_done.record(torch.cuda.current_stream(self.device))
        return tensor.permute(0, 3, 1, 2)

    def _lookup(self, values: torch.Tensor, table: torch.Tensor,
                channels_last: Optional[bool] = None) -> torch.Tensor:
        """Rescale + normalise integer pixel values ``(B, 3, h, w)`` through a flat table.

        ``table`` is ``(3 * 256,)``, channel-major. The result has ``table``'s dtype; its memory
        is channels-last when ``channels_last`` (default: the memory format of ``values``).
        uint8 values on the CPU are looked up with NumPy, one plane per channel: single-threaded
        (no stall when another process holds a core, unlike torch's two-thread index kernels),
        no int32 index image, and written straight into the layout the network reads.
        """
        if channels_last is None:
            channels_last = values.stride(1) == 1 and values.shape[1] > 1
        if values.device.type == 'cpu' and values.dtype == torch.uint8:
            return self._lookup_host(values, table, channels_last)
        if values.stride(1) == 1 and values.shape[1] > 1:  # channels-last memory
            index = values.permute(0, 2, 3, 1).to(torch.int32) + self._table_offsets
            out = table.index_select(0, index.reshape(-1)).view(index.shape)
            return out.permute(0, 3, 1, 2)
        index = values.to(torch.int32) + self._table_offsets.view(1, 3, 1, 1)
        return table.index_select(0, index.reshape(-1)).view(index.shape)

    def _lookup_host(self, values: torch.Tensor, table: torch.Tensor,
                     channels_last: bool) -> torch.Tensor:
        """:meth:`_lookup` of CPU uint8 values: NumPy ``take`` of each channel plane.

        Contiguous planes are looked up two pixels at a time: their bytes read as uint16 index
        a 65536-entry table of value pairs (256 KiB per channel in bf16, 512 KiB in float32,
        built once), half the gathers and index conversions of one pixel at a time
        (1280x720 -> 924x518 in bf16: 1.0 ms against 1.5 ms).
        """
        host, pairs = self._host_tables.get(table.dtype, (None, None))
        if host is None:
            # NumPy has no bf16: 16-bit tables are looked up as their raw int16 bits.
            raw = table.view(torch.int16) if table.element_size() == 2 else table
            host = raw.numpy().reshape(3, 256)
            # pairs[c, i]: the values of the two bytes of uint16 i, in memory order (any
            # byte order), as one 2 x itemsize unsigned integer.
            first_second = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(65536, 2)
            pair_type = np.dtype(f'u{2 * host.itemsize}')
            pairs = np.stack([np.ascontiguousarray(host[c][first_second]).view(pair_type)[:, 0]
                              for c in range(3)])
            self._host_tables[table.dtype] = host, pairs
        pixels = values.numpy()  # (B, 3, h, w), any strides, no copy
        batch, channels, height, width = pixels.shape
        paired = height * width % 2 == 0
        if channels_last:
            out = np.empty((batch, height, width, channels), dtype=host.dtype)
            plane_out = np.empty((height, width), dtype=host.dtype)
        else:
            out = np.empty((batch, channels, height, width), dtype=host.dtype)
        for b in range(batch):
            for c in range(channels):
                plane = pixels[b, c]
                dest = plane_out if channels_last else out[b, c]
                # mode='clip' (never clips here) writes into ``dest`` without the temporary
                # copy that the default mode='raise' makes.
                if paired and plane.flags.c_contiguous:
                    np.take(pairs[c], plane.reshape(-1).view(np.uint16),
                            out=dest.reshape(-1).view(pairs.dtype), mode='clip')
                else:
                    np.take(host[c], plane, out=dest, mode='clip')
                if channels_last:
                    out[b, :, :, c] = plane_out
        result = torch.from_numpy(out)
        if channels_last:
            result = result.permute(0, 3, 1, 2)
        return result.view(table.dtype) if result.dtype != table.dtype else result

    def _resize_uint8(self, images: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """Resize like the processor's PIL step; returns integer-valued ``(B, 3, h, w)``."""
        recipe = self._recipe
        height, width = images[0].shape[:2]
        if not recipe.do_resize or size == (height, width):
            return self._upload(images)
        if self.preprocess_backend == 'pil':
            from PIL import Image

            resized = [np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
                (size[1], size[0]), resample=recipe.resample)) for image in images]
            return self._upload(resized)
        mode = _TORCH_MODES[recipe.resample]
        if self.preprocess_backend == 'torch_uint8':
            # uint8 in, uint8 out: torch's vectorised antialiased kernel (channels-last input).
            return F.interpolate(self._upload(images), size=size, mode=mode, antialias=True,
                                 align_corners=False)
        x = self._upload(images).float()
        # PIL resamples horizontally, then vertically, rounding to uint8 after each pass.
        if size[1] != width:
            x = F.interpolate(x, size=(height, size[1]), mode=mode, antialias=True,
                              align_corners=False).round_().clamp_(0, 255)
        if size[0] != height:
            x = F.interpolate(x, size=size, mode=mode, antialias=True,
                              align_corners=False).round_().clamp_(0, 255)
        return x

    def _rescale(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 the way the processor rescales (float64 multiply, float32 cast)."""
        if not self._recipe.do_rescale:
            return x.float()
        return (x.double() * self._recipe.rescale_factor).float()

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        recipe = self._recipe
        if not recipe.do_normalize:
            return x
        mean = torch.tensor(recipe.image_mean, dtype=torch.float32, device=x.device)
        std = torch.tensor(recipe.image_std, dtype=torch.float32, device=x.device)
        return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    def _preprocess(self, images: Sequence[np.ndarray], compute: bool = False) -> torch.Tensor:
        """``pixel_values`` ``(B, 3, h, w)`` on the device, as the processor makes.

        float32, or with ``compute`` the compute dtype where the table gives it directly (DPT,
        Depth Anything, GLPN: the float32 values rounded once, no extra pass).
        """
        recipe = self._recipe
        height, width = images[0].shape[:2]
        if recipe.family in ('dpt', 'glpn'):
            table = self._table_compute if compute else self._table_flat
            x = self._lookup(self._resize_uint8(images, self._resized_size(height, width)),
                             table, channels_last=self.channels_last)
            if recipe.family == 'dpt' and recipe.do_pad and recipe.size_divisor:
                top, bottom = _centre_pad(x.shape[-2], recipe.size_divisor)
                left, right = _centre_pad(x.shape[-1], recipe.size_divisor)
                x = F.pad(x, (left, right, top, bottom), value=0.0)
            return x
        x = self._upload(images)
        mode = _TORCH_MODES[recipe.resample]
        if recipe.family == 'zoedepth':
            x = self._rescale(x)
            if recipe.do_pad:
                pad_h, pad_w = _zoe_pad(height, width)
                x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode='reflect')
            if recipe.do_resize:
                x = F.interpolate(x, size=self.input_size(height, width), mode=mode,
                                  align_corners=True)
            return self._normalize(x)
        # depth_pro: fused rescale + normalise in float32, then resize without antialiasing.
        x = x.float()
        if recipe.do_rescale and recipe.do_normalize:
            scale = 1.0 / recipe.rescale_factor
            mean = torch.tensor(recipe.image_mean, device=x.device) * scale
            std = torch.tensor(recipe.image_std, device=x.device) * scale
            x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        elif recipe.do_rescale:
            x = self._rescale(x)
        elif recipe.do_normalize:
            x = self._normalize(x)
        if recipe.do_resize:
            x = F.interpolate(x, size=recipe.size, mode=mode, antialias=False,
                              align_corners=False)
        return x

    # ------------------------------------------------------------------ forward / postprocess

    def _forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        pixel_values = pixel_values.to(self.dtype)
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs and not self.compiled:
            graphed = self._graph_forward(pixel_values)
            if graphed is not None:
                return graphed
        try:
            outputs = self._forward_module(pixel_values=pixel_values)
        except Exception as exc:
            if not self.compiled:
                raise
            raise EstimatorError(f'forward failed with torch.compile on ({type(exc).__name__}: '
                                 f'{exc}); run with compile off') from exc
        fov = getattr(outputs, 'field_of_view', None)
        return outputs.predicted_depth, fov

    def _graph_forward(self, pixel_values: torch.Tensor,
                       ) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """Replay the CUDA graph of this input shape, capturing it first; None if that failed.

        The outputs are the graph's static tensors: valid until the next call, which is enough
        because :meth:`_postprocess` reads them right away.
        """
        key = (tuple(pixel_values.shape), pixel_values.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(pixel_values)
            except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly
                logger.warning('CUDA graph capture failed for input %s (%s: %s); running this '
                               'model without CUDA graphs', tuple(pixel_values.shape),
                               type(exc).__name__, exc)
                self.cuda_graphs = False
                torch.cuda.synchronize(self.device)
                return None
            self._graphs[key] = entry
        graph, static_in, depth, fov = entry
        static_in.copy_(pixel_values)
        graph.replay()
        return depth, fov

    def _capture(self, pixel_values: torch.Tensor) -> tuple:
        static_in = pixel_values.clone(memory_format=torch.preserve_format)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # cuDNN autotuning and lazy initialisation before capture
                self.model(pixel_values=static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.model(pixel_values=static_in)
        logger.info('captured a CUDA graph for input %s', tuple(pixel_values.shape))
        return graph, static_in, outputs.predicted_depth, getattr(outputs, 'field_of_view', None)

    def _postprocess(self, depth: torch.Tensor, fov: Optional[torch.Tensor],
                     height: int, width: int, fx: Any) -> torch.Tensor:
        """``(B, h, w)`` network output -> ``(B, H, W)`` float32 on the device."""
        recipe = self._recipe
        depth = depth.unsqueeze(1)
        if recipe.family == 'zoedepth' and recipe.do_pad:
            pad_h, pad_w = _zoe_pad(height, width)
            depth = self._resize(depth, (height + 2 * pad_h, width + 2 * pad_w), 'bicubic',
                                 crop=(pad_h, height, pad_w, width))
        elif recipe.family == 'dpt' and recipe.do_pad and recipe.size_divisor:
            depth = self._crop_dpt_pad(depth, height, width)
        if recipe.family == 'depth_pro':
            depth = self._depth_pro_inverse(depth.float(), fov, width, fx)
        if depth.shape[-2:] != (height, width):
            depth = self._resize(depth, (height, width), recipe.upsample)
        depth = depth.float()  # no copy when the resize already made float32
        if recipe.family == 'depth_pro':
            depth = 1.0 / torch.clamp(depth, min=1e-4, max=1e4)
        return depth[:, 0].contiguous()

    def _resize(self, depth: torch.Tensor, size: tuple[int, int], mode: str,
                crop: Optional[tuple[int, int, int, int]] = None) -> torch.Tensor:
        """``F.interpolate(depth.float(), size, mode, align_corners=False)``, float32.

        ``crop`` ``(top, height, left, width)`` keeps only that part of the output. On the CPU
        the separable form (:func:`_separable_resize`) computes only the kept part; elsewhere
        ``F.interpolate`` runs as is and is cropped.
        """
        rows = cols = None
        if depth.device.type == 'cpu':
            rows = _resize_taps(int(depth.shape[-2]), int(size[0]), mode)
            cols = _resize_taps(int(depth.shape[-1]), int(size[1]), mode)
        if rows is not None and cols is not None:
            if crop is not None:
                top, height, left, width = crop
                rows = tuple(t[top:top + height] for t in rows)
                cols = tuple(t[left:left + width] for t in cols)
            return _separable_resize(depth, rows, cols)
        out = F.interpolate(depth.float(), size=size, mode=mode, align_corners=False)
        if crop is not None:
            top, height, left, width = crop
            out = out[..., top:top + height, left:left + width]
        return out

    def _to_host(self, *tensors: torch.Tensor) -> list[np.ndarray]:
        """One device-to-host copy per tensor (CUDA: into pinned memory, one synchronisation).

        On CUDA the pinned buffers come from torch's caching host allocator, so nothing is
        pinned per frame after warm-up. Each returned array owns its memory (it keeps its
        tensor alive): nothing is overwritten by the next frame.
        """
        if self.device.type != 'cuda':
            return [t.numpy() for t in tensors]
        hosts = []
        for t in tensors:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            hosts.append(host)
        torch.cuda.current_stream(self.device).synchronize()
        return [host.numpy() for host in hosts]

    def _crop_dpt_pad(self, depth: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Drop the centre padding DPT's processor added (scaled to the output grid).

        transformers' post_process leaves the padding in; cropping it keeps pixels aligned.
        """
        in_h, in_w = self.input_size(height, width)
        res_h, res_w = self._resized_size(height, width)
        top = _centre_pad(res_h, self._recipe.size_divisor)[0]
        left = _centre_pad(res_w, self._recipe.size_divisor)[0]
        out_h, out_w = depth.shape[-2:]
        y0, y1 = round(top * out_h / in_h), round((top + res_h) * out_h / in_h)
        x0, x1 = round(left * out_w / in_w), round((left + res_w) * out_w / in_w)
        return depth[..., y0:y1, x0:x1]

    def _depth_pro_inverse(self, depth: torch.Tensor, fov: Optional[torch.Tensor], width: int,
                           fx: Any) -> torch.Tensor:
        """Scale DepthPro's canonical inverse depth by ``width / focal`` (its post_process)."""
        batch = depth.shape[0]
        if fx is not None:
            focal = torch.as_tensor(fx, dtype=torch.float32, device=depth.device).reshape(-1)
            if focal.numel() == 1:
                focal = focal.expand(batch)
            if focal.numel() != batch or not bool(torch.all(focal > 0)):
                raise EstimatorError(f'fx must be one positive focal length (pixels) per image, '
                                     f'got {fx}')
        elif fov is not None:
            fov = fov.float().reshape(-1)
            focal = 0.5 * width / torch.tan(0.5 * torch.deg2rad(fov))
        else:
            if not self._warned_no_focal:
                logger.warning('%s has no field-of-view head and no fx was given; its depth '
                               'scale assumes a focal length equal to the image width',
                               self.model_name)
                self._warned_no_focal = True
            return depth
        return depth * (width / focal).view(-1, 1, 1, 1)

    # ------------------------------------------------------------------ public

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def _run(self, images: Sequence[np.ndarray], fx: Any,
             cloud: Optional[dict[str, Any]] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Predict; with ``cloud`` (keyword arguments of :func:`depth_to_points_tensor`) also
        back-project the first image's prediction on the device. One copy back per output."""
        height, width = self._check_images(images)
        self.input_size(height, width)
        start = time.perf_counter()
        pixel_values = self._preprocess(images, compute=True)
        self._sync()
        after_pre = time.perf_counter()
        depth, fov = self._forward(pixel_values)
        self._sync()
        after_forward = time.perf_counter()
        depth = self._postprocess(depth, fov, height, width, fx)
        timings = {'preprocess': after_pre - start, 'forward': after_forward - after_pre}
        if cloud is None:
            result, xyz = self._to_host(depth)[0], None
            timings['postprocess'] = time.perf_counter() - after_forward
        else:
            from depth_node.cloud import depth_to_points_tensor

            self._sync()
            after_post = time.perf_counter()
            timings['postprocess'] = after_post - after_forward
            points = depth_to_points_tensor(depth[0], **cloud)
            result, xyz = self._to_host(depth, points)
            timings['cloud'] = time.perf_counter() - after_post
        self.last_timings = timings
        return result, xyz

    @torch.inference_mode()
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Network input for same-size ``(H, W, 3)`` uint8 RGB images.

        Returns
        -------
        torch.Tensor
            ``pixel_values``, ``(B, 3, h, w)`` float32 on :attr:`device` with
            ``(h, w) == input_size(H, W)``: what the model's image processor produces (see the
            module docstring for the tolerance).
        """
        images = list(images)
        self._check_images(images)
        return self._preprocess(images)

    def predict(self, rgb: np.ndarray, fx: Optional[float] = None) -> np.ndarray:
        """Predict one frame.

        Parameters
        ----------
        rgb : np.ndarray
            ``(H, W, 3)`` uint8 RGB image.
        fx : float, optional
            Horizontal focal length in pixels of this image. Used only by models whose metric
            scale depends on it (DepthPro, which otherwise uses its own FoV estimate); ignored
            by the others.

        Returns
        -------
        np.ndarray
            ``(H, W)`` float32: metres along the optical axis when :attr:`is_metric`, else
            relative disparity (larger = nearer).
        """
        return self._run([rgb], fx)[0][0]

    def predict_points(self, rgb: np.ndarray, K: np.ndarray, stride: int = 1,
                       min_depth: float = 0.0, max_depth: float = float('inf'),
                       fx: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
        """Predict metric depth and back-project it on the device (the GPU path of a cloud).

        Parameters
        ----------
        rgb : np.ndarray
            ``(H, W, 3)`` uint8 RGB image.
        K : np.ndarray
            ``(3, 3)`` camera matrix of this image, pixels.
        stride, min_depth, max_depth
            As for :func:`depth_node.cloud.depth_to_points` (metres).
        fx : float, optional
            As for :meth:`predict`.

        Returns
        -------
        depth : np.ndarray
            ``(H, W)`` float32 metres along the optical axis, as :meth:`predict` returns.
        xyz : np.ndarray
            ``(ceil(H / stride), ceil(W / stride), 3)`` float32 points in the camera optical
            frame, metres, NaN where invalid: equal to ``depth_to_points(depth, K, ...)``.
            ``last_timings`` gains ``'cloud'`` (back-projection and both copies back).

        Raises
        ------
        EstimatorError
            For a relative model: its prediction is not metres (align it with LiDAR first and
            use :func:`depth_node.cloud.depth_to_points`).
        """
        if not self.is_metric:
            raise EstimatorError(f'{self.model_name} predicts relative disparity, not metres; '
                                 'a cloud needs metric depth (align it first)')
        cloud = {'K': K, 'stride': stride, 'min_depth': min_depth, 'max_depth': max_depth}
        depth, xyz = self._run([rgb], fx, cloud=cloud)
        return depth[0], xyz

    def predict_batch(self, images: list[np.ndarray],
                      fx: Optional[float | Sequence[float]] = None) -> list[np.ndarray]:
        """Predict several same-size frames in one forward pass.

        Parameters
        ----------
        images : list of np.ndarray
            ``(H, W, 3)`` uint8 RGB images, all of one size.
        fx : float or sequence of float, optional
            Focal length(s) in pixels, as in :meth:`predict`.

        Returns
        -------
        list of np.ndarray
            One ``(H, W)`` float32 prediction per image, as :meth:`predict` gives.
        """
        return list(self._run(list(images), fx)[0])

    def warmup(self, height: int, width: int, iterations: int = 2) -> float:
        """Run ``iterations`` synthetic ``height`` x ``width`` frames; return seconds taken.

        Triggers lazy initialisation (CUDA kernels, cuDNN autotuning, ``torch.compile``, CUDA
        graph capture) for that input shape so the first real frame is not slow.
        """
        ramp = np.linspace(0, 255, num=int(width), dtype=np.float32)
        frame = np.broadcast_to(ramp[None, :, None], (int(height), int(width), 3))
        frame = np.ascontiguousarray(frame.astype(np.uint8))
        start = time.perf_counter()
        for _ in range(max(1, int(iterations))):
            self.predict(frame)
        return time.perf_counter() - start
