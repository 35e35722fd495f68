"""What the ONNX-based engines share: one ONNX file per input shape, compiled once per shape."""

from __future__ import annotations

import logging
from pathlib import Path
import time
from typing import Any, Optional, Union

import torch

from depth_node.estimator.engines.base import Engine
from depth_node.estimator.errors import EstimatorError
from depth_node.estimator.export import CacheEntry, OnnxExporter
from depth_node.estimator.model_card import OnnxModel, fixed_shape

logger = logging.getLogger('depth_node.estimator')


class FixedOnnx:
    """An ONNX file exported elsewhere (``model.name`` is a ``.onnx`` file with its card)."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.path = model.path

    def entry(self, shape: tuple[int, ...]) -> tuple[CacheEntry, Optional[float]]:
        problem = fixed_shape(self.model, tuple(shape))
        if problem:
            raise EstimatorError(f"{problem}: fix the model card's input_size, or export the "
                                 'model at this size')
        return CacheEntry(self.path.parent, ''), None


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

    Subclasses implement :meth:`_compile` (file -> runnable) and :meth:`_infer`.
    """

    def __init__(self, source: OnnxSource, cache_dir: Path) -> None:
        self.source = source
        self.cache_dir = cache_dir
        self._compiled: dict[tuple[int, ...], Any] = {}

    def _onnx_path(self, entry: CacheEntry) -> Path:
        return self.source.path if isinstance(self.source, FixedOnnx) else entry.onnx

    def prepare(self, shape: tuple[int, int, int, int]) -> Optional[str]:
        shape = tuple(int(s) for s in shape)
        if shape in self._compiled:
            return None
        entry, export_s = self.source.entry(shape)
        start = time.perf_counter()
        try:
            compiled = self._compile(self._onnx_path(entry), entry, shape)
        except EstimatorError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt cached file: export it again once
            if isinstance(self.source, FixedOnnx) or export_s is not None:
                raise EstimatorError(f'{self.name} could not load {self._onnx_path(entry)}: '
                                     f'{type(exc).__name__}: {exc}') from exc
            logger.warning('cached ONNX file %s does not load in %s (%s: %s); exporting it '
                           'again', entry.onnx, self.name, type(exc).__name__, exc)
            self.source.discard(entry)
            entry, export_s = self.source.entry(shape)
            start = time.perf_counter()
            compiled = self._compile(self._onnx_path(entry), entry, shape)
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
        compiled = self._compiled[shape]
        outputs = self._infer(compiled, pixel_values)
        if not isinstance(self.source, FixedOnnx):
            return {'depth': outputs[0], 'fov': outputs[1] if len(outputs) > 1 else None}
        by_name = dict(zip(self._output_names(compiled), outputs))
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

    def close(self) -> None:
        self._compiled.clear()
