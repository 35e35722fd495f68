"""Decode ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` payloads into numpy arrays.

ROS-free: every function takes the message fields (or plain bytes) and returns numpy arrays, so
the node stays thin and the decoding is unit-tested without rclpy.

Colour images come out as ``(height, width, 3)`` uint8 RGB, C-contiguous and writable; the result
never aliases the message buffer. Raw payloads are read through zero-copy ``np.frombuffer`` views
(row padding and 16-bit low bytes are skipped by strides, not copied) and written once into the
result; YUV and Bayer also need float32 / uint16 working arrays. Conversions:

* ``rgb8``, ``bgr8``, ``8UC3`` (OpenCV order, read as ``bgr8``), ``rgba8``, ``bgra8``, ``8UC4``
  (read as ``bgra8``): channels reordered, alpha dropped (not composited).
* ``mono8``, ``8UC1``: grey replicated into R, G and B.
* 16-bit ``mono16``, ``rgb16``, ``bgr16``, ``rgba16``, ``bgra16``: each sample keeps its high
  byte (``value >> 8``, a fixed scale, so brightness does not change from frame to frame as it
  would with min-max scaling). ``is_bigendian`` picks which byte that is.
* ``yuv422`` / ``uyvy`` (byte order U Y0 V Y1) and ``yuv422_yuy2`` / ``yuyv`` (Y0 U Y1 V): ITU-R
  BT.601 limited range (Y in 16..235, chroma centred on 128), the matrix OpenCV and so cv_bridge
  use for these encodings; each chroma pair is shared by two pixels; width must be even.
* ``bayer_rggb8``, ``bayer_bggr8``, ``bayer_gbrg8``, ``bayer_grbg8`` (and the ``16`` variants,
  reduced to their high byte first): bilinear demosaic at full resolution. A missing colour is
  the mean of its nearest samples (green: the 4 edge neighbours; red and blue: the 2 edge or the
  4 corner neighbours), rounded half up. Beyond the border the mosaic is mirrored about the edge
  pixels (index -1 reads index 1), which keeps the colour pattern. Needs at least 2 x 2 pixels.

Single-channel depth-like images (another node's output) decode to ``(height, width)`` float32
with :func:`decode_relative_depth`; compressed JPEG and PNG with :func:`decode_compressed`.
Every failure raises :class:`ImageDecodeError` with a message that says what is wrong.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
import functools
import io
import math
import operator
from typing import Union

import numpy as np

from depth_node.encodings import IMAGE_ENCODINGS
from depth_node.text import shorten

ByteData = Union[bytes, bytearray, memoryview, array.array, np.ndarray]


class ImageDecodeError(ValueError):
    """An image payload that cannot be decoded: bad encoding, size, step or bytes."""


SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(
    name for name, enc in IMAGE_ENCODINGS.items() if enc.colour)
"""Encodings :func:`decode_image` accepts (those of
:data:`~depth_node.encodings.IMAGE_ENCODINGS` with a ``colour`` rule)."""

SUPPORTED_DEPTH_ENCODINGS: tuple[str, ...] = tuple(
    name for name, enc in IMAGE_ENCODINGS.items() if enc.depth)
"""Encodings :func:`decode_relative_depth` accepts (single-channel ``depth`` ones)."""

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest compressed image (width x height) :func:`decode_compressed` decodes by default."""

REDUCED_DECODE_FACTOR = 2
"""A JPEG over ``max_pixels`` (``oversize='downscale'``) is decoded at the largest of the
scales 1, 1/2, 1/4, 1/8 that gives at most this many times ``max_pixels`` pixels, then
box-filtered down to the limit."""

OVERSIZE_MODES = ('refuse', 'downscale')
"""What :func:`decode_compressed` does with an image over ``max_pixels``."""

_MAX_JPEG_SEGMENTS = 1000  # marker segments before the first scan; real files have < 30
_MAX_JPEG_JUNK = 4096      # stray bytes between markers (Pillow skips them one at a time)

_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'

# BT.601 limited range, YUV -> RGB (the ITUR_BT_601 constants of OpenCV's YUV422 conversion)
_Y_GAIN = 1.164
_V_TO_R = 1.596
_U_TO_G = -0.391
_V_TO_G = -0.813
_U_TO_B = 2.018


def bytes_per_pixel(encoding: str) -> int:
    """Bytes one pixel takes in ``data`` for ``encoding`` (2 for the YUV 4:2:2 encodings).

    Knows every encoding of :data:`~depth_node.encodings.IMAGE_ENCODINGS`; raises
    :class:`ImageDecodeError` for any other.
    """
    try:
        return IMAGE_ENCODINGS[encoding].bytes_per_pixel
    except (KeyError, TypeError):
        raise ImageDecodeError(_unknown_encoding(encoding, tuple(IMAGE_ENCODINGS))) from None


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                 data: ByteData) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/Image`` into RGB.

    Parameters
    ----------
    encoding : str
        One of :data:`SUPPORTED_ENCODINGS`; the module docstring says how each converts.
    height, width : int
        Image size in pixels, both > 0.
    step : int
        Bytes per row in ``data``, at least ``width * bytes_per_pixel(encoding)``; the extra
        bytes at the end of each row are padding and ignored.
    is_bigendian : bool
        Byte order of the 16-bit encodings; ignored for 8-bit ones.
    data : bytes, bytearray, memoryview, array.array or 1-D uint8 numpy array
        Exactly ``step * height`` bytes (rclpy hands over an ``array.array('B')``).

    Returns
    -------
    np.ndarray
        ``(height, width, 3)`` uint8 RGB, C-contiguous, writable, never a view of ``data``.

    Raises
    ------
    ImageDecodeError
        Unknown encoding, empty size, ``step`` too small, ``data`` too short or too long, odd
        width for YUV 4:2:2, Bayer image smaller than 2 x 2.
    """
    if encoding not in SUPPORTED_ENCODINGS:
        raise ImageDecodeError(_unknown_encoding(encoding, SUPPORTED_ENCODINGS))
    rows = _row_view(encoding, height, width, step, data)
    enc = IMAGE_ENCODINGS[encoding]
    height, width = rows.shape[0], rows.shape[1] // enc.bytes_per_pixel
    if enc.colour == 'yuv422':
        if width % 2:
            raise ImageDecodeError(
                f'{encoding}: width {width} is odd; YUV 4:2:2 pairs of pixels share their '
                f'chroma, so the width must be even')
        return _yuv422_to_rgb(rows.reshape(height, width // 2, 4), *enc.order)
    sample_bytes = enc.dtype.itemsize
    high = _high_byte(sample_bytes, is_bigendian)
    if enc.colour == 'bayer':
        if height < 2 or width < 2:
            raise ImageDecodeError(
                f'{encoding}: {width}x{height} image is smaller than one 2x2 Bayer cell')
        return _demosaic_bilinear(rows.reshape(height, width, sample_bytes)[..., high], enc.order)
    samples = rows.reshape(height, width, enc.channels, sample_bytes)
    return _pick_channels(samples[..., high], enc.order)


def decode_relative_depth(encoding: str, height: int, width: int, step: int,
                          is_bigendian: bool, data: ByteData) -> np.ndarray:
    """Decode a single-channel depth-like ``sensor_msgs/Image`` to float32.

    The values are not rescaled: ``32FC1`` and ``64FC1`` keep their floats (NaN and infinities
    included; 64-bit values beyond the float32 range become infinities), integer encodings
    become the float of the raw value. For ``16UC1`` and ``mono16``, 0 means "no measurement"
    (REP 117/118 convention for 16-bit depth) and becomes NaN. For ``mono8`` and ``8UC1``, 0
    stays 0.0: 8-bit relative depth / disparity maps use 0 as a real value (farthest), not as a
    marker for missing data.

    Parameters are those of :func:`decode_image`; ``encoding`` must be one of
    :data:`SUPPORTED_DEPTH_ENCODINGS`.

    Returns
    -------
    np.ndarray
        ``(height, width)`` float32, C-contiguous, writable, never a view of ``data``.

    Raises
    ------
    ImageDecodeError
        As :func:`decode_image`.
    """
    if encoding not in SUPPORTED_DEPTH_ENCODINGS:
        raise ImageDecodeError(_unknown_encoding(encoding, SUPPORTED_DEPTH_ENCODINGS))
    rows = _row_view(encoding, height, width, step, data)
    enc = IMAGE_ENCODINGS[encoding]
    # A strided view of the bytes as the sample type (no copy, alignment does not matter),
    # converted with the single copy astype makes.
    with np.errstate(over='ignore'):  # 64FC1 beyond the float32 range becomes +-inf
        values = rows.view(enc.dtype.newbyteorder('>' if is_bigendian else '<')).astype(
            np.float32)
    if enc.zero_is_invalid:
        values[values == 0] = np.nan
    return values


@dataclass(frozen=True)
class CompressedPlan:
    """How :func:`decode_compressed` will decode a compressed image, read from its header.

    Attributes
    ----------
    container : str
        ``'JPEG'`` or ``'PNG'``.
    width, height : int
        The image's size in its header, pixels.
    out_width, out_height : int
        The size :func:`decode_compressed` returns: the header's, or with
        ``oversize='downscale'`` the :func:`limited_size` of the decoded size (within a pixel
        of the header size's, as both keep the aspect ratio).
    jpeg_scale : int
        1, 2, 4 or 8: a JPEG is decoded at ``ceil(width / jpeg_scale)`` x
        ``ceil(height / jpeg_scale)`` (always 1 for PNG).
    """

    container: str
    width: int
    height: int
    out_width: int
    out_height: int
    jpeg_scale: int = 1


def plan_compressed(fmt: str, data: ByteData, max_pixels: int = DEFAULT_MAX_PIXELS,
                    oversize: str = 'refuse') -> CompressedPlan:
    """Read a JPEG or PNG header and decide how (and whether) it is decoded; no pixel decoded.

    The size comes from the PNG ``IHDR`` chunk or the JPEG frame header (``SOFn``); costs a
    few microseconds, so the node calls it on arrival. An image of up to ``max_pixels`` is
    decoded as it is. A larger one is refused with ``oversize='refuse'``; with
    ``'downscale'`` a baseline JPEG (``SOF0`` / ``SOF1`` with all components in its first
    scan) is decoded at the largest scale of 1, 1/2, 1/4, 1/8 that gives at most
    :data:`REDUCED_DECODE_FACTOR` x ``max_pixels`` pixels (Pillow's ``draft``, libjpeg's DCT
    scaling: the full-size image is never allocated), then box-filtered to
    :func:`limited_size`. Images that cannot be reduced while decoding (PNG, progressive or
    multi-scan JPEG: libjpeg buffers the whole image's coefficients for those) are refused
    over ``max_pixels``, as is a JPEG that is still too large at 1/8 scale.

    Parameters
    ----------
    fmt, data, max_pixels : as :func:`decode_compressed`
    oversize : str
        ``'refuse'`` or ``'downscale'`` (:data:`OVERSIZE_MODES`).

    Raises
    ------
    ImageDecodeError
        ``compressedDepth``, a container other than JPEG / PNG, a header that does not parse,
        an empty size, or an image over the limits above (the message says which and what to
        set).
    """
    if oversize not in OVERSIZE_MODES:
        raise ImageDecodeError(f'oversize must be one of {", ".join(OVERSIZE_MODES)}, got '
                               f'{shorten(oversize)}')
    if 'compresseddepth' in str(fmt).lower():
        raise ImageDecodeError(
            f'format {shorten(fmt)} is a compressedDepth image (a depth header in front of '
            f'PNG/RVL data); subscribe to the raw depth topic instead')
    buf = _as_uint8(data)
    head = buf[:8].tobytes()
    if head.startswith(_JPEG_MAGIC):
        container = 'JPEG'
        width, height, reducible = _jpeg_header(fmt, buf)
    elif head.startswith(_PNG_MAGIC):
        container = 'PNG'
        width, height = _png_header(fmt, buf)
        reducible = False
    else:
        raise ImageDecodeError(
            f'format {shorten(fmt)}: {buf.size} bytes starting with '
            f'{head.hex(" ") or "nothing"} are neither JPEG nor PNG; only those two are '
            'supported')
    pixels = width * height
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f'{container} header says {width}x{height}: an empty image')
    hard_limit = _pillow_pixel_limit()
    if pixels > hard_limit:
        raise ImageDecodeError(
            f'{container} image is {width}x{height} = {pixels} pixels, more than Pillow decodes '
            f'without a decompression-bomb warning ({hard_limit}); refusing to decode it')
    if max_pixels <= 0 or pixels <= max_pixels:
        return CompressedPlan(container, width, height, width, height)
    if oversize == 'refuse':
        raise ImageDecodeError(
            f'{container} image is {width}x{height} = {pixels} pixels, more than '
            f'max_pixels={max_pixels}; refusing to decode it')
    if not reducible:
        what = 'PNG' if container == 'PNG' else 'a progressive or multi-scan JPEG'
        raise ImageDecodeError(
            f'{container} image is {width}x{height} = {pixels} pixels, more than '
            f'max_pixels={max_pixels}, and {what} cannot be reduced while decoding (it would '
            f'be decoded in full); raise max_pixels to {pixels} or send a smaller image '
            '(or a baseline JPEG)')
    for scale in (1, 2, 4, 8):
        if scale > min(width, height):
            break
        dw, dh = -(-width // scale), -(-height // scale)
        if dw * dh <= REDUCED_DECODE_FACTOR * max_pixels:
            out_h, out_w = limited_size(dh, dw, max_pixels)
            return CompressedPlan(container, width, height, out_w, out_h, scale)
    raise ImageDecodeError(
        f'JPEG image is {width}x{height} = {pixels} pixels; even decoded at 1/{scale} scale it '
        f'has {dw * dh} pixels, more than {REDUCED_DECODE_FACTOR} x max_pixels={max_pixels}; '
        'raise max_pixels or send a smaller image')


def decode_compressed(fmt: str, data: ByteData, max_pixels: int = DEFAULT_MAX_PIXELS,
                      oversize: str = 'refuse') -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to RGB.

    The container is told by the data's magic bytes, not by ``fmt`` (``'jpeg'``, ``'png'``,
    ``'rgb8; jpeg compressed bgr8'``, ... all describe a standard file, already in RGB order
    once decoded); ``fmt`` is only checked for ``compressedDepth``, a depth format with its own
    header that this function refuses. Grey images are replicated into R, G and B, alpha is
    dropped, 16-bit PNG samples keep their high byte (as :func:`decode_image` does for
    ``mono16``).

    Memory is bounded by ``max_pixels``, not by what the header claims: the size is read from
    the header first and :func:`plan_compressed` decides. Beyond the result, decoding holds
    Pillow's image (4 bytes a pixel for RGB) of at most ``max_pixels`` pixels, or with
    ``oversize='downscale'`` of at most :data:`REDUCED_DECODE_FACTOR` x ``max_pixels`` (a
    JPEG reduced while decoding; released after the first of the two box-filter passes);
    a progressive JPEG adds its coefficient buffer (up to 6 bytes a pixel, within
    ``max_pixels``). Measured peak: at most 4.6 x the size of a ``max_pixels`` RGB image
    (``test_decoding_memory_is_bounded_by_max_pixels``).

    Parameters
    ----------
    fmt : str
        The message's ``format`` field.
    data : bytes-like
        The message's ``data`` field.
    max_pixels : int
        Largest image (width x height) returned; <= 0 lifts this limit, but Pillow's own
        bound (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million pixels) still applies.
    oversize : str
        ``'refuse'`` (default): an image over ``max_pixels`` raises. ``'downscale'``: a baseline
        JPEG over it is decoded at reduced scale and box-filtered to :func:`limited_size`
        (:func:`plan_compressed` says the size); PNG and progressive JPEG over it still raise.

    Returns
    -------
    np.ndarray
        ``(height, width, 3)`` uint8 RGB, C-contiguous, writable; the header's size, or
        ``plan_compressed(...).out_height, out_width``.

    Raises
    ------
    ImageDecodeError
        Anything :func:`plan_compressed` refuses, or bytes that do not decode.
    """
    from PIL import Image, UnidentifiedImageError

    plan = plan_compressed(fmt, data, max_pixels, oversize)
    container = plan.container
    buf = _as_uint8(data)
    try:
        with Image.open(io.BytesIO(buf), formats=[container]) as im:
            if im.size != (plan.width, plan.height):  # our header reader and Pillow disagree
                raise ImageDecodeError(
                    f'format {shorten(fmt)}: {container} header is ambiguous (size '
                    f'{plan.width}x{plan.height} or {im.size[0]}x{im.size[1]})')
            out_size = (plan.out_width, plan.out_height)
            if plan.jpeg_scale > 1:
                # draft picks the largest of 8, 4, 2, 1 that fits min(W // w, H // h): with
                # w = W // scale (and h alike) that is exactly ``scale``
                im.draft(None, (plan.width // plan.jpeg_scale,
                                plan.height // plan.jpeg_scale))
                expected = (-(-plan.width // plan.jpeg_scale),
                            -(-plan.height // plan.jpeg_scale))
                if im.size != expected:
                    raise ImageDecodeError(
                        f'format {shorten(fmt)}: JPEG did not reduce to {expected[0]}x'
                        f'{expected[1]} while decoding (got {im.size[0]}x{im.size[1]})')
            im.load()
            if im.size == out_size:
                return _pil_to_rgb(im)
            if im.size[0] != out_size[0] and im.size[1] != out_size[1]:
                # Box filter in two passes, as Pillow's resize does (horizontal first, 8-bit
                # in between, so the result is the same), releasing the decoded image after
                # the first: it and the intermediate image are never held with a third.
                narrow = im.resize((out_size[0], im.size[1]), Image.Resampling.BOX)
                im.close()  # releases the decoded image's memory now
                im = narrow
            reduced = im.resize(out_size, Image.Resampling.BOX)
            im.close()
        return _pil_to_rgb(reduced)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:  # its message names the BytesIO object, not the fault
        raise ImageDecodeError(
            f'format {shorten(fmt)}: {buf.size} bytes start like {container} but its header '
            'does not parse') from exc
    except Exception as exc:  # noqa: BLE001
        # Pillow reports corrupt input through many types (OSError, SyntaxError, EOFError,
        # struct.error, ValueError, DecompressionBombError, ...); all mean "bad bytes" here.
        raise ImageDecodeError(
            f'format {shorten(fmt)}: {buf.size} bytes of {container} data do not decode: '
            f'{type(exc).__name__}: {shorten(str(exc), 120)}') from exc


def limited_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """``(height, width)`` of a ``height`` x ``width`` image downscaled to ``max_pixels``.

    Both sides are scaled by ``sqrt(max_pixels / (height * width))`` and rounded down (kept
    >= 1 pixel; for extreme aspect ratios the long side is cut further so that the bound
    always holds). The size itself when it is within the limit or ``max_pixels <= 0``.
    """
    if max_pixels <= 0 or height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    new_h = max(1, min(max_pixels, int(height * scale)))
    new_w = max(1, min(max_pixels // new_h, int(width * scale)))
    return new_h, new_w


def limit_pixels(rgb: np.ndarray, max_pixels: int) -> np.ndarray:
    """Downscale ``rgb`` so that height x width <= ``max_pixels``, keeping the aspect ratio.

    Uses an area (box) filter: each output pixel is the mean of the input pixels it covers.
    The size is :func:`limited_size`: both sides scaled by the same factor and rounded down.

    Parameters
    ----------
    rgb : np.ndarray
        ``(height, width, 3)`` uint8.
    max_pixels : int
        Largest allowed pixel count; <= 0 means no limit.

    Returns
    -------
    np.ndarray
        ``rgb`` itself when it is within the limit, otherwise a new ``(h, w, 3)`` uint8 array.
    """
    from PIL import Image

    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3):
        raise ImageDecodeError(
            f'limit_pixels takes an (H, W, 3) uint8 array, not {_describe(rgb)}')
    height, width = rgb.shape[:2]
    new_h, new_w = limited_size(height, width, max_pixels)
    if (new_h, new_w) == (height, width):
        return rgb
    resized = Image.fromarray(np.ascontiguousarray(rgb)).resize(
        (new_w, new_h), Image.Resampling.BOX)
    return np.array(resized)


def _unknown_encoding(encoding: object, supported: tuple[str, ...]) -> str:
    return f'unsupported encoding {shorten(encoding)}; supported: {", ".join(supported)}'


def _pillow_pixel_limit() -> int:
    """Pixels above which ``Image.open`` warns of a decompression bomb (``MAX_IMAGE_PIXELS``,
    89.5 million by default; it raises from twice that)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else 2 ** 62


def _header_error(fmt: object, container: str, detail: str) -> ImageDecodeError:
    return ImageDecodeError(f'format {shorten(fmt)}: bytes start like {container} but its '
                            f'header does not parse: {detail}')


def _png_header(fmt: object, buf: np.ndarray) -> tuple[int, int]:
    """Width and height from the ``IHDR`` chunk, which must come first (PNG spec 5.6)."""
    if buf.size < 33:
        raise _header_error(fmt, 'PNG', f'{buf.size} bytes, an IHDR chunk needs 33')
    head = buf[8:24].tobytes()
    if head[4:8] != b'IHDR' or int.from_bytes(head[:4], 'big') != 13:
        raise _header_error(fmt, 'PNG', 'the first chunk is not a 13-byte IHDR')
    return int.from_bytes(head[8:12], 'big'), int.from_bytes(head[12:16], 'big')


# JPEG frame headers (start-of-frame markers) and those libjpeg decodes at reduced scale
# without a whole-image coefficient buffer: baseline and extended sequential Huffman.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SEQUENTIAL_SOF = frozenset({0xC0, 0xC1})
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RSTn: no length


def _jpeg_header(fmt: object, buf: np.ndarray) -> tuple[int, int, bool]:
    """Width, height and whether the JPEG can be decoded at reduced scale within its size.

    Walks the marker segments after SOI up to the first scan (SOS), as Pillow does (the last
    frame header before it counts; stray bytes between markers are skipped, up to
    ``_MAX_JPEG_JUNK``). Reducible: a sequential frame (``SOF0`` / ``SOF1``) whose first scan
    holds all its components; a progressive, lossless, arithmetic or non-interleaved JPEG
    makes libjpeg keep the whole image's coefficients, whatever the output scale.
    """
    data = memoryview(buf)  # no copy; indexing gives ints, several times faster than numpy's
    n = len(data)
    i, junk, frame = 2, 0, None
    for _ in range(_MAX_JPEG_SEGMENTS):
        while i < n and data[i] != 0xFF:  # stray bytes
            i += 1
            junk += 1
            if junk > _MAX_JPEG_JUNK:
                raise _header_error(fmt, 'JPEG', f'more than {_MAX_JPEG_JUNK} stray bytes '
                                    'between markers')
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _STANDALONE or marker == 0x00:
            continue
        if marker == 0xD9:
            raise _header_error(fmt, 'JPEG', 'end of image before any scan')
        if i + 2 > n:
            break
        length = data[i] << 8 | data[i + 1]
        if length < 2 or i + length > n:
            raise _header_error(fmt, 'JPEG', f'segment 0xFF{marker:02X} of length {length} at '
                                f'byte {i - 2} does not fit in {n} bytes')
        if marker in _SOF_MARKERS:
            if length < 8:
                raise _header_error(fmt, 'JPEG', f'frame header of {length} bytes')
            height = data[i + 3] << 8 | data[i + 4]
            width = data[i + 5] << 8 | data[i + 6]
            frame = (marker, width, height, data[i + 7])
        elif marker == 0xDA:
            if frame is None:
                raise _header_error(fmt, 'JPEG', 'a scan before any frame header')
            sof, width, height, components = frame
            in_scan = data[i + 2] if length > 2 else 0
            return width, height, sof in _SEQUENTIAL_SOF and in_scan == components
        i += length
    else:
        raise _header_error(fmt, 'JPEG', f'more than {_MAX_JPEG_SEGMENTS} segments before '
                            'the first scan')
    raise _header_error(fmt, 'JPEG', 'it ends before the first scan' if frame else
                        'no frame header')


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f'a {value.dtype} array of shape {value.shape}'
    return f'a {type(value).__name__}'


def _as_uint8(data: ByteData) -> np.ndarray:
    """Zero-copy flat uint8 view of a bytes-like ``data``."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise ImageDecodeError(f'data must be 1-D uint8, got {_describe(data)}')
        return data
    if isinstance(data, str):
        raise ImageDecodeError('data must be bytes-like, got a str')
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise ImageDecodeError(f'data must be bytes-like, got {_describe(data)}: {exc}') from exc


def _as_size(name: str, value: object) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ImageDecodeError(f'{name} must be an integer, got {_describe(value)}') from None


def _row_view(encoding: str, height: int, width: int, step: int, data: ByteData) -> np.ndarray:
    """Check the geometry against ``data``; return its ``(height, width * bpp)`` uint8 view."""
    height, width, step = (_as_size(name, value) for name, value in
                           (('height', height), ('width', width), ('step', step)))
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'{encoding}: empty image {width}x{height} (width x height)')
    row_bytes = width * bytes_per_pixel(encoding)
    if step < row_bytes:
        raise ImageDecodeError(
            f'{encoding}: step {step} is smaller than width {width} x '
            f'{bytes_per_pixel(encoding)} bytes per pixel = {row_bytes}')
    buf = _as_uint8(data)
    expected = step * height
    if buf.size != expected:
        how = 'short' if buf.size < expected else 'long'
        raise ImageDecodeError(
            f'{encoding}: data is {buf.size} bytes, step {step} x height {height} needs '
            f'{expected}: {abs(buf.size - expected)} bytes too {how}')
    return buf.reshape(height, step)[:, :row_bytes]


def _high_byte(sample_bytes: int, is_bigendian: bool) -> int:
    """Index of the byte holding ``value >> 8`` of a 16-bit sample (0 for 8-bit samples)."""
    return 0 if sample_bytes == 1 or is_bigendian else 1


def _pick_channels(samples: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """``(H, W, C)`` uint8 (any strides) -> new ``(H, W, 3)`` with channels ``order``."""
    rgb = np.empty(samples.shape[:2] + (3,), dtype=np.uint8)
    if order == (0, 1, 2) and samples.shape[2] == 3 and samples.strides[1:] == (3, 1):
        # rgb8: pixels in order, one block copy (a single memcpy without row padding): about
        # 10x faster than three strided channel copies (1280x720: 0.06-0.08 ms against 0.76).
        np.copyto(rgb, samples)
        return rgb
    # Three strided channel copies: several times faster than copying a [..., ::-1] view or
    # broadcasting a grey channel.
    for out_channel, in_channel in enumerate(order):
        rgb[..., out_channel] = samples[..., in_channel]
    return rgb


def _yuv422_to_rgb(pairs: np.ndarray, y0: int, u: int, v: int) -> np.ndarray:
    """``(H, W/2, 4)`` bytes of pixel pairs -> ``(H, W, 3)`` RGB, BT.601 limited range."""
    height, half_width = pairs.shape[:2]
    luma = pairs[..., y0::2].astype(np.float32)  # (H, W/2, 2): Y0, Y1
    luma -= 16.0
    luma *= _Y_GAIN
    luma += 0.5  # rounds to nearest when the uint8 cast below truncates
    cb = pairs[..., u].astype(np.float32) - 128.0
    cr = pairs[..., v].astype(np.float32) - 128.0
    chroma = (_V_TO_R * cr, _U_TO_G * cb + _V_TO_G * cr, _U_TO_B * cb)
    rgb = np.empty((height, half_width, 2, 3), dtype=np.uint8)
    channel = np.empty_like(luma)
    for index, offset in enumerate(chroma):
        np.add(luma, offset[..., None], out=channel)
        np.clip(channel, 0.0, 255.0, out=channel)
        rgb[..., index] = channel
    return rgb.reshape(height, 2 * half_width, 3)


def _demosaic_bilinear(raw: np.ndarray, pattern: tuple[int, ...]) -> np.ndarray:
    """Bilinear demosaic of an ``(H, W)`` uint8 mosaic whose top-left 2x2 cell is ``pattern``.

    Works on the four sub-lattices (one per cell position) of a mirror-padded copy, so every
    term is a strided slice and the sums stay in uint16 with round-half-up integer division.
    """
    height, width = raw.shape
    padded = np.pad(raw.astype(np.uint16), 1, mode='reflect')
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for (dy, dx, colour), offsets in _bayer_neighbours(pattern).items():
        rows, cols = (height - dy + 1) // 2, (width - dx + 1) // 2
        total = sum(padded[1 + dy + oy::2, 1 + dx + ox::2][:rows, :cols] for oy, ox in offsets)
        shift = len(offsets).bit_length() - 1  # 1, 2 or 4 samples
        rgb[dy::2, dx::2, colour] = (total + (len(offsets) >> 1)) >> shift
    return rgb


@functools.lru_cache(maxsize=None)
def _bayer_neighbours(pattern: tuple[int, ...]) -> dict:
    """``(dy, dx, colour) -> offsets`` of the nearest samples of ``colour`` for cell (dy, dx).

    Nearest by city-block distance in the 3x3 neighbourhood: the pixel itself, else its 2 or 4
    edge neighbours of that colour, else its 4 corners.
    """
    neighbours = {}
    for dy in (0, 1):
        for dx in (0, 1):
            for colour in range(3):
                found = [(oy, ox) for oy in (-1, 0, 1) for ox in (-1, 0, 1)
                         if pattern[(dy + oy) % 2 * 2 + (dx + ox) % 2] == colour]
                nearest = min(abs(oy) + abs(ox) for oy, ox in found)
                neighbours[dy, dx, colour] = [(oy, ox) for oy, ox in found
                                              if abs(oy) + abs(ox) == nearest]
    return neighbours


def _pil_to_rgb(im) -> np.ndarray:
    """A loaded PIL image -> ``(H, W, 3)`` uint8 RGB, writable."""
    if im.mode == 'RGB':
        return np.array(im)
    if im.mode == 'L':
        grey = np.asarray(im)
    elif im.mode.startswith('I'):  # I;16, I;16B, I: 16-bit grey PNG
        # shifted and clipped in the sample type: no 8-byte working copy of the image
        high = np.asarray(im) >> 8
        np.clip(high, 0, 255, out=high)
        grey = high.astype(np.uint8)
    else:  # P, PA, LA, RGBA, CMYK, 1, ...: let Pillow convert (alpha is dropped)
        return np.array(im.convert('RGB'))
    return _pick_channels(grey[..., None], (0, 0, 0))
