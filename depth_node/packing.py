"""Fill ``sensor_msgs`` Image and PointCloud2 messages from numpy, fast and safely.

ROS-free: nothing here imports rclpy or sensor_msgs; the functions work on any message object
with the usual fields (duck typing), and :func:`fill_cloud` takes the PointField class.

How ``data`` is set (measured, see :func:`set_uint8_data`)
---------------------------------------------------------
rosidl_generator_py stores a ``uint8[]`` field as ``array.array('B')`` in the slot ``_data``.
The ``data`` setter copies whatever it gets with ``array.array('B', value)``: one memcpy for
``bytes`` or another ``array.array``, but one Python object per element for a numpy array (about
90 ms per MB). When the message is published or serialized, the generated C conversion
(``*_s.c``, ``convert_from_py``) reads ``data`` with the buffer protocol
(``PyObject_GetBuffer(PyBUF_SIMPLE)`` + ``PyBuffer_ToContiguous``) whenever the object supports
it, and falls back to a per-element loop otherwise; the reverse conversion always builds an
``array.array('B')``.

So the fastest correct way is one copy of the numpy buffer into a fresh ``array.array('B')``
(``frombytes`` accepts any buffer) stored directly in ``msg._data``. The message then owns
its bytes (changing or freeing the numpy array afterwards does not affect it) and holds exactly
the type the generated code produces, so ``==``, ``repr``, ``ROS_PYTHON_CHECK_FIELDS`` and any
consumer of ``msg.data`` behave as usual. Storing the numpy array itself in ``_data`` is
zero-copy and also publishes correctly, but aliases the caller's array and breaks
``msg == msg2`` (numpy's elementwise ``!=``); it would save only that one memcpy (0.55 ms for
14.7 MB on the dev VM, against 1.6 ms for ``msg.data = array.tobytes()``), so it is not used.
"""

from __future__ import annotations

import array as _array
from typing import Any

import numpy as np

from depth_node.arrays import Array, as_array, dtype_name, errstate, is_floating, is_tensor, \
    namespace
from depth_node.cloud import PackedCloud
from depth_node.encodings import IMAGE_ENCODINGS


class PackingError(ValueError):
    """An array that does not match the requested message encoding or layout."""


def set_uint8_data(msg: Any, array: np.ndarray) -> None:
    """Copy a numpy buffer into the ``uint8[]`` field ``msg.data`` (one memcpy).

    Parameters
    ----------
    msg : rosidl message
        Any message with a ``data`` field of type ``uint8[]`` (Image, PointCloud2, ...).
    array : np.ndarray
        Any array; its raw bytes are copied as they lie in memory. Non-contiguous arrays
        are made contiguous first (a second copy).

    The message owns the copy: modifying or freeing ``array`` afterwards does not change it.
    """
    buf = np.ascontiguousarray(array)
    data = _array.array('B')
    data.frombytes(buf.reshape(-1).view(np.uint8))
    if _has_data_slot(msg):
        msg._data = data  # bypass the setter's second copy; same type it would store
    else:
        msg.data = data  # fallback for message classes without the rosidl '_data' slot


def _has_data_slot(msg: Any) -> bool:
    """True for rosidl_generator_py messages: a ``data`` property backed by ``_data``."""
    prop = getattr(type(msg), 'data', None)
    return isinstance(prop, property) and '_data' in getattr(type(msg), '__slots__', ())


def fill_image(msg: Any, array: np.ndarray, encoding: str) -> None:
    """Set ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step`` and ``data``.

    Parameters
    ----------
    msg : sensor_msgs/Image
        Header untouched (the caller copies the input image's header).
    array : np.ndarray
        The samples as they go into ``data``: ``(H, W)`` for a single-channel encoding, else
        ``(H, W, channels)``, of the encoding's sample type (both from
        :data:`~depth_node.encodings.IMAGE_ENCODINGS`): e.g. ``(H, W)`` float32 for ``32FC1``
        (metres, NaN invalid), ``(H, W)`` uint16 for ``16UC1`` (millimetres, 0 invalid),
        ``(H, W, 3)`` uint8 for ``rgb8``, ``(H, W, 2)`` uint8 for ``yuv422``. Data is written
        little-endian (``is_bigendian = 0``).
    encoding : str
        The sensor_msgs image encoding, a key of ``IMAGE_ENCODINGS``.
    """
    if encoding not in IMAGE_ENCODINGS:
        raise PackingError(f'unsupported encoding {encoding!r}; use one of '
                           f'{", ".join(IMAGE_ENCODINGS)}')
    dtype, channels = IMAGE_ENCODINGS[encoding].dtype, IMAGE_ENCODINGS[encoding].channels
    a = np.asarray(array)
    shape_ok = (a.ndim == 2 and channels == 1) or (a.ndim == 3 and a.shape[2] == channels)
    if not shape_ok or a.dtype.kind != dtype.kind or a.dtype.itemsize != dtype.itemsize:
        want = '(H, W)' if channels == 1 else f'(H, W, {channels})'
        raise PackingError(f'{encoding} needs a {want} {dtype.name} array, got {a.shape} '
                           f'{a.dtype}')
    a = np.ascontiguousarray(a, dtype=dtype)  # converts a big-endian array, else no copy
    height, width = a.shape[:2]
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = width * channels * dtype.itemsize
    set_uint8_data(msg, a)


def fill_cloud(msg: Any, cloud: PackedCloud, point_field_type: type) -> None:
    """Fill a ``sensor_msgs/PointCloud2`` from a :class:`~depth_node.cloud.PackedCloud`.

    Sets ``height``, ``width``, ``fields`` (built with ``point_field_type(name=, offset=,
    datatype=, count=)``, i.e. ``sensor_msgs.msg.PointField``), ``is_bigendian = False``,
    ``point_step``, ``row_step``, ``data`` and ``is_dense``. Header untouched. ``cloud.data``
    is on the host also for a cloud packed from ``torch.Tensor`` s on a GPU
    (:func:`~depth_node.cloud.pack_cloud` made the one device-to-host copy); this is the one
    host copy into the message.
    """
    if cloud.data.size != cloud.row_step * cloud.height:
        raise PackingError(f'cloud data has {cloud.data.size} bytes, expected row_step * height '
                           f'= {cloud.row_step * cloud.height}')
    msg.height = cloud.height
    msg.width = cloud.width
    msg.fields = [point_field_type(name=name, offset=offset, datatype=datatype, count=count)
                  for name, offset, datatype, count in cloud.fields]
    msg.is_bigendian = False
    msg.point_step = cloud.point_step
    msg.row_step = cloud.row_step
    msg.is_dense = cloud.is_dense
    set_uint8_data(msg, cloud.data)


def depth_to_uint16_mm(depth: Array) -> Array:
    """Metric depth to a ``16UC1`` image (REP 118 / REP 117).

    Parameters
    ----------
    depth : np.ndarray or torch.Tensor
        ``(H, W)`` float metres along the optical axis. A tensor is converted where it lives
        (a frame kept on the GPU: half the bytes to copy back).

    Returns
    -------
    np.ndarray or torch.Tensor
        ``(H, W)`` uint16 millimetres, rounded to nearest (the same kind and device as
        ``depth``). 0 (invalid) where the depth is NaN, infinite, not positive, rounds to 0 mm,
        or exceeds the 65535 mm the type can hold (never clipped to 65535).
    """
    d = as_array(depth)
    if not is_floating(d):
        raise PackingError(f'depth must be float metres, got dtype {dtype_name(d)}')
    xp = namespace(d)
    with errstate(d, invalid='ignore', over='ignore'):
        mm = xp.round(d * 1000.0)  # half to even, as np.rint; float32 stays float32
        valid = (mm > 0) & (mm <= 65535)  # NaN compares false
    if is_tensor(d):
        # torch has no uint16 arithmetic on every device: int32, then the 16-bit pattern
        return xp.where(valid, mm, 0).to(xp.int32).to(xp.uint16)
    out = np.zeros(d.shape, dtype=np.uint16)
    np.copyto(out, mm, casting='unsafe', where=valid)
    return out
