"""Tiny randomly initialised depth models saved to disk, for tests that must not download.

Each builder writes ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``
into a fresh folder under ``tmp_dir`` and returns it, so ``from_pretrained(folder)`` works
offline. Architectures are real (same classes as the published checkpoints) but a few hundred
thousand parameters; each build takes well under a second once transformers is imported.
Weights are re-drawn with a fixed seed so predictions vary over the image (the stock
initialisation leaves depth heads almost constant), which makes comparisons meaningful.

Import from tests as ``from tiny_models import make_tiny_depth_anything``.
:func:`textured_image` makes the frames they are fed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
import tempfile
from typing import Any

import numpy as np
import torch


def textured_image(height: int, width: int, top: float, noise: int, seed: int) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 RGB test frame: a left-to-right ramp from 0 to ``top``
    plus uniform integer noise in ``[0, noise)`` (``np.random.default_rng(seed)``), clipped to
    255: texture everywhere, so a tiny model's prediction varies over the image."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, top, width, dtype=np.float32)[None, :, None]
    return np.clip(ramp + rng.integers(0, noise, size=(height, width, 3)), 0, 255).astype(
        np.uint8)


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _spread_weights(model: torch.nn.Module, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1): a non-degenerate random network."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1:
                std = 1.0 / math.sqrt(param[0].numel())
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            elif name.endswith('.bias'):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def _save(model: torch.nn.Module, processor: Any, tmp_dir: Path | str, prefix: str,
          seed: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_dir))
    _spread_weights(model, seed)
    model.eval().save_pretrained(folder)
    if isinstance(processor, dict):
        (folder / 'preprocessor_config.json').write_text(json.dumps(processor, indent=2))
    else:
        processor.save_pretrained(folder)
    return folder


def tiny_dinov2_config(out_indices: tuple[int, ...] = (1, 2, 3, 4), image_size: int = 518,
                       **overrides: Any):
    """Dinov2 backbone: hidden 32, 4 layers, 2 heads, patch 14."""
    from transformers import Dinov2Config

    values = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                  image_size=image_size, patch_size=14, out_indices=list(out_indices),
                  reshape_hidden_states=False)
    values.update(overrides)
    return Dinov2Config(**values)


def make_tiny_depth_anything(tmp_dir: Path | str, metric: bool = False, seed: int = 0,
                             **processor_overrides: Any) -> Path:
    """Depth Anything (V2 layout) with the stock processor: 518, multiple of 14, keep aspect.

    ``metric=True`` sets ``depth_estimation_type='metric'`` and ``max_depth=20``.
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    config = DepthAnythingConfig(
        backbone_config=tiny_dinov2_config(), reassemble_hidden_size=32, patch_size=14,
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
        depth_estimation_type='metric' if metric else 'relative', max_depth=20 if metric else 1)
    processor = dict(size={'height': 518, 'width': 518}, keep_aspect_ratio=True,
                     ensure_multiple_of=14, resample=3, do_rescale=True, do_normalize=True,
                     image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_pad=False)
    processor.update(processor_overrides)
    model = DepthAnythingForDepthEstimation(config)
    return _save(model, DPTImageProcessorPil(**processor), tmp_dir, 'tiny_da_', seed)


def make_tiny_dpt(tmp_dir: Path | str, seed: int = 1, backbone: str = 'vit',
                  **processor_overrides: Any) -> Path:
    """DPT with DPT's default processor (384x384, aspect not kept, mean/std 0.5).

    ``backbone='vit'`` is DPT's own ViT (patch 16; square inputs only, like Intel/dpt-large);
    ``backbone='dinov2'`` takes rectangular inputs (like facebook/dpt-dinov2-*).
    ``processor_overrides`` go to ``DPTImageProcessorPil`` (e.g. ``keep_aspect_ratio=True,
    ensure_multiple_of=14, do_pad=True, size_divisor=32``).
    """
    from transformers import DPTConfig, DPTForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    common = dict(hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                  use_auxiliary_head=False)
    if backbone == 'dinov2':
        config = DPTConfig(backbone_config=tiny_dinov2_config(),
                           use_bias_in_fusion_residual=False, **common)
    else:
        config = DPTConfig(num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                           image_size=384, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                           readout_type='project', **common)
    processor = dict(size={'height': 384, 'width': 384}, keep_aspect_ratio=False,
                     ensure_multiple_of=1, resample=3)
    processor.update(processor_overrides)
    return _save(DPTForDepthEstimation(config), DPTImageProcessorPil(**processor), tmp_dir,
                 'tiny_dpt_', seed)


def make_tiny_glpn(tmp_dir: Path | str, seed: int = 2) -> Path:
    """GLPN (metric, max_depth 80) with its processor: floor to multiples of 32, bilinear."""
    from transformers import GLPNConfig, GLPNForDepthEstimation
    from transformers.models.glpn.image_processing_pil_glpn import GLPNImageProcessorPil

    config = GLPNConfig(hidden_sizes=[8, 16, 32, 32], num_attention_heads=[1, 1, 2, 2],
                        depths=[1, 1, 1, 1], decoder_hidden_size=16, max_depth=80)
    return _save(GLPNForDepthEstimation(config),
                 GLPNImageProcessorPil(size_divisor=32, resample=2), tmp_dir, 'tiny_glpn_',
                 seed)


def make_tiny_zoedepth(tmp_dir: Path | str, seed: int = 3, nk: bool = False) -> Path:
    """ZoeDepth (BEiT backbone, one KITTI bin set) with the Intel checkpoints' processor;
    ``nk=True``: two bin sets (NYU, KITTI) chosen per batch by a vote, like ZoeDepth-NK."""
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation
    from transformers.models.zoedepth.image_processing_pil_zoedepth import (
        ZoeDepthImageProcessorPil)

    backbone = BeitConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=64, image_size=384, patch_size=16,
                          out_indices=[1, 2, 3, 4], use_relative_position_bias=True,
                          reshape_hidden_states=False)
    config = ZoeDepthConfig(
        backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        bottleneck_features=16, num_relative_features=8, bin_embedding_dim=8,
        num_attractors=[4, 4, 2, 1], reassemble_hidden_size=32,
        bin_configurations=([{'n_bins': 16, 'min_depth': 0.001, 'max_depth': 10.0,
                              'name': 'nyu'}] if nk else []) +
        [{'n_bins': 16, 'min_depth': 0.001, 'max_depth': 80.0, 'name': 'kitti'}],
        **(dict(num_patch_transformer_layers=4, patch_transformer_hidden_size=128,
                patch_transformer_intermediate_size=128, patch_transformer_num_attention_heads=2)
           if nk else {}))
    processor = ZoeDepthImageProcessorPil(size={'height': 384, 'width': 512},
                                          keep_aspect_ratio=True, ensure_multiple_of=32,
                                          resample=2, do_pad=True)
    return _save(ZoeDepthForDepthEstimation(config), processor, tmp_dir, 'tiny_zoe_', seed)


def make_tiny_depth_pro(tmp_dir: Path | str, seed: int = 4, use_fov_model: bool = True,
                        size: int = 256) -> Path:
    """DepthPro with 64-pixel patches and a ``size`` x ``size`` input.

    Its image processor needs torchvision, so ``preprocessor_config.json`` is written as the
    JSON ``DepthProImageProcessor`` would save.
    """
    from transformers import DepthProConfig, DepthProForDepthEstimation

    sub = dict(model_type='dinov2', hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
               mlp_ratio=2, image_size=64, patch_size=16)
    config = DepthProConfig(
        patch_size=64, fusion_hidden_size=16, intermediate_hook_ids=[1, 0],
        intermediate_feature_dims=[8, 8], scaled_images_ratios=[0.5, 1],
        scaled_images_overlap_ratios=[0.0, 0.25], scaled_images_feature_dims=[16, 8],
        use_fov_model=use_fov_model, num_fov_head_layers=1, image_model_config=dict(sub),
        patch_model_config=dict(sub), fov_model_config=dict(sub))
    processor = {'image_processor_type': 'DepthProImageProcessor', 'do_resize': True,
                 'size': {'height': size, 'width': size}, 'resample': 2, 'do_rescale': True,
                 'rescale_factor': 1 / 255, 'do_normalize': True, 'image_mean': [0.5] * 3,
                 'image_std': [0.5] * 3}
    return _save(DepthProForDepthEstimation(config), processor, tmp_dir, 'tiny_depth_pro_',
                 seed)


#: One builder per model kind the tests use: ``BUILDERS[kind](tmp_dir) -> folder``.
BUILDERS = {
    'depth_anything': lambda root: make_tiny_depth_anything(root),
    'depth_anything_metric': lambda root: make_tiny_depth_anything(root, metric=True),
    'dpt': lambda root: make_tiny_dpt(root),
    'dpt_dinov2_pad': lambda root: make_tiny_dpt(root, backbone='dinov2', keep_aspect_ratio=True,
                                                 ensure_multiple_of=14, do_pad=True,
                                                 size_divisor=32),
    'glpn': lambda root: make_tiny_glpn(root),
    'zoedepth': lambda root: make_tiny_zoedepth(root),
    'depth_pro': lambda root: make_tiny_depth_pro(root),
}
