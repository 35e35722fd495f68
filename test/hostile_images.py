"""Compressed images that claim more than they hold: decompression bombs for tests.

Each builder returns the bytes of a valid (or validly started) file whose header claims a large
image, made without ever holding that image in memory: PNG rows of zeros are fed to zlib in
blocks, and a JPEG's frame header is patched to a larger size (libjpeg then decodes the claimed
size from a few hundred bytes, filling what is missing).

Import from tests as ``from hostile_images import png_of_zeros, jpeg_claiming``.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))


def png_of_zeros(width: int, height: int, channels: int = 3) -> bytes:
    """A valid 8-bit PNG (grey for ``channels`` 1, RGB for 3) of zeros; about 1/1000 of its
    decoded size (a 7000 x 7000 RGB is 143 KB, a 1 x 49,000,000 grey 95 KB)."""
    colour_type = {1: 0, 3: 2}[channels]
    compressor = zlib.compressobj(9)
    left = height * (1 + width * channels)  # each row: filter byte 0, then the samples
    block = bytes(1 << 22)
    parts = []
    while left > 0:
        parts.append(compressor.compress(block[:min(left, len(block))]))
        left -= len(block)
    idat = b''.join(parts) + compressor.flush()
    header = struct.pack('>IIBBBBB', width, height, 8, colour_type, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', header) + _chunk(b'IDAT', idat)
            + _chunk(b'IEND', b''))


def jpeg_claiming(width: int, height: int, progressive: bool = False) -> bytes:
    """A 16 x 16 JPEG whose frame header says ``width`` x ``height`` (about 630 bytes)."""
    buffer = io.BytesIO()
    Image.new('RGB', (16, 16), (90, 120, 200)).save(buffer, 'JPEG', progressive=progressive)
    data = bytearray(buffer.getvalue())
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack('>H', data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack('>HH', height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError('no frame header in the JPEG Pillow wrote')


def jpeg_of(width: int, height: int, progressive: bool = False, seed: int = 0) -> bytes:
    """A real JPEG of ``width`` x ``height``: smooth random colour blocks (compresses well,
    decodes to varied pixels)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(cells).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, 'JPEG', quality=85, progressive=progressive)
    return buffer.getvalue()
