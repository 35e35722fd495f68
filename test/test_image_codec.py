"""Tests for depth_node.image_codec.

Every raw layout is written out byte by byte here (struct, loops over pixels), not through the
module, so a wrong channel order, byte order, step or chroma position shows up as a mismatch.
"""

from __future__ import annotations

import array
import io
import math
import os
from pathlib import Path
import struct
import subprocess
import sys

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
from PIL import Image
import pytest

from depth_node.image_codec import (
    bytes_per_pixel, decode_compressed, decode_image, decode_relative_depth, ImageDecodeError,
    limit_pixels, limited_size, plan_compressed, REDUCED_DECODE_FACTOR,
    SUPPORTED_DEPTH_ENCODINGS, SUPPORTED_ENCODINGS)
from depth_node.sample_data import frame_folders, load_frame
from hostile_images import jpeg_claiming, jpeg_of, png_of_zeros

PAD = b'\xa5'  # filler for row padding: never a plausible pixel value by accident

# A 3 x 4 RGB image with saturated, dark, light and mixed colours.
RGB = np.array([
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]],
    [[0, 0, 0], [12, 34, 56], [200, 100, 50], [1, 2, 3]],
    [[90, 80, 70], [255, 128, 0], [7, 250, 9], [128, 128, 128]],
], dtype=np.uint8)
GREY = np.array([[0, 1, 2, 3], [64, 127, 128, 200], [250, 253, 254, 255]], dtype=np.uint8)
ALPHA = 77


def pack(pixel_rows, pad: int = 0) -> bytes:
    """Rows of per-pixel byte strings -> one buffer, ``pad`` filler bytes after each row."""
    return b''.join(b''.join(row) + PAD * pad for row in pixel_rows)


def low_byte(y: int, x: int, c: int) -> int:
    """An arbitrary low byte for 16-bit samples, different per sample, to catch byte mix-ups."""
    return (37 * y + 11 * x + 101 * c + 5) % 256


def sixteen_bit(value: int, y: int, x: int, c: int, big: bool) -> bytes:
    return struct.pack('>H' if big else '<H', value * 256 + low_byte(y, x, c))


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.stack([grey, grey, grey], axis=-1)


def packed_layout(encoding: str, big: bool):
    """(source image, expected RGB, per-pixel byte writer) for a packed encoding."""
    def pixels(image, write):
        return [[write(y, x, image[y, x].tolist()) for x in range(image.shape[1])]
                for y in range(image.shape[0])]

    eight = {
        'rgb8': lambda y, x, p: bytes(p),
        'bgr8': lambda y, x, p: bytes(p[::-1]),
        '8UC3': lambda y, x, p: bytes(p[::-1]),
        'rgba8': lambda y, x, p: bytes(p + [ALPHA]),
        'bgra8': lambda y, x, p: bytes(p[::-1] + [ALPHA]),
        '8UC4': lambda y, x, p: bytes(p[::-1] + [ALPHA]),
    }
    if encoding in eight:
        return pixels(RGB, eight[encoding]), RGB
    if encoding in ('mono8', '8UC1'):
        return pixels(GREY, lambda y, x, p: bytes([p])), grey_to_rgb(GREY)
    if encoding == 'mono16':
        return pixels(GREY, lambda y, x, p: sixteen_bit(p, y, x, 0, big)), grey_to_rgb(GREY)
    order = {'rgb16': [0, 1, 2], 'bgr16': [2, 1, 0], 'rgba16': [0, 1, 2, 3],
             'bgra16': [2, 1, 0, 3]}[encoding]
    return pixels(RGB, lambda y, x, p: b''.join(
        sixteen_bit((p + [ALPHA])[c], y, x, c, big) for c in order)), RGB


PACKED = ['rgb8', 'bgr8', '8UC3', 'rgba8', 'bgra8', '8UC4', 'mono8', '8UC1', 'mono16', 'rgb16',
          'bgr16', 'rgba16', 'bgra16']
CONTAINERS = {
    'bytes': bytes,
    'bytearray': bytearray,
    'memoryview': memoryview,
    'array': lambda b: array.array('B', b),
    'ndarray': lambda b: np.frombuffer(b, dtype=np.uint8),
}


def check_rgb(out: np.ndarray, expected: np.ndarray) -> None:
    assert out.dtype == np.uint8
    assert out.shape == expected.shape
    assert out.flags['C_CONTIGUOUS'] and out.flags['WRITEABLE']
    np.testing.assert_array_equal(out, expected)


# --- packed encodings: exact ---------------------------------------------------------------

def test_supported_encodings_cover_the_tested_ones():
    tested = set(PACKED) | {'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'} | {
        f'bayer_{p}{b}' for p in ('rggb', 'bggr', 'gbrg', 'grbg') for b in (8, 16)}
    assert set(SUPPORTED_ENCODINGS) == tested
    assert len(SUPPORTED_ENCODINGS) == len(set(SUPPORTED_ENCODINGS))


@pytest.mark.parametrize('pad', [0, 3])
@pytest.mark.parametrize('big', [False, True])
@pytest.mark.parametrize('encoding', PACKED)
def test_packed_encodings_exact(encoding, big, pad):
    rows, expected = packed_layout(encoding, big)
    row_bytes = len(b''.join(rows[0]))
    assert row_bytes == 4 * bytes_per_pixel(encoding)
    data = pack(rows, pad)
    out = decode_image(encoding, 3, 4, row_bytes + pad, big, data)
    check_rgb(out, expected)


@pytest.mark.parametrize('container', sorted(CONTAINERS))
def test_data_containers(container):
    rows, expected = packed_layout('bgr8', False)
    data = CONTAINERS[container](pack(rows, 2))
    check_rgb(decode_image('bgr8', 3, 4, 14, False, data), expected)


def test_result_does_not_alias_a_mutable_buffer():
    rows, expected = packed_layout('rgb8', False)
    data = array.array('B', pack(rows))
    out = decode_image('rgb8', 3, 4, 12, False, data)
    data[0] = 0
    out[0, 1] = 9
    assert out[0, 0, 0] == 255 and data[3] == 0
    np.testing.assert_array_equal(out[1:], expected[1:])


@pytest.mark.parametrize('encoding', ['rgb8', 'mono8', 'yuyv', 'bayer_gbrg8', 'mono16'])
def test_result_is_never_a_view_of_ndarray_data(encoding):
    source = np.arange(4 * 4 * bytes_per_pixel(encoding), dtype=np.uint8)
    out = decode_image(encoding, 4, 4, 4 * bytes_per_pixel(encoding), False, source)
    assert not np.shares_memory(out, source)
    if encoding in SUPPORTED_DEPTH_ENCODINGS:
        depth = decode_relative_depth(encoding, 4, 4, 4 * bytes_per_pixel(encoding), False,
                                      source)
        assert not np.shares_memory(depth, source) and depth.flags['WRITEABLE']


def test_mono16_big_endian_keeps_high_byte():
    # 0x12 0x34 big-endian is 0x1234 -> 0x12; read as little-endian it would give 0x34.
    data = bytes([0x12, 0x34, 0xff, 0x00, 0x00, 0xff])
    out = decode_image('mono16', 1, 3, 6, True, data)
    check_rgb(out, grey_to_rgb(np.array([[0x12, 0xff, 0x00]], dtype=np.uint8)))
    out = decode_image('mono16', 1, 3, 6, False, data)
    check_rgb(out, grey_to_rgb(np.array([[0x34, 0x00, 0xff]], dtype=np.uint8)))


def test_odd_step_for_16_bit_rows():
    # 2 pixels of mono16 per row, step 5: the second row starts on an odd byte.
    data = struct.pack('<HH', 0x0102, 0x0304) + PAD + struct.pack('<HH', 0x0506, 0xff07) + PAD
    out = decode_image('mono16', 2, 2, 5, False, data)
    check_rgb(out, grey_to_rgb(np.array([[1, 3], [5, 255]], dtype=np.uint8)))


def test_real_frame_bgr8_with_padding(real_data):
    rgb = load_frame(frame_folders(real_data)[0]).image
    height, width = rgb.shape[:2]
    pad = 64 - (width * 3) % 64  # rows aligned to 64 bytes as some drivers do
    data = b''.join(rgb[y, :, ::-1].tobytes() + PAD * pad for y in range(height))
    out = decode_image('bgr8', height, width, width * 3 + pad, False, array.array('B', data))
    check_rgb(out, rgb)


@pytest.mark.parametrize('pad', [0, 5])
def test_real_frame_rgb8_block_copy(real_data, pad):
    """rgb8 takes the one-copy path: the frame back exactly, with and without row padding."""
    rgb = load_frame(frame_folders(real_data)[0]).image
    height, width = rgb.shape[:2]
    data = array.array('B', b''.join(rgb[y].tobytes() + PAD * pad for y in range(height)))
    out = decode_image('rgb8', height, width, width * 3 + pad, False, data)
    check_rgb(out, rgb)
    assert not np.shares_memory(out, np.frombuffer(data, dtype=np.uint8))


# --- YUV 4:2:2 -----------------------------------------------------------------------------

def bt601_to_rgb(y: int, u: int, v: int) -> list[int]:
    """The documented conversion, in float64 Python: BT.601 limited range, round half up."""
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    rgb = (c + 1.596 * e, c - 0.391 * d - 0.813 * e, c + 2.018 * d)
    return [min(255, max(0, math.floor(x + 0.5))) for x in rgb]


def rgb_to_bt601(r: float, g: float, b: float) -> tuple[float, float, float]:
    """Forward BT.601 limited range (ITU-R BT.601, 8-bit studio swing), unrounded."""
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return y, u, v


def byte(x: float) -> int:
    return min(255, max(0, math.floor(x + 0.5)))


def yuv_pair(encoding: str, y0: int, y1: int, u: int, v: int) -> bytes:
    if encoding in ('yuv422', 'uyvy'):
        return bytes([u, y0, v, y1])
    return bytes([y0, u, y1, v])


YUV = ['yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv']


@pytest.mark.parametrize('encoding', YUV)
def test_yuv422_grey_anchors_and_byte_order(encoding):
    # Neutral chroma: black (Y 16), white (Y 235), 1.164 x 110 = 128.04 -> 128, and a pair whose
    # two Y differ so that swapping Y0/Y1 or reading Y from a chroma byte is visible.
    rows = [[yuv_pair(encoding, 16, 235, 128, 128), yuv_pair(encoding, 126, 126, 128, 128)],
            [yuv_pair(encoding, 50, 200, 128, 128), yuv_pair(encoding, 0, 255, 128, 128)]]
    out = decode_image(encoding, 2, 4, 8, False, pack(rows))
    grey = np.array([[0, 255, 128, 128], [40, 214, 0, 255]], dtype=np.uint8)
    check_rgb(out, grey_to_rgb(grey))


@pytest.mark.parametrize('pad', [0, 2])
@pytest.mark.parametrize('encoding', YUV)
def test_yuv422_matches_reference_formula(encoding, pad):
    # Tolerance 1: the module computes in float32, the reference in float64, so a value that
    # lands within float32 error of .5 may round the other way.
    rng = np.random.default_rng(7)
    yuv = rng.integers(0, 256, size=(3, 3, 4)).tolist()  # 3 rows of 3 pairs: Y0, Y1, U, V
    rows = [[yuv_pair(encoding, *p) for p in row] for row in yuv]
    out = decode_image(encoding, 3, 6, 12 + pad, False, pack(rows, pad))
    expected = np.array([[px for y0, y1, u, v in row
                          for px in (bt601_to_rgb(y0, u, v), bt601_to_rgb(y1, u, v))]
                         for row in yuv], dtype=np.uint8)
    assert out.shape == (3, 6, 3)
    assert np.abs(out.astype(int) - expected).max() <= 1


@pytest.mark.parametrize('encoding', YUV)
def test_yuv422_round_trip_from_rgb(encoding):
    # Pairs of equal colour, so chroma subsampling loses nothing; tolerance 2 for quantizing Y,
    # U and V to 8 bits (half a step of U moves blue by 1.01, of Y every channel by 0.58).
    colours = [px for row in RGB.tolist() for px in row] + [[17, 240, 33], [99, 99, 200]]
    pairs = []
    for r, g, b in colours:
        y, u, v = (byte(c) for c in rgb_to_bt601(r, g, b))
        pairs.append(yuv_pair(encoding, y, y, u, v))
    out = decode_image(encoding, 1, 2 * len(colours), 4 * len(colours), False, b''.join(pairs))
    expected = np.repeat(np.array([colours], dtype=np.uint8), 2, axis=1)
    assert np.abs(out.astype(int) - expected).max() <= 2


def test_yuv422_real_frame(real_data):
    # A real crop, chroma averaged over each pair of pixels: the error is that subsampling at
    # colour edges, so the bound is on the mean (measured about 3.9 on this crop).
    rgb = load_frame(frame_folders(real_data)[0]).image
    h, w = rgb.shape[:2]
    crop = rgb[h // 2 - 60:h // 2 + 60, w // 2 - 80:w // 2 + 80]
    rows = []
    for row in crop.astype(float).tolist():
        pixels = []
        for left, right in zip(row[0::2], row[1::2]):
            y0, u0, v0 = rgb_to_bt601(*left)
            y1, u1, v1 = rgb_to_bt601(*right)
            pixels.append(yuv_pair('yuyv', byte(y0), byte(y1), byte((u0 + u1) / 2),
                                   byte((v0 + v1) / 2)))
        rows.append(pixels)
    out = decode_image('yuyv', 120, 160, 320, False, pack(rows))
    error = np.abs(out.astype(int) - crop)
    assert error.mean() < 5.0
    assert np.median(error) <= 2


# --- Bayer ---------------------------------------------------------------------------------

PATTERNS = ['rggb', 'bggr', 'gbrg', 'grbg']


def mosaic(rgb: np.ndarray, pattern: str) -> list[list[int]]:
    """Sample ``rgb`` through the colour filter ``pattern`` (2x2 cell, row by row)."""
    return [[int(rgb[y, x, 'rgb'.index(pattern[y % 2 * 2 + x % 2])])
             for x in range(rgb.shape[1])] for y in range(rgb.shape[0])]


def reference_demosaic(raw: list[list[int]], pattern: str) -> np.ndarray:
    """Per-pixel loops: mean of the nearest samples of each colour, mirrored at the border."""
    height, width = len(raw), len(raw[0])

    def mirror(i, n):
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = np.zeros((height, width, 3), dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            for colour in 'rgb':
                rings = {0: [], 1: [], 2: []}  # city-block distance -> values
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = mirror(y + dy, height), mirror(x + dx, width)
                        if pattern[yy % 2 * 2 + xx % 2] == colour:
                            rings[abs(dy) + abs(dx)].append(raw[yy][xx])
                values = next(v for v in rings.values() if v)
                total, n = sum(values), len(values)
                out[y, x, 'rgb'.index(colour)] = (2 * total + n) // (2 * n)  # round half up
    return out


@pytest.mark.parametrize('pattern', PATTERNS)
def test_bayer_2x2_worked_example(pattern):
    # One cell, R 100, B 200, the two G 50 and 30 (in reading order). Mirroring makes every
    # neighbour a copy of the cell's samples: R and B are constant, G at a G site is its own
    # value and (50 + 50 + 30 + 30) / 4 = 40 at the R and B sites.
    values = {'r': 100, 'b': 200}
    greens = iter([50, 30])
    raw = [[values[c] if c != 'g' else next(greens) for c in pattern[:2]],
           [values[c] if c != 'g' else next(greens) for c in pattern[2:]]]
    out = decode_image(f'bayer_{pattern}8', 2, 2, 2, False, bytes(raw[0] + raw[1]))
    green = [[raw[y][x] if pattern[2 * y + x] == 'g' else 40 for x in (0, 1)] for y in (0, 1)]
    expected = np.array([[[100, green[y][x], 200] for x in (0, 1)] for y in (0, 1)], np.uint8)
    check_rgb(out, expected)


@pytest.mark.parametrize('size', [(2, 2), (4, 6), (5, 7), (3, 2)])
@pytest.mark.parametrize('pattern', PATTERNS)
def test_bayer_matches_reference_loops(pattern, size):
    rng = np.random.default_rng(sum(size))
    raw = rng.integers(0, 256, size=size).tolist()
    pad = 3
    data = pack([[bytes([v]) for v in row] for row in raw], pad)
    out = decode_image(f'bayer_{pattern}8', size[0], size[1], size[1] + pad, False, data)
    check_rgb(out, reference_demosaic(raw, pattern))


@pytest.mark.parametrize('pattern', PATTERNS)
def test_bayer_flat_colour_and_linear_ramp(pattern):
    # Bilinear interpolation reproduces a constant everywhere and a linear ramp (even slope, so
    # the means are integers) exactly away from the border, whatever the pattern.
    flat = np.broadcast_to(np.array([30, 140, 220], dtype=np.uint8), (5, 6, 3))
    out = decode_image(f'bayer_{pattern}8', 5, 6, 6, False, bytes(sum(mosaic(flat, pattern), [])))
    check_rgb(out, flat)
    y, x = np.mgrid[0:6, 0:8]
    ramp = np.stack([10 + 4 * x + 6 * y, 200 - 8 * x, 20 + 10 * y], axis=-1).astype(np.uint8)
    out = decode_image(f'bayer_{pattern}8', 6, 8, 8, False, bytes(sum(mosaic(ramp, pattern), [])))
    np.testing.assert_array_equal(out[1:-1, 1:-1], ramp[1:-1, 1:-1])


@pytest.mark.parametrize('big', [False, True])
@pytest.mark.parametrize('pattern', PATTERNS)
def test_bayer16_uses_high_byte(pattern, big):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(4, 4)).tolist()
    data = pack([[sixteen_bit(v, y, x, 0, big) for x, v in enumerate(row)]
                 for y, row in enumerate(raw)], 1)
    out = decode_image(f'bayer_{pattern}16', 4, 4, 9, big, data)
    check_rgb(out, reference_demosaic(raw, pattern))


# --- errors --------------------------------------------------------------------------------

def error(call, *args, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_unknown_encoding_lists_supported():
    message = error(decode_image, 'nv21', 2, 2, 4, False, bytes(8))
    assert "'nv21'" in message and 'rgb8' in message and 'bayer_grbg8' in message
    message = error(decode_image, '32FC1', 1, 1, 4, False, bytes(4))
    assert 'unsupported' in message
    message = error(bytes_per_pixel, 'RGB8')
    assert "'RGB8'" in message and 'yuv422' in message and '32FC1' in message
    message = error(decode_relative_depth, 'rgb8', 1, 1, 3, False, bytes(3))
    assert "'rgb8'" in message and ', '.join(SUPPORTED_DEPTH_ENCODINGS) in message


@pytest.mark.parametrize('call', [decode_image, decode_relative_depth])
def test_geometry_errors(call):
    assert 'empty' in error(call, 'mono8', 0, 4, 4, False, b'')
    assert 'empty' in error(call, 'mono8', 2, 0, 0, False, b'')
    assert 'empty' in error(call, 'mono8', -1, 4, 4, False, b'')
    message = error(call, 'mono16', 2, 4, 7, False, bytes(14))
    assert 'step 7' in message and '8' in message
    message = error(call, 'mono8', 3, 4, 5, False, bytes(14))
    assert 'too short' in message and '14' in message and '15' in message
    message = error(call, 'mono8', 3, 4, 5, False, bytes(20))
    assert 'too long' in message and '5 bytes' in message
    assert 'integer' in error(call, 'mono8', 2.0, 4, 4, False, bytes(8))


def test_odd_width_yuv_and_tiny_bayer():
    for encoding in YUV:
        message = error(decode_image, encoding, 2, 3, 6, False, bytes(12))
        assert 'odd' in message and 'width 3' in message
    message = error(decode_image, 'bayer_rggb8', 1, 4, 4, False, bytes(4))
    assert '2x2' in message


@pytest.mark.parametrize('data', ['abcd', [1, 2, 3, 4], np.zeros(4, dtype=np.uint16),
                                  np.zeros((2, 2), dtype=np.uint8), None])
def test_bad_data_type(data):
    assert 'data must be' in error(decode_image, 'mono8', 2, 2, 2, False, data)


# --- relative depth ------------------------------------------------------------------------

@pytest.mark.parametrize('big', [False, True])
def test_depth_32fc1_keeps_non_finite(big):
    values = [[1.5, float('nan'), float('inf')], [0.0, -float('inf'), 1e-3]]
    fmt = '>f' if big else '<f'
    data = pack([[struct.pack(fmt, v) for v in row] for row in values], 4)
    out = decode_relative_depth('32FC1', 2, 3, 16, big, data)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert out.flags['C_CONTIGUOUS'] and out.flags['WRITEABLE']
    np.testing.assert_array_equal(out, np.array(values, dtype=np.float32))


def test_depth_64fc1():
    values = [0.25, 1e300, float('nan')]
    out = decode_relative_depth('64FC1', 1, 3, 24, False, struct.pack('<3d', *values))
    np.testing.assert_array_equal(out, np.array([[0.25, np.inf, np.nan]], dtype=np.float32))


@pytest.mark.parametrize('encoding', ['16UC1', 'mono16'])
@pytest.mark.parametrize('big', [False, True])
def test_depth_16bit_zero_is_nan(encoding, big):
    fmt = '>H' if big else '<H'
    data = b''.join(struct.pack(fmt, v) for v in (0, 1, 1000, 65535)) + PAD * 2
    out = decode_relative_depth(encoding, 1, 4, 10, big, array.array('B', data))
    np.testing.assert_array_equal(out, np.array([[np.nan, 1, 1000, 65535]], dtype=np.float32))


@pytest.mark.parametrize('encoding', ['mono8', '8UC1'])
def test_depth_8bit_keeps_zero(encoding):
    out = decode_relative_depth(encoding, 2, 2, 3, False, bytes([0, 7, 0xaa, 255, 128, 0xaa]))
    np.testing.assert_array_equal(out, np.array([[0, 7], [255, 128]], dtype=np.float32))


# --- compressed ----------------------------------------------------------------------------

def encode(image: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope='module')
def real_crop(real_data) -> np.ndarray:
    rgb = load_frame(frame_folders(real_data)[0]).image
    h, w = rgb.shape[:2]
    return np.ascontiguousarray(rgb[h // 2 - 60:h // 2 + 60, w // 2 - 80:w // 2 + 80])


@pytest.mark.parametrize('fmt', ['png', 'bgr8; png compressed bgr8', 'rgb8; png compressed bgr8',
                                 'jpeg'])
def test_png_round_trip_exact(real_crop, fmt):
    # Also shows that the magic bytes, not the format string, pick the decoder.
    check_rgb(decode_compressed(fmt, encode(real_crop, 'PNG')), real_crop)


@pytest.mark.parametrize('fmt', ['jpeg', 'rgb8; jpeg compressed bgr8',
                                 'bgr8; jpeg compressed bgr8'])
def test_jpeg_round_trip(real_crop, fmt):
    # Quality 95 with full-resolution chroma: PSNR about 38 dB on this crop; swapping R and B
    # would bring it under 20 dB.
    data = array.array('B', encode(real_crop, 'JPEG', quality=95, subsampling=0))
    out = decode_compressed(fmt, data)
    assert out.shape == real_crop.shape and out.dtype == np.uint8
    assert out.flags['C_CONTIGUOUS'] and out.flags['WRITEABLE']
    mse = np.mean((out.astype(float) - real_crop) ** 2)
    assert 10 * math.log10(255 ** 2 / mse) > 35.0
    assert np.abs(out.astype(int) - real_crop).mean() < 3.0


def test_jpeg_colour_order():
    block = np.zeros((16, 32, 3), dtype=np.uint8)
    block[:, :16] = (255, 0, 0)
    block[:, 16:] = (0, 0, 255)
    out = decode_compressed('jpeg', encode(block, 'JPEG', quality=95))
    assert np.abs(out[4:12, 4:12].astype(int) - (255, 0, 0)).max() <= 8
    assert np.abs(out[4:12, 20:28].astype(int) - (0, 0, 255)).max() <= 8


def test_compressed_modes():
    # Grey JPEG -> grey replicated (JPEG tolerance 2 on a flat image); 16-bit PNG -> high byte;
    # RGBA PNG -> alpha dropped; palette PNG -> the palette colours.
    grey = np.full((8, 8), 90, dtype=np.uint8)
    out = decode_compressed('mono8; jpeg compressed mono8', encode(grey, 'JPEG', quality=95))
    assert np.abs(out.astype(int) - 90).max() <= 2 and out.shape == (8, 8, 3)
    wide = np.array([[0, 0x00ff, 0x1234, 0xffff]], dtype=np.uint16)
    out = decode_compressed('mono16; png compressed mono16', encode(wide, 'PNG'))
    check_rgb(out, grey_to_rgb(np.array([[0, 0, 0x12, 0xff]], dtype=np.uint8)))
    rgba = np.concatenate([RGB, np.full((3, 4, 1), 7, dtype=np.uint8)], axis=-1)
    check_rgb(decode_compressed('png', encode(rgba, 'PNG')), RGB)
    palette = Image.fromarray(RGB).quantize(colors=12, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    palette.save(buffer, 'PNG')
    check_rgb(decode_compressed('png', buffer.getvalue()), np.array(palette.convert('RGB')))


def test_compressed_refusals(real_crop):
    png = encode(real_crop, 'PNG')
    message = error(decode_compressed, '16UC1; compressedDepth png', png)
    assert 'compressedDepth' in message
    for fmt, blob in (('tiff', encode(RGB, 'TIFF')), ('bmp', encode(RGB, 'BMP')),
                      ('jpeg', b'not an image at all'), ('jpeg', b'')):
        assert 'neither JPEG nor PNG' in error(decode_compressed, fmt, blob)
    jpeg = encode(real_crop, 'JPEG')
    for blob in (jpeg[:len(jpeg) // 2], png[:len(png) // 2]):
        assert 'do not decode' in error(decode_compressed, 'jpeg', blob)
    for blob in (b'\xff\xd8\xff' + bytes(100), b'\x89PNG\r\n\x1a\n' + bytes(100), png[:30]):
        assert 'header does not parse' in error(decode_compressed, 'jpeg', blob)


def test_compressed_max_pixels(real_crop):
    png = encode(real_crop, 'PNG')
    message = error(decode_compressed, 'png', png, max_pixels=160 * 120 - 1)
    assert '160x120' in message and 'max_pixels' in message
    check_rgb(decode_compressed('png', png, max_pixels=160 * 120), real_crop)
    check_rgb(decode_compressed('png', png, max_pixels=0), real_crop)


# --- limit_pixels --------------------------------------------------------------------------

def test_limit_pixels_within_limit_is_identity():
    assert limit_pixels(RGB, 12) is RGB
    assert limit_pixels(RGB, 0) is RGB
    assert limit_pixels(RGB, -1) is RGB


def test_limit_pixels_box_mean():
    # 4 x 6 -> 2 x 3 (factor 2): each output pixel is the mean of a 2x2 block (integer means).
    blocks = np.array([[[4, 10, 20], [40, 80, 120], [250, 251, 252]],
                       [[3, 5, 7], [100, 50, 25], [8, 16, 32]]], dtype=np.uint8)
    image = blocks.repeat(2, axis=0).repeat(2, axis=1)
    image[0::2, 0::2] += 2  # one sample of each block up, its diagonal neighbour down: same mean
    image[1::2, 1::2] -= 2
    check_rgb(limit_pixels(image, 6), blocks)


def test_limit_pixels_rejects_non_rgb():
    assert 'uint8' in error(limit_pixels, RGB.astype(np.float32), 4)
    assert '(H, W, 3)' in error(limit_pixels, GREY, 4)


@given(height=st.integers(1, 40), width=st.integers(1, 40), max_pixels=st.integers(1, 2000))
def test_limit_pixels_bound_and_aspect(height, width, max_pixels):
    out = limit_pixels(np.zeros((height, width, 3), dtype=np.uint8), max_pixels)
    h, w = out.shape[:2]
    assert out.dtype == np.uint8 and out.shape[2] == 3
    if height * width <= max_pixels:
        assert (h, w) == (height, width)
        return
    assert h * w <= max_pixels
    assert 1 <= h <= height and 1 <= w <= width
    if h > 1 and w > 1:
        # Both sides scaled by one factor and rounded down, none clamped to one pixel: the
        # aspect ratio is kept to within that rounding.
        ratio = (h / w) / (height / width)
        assert 1 - 1 / h - 1e-9 <= ratio <= 1 + 1 / (w - 1) + 1e-9


# --- properties: any input either decodes to the documented shape or raises our error -----

ENCODINGS_AND_JUNK = st.sampled_from(
    SUPPORTED_ENCODINGS + SUPPORTED_DEPTH_ENCODINGS + ('', 'RGB8', 'nv21', 'jpeg'))


@st.composite
def raw_messages(draw):
    encoding = draw(ENCODINGS_AND_JUNK)
    height = draw(st.integers(1, 6) | st.integers(-1, 6))  # mostly valid sizes
    width = draw(st.integers(1, 7) | st.integers(-1, 7))
    try:
        bpp = bytes_per_pixel(encoding)
    except ImageDecodeError:
        bpp = draw(st.integers(1, 8))
    step = max(0, width) * bpp + draw(st.integers(-2, 4))
    length = max(0, step * height + draw(st.sampled_from([0, 0, 0, 0, -3, -1, 1, 5])))
    data = draw(st.binary(min_size=length, max_size=length))
    container = draw(st.sampled_from(sorted(CONTAINERS)))
    return encoding, height, width, step, draw(st.booleans()), CONTAINERS[container](data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(raw_messages())
def test_decode_image_never_fails_otherwise(message):
    encoding, height, width = message[:3]
    try:
        out = decode_image(*message)
    except ImageDecodeError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (height, width, 3) and out.flags['C_CONTIGUOUS']
    assert encoding in SUPPORTED_ENCODINGS


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(raw_messages())
def test_decode_relative_depth_never_fails_otherwise(message):
    encoding, height, width = message[:3]
    try:
        out = decode_relative_depth(*message)
    except ImageDecodeError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (height, width) and out.flags['C_CONTIGUOUS']
    assert encoding in SUPPORTED_DEPTH_ENCODINGS


SMALL_PNG = encode(RGB, 'PNG')
SMALL_JPEG = encode(np.tile(RGB, (4, 4, 1)), 'JPEG', quality=80)


@st.composite
def compressed_blobs(draw):
    kind = draw(st.sampled_from(['random', 'magic', 'mutated', 'truncated']))
    if kind == 'random':
        return draw(st.binary(max_size=200))
    if kind == 'magic':
        magic = draw(st.sampled_from([b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n']))
        return magic + draw(st.binary(max_size=200))
    blob = bytearray(draw(st.sampled_from([SMALL_PNG, SMALL_JPEG])))
    if kind == 'truncated':
        return bytes(blob[:draw(st.integers(0, len(blob)))])
    for _ in range(draw(st.integers(1, 8))):
        blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    return bytes(blob)


@settings(max_examples=400, deadline=None)
@given(blob=compressed_blobs(), fmt=st.sampled_from(['jpeg', 'png', 'bgr8; jpeg compressed bgr8',
                                                     '', 'compressedDepth']))
def test_decode_compressed_never_fails_otherwise(blob, fmt):
    try:
        out = decode_compressed(fmt, blob, max_pixels=10_000)
    except ImageDecodeError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3 and out.shape[0] * out.shape[1] <= 10_000


# --- bounded decoding cost: the header decides before any pixel is decoded ----------------

def test_plan_reads_the_size_from_the_header():
    jpeg, png = jpeg_claiming(7000, 5000), png_of_zeros(300, 20)
    assert len(jpeg) < 1000
    plan = plan_compressed('jpeg', jpeg, max_pixels=0)
    assert (plan.container, plan.width, plan.height, plan.jpeg_scale) == ('JPEG', 7000, 5000, 1)
    plan = plan_compressed('png', png, max_pixels=0)
    assert (plan.container, plan.width, plan.height) == ('PNG', 300, 20)
    assert (plan.out_width, plan.out_height) == (300, 20)


def test_refuse_mode_refuses_a_bomb_from_its_header():
    for blob in (jpeg_claiming(7000, 7000), png_of_zeros(7000, 7000)):
        message = error(decode_compressed, 'png', blob, max_pixels=4_000_000)
        assert '7000x7000 = 49000000 pixels, more than max_pixels=4000000' in message


@pytest.mark.parametrize('blob, why', [
    (png_of_zeros(1000, 1000), 'PNG cannot be reduced while decoding'),
    (jpeg_claiming(1000, 1000, progressive=True), 'progressive or multi-scan JPEG cannot be '
                                                  'reduced'),
    (jpeg_claiming(30000, 2000), 'even decoded at 1/8 scale it has 937500 pixels, more than 2 x '
                                 'max_pixels=100000'),
], ids=['PNG', 'progressive JPEG', 'JPEG too large at 1/8'])
def test_downscale_refuses_what_cannot_be_reduced_while_decoding(blob, why):
    message = error(plan_compressed, 'x', blob, max_pixels=100_000, oversize='downscale')
    assert why in message, message
    assert why in error(decode_compressed, 'x', blob, max_pixels=100_000, oversize='downscale')


def test_a_non_interleaved_jpeg_is_not_reducible():
    """A sequential JPEG whose first scan holds one of its three components needs libjpeg's
    whole-image coefficient buffer, like a progressive one."""
    blob = bytearray(jpeg_claiming(1000, 1000))
    sos = blob.index(b'\xff\xda')
    assert blob[sos + 4] == 3
    blob[sos + 4] = 1
    assert 'multi-scan' in error(plan_compressed, 'x', bytes(blob), 100_000, 'downscale')
    assert plan_compressed('x', bytes(blob), 0).width == 1000  # fine without a limit


def test_downscale_decodes_a_jpeg_at_reduced_scale():
    """640 x 480 with max_pixels 160 x 120: decoded at 1/4 (160 x 120, within 2 x the limit);
    the result is close to the full decode box-filtered to the same size."""
    blob = jpeg_of(640, 480)
    plan = plan_compressed('jpeg', blob, max_pixels=160 * 120, oversize='downscale')
    assert (plan.jpeg_scale, plan.out_width, plan.out_height) == (4, 160, 120)
    out = decode_compressed('jpeg', blob, max_pixels=160 * 120, oversize='downscale')
    assert out.shape == (120, 160, 3) and out.flags['C_CONTIGUOUS'] and out.flags['WRITEABLE']
    reference = limit_pixels(decode_compressed('jpeg', blob, max_pixels=0), 160 * 120)
    assert np.abs(out.astype(int) - reference).mean() < 2.0


def test_downscale_a_jpeg_just_over_the_limit_then_box_filter():
    """1.5 x the limit: decoded at full scale (within 2 x), then box-filtered to the limit, as
    limit_pixels does for a raw image."""
    blob = jpeg_of(240, 160)
    max_pixels = 240 * 160 * 2 // 3
    plan = plan_compressed('jpeg', blob, max_pixels=max_pixels, oversize='downscale')
    assert plan.jpeg_scale == 1
    assert (plan.out_height, plan.out_width) == limited_size(160, 240, max_pixels)
    out = decode_compressed('jpeg', blob, max_pixels=max_pixels, oversize='downscale')
    np.testing.assert_array_equal(
        out, limit_pixels(decode_compressed('jpeg', blob, max_pixels=0), max_pixels))


@given(width=st.integers(1, 9000), height=st.integers(1, 9000),
       max_pixels=st.integers(1, 2_000_000))
def test_plan_never_decodes_more_than_twice_the_limit(width, height, max_pixels):
    blob = jpeg_claiming(width, height)
    try:
        plan = plan_compressed('jpeg', blob, max_pixels, 'downscale')
    except ImageDecodeError as exc:
        assert width * height > max_pixels and 'max_pixels' in str(exc)
        return
    s = plan.jpeg_scale
    decoded = -(-width // s) * -(-height // s)
    assert decoded <= REDUCED_DECODE_FACTOR * max_pixels
    assert plan.out_width * plan.out_height <= max_pixels
    if width * height <= max_pixels:
        assert (s, plan.out_width, plan.out_height) == (1, width, height)


def test_jpeg_header_walk_is_bounded():
    soi, sof = b'\xff\xd8', jpeg_claiming(16, 16)[2:]
    many = soi + b'\xff\xfe\x00\x02' * 1001 + sof  # 1001 empty comment segments
    assert 'more than 1000 segments' in error(plan_compressed, 'jpeg', many)
    junk = soi + b'\xff\xfe\x00\x02' + bytes(5000) + sof
    assert 'more than 4096 stray bytes' in error(plan_compressed, 'jpeg', junk)
    assert plan_compressed('jpeg', soi + b'\xff\xfe\x00\x02' * 20 + sof).width == 16


def test_long_format_strings_are_shortened_in_messages():
    fmt = '\x1b[2J' + 'x' * 100_000  # a terminal escape, then 100 KB
    for message in (error(decode_compressed, fmt, b'garbage'),
                    error(decode_image, fmt, 2, 2, 6, False, bytes(12))):
        assert "'\\x1b[2Jxxx" in message and '(100004 chars)' in message, message
        assert '\x1b' not in message and len(message) < 1000


# Extra resident memory of one decode, measured in a fresh process (VmHWM, the peak resident
# set, before and after), so nothing else in the test process pollutes the figure.
_MEASURE = """
import sys
from pathlib import Path
from depth_node.image_codec import decode_compressed, ImageDecodeError

def peak_mib():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024

data, warm_jpeg, warm_png = (Path(p).read_bytes() for p in sys.argv[1:4])
max_pixels, oversize = int(sys.argv[4]), sys.argv[5]
decode_compressed('x', warm_jpeg, 1000, 'downscale')  # load the codecs and the resize first
decode_compressed('x', warm_png, 0)
before = peak_mib()
try:
    out = decode_compressed('x', data, max_pixels, oversize)
    result = '%dx%d' % (out.shape[1], out.shape[0])
except ImageDecodeError:
    result = 'refused'
print(peak_mib() - before, result)
"""

MEMORY_MAX_PIXELS = 4_000_000  # input.max_pixels' default
DECODED_MIB = 3 * MEMORY_MAX_PIXELS / 2 ** 20  # an RGB image of max_pixels: 11.4 MiB
MEMORY_BOUND_MIB = 5 * DECODED_MIB + 8  # the README's bound, plus libraries' working memory

MEMORY_CASES = {
    # the decompression bombs: a small file claiming a large image
    'PNG 7000x7000 (143 KB)': (lambda: png_of_zeros(7000, 7000), 'refused'),
    'PNG 1x49000000 (95 KB)': (lambda: png_of_zeros(1, 49_000_000, 1), 'refused'),
    'JPEG claiming 7000x7000 (632 bytes)': (lambda: jpeg_claiming(7000, 7000), '1750x1750'),
    'progressive JPEG claiming 7000x7000': (lambda: jpeg_claiming(7000, 7000, True),
                                            'refused'),
    # the costliest images the node does decode
    'JPEG just under 2 x max_pixels': (lambda: jpeg_of(2828, 2828), '2000x2000'),
    'JPEG at max_pixels': (lambda: jpeg_of(2000, 2000), '2000x2000'),
    'progressive JPEG at max_pixels': (lambda: jpeg_of(2000, 2000, True), '2000x2000'),
    'PNG at max_pixels': (lambda: png_of_zeros(2000, 2000), '2000x2000'),
}


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='needs Linux /proc')
@pytest.mark.parametrize('case', list(MEMORY_CASES))
def test_decoding_memory_is_bounded_by_max_pixels(tmp_path, case):
    make, expected = MEMORY_CASES[case]
    paths = [tmp_path / name for name in ('data', 'warm.jpg', 'warm.png')]
    for path, blob in zip(paths, (make(), jpeg_of(64, 64), png_of_zeros(64, 64))):
        path.write_bytes(blob)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-c', _MEASURE, *map(str, paths),
                           str(MEMORY_MAX_PIXELS), 'downscale'],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    extra_mib, result = done.stdout.split()
    assert result == expected
    # Before the header was read first, the bombs cost 460-600 MiB here (40-50 x the image);
    # now at most 52 MiB (the JPEG just under twice the limit, 4.6 x).
    assert float(extra_mib) <= MEMORY_BOUND_MIB, (case, extra_mib)
