"""Which slow path a model takes, if any (ROS-free): :func:`open_slow_path`.

A Marigold checkpoint runs through :mod:`.marigold`, Prompt Depth Anything through
:mod:`.prompted`, any other transformers depth model without a fast path through
:mod:`.generic`; everything else is the fast path's (None). The :class:`DepthEstimator` facade
asks here first; the families import only their base, :mod:`.slow_base`, never this module.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from depth_node.estimator.device import resolve_dtype
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.generic import GenericTransformersPath
from depth_node.estimator.loading import SUPPORTED_MODEL_TYPES, _offline
from depth_node.estimator.marigold import MarigoldPath
from depth_node.estimator.prompted import MODEL_TYPE as PROMPT_TYPE, PromptDepthPath
from depth_node.estimator.slow_base import SlowPath
from depth_node.hub import is_local_model

logger = logging.getLogger('depth_node.estimator')


def _read_json(file: Path) -> Optional[dict]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hub_file(name: str, filename: str, offline: bool) -> Optional[Path]:
    try:
        from huggingface_hub import hf_hub_download  # heavy: loaded for a hub id only
        return Path(hf_hub_download(name, filename, local_files_only=offline))
    except Exception:  # noqa: BLE001 - not there, not cached or hub unreachable
        return None


def open_slow_path(name: str, random_init: Optional[str], engine: str, device: torch.device,
                   precision: str, kind: str = '', denoising_steps: int = 0,
                   ensemble_size: int = 0) -> Optional[SlowPath]:
    """The :class:`SlowPath` for ``name`` when it has no fast path, else None.

    A Marigold checkpoint (``model_index.json`` of a ``MarigoldDepthPipeline``) or a
    transformers depth model whose type is not in ``SUPPORTED_MODEL_TYPES``; ``None`` for
    everything else (the fast path loads it, or says why it cannot).

    Raises
    ------
    EstimatorError
        An ONNX engine asked for such a model, a Marigold checkpoint without diffusers, a
        config that does not say what the model outputs while ``kind`` is empty.
    """
    if random_init or not str(name).strip():
        return None
    name = str(name).strip()
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and (is_local_model(name) or name.endswith('.onnx')):
        return None
    offline = True if local else _offline()
    if local:
        index = path / 'model_index.json'
        index = index if index.is_file() else None
    else:  # only hub ids that look like Marigold are asked for a pipeline index online
        index = _hub_file(name, 'model_index.json',
                          offline or 'marigold' not in name.lower())
    pipeline = (_read_json(index) or {}).get('_class_name') if index else None
    if pipeline:
        if pipeline != 'MarigoldDepthPipeline':
            raise EstimatorError(f"'{name}' is a diffusers {pipeline}, not a depth model; "
                                 'model.name takes a Marigold depth checkpoint '
                                 "(MarigoldDepthPipeline, e.g. 'prs-eth/marigold-depth-v1-1')")
        _torch_only(engine, name, 'a Marigold (diffusers) pipeline')
        return MarigoldPath(name, str(path) if local else name, offline, device,
                            resolve_dtype(precision, device), kind, denoising_steps,
                            ensemble_size)
    if local:
        model_type = (_read_json(path / 'config.json') or {}).get('model_type')
    else:
        config_file = _hub_file(name, 'config.json', offline)
        model_type = (_read_json(config_file) or {}).get('model_type') if config_file else None
    # transformers is heavy to import: loaded only when a model may need it
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES
    if model_type in SUPPORTED_MODEL_TYPES or \
            model_type not in MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES:
        return None
    _torch_only(engine, name, f"a '{model_type}' model (no fast path: it runs through its "
                'own image processor)')
    from transformers import AutoConfig
    source = str(path) if local else name
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise EstimatorError(f"could not read the config of '{name}': {exc}") from exc
    path_class = PromptDepthPath if model_type == PROMPT_TYPE else GenericTransformersPath
    slow = path_class(name, source, offline, config, device, resolve_dtype(precision, device),
                      kind)
    logger.warning("'%s' is a '%s' model, which has no fast path here: it runs through its own "
                   'image processor and post_process_depth_estimation in torch (slower, correct)',
                   name, model_type)
    return slow


def _torch_only(engine: str, name: str, what: str) -> None:
    text = str(engine).strip().lower()
    if text not in ('torch', 'auto'):
        raise EstimatorError(f"model.engine '{engine}' cannot run '{name}': it is {what}, "
                             "which runs in torch only; use model.engine 'torch' or 'auto'")
