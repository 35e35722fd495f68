"""Depth models without a fast path: run through their own processor or pipeline (ROS-free).

The fast path (:mod:`.recipe`, :mod:`.preprocess`, :mod:`.engines`, :mod:`.postprocess`) knows
the model types in :data:`depth_node.estimator.loading.SUPPORTED_MODEL_TYPES`. Any other model
type registered for ``AutoModelForDepthEstimation`` (transformers 5.23: ``chmv2``,
``tipsv2_dpt``, ``prompt_depth_anything``, ...) runs here through its own
``AutoImageProcessor`` and ``post_process_depth_estimation``, in torch: slower (PIL or
torchvision preprocessing on the host, one copy per stage) but what its authors ship. A Marigold
checkpoint (diffusers) runs through :mod:`depth_node.estimator.marigold`.

:func:`open_slow_path` says which applies; the :class:`DepthEstimator` facade then hands every
frame to the returned :class:`SlowPath`.

What such a model outputs is read from its config (``depth_estimation_type`` ``'metric'`` or
``'relative'``) and never guessed: when the config does not say, ``model.kind`` must
(:data:`KIND_CHOICES`); ``model.kind`` also overrides the config of any model (DPT's KITTI / NYU
checkpoints are metric, yet their config does not say so).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from depth_node.estimator.device import resolve_dtype
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.model_card import OUTPUT_KINDS

logger = logging.getLogger('depth_node.estimator')

#: ``model.kind``: '' = from the model's config (or card); otherwise what the output is.
KIND_CHOICES = ('',) + OUTPUT_KINDS

_KIND_HELP = ("'metric_depth' (metres along the optical axis), 'relative_disparity' "
              "(affine-invariant inverse depth, larger = nearer) or 'relative_depth' "
              '(affine-invariant depth, larger = farther)')


def check_kind(kind: str) -> str:
    """``model.kind`` normalised ('' or one of :data:`KIND_CHOICES`).

    Raises
    ------
    EstimatorError
        Anything else; the message lists the choices.
    """
    text = str(kind or '').strip().lower()
    if text not in KIND_CHOICES:
        raise EstimatorError(f"model.kind '{kind}' is not understood; use '' (from the model's "
                             f'config), {_KIND_HELP}')
    return text


def kind_from_config(config: Any, kind: str, name: str) -> str:
    """The output kind of a model without a fast path: ``kind`` when set, else its config's.

    Raises
    ------
    EstimatorError
        The config does not say (no ``depth_estimation_type``) and ``kind`` is empty.
    """
    kind = check_kind(kind)
    if kind:
        return kind
    said = str(getattr(config, 'depth_estimation_type', '') or '').lower()
    if said == 'metric':
        return 'metric_depth'
    if said == 'relative':
        return 'relative_disparity'  # what transformers' relative depth heads predict
    raise EstimatorError(
        f"'{name}' is a '{getattr(config, 'model_type', '?')}' model whose config does not say "
        'whether it predicts metres or relative depth; set model.kind to ' + _KIND_HELP)


class SlowPath:
    """A model run by its own code in torch; plays the engine and the preprocessor for the
    facade (``name``, ``describe()``, ``prepare()``, ``input_size()``, ``check_images()``).

    Attributes
    ----------
    model_name, model_type, output_kind : str
    config : transformers.PretrainedConfig or None
    device : torch.device
    input_dtype : torch.dtype
        Compute precision.
    what : str
        What runs the model, for the startup log.
    """

    name = 'torch'
    channels_last = False
    takes_prompt = False  # Prompt Depth Anything (:mod:`.prompted`) takes a depth prompt
    backend = 'model processor'
    what = ''

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.input_dtype = device, dtype
        self.config = None
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def describe(self) -> str:
        return f'torch ({self.what}, {str(self.input_dtype).replace("torch.", "")})'

    def prepare(self, shape: Sequence[int]) -> None:
        """Nothing to build ahead (no export, no compile)."""
        return None

    def close(self) -> None:
        self.model = None

    def check_images(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        from depth_node.estimator.preprocess import Preprocessor
        return Preprocessor.check_images(self, images)  # uses no state of the preprocessor

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input ``(height, width)`` for an image of ``height`` x ``width``."""
        key = (int(height), int(width))
        if key not in self._sizes:
            if len(self._sizes) >= 64:
                self._sizes.clear()
            self._sizes[key] = self._input_size(*key)
        return self._sizes[key]

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    def forward(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        """``(B, H, W)`` float32 predictions at the images' size and the seconds per stage
        (a model that :attr:`takes_prompt` also takes ``prompts``, one per image or None)."""
        raise NotImplementedError

    def run(self, images: Sequence[np.ndarray], compute: bool = False) -> torch.Tensor:
        """``DepthEstimator.preprocess``: the network input, where the model has one."""
        raise EstimatorError(f'{self.model_name} has no separate network input to show '
                             '(it is preprocessed inside its pipeline)')

    def predict(self, images: Sequence[np.ndarray], fx: Any,
                cloud: Optional[dict[str, Any]] = None,
                prompts: Optional[Sequence[Optional[np.ndarray]]] = None):
        """What ``DepthEstimator._run`` returns, for this model (``fx`` is not used).

        ``prompts``: one ``(h, w)`` metric depth prompt (or None) per image, for a model that
        :attr:`takes_prompt`; a frame without one gets an all-NaN depth, counted in
        ``Prediction.no_prompt``.
        """
        from depth_node.estimator.facade import Prediction

        images = list(images)
        self.check_images(images)
        no_prompt = 0
        with torch.inference_mode():
            if self.takes_prompt:
                prompts = list(prompts) if prompts is not None else [None] * len(images)
                no_prompt = sum(p is None for p in prompts)
                depth, timings = self.forward(images, prompts)
            else:
                depth, timings = self.forward(images)
        points = None
        if cloud is not None:
            from depth_node.cloud import depth_to_points
            start = time.perf_counter()
            points = depth_to_points(depth[0], **cloud)
            timings['cloud'] = time.perf_counter() - start
        return Prediction(depth=depth, timings=timings, points=points, no_prompt=no_prompt)

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)


class GenericTransformersPath(SlowPath):
    """A transformers depth model through ``AutoImageProcessor`` and its
    ``post_process_depth_estimation`` (which resizes to the image's size)."""

    what = 'its own image processor, no fast path'

    def __init__(self, name: str, source: str, offline: bool, config: Any,
                 device: torch.device, dtype: torch.dtype, kind: str) -> None:
        super().__init__(device, dtype)
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.model_name, self.model_type = str(name), str(config.model_type)
        self.output_kind = kind_from_config(config, kind, self.model_name)
        try:
            self.processor = AutoImageProcessor.from_pretrained(source,
                                                                local_files_only=offline)
        except Exception as exc:  # noqa: BLE001 - missing file, missing torchvision, ...
            hint = (' Its image processor needs torchvision: pip install the torchvision '
                    f'build matching torch {torch.__version__}.'
                    if 'torchvision' in str(exc).lower() else '')
            raise EstimatorError(f"could not load the image processor of '{name}' "
                                 f'({self.model_type}): {exc}.{hint}') from exc
        if not hasattr(self.processor, 'post_process_depth_estimation'):
            raise EstimatorError(f"the image processor of '{name}' has no "
                                 'post_process_depth_estimation; it is not a depth model')
        try:
            model = AutoModelForDepthEstimation.from_pretrained(source, config=config,
                                                                local_files_only=offline)
        except (OSError, ValueError) as exc:
            raise EstimatorError(f"could not load the model in '{name}': {exc}") from exc
        self.model = model.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.config = model.config

    def run(self, images: Sequence[np.ndarray], compute: bool = False) -> torch.Tensor:
        """``DepthEstimator.preprocess``: ``(B, 3, h, w)`` float32 from the image processor."""
        return self.processor(images=list(images), return_tensors='pt')['pixel_values'].to(
            self.device)

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        shape = self.processor(images=[blank], return_tensors='pt')['pixel_values'].shape
        return int(shape[-2]), int(shape[-1])

    def forward(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        height, width = images[0].shape[:2]
        start = time.perf_counter()
        inputs = self.processor(images=list(images), return_tensors='pt')
        pixel_values = inputs['pixel_values'].to(self.device, self.input_dtype)
        self._sync()
        after_pre = time.perf_counter()
        outputs = self.model(pixel_values=pixel_values)
        self._sync()
        after_forward = time.perf_counter()
        outputs.predicted_depth = outputs.predicted_depth.float()
        results = self.processor.post_process_depth_estimation(
            outputs, target_sizes=[(height, width)] * len(images))
        depth = torch.stack([r['predicted_depth'] for r in results]).float().cpu().numpy()
        timings = {'preprocess': after_pre - start, 'forward': after_forward - after_pre,
                   'postprocess': time.perf_counter() - after_forward}
        return np.ascontiguousarray(depth, dtype=np.float32), timings


def _read_json(file: Path) -> Optional[dict]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hub_file(name: str, filename: str, offline: bool) -> Optional[Path]:
    try:
        from huggingface_hub import hf_hub_download
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
    from depth_node.estimator.loading import SUPPORTED_MODEL_TYPES, _HUB_ID, _offline

    if random_init or not str(name).strip():
        return None
    name = str(name).strip()
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or not _HUB_ID.match(name) or name.endswith('.onnx')):
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
        from depth_node.estimator.marigold import MarigoldPath
        return MarigoldPath(name, str(path) if local else name, offline, device,
                            resolve_dtype(precision, device), kind, denoising_steps,
                            ensemble_size)
    if local:
        model_type = (_read_json(path / 'config.json') or {}).get('model_type')
    else:
        config_file = _hub_file(name, 'config.json', offline)
        model_type = (_read_json(config_file) or {}).get('model_type') if config_file else None
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES
    if model_type in SUPPORTED_MODEL_TYPES or \
            model_type not in MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES:
        return None
    _torch_only(engine, name, f"a '{model_type}' model (no fast path: it runs through its "
                'own image processor)')
    from depth_node.estimator.prompted import MODEL_TYPE as PROMPT_TYPE, PromptDepthPath
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
