"""The engine a fast-path model runs on (ROS-free): built, self-checked, replaced on failure.

:class:`EngineSetup` builds torch over the checkpoint, or an ONNX engine over its export (or
over a plain ONNX file), and has each engine it builds checked before its first frame at each
shape (:class:`depth_node.estimator.verify.SelfChecks`). Where the settings allow it replaces an
engine that fails: with ``precision='auto'`` an engine in fp16 / bf16 that fails its
self-check runs in fp32, with ``engine='auto'`` an ONNX engine that fails to build, to run or
its self-check falls back to torch. What it did goes to the startup notes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from depth_node.estimator.device import device_scope
from depth_node.estimator.engines import EngineOptions, make_onnx_engine
from depth_node.estimator.engines.onnx_base import FixedOnnx
from depth_node.estimator.engines.torch_engine import TorchEngine
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.export import OnnxExporter, check_cache_dir
from depth_node.estimator.verify import ReferenceFailed, SelfChecks

logger = logging.getLogger('depth_node.estimator')


class EngineSetup:
    """The engine of one fast-path model, its self-checks and its replacements.

    Parameters
    ----------
    engine_name : str
        The engine to build (resolved: ``'torch'``, ``'onnxruntime'``, ``'openvino'``,
        ``'tensorrt'``).
    device : torch.device
    dtype : torch.dtype
        The precision asked of the engine.
    checkpoint : Checkpoint or None
        The transformers model (None for a plain ONNX model).
    card : OnnxModel or None
        A plain ONNX model's card.
    recipe : Recipe
        The processor recipe (for the self-check's input).
    options : EngineOptions
    channels_last : bool or None
        torch engine: as :class:`TorchEngine` takes it.
    cache_dir : Path
        Where ONNX exports and compiled engines are cached.
    verify, tolerance
        ``model.verify`` and ``model.verify_tolerance``.
    precision_auto : bool
        ``precision='auto'``: an engine failing its self-check may run in fp32.
    fall_back : bool
        ``engine='auto'`` on an ONNX engine of a transformers model: it may fall back to torch.
    notes : list of str
        The startup notes, appended to.
    on_change : callable
        Called when the engine is replaced, before the new one's self-check is made.
    """

    def __init__(self, engine_name: str, device: torch.device, dtype: torch.dtype,
                 checkpoint: Any, card: Any, recipe: Any, options: EngineOptions,
                 channels_last: Optional[bool], cache_dir: Path, verify: bool, tolerance: float,
                 precision_auto: bool, fall_back: bool, notes: list[str],
                 on_change: Callable[[], None]) -> None:
        self.device, self.dtype = device, dtype
        self._may_fall_back = fall_back
        self.notes = notes
        self._checkpoint, self._options, self._channels_last = checkpoint, options, channels_last
        self._cache_dir = cache_dir
        self._precision_auto = precision_auto
        self._on_change = on_change
        self._source: Any = None   # what ONNX engines load: FixedOnnx or OnnxExporter
        fp32_copy = None
        if engine_name != 'torch':
            if options.compile or options.cuda_graphs:
                logger.warning('model.compile and model.cuda_graphs are for the torch engine; '
                               'ignored with %s', engine_name)
            check_cache_dir(cache_dir)
            self._source = (FixedOnnx(card, cache_dir) if card is not None
                            else OnnxExporter(checkpoint, cache_dir))
        exporter = self._source if isinstance(self._source, OnnxExporter) else None
        self.checks = SelfChecks(verify, tolerance, recipe, card=card,
                                 model=None if checkpoint is None else checkpoint.model,
                                 with_fov=exporter is not None and exporter.with_fov)
        if engine_name == 'torch':
            fp32_copy = self.checks.fp32_copy(checkpoint.model, dtype)
            self.engine = TorchEngine(checkpoint.model, device, dtype, options,
                                      channels_last=channels_last)
        else:
            self.engine = self._onnx_engine(engine_name, dtype)
        self.checks.renew(self.engine, fp32_copy)

    def _onnx_engine(self, engine_name: str, dtype: torch.dtype) -> Any:
        """An ONNX engine over the source in ``dtype`` (the export follows the engine's input
        dtype and, for fp16, its device)."""
        source = self._source
        engine = make_onnx_engine(engine_name, source, self._cache_dir, self.device, dtype,
                                  self._options)
        if isinstance(source, OnnxExporter):
            source.dtype = engine.input_dtype
            # fp16 traces on the GPU
            source.device = engine.device if source.dtype == torch.float16 else \
                torch.device('cpu')
        return engine

    def _replace(self, engine: Any, fp32_copy: Optional[torch.nn.Module] = None) -> None:
        self.engine = engine
        self._on_change()
        self.checks.renew(engine, fp32_copy)

    def _warn(self, line: str) -> None:
        logger.warning('%s', line)
        self.notes.append(line)

    def note(self, line: str) -> None:
        self.notes.append(line)
        logger.info('%s', line)

    def fall_back(self, exc: Exception) -> bool:
        """``engine='auto'``: the ONNX engine failed to build, to run or its self-check
        (``exc``); run the model in torch. False, nothing done, where that is not allowed."""
        if not self._may_fall_back:
            return False
        self._warn(f'{self.engine.name} could not build this model ({exc}); model.engine auto '
                   'falls back to torch')
        self.engine.close()
        self._may_fall_back = False
        fp32_copy = self.checks.fp32_copy(self._checkpoint.model, self.dtype)
        self._replace(TorchEngine(self._checkpoint.model, self.device, self.dtype,
                                  self._options, channels_last=self._channels_last), fp32_copy)
        return True

    def _run_in_fp32(self, exc: EstimatorError) -> bool:
        """``precision='auto'``: the engine in fp16 / bf16 failed its self-check (``exc``); run
        it in fp32. False, nothing done, where that is not allowed."""
        engine = self.engine
        if not self._precision_auto or self.dtype == torch.float32 or \
                getattr(engine, 'precision', '') == 'fp32':  # already fp32 (an fp32 graph)
            return False
        fp32_model = None
        if isinstance(engine, TorchEngine):   # the copy kept for the check
            fp32_model = self.checks.take_fp32_copy()
        if fp32_model is None and (isinstance(engine, TorchEngine) or self._source is None):
            return False
        self._warn(f'{engine.describe()} failed its self-check ({exc}); model.precision auto '
                   'runs it in fp32 instead')
        engine.close()
        self.dtype = torch.float32
        if fp32_model is not None:
            # the reduced-precision weights go: the fp32 model is the model from now on
            self._checkpoint.model = self.checks.model = fp32_model
            self._replace(TorchEngine(fp32_model, self.device, torch.float32, self._options,
                                      channels_last=self._channels_last))
            if self.device.type == 'cuda':
                torch.cuda.empty_cache()
        else:
            self._replace(self._onnx_engine(engine.name, torch.float32))
        return True

    def ensure_checked(self, shape: tuple[int, ...]) -> None:
        """Run the self-check at ``shape`` when it is due; an engine that fails it is replaced
        where the settings allow (in fp32, else by torch), else the error is raised (and raised
        again for this shape without a second check)."""
        for _ in range(4):  # the engine, then at most fp32 and torch
            check = self.checks.current
            if check is None or not check.needed(shape):
                return
            try:
                with device_scope(self.engine.device), torch.inference_mode():
                    line = check.check(shape)
            except ReferenceFailed:
                raise  # not the engine's fault: no other engine would be checked either
            except EstimatorError as exc:
                if not (self._run_in_fp32(exc) or self.fall_back(exc)):
                    raise
                with torch.inference_mode():
                    line = self.engine.prepare(shape)
                if line:
                    self.note(line)
                continue
            if line:
                self.note(line)
            return

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Have the engine ready for input ``shape`` (export and compile, or load from the
        cache; torch where it cannot be built and that is allowed) and checked there."""
        try:
            line = self.engine.prepare(shape)
        except EstimatorError as exc:
            if not self.fall_back(exc):
                raise
            line = None
        if line:
            self.note(line)
        self.ensure_checked(shape)

    def close(self) -> None:
        """Release the self-check and the engine (sessions, device memory)."""
        self.checks.release()
        self.engine.close()
