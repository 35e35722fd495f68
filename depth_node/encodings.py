"""The ``sensor_msgs`` wire formats, in one place: image encodings and PointField datatypes.

ROS-free (numpy only). Every module that reads or writes these formats imports its table from
here: :mod:`depth_node.image_codec` decodes with :data:`IMAGE_ENCODINGS`,
:mod:`depth_node.packing` and :mod:`depth_node.messages` pack and read images with it;
:mod:`depth_node.cloud` writes and :mod:`depth_node.lidar` reads PointCloud2 fields with
:data:`POINTFIELD_DATATYPES`. ``test/test_encodings.py`` pins both tables against the packing /
decoding round trip of every entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageEncoding:
    """How one ``sensor_msgs/Image`` encoding lays its pixels out in ``data``.

    Attributes
    ----------
    name : str
        The encoding string (``sensor_msgs/image_encodings.hpp``).
    dtype : np.dtype
        Type of one sample, little-endian (``is_bigendian`` flips the multi-byte ones).
    channels : int
        Samples per pixel. YUV 4:2:2 has 2 (Y, then U or V alternately); a Bayer mosaic has 1.
        A pixel takes ``channels * dtype.itemsize`` bytes (:attr:`bytes_per_pixel`).
    colour : str
        How :func:`~depth_node.image_codec.decode_image` makes RGB of it: ``'channels'`` (pick
        the samples ``order`` as R, G, B; 16-bit samples keep their high byte), ``'yuv422'``
        (``order``: byte offsets of Y0, U and V inside each 4-byte pixel pair), ``'bayer'``
        (``order``: the top-left 2x2 colour-filter cell row by row, as RGB channel indices), or
        ``''``: not a colour image, refused there.
    order : tuple of int
        See ``colour``; empty when ``colour`` is ``''``.
    depth : bool
        :func:`~depth_node.image_codec.decode_relative_depth` accepts it (single channel).
    zero_is_invalid : bool
        For ``depth``: the value 0 means "no measurement" (16-bit depth, REP 117/118) and
        decodes to NaN.
    """

    name: str
    dtype: np.dtype
    channels: int
    colour: str = ''
    order: tuple[int, ...] = ()
    depth: bool = False
    zero_is_invalid: bool = False

    @property
    def bytes_per_pixel(self) -> int:
        """Bytes one pixel takes in ``data`` (2 for the YUV 4:2:2 encodings)."""
        return self.channels * self.dtype.itemsize


def _table(*entries: ImageEncoding) -> dict[str, ImageEncoding]:
    return {entry.name: entry for entry in entries}


_U8, _U16 = np.dtype('u1'), np.dtype('<u2')
_RGB, _BGR, _GREY = (0, 1, 2), (2, 1, 0), (0, 0, 0)

IMAGE_ENCODINGS: dict[str, ImageEncoding] = _table(
    # depth and other single-channel values
    ImageEncoding('32FC1', np.dtype('<f4'), 1, depth=True),
    ImageEncoding('64FC1', np.dtype('<f8'), 1, depth=True),
    ImageEncoding('16UC1', _U16, 1, depth=True, zero_is_invalid=True),
    # colour and grey, one sample per channel (8UC3 / 8UC4 are OpenCV's BGR / BGRA order)
    ImageEncoding('rgb8', _U8, 3, 'channels', _RGB),
    ImageEncoding('bgr8', _U8, 3, 'channels', _BGR),
    ImageEncoding('8UC3', _U8, 3, 'channels', _BGR),
    ImageEncoding('rgba8', _U8, 4, 'channels', _RGB),
    ImageEncoding('bgra8', _U8, 4, 'channels', _BGR),
    ImageEncoding('8UC4', _U8, 4, 'channels', _BGR),
    ImageEncoding('mono8', _U8, 1, 'channels', _GREY, depth=True),
    ImageEncoding('8UC1', _U8, 1, 'channels', _GREY, depth=True),
    ImageEncoding('mono16', _U16, 1, 'channels', _GREY, depth=True, zero_is_invalid=True),
    ImageEncoding('rgb16', _U16, 3, 'channels', _RGB),
    ImageEncoding('bgr16', _U16, 3, 'channels', _BGR),
    ImageEncoding('rgba16', _U16, 4, 'channels', _RGB),
    ImageEncoding('bgra16', _U16, 4, 'channels', _BGR),
    # YUV 4:2:2: U Y0 V Y1 (uyvy) and Y0 U Y1 V (yuyv)
    ImageEncoding('yuv422', _U8, 2, 'yuv422', (1, 0, 2)),
    ImageEncoding('uyvy', _U8, 2, 'yuv422', (1, 0, 2)),
    ImageEncoding('yuv422_yuy2', _U8, 2, 'yuv422', (0, 1, 3)),
    ImageEncoding('yuyv', _U8, 2, 'yuv422', (0, 1, 3)),
    # Bayer mosaics, 8 and 16 bits
    *(ImageEncoding(f'bayer_{cell}{bits}', _U8 if bits == 8 else _U16, 1, 'bayer',
                    tuple('rgb'.index(c) for c in cell))
      for cell in ('rggb', 'bggr', 'gbrg', 'grbg') for bits in (8, 16)),
)
"""Every image encoding the package reads or writes, by name."""


# sensor_msgs/PointField datatype codes
POINTFIELD_INT8 = 1
POINTFIELD_UINT8 = 2
POINTFIELD_INT16 = 3
POINTFIELD_UINT16 = 4
POINTFIELD_INT32 = 5
POINTFIELD_UINT32 = 6
POINTFIELD_FLOAT32 = 7
POINTFIELD_FLOAT64 = 8

POINTFIELD_DATATYPES: dict[int, np.dtype] = {
    POINTFIELD_INT8: np.dtype(np.int8),
    POINTFIELD_UINT8: np.dtype(np.uint8),
    POINTFIELD_INT16: np.dtype(np.int16),
    POINTFIELD_UINT16: np.dtype(np.uint16),
    POINTFIELD_INT32: np.dtype(np.int32),
    POINTFIELD_UINT32: np.dtype(np.uint32),
    POINTFIELD_FLOAT32: np.dtype(np.float32),
    POINTFIELD_FLOAT64: np.dtype(np.float64),
}
"""``sensor_msgs/PointField`` datatype codes to numpy dtypes (native byte order)."""
