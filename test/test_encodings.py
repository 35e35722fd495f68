"""Tests for depth_node.encodings: both tables pinned against packing and decoding.

Every image encoding of the table goes through the whole round trip: packed into a real
``sensor_msgs/Image`` by ``fill_image``, serialized and deserialized as a publish would, read
back by ``image_to_array`` and decoded by the codec, little- and big-endian. What each decoder
must return is written out here from the encoding's name, not read from the table, so a wrong
sample type, channel count, channel order or zero rule in the table fails a test. The same for
every PointField datatype: a PointCloud2 with a field of it, read back by ``cloud_to_array`` and
sized by ``read_points_xyz``.
"""

from __future__ import annotations

import numpy as np
import pytest

from depth_node import encodings
from depth_node.cloud import pack_cloud
from depth_node.encodings import IMAGE_ENCODINGS, POINTFIELD_DATATYPES
from depth_node.image_codec import (
    bytes_per_pixel, decode_image, decode_relative_depth, ImageDecodeError,
    SUPPORTED_DEPTH_ENCODINGS, SUPPORTED_ENCODINGS)
from depth_node.lidar import LidarError, read_points_xyz

sensor_msgs = pytest.importorskip('sensor_msgs.msg')
serialization = pytest.importorskip('rclpy.serialization')
messages = pytest.importorskip('depth_node.messages')

H, W = 4, 6  # even width: YUV 4:2:2 pairs, at least one 2x2 Bayer cell

# What the names say, written independently of the table: sample type, samples per pixel.
SAMPLES = {
    '32FC1': ('<f4', 1),
    '64FC1': ('<f8', 1),
    '16UC1': ('<u2', 1),
    **{name: ('u1', 1) for name in ('mono8', '8UC1')},
    'mono16': ('<u2', 1),
    **{name: ('u1', 3) for name in ('rgb8', 'bgr8', '8UC3')},
    **{name: ('u1', 4) for name in ('rgba8', 'bgra8', '8UC4')},
    **{name: ('<u2', 3) for name in ('rgb16', 'bgr16')},
    **{name: ('<u2', 4) for name in ('rgba16', 'bgra16')},
    **{name: ('u1', 2) for name in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')},
    **{f'bayer_{cell}{bits}': ('u1' if bits == 8 else '<u2', 1)
       for cell in ('rggb', 'bggr', 'gbrg', 'grbg') for bits in (8, 16)},
}
# Where R, G and B are among the samples of the one-sample-per-channel colour encodings.
RGB_INDEX = {'rgb8': (0, 1, 2), 'rgba8': (0, 1, 2), 'rgb16': (0, 1, 2), 'rgba16': (0, 1, 2),
             'bgr8': (2, 1, 0), '8UC3': (2, 1, 0), 'bgra8': (2, 1, 0), '8UC4': (2, 1, 0),
             'bgr16': (2, 1, 0), 'bgra16': (2, 1, 0),
             'mono8': (0, 0, 0), '8UC1': (0, 0, 0), 'mono16': (0, 0, 0)}
DEPTH = {'32FC1': False, '64FC1': False, '16UC1': True, 'mono16': True, 'mono8': False,
         '8UC1': False}  # -> 0 means "no measurement"


def test_table_lists_what_the_names_say():
    assert set(IMAGE_ENCODINGS) == set(SAMPLES)
    for name, enc in IMAGE_ENCODINGS.items():
        assert enc.name == name
        assert (enc.dtype.str.replace('|', ''), enc.channels) == SAMPLES[name], name
    assert set(SUPPORTED_DEPTH_ENCODINGS) == set(DEPTH)
    assert set(SUPPORTED_ENCODINGS) == set(SAMPLES) - {'32FC1', '64FC1', '16UC1'}


def samples(name: str) -> np.ndarray:
    """Distinct, non-zero-heavy samples of the encoding's type and shape (a zero included)."""
    dtype, channels = SAMPLES[name]
    shape = (H, W) if channels == 1 else (H, W, channels)
    rng = np.random.default_rng(sum(map(ord, name)))
    if dtype.endswith('f4') or dtype.endswith('f8'):
        values = rng.uniform(0.1, 50.0, shape).astype(dtype)
        values[0, 0] = np.nan
    else:
        values = rng.integers(1, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    values[(1, 2)] = 0  # a zero sample (row 1, column 2)
    return values


def expected_rgb(name: str, values: np.ndarray) -> np.ndarray:
    """The RGB decode_image must give for a one-sample-per-channel encoding's samples."""
    high = (values >> 8) if values.dtype.itemsize == 2 else values
    high = high.astype(np.uint8)
    if high.ndim == 2:
        high = high[..., None]
    return high[..., list(RGB_INDEX[name])]


def as_big_endian(msg):
    """The same image written big-endian (what a big-endian driver sends)."""
    enc = IMAGE_ENCODINGS[msg.encoding]
    values = np.frombuffer(msg.data, dtype=enc.dtype).byteswap()
    out = type(msg)(header=msg.header, height=msg.height, width=msg.width,
                    encoding=msg.encoding, is_bigendian=1, step=msg.step)
    out.data = values.tobytes()
    return out


@pytest.mark.parametrize('name', list(IMAGE_ENCODINGS))
def test_every_encoding_round_trips_through_packing_and_decoding(name):
    values = samples(name)
    msg = sensor_msgs.Image()
    messages.fill_image(msg, values, name)
    msg = serialization.deserialize_message(serialization.serialize_message(msg),
                                            sensor_msgs.Image)
    dtype, channels = SAMPLES[name]
    assert msg.step == W * channels * np.dtype(dtype).itemsize == W * bytes_per_pixel(name)
    assert msg.data.tobytes() == values.tobytes()  # little-endian, rows unpadded
    for wire in (msg, as_big_endian(msg)):
        np.testing.assert_array_equal(messages.image_to_array(wire), values)
        fields = (wire.encoding, wire.height, wire.width, wire.step, wire.is_bigendian,
                  wire.data)
        if name in RGB_INDEX:
            np.testing.assert_array_equal(decode_image(*fields), expected_rgb(name, values))
        elif name in SUPPORTED_ENCODINGS:  # YUV, Bayer: exact values in test_image_codec
            rgb = decode_image(*fields)
            assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        else:
            with pytest.raises(ImageDecodeError, match='unsupported encoding'):
                decode_image(*fields)
        if name in DEPTH:
            want = values.astype(np.float32)
            if DEPTH[name]:
                want[values == 0] = np.nan
            np.testing.assert_array_equal(decode_relative_depth(*fields), want)
        else:
            with pytest.raises(ImageDecodeError, match='unsupported encoding'):
                decode_relative_depth(*fields)


@pytest.mark.parametrize('name', [n for n in IMAGE_ENCODINGS
                                  if IMAGE_ENCODINGS[n].colour in ('yuv422', 'bayer')])
def test_flat_yuv_and_bayer_images_decode_flat(name):
    """A flat image decodes to one colour: Bayer to its value (for 16 bits the high byte of
    each sample), YUV 4:2:2 with Y = U = V = 128 to BT.601 grey round(1.164 * 112) = 130."""
    dtype, channels = SAMPLES[name]
    shape = (H, W) if channels == 1 else (H, W, channels)
    flat = np.full(shape, 0x8040 if dtype == '<u2' else 0x80, dtype=dtype)
    msg = messages.image_msg(flat, name, messages.make_header('camera'))
    rgb = decode_image(msg.encoding, H, W, msg.step, False, msg.data)
    grey = 130 if channels == 2 else 0x80
    np.testing.assert_array_equal(rgb, np.full((H, W, 3), grey, dtype=np.uint8))


# ------------------------------------------------------------------------------------------
# PointField datatypes

POINTFIELD_NAMES = ('INT8', 'UINT8', 'INT16', 'UINT16', 'INT32', 'UINT32', 'FLOAT32',
                    'FLOAT64')


def test_pointfield_table_matches_the_message_definition():
    """Codes from sensor_msgs/PointField's own constants, types from their names."""
    point_field = sensor_msgs.PointField
    table = {getattr(point_field, name): np.dtype(name.lower()) for name in POINTFIELD_NAMES}
    assert POINTFIELD_DATATYPES == table
    for name in POINTFIELD_NAMES:
        assert getattr(encodings, f'POINTFIELD_{name}') == getattr(point_field, name)


def cloud_message(code: int, big: bool):
    """A 2 x 3 PointCloud2: x, y, z FLOAT32 then a field ``v`` of datatype ``code`` ending
    exactly at ``point_step``, written with numpy types spelled from the datatype's name."""
    name = POINTFIELD_NAMES[code - 1]
    order = '>' if big else '<'
    size = np.dtype(name.lower()).itemsize
    point_step = 12 + size
    layout = np.dtype({'names': ['x', 'y', 'z', 'v'],
                       'formats': [order + 'f4'] * 3 + [order + np.dtype(name.lower()).str[1:]],
                       'offsets': [0, 4, 8, 12], 'itemsize': point_step})
    points = np.zeros((2, 3), dtype=layout)
    rng = np.random.default_rng(code)
    for axis in 'xyz':
        points[axis] = rng.uniform(-20, 20, (2, 3))
    points['v'] = rng.integers(0, 100, (2, 3))
    msg = sensor_msgs.PointCloud2(height=2, width=3, is_bigendian=big, point_step=point_step,
                                  row_step=3 * point_step, is_dense=True)
    msg.fields = [sensor_msgs.PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in
                  (('x', 0, 7), ('y', 4, 7), ('z', 8, 7), ('v', 12, code))]
    msg.data = points.tobytes()
    return msg, points


@pytest.mark.parametrize('big', [False, True])
@pytest.mark.parametrize('code', range(1, 9))
def test_every_pointfield_datatype_round_trips(code, big):
    msg, points = cloud_message(code, big)
    msg = serialization.deserialize_message(serialization.serialize_message(msg),
                                            sensor_msgs.PointCloud2)
    values = messages.cloud_to_array(msg, ('x', 'y', 'z', 'v'))
    for i, axis in enumerate('xyzv'):
        np.testing.assert_array_equal(values[..., i], points[axis].astype(np.float32))
    fields = messages.cloud_fields(msg)
    xyz = read_points_xyz(fields, msg.point_step, msg.row_step, msg.width, msg.height, big,
                          msg.data)  # accepts v: its size fits point_step exactly...
    np.testing.assert_array_equal(xyz.reshape(2, 3, 3), values[..., :3])
    with pytest.raises(LidarError, match='does not fit'):  # ...and not one byte more
        read_points_xyz(fields[:3] + [('v', 13, code, 1)], msg.point_step, msg.row_step,
                        msg.width, msg.height, big, msg.data)


def test_packed_cloud_round_trips_through_the_message():
    xyz = np.random.default_rng(3).uniform(-5, 5, (4, 5, 3)).astype(np.float32)
    xyz[1, 2] = np.nan
    rgb = np.random.default_rng(4).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = messages.cloud_msg(pack_cloud(xyz, rgb), messages.make_header('camera'))
    msg = serialization.deserialize_message(serialization.serialize_message(msg),
                                            sensor_msgs.PointCloud2)
    np.testing.assert_array_equal(messages.cloud_to_array(msg), xyz)
    packed = messages.cloud_to_array(msg, ('rgb',))[..., 0].view(np.uint32)
    np.testing.assert_array_equal(packed >> 16 & 255, rgb[..., 0])
    np.testing.assert_array_equal(packed & 255, rgb[..., 2])
    finite = read_points_xyz(messages.cloud_fields(msg), msg.point_step, msg.row_step,
                             msg.width, msg.height, msg.is_bigendian, msg.data)
    keep = np.isfinite(xyz).all(axis=-1).reshape(-1)
    np.testing.assert_array_equal(finite, xyz.reshape(-1, 3)[keep])
