"""Where and in which precision the network runs: device and dtype resolution (ROS-free)."""

from __future__ import annotations

import re

import torch

from depth_node.estimator.errors import EstimatorError

_PRECISIONS = {
    'fp32': torch.float32, 'float32': torch.float32,
    'fp16': torch.float16, 'float16': torch.float16, 'half': torch.float16,
    'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
}
_BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')  # /proc/cpuinfo and cpuinfo names


def resolve_device(device: str) -> torch.device:
    """Turn a device string into a usable :class:`torch.device`.

    Parameters
    ----------
    device : str
        ``'auto'`` (first CUDA device when one is usable, else CPU), ``'cpu'``, ``'cuda'`` or
        ``'cuda:N'``.

    Raises
    ------
    EstimatorError
        Unknown string, or CUDA asked for but not usable (CPU-only torch build, no driver, or
        index out of range).
    """
    text = str(device).strip().lower()
    if text == 'auto':
        return torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu')
    if text == 'cpu':
        return torch.device('cpu')
    match = re.fullmatch(r'cuda(?::(\d+))?', text)
    if match is None:
        raise EstimatorError(
            f"device '{device}' is not understood; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        build = 'a CPU-only torch build' if torch.version.cuda is None else 'no usable CUDA driver'
        raise EstimatorError(
            f"device '{device}' asked for, but CUDA is not available ({build}, torch "
            f"{torch.__version__}); use device 'cpu' or 'auto'")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise EstimatorError(
            f"device '{device}' asked for, but only {count} CUDA device(s) are visible "
            f'(cuda:0..cuda:{count - 1}); check CUDA_VISIBLE_DEVICES')
    return torch.device('cuda', index)


def _cpuinfo_flags(path: str = '/proc/cpuinfo') -> frozenset[str]:
    """CPU feature flags of the first processor in ``path`` (Linux); empty when unreadable."""
    try:
        with open(path, encoding='ascii', errors='replace') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'flags':
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 arithmetic natively (AVX512-BF16 or AMX-BF16).

    Read from ``torch.cpu.get_capabilities()`` (cpuinfo, what PyTorch's own kernel dispatch
    sees), or from the ``flags`` of ``/proc/cpuinfo`` where that torch function is missing.
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` is not used: it is also True on AVX512
    CPUs without bf16 instructions, where oneDNN emulates bf16 and fp32 is as fast or faster.
    """
    get_capabilities = getattr(getattr(torch, 'cpu', None), 'get_capabilities', None)
    if get_capabilities is not None:
        try:
            capabilities = get_capabilities()
        except Exception:  # noqa: BLE001 - cpuinfo failed to initialise: read the flags
            capabilities = None
        if capabilities is not None:
            return any(bool(capabilities.get(flag, False)) for flag in _BF16_CPU_FLAGS)
    return bool(_cpuinfo_flags() & set(_BF16_CPU_FLAGS))


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Pick the compute dtype for ``precision`` on ``device``.

    Parameters
    ----------
    precision : str
        ``'auto'``, ``'fp32'``, ``'fp16'`` or ``'bf16'``. ``'auto'`` is fp16 on CUDA; on CPU
        bf16 where the CPU has native bf16 instructions (:func:`cpu_has_native_bf16`: AVX512-BF16
        or AMX-BF16; Depth Anything V2 Small at 640x480 on 2 AVX512-BF16 cores without AMX:
        0.79 s against 1.15 s in fp32; the prediction moves by about 0.8 % mean relative),
        fp32 on other CPUs (bf16 is emulated there and no faster).
    device : torch.device
        Where the model runs.

    Raises
    ------
    EstimatorError
        Unknown string; fp16 on CPU (refused: PyTorch has no fast fp16 matmul on most CPUs, it
        measured 7x slower than fp32 here, so use bf16 or fp32); bf16 on a GPU without bf16.
    """
    text = str(precision).strip().lower()
    device = torch.device(device)
    if text == 'auto':
        if device.type == 'cuda':
            return torch.float16
        if device.type == 'cpu' and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if text not in _PRECISIONS:
        raise EstimatorError(
            f"precision '{precision}' is not understood; use 'auto', 'fp32', 'fp16' or 'bf16'")
    dtype = _PRECISIONS[text]
    if dtype == torch.float16 and device.type == 'cpu':
        raise EstimatorError(
            "precision 'fp16' is refused on CPU: PyTorch emulates half-precision matmuls there "
            "(measured 7x slower than fp32 on the project's CPU); use 'bf16' (about "
            "1.5x faster than fp32 on CPUs with AVX512-BF16, more with AMX) or 'fp32'")
    if dtype == torch.bfloat16 and device.type == 'cuda':
        if not torch.cuda.is_bf16_supported():
            raise EstimatorError(
                f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; "
                "use 'fp16' or 'fp32'")
    return dtype

