"""LiDAR points into the camera image: PointCloud2 decoding, projection, occlusion filtering.

ROS-free. The decoding takes and returns numpy; the projection and the occlusion filter are
written once against :mod:`depth_node.arrays` and run on numpy or, for a model on a GPU, on
``torch.Tensor`` s on its device (``prepare_points(..., device=...)``). Frames follow REP
103/105: points are read in the LiDAR frame, ``T_camera_lidar`` maps them into the camera
optical frame (z forward, x right, y down), and pixel coordinates follow OpenCV: the centre of
pixel ``(row, col)`` is at ``(u, v) = (col, row)``.

Typical use, per scan::

    xyz = read_points_xyz(fields, msg.point_step, msg.row_step, msg.width, msg.height,
                          msg.is_bigendian, msg.data)
    uv, z = prepare_points(xyz, T_camera_lidar, camera, pred_width, pred_height)

``camera`` is the image's :class:`~depth_node.camera_info.Intrinsics`, the package's one camera
model (the cloud and ``depth/camera_info`` use the same one).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import threading
from typing import Any, Sequence

import numpy as np

from depth_node import arrays
from depth_node.arrays import Array
from depth_node.camera_info import Intrinsics
from depth_node.encodings import POINTFIELD_DATATYPES, POINTFIELD_FLOAT32, POINTFIELD_FLOAT64
from depth_node.text import shorten, shorten_values


class LidarError(ValueError):
    """A point cloud, camera model or transform that cannot be used; the message says why."""


_XYZ = ('x', 'y', 'z')
_FLOAT_CODES = (POINTFIELD_FLOAT32, POINTFIELD_FLOAT64)


def _as_bytes(data) -> np.ndarray:
    """View a PointCloud2 ``data`` buffer as a flat uint8 array without copying where possible."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise LidarError(f'data must be a uint8 array, got dtype {data.dtype}')
        return np.ascontiguousarray(data).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise LidarError(f'data must be bytes, memoryview, array.array("B") or a uint8 '
                         f'ndarray, got {type(data).__name__}: {exc}') from None


def read_points_xyz(fields: Sequence[tuple[str, int, int, int]], point_step: int,
                    row_step: int, width: int, height: int, is_bigendian: bool,
                    data) -> np.ndarray:
    """Decode the x, y, z coordinates of a ``sensor_msgs/PointCloud2``.

    Parameters
    ----------
    fields : sequence of (name, offset, datatype, count)
        The message's ``PointField`` list. ``x``, ``y`` and ``z`` must be present as FLOAT32
        (7) or FLOAT64 (8); other fields are ignored. A ``count`` of 0 is read as 1 (some
        drivers write 0); for a count above 1 the first element is used.
    point_step, row_step : int
        Bytes per point and per row; any padding between fields, after the last field and at the
        end of each row is honoured.
    width, height : int
        Points per row and rows (``height`` 1 for unorganized clouds, more for organized ones).
    is_bigendian : bool
        Byte order of the data.
    data : bytes, bytearray, memoryview, array.array('B') or uint8 ndarray
        The message's ``data``. Its length must be exactly ``row_step * height``: a longer buffer
        is refused too, because it usually means the header does not describe the data (a wrong
        ``point_step`` or ``width``), and reading it would yield plausible-looking garbage.

    Returns
    -------
    np.ndarray
        ``(N, 3)`` float32 x, y, z in the cloud's frame (metres), row-major over the organized
        layout, with every point holding a NaN or infinite coordinate (or a float64 value outside
        the float32 range) dropped. ``N`` may be 0 when no point is finite.

    Raises
    ------
    LidarError
        Missing or duplicated x/y/z, an xyz datatype other than FLOAT32/FLOAT64, a field that
        does not fit in ``point_step``, ``row_step < width * point_step``, a data length other
        than ``row_step * height``, or an empty cloud (``width * height == 0``).
    """
    width, height = int(width), int(height)
    point_step, row_step = int(point_step), int(row_step)
    if width < 0 or height < 0:
        raise LidarError(f'width and height must be non-negative, got {width} x {height}')
    if width * height == 0:
        raise LidarError(f'empty cloud: width {width} x height {height}')
    if point_step <= 0:
        raise LidarError(f'point_step must be positive, got {point_step}')
    if row_step < width * point_step:
        raise LidarError(f'row_step {row_step} is smaller than width * point_step = '
                         f'{width} * {point_step} = {width * point_step}')

    found: dict[str, tuple[int, int]] = {}
    for entry in fields:
        try:
            name, offset, datatype, count = entry
            offset, datatype, count = int(offset), int(datatype), int(count)
        except (TypeError, ValueError):
            raise LidarError(f'a field must be (name, offset, datatype, count), got '
                             f'{shorten(entry)}') from None
        if offset < 0 or count < 0:
            raise LidarError(f'field {shorten(name)} has negative offset {offset} or count '
                             f'{count}')
        dtype = POINTFIELD_DATATYPES.get(datatype)
        if dtype is None:
            if name in _XYZ:
                raise LidarError(f'field {shorten(name)} has unknown datatype {datatype}')
            continue  # an extra field we cannot size and do not read
        end = offset + dtype.itemsize * max(count, 1)
        if end > point_step:
            raise LidarError(f'field {shorten(name)} (offset {offset}, {max(count, 1)} x '
                             f'{dtype.itemsize} bytes) does not fit in point_step {point_step}')
        if name in _XYZ:
            if name in found:
                raise LidarError(f'field {shorten(name)} appears more than once')
            if datatype not in _FLOAT_CODES:
                raise LidarError(f'field {shorten(name)} has datatype {datatype} ({dtype}); '
                                 'only FLOAT32 (7) and FLOAT64 (8) coordinates are supported')
            found[name] = (offset, datatype)
    missing = [n for n in _XYZ if n not in found]
    if missing:
        raise LidarError(f'cloud has no field {", ".join(missing)}; '
                         f'fields are {shorten_values([f[0] for f in fields])}')

    buf = _as_bytes(data)
    expected = row_step * height
    if buf.size != expected:
        raise LidarError(f'data holds {buf.size} bytes but row_step * height = {row_step} * '
                         f'{height} = {expected}; the header does not describe the data')

    order = '>' if is_bigendian else '<'
    point_dtype = np.dtype({
        'names': list(_XYZ),
        'formats': [POINTFIELD_DATATYPES[found[n][1]].newbyteorder(order) for n in _XYZ],
        'offsets': [found[n][0] for n in _XYZ],
        'itemsize': point_step,
    })
    # A strided view over the raw bytes: rows row_step apart, points point_step apart.
    points = np.ndarray(shape=(height, width), dtype=point_dtype, buffer=buf,
                        strides=(row_step, point_step))
    xyz = np.empty((height * width, 3), dtype=np.float32)
    with np.errstate(over='ignore', invalid='ignore'):
        for i, name in enumerate(_XYZ):
            xyz[:, i] = points[name].reshape(-1)
    return xyz[np.isfinite(xyz).all(axis=1)]


_MIN_DEPTH = 0.1                  # metres; prepare_points drops nearer points
Device = Any
"""Where the projection runs: a ``torch.device``, a string (``'cuda:0'``, ``'cpu'``) or None."""


def _check_transform(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise LidarError(f'transform must be a finite (4, 4) matrix, got shape {T.shape}')
    if not np.allclose(T[3], (0, 0, 0, 1)):
        raise LidarError(f'transform bottom row must be 0 0 0 1, got {T[3].tolist()}')
    return T


def _transform_row(T: np.ndarray, cols: Array, row: int) -> Array:
    """One output coordinate of ``T @ points``, float64 ``(N,)``, from ``(3, N)`` float64 rows
    (numpy, or a tensor on any device; ``T`` is the host matrix).

    Elementwise on purpose: a BLAS matmul with an inner dimension of 3 is many times slower,
    and much slower still when another process holds a core.
    """
    r0, r1, r2, r3 = T[row].tolist()  # host floats: scalars to numpy and torch alike
    out = r0 * cols[0]
    out += r1 * cols[1]
    out += r2 * cols[2]
    out += r3
    return out


def transform_points(T: np.ndarray, points: Array) -> Array:
    """Apply a ``(4, 4)`` rigid or affine transform to ``(N, 3)`` points; float64 ``(N, 3)``
    of the points' kind (numpy, or a tensor on its device)."""
    T = _check_transform(T)
    points = arrays.as_array(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise LidarError(f'points must be (N, 3), got shape {tuple(points.shape)}')
    cols = arrays.contiguous(points.T, np.float64)
    out = arrays.empty((points.shape[0], 3), np.float64, like=cols)
    for row in range(3):
        out[:, row] = _transform_row(T, cols, row)
    return out


def project_points(points_cam: Array, camera: Intrinsics,
                   min_depth: float = 0.1) -> tuple[Array, Array, Array]:
    """Project points in the camera optical frame into the (distorted) image.

    Parameters
    ----------
    points_cam : np.ndarray or torch.Tensor
        ``(N, 3)`` points in the camera optical frame, metres. A tensor is projected on its
        device and gives tensors there.
    camera : Intrinsics
        Intrinsics and distortion of the image the pixels refer to.
    min_depth : float
        Points with optical ``z < min_depth`` (behind or too close to the camera) are dropped,
        as are points with a non-finite coordinate.

    Returns
    -------
    uv : np.ndarray or torch.Tensor
        ``(M, 2)`` float64 pixel coordinates in the distorted image, inside the hull of pixel
        centres: ``0 <= u <= width - 1``, ``0 <= v <= height - 1`` (so rounding, flooring and
        bilinear sampling all land on valid pixels).
    z : np.ndarray or torch.Tensor
        ``(M,)`` float64 depth along the optical axis, metres.
    index : np.ndarray or torch.Tensor
        ``(M,)`` int64 indices of the kept points into ``points_cam``.

    Points with a normalised radius beyond ``camera.max_radius`` are dropped before distortion:
    there the distortion polynomial is extrapolated and may fold far-off points into the image.
    """
    pts = arrays.as_array(points_cam)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise LidarError(f'points must be (N, 3), got shape {tuple(pts.shape)}')
    pts = arrays.astype(pts, np.float64)
    u, v, z, index = _project(pts[:, 0], pts[:, 1], pts[:, 2], camera, min_depth)
    return arrays.stack([u, v], axis=1), z, index


def _project(x: Array, y: Array, z: Array, camera: Intrinsics,
             min_depth: float) -> tuple[Array, Array, Array, Array]:
    """:func:`project_points` on float64 optical-frame columns; returns u, v, z, index.

    On a GPU: two device syncs (the in-front and in-image counts), three with distortion.
    """
    xp = arrays.namespace(z)
    with arrays.errstate(z, invalid='ignore'):
        index = arrays.nonzero((z >= min_depth) & (z < math.inf))
    if index.shape[0] < z.shape[0]:
        x, y, z = x[index], y[index], z[index]
    inv_z = 1.0 / z
    x = x * inv_z
    y = y * inv_z
    if camera.distorted:
        r2 = x * x + y * y
        keep = r2 <= camera.max_radius ** 2  # False for NaN
        if not bool(keep.all()):
            index, z, x, y, r2 = index[keep], z[keep], x[keep], y[keep], r2[keep]
        D = camera.coefficients.tolist()
        if camera.distortion_model == 'equidistant':
            r = xp.sqrt(r2)
            theta = xp.arctan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (D[0] + t2 * (D[1] + t2 * (D[2] + t2 * D[3]))))
            with arrays.errstate(r, invalid='ignore', divide='ignore'):
                factor = xp.where(r > 1e-12, theta_d / r, 1.0)
            x, y = x * factor, y * factor
        else:  # plumb_bob, rational_polynomial
            k1, k2, p1, p2, k3 = D[:5]
            radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
            if camera.distortion_model == 'rational_polynomial':
                radial /= 1 + r2 * (D[5] + r2 * (D[6] + r2 * D[7]))
            xy2 = 2 * x * y
            x, y = (x * radial + p1 * xy2 + p2 * (r2 + 2 * x * x),
                    y * radial + p1 * (r2 + 2 * y * y) + p2 * xy2)
    (fx, skew, cx), (_, fy, cy) = camera.K[:2].tolist()
    u = fx * x + cx
    if skew != 0:
        u += skew * y
    v = fy * y + cy
    inside = arrays.nonzero((u >= 0) & (u <= camera.width - 1)
                            & (v >= 0) & (v <= camera.height - 1))
    return u[inside], v[inside], z[inside], index[inside]


def occlusion_mask(uv: Array, z: Array, width: int, height: int, window: int = 5,
                   tolerance: float = 0.1) -> Array:
    """Reject LiDAR points hidden behind nearer points in the camera's view.

    The LiDAR sees surfaces the camera cannot (behind foreground edges); projected, those returns
    land on foreground pixels. A point is rejected when a point near it in the image is nearer by
    more than ``tolerance`` of its depth: ``z_other < (1 - tolerance) * z``.

    "Near" is the 3 x 3 block of grid cells of ``window // 2`` pixels around the point's cell, a
    square of ``3 * (window // 2)`` pixels that always contains the point's ``window`` x
    ``window`` box (exactly that box for ``window`` 3, a 6 x 6 block for 5). The coarse grid keeps
    the cost independent of the image size. ``window`` 1 or less disables the filter.

    Parameters
    ----------
    uv : np.ndarray or torch.Tensor
        ``(M, 2)`` pixel coordinates inside a ``width`` x ``height`` image.
    z : np.ndarray or torch.Tensor
        ``(M,)`` depths, metres, of ``uv``'s kind and device.

    Returns
    -------
    np.ndarray or torch.Tensor
        ``(M,)`` bool, True for points to keep, of ``uv``'s kind and device.
    """
    uv = arrays.as_array(uv)
    z = arrays.astype(arrays.as_array(z), np.float64)
    n = z.shape[0]
    if tuple(uv.shape) != (n, 2):
        raise LidarError(f'uv must be (M, 2) matching z (M,), got {tuple(uv.shape)} and '
                         f'{tuple(z.shape)}')
    return _occlusion_keep(uv[:, 0], uv[:, 1], z, width, height, window, tolerance)


_zbuf_local = threading.local()


def _zbuf(size: int, like: Array) -> Array:
    """This thread's float64 buffer of ``size`` cells for ``like``'s kind and device, all +inf
    (callers restore that)."""
    buffers = getattr(_zbuf_local, 'buffers', None)
    if buffers is None:
        buffers = _zbuf_local.buffers = {}
    key = arrays.location(like)
    zbuf = buffers.get(key)
    if zbuf is None or zbuf.shape[0] != size:
        zbuf = buffers[key] = arrays.full((size,), math.inf, np.float64, like=like)
    return zbuf


def _occlusion_keep(u: Array, v: Array, z: Array, width: int, height: int,
                    window: int, tolerance: float = 0.1) -> Array:
    """:func:`occlusion_mask` on pixel columns ``u``, ``v`` and float64 depths ``z`` (numpy, or
    tensors on one device: no device sync)."""
    xp = arrays.namespace(z)
    n = z.shape[0]
    half = int(window) // 2
    if n == 0 or half < 1:
        return arrays.full((n,), True, bool, like=z)
    rows = (int(height) - 1) // half + 1
    cols = (int(width) - 1) // half + 1
    # Cell of the nearest pixel, shifted by one for a border of +inf cells, so the 3 x 3 minimum
    # needs no edge cases. Flat indices: np.minimum.at is several times faster with them.
    cu = xp.clip(arrays.astype(u + 0.5, np.int64) // half, 0, cols - 1) + 1
    cv = xp.clip(arrays.astype(v + 0.5, np.int64) // half, 0, rows - 1) + 1
    stride = cols + 2
    flat = cv * stride + cu
    size = (rows + 2) * stride
    if 9 * n <= 2 * size:
        # Sparse points (a scan against a fine grid): the 3 x 3 minimum at each point's cell
        # from 9 gathers, in this thread's all-inf buffer (no image-sized pass at all), which
        # gets its touched cells back to inf before returning.
        zbuf = _zbuf(size, z)
        try:
            arrays.scatter_min(zbuf, flat, z)
            block_min = zbuf[flat - stride - 1]
            for offset in (-stride, -stride + 1, -1, 0, 1, stride - 1, stride, stride + 1):
                xp.minimum(block_min, zbuf[flat + offset], out=block_min)
        finally:
            zbuf[flat] = math.inf
    else:
        zbuf = arrays.full((size,), math.inf, np.float64, like=z)
        arrays.scatter_min(zbuf, flat, z)
        # Dense points: the 3 x 3 minimum of every cell, as minima of the flat buffer shifted by
        # one cell and by one row: contiguous 1-D passes (several times faster than 2-D slices).
        # Only interior cells are read at the end; their neighbours never wrap across rows.
        row_min = xp.minimum(zbuf[:-2], zbuf[1:-1])    # row_min[i] covers cells i .. i + 2
        xp.minimum(row_min, zbuf[2:], out=row_min)
        n_block = row_min.shape[0] - 2 * stride
        block_min = xp.minimum(row_min[:n_block], row_min[stride:stride + n_block])
        xp.minimum(block_min, row_min[2 * stride:], out=block_min)
        block_min = block_min[flat - stride - 1]
    return block_min >= (1.0 - tolerance) * z


def _scan_columns(points_lidar: Array, T_camera_lidar: np.ndarray, camera: Intrinsics,
                  out_width: int, out_height: int, device: Device = None,
                  ) -> tuple[Array, np.ndarray, Intrinsics]:
    """Checked inputs of a projection: ``(3, N)`` float64 x, y, z rows (one transposing copy, so
    every later step is a contiguous 1-D pass) on ``device`` (None: where the points are), the
    checked 4x4 transform (host), and the camera scaled to the output size.

    Raises
    ------
    LidarError
        Points not ``(N, >=3)``, or a transform that is not a rigid 4x4.
    """
    pts = arrays.as_array(points_lidar)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise LidarError(f'points must be (N, 3) or (N, >3), got shape {tuple(pts.shape)}')
    T = _check_transform(T_camera_lidar)
    # The scan goes up as it is (float32 from read_points_xyz) and is widened there.
    pts = arrays.to_device(pts, device)
    cols = arrays.contiguous(pts[:, :3].T, np.float64)
    return cols, T, camera.scaled(out_width, out_height)


def prepare_points(points_lidar: Array, T_camera_lidar: np.ndarray, camera: Intrinsics,
                   out_width: int, out_height: int, occlusion_window: int = 5,
                   device: Device = None) -> tuple[Array, Array]:
    """LiDAR scan to sparse depth samples in the prediction's pixel grid.

    Transforms the points into the camera optical frame, projects them with the camera's
    distortion, expresses the pixels in an ``out_width`` x ``out_height`` image of the same view
    (the prediction's size; see :meth:`Intrinsics.scaled`), and drops occluded points with
    :func:`occlusion_mask` (``occlusion_window`` in output pixels).

    Parameters
    ----------
    points_lidar : np.ndarray or torch.Tensor
        ``(N, 3)`` or ``(N, >3)`` points in the LiDAR frame, metres; columns past the third
        (intensity, ring) are ignored.
    T_camera_lidar : np.ndarray
        ``(4, 4)`` transform mapping LiDAR-frame points into the camera optical frame.
    camera : Intrinsics
        The camera the image was taken with, at its native size.
    occlusion_window : int
        Pixels, see :func:`occlusion_mask`.
    device : torch.device or str, optional
        Where the work runs: None keeps it where the points are (numpy in, numpy out); a
        device (``'cuda:0'``, ``'cpu'``) uploads the scan once, as it is, and runs the
        transform, culling, projection and occlusion filter there, in float64 as on the host
        (same points, same order, same values to rounding). On a GPU that costs five device
        syncs (six with distortion): the upload, and the counts of the culled, in-front,
        in-image and visible points.

    Returns
    -------
    uv : np.ndarray or torch.Tensor
        ``(M, 2)`` float32 pixel coordinates in the output image, ``0 <= u <= out_width - 1``;
        a tensor on ``device`` when one is given (or the points are a tensor).
    z : np.ndarray or torch.Tensor
        ``(M,)`` float32 depth along the optical axis, metres, of ``uv``'s kind.
    """
    cols, T, out_camera = _scan_columns(points_lidar, T_camera_lidar, camera, out_width,
                                        out_height, device)
    xp = arrays.namespace(cols)
    # Cull a full 360-degree scan on two camera-frame coordinates before computing the third:
    # optical z, then the horizontal field of view (|x| <= max_radius * z).
    with arrays.errstate(cols, over='ignore', invalid='ignore'):  # overflow: dropped below
        z = _transform_row(T, cols, 2)
        x = _transform_row(T, cols, 0)
        candidates = arrays.nonzero((z >= _MIN_DEPTH) & (z < math.inf)
                                    & (xp.abs(x) <= out_camera.max_radius * z))
        if candidates.shape[0] < z.shape[0]:
            cols, x, z = cols[:, candidates], x[candidates], z[candidates]
        y = _transform_row(T, cols, 1)
        u, v, z, _ = _project(x, y, z, out_camera, _MIN_DEPTH)
    keep = arrays.nonzero(_occlusion_keep(u, v, z, out_camera.width, out_camera.height,
                                          occlusion_window))
    uv = arrays.empty((keep.shape[0], 2), np.float32, like=u)
    uv[:, 0] = u[keep]
    uv[:, 1] = v[keep]
    with arrays.errstate(z, over='ignore'):  # depths beyond the float32 range: inf (too far)
        return uv, arrays.astype(z[keep], np.float32)


@dataclass(frozen=True)
class ProjectionCounts:
    """How many points of a scan survive each step of :func:`prepare_points`.

    Attributes
    ----------
    in_scan : int
        Finite points in the scan.
    not_finite : int
        Points with a non-finite coordinate after the transform.
    behind : int
        Points with optical ``z <= -0.1`` m (behind the camera).
    on_plane : int
        Points with ``|z| < 0.1`` m: on the camera plane (or nearer than the projection
        takes).
    in_front : int
        Points with ``z >= 0.1`` m.
    in_image : int
        Points in front that project inside the image.
    visible : int
        Points inside the image not hidden behind nearer ones (what :func:`prepare_points`
        returns).
    """

    in_scan: int
    not_finite: int
    behind: int
    on_plane: int
    in_front: int
    in_image: int
    visible: int

    def explain(self, needed: int, transform: str = 'lidar.T_camera_lidar') -> str:
        """The step that left fewer than ``needed`` points, with the counts and what to check.

        ``transform`` names where the LiDAR-to-camera transform came from (the parameter, or
        the tf2 frames). An empty string when every step keeps ``needed`` points.
        """
        n = self.in_scan
        if n == 0:
            return 'the scan holds no finite point (check the LiDAR driver)'
        if self.in_front < needed:
            parts = [f'{count} {what}' for count, what in (
                (self.behind, 'behind it'),
                (self.on_plane, f'within {_MIN_DEPTH:g} m of the camera plane'),
                (self.not_finite, f'not finite after {transform} (coordinates near the '
                                  'float limit?)')) if count]
            return (f'{self.in_front} of {n} points in front of the camera'
                    f'{" (" + ", ".join(parts) + ")" if parts else ""}: check {transform} '
                    '(it maps LiDAR points into the camera optical frame, z forward)')
        if self.in_image < needed:
            return (f'{self.in_image} of {self.in_front} points in front of the camera fall '
                    f'inside the image ({n} in the scan): check {transform} and the '
                    'camera_info')
        if self.visible < needed:
            return (f'{self.visible} of {self.in_image} points inside the image are not hidden '
                    f'behind nearer points ({n} in the scan): check {transform}, or lower '
                    'lidar.occlusion_window')
        return ''


def projection_counts(points_lidar: np.ndarray, T_camera_lidar: np.ndarray,
                      camera: Intrinsics, out_width: int, out_height: int,
                      occlusion_window: int = 5) -> ProjectionCounts:
    """Count the points each step of :func:`prepare_points` keeps, to say why few are left.

    Same parameters as :func:`prepare_points`; costs about as much, so the node calls it only
    when a scan gave too few points for a fit.
    """
    cols, T, out_camera = _scan_columns(points_lidar, T_camera_lidar, camera, out_width,
                                        out_height)
    with np.errstate(over='ignore', invalid='ignore'):
        xyz = [_transform_row(T, cols, row) for row in range(3)]
        finite = np.isfinite(xyz[0]) & np.isfinite(xyz[1]) & np.isfinite(xyz[2])
        z = xyz[2]
        behind = int(np.count_nonzero(finite & (z <= -_MIN_DEPTH)))
        in_front = np.nonzero(finite & (z >= _MIN_DEPTH))[0]
    x, y, z = (c[in_front] for c in xyz)
    with np.errstate(over='ignore', invalid='ignore'):
        u, v, z, _ = _project(x, y, z, out_camera, _MIN_DEPTH)
    visible = int(np.count_nonzero(_occlusion_keep(u, v, z, out_camera.width,
                                                   out_camera.height, occlusion_window)))
    n = int(cols.shape[1])
    n_finite = int(np.count_nonzero(finite))
    return ProjectionCounts(in_scan=n, not_finite=n - n_finite, behind=behind,
                            on_plane=n_finite - behind - int(in_front.size),
                            in_front=int(in_front.size), in_image=int(u.size), visible=visible)
