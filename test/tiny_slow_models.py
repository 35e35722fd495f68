"""Tiny random models that take the estimator's slow path (no download), for tests.

Like :mod:`tiny_models`: each builder saves into a fresh folder under ``tmp_dir`` and returns it.

- :func:`make_tiny_tipsv2_dpt`, :func:`make_tiny_chmv2`: transformers depth model types with
  no fast path. Their own image processors need torchvision, which this environment does not
  have (its wheels pull another torch), so the folders carry a PIL ``DPTImageProcessorPil``
  (``image_processor_type`` in ``preprocessor_config.json``): the slow path reads whatever the
  folder says through ``AutoImageProcessor``, as it would a torchvision processor.
- :func:`make_tiny_prompt_depth_anything`: Prompt Depth Anything (takes a metric depth prompt)
  with its own PIL image processor (no torchvision needed).
- :func:`make_tiny_marigold`: a diffusers ``MarigoldDepthPipeline`` (tiny UNet, VAE, CLIP text
  encoder and a 4-token CLIP tokenizer written here, LCM scheduler, 2 steps, 64 px).
"""

from __future__ import annotations

import json
from pathlib import Path
import tempfile
from typing import Any, Optional

import torch

from tiny_models import _save


def _pil_dpt_processor(size: int, multiple: int):
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    return DPTImageProcessorPil(size={'height': size, 'width': size}, keep_aspect_ratio=True,
                                ensure_multiple_of=multiple, resample=3)


def make_tiny_tipsv2_dpt(tmp_dir: Path | str, seed: int = 5,
                         depth_estimation_type: Optional[str] = None) -> Path:
    """TIPSv2-DPT (depth bins, patch 14) with a 56 px PIL DPT processor; its config says
    nothing of metric / relative unless ``depth_estimation_type`` is given."""
    from transformers import AutoModelForDepthEstimation, Tipsv2DptConfig

    extra: dict[str, Any] = {}
    if depth_estimation_type:
        extra['depth_estimation_type'] = depth_estimation_type
    config = Tipsv2DptConfig(
        backbone_config=dict(model_type='tipsv2_vision_model', hidden_size=32,
                             num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                             image_size=56, patch_size=14, out_indices=[1, 2, 3, 4],
                             reshape_hidden_states=False),
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, num_depth_bins=16, **extra)
    model = AutoModelForDepthEstimation.from_config(config)
    return _save(model, _pil_dpt_processor(56, 14), tmp_dir, 'tiny_tipsv2_', seed)


def make_tiny_chmv2(tmp_dir: Path | str, seed: int = 6) -> Path:
    """CHMv2 (DINOv3 backbone, patch 16) with a 64 px PIL DPT processor."""
    from transformers import AutoModelForDepthEstimation, CHMv2Config

    config = CHMv2Config(
        backbone_config=dict(model_type='dinov3_vit', hidden_size=32, intermediate_size=64,
                             num_hidden_layers=4, num_attention_heads=2, image_size=64,
                             patch_size=16, out_indices=[1, 2, 3, 4], return_class_token=True,
                             num_register_tokens=1,
                             reshape_hidden_states=True),
        post_process_channels=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
        number_output_channels=16)
    model = AutoModelForDepthEstimation.from_config(config)
    return _save(model, _pil_dpt_processor(64, 16), tmp_dir, 'tiny_chmv2_', seed)


def make_tiny_prompt_depth_anything(tmp_dir: Path | str, seed: int = 8,
                                    depth_estimation_type: str = 'metric') -> Path:
    """Prompt Depth Anything (Depth Anything V2 layout, patch 14) with its own processor at
    56 px, multiple of 14, keep aspect; the prompt fusion layers are random like the rest."""
    from transformers import PromptDepthAnythingConfig, PromptDepthAnythingForDepthEstimation
    from transformers.models.prompt_depth_anything.image_processing_pil_prompt_depth_anything \
        import PromptDepthAnythingImageProcessorPil

    from tiny_models import IMAGENET_MEAN, IMAGENET_STD, tiny_dinov2_config

    config = PromptDepthAnythingConfig(
        backbone_config=tiny_dinov2_config(), reassemble_hidden_size=32, patch_size=14,
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
        depth_estimation_type=depth_estimation_type, max_depth=1)
    processor = PromptDepthAnythingImageProcessorPil(
        size={'height': 56, 'width': 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return _save(PromptDepthAnythingForDepthEstimation(config), processor, tmp_dir,
                 'tiny_pda_', seed)


def make_tiny_marigold(tmp_dir: Path | str, seed: int = 7, steps: int = 2,
                       resolution: int = 64) -> Path:
    """A Marigold depth pipeline of a few thousand parameters, saved with ``save_pretrained``."""
    from diffusers import (AutoencoderKL, LCMScheduler, MarigoldDepthPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(tempfile.mkdtemp(prefix='tiny_marigold_', dir=tmp_dir))
    words = folder / 'words'
    words.mkdir()
    vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1, 'a</w>': 2, 'a': 3}
    (words / 'vocab.json').write_text(json.dumps(vocab))
    (words / 'merges.txt').write_text('#version: 0.2\n')
    tokenizer = CLIPTokenizer(vocab_file=str(words / 'vocab.json'),
                              merges_file=str(words / 'merges.txt'), model_max_length=8)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=8, projection_dim=8, bos_token_id=0,
        eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'), cross_attention_dim=8,
        attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(4, 8), down_block_types=('DownEncoderBlock2D',) * 2,
                        up_block_types=('UpDecoderBlock2D',) * 2, layers_per_block=1,
                        norm_num_groups=4, sample_size=16)
    scheduler = LCMScheduler(num_train_timesteps=1000, beta_schedule='scaled_linear',
                             prediction_type='v_prediction', timestep_spacing='trailing',
                             set_alpha_to_one=False, clip_sample=False)
    pipe = MarigoldDepthPipeline(unet=unet, vae=vae, scheduler=scheduler,
                                 text_encoder=text_encoder, tokenizer=tokenizer,
                                 prediction_type='depth', default_denoising_steps=steps,
                                 default_processing_resolution=resolution)
    out = folder / 'pipeline'
    pipe.save_pretrained(out)
    return out
