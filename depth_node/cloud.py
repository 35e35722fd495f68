"""Back-project metric depth into camera-frame points and pack them as PointCloud2 bytes.

ROS-free: back-projection, the voxel grid and packing take numpy arrays or ``torch.Tensor`` s
and compute where the data lives (one implementation each, written against
:mod:`depth_node.arrays`), so a model on CUDA keeps its frame on the device up to the packed
bytes, which come back in one copy; :mod:`depth_node.packing` puts them into a
``sensor_msgs/PointCloud2``. torch is never imported here.

Conventions
-----------
- Depth is metres along the camera's optical z axis (REP 118), NaN where invalid.
- Points are in the camera optical frame (REP 103): x right, y down, z forward, metres.
- Pixel ``(u, v)`` is the centre of column ``u``, row ``v`` (the OpenCV / CameraInfo convention),
  so ``x = (u - cx) * z / fx`` and ``y = (v - cy) * z / fy`` as in depth_image_proc.
- ``K`` is the depth image's own camera matrix: that of its
  :class:`~depth_node.camera_info.Intrinsics` (scaled to the image), checked by
  :func:`~depth_node.camera_info.camera_matrix`.

Point layout
------------
Little-endian float32 ``x``, ``y``, ``z`` at offsets 0, 4, 8, then:

- xyz only: nothing more, ``point_step`` 12. depth_image_proc pads xyz to 16 bytes
  (``setPointCloud2FieldsByString(1, "xyz")``); we do not, because the 12-byte layout is exactly
  the memory of the ``(h, w, 3)`` float32 array from :func:`depth_to_points`, so packing is free
  instead of a strided copy (measured on the dev VM: 0.8 ms at 640x480, 2.3 ms at 1280x720), and
  25 % fewer bytes are copied into the message, serialized and sent.
- xyz + colour: ``rgb`` at offset 12, ``point_step`` 16: a float32 holding the bits of uint32
  ``0x00RRGGBB`` (alpha byte 0), the PCL / RViz convention. (PCL's ``PointXYZRGB`` puts it at
  16 of 32 bytes; readers go by the field offsets, so the compact layout is equally valid.)

Both are ordinary PointCloud2 layouts: RViz, PCL's ``fromROSMsg``, Nav2's and sensor_msgs_py's
iterators read fields by name and offset. Consumers must not assume a fixed ``point_step``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
import math
import os
from pathlib import Path
import threading
from typing import Optional, Union

import numpy as np

from depth_node.arrays import (Array, as_array, asarray, astype, bitcast, compress_rows,
                               contiguous, copy_into, dtype_name, empty, is_floating,
                               is_tensor, location, namespace, put_where, stack, sum_by_index,
                               to_host)
from depth_node.camera_info import camera_matrix, CameraInfoError
from depth_node.encodings import POINTFIELD_FLOAT32

POINT_STEP_XYZ = 12
"""Bytes per packed point without colour: x, y, z float32, no padding."""
POINT_STEP_XYZRGB = 16
"""Bytes per packed point with colour: x, y, z, rgb."""

_XYZ_FIELDS = (('x', 0, POINTFIELD_FLOAT32, 1),
               ('y', 4, POINTFIELD_FLOAT32, 1),
               ('z', 8, POINTFIELD_FLOAT32, 1))
_XYZRGB_FIELDS = _XYZ_FIELDS + (('rgb', 12, POINTFIELD_FLOAT32, 1),)


class CloudError(ValueError):
    """Bad input to cloud construction: wrong shape, dtype, stride or intrinsics."""


@dataclass(frozen=True, eq=False)
class PackedCloud:
    """A point cloud laid out as ``sensor_msgs/PointCloud2`` expects.

    Attributes
    ----------
    data : np.ndarray
        1-D uint8, exactly ``row_step * height`` bytes, little-endian points.
    height, width : int
        ``height`` rows of ``width`` points; ``height == 1`` for an unorganized cloud.
    point_step, row_step : int
        Bytes per point and per row.
    fields : tuple of (name, offset, datatype, count)
        PointField descriptions, datatype codes as the ``POINTFIELD_*`` constants of
        :mod:`depth_node.encodings`.
    is_dense : bool
        True when every point is finite.
    """

    data: np.ndarray
    height: int
    width: int
    point_step: int
    row_step: int
    fields: tuple[tuple[str, int, int, int], ...]
    is_dense: bool


# --------------------------------------------------------------------------------------------
# Back-projection

_RAY_CACHE_SIZE = 8
_ray_cache: 'OrderedDict[tuple, tuple[Array, Array]]' = OrderedDict()
_ray_lock = threading.Lock()


def _check_K(K: np.ndarray) -> np.ndarray:
    """:func:`depth_node.camera_info.camera_matrix`, the one check of a camera matrix."""
    try:
        return camera_matrix(K)
    except CameraInfoError as exc:
        raise CloudError(str(exc)) from None


def _check_stride(stride: int) -> int:
    if isinstance(stride, bool) or int(stride) != stride or stride < 1:
        raise CloudError(f'stride must be an integer >= 1, got {stride!r}')
    return int(stride)


def _rays(height: int, width: int, K: np.ndarray, stride: int,
          like: Array) -> tuple[Array, Array]:
    """Return ``((u - cx) / fx, (v - cy) / fy)`` for the sampled columns and rows, float32,
    of ``like``'s kind and device (computed in float64 on the host, then cast and moved).

    Cached per (shape, K, stride, kind and device) in a small LRU: intrinsics rarely change
    between frames, and a device keeps its copy. Skew (K[0, 1]) is ignored, as
    depth_image_proc does.
    """
    key = (height, width, stride, K.tobytes(), location(like))
    with _ray_lock:
        hit = _ray_cache.get(key)
        if hit is not None:
            _ray_cache.move_to_end(key)
            return hit
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rx = ((np.arange(0, width, stride, dtype=np.float64) - cx) / fx).astype(np.float32)
    ry = ((np.arange(0, height, stride, dtype=np.float64) - cy) / fy).astype(np.float32)
    if is_tensor(like):
        rx, ry = asarray(rx, like=like), asarray(ry, like=like)
    else:
        rx.flags.writeable = False
        ry.flags.writeable = False
    with _ray_lock:
        _ray_cache[key] = (rx, ry)
        while len(_ray_cache) > _RAY_CACHE_SIZE:
            _ray_cache.popitem(last=False)
    return rx, ry


def depth_to_points(depth: Array, K: np.ndarray, stride: int = 1, min_depth: float = 0.0,
                    max_depth: float = float('inf')) -> Array:
    """Back-project a depth image into camera-optical-frame points, where the depth lives.

    One implementation for numpy (CPU engines) and ``torch.Tensor`` (a model on CUDA keeps its
    frame on the device; torch on the CPU in tests): the same float32 products, so every
    device gives exactly the same values.

    Parameters
    ----------
    depth : np.ndarray or torch.Tensor
        ``(H, W)`` float, metres along the optical z axis; NaN (or any non-finite) is invalid.
    K : np.ndarray
        ``(3, 3)`` camera matrix of this depth image (pixels), e.g. after
        :func:`depth_node.camera_info.fit_to_image`; always on the host.
    stride : int
        Keep every ``stride``-th pixel in both directions, starting at pixel 0: the output
        grid is pixels ``u = 0, stride, 2 * stride, ...`` (no averaging).
    min_depth, max_depth : float
        Points with ``z < min_depth`` or ``z > max_depth`` become NaN (not clamped).
        ``z <= 0`` is always invalid: a camera cannot see a point at or behind its centre.

    Returns
    -------
    np.ndarray or torch.Tensor
        Of ``depth``'s kind and device: ``(ceil(H / stride), ceil(W / stride), 3)`` float32
        x, y, z in metres, NaN in all three coordinates where the depth is invalid. No device
        synchronisation.
    """
    depth = as_array(depth)
    if depth.ndim != 2:
        raise CloudError(f'depth must be a 2-D (H, W) image, got shape {tuple(depth.shape)}')
    if not is_floating(depth):
        raise CloudError(f'depth must be float metres, got dtype {dtype_name(depth)} '
                         '(convert 16UC1 millimetres to metres first)')
    stride = _check_stride(stride)
    K = _check_K(K)
    if math.isnan(min_depth) or math.isnan(max_depth):
        raise CloudError('min_depth and max_depth must not be NaN')
    rx, ry = _rays(depth.shape[0], depth.shape[1], K, stride, depth)
    xp = namespace(depth)

    # One contiguous float32 copy of the sampled pixels first: the comparisons below run
    # about 5x faster on it than on the strided view (numpy), and it is ours to write NaN into.
    z = empty((ry.shape[0], rx.shape[0]), np.float32, like=depth)
    copy_into(z, depth[::stride, ::stride])
    valid = z > 0
    valid &= z >= min_depth
    valid &= z <= max_depth
    valid &= xp.isfinite(z)
    put_where(z, xp.logical_not(valid, out=valid), math.nan)

    out = empty(tuple(z.shape) + (3,), np.float32, like=z)
    xp.multiply(z, rx[None, :], out=out[..., 0])
    xp.multiply(z, ry[:, None], out=out[..., 1])
    out[..., 2] = z
    return out


def strided_rgb(rgb: Array, stride: int) -> Array:
    """Sample an ``(H, W, 3)`` colour image on the same grid as :func:`depth_to_points`.

    Returns a (non-copying) view of shape ``(ceil(H / stride), ceil(W / stride), 3)``, of
    ``rgb``'s kind and device (numpy or ``torch.Tensor``).
    """
    rgb = as_array(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise CloudError(f'rgb must be (H, W, 3), got shape {tuple(rgb.shape)}')
    stride = _check_stride(stride)
    return rgb[::stride, ::stride]


# --------------------------------------------------------------------------------------------
# Voxel grid

_MAX_VOXEL_KEYS = 2 ** 62
"""The most voxels the bounding box of one cloud may span (int64 keys, no overflow)."""


def _check_voxel_size(voxel_size: float) -> float:
    if isinstance(voxel_size, bool) or not (math.isfinite(voxel_size) and voxel_size > 0):
        raise CloudError(f'voxel_size must be a finite number of metres > 0, got '
                         f'{voxel_size!r}')
    return float(voxel_size)


def voxel_downsample(xyz: Array, voxel_size: float,
                     rgb: Optional[Array] = None) -> tuple[Array, Optional[Array]]:
    """One point per occupied voxel: the centroid of the finite points in it.

    The voxels are the cubes ``[i, i + 1) * voxel_size`` (and likewise for y and z) of the
    points' own frame (the camera optical frame): voxel ``(i, j, k) = floor(p / voxel_size)``,
    computed in float64. The centroid (the mean of the voxel's points, as PCL's ``VoxelGrid``
    and Open3D's ``voxel_down_sample``) averages the depth noise of the points it replaces and
    lies inside their voxel; its colour is the mean colour of the same points, rounded. One
    implementation for numpy and ``torch.Tensor`` (sort-based ``unique`` and index sums):
    the same voxels in the same order on every device; the centroids are float64 sums cast to
    float32, equal across devices up to the summation order (a float32 ulp at most).

    Parameters
    ----------
    xyz : np.ndarray or torch.Tensor
        ``(..., 3)`` float points in metres (e.g. ``(h, w, 3)`` from :func:`depth_to_points`);
        points with any non-finite coordinate are left out.
    voxel_size : float
        The voxel's edge in metres, > 0.
    rgb : np.ndarray or torch.Tensor, optional
        ``(..., 3)`` uint8 colours aligned with ``xyz`` (moved to ``xyz``'s kind and device).

    Returns
    -------
    points : np.ndarray or torch.Tensor
        ``(M, 3)`` float32 centroids, all finite, one per occupied voxel, in ascending order of
        voxel ``(i, j, k)`` (lexicographic); of ``xyz``'s kind and device.
    colors : np.ndarray or torch.Tensor or None
        ``(M, 3)`` uint8 mean colours, or None without ``rgb``.

    Raises
    ------
    CloudError
        Bad shapes or dtypes, ``voxel_size`` not > 0, or a cloud that spans more than 2**62
        voxels (a voxel far too small for its extent: use a larger ``voxel_size``).
    """
    voxel_size = _check_voxel_size(voxel_size)
    xyz, rgb = _checked_points(xyz, rgb, '(..., 3)')
    xp = namespace(xyz)
    pts = contiguous(xyz.reshape(-1, 3), np.float32)
    finite = xp.isfinite(pts[:, 0]) & xp.isfinite(pts[:, 1]) & xp.isfinite(pts[:, 2])
    pts = compress_rows(finite, pts)
    cols = None if rgb is None else compress_rows(finite, rgb.reshape(-1, 3))
    if pts.shape[0] == 0:
        return pts, cols

    # voxel index per axis, each a contiguous 1-D array (reductions along a column are slow)
    cell = [astype(xp.floor(astype(pts[:, j], np.float64) / voxel_size), np.int64)
            for j in range(3)]
    bounds = to_host(stack([c.min() for c in cell] + [c.max() for c in cell]))  # one sync
    low = [int(b) for b in bounds[:3]]
    span = [int(hi) - lo + 1 for lo, hi in zip(low, bounds[3:])]
    if span[0] * span[1] * span[2] > _MAX_VOXEL_KEYS:
        raise CloudError(f'voxel_size {voxel_size} m is too small for a cloud spanning '
                         f'{span[0]} x {span[1]} x {span[2]} voxels (more than 2**62): '
                         'use a larger voxel_size (or limit the range with max_depth)')
    key = cell[0]  # ((i - i0) * span_j + (j - j0)) * span_k + (k - k0), in place
    key -= low[0]
    for axis in (1, 2):
        key *= span[axis]
        key += cell[axis]
        key -= low[axis]
    _, inverse, counts = xp.unique(key, return_inverse=True, return_counts=True)
    size = int(counts.shape[0])
    counts = astype(counts, np.float64)[:, None]
    points = astype(sum_by_index(inverse, pts, size) / counts, np.float32)
    colors = None
    if cols is not None:
        colors = astype(xp.round(sum_by_index(inverse, cols, size) / counts), np.uint8)
    return points, colors


# --------------------------------------------------------------------------------------------
# Packing

def _checked_points(xyz: Array, rgb: Optional[Array],
                    shape: str) -> tuple[Array, Optional[Array]]:
    """Check float ``xyz`` with a last axis of 3 (and ``(h, w, 3)`` for ``shape``
    ``'(h, w, 3)'``) and uint8 ``rgb`` of its shape, moved to ``xyz``'s kind and device."""
    xyz = as_array(xyz)
    if xyz.ndim < 1 or xyz.shape[-1] != 3 or (shape == '(h, w, 3)' and xyz.ndim != 3):
        raise CloudError(f'xyz must be {shape}, got shape {tuple(xyz.shape)}')
    if not is_floating(xyz):
        raise CloudError(f'xyz must be float, got dtype {dtype_name(xyz)}')
    if rgb is not None:
        rgb = asarray(rgb, like=xyz)
        if tuple(rgb.shape) != tuple(xyz.shape):
            raise CloudError(f'rgb shape {tuple(rgb.shape)} does not match xyz shape '
                             f'{tuple(xyz.shape)}')
        if dtype_name(rgb) != 'uint8':
            raise CloudError(f'rgb must be uint8, got dtype {dtype_name(rgb)}')
    return xyz, rgb


def pack_cloud(xyz: Array, rgb: Optional[Array] = None, organized: bool = True,
               voxel_size: float = 0.0) -> PackedCloud:
    """Lay out points (and colours) as PointCloud2 data, where they live, then on the host.

    One implementation for numpy and ``torch.Tensor``: the point records are built as one
    contiguous uint8 buffer on the points' device, then copied to the host once (no copy for
    numpy); the bytes are the same on every device.

    Parameters
    ----------
    xyz : np.ndarray or torch.Tensor
        ``(h, w, 3)`` float points in metres, NaN where invalid (from :func:`depth_to_points`).
    rgb : np.ndarray or torch.Tensor, optional
        ``(h, w, 3)`` uint8 colours aligned with ``xyz`` (see :func:`strided_rgb`); moved to
        ``xyz``'s kind and device when it is of another.
    organized : bool
        True: ``height = h``, ``width = w``, every point kept (NaN included),
        ``is_dense = False`` as depth_image_proc publishes. False: ``height = 1``, only points
        with finite x, y and z, ``is_dense = True``.
    voxel_size : float
        Metres; > 0: one point per occupied voxel (:func:`voxel_downsample`: the centroid,
        coloured with the mean colour), an unorganized cloud (needs ``organized=False``).
        0: every point.

    Returns
    -------
    PackedCloud
        12-byte points (xyz) or 16-byte points (xyz + rgb), see the module docstring;
        ``data`` is a numpy array on the host. For an organized xyz cloud from a C-contiguous
        float32 numpy ``xyz`` (or CPU tensor), ``data`` is a view of ``xyz`` (no copy);
        :func:`depth_node.packing.set_uint8_data` copies it into the message.
    """
    xyz, rgb = _checked_points(xyz, rgb, '(h, w, 3)')
    if voxel_size != 0:
        voxel_size = _check_voxel_size(voxel_size)
        if organized:
            raise CloudError('a voxel-downsampled cloud is unorganized: pass organized=False '
                             '(cloud.organized false) with voxel_size > 0')
        points, colors = voxel_downsample(xyz, voxel_size, rgb)
        xyz, rgb = points[None], None if colors is None else colors[None]
    h, w = int(xyz.shape[0]), int(xyz.shape[1])
    n = h * w
    xyz = contiguous(xyz, '<f4')
    records = bitcast(xyz, np.uint8).reshape(n, POINT_STEP_XYZ)
    colors = None if rgb is None else rgb.reshape(n, 3)
    if not organized and not voxel_size:  # a voxel cloud is finite already
        xp = namespace(xyz)
        keep = (xp.isfinite(xyz[..., 0]) & xp.isfinite(xyz[..., 1])
                & xp.isfinite(xyz[..., 2])).reshape(n)
        records = compress_rows(keep, records)
        colors = None if colors is None else compress_rows(keep, colors)

    if colors is None:
        fields, step = _XYZ_FIELDS, POINT_STEP_XYZ
    else:
        fields, step = _XYZRGB_FIELDS, POINT_STEP_XYZRGB
        m = int(records.shape[0])
        buf = empty((m, step), np.uint8, like=records)
        copy_into(buf[:, :POINT_STEP_XYZ], records)
        buf[:, 12] = colors[:, 2]  # uint32 0x00RRGGBB, little-endian: blue is the lowest byte
        buf[:, 13] = colors[:, 1]
        buf[:, 14] = colors[:, 0]
        buf[:, 15] = 0
        records = buf
    data = to_host(records.reshape(-1))  # the one copy from a device

    if organized:
        height, width, dense = h, w, False
    else:
        height, width, dense = 1, data.size // step, True
    return PackedCloud(data=data, height=height, width=width, point_step=step,
                       row_step=step * width, fields=fields, is_dense=dense)


# --------------------------------------------------------------------------------------------
# PLY

def write_ply(path: Union[str, os.PathLike], xyz: np.ndarray,
              rgb: Optional[np.ndarray] = None) -> int:
    """Write the finite points as a binary little-endian PLY file.

    Parameters
    ----------
    path : str or PathLike
        Output file, overwritten.
    xyz : np.ndarray
        ``(..., 3)`` float points (metres, camera optical frame); rows with any non-finite
        coordinate are skipped.
    rgb : np.ndarray, optional
        ``(..., 3)`` uint8 colours aligned with ``xyz``, written as ``red, green, blue``.

    Returns
    -------
    int
        Number of points written.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim < 2 or xyz.shape[-1] != 3:
        raise CloudError(f'xyz must be (..., 3), got shape {xyz.shape}')
    pts = xyz.reshape(-1, 3)
    keep = np.isfinite(pts).all(axis=1)
    pts = pts[keep]
    props = [('x', '<f4'), ('y', '<f4'), ('z', '<f4')]
    header_props = ['property float x', 'property float y', 'property float z']
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != xyz.shape or rgb.dtype != np.uint8:
            raise CloudError(f'rgb must be uint8 with the shape of xyz {xyz.shape}, '
                             f'got {rgb.dtype} {rgb.shape}')
        props += [('red', 'u1'), ('green', 'u1'), ('blue', 'u1')]
        header_props += ['property uchar red', 'property uchar green', 'property uchar blue']
    vertices = np.empty(len(pts), dtype=props)
    vertices['x'], vertices['y'], vertices['z'] = pts[:, 0], pts[:, 1], pts[:, 2]
    if rgb is not None:
        cols = rgb.reshape(-1, 3)[keep]
        vertices['red'], vertices['green'], vertices['blue'] = cols[:, 0], cols[:, 1], cols[:, 2]
    header = '\n'.join(['ply', 'format binary_little_endian 1.0',
                        f'element vertex {len(pts)}', *header_props, 'end_header']) + '\n'
    with open(Path(path), 'wb') as f:
        f.write(header.encode('ascii'))
        f.write(vertices.tobytes())
    return len(pts)
