"""What every inference engine is: something that only runs the network (ROS-free)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch

#: Engine names of ``model.engine`` (``'auto'`` resolves to one of them).
ENGINES = ('torch', 'onnxruntime', 'openvino', 'tensorrt')


@dataclass(frozen=True)
class EngineOptions:
    """What users tune per engine (``model.*`` parameters of the node).

    Attributes
    ----------
    threads : int
        Intra-op threads of ONNX Runtime and OpenVINO on the CPU; 0 = the engine's default (all
        cores). torch keeps its process-wide setting.
    providers : tuple of str
        ONNX Runtime execution providers in order of preference, e.g.
        ``('TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider')``;
        empty = CUDA then CPU on a CUDA device, CPU elsewhere.
    openvino_device : str
        OpenVINO device: ``'CPU'``, ``'GPU'`` (Intel GPU), ``'NPU'``, or any device string
        OpenVINO accepts (``'AUTO'``, ``'HETERO:GPU,CPU'``).
    compile : bool
        torch only: ``torch.compile`` the model.
    cuda_graphs : bool
        torch only: capture the forward pass in CUDA graphs.
    """

    threads: int = 0
    providers: tuple[str, ...] = ()
    openvino_device: str = 'CPU'
    compile: bool = False
    cuda_graphs: bool = False


class Engine(ABC):
    """Runs the network on ``pixel_values`` and returns its raw prediction; nothing else.

    Pre- and postprocessing are the estimator's, identical for every engine. An engine says
    where and in which dtype it takes its input (:attr:`device`, :attr:`input_dtype`,
    :attr:`channels_last`) and returns tensors on :attr:`device`.

    Attributes
    ----------
    name : str
        One of :data:`ENGINES`.
    device : torch.device
        Where the input must be and where the outputs are.
    input_dtype : torch.dtype
        dtype of the ``pixel_values`` :meth:`run` takes.
    channels_last : bool
        Whether the input should be laid out channels-last in memory.
    precision : str
        ``'fp32'``, ``'fp16'`` or ``'bf16'``: what the engine computes in.
    version : str
        The runtime's version (torch, ONNX Runtime, OpenVINO, TensorRT), for messages.
    """

    name: str = ''
    version: str = ''
    device: torch.device = torch.device('cpu')
    input_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    precision: str = 'fp32'

    def prepare(self, shape: tuple[int, int, int, int]) -> Optional[str]:
        """Get ready for inputs of ``shape`` ``(B, 3, h, w)`` (export, compile, load a cached
        engine). Returns a line for the startup log saying what it did, or None. Called by
        warm-up; :meth:`run` calls it itself for a shape it has not seen."""
        return None

    @abstractmethod
    def run(self, pixel_values: torch.Tensor,
            ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(B, 3, h, w)`` network input -> ``(B, h', w')`` raw prediction and, for Depth Pro,
        its ``(B,)`` field of view in degrees (else None), both on :attr:`device`."""

    def describe(self) -> str:
        """One line for the startup log."""
        return f'{self.name} {self.precision}'

    def close(self) -> None:
        """Release what the engine holds (device memory, sessions)."""
