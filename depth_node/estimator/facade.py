"""The estimator facade: one object that turns RGB frames into depth (ROS-free).

:class:`DepthEstimator` composes the parts a reader finds by name in this package:

==================  ==========================================================================
module              what it does
==================  ==========================================================================
``device``          device and precision resolution (``auto``: per model family on CUDA, bf16
                    on CPUs with native bf16, else fp32); sticky CUDA errors
``loading``         checkpoint loading (hub id, local directory, random architecture for tests)
``model_card``      plain ONNX models and their card (``depth_node_model.yaml``)
``recipe``          the processor recipe: input size, mean/std, padding, resampling
``preprocess``      uint8 RGB -> network input, bit-exact with the image processor on CPU fp32
``engines``         torch, onnxruntime, openvino, tensorrt: each only runs the network
``export``          per-shape ONNX export and the on-disk cache of exports and engines
``postprocess``     raw prediction -> ``(H, W)`` float32 at the image's size
``engine_setup``    the engine in use: built, self-checked (``verify``), replaced on failure
``focal``           focal lengths for a model whose metric scale needs them (``focal_scale``)
``clock``           stage times: CUDA events on CUDA, ``perf_counter`` elsewhere
==================  ==========================================================================

Pre- and postprocessing are the same for every engine; an engine takes the network input and
returns the raw prediction (and Depth Pro's field of view). :meth:`DepthEstimator.predict`
returns a :class:`Prediction`: the depth, and the seconds each stage took.

On CUDA a call synchronises with the device once, when its outputs are copied back; stage times
come from CUDA events. Batches are padded to the batch sizes warmed up (:meth:`DepthEstimator.
warmup`), so that cameras dropping in and out do not create new input shapes (each one costs
cuDNN autotuning, a capture and memory); ZoeDepth with several bin sets (NK) is never batched:
its domain vote sums over the batch.

Supported transformers model types (checked against transformers 5.23): ``depth_anything``
(relative disparity, or metres when ``depth_estimation_type`` is ``'metric'``), ``dpt``
(relative disparity), ``glpn``, ``zoedepth`` and ``depth_pro`` (metres). Plain ONNX models say
what they output in their card (``relative_disparity``, ``relative_depth`` or ``metric_depth``).
Any other transformers depth model type, and Marigold (diffusers), take the slow path of
:mod:`depth_node.estimator.slow_path`: their own processor or pipeline, torch only. Prompt Depth
Anything (:mod:`depth_node.estimator.prompted`) takes a metric depth prompt with each frame
(``prompt=`` of :meth:`DepthEstimator.predict`) and outputs metres.
"""

from __future__ import annotations

from dataclasses import replace
import math
import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from depth_node.estimator.clock import HostStageClock, stage_clock
from depth_node.estimator.device import (device_scope, resolve_cuda_graphs, resolve_device,
                                         resolve_dtype)
from depth_node.estimator.engine_setup import EngineSetup
from depth_node.estimator.engines import EngineOptions, resolve_engine
from depth_node.estimator.errors import EstimatorError, one_per_image
from depth_node.estimator.export import default_cache_dir
from depth_node.estimator.focal import check_focals, focal_factors, focal_of, scale_by_focals
from depth_node.estimator.loading import load_checkpoint
from depth_node.estimator.model_card import is_onnx_model, load_onnx_model
from depth_node.estimator.postprocess import Postprocessor
from depth_node.estimator.prediction import Prediction
from depth_node.estimator.preprocess import Preprocessor
from depth_node.estimator.recipe import make_recipe, with_short_side
from depth_node.estimator.slow_base import check_kind
from depth_node.estimator.slow_path import open_slow_path
from depth_node.estimator.verify import EngineCheck
from depth_node.hub import DEFAULT_MODEL

logger = logging.getLogger('depth_node.estimator')


def _first(prediction: Prediction) -> Prediction:
    """A one-image :class:`Prediction` from a batch of one: ``depth``, ``sky`` and
    ``confidence`` without their batch axis."""
    prediction.depth = prediction.depth[0]
    if prediction.sky is not None:
        prediction.sky = prediction.sky[0]
    if prediction.confidence is not None:
        prediction.confidence = prediction.confidence[0]
    return prediction


class DepthEstimator:
    """A depth network loaded once, turning RGB frames into depth or disparity images.

    Parameters
    ----------
    name : str
        Hugging Face hub id or local directory holding ``config.json``, the weights and
        ``preprocessor_config.json`` (with ``HF_HUB_OFFLINE=1`` only the local cache is read);
        or a plain ONNX model: a ``.onnx`` file or a directory with ``model.onnx``, each with
        its card (:mod:`depth_node.estimator.model_card`).
    device : str
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (see :func:`resolve_device`): where
        pre- and postprocessing run, and the torch, ONNX Runtime and TensorRT engines.
    precision : str
        ``'auto'`` (on CUDA per model family, see :data:`depth_node.estimator.device.
        CUDA_AUTO_PRECISION`; bf16 on a CPU with native bf16 instructions, fp32 on other CPUs;
        fp32 for ONNX Runtime on the CPU), ``'fp32'``, ``'fp16'`` or ``'bf16'``.
    random_init : str or None
        ``None`` to load ``name``. One of ``RANDOM_INIT_CHOICES`` builds that architecture
        with random weights and the stock Depth Anything preprocessing, for pipeline tests and
        timing without a download; a loud warning is logged. ``name`` is then not loaded.
    channels_last : bool or None
        Run convolutions in channels-last memory format; ``None`` means on for CUDA and for CPU
        bf16 (oneDNN's bf16 convolutions and upsampling are faster there: 7-10 % of the whole
        forward), off for CPU fp32 (no measurable difference).
    compile : bool
        torch engine: wrap the model in ``torch.compile`` (see :class:`TorchEngine`).
    preprocess_backend : str
        ``'auto'``, ``'pil'``, ``'torch_uint8'`` or ``'torch'`` (see
        :mod:`depth_node.estimator.preprocess`).
    cuda_graphs : str or bool
        torch engine on CUDA: capture the forward pass per input shape. ``'auto'`` (on for
        CUDA with a torch that has the capture fix), ``'on'`` / ``True``, ``'off'`` / ``False``
        (:func:`depth_node.estimator.device.resolve_cuda_graphs`).
    upsample : str
        How the prediction is resized to the image: ``'auto'`` (what the model's
        ``post_process_depth_estimation`` does: bicubic for most, bilinear for DepthPro),
        ``'bilinear'`` or ``'bicubic'``. Bicubic can overshoot by a few percent at depth edges.
    engine : str
        ``'torch'`` (default), ``'onnxruntime'``, ``'openvino'``, ``'tensorrt'`` or ``'auto'``
        (:func:`depth_node.estimator.engines.resolve_engine` says what it picks and why).
    input_size : int
        The network input's short side in pixels (a multiple of the patch size: 518, 406, 308
        for Depth Anything); 0 = the processor's.
    cache_dir : str
        Where ONNX exports and compiled engines are cached ('' = :func:`default_cache_dir`).
    threads : int
        ONNX Runtime / OpenVINO intra-op threads (0 = the engine's default).
    providers : sequence of str
        ONNX Runtime execution providers in order (empty = CUDA then CPU on CUDA, else CPU).
    openvino_device : str
        OpenVINO device (``'CPU'``, ``'GPU'``, ``'NPU'``).
    kind : str
        ``''`` (what the config or card says) or the output kind, which overrides it
        (:data:`depth_node.estimator.slow_base.KIND_CHOICES`); required for a model type without
        a fast path whose config does not say.
    denoising_steps, ensemble_size : int
        Marigold checkpoints only (:mod:`depth_node.estimator.marigold`); 0 = its default.
    verify : bool
        The engine self-check (:mod:`depth_node.estimator.verify`): before an engine's first
        frame (warm-up included) at each input shape it compiles, one seeded input runs through
        it and through a reference (torch fp32; ONNX Runtime on the CPU for a plain ONNX model),
        and an output beyond the tolerance raises :class:`EstimatorError` naming the engine,
        its version, the device and the fix. With ``precision='auto'`` an ONNX engine or torch
        in fp16 / bf16 that fails is run in fp32 instead (warned), with ``engine='auto'`` an
        ONNX engine that fails falls back to torch. What it did and its time go to
        :attr:`startup_notes`.
    verify_tolerance : float
        The self-check's bound on the mean relative error; 0 = per precision
        (:data:`depth_node.estimator.verify.TOLERANCES`).

    Attributes
    ----------
    is_metric : bool
        True when the prediction is metric depth, told from the model config (or card).
    output_kind : str
        ``'metric_depth'`` (metres along the camera optical z axis), ``'relative_disparity'``
        (affine-invariant inverse depth, larger = nearer) or ``'relative_depth'``
        (affine-invariant depth, larger = farther; plain ONNX models only).
    device : torch.device
    dtype : torch.dtype
        Compute precision asked of the engine.
    engine : Engine
        The engine that runs the network (``engine.name``, ``engine.describe()``).
    model_name, model_type : str
    config : transformers.PretrainedConfig or None
        The model's config (patch size, depth head); None for a plain ONNX model.
    batch_independent : bool
        Whether a frame's prediction is the same alone and in a batch (False for ZoeDepth with
        several bin sets, which :meth:`predict_batch` then runs frame by frame).
    takes_prompt : bool
        Whether the model takes a metric depth prompt with each frame (Prompt Depth Anything,
        :mod:`depth_node.estimator.prompted`); without one a frame gets no output.
    needs_focal : bool
        Whether the model's metric scale needs the camera's focal lengths with each frame (a
        plain ONNX card with ``focal_scale``: DA3 metric): ``focal=(fx, fy)`` of
        :meth:`predict`, ``focals`` of :meth:`predict_batch`, ``K`` of :meth:`predict_points`;
        without them a call raises :class:`EstimatorError`.
    startup_notes : list of str
        Lines for the startup log: engine choice and, per warmed-up shape, export / compile
        time on a cache miss or load time on a hit, and each self-check with its time.
    verify_seconds : float
        Seconds the self-checks took so far.
    """

    def __init__(self, name: str = DEFAULT_MODEL, device: str = 'auto', precision: str = 'auto',
                 random_init: str | None = None, channels_last: bool | None = None,
                 compile: bool = False, preprocess_backend: str = 'auto',
                 upsample: str = 'auto', cuda_graphs: bool | str = 'auto',
                 engine: str = 'torch',
                 input_size: int = 0, cache_dir: str = '', threads: int = 0,
                 providers: Sequence[str] = (), openvino_device: str = 'CPU', kind: str = '',
                 denoising_steps: int = 0, ensemble_size: int = 0, verify: bool = True,
                 verify_tolerance: float = 0.0) -> None:
        self.device = resolve_device(device)
        if not (isinstance(verify_tolerance, (int, float)) and math.isfinite(verify_tolerance)
                and verify_tolerance >= 0):
            raise EstimatorError(f'verify_tolerance must be a number >= 0 (0 = per precision), '
                                 f'got {verify_tolerance!r}')
        self._verify, self._verify_tolerance = bool(verify), float(verify_tolerance)
        self._engines: Optional[EngineSetup] = None   # None on the slow path
        if upsample not in ('auto', 'bilinear', 'bicubic'):
            raise EstimatorError(
                f"upsample '{upsample}' is not understood; use 'auto', 'bilinear' or 'bicubic'")
        self._lock = threading.RLock()  # one forward at a time (see _run)
        self._warm_batches: set[int] = set()
        self.batch_independent = True
        self.takes_prompt = False
        # --- slow path (depth_node.estimator.slow_path): a model type without a fast path or a
        # Marigold checkpoint runs through its own processor / pipeline; _run hands it frames.
        self._slow = open_slow_path(name, random_init, engine, self.device, precision, kind,
                                    denoising_steps, ensemble_size)
        if self._slow is not None:
            self._use_slow_path(engine)
            return
        # --- end slow path
        onnx_model = not random_init and is_onnx_model(name)
        engine_name, why = resolve_engine(engine, self.device, onnx_model)
        if str(precision).strip().lower() != 'auto':  # a bad setting fails before the load
            resolve_dtype(precision, self.device, engine=engine_name)
        self._output_scale = 1.0
        checkpoint = card = None
        self._card = None   # a plain ONNX model's card (model_card.OnnxModel)
        self.needs_focal = False
        self.config = None  # the transformers config (None for a plain ONNX model)
        if onnx_model:
            card = self._card = load_onnx_model(name)
            recipe = card.recipe
            self.model_name, self.model_type = str(name), 'onnx'
            self.output_kind = card.output_kind
            self._output_scale = card.output_scale
            self.needs_focal = card.focal_scale is not None
        else:
            checkpoint = load_checkpoint(name, random_init)
            self.config = checkpoint.model.config
            recipe = make_recipe(checkpoint.model_type, checkpoint.processor)
            self.model_name, self.model_type = checkpoint.name, checkpoint.model_type
            self.output_kind = 'metric_depth' if checkpoint.is_metric else 'relative_disparity'
        self.output_kind = check_kind(kind) or self.output_kind  # model.kind overrides
        self.is_metric = self.output_kind == 'metric_depth'
        dtype = resolve_dtype(precision, self.device, self.model_type, engine_name)
        # ZoeDepth with several bin sets (NK) picks one by a vote summed over the batch: a frame's
        # depth would depend on the other frames of its batch.
        bins = getattr(getattr(getattr(checkpoint, 'model', None), 'config', None),
                       'bin_configurations', None) or ()
        self.batch_independent = not (self.model_type == 'zoedepth' and len(bins) > 1)
        if input_size:
            recipe = with_short_side(recipe, input_size)
        if upsample != 'auto':
            recipe = replace(recipe, upsample=upsample)
        self._recipe = recipe
        graphs, graphs_why = resolve_cuda_graphs(cuda_graphs, self.device,
                                                 compile=bool(compile))
        if engine_name != 'torch' and str(cuda_graphs).strip().lower() == 'auto':
            graphs, graphs_why = False, ''   # auto: the other engines have their own
        options = EngineOptions(threads=int(threads), providers=tuple(providers),
                                openvino_device=openvino_device,
                                compile=bool(compile), cuda_graphs=graphs)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._backend = preprocess_backend
        # 'auto' falls back to torch when the model does not export (or compile) for an engine.
        fall_back = str(engine).strip().lower() == 'auto' and checkpoint is not None \
            and engine_name != 'torch'
        self.startup_notes: list[str] = []
        self._engines = EngineSetup(
            engine_name, self.device, dtype, checkpoint, card, recipe, options, channels_last,
            self.cache_dir, self._verify, self._verify_tolerance,
            precision_auto=str(precision).strip().lower() == 'auto', fall_back=fall_back,
            notes=self.startup_notes, on_change=self._stage_parts)
        self._stage_parts()
        self.startup_notes.append(f'engine {self.engine.describe()} ({why})')
        if graphs_why and self.device.type == 'cuda':
            self.startup_notes.append(graphs_why)
        logger.info('depth model %s (%s, %s) on %s, engine %s, preprocessing %s',
                    self.model_name, self.model_type, self.output_kind, self.device,
                    self.engine.describe(), self.preprocessor.backend)

    def _use_slow_path(self, engine: str) -> None:
        """Take the slow path's model, kind and precision; it is engine and preprocessor."""
        slow = self._slow
        self.preprocessor = slow
        self.takes_prompt = slow.takes_prompt
        self.postprocessor = self._recipe = self._card = None
        self.needs_focal = False
        self.config = slow.config
        self.model_name, self.model_type = slow.model_name, slow.model_type
        self.output_kind = slow.output_kind
        self.is_metric = self.output_kind == 'metric_depth'
        self._output_scale, self._backend = 1.0, slow.backend
        self.cache_dir = default_cache_dir()
        auto = str(engine).strip().lower() == 'auto'
        why = 'model.engine auto' if auto else 'set by model.engine'
        self.startup_notes = [f'engine {slow.describe()} ({why}; no fast path for '
                              f'{self.model_type}: slower)']
        if self.takes_prompt:
            self.startup_notes.append(
                f'{self.model_type} takes a metric depth prompt with each frame (prompt.source) '
                'and runs in torch only; a frame without a usable prompt has no metric output')
        logger.info('depth model %s (%s, %s) on %s, engine %s', self.model_name,
                    self.model_type, self.output_kind, self.device, slow.describe())

    def _stage_parts(self) -> None:
        """Pre- and postprocessing for the engine's input device and dtype."""
        self.preprocessor = Preprocessor(self._recipe, self.engine.device,
                                         self.engine.input_dtype, backend=self._backend,
                                         channels_last=self.engine.channels_last,
                                         exact=self.dtype == torch.float32, name=self.model_name)
        self.postprocessor = Postprocessor(self._recipe, self.engine.device, name=self.model_name)

    # ------------------------------------------------------------------ properties

    @property
    def engine(self) -> Any:
        """The engine that runs the network (the slow path's pipeline there)."""
        return self._slow if self._engines is None else self._engines.engine

    @property
    def dtype(self) -> torch.dtype:
        return self._slow.input_dtype if self._engines is None else self._engines.dtype

    @property
    def _check(self) -> Optional[EngineCheck]:
        """The self-check of the engine in use (None: ``verify`` off, or the slow path)."""
        return None if self._engines is None else self._engines.checks.current

    @property
    def verify_seconds(self) -> float:
        return 0 if self._engines is None else self._engines.checks.seconds

    @property
    def verifies(self) -> bool:
        """Whether the engine has a self-check (``verify`` on, not the slow path)."""
        return self._check is not None

    @property
    def model(self) -> Optional[torch.nn.Module]:
        """The torch module (torch engine), else None."""
        return getattr(self.engine, 'model', None)

    @property
    def channels_last(self) -> bool:
        return self.engine.channels_last

    @property
    def preprocess_backend(self) -> str:
        return self.preprocessor.backend

    @property
    def cuda_graphs(self) -> bool:
        return bool(getattr(self.engine, 'cuda_graphs', False))

    @property
    def recipe(self):
        """The processor recipe (:class:`depth_node.estimator.recipe.Recipe`)."""
        return self._recipe

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input ``(height, width)`` in pixels for an image of ``height`` x ``width``.

        Padding added by the processor is included (ZoeDepth reflect pad before resizing, DPT
        ``do_pad`` after).
        """
        return self.preprocessor.input_size(height, width)

    # ------------------------------------------------------------------ running

    def _new_clock(self) -> HostStageClock:
        """The stage clock of one call: CUDA events on CUDA, ``perf_counter`` elsewhere."""
        return stage_clock(self.engine.device)

    def padded_batch(self, count: int) -> int:
        """The batch size ``count`` frames run as: the smallest warmed-up batch size (see
        :meth:`warmup`) that holds them, else ``count`` (then it is a new input shape)."""
        fits = [b for b in self._warm_batches if b >= count]
        return min(fits) if fits else count

    def _run(self, images: Sequence[np.ndarray], fx: Any,
             clouds: Optional[Sequence[Optional[dict[str, Any]]]] = None,
             pad: bool = True,
             prompts: Optional[Sequence[Optional[np.ndarray]]] = None,
             focals: Optional[Sequence[Any]] = None, on_device: bool = False) -> Prediction:
        """:meth:`_run_locked`, one call at a time: an OpenVINO infer request, the CUDA staging
        buffer and captured CUDA graphs are not shared between threads, so calls from several
        threads (the node's worker and a tool or test) take turns."""
        prompts = one_per_image('prompts', prompts, len(images))
        if prompts is not None:
            if not self.takes_prompt and any(p is not None for p in prompts):
                raise EstimatorError(f'{self.model_name} ({self.model_type}) takes no depth '
                                     'prompt; a prompt needs a Prompt Depth Anything model')
        focals = check_focals(focals, len(images), self.model_name) if self.needs_focal \
            else None
        with self._lock:
            return self._run_locked(images, fx, clouds, pad, prompts, focals, on_device)

    @torch.inference_mode()
    def _run_locked(self, images: Sequence[np.ndarray], fx: Any,
                    clouds: Optional[Sequence[Optional[dict[str, Any]]]] = None,
                    pad: bool = True,
                    prompts: Optional[Sequence[Optional[np.ndarray]]] = None,
                    focals: Optional[list[tuple[float, float]]] = None,
                    on_device: bool = False) -> Prediction:
        """Predict; with ``clouds`` (one dict of keyword arguments of
        :func:`depth_node.cloud.depth_to_points`, or None, per image) also back-project
        on the device. One copy back per output and one synchronisation per call.

        With ``pad`` the batch is padded to :meth:`padded_batch` with copies of the last image;
        the padded outputs are dropped before postprocessing. ``focals``: checked ``(fx, fy)``
        per image for a model that :attr:`needs_focal`. ``on_device``: the outputs stay where
        the engine gave them (torch tensors; only the non-finite flags come back), no clouds.
        """
        if self._slow is not None:  # slow path: the model's own processor / pipeline
            result = self._slow.predict(images, fx, prompts=prompts)
            if clouds is not None:
                from depth_node.cloud import depth_to_points
                result.points = [None if c is None else depth_to_points(result.depth[i], **c)
                                 for i, c in enumerate(clouds)]
            return result
        height, width = self.preprocessor.check_images(images)
        in_h, in_w = self.preprocessor.input_size(height, width)
        count = len(images)
        batch = self.padded_batch(count) if pad else count
        if batch > count:
            images = list(images) + [images[-1]] * (batch - count)
        # before the clock: not a frame's time
        self._engines.ensure_checked((batch, 3, in_h, in_w))
        card = self._card
        with device_scope(self.engine.device):
            clock = self._new_clock()
            clock.start()
            pixel_values = self.preprocessor.run(images, compute=True)
            clock.mark('preprocess')
            extra: dict[str, torch.Tensor] = {}
            try:
                if card is not None:  # outputs by role: depth, sky, confidence
                    extra = self.engine.run_outputs(pixel_values)
                    depth, fov = extra.pop('depth'), None
                else:
                    depth, fov = self.engine.run(pixel_values)
                # kept on the device: the engine's own buffers (CUDA graph outputs, TensorRT
                # bindings) must not be, the next call overwrites them
                engine_buffers = {t.untyped_storage().data_ptr()
                                  for t in [depth, *extra.values()]} if on_device else set()
            except EstimatorError as exc:
                if not self._engines.fall_back(exc):
                    raise
                return self._run_locked(images[:count], fx, clouds, prompts=prompts,
                                        focals=focals, on_device=on_device)
            if batch > count:
                depth = depth[:count]
                fov = fov[:count] if fov is not None else None
                extra = {role: t[:count] for role, t in extra.items()}
            clock.mark('forward')
            # frames whose raw output holds NaN or infinity (fp16 overflow), read back with
            # the depth
            bad = ~torch.isfinite(depth.reshape(count, -1)).all(dim=1)
            if self._output_scale != 1.0:
                depth = depth.float() * self._output_scale
            if focals is not None:
                depth = scale_by_focals(depth, focal_factors(
                    focals, height, width, self.preprocessor.resized_size(height, width),
                    self._card.focal_scale))
            depth = self.postprocessor.run(depth, fov, height, width, fx)
            sky = confidence = None
            if 'sky' in extra:
                # the logits resized like depth, thresholded at the image's size
                logits = self.postprocessor.run(extra['sky'], None, height, width, None)
                sky = logits < card.sky_threshold
                depth = depth.masked_fill(sky, card.sky_depth)   # NaN or the cap, metres
            if 'confidence' in extra:
                confidence = self.postprocessor.run(extra['confidence'], None, height, width,
                                                    None)
            if on_device:
                return self._kept_on_device(clock, depth, bad, sky, confidence, engine_buffers)
            outputs = [depth, bad] + [t for t in (sky, confidence) if t is not None]
            first_cloud = len(outputs)
            wanted = [i for i, c in enumerate(clouds or ()) if c is not None]
            if wanted:
                from depth_node.cloud import depth_to_points

                clock.mark('postprocess')
                outputs += [depth_to_points(depth[i], **clouds[i]) for i in wanted]
            hosts = self.postprocessor.copy_to_host(*outputs)
            clock.mark('cloud' if wanted else 'postprocess')
            clock.synchronize()  # the call's one wait for the device
            timings = clock.timings()
        result, bad = hosts[0].numpy(), hosts[1].numpy()
        non_finite = int(bad.sum())
        if non_finite:
            result = np.where(np.isfinite(result), result, np.float32(np.nan))
        index = 2
        sky_host = confidence_host = None
        if sky is not None:
            sky_host, index = hosts[index].numpy(), index + 1
        if confidence is not None:
            confidence_host = hosts[index].numpy()
        points = None
        if clouds is not None:
            points = [None] * count
            for i, host in zip(wanted, hosts[first_cloud:]):
                points[i] = host.numpy()
        return Prediction(depth=result, timings=timings, points=points, non_finite=non_finite,
                          sky=sky_host, confidence=confidence_host)

    @staticmethod
    def _kept_on_device(clock: Any, depth: torch.Tensor, bad: torch.Tensor,
                        sky: Optional[torch.Tensor], confidence: Optional[torch.Tensor],
                        engine_buffers: set[int]) -> Prediction:
        """The prediction of ``on_device``: tensors where the engine left them, the non-finite
        values NaN there; the call's one synchronisation reads the per-frame flags. An output
        that is still the engine's own buffer (the network's output already at the image's
        size and float32: postprocessing made no new tensor) is cloned: a CUDA graph's replay
        or TensorRT's next call would overwrite it while the frame is still being finished
        (and the temporal cue keeps the previous frame)."""

        def own(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if t is None or t.untyped_storage().data_ptr() not in engine_buffers:
                return t
            return t.clone()

        clock.mark('postprocess')
        bad_host = bad.to('cpu')
        clock.synchronize()
        non_finite = int(bad_host.sum())
        depth = depth.float()
        if non_finite:
            depth = torch.where(torch.isfinite(depth), depth, float('nan'))
        return Prediction(depth=own(depth), timings=clock.timings(), non_finite=non_finite,
                          sky=own(sky),
                          confidence=None if confidence is None else own(confidence.float()))

    def close(self) -> None:
        """Release the engine (sessions, device memory); the estimator is unusable after."""
        if self._engines is None:
            self._slow.close()
        else:
            self._engines.close()

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
        self.preprocessor.check_images(images)
        return self.preprocessor.run(images)

    @torch.inference_mode()
    def preprocess_prompt(self, prompts: Sequence[np.ndarray]) -> torch.Tensor:
        """The network's ``prompt_depth`` for same-size depth prompts (models that
        :attr:`takes_prompt`): holes filled, ``(B, 1, h, w)`` float32 metres on
        :attr:`device`, what the model's image processor makes of the filled prompts."""
        if not self.takes_prompt:
            raise EstimatorError(f'{self.model_name} ({self.model_type}) takes no depth prompt')
        return self._slow.prompt_tensor(list(prompts))

    def predict(self, rgb: np.ndarray, fx: Optional[float] = None,
                prompt: Optional[np.ndarray] = None,
                focal: Optional[tuple[float, float]] = None) -> Prediction:
        """Predict one frame.

        Parameters
        ----------
        rgb : np.ndarray
            ``(H, W, 3)`` uint8 RGB image.
        fx : float, optional
            Horizontal focal length in pixels of this image. Used only by models whose metric
            scale depends on it (DepthPro, which otherwise uses its own FoV estimate); ignored
            by the others.
        focal : (float, float), optional
            ``(fx, fy)``: the camera's focal lengths in pixels of THIS image (``rgb``'s size,
            e.g. ``K[0, 0]`` and ``K[1, 1]`` of its camera_info fitted to it). Required by a
            model that :attr:`needs_focal` (a card with ``focal_scale``: DA3 metric), which
            scales them to the network input itself; ignored by the others.
        prompt : np.ndarray, optional
            Models that :attr:`takes_prompt` only: ``(h, w)`` float32 metric depth of the same
            view, metres along the optical axis, any resolution (NaN or <= 0: no measurement;
            holes are filled before the network, :func:`depth_node.prompt.fill_holes`).
            Without it such a model gives an all-NaN ``depth`` (``no_prompt`` 1).

        Returns
        -------
        Prediction
            ``depth`` ``(H, W)`` float32: metres along the optical axis when :attr:`is_metric`,
            else the relative output (``output_kind``); ``timings`` of the stages; ``sky``
            ``(H, W)`` bool and ``confidence`` ``(H, W)`` float32 where the model's card names
            such outputs (else None).

        Raises
        ------
        EstimatorError
            A prompt for a model that takes none, or a prompt with no valid value; no (or a
            bad) ``focal`` for a model that :attr:`needs_focal`.
        """
        prediction = self._run([rgb], fx, prompts=None if prompt is None else [prompt],
                               focals=None if focal is None else [focal])
        return _first(prediction)

    def predict_points(self, rgb: np.ndarray, K: np.ndarray, stride: int = 1,
                       min_depth: float = 0.0, max_depth: float = float('inf'),
                       fx: Optional[float] = None,
                       prompt: Optional[np.ndarray] = None) -> Prediction:
        """Predict metric depth and back-project it on the device (the GPU path of a cloud).

        Parameters
        ----------
        rgb : np.ndarray
            ``(H, W, 3)`` uint8 RGB image.
        K : np.ndarray
            ``(3, 3)`` camera matrix of this image, pixels.
        stride, min_depth, max_depth
            As for :func:`depth_node.cloud.depth_to_points` (metres).
        fx, prompt : optional
            As for :meth:`predict`.

        Returns
        -------
        Prediction
            ``depth`` ``(H, W)`` float32 metres along the optical axis, as :meth:`predict`
            gives (a model that :attr:`needs_focal` takes its focal lengths from ``K``: sky
            pixels NaN or capped as in ``depth``); ``points`` ``(ceil(H / stride),
            ceil(W / stride), 3)`` float32 in the camera optical frame, metres, NaN where
            invalid: equal to ``depth_to_points(depth, K, ...)``; ``timings`` gains
            ``'cloud'`` (back-projection and both copies back); ``sky``, ``confidence`` as
            :meth:`predict` gives.

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
        prediction = self._run([rgb], fx, clouds=[cloud],
                               prompts=None if prompt is None else [prompt],
                               focals=[focal_of(K)] if self.needs_focal else None)
        prediction = _first(prediction)
        prediction.points = prediction.points[0]
        return prediction

    def predict_batch(self, images: list[np.ndarray],
                      fx: Optional[float | Sequence[float]] = None,
                      clouds: Optional[Sequence[Optional[dict[str, Any]]]] = None,
                      prompts: Optional[Sequence[Optional[np.ndarray]]] = None,
                      focals: Optional[Sequence[tuple[float, float]]] = None,
                      on_device: bool = False) -> Prediction:
        """Predict several same-size frames in one forward pass.

        The batch runs padded to :meth:`padded_batch`; a model whose frames are not independent
        in a batch (ZoeDepth NK, see :attr:`batch_independent`) runs one frame at a time.

        Parameters
        ----------
        images : list of np.ndarray
            ``(H, W, 3)`` uint8 RGB images, all of one size.
        fx : float or sequence of float, optional
            Focal length(s) in pixels, as in :meth:`predict`.
        clouds : sequence of dict or None, optional
            Per image, None or the keyword arguments ``K``, ``stride``, ``min_depth``,
            ``max_depth`` of :meth:`predict_points`: that image's cloud is back-projected on the
            device and copied back with the depth (metric models only).
        prompts : sequence of np.ndarray or None, optional
            Per image, its depth prompt or None, as ``prompt`` of :meth:`predict`.
        focals : sequence of (float, float), optional
            Per image, ``(fx, fy)`` in pixels of that image, as ``focal`` of :meth:`predict`
            (required by a model that :attr:`needs_focal`; when left out and every image has a
            cloud, each cloud's ``K`` gives them).
        on_device : bool
            Keep the outputs on the model's device: ``depth``, ``sky`` and ``confidence`` are
            ``torch.Tensor`` s there (the node's per-frame work then runs on the device and
            copies back one buffer per published message); no ``clouds``. The slow paths
            (Marigold, Prompt Depth Anything) give numpy arrays as always.

        Returns
        -------
        Prediction
            ``depth`` ``(B, H, W)`` float32: one prediction per image, as :meth:`predict`
            gives; ``timings`` of the whole batch; with ``clouds``, ``points`` is a list of
            ``B`` arrays (None where no cloud was asked); ``sky`` ``(B, H, W)`` bool and
            ``confidence`` ``(B, H, W)`` float32, or None, as :meth:`predict` gives.

        Raises
        ------
        EstimatorError
            Bad images, ``clouds`` of another length than ``images``, or clouds from a
            relative model.
        """
        images = list(images)
        clouds = one_per_image('clouds', clouds, len(images))
        if clouds is not None:
            if not self.is_metric and any(c is not None for c in clouds):
                raise EstimatorError(f'{self.model_name} predicts relative disparity, not '
                                     'metres; a cloud needs metric depth (align it first)')
        if focals is None and self.needs_focal and clouds is not None \
                and all(c is not None for c in clouds):
            focals = [focal_of(c['K']) for c in clouds]
        if on_device and clouds is not None and any(c is not None for c in clouds):
            raise EstimatorError('clouds are back-projected by the caller with on_device '
                                 '(depth_node.cloud.depth_to_points takes the tensor)')
        if self.batch_independent or len(images) <= 1:
            return self._run(images, fx, clouds, prompts=prompts, focals=focals,
                             on_device=on_device)
        focals = one_per_image('focals', focals, len(images))
        if fx is None or np.ndim(fx) == 0:
            fxs = [fx] * len(images)
        else:
            fxs = list(fx)
            if len(fxs) != len(images):
                raise EstimatorError(f'fx must be one positive focal length (pixels) per image, '
                                     f'got {fx}')
        parts = [self._run([image], focal, None if clouds is None else [clouds[i]],
                           prompts=None if prompts is None else [prompts[i]],
                           focals=None if focals is None else [focals[i]],
                           on_device=on_device)
                 for i, (image, focal) in enumerate(zip(images, fxs))]
        return Prediction.concatenate(parts)

    def warmup(self, height: int, width: int, iterations: int = 2,
               batches: Sequence[int] = (1,)) -> float:
        """Run ``iterations`` synthetic ``height`` x ``width`` frames per batch size in
        ``batches``; return seconds taken.

        Triggers lazy initialisation (CUDA kernels, cuDNN autotuning, ``torch.compile``, CUDA
        graph capture) for those input shapes so that the first real frames are not slow, and
        records the batch sizes: later batches are padded to the smallest of them that holds
        them (:meth:`padded_batch`). Call it on the thread that will predict: ``torch.compile``
        with CUDA graphs keeps per-thread state (another thread re-warms each shape on its
        first frame, logged). A model that is not :attr:`batch_independent` warms batch 1 only.
        """
        ramp = np.linspace(0, 255, num=int(width), dtype=np.float32)
        frame = np.broadcast_to(ramp[None, :, None], (int(height), int(width), 3))
        frame = np.ascontiguousarray(frame.astype(np.uint8))
        prompt = None
        if self.takes_prompt:  # a ramp from 1 to 5 m at the default prompt grid
            from depth_node.prompt import prompt_grid
            rows, cols = prompt_grid(int(height), int(width), 256)
            prompt = np.broadcast_to(np.linspace(1.0, 5.0, cols, dtype=np.float32)[None],
                                     (rows, cols))
        sizes = sorted({max(1, int(b)) for b in batches} | {1})
        if not self.batch_independent:
            sizes = [1]
        start = time.perf_counter()
        # any focal length will do for a model that needs_focal
        focals = [(float(width), float(width))] * max(sizes) if self.needs_focal else None
        for batch in sizes:
            self.prepare(int(height), int(width), batch=batch)
            for _ in range(max(1, int(iterations))):
                self._run([frame] * batch, None, pad=False,
                          prompts=None if prompt is None else [prompt] * batch,
                          focals=None if focals is None else focals[:batch])
            self._warm_batches.add(batch)
        return time.perf_counter() - start

    def prepare(self, height: int, width: int, batch: int = 1) -> None:
        """Have the engine ready for ``batch`` frames of ``height`` x ``width`` (export and
        compile, or load from the cache) and run its self-check there (``verify``); what it did
        goes to :attr:`startup_notes`.

        Raises
        ------
        EstimatorError
            The engine cannot be built, or fails its self-check (see ``verify``).
        """
        in_h, in_w = self.input_size(height, width)
        shape = (int(batch), 3, in_h, in_w)
        with self._lock:
            if self._engines is None:
                self._slow.prepare(shape)   # nothing to build or check
            else:
                self._engines.prepare(shape)
