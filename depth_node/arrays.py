"""The array namespace of the per-frame work: numpy on the CPU, torch where the model runs.

The per-frame steps after the forward pass (LiDAR projection and occlusion, the robust fit,
the cloud's back-projection and packing) are written once, against the operations below, and
run on numpy arrays (CPU engines) or on ``torch.Tensor`` s (a model on CUDA keeps its frame on
the device; on the CPU in tests). Most arithmetic needs nothing from here: operators, slicing
and the functions numpy and torch spell alike (``xp.abs``, ``xp.sqrt``, ``xp.isfinite``,
``xp.where``, ``xp.minimum``) are called on ``xp = namespace(x)``. This module holds the few
operations the two spell differently, one definition each, so no algorithm has two copies.

torch is imported only when a tensor is handed in: CPU engines never pay for it here.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import numpy as np

Array = Any
"""A ``numpy.ndarray`` or a ``torch.Tensor``."""


def is_tensor(x: Any) -> bool:
    """True for a ``torch.Tensor`` (without importing torch when nothing imported it)."""
    torch = sys.modules.get('torch')
    return torch is not None and isinstance(x, torch.Tensor)


def namespace(x: Array) -> Any:
    """The module whose functions apply to ``x``: ``torch`` for a tensor, else ``numpy``."""
    if is_tensor(x):
        return sys.modules['torch']
    return np


def _torch_dtype(dtype: Any) -> Any:
    import torch
    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, np.dtype(dtype).name)


def astype(x: Array, dtype: Any, copy: bool = False) -> Array:
    """``x`` as ``dtype`` (a numpy dtype or name, e.g. ``np.float32``), on its own device."""
    if is_tensor(x):
        out = x.to(_torch_dtype(dtype))
        return out.clone() if copy and out is x else out
    return np.asarray(x).astype(dtype, copy=copy)


def asarray(values: Any, like: Array, dtype: Any = None) -> Array:
    """``values`` (a list, scalar or numpy array) as an array of ``like``'s kind and device."""
    if is_tensor(like):
        import torch
        if is_tensor(values):
            return values.to(device=like.device,
                             dtype=None if dtype is None else _torch_dtype(dtype))
        arr = np.asarray(values, dtype=dtype)
        return torch.from_numpy(np.ascontiguousarray(arr)).to(like.device)
    return np.asarray(to_host(values), dtype=dtype)


def full(shape: Sequence[int], value: float, dtype: Any, like: Array) -> Array:
    """A new array of ``shape`` filled with ``value``, of ``like``'s kind and device."""
    if is_tensor(like):
        import torch
        return torch.full(tuple(shape), value, dtype=_torch_dtype(dtype), device=like.device)
    return np.full(tuple(shape), value, dtype=dtype)


def empty(shape: Sequence[int], dtype: Any, like: Array) -> Array:
    """A new uninitialised array of ``shape``, of ``like``'s kind and device."""
    if is_tensor(like):
        import torch
        return torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device=like.device)
    return np.empty(tuple(shape), dtype=dtype)


def arange(start: float, stop: float, step: float, dtype: Any, like: Array) -> Array:
    """``start, start + step, ...`` below ``stop``, of ``like``'s kind and device."""
    if is_tensor(like):
        import torch
        return torch.arange(start, stop, step, dtype=_torch_dtype(dtype), device=like.device)
    return np.arange(start, stop, step, dtype=dtype)


def stack(arrays: Sequence[Array], axis: int = 0) -> Array:
    """Join same-shape arrays along a new ``axis``."""
    if is_tensor(arrays[0]):
        return sys.modules['torch'].stack(list(arrays), dim=axis)
    return np.stack(arrays, axis=axis)


def nonzero(mask: Array) -> Array:
    """``(K,)`` int64 indices where the 1-D ``mask`` is True, ascending."""
    if is_tensor(mask):
        return mask.nonzero().reshape(-1)
    return np.flatnonzero(mask)


def count(mask: Array) -> int:
    """How many elements of ``mask`` are True (a host integer: a device sync on a GPU)."""
    if is_tensor(mask):
        return int(mask.count_nonzero())
    return int(np.count_nonzero(mask))


def scatter_min(buffer: Array, index: Array, values: Array) -> None:
    """``buffer[index[k]] = min(buffer[index[k]], values[k])`` for every k, repeated indices
    included (numpy's ``np.minimum.at``), in place; 1-D ``buffer``."""
    if is_tensor(buffer):
        buffer.scatter_reduce_(0, index, values.to(buffer.dtype), reduce='amin')
    else:
        np.minimum.at(buffer, index, values)


def to_host(x: Optional[Array]) -> Optional[np.ndarray]:
    """``x`` as a numpy array on the host (one copy from a device; none for numpy)."""
    if x is None:
        return None
    if is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def location(x: Array) -> str:
    """Where an array lives: ``'numpy'``, or a tensor's device (``'cpu'``, ``'cuda:0'``): the
    key of what is cached per kind and device (rays, buffers, interpolation weights)."""
    return str(x.device) if is_tensor(x) else 'numpy'


# --------------------------------------------------------------------------------------------
# Used by the cloud's back-projection, voxel grid and packing (depth_node.cloud)

def as_array(x: Any) -> Array:
    """A tensor as it is; anything else (a list, a numpy array) through ``np.asarray``."""
    return x if is_tensor(x) else np.asarray(x)


def dtype_name(x: Array) -> str:
    """The element type's name as numpy spells it: ``'float32'``, ``'uint8'``, ``'bfloat16'``."""
    if is_tensor(x):
        return str(x.dtype).rsplit('.', 1)[-1]
    return x.dtype.name


def is_floating(x: Array) -> bool:
    """True for a floating-point array or tensor (float16 to float64, bfloat16)."""
    return dtype_name(x).startswith(('float', 'bfloat'))


def contiguous(x: Array, dtype: Any) -> Array:
    """``x`` as a C-contiguous array of ``dtype`` on its own device; no copy when it is one.

    numpy takes a byte order (``'<f4'``); a tensor is in the machine's order, little-endian on
    every platform torch builds for (x86-64, aarch64)."""
    if is_tensor(x):
        return x.to(_torch_dtype(dtype)).contiguous()
    return np.ascontiguousarray(x, dtype=dtype)


def bitcast(x: Array, dtype: Any) -> Array:
    """View the bytes of ``x`` as ``dtype`` (no copy); the last axis must be contiguous and
    scales with the item size (``(n, 3)`` float32 as uint8 is ``(n, 12)``)."""
    if is_tensor(x):
        return x.view(_torch_dtype(dtype))
    return x.view(dtype)


def copy_into(dst: Array, src: Array) -> None:
    """``dst[...] = src`` in place, cast to ``dst``'s dtype; same kind and device.

    numpy copies rows of a uint8 ``(n, k)`` as one ``k``-byte item each when both last axes
    are contiguous: about 2x faster than byte by byte (0.46 against 1.08 ms for 300k 12-byte
    rows, on the dev VM)."""
    if is_tensor(dst):
        dst.copy_(src.detach())
        return
    if (dst.ndim == 2 and dst.dtype == np.uint8 and src.dtype == np.uint8
            and dst.shape == src.shape and dst.strides[1] == 1 and src.strides[1] == 1):
        void = f'V{dst.shape[1]}'
        dst.view(void)[:, 0] = src.view(void)[:, 0]
        return
    np.copyto(dst, src, casting='unsafe')


def put_where(x: Array, mask: Array, value: float) -> None:
    """``x[mask] = value`` in place (numpy skips the write when ``mask`` has no True)."""
    if is_tensor(x):
        x.masked_fill_(mask, value)
    elif mask.any():
        np.copyto(x, x.dtype.type(value), where=mask)


def compress_rows(mask: Array, x: Array) -> Array:
    """The rows ``x[k]`` where the 1-D bool ``mask[k]``, in order (a new array); ``np.compress``
    is about 4x faster than boolean indexing of numpy rows. A device sync on a GPU (the count
    is data-dependent)."""
    if is_tensor(x):
        return x[mask]
    return np.compress(mask, x, axis=0)


def sum_by_index(index: Array, values: Array, size: int) -> Array:
    """Float64 sums of the rows of ``values`` per ``index``: ``out[i] = sum(values[index == i])``.

    Parameters
    ----------
    index : array
        ``(n,)`` int64 in ``[0, size)``.
    values : array
        ``(n,)`` or ``(n, c)`` numbers, of ``index``'s kind and device.
    size : int
        Rows of the result.

    Returns
    -------
    array
        ``(size,)`` or ``(size, c)`` float64; 0 where no index points.
    """
    if is_tensor(values):
        import torch
        out = torch.zeros((size,) + tuple(values.shape[1:]), dtype=torch.float64,
                          device=values.device)
        return out.index_add_(0, index, values.to(torch.float64))
    if values.ndim == 1:
        return np.bincount(index, weights=values, minlength=size)
    return np.stack([np.bincount(index, weights=values[:, j], minlength=size)
                     for j in range(values.shape[1])], axis=1)


def concatenate(arrays: Sequence[Array], axis: int = 0) -> Array:
    """Join arrays along an existing ``axis``."""
    if is_tensor(arrays[0]):
        return sys.modules['torch'].cat(list(arrays), dim=axis)
    return np.concatenate(arrays, axis=axis)


# --------------------------------------------------------------------------------------------
# Used by the LiDAR projection and the robust fit (depth_node.lidar, depth_node.alignment)

def errstate(like: Array, **kwargs: str) -> Any:
    """``np.errstate(**kwargs)`` for numpy ``like``; a no-op context for a tensor (torch never
    warns on overflow, 0 / 0 or NaN comparisons). As cheap as ``np.errstate`` itself."""
    if is_tensor(like):
        import contextlib
        return contextlib.nullcontext()
    return np.errstate(**kwargs)


def to_device(x: Any, device: Any) -> Array:
    """``x`` (a numpy array or a tensor) as a tensor on ``device`` (a ``torch.device`` or a
    string: ``'cuda:0'``, ``'cpu'``), dtype kept; one upload, none on the CPU (the tensor then
    shares the array's memory). ``device`` None: ``x`` as it is."""
    if device is None:
        return x
    import torch
    if not is_tensor(x):
        x = torch.from_numpy(np.require(x, requirements=['C', 'W']))
    return x.to(torch.device(device))


def std(x: Array) -> Array:
    """Population standard deviation (``ddof`` 0, numpy's default; torch's default is the
    sample one) of all elements, a 0-d array of ``x``'s kind and dtype."""
    if is_tensor(x):
        return x.std(correction=0)
    return np.std(x)


def median(x: Array) -> float:
    """The median of all elements as a host float: the mean of the two middle ones for an even
    count, rounded as ``np.median`` (torch's ``median`` would give the lower one); NaN when
    one is NaN. One device sync."""
    if is_tensor(x):
        torch_where = sys.modules['torch'].where
        ordered = sys.modules['torch'].sort(x.reshape(-1)).values   # NaN sorts last
        n = ordered.shape[0]
        middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        last = ordered[-1]                                          # NaN if there is one
        return float(torch_where(last != last, last, middle))
    return float(np.median(x))


def percentile(x: Array, q: Sequence[float]) -> list[float]:
    """Percentiles ``q`` (0-100, linear interpolation, numpy's default) of all elements of the
    floating ``x``, as host floats. One device sync (the levels are not uploaded)."""
    if is_tensor(x):
        torch = sys.modules['torch']
        return torch.stack([torch.quantile(x, p / 100.0) for p in q]).tolist()
    return [float(p) for p in np.percentile(x, q)]


def selector(mask: Array) -> tuple[Array, int]:
    """An indexer of the True elements of the 1-D bool ``mask``, and their count (a host int).

    ``x[indexer]`` is ``x[mask]``: numpy gets the mask itself (boolean indexing is numpy's
    fastest gather, and the count is cheap); a tensor gets its int64 indices, found with the
    count in one device sync, so that every gather with them is sync-free."""
    if is_tensor(mask):
        index = mask.nonzero().reshape(-1)
        return index, int(index.shape[0])
    return mask, int(np.count_nonzero(mask))


def to_floats(*values: Array) -> list[float]:
    """Scalars (0-d arrays, numpy scalars, tensors of one element) as host floats, all in one
    transfer from a device: one sync where ``float()`` of each would cost one each."""
    if values and is_tensor(values[0]):
        torch = sys.modules['torch']
        return torch.stack([v.reshape(()).to(torch.float64) for v in values]).tolist()
    return [float(v) for v in values]


# --------------------------------------------------------------------------------------------
# Used by the confidence cues, the flying-pixel filter and the stabilizer (depth_node.quality)

def clip(x: Array, lo: Optional[float], hi: Optional[float]) -> Array:
    """``x`` limited to ``[lo, hi]`` (either None: no limit on that side), a new array of its
    kind and dtype; NaN stays NaN (``torch.clamp``; numpy: ``np.minimum`` / ``np.maximum`` for
    one side, 2 us faster per call than ``np.clip``'s wrapper, which counts in the per-frame
    loops)."""
    if is_tensor(x):
        return x.clamp(lo, hi)
    if lo is None:
        return np.minimum(x, hi)
    if hi is None:
        return np.maximum(x, lo)
    return np.clip(x, lo, hi)


def nanmedian(x: Array) -> Array:
    """The median of the non-NaN elements of ``x`` as a 0-d array of its kind, dtype and device
    (no device sync): the mean of the two middle ones for an even count, as ``np.median``
    (torch's ``median`` gives the lower one, its ``quantile`` interpolates with other
    rounding); NaN when there is none."""
    if is_tensor(x):
        torch = sys.modules['torch']
        flat = x.reshape(-1)
        if flat.numel() == 0:
            return torch.full((), np.nan, dtype=x.dtype, device=x.device)
        ordered = torch.sort(flat).values                   # NaN sorts last
        n = (~torch.isnan(flat)).sum()
        # a 1-D index tensor (a 0-d one could be read on the host); none: ordered[0], NaN
        middle = ordered[torch.stack([torch.clamp((n - 1) // 2, min=0), n // 2])]
        return (middle[0] + middle[1]) / 2
    values = x[~np.isnan(x)]
    return np.median(values) if values.size else x.dtype.type(np.nan)
