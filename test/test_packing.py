"""Tests for depth_node.packing with real sensor_msgs messages and rclpy serialization.

``serialize_message`` runs the same C conversion as ``Publisher.publish``, so a serialize /
deserialize round trip checks that the filled messages can be published, without a node.
"""

import array
import gc
import types

import numpy as np
import pytest

from depth_node import packing
from depth_node.cloud import depth_to_points, pack_cloud, strided_rgb
from depth_node.packing import (depth_to_uint16_mm, fill_cloud, fill_image, PackingError,
                                set_uint8_data)

sensor_msgs = pytest.importorskip('sensor_msgs.msg')
serialization = pytest.importorskip('rclpy.serialization')
Image, PointCloud2, PointField = sensor_msgs.Image, sensor_msgs.PointCloud2, sensor_msgs.PointField

K = np.array([[50.0, 0.0, 15.5], [0.0, 50.0, 11.5], [0.0, 0.0, 1.0]])


@pytest.fixture(params=['bypass', 'setter'])
def path(request, monkeypatch):
    """Run a test through each way set_uint8_data can store the bytes."""
    if request.param == 'setter':
        monkeypatch.setattr(packing, '_has_data_slot', lambda msg: False)
    return request.param


def round_trip(msg):
    return serialization.deserialize_message(serialization.serialize_message(msg), type(msg))


def depth_image(h=24, w=32):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 12.0, (h, w)).astype(np.float32)
    depth[3, 4] = np.nan
    depth[5, 6] = np.inf
    return depth


# ------------------------------------------------------------------------------------------
# Images

@pytest.mark.parametrize('encoding', ['32FC1', '16UC1', 'rgb8'])
def test_fill_image_round_trip(path, encoding):
    depth = depth_image()
    array_ = {'32FC1': depth, '16UC1': depth_to_uint16_mm(depth),
              'rgb8': np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
              }[encoding]
    msg = Image()
    msg.header.frame_id = 'camera_optical_frame'
    fill_image(msg, array_, encoding)
    assert type(msg.data) is array.array and msg.data.typecode == 'B'
    out = round_trip(msg)
    assert (out.height, out.width, out.encoding, out.is_bigendian) == (24, 32, encoding, 0)
    assert out.step == array_.shape[1] * array_.itemsize * (3 if encoding == 'rgb8' else 1)
    assert out.header.frame_id == 'camera_optical_frame'  # header untouched
    assert out.data.tobytes() == array_.tobytes()
    decoded = np.frombuffer(out.data, dtype=array_.dtype.newbyteorder('<')).reshape(array_.shape)
    np.testing.assert_array_equal(decoded, array_)
    assert out == msg  # the message compares like a normally built one


def test_message_owns_its_bytes(path):
    depth = depth_image()
    expected = depth.tobytes()
    msg = Image()
    fill_image(msg, depth, '32FC1')
    depth[:] = -1.0  # the caller reuses its buffer...
    assert msg.data.tobytes() == expected
    del depth  # ...or frees it
    gc.collect()
    assert round_trip(msg).data.tobytes() == expected


def test_non_contiguous_and_big_endian_inputs(path):
    depth = depth_image()
    view = depth[:, ::2]
    msg = Image()
    fill_image(msg, view, '32FC1')
    assert msg.step == 16 * 4
    np.testing.assert_array_equal(
        np.frombuffer(round_trip(msg).data, '<f4').reshape(24, 16), view)
    big = depth.astype('>f4')
    fill_image(msg, big, '32FC1')
    assert msg.is_bigendian == 0
    np.testing.assert_array_equal(np.frombuffer(msg.data, '<f4').reshape(24, 32), depth)


def test_single_channel_with_trailing_axis():
    msg = Image()
    fill_image(msg, np.ones((2, 3, 1), np.float32), '32FC1')
    assert (msg.height, msg.width, msg.step, len(msg.data)) == (2, 3, 12, 24)


def test_refilling_a_message_replaces_the_data(path):
    msg = Image()
    fill_image(msg, np.ones((2, 2), np.float32), '32FC1')
    fill_image(msg, np.zeros((1, 3), np.float32), '32FC1')
    assert len(msg.data) == 12 and round_trip(msg).data.tobytes() == bytes(12)


def test_check_fields_messages_accept_the_data(path):
    msg = Image(check_fields=True)
    fill_image(msg, depth_image(), '32FC1')
    assert round_trip(msg).data.tobytes() == depth_image().tobytes()


@pytest.mark.parametrize('array_, encoding, match', [
    (np.ones((2, 2), np.float64), '32FC1', 'float32'),
    (np.ones((2, 2, 2), np.float32), '32FC1', r'\(H, W\)'),
    (np.ones((2, 2), np.float32), '16UC1', 'uint16'),
    (np.ones((2, 2), np.uint8), 'rgb8', r'\(H, W, 3\)'),
    (np.ones((2, 2), np.float32), 'jpeg', 'unsupported encoding'),
])
def test_fill_image_rejects_mismatches(array_, encoding, match):
    with pytest.raises(PackingError, match=match):
        fill_image(Image(), array_, encoding)


def test_set_uint8_data_on_duck_typed_object():
    obj = types.SimpleNamespace(data=None)
    set_uint8_data(obj, np.arange(6, dtype=np.uint16))
    assert type(obj.data) is array.array
    assert obj.data.tobytes() == np.arange(6, dtype=np.uint16).tobytes()


# ------------------------------------------------------------------------------------------
# Clouds

@pytest.mark.parametrize('organized', [True, False])
@pytest.mark.parametrize('with_rgb', [True, False])
def test_fill_cloud_round_trip(path, organized, with_rgb):
    depth = depth_image()
    xyz = depth_to_points(depth, K)
    rgb = np.random.default_rng(2).integers(0, 256, xyz.shape, dtype=np.uint8)
    packed = pack_cloud(xyz, rgb if with_rgb else None, organized=organized)
    msg = PointCloud2()
    msg.header.frame_id = 'camera_optical_frame'
    fill_cloud(msg, packed, PointField)
    out = round_trip(msg)
    assert out.header.frame_id == 'camera_optical_frame'
    assert (out.height, out.width) == (packed.height, packed.width)
    assert (out.point_step, out.row_step) == (packed.point_step, packed.row_step)
    assert out.is_bigendian is False and out.is_dense is (not organized)
    assert [(f.name, f.offset, f.datatype, f.count) for f in out.fields] == list(packed.fields)
    assert out.data.tobytes() == packed.data.tobytes()
    assert len(out.data) == out.row_step * out.height

    dtype = np.dtype({'names': [f.name for f in out.fields],
                      'formats': ['<f4'] * len(out.fields),
                      'offsets': [f.offset for f in out.fields], 'itemsize': out.point_step})
    pts = np.frombuffer(out.data, dtype).reshape(out.height, out.width)
    got = np.stack([pts['x'], pts['y'], pts['z']], -1)
    finite = np.isfinite(xyz).all(axis=2)
    np.testing.assert_array_equal(got, xyz if organized else xyz[finite][np.newaxis])
    if with_rgb:
        word = pts['rgb'].view('<u4')
        got_rgb = np.stack([word >> 16, (word >> 8) & 255, word & 255], -1)
        np.testing.assert_array_equal(got_rgb, rgb if organized else rgb[finite][np.newaxis])


def test_cloud_message_owns_its_bytes(path):
    xyz = depth_to_points(depth_image(), K)
    packed = pack_cloud(xyz)  # organized xyz: packed.data is a view of xyz
    expected = packed.data.tobytes()
    msg = PointCloud2()
    fill_cloud(msg, packed, PointField)
    xyz[:] = 0.0
    del xyz, packed
    gc.collect()
    assert round_trip(msg).data.tobytes() == expected


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.gpu)])
@pytest.mark.parametrize('organized, voxel_size', [(True, 0.0), (False, 0.0), (False, 0.5)])
@pytest.mark.parametrize('with_rgb', [True, False])
def test_cloud_packed_from_tensors_publishes_the_same_message(device, organized, voxel_size,
                                                              with_rgb):
    """Points and colours that stay on the model's device give the message numpy gives: the
    same data bytes (the voxel grid's centroids within a float32 ulp, see test_cloud.py)."""
    torch = pytest.importorskip('torch')
    if device == 'cuda' and not torch.cuda.is_available():
        pytest.skip('needs CUDA (a CUDA build of torch and a GPU)')
    depth = depth_image()
    rgb = np.random.default_rng(2).integers(0, 256, depth.shape + (3,), dtype=np.uint8)
    colors = rgb if with_rgb else None
    messages = []
    for d, c in ((depth, colors),
                 (torch.from_numpy(depth).to(device),
                  None if colors is None else torch.from_numpy(colors).to(device))):
        msg = PointCloud2()
        msg.header.frame_id = 'camera_optical_frame'
        fill_cloud(msg, pack_cloud(depth_to_points(d, K, stride=2),
                                   None if c is None else strided_rgb(c, 2),
                                   organized=organized, voxel_size=voxel_size), PointField)
        messages.append(msg)
    want, got = messages
    assert (got.height, got.width, got.is_dense) == (want.height, want.width, want.is_dense)
    if voxel_size:
        assert got.width < np.isfinite(depth[::2, ::2]).sum()
        words = [np.frombuffer(m.data, '<f4').reshape(m.width, m.point_step // 4)
                 for m in (got, want)]
        np.testing.assert_allclose(words[0][:, :3], words[1][:, :3], rtol=1e-6)
        np.testing.assert_array_equal(words[0][:, 3:].view('<u4'), words[1][:, 3:].view('<u4'))
    else:  # the published message, read back (not its CDR bytes: padding is not zeroed)
        got, want = round_trip(got), round_trip(want)
        assert got.data.tobytes() == want.data.tobytes()
        assert (got.point_step, got.row_step, got.fields) == (
            want.point_step, want.row_step, want.fields)


def test_fill_cloud_rejects_inconsistent_cloud():
    packed = pack_cloud(np.ones((2, 2, 3), np.float32))
    bad = type(packed)(data=packed.data[:-1], height=2, width=2, point_step=12, row_step=24,
                       fields=packed.fields, is_dense=False)
    with pytest.raises(PackingError, match='row_step'):
        fill_cloud(PointCloud2(), bad, PointField)


# ------------------------------------------------------------------------------------------
# 16UC1

def test_depth_to_uint16_mm():
    depth = np.array([[np.nan, np.inf, -np.inf, -1.0, 0.0, 0.0004],
                      [0.0006, 1.25, 2.0, 65.535, 65.536, 100.0]], dtype=np.float32)
    mm = depth_to_uint16_mm(depth)
    assert mm.dtype == np.uint16 and mm.shape == depth.shape
    assert mm.tolist() == [[0, 0, 0, 0, 0, 0], [1, 1250, 2000, 65535, 0, 0]]
    assert depth_to_uint16_mm(depth.astype(np.float64)).tolist() == mm.tolist()
    with pytest.raises(PackingError):
        depth_to_uint16_mm(np.ones((2, 2), np.uint16))


def test_depth_to_uint16_mm_of_a_tensor_is_converted_where_it_lives():
    """A frame kept on the device converts there (half the bytes to copy back): the same
    millimetres as numpy, ties to even included, as a uint16 tensor."""
    import torch

    rng = np.random.default_rng(7)
    depth = rng.uniform(-1.0, 70.0, (40, 50)).astype(np.float32)
    depth[0, :8] = [np.nan, np.inf, -np.inf, 0.0005, 0.0015, 0.0025, 65.535, 65.5355]
    got = depth_to_uint16_mm(torch.from_numpy(depth))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint16
    np.testing.assert_array_equal(got.numpy(), depth_to_uint16_mm(depth))
    with pytest.raises(PackingError):
        depth_to_uint16_mm(torch.ones((2, 2), dtype=torch.int32))
