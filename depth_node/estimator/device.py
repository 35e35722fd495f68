"""Where and in which precision the network runs: device and dtype resolution (ROS-free)."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Optional

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


GRAPH_FIX_TORCH = (2, 12)
"""The first torch release with the CUDA graph capture fix the ``auto`` setting waits for:
after a failed capture torch 2.11 leaves the graphs' memory pool recording (pytorch#180395), so
the next shape's capture fails too. The torch engine works around it, but that workaround has
not yet run on a GPU; from 2.12 torch itself is right."""

GRAPH_SETTINGS = ('auto', 'on', 'off')


def _torch_release(version: str) -> tuple[int, int]:
    match = re.match(r'(\d+)\.(\d+)', version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def resolve_cuda_graphs(setting: Any, device: torch.device,
                        torch_version: Optional[str] = None,
                        compile: bool = False) -> tuple[bool, str]:
    """Whether the torch engine captures CUDA graphs (``model.cuda_graphs``), and why.

    Parameters
    ----------
    setting : str or bool
        ``'auto'``, ``'on'`` or ``'off'`` (``True`` / ``False`` read as on / off).
    device : torch.device
        Where the model runs: graphs exist on CUDA only.
    torch_version : str, optional
        The torch version to judge (default: the installed one).
    compile : bool
        ``model.compile`` is on: ``'auto'`` then leaves graphs off (torch.compile in its
        default mode, as before ``auto``); ``'on'`` asks for its ``reduce-overhead`` mode.

    Returns
    -------
    (bool, str)
        Capture or not, and the reason in words for the startup log. ``'auto'`` is on for CUDA
        with torch >= 2.12 (:data:`GRAPH_FIX_TORCH`): graphs took V2-Small's forward from 6.6 to
        4.8 ms on an H200 (fp16) at the cost of one capture per input size at warm-up; off on
        the CPU and on older torch. ``'on'`` on the CPU is ignored (logged by the engine).

    Raises
    ------
    EstimatorError
        Any other setting.
    """
    if isinstance(setting, bool):
        setting = 'on' if setting else 'off'
    text = str(setting).strip().lower()
    if text not in GRAPH_SETTINGS:
        raise EstimatorError(f"model.cuda_graphs must be one of {', '.join(GRAPH_SETTINGS)}; "
                             f'got {setting!r}')
    if text != 'auto':
        return text == 'on', f'model.cuda_graphs: {text}'
    if device.type != 'cuda':
        return False, 'model.cuda_graphs auto: off (CUDA only)'
    if compile:
        return False, ('model.cuda_graphs auto: off with model.compile (torch.compile in its '
                       "default mode); set on for its 'reduce-overhead' CUDA graphs")
    version = torch.__version__ if torch_version is None else torch_version
    if _torch_release(version) < GRAPH_FIX_TORCH:
        fix = '.'.join(map(str, GRAPH_FIX_TORCH))
        return False, (f'model.cuda_graphs auto: off on torch {version} (its capture fix, '
                       f'pytorch#180395, is in {fix}); set on to capture anyway')
    return True, f'model.cuda_graphs auto: on (CUDA, torch {version})'


def device_scope(device: torch.device) -> Any:
    """``torch.cuda.device(device)`` on CUDA, so that nothing in a call falls on the thread's
    current device when the work is for another ``cuda:N``; a no-op context elsewhere."""
    if device.type == 'cuda':
        return torch.cuda.device(device)
    return contextlib.nullcontext()


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


#: ``model.precision`` ``'auto'`` on CUDA for each transformers ``model_type`` (``'onnx'``: a
#: plain ONNX model): ``(where the GPU has native bf16, where it has not)``. bf16 has fp32's
#: range, so nothing overflows that does not overflow in fp32; fp16 overflows in DPT's (MiDaS)
#: and ZoeDepth's activations, so those fall back to fp32 (with TF32 matmuls and convolutions)
#: rather than fp16. On CUDA the torch engine runs the last convolution of the depth head, its
#: activation and Depth Anything metric's ``* max_depth`` in fp32 (:func:`depth_node.estimator.
#: engines.torch_engine.keep_output_layer_fp32`), so the output is not rounded to 8 (bf16) or
#: 11 (fp16) significant bits. ZoeDepth stays fp32 everywhere: its metric bins head sums
#: softmax-weighted bin centres, which a reduced precision rounds to centimetres.
CUDA_AUTO_PRECISION: dict[str, tuple[str, str]] = {
    'depth_anything': ('bf16', 'fp16'),
    'depth_pro': ('bf16', 'fp16'),
    'dpt': ('bf16', 'fp32'),
    'glpn': ('bf16', 'fp32'),
    'zoedepth': ('fp32', 'fp32'),
    'onnx': ('fp16', 'fp16'),
}
_CUDA_AUTO_UNKNOWN = ('bf16', 'fp32')   # a model type not in the table: never fp16
_NO_BF16_ENGINES = ('onnxruntime', 'tensorrt')  # our ONNX engines on CUDA run fp16 or fp32


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True when CUDA ``device`` (not the current one) computes bf16 natively (compute
    capability 8.0 or later: Ampere, Ada, Hopper, Jetson Orin).

    ``torch.cuda.is_bf16_supported()`` is not used: it reads the *current* device, and it is
    also True where bf16 is only emulated (Turing, Volta, Jetson Xavier), slower than fp16.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(device).major >= 8


def resolve_dtype(precision: str, device: torch.device, model_type: Optional[str] = None,
                  engine: str = 'torch') -> torch.dtype:
    """Pick the compute dtype for ``precision`` on ``device``.

    Parameters
    ----------
    precision : str
        ``'auto'``, ``'fp32'``, ``'fp16'`` or ``'bf16'``. ``'auto'`` on CUDA depends on the
        model (:data:`CUDA_AUTO_PRECISION`: bf16 where the GPU has it, else fp16 for Depth
        Anything and Depth Pro and fp32 for DPT, GLPN; fp32 for ZoeDepth; the ONNX engines,
        which have no bf16 here, take the second column). On CPU: bf16 where the CPU has native
        bf16 instructions (:func:`cpu_has_native_bf16`: AVX512-BF16 or AMX-BF16; Depth Anything
        V2 Small at 640x480 on 2 AVX512-BF16 cores without AMX: 0.79 s against 1.15 s in fp32;
        the prediction moves by about 0.8 % mean relative), fp32 on other CPUs (bf16 is
        emulated there and no faster) and always with ONNX Runtime (no fast bf16 path).
    device : torch.device
        Where the model runs; bf16 support is read from this device, not the current one.
    model_type : str, optional
        transformers ``config.model_type`` (``'onnx'`` for a plain ONNX model); None: Depth
        Anything's row.
    engine : str
        The resolved ``model.engine``.

    Raises
    ------
    EstimatorError
        Unknown string; fp16 on CPU (refused: PyTorch has no fast fp16 matmul on most CPUs, it
        measured 7x slower than fp32 here, so use bf16 or fp32); bf16 on a GPU without native
        bf16.
    """
    text = str(precision).strip().lower()
    device = torch.device(device)
    if text == 'auto':
        if device.type == 'cuda':
            with_bf16, without = CUDA_AUTO_PRECISION.get(model_type or 'depth_anything',
                                                         _CUDA_AUTO_UNKNOWN)
            native = engine not in _NO_BF16_ENGINES and cuda_has_native_bf16(device)
            return _PRECISIONS[with_bf16 if native else without]
        if device.type == 'cpu' and engine != 'onnxruntime' and cpu_has_native_bf16():
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
    if dtype == torch.bfloat16 and device.type == 'cuda' and not cuda_has_native_bf16(device):
        raise EstimatorError(
            f"precision 'bf16' is not native on {torch.cuda.get_device_name(device)} ({device}, "
            "compute capability below 8.0: emulated, slower than fp16); use 'fp16' or 'fp32'")
    return dtype


#: Messages of CUDA errors after which the CUDA context is unusable ("sticky" errors: every
#: later call in the process fails the same way): only a new process recovers. Out of memory is
#: not among them (the next frame may fit).
STICKY_CUDA_ERRORS = (
    'illegal memory access', 'device-side assert triggered', 'unspecified launch failure',
    'misaligned address', 'illegal instruction', 'an illegal address', 'launch timed out',
    'uncorrectable ecc', 'hardware stack error', 'gpu has fallen off the bus',
    'cuda error: unknown error', 'cublas_status_execution_failed',
    'cudnn_status_execution_failed',
)

#: The hint lines torch appends to every CUDA error (recoverable ones too); "Compile with
#: `TORCH_USE_CUDA_DSA` to enable device-side assertions" must not read as a device-side assert.
_TORCH_CUDA_HINTS = ('search for `cuda', 'cuda kernel errors might be', 'for debugging consider',
                     'compile with `torch_use_cuda_dsa`')


def error_text(exc: BaseException) -> str:
    """``exc``'s message on one line, without the hint lines torch appends to every CUDA error
    ("CUDA kernel errors might be asynchronously reported...", "Compile with
    `TORCH_USE_CUDA_DSA`..."): what a log line should say."""
    return ' '.join(line.strip() for line in str(exc).splitlines()
                    if line.strip() and not line.strip().lower().startswith(_TORCH_CUDA_HINTS))


#: Modules whose exception types carry CUDA errors without deriving from ``RuntimeError``.
_RUNTIME_MODULES = ('onnxruntime', 'tensorrt')


def _runtime_error_type(exc: BaseException) -> bool:
    """Whether ``exc`` is an inference runtime's own error type (ONNX Runtime, TensorRT)."""
    return isinstance(exc, Exception) and \
        type(exc).__module__.split('.')[0] in _RUNTIME_MODULES


def is_device_lost(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a sticky CUDA error
    (:data:`STICKY_CUDA_ERRORS`): the process must restart to use the GPU again.

    ``torch.AcceleratorError`` (torch 2.8 and later), ``RuntimeError`` and the errors of ONNX
    Runtime and TensorRT (``onnxruntime...Fail``, ``EPFail``, ``RuntimeException``: not
    ``RuntimeError`` subclasses) are read by message, since all also carry recoverable errors
    (out of memory, a bad argument, an operation not permitted while capturing a CUDA graph);
    torch's hint lines are not read (:func:`error_text`).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RuntimeError) or _runtime_error_type(exc):
            text = error_text(exc).lower()
            if any(marker in text for marker in STICKY_CUDA_ERRORS):
                return True
        exc = exc.__cause__ or exc.__context__
    return False
