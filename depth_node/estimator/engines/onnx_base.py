"""What the ONNX-based engines share: one ONNX file per input shape, compiled once per shape.

At most :data:`MAX_COMPILED_SHAPES` compiled engines are kept (each holds its own copy of the
weights, on the GPU for ONNX Runtime CUDA and TensorRT); the least recently used one is released
when another shape needs room (logged). A file that does not parse or load
(:class:`CorruptFile`) is exported again once when it came from the cache; any other failure to
compile (a builder refusing a flag, a missing library) is a configuration error, never read as a
corrupt file.
"""

from __future__ import annotations

from collections import OrderedDict
import hashlib
import json
import logging
from pathlib import Path
import time
from typing import Any, Optional, Union

import torch

from depth_node.estimator.engines.base import Engine
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.export import OUTPUT_NAMES, CacheEntry, OnnxExporter, file_digest
from depth_node.estimator.model_card import OnnxModel, fixed_shape

logger = logging.getLogger('depth_node.estimator')

MAX_COMPILED_SHAPES = 4
"""Compiled engines (input shapes) an ONNX engine keeps at most; the node needs two per camera
size (batch 1 and the batch of all cameras)."""


class CorruptFile(Exception):
    """The ONNX file (or a compiled artefact) does not parse or load: the only failure after
    which a cached export is exported again."""


class FixedOnnx:
    """An ONNX file exported elsewhere (``model.name`` is a ``.onnx`` file with its card).

    Engines that write compiled artefacts for it (TensorRT plans, ONNX Runtime's TensorRT
    engine cache) get a cache entry under ``cache_dir`` keyed by the content of the file (and
    of its external weight files) and the input shape: a replaced file, two models in one
    folder or another shape never share an artefact, and the model's own folder (possibly
    read-only) is never written to.
    """

    def __init__(self, model: OnnxModel, cache_dir: Optional[Path] = None) -> None:
        self.model = model
        self.path = model.path
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def key(self, shape: tuple[int, ...]) -> str:
        """The cache key of the file's content at ``shape`` (SHA-256, 32 hex digits)."""
        files = {self.path.name: file_digest(self.path)}
        for name in getattr(self.model, 'external_data', ()):
            external = self.path.parent / name
            if external.is_file():
                files[name] = file_digest(external)
        text = json.dumps({'onnx': files, 'shape': [int(s) for s in shape]}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def entry(self, shape: tuple[int, ...], keyed: bool = True,
              ) -> tuple[CacheEntry, Optional[float]]:
        """The entry for ``shape`` (nothing is exported: the seconds are None). ``keyed``:
        an entry of its own under the cache (for engines that write artefacts); else the
        model's folder, which is never written to."""
        problem = fixed_shape(self.model, tuple(shape))
        if problem:
            raise EstimatorError(f"{problem}: fix the model card's input_size, or export the "
                                 'model at this size')
        if not keyed or self.cache_dir is None:
            return CacheEntry(self.path.parent, ''), None
        key = self.key(shape)
        return CacheEntry(self.cache_dir / f'onnx-{key}', key), None


#: Where an ONNX engine gets its file for a shape.
OnnxSource = Union[OnnxExporter, FixedOnnx]

_INPUT_DTYPES = {'float32': torch.float32, 'float16': torch.float16}


def graph_input_dtype(source: OnnxSource) -> Optional[torch.dtype]:
    """The dtype a plain ONNX model's graph takes (float16 for a half-precision export), None
    for an export of ours (the engine decides)."""
    if isinstance(source, FixedOnnx):
        return _INPUT_DTYPES[source.model.input_type]
    return None


def as_bhw(output: torch.Tensor, name: str, where: str) -> torch.Tensor:
    """``(B, h, w)`` of a ``(B, h, w)`` or ``(B, 1, h, w)`` output (a view, no copy).

    Raises
    ------
    EstimatorError
        Any other layout.
    """
    if output.ndim == 4 and output.shape[1] == 1:
        return output[:, 0]
    if output.ndim == 3:
        return output
    raise EstimatorError(f"output '{name}' of {where} has shape {tuple(output.shape)}; "
                         'expected (B, H, W) or (B, 1, H, W)')


class OnnxEngine(Engine):
    """An engine that compiles one ONNX file per input shape (ONNX Runtime, OpenVINO, TensorRT).

    Subclasses implement :meth:`_compile` (file -> runnable; :class:`CorruptFile` when the file
    does not parse or load), :meth:`_infer` and :meth:`_output_names`.
    """

    def __init__(self, source: OnnxSource, cache_dir: Path,
                 max_shapes: int = MAX_COMPILED_SHAPES) -> None:
        self.source = source
        self.cache_dir = cache_dir
        self.max_shapes = max(1, int(max_shapes))
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def _onnx_path(self, entry: CacheEntry) -> Path:
        return self.source.path if isinstance(self.source, FixedOnnx) else entry.onnx

    def _keyed_entries(self) -> bool:
        """Whether this engine writes artefacts into a plain ONNX model's cache entry (then
        the entry is keyed by the file's content; see :class:`FixedOnnx`)."""
        return True

    def _entry(self, shape: tuple[int, ...]) -> tuple[CacheEntry, Optional[float]]:
        if isinstance(self.source, FixedOnnx):
            return self.source.entry(shape, keyed=self._keyed_entries())
        return self.source.entry(shape)

    def _compile_checked(self, entry: CacheEntry, shape: tuple[int, ...]) -> Any:
        """:meth:`_compile`, any failure but :class:`CorruptFile` as an :class:`EstimatorError`
        naming the engine and its version."""
        path = self._onnx_path(entry)
        try:
            return self._compile(path, entry, shape)
        except (EstimatorError, CorruptFile):
            raise
        except Exception as exc:  # noqa: BLE001 - the runtime's own error types
            raise EstimatorError(
                f'{self.name} {self.version} could not compile {path} for input {shape}: '
                f'{type(exc).__name__}: {exc}') from exc

    def prepare(self, shape: tuple[int, int, int, int]) -> Optional[str]:
        shape = tuple(int(s) for s in shape)
        if shape in self._compiled:
            self._compiled.move_to_end(shape)
            return None
        # released before compiling: each holds a copy of the weights (GPU memory)
        while len(self._compiled) >= self.max_shapes:
            old_shape, old = self._compiled.popitem(last=False)
            logger.warning('%s keeps at most %d compiled input shapes: releasing %s (least '
                           'recently used) for %s; it is compiled or loaded again if it comes '
                           'back (fix the camera size, or model.warmup_size)', self.name,
                           self.max_shapes, old_shape, shape)
            self._release(old)
        entry, export_s = self._entry(shape)
        start = time.perf_counter()
        try:
            compiled = self._compile_checked(entry, shape)
        except CorruptFile as exc:  # a corrupt cached file: export it again once
            if isinstance(self.source, FixedOnnx) or export_s is not None:
                raise EstimatorError(f'{self.name} could not load {self._onnx_path(entry)}: '
                                     f'{exc}') from exc
            logger.warning('cached ONNX file %s does not load in %s (%s); exporting it '
                           'again', entry.onnx, self.name, exc)
            self.source.discard(entry)
            entry, export_s = self.source.entry(shape)
            start = time.perf_counter()
            try:
                compiled = self._compile_checked(entry, shape)
            except CorruptFile as again:
                raise EstimatorError(f'{self.name} could not load {entry.onnx} even after '
                                     f'exporting it again: {again}') from again
        compile_s = time.perf_counter() - start
        self._compiled[shape] = compiled
        if isinstance(self.source, FixedOnnx):
            what = f'loaded {self.source.path.name}'
        elif export_s is None:
            what = 'cache hit'
        else:
            what = f'cache miss, exported in {export_s:.1f} s'
        return (f'{self.name} engine for input {shape}: {what}, compiled/loaded in '
                f'{compile_s:.1f} s')

    def run(self, pixel_values: torch.Tensor,
            ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        outputs = self.run_outputs(pixel_values)
        return outputs['depth'], outputs.get('fov')

    def run_outputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, h, w)`` network input -> the outputs by role, on :attr:`device`.

        A plain ONNX model (:class:`FixedOnnx`): each role its card names (``'depth'``, and
        ``'sky'``, ``'confidence'`` where given), picked by output name, ``(B, h', w')``
        whether the graph gives ``(B, h', w')`` or ``(B, 1, h', w')``. An export of ours:
        ``'depth'`` (the first output) and, for Depth Pro, ``'fov'`` (the second).
        """
        shape = tuple(pixel_values.shape)
        if shape not in self._compiled:
            line = self.prepare(shape)
            if line:
                logger.info('%s', line)
        else:
            self._compiled.move_to_end(shape)
        compiled = self._compiled[shape]
        outputs = self._infer(compiled, pixel_values)
        by_name = dict(zip(self._output_names(compiled), outputs))
        if not isinstance(self.source, FixedOnnx):  # by name where the names are ours
            depth_name, fov_name = OUTPUT_NAMES
            depth = by_name.get(depth_name, outputs[0])
            fov = by_name.get(fov_name, outputs[1] if len(outputs) > 1 else None)
            return {'depth': depth, 'fov': fov}
        model = self.source.model
        picked = {}
        for role, name in model.outputs.items():
            if name not in by_name:
                raise EstimatorError(
                    f"{self.name} gives no output '{name}' for {model.path.name} (its outputs: "
                    f"{', '.join(by_name)}); fix outputs in the model card")
            picked[role] = as_bhw(by_name[name], name, model.path.name)
        return picked

    def _compile(self, path: Path, entry: CacheEntry, shape: tuple[int, ...]) -> Any:
        raise NotImplementedError

    def _infer(self, compiled: Any, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _output_names(self, compiled: Any) -> list[str]:
        """The names of the outputs :meth:`_infer` returns, in its order."""
        raise NotImplementedError

    def _release(self, compiled: Any) -> None:
        """Free one compiled engine (dropped from the LRU, or at :meth:`close`)."""

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """The input shapes compiled now, least recently used first."""
        return list(self._compiled)

    def close(self) -> None:
        for compiled in self._compiled.values():
            self._release(compiled)
        self._compiled.clear()
