"""Checkpoint loading: a transformers depth model from a hub id or a local directory, or a
random-weight architecture for tests (ROS-free).

:func:`load_checkpoint` returns a :class:`Checkpoint`: the ``torch.nn.Module`` in fp32 on the CPU,
its ``preprocessor_config.json`` as a dict, whether it predicts metres (from the config, never
guessed) and the files it came from (the key of exported engines in the cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import torch

from depth_node.estimator.errors import EstimatorError
from depth_node.hub import DEFAULT_MODEL, is_local_model, offline_requested

logger = logging.getLogger('depth_node.estimator')

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


@dataclass
class Checkpoint:
    """A loaded transformers depth model and what the rest of the estimator needs to know of it.

    Attributes
    ----------
    model : torch.nn.Module
        The network, fp32, on the CPU, in eval mode.
    processor : dict or None
        Its ``preprocessor_config.json`` (None: the processor class defaults apply).
    name : str
        The hub id or directory loaded, or ``'random-init:<choice>'``.
    model_type : str
        ``config.model_type``.
    is_metric : bool
        True when it predicts metres along the optical axis, from the config.
    files : list of Path
        The files it was loaded from (config and weights); empty for a random architecture.
    """

    model: torch.nn.Module
    processor: Optional[dict]
    name: str
    model_type: str
    is_metric: bool
    files: list[Path] = field(default_factory=list)


def load_checkpoint(name: str, random_init: Optional[str] = None) -> Checkpoint:
    """Load ``name`` (hub id or local directory), or build ``random_init``'s architecture.

    Parameters
    ----------
    name : str
        Hugging Face hub id or local directory holding ``config.json``, the weights and
        ``preprocessor_config.json``. With ``HF_HUB_OFFLINE=1`` only the local cache is read.
    random_init : str or None
        ``None`` or ``''`` to load ``name``; one of :data:`RANDOM_INIT_CHOICES` builds that
        architecture with seeded random weights (a loud warning is logged).

    Raises
    ------
    EstimatorError
        Missing or unreadable model, unsupported model type, unknown ``random_init``; the message
        says what to pass instead.
    """
    if random_init:
        model, processor = _build_random(random_init, name)
        model_name, files = f'random-init:{random_init}', []
    else:
        model, processor = _load_pretrained(name)
        model_name = str(name)
        files = _source_files(model)
    model.eval()
    model.requires_grad_(False)
    model.float()
    config = model.config
    return Checkpoint(model=model, processor=processor, name=model_name,
                      model_type=str(config.model_type), is_metric=config_is_metric(config),
                      files=files)


def _source_files(model: torch.nn.Module) -> list[Path]:
    """Config and weight files of a model loaded with ``from_pretrained`` (its snapshot dir)."""
    path = getattr(model, 'name_or_path', None) or getattr(model.config, '_name_or_path', '')
    folder = Path(str(path))
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download
            folder = Path(snapshot_download(str(path), local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the cache: no files to key on
            return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix in ('.json', '.safetensors', '.bin'))


def _offline() -> bool:
    """True when the Hugging Face hub must not be contacted (env read at call time)."""
    if offline_requested():
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


def config_is_metric(config: Any) -> bool:
    model_type = config.model_type
    if model_type == 'depth_anything':
        return getattr(config, 'depth_estimation_type', 'relative') == 'metric'
    return model_type in _METRIC_MODEL_TYPES


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


def _load_pretrained(name: str) -> tuple[torch.nn.Module, Optional[dict]]:
    from transformers import AutoConfig, AutoModelForDepthEstimation

    name = str(name).strip()
    if not name:
        raise EstimatorError('model name is empty; pass a hub id such as '
                             f"'{DEFAULT_MODEL}' or a local model directory")
    path = Path(name).expanduser()
    local = is_local_model(name)
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
        raise _load_error(name, local, offline, exc) from exc
    model_type = getattr(config, 'model_type', None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EstimatorError(
            f"'{name}' is a '{model_type}' model, not a depth estimation model; use a "
            'transformers depth model (fast path for '
            f"{', '.join(SUPPORTED_MODEL_TYPES)}; any other AutoModelForDepthEstimation type "
            'through its own processor) or a Marigold checkpoint')
    try:
        model = AutoModelForDepthEstimation.from_pretrained(
            source, config=config, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise _load_error(name, local, offline, exc) from exc
    return model, _read_processor(source, local, offline, name)


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
