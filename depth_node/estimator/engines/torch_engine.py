"""The PyTorch engine: the transformers module itself, eager, compiled or in CUDA graphs."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from depth_node.estimator.engines.base import Engine, EngineOptions
from depth_node.estimator.errors import EstimatorError

logger = logging.getLogger('depth_node.estimator')

_CPU_COMPILE_OPTIONS = {'freezing': True}  # Inductor config, scoped to one model
_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


class TorchEngine(Engine):
    """A transformers depth model run by PyTorch on :attr:`device` in :attr:`input_dtype`.

    The model is cast to the dtype (on CPU this beat ``torch.autocast`` by 10 %, which re-casts
    every weight on every forward) and run channels-last where that is faster: on CUDA and in
    CPU bf16 (oneDNN's bf16 convolutions and upsampling: 7-10 % of the whole forward).

    ``compile`` wraps the model in ``torch.compile``: on CPU with Inductor's freezing (weights
    folded in as constants and pre-packed for oneDNN, set for this model only through
    ``options``; 5-13 % faster after a first compile of about 20 s per input shape); on CUDA as
    it is (``mode='reduce-overhead'`` together with ``cuda_graphs``). ``cuda_graphs`` (CUDA only)
    captures the forward pass per input shape on its first frame and replays it afterwards.
    """

    name = 'torch'

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 options: EngineOptions = EngineOptions(),
                 channels_last: Optional[bool] = None) -> None:
        cuda = device.type == 'cuda'
        self.device = device
        self.input_dtype = dtype
        self.precision = _NAMES[dtype]
        if options.cuda_graphs and not cuda:
            logger.warning('cuda_graphs is ignored on %s (CUDA only)', device)
        self.cuda_graphs = bool(options.cuda_graphs) and cuda
        model.to(device=device, dtype=dtype)
        if channels_last is None:
            channels_last = cuda or dtype != torch.float32
        self.channels_last = bool(channels_last)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True  # input sizes are fixed per camera
        self.model = model
        self.compiled = bool(options.compile)
        if self.compiled:
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

    def describe(self) -> str:
        return (f'torch {self.precision}{", channels-last" if self.channels_last else ""}'
                f'{", torch.compile" if self.compiled else ""}'
                f'{", CUDA graphs" if self.cuda_graphs else ""}')

    def close(self) -> None:
        self._graphs.clear()
        self._forward_module = self.model = None
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def run(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        pixel_values = pixel_values.to(self.input_dtype)
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
