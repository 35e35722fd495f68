"""The node with a network, in-process, through real rclpy and DDS.

Tiny randomly initialised Depth Anything models (relative and metric) saved to a temp dir are
loaded with ``from_pretrained`` like real weights; real frames from ``../shared/data/real`` are
published with rclpy and every output topic is checked.
"""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
import pytest

from depth_node.messages import (camera_info_msg, cloud_fields, cloud_to_array, image_msg,
                                 image_to_array, make_header)
from depth_node.sample_data import load_frame
from ros_harness import holds_camera_info, status_values

pytestmark = pytest.mark.ros


@pytest.fixture(scope='module')
def tum(real_data):
    return load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])


def _start(session, model, topic='image', **params):
    base = {'model.name': model, 'model.device': 'cpu', 'model.warmup': False}
    base.update(params)
    node = session.start_depth_node(base)
    probe = session.probe()
    assert probe.wait_subscribers(topic), f'node never subscribed {topic}'
    assert probe.wait_subscribers('camera_info')
    return node, probe


def _send(node, probe, frame, sec, nanosec=0, encoding='rgb8', frame_id='cam_optical',
          info=True):
    header = make_header(frame_id, sec, nanosec)
    if info:  # on another topic than the image: wait until the node holds it
        msg = camera_info_msg(frame.intrinsics(), header)
        probe.publish_until('camera_info', msg, lambda: holds_camera_info(node, msg),
                            'the node to take the camera_info')
    image = frame.image if encoding == 'rgb8' else np.ascontiguousarray(frame.image[..., ::-1])
    probe.publish('image', image_msg(image, encoding, header))
    return (sec, nanosec)


def test_relative_model_publishes_relative_depth_never_metres(session, models, tum):
    node, probe = _start(session, models['relative'])
    assert node.core.is_metric is False
    stamp = _send(node, probe, tum, 10, 123)
    rel = probe.wait_stamp('depth/relative', stamp)
    assert rel is not None, 'no depth/relative'
    assert rel.header.frame_id == 'cam_optical'
    assert (rel.encoding, rel.height, rel.width) == ('32FC1', 480, 640)
    assert rel.step == 640 * 4
    values = image_to_array(rel)
    assert np.isfinite(values).all()
    colored = probe.wait_stamp('depth/colored', stamp)
    assert colored is not None and (colored.encoding, colored.height, colored.width) == (
        'rgb8', 480, 640)
    # no metric outputs from a relative model without LiDAR
    assert probe.wait_stamp('depth/image', stamp, timeout=1.0) is None
    assert probe.wait_stamp('depth/points', stamp, timeout=0.1) is None


def test_metric_model_publishes_depth_info_and_cloud(session, models, kitti):
    node, probe = _start(session, models['metric'], **{'cloud.color': True})
    assert node.core.is_metric is True
    stamp = _send(node, probe, kitti, 20, 5, encoding='bgr8', frame_id='kitti_cam2_optical')
    depth_msg = probe.wait_stamp('depth/image', stamp)
    assert depth_msg is not None, 'no depth/image from a metric model'
    assert depth_msg.header.frame_id == 'kitti_cam2_optical'
    assert (depth_msg.encoding, depth_msg.height, depth_msg.width) == ('32FC1', 370, 1224)
    depth = image_to_array(depth_msg)
    finite = depth[np.isfinite(depth)]
    assert finite.size > 0 and (finite > 0).all(), 'metric depth must be positive or NaN'

    info = probe.wait_stamp('depth/camera_info', stamp)
    assert info is not None and info.header.frame_id == 'kitti_cam2_optical'
    assert (info.width, info.height) == (1224, 370)
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), kitti.K)

    cloud = probe.wait_stamp('depth/points', stamp)
    assert cloud is not None
    assert (cloud.height, cloud.width) == (185, 612)
    assert not cloud.is_dense
    names = [f[0] for f in cloud_fields(cloud)]
    assert names == ['x', 'y', 'z', 'rgb']
    xyz = cloud_to_array(cloud)
    np.testing.assert_allclose(xyz[..., 2], depth[::2, ::2], rtol=1e-6, equal_nan=True)
    # colours are the camera image at the same strided pixels
    packed = cloud_to_array(cloud, ('rgb',))[..., 0].view(np.uint32)
    red = ((packed >> 16) & 255).astype(np.uint8)
    np.testing.assert_array_equal(red, kitti.image[::2, ::2, 0])
    assert probe.wait_stamp('depth/relative', stamp, timeout=0.5) is None


def test_depth_without_camera_info_still_published(session, models, tum):
    node, probe = _start(session, models['metric'])
    stamp = _send(node, probe, tum, 30, info=False)
    assert probe.wait_stamp('depth/image', stamp) is not None
    assert probe.wait_stamp('depth/points', stamp, timeout=1.0) is None
    assert probe.wait_stamp('depth/camera_info', stamp, timeout=0.1) is None


def test_oversize_image_downscaled_with_matching_camera_info(session, models, tum):
    node, probe = _start(session, models['metric'], **{'input.max_pixels': 320 * 240})
    stamp = _send(node, probe, tum, 40)
    depth_msg = probe.wait_stamp('depth/image', stamp)
    assert depth_msg is not None and (depth_msg.width, depth_msg.height) == (320, 240)
    info = probe.wait_stamp('depth/camera_info', stamp)
    assert (info.width, info.height) == (320, 240)
    K = np.asarray(info.k).reshape(3, 3)
    assert K[0, 0] == pytest.approx(tum.K[0, 0] / 2, rel=1e-6)
    assert K[1, 1] == pytest.approx(tum.K[1, 1] / 2, rel=1e-6)
    assert abs(K[0, 2] - tum.K[0, 2] / 2) < 0.5 and abs(K[1, 2] - tum.K[1, 2] / 2) < 0.5
    cloud = probe.wait_stamp('depth/points', stamp)
    assert (cloud.height, cloud.width) == (120, 160)


def _prediction(node, rgb):
    """The node's own model on ``rgb``, without ROS: what its output for that image must be."""
    return node.core.estimator.predict(np.ascontiguousarray(rgb)).depth


def _assert_colour_order_matters(node, rgb, expected):
    """The model tells ``rgb`` from its channels swapped, so a swap in the node would show."""
    swapped = _prediction(node, rgb[..., ::-1])
    assert not np.allclose(swapped, expected, rtol=1e-3, atol=1e-3)


def test_compressed_input(session, models, tum):
    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    node, probe = _start(session, models['relative'], topic='image/compressed',
                         **{'input.compressed': True})
    buf = io.BytesIO()
    PILImage.fromarray(tum.image).save(buf, format='JPEG', quality=90)
    msg = CompressedImage(header=make_header('cam', 50, 0), format='rgb8; jpeg compressed bgr8',
                          data=buf.getvalue())
    probe.publish('image/compressed', msg)
    rel = probe.wait_stamp('depth/relative', (50, 0))
    assert rel is not None and (rel.width, rel.height) == (640, 480)
    # the values are the prediction of the JPEG as Pillow decodes it, in RGB order
    decoded = np.asarray(PILImage.open(io.BytesIO(buf.getvalue())).convert('RGB'))
    expected = _prediction(node, decoded)
    _assert_colour_order_matters(node, decoded, expected)
    np.testing.assert_allclose(image_to_array(rel), expected, rtol=1e-4, atol=1e-5)


def _uyvy(rgb):
    """``(H, W, 3)`` RGB to UYVY bytes ``(H, W, 2)``: BT.601 limited range, chroma of each pair
    of pixels averaged."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 219 / 255 * (0.299 * r + 0.587 * g + 0.114 * b)
    cb = 128 + 224 / 255 * (-0.168736 * r - 0.331264 * g + 0.5 * b)
    cr = 128 + 224 / 255 * (0.5 * r - 0.418688 * g - 0.081312 * b)
    out = np.empty(rgb.shape[:2] + (2,), np.uint8)
    out[..., 1] = np.rint(y)
    out[:, 0::2, 0] = np.rint((cb[:, 0::2] + cb[:, 1::2]) / 2)
    out[:, 1::2, 0] = np.rint((cr[:, 0::2] + cr[:, 1::2]) / 2)
    return out


def _rggb(rgb):
    """``(H, W, 3)`` RGB to an RGGB Bayer mosaic ``(H, W)``."""
    mosaic = rgb[..., 1].copy()
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


@pytest.mark.parametrize('encoding', ['mono8', 'bgra8', 'yuv422', 'bayer_rggb8'])
def test_other_encodings_served(session, models, tum, encoding):
    """Each encoding comes out as the prediction of the image it holds, channel order included:
    mono8 and bgra8 against the image itself; yuv422 and Bayer against the codec's conversion
    (test_image_codec checks it; here it must also be close to the image)."""
    from depth_node.image_codec import decode_image
    from sensor_msgs.msg import Image

    node, probe = _start(session, models['relative'])
    h, w = 240, 320
    rgb = np.ascontiguousarray(tum.image[::2, ::2])
    if encoding == 'mono8':
        data = rgb.mean(axis=2).astype(np.uint8)
        image = np.repeat(data[..., None], 3, axis=2)
    elif encoding == 'bgra8':
        data = np.concatenate([rgb[..., ::-1], np.full((h, w, 1), 255, np.uint8)], axis=2)
        image = rgb
    else:
        data = _uyvy(rgb) if encoding == 'yuv422' else _rggb(rgb)
        image = decode_image(encoding, h, w, data[0].size, False, data.tobytes())
        assert np.abs(image.astype(float) - rgb).mean() < 12.0, 'the test data is not the image'
    header = make_header('cam', 60, 0)
    msg = Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                step=data[0].size)
    msg.data = data.tobytes()
    probe.publish('image', msg)
    rel = probe.wait_stamp('depth/relative', (60, 0))
    assert rel is not None, f'{encoding} frame not served'
    assert (rel.width, rel.height) == (w, h)
    expected = _prediction(node, image)
    if encoding != 'mono8':
        _assert_colour_order_matters(node, image, expected)
    np.testing.assert_allclose(image_to_array(rel), expected, rtol=1e-4, atol=1e-5)


def test_newest_frame_wins_and_drops_are_counted(session, tum):
    # a full-size random Depth Anything V2 Small: about a second per frame on this CPU
    node, probe = _start(session, '', **{'model.random_init': 'depth-anything-v2-small',
                                         'model.engine': 'torch'})
    stamps = []
    for i in range(12):
        stamps.append(_send(node, probe, tum, 70, i * 10_000_000, info=(i == 0)))
        time.sleep(0.03)
    last = stamps[-1]
    assert probe.wait_stamp('depth/relative', last, timeout=60.0) is not None, \
        'the newest frame was not served'
    served = [(m.header.stamp.sec, m.header.stamp.nanosec)
              for m in probe.received['depth/relative']]
    assert served == sorted(served), 'frames served out of order'
    assert len(served) < len(stamps) / 2, f'frames were queued, not dropped: {served}'
    counters = node.counters
    # DDS itself may drop frames before the callback (best effort, depth 1) on a loaded machine;
    # every frame the node did receive was either served or counted as dropped.
    assert counters['frames_received'] <= len(stamps)
    assert counters['frames_dropped'] >= counters['frames_received'] - len(served)
    assert counters['frames_dropped'] >= 1


def test_diagnostics_report_counters_and_timings(session, models, tum):
    node, probe = _start(session, models['metric'], **{'diagnostics.period': 0.2})
    stamp = _send(node, probe, tum, 80)
    assert probe.wait_stamp('depth/image', stamp) is not None

    def has_processed(msg):  # sent after the frame's timings were stored, not just counted
        values = status_values(msg.status[0])
        return int(values.get('frames_processed', 0)) >= 1 and 'time_ms.total' in values

    diag = probe.wait_for('/diagnostics', has_processed, timeout=5.0)
    assert diag is not None
    values = status_values(diag.status[0])
    assert int(values['frames_received']) >= 1
    assert float(values['time_ms.forward']) > 0
    assert float(values['time_ms.total']) >= float(values['time_ms.forward'])
    # in process (no entry point serving on its main thread) the node's own worker infers
    assert values['inference_thread'] == 'depth_node_worker'


def test_runtime_parameter_change_validated(session, models):
    from rclpy.parameter import Parameter

    node, _ = _start(session, models['metric'])
    results = node.set_parameters([Parameter('cloud.stride', value=0)])
    assert not results[0].successful and 'cloud.stride' in results[0].reason
    results = node.set_parameters([Parameter('cloud.max_depth', value=0.05)])
    assert not results[0].successful and 'max_depth' in results[0].reason
    results = node.set_parameters([Parameter('model.name', value='other')])
    assert not results[0].successful  # read-only
    results = node.set_parameters([Parameter('cloud.stride', value=4)])
    assert results[0].successful and node.core.cfg['cloud.stride'] == 4


def test_metric_model_keeps_its_depth_when_lidar_has_no_fit(session, models, tum):
    """With LiDAR on but no scan, a metric model's own depth is still published; the
    alignment status says there was no LiDAR correction."""
    eye = [float(v) for v in np.eye(4).ravel()]
    node, probe = _start(session, models['metric'], **{
        'lidar.enabled': True, 'lidar.T_camera_lidar': eye,
        'filter.edges': False})  # compared with the raw prediction pixel for pixel
    stamp = _send(node, probe, tum, 90)
    assert status_values(probe.wait_stamp('depth/alignment', stamp))['state'] == 'no_fit'
    msg = probe.wait_stamp('depth/image', stamp)
    assert msg is not None
    expected = _prediction(node, tum.image)
    assert (expected > 0).all()  # the tiny metric model's depth is valid everywhere
    np.testing.assert_allclose(image_to_array(msg), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('encoding', ['32FC1', '16UC1'])
def test_metric_model_invalid_pixels_are_nan_or_zero(session, models, tum, encoding):
    """Where a metric model's output is no depth (zero, negative or NaN rows, injected into its
    prediction), depth/image is NaN in 32FC1 and 0 in 16UC1; elsewhere it is the model's
    depth (millimetres, rounded, in 16UC1)."""
    node, probe = _start(session, models['metric'], **{
        'output.encoding': encoding, 'cloud.enabled': False,
        'filter.edges': False})  # compared with the raw prediction pixel for pixel
    estimator = node.core.estimator
    predict = estimator.predict

    def with_holes(rgb, *args, **kwargs):
        prediction = predict(rgb, *args, **kwargs)
        depth = prediction.depth.copy()
        depth[:20], depth[20:40], depth[40:60] = 0.0, -1.5, np.nan
        return dataclasses.replace(prediction, depth=depth)

    estimator.predict = with_holes
    try:
        stamp = _send(node, probe, tum, 92)
        msg = probe.wait_stamp('depth/image', stamp)
    finally:
        del estimator.predict  # the class's method again
    assert msg is not None and msg.encoding == encoding
    depth = image_to_array(msg)
    expected = predict(tum.image).depth[60:]
    if encoding == '32FC1':
        assert np.isnan(depth[:60]).all(), 'invalid model output published as a number'
        np.testing.assert_allclose(depth[60:], expected, rtol=1e-4, atol=1e-5)
    else:
        assert (depth[:60] == 0).all(), 'invalid model output published as a number'
        assert np.abs(depth[60:].astype(float) - expected * 1000.0).max() <= 0.5 + 1e-2


def test_non_finite_network_output_is_nan_and_counted_on_diagnostics(session, models, tum):
    """An overflowed forward pass (inf and NaN in the raw network output, injected in the
    engine) is published as NaN, never inf, and counted as non_finite_outputs with a WARN."""
    from diagnostic_msgs.msg import DiagnosticStatus

    node, probe = _start(session, models['relative'], **{'diagnostics.period': 0.2})
    engine = node.core.estimator.engine
    run = engine.run

    def overflowing(pixel_values):
        depth, fov = run(pixel_values)
        depth = depth.clone()
        depth[:, :8] = float('inf')
        depth[:, 8:10] = float('nan')
        return depth, fov

    engine.run = overflowing
    try:
        stamp = _send(node, probe, tum, 93)
        msg = probe.wait_stamp('depth/relative', stamp)
    finally:
        del engine.run
    assert msg is not None
    values = image_to_array(msg)
    assert not np.isinf(values).any() and np.isnan(values[:40]).any()
    assert np.isfinite(values[-100:]).all()

    def counted(diag):
        return status_values(diag.status[0]).get('non_finite_outputs') == '1'

    diag = probe.wait_for('/diagnostics', counted, timeout=10.0)
    assert diag is not None, 'non_finite_outputs never reached /diagnostics'
    assert diag.status[0].level == DiagnosticStatus.WARN
    assert 'non_finite_outputs' in diag.status[0].message


def test_outputs_nobody_subscribes_are_not_built(session, models, tum):
    node = session.start_depth_node({'model.name': models['metric'], 'model.device': 'cpu',
                                     'model.warmup': False})
    quiet = session.probe(outputs=('/diagnostics',))  # subscribes no depth output
    assert quiet.wait_subscribers('image') and quiet.wait_subscribers('camera_info')
    _send(node, quiet, tum, 95, 1)
    deadline = time.monotonic() + 30
    while 'forward' not in node.last_timings:  # stored when the frame is done
        assert time.monotonic() < deadline, 'the frame was never processed'
        time.sleep(0.02)
    assert 'publish_depth' not in node.last_timings and 'cloud' not in node.last_timings, \
        node.last_timings
    # a subscriber appears: the depth image is built and sent again
    listener = session.probe()
    deadline = time.monotonic() + 10
    while node.core.cameras[0].pubs['depth'].get_subscription_count() == 0:
        assert time.monotonic() < deadline, 'the listener was never matched'
        time.sleep(0.02)
    stamp = _send(node, listener, tum, 95, 2)
    assert listener.wait_stamp('depth/image', stamp) is not None
    deadline = time.monotonic() + 5  # the timings are stored just after the publishing
    while 'publish_depth' not in node.last_timings:
        assert time.monotonic() < deadline, node.last_timings
        time.sleep(0.01)


def test_metric_cloud_is_built_with_the_forward_pass(session, models, kitti):
    """A metric model without LiDAR back-projects on the device with its forward pass
    (``predict_points``); the cloud is the published depth back-projected, at every stride."""
    from depth_node.cloud import depth_to_points

    node, probe = _start(session, models['metric'])
    calls = []
    original = node.core.estimator.predict_points

    def spy(*args, **kwargs):
        calls.append(kwargs.get('stride'))
        return original(*args, **kwargs)

    node.core.estimator.predict_points = spy
    for sec, stride in ((97, 2), (98, 3)):
        if stride != 2:
            from rclpy.parameter import Parameter
            assert node.set_parameters([Parameter('cloud.stride', value=stride)])[0].successful
        stamp = _send(node, probe, kitti, sec, frame_id='kitti_cam2_optical')
        depth_msg = probe.wait_stamp('depth/image', stamp)
        cloud = probe.wait_stamp('depth/points', stamp)
        assert depth_msg is not None and cloud is not None
        expected = depth_to_points(image_to_array(depth_msg), kitti.K, stride=stride,
                                   min_depth=0.1, max_depth=80.0)
        np.testing.assert_allclose(cloud_to_array(cloud), expected, rtol=1e-5, atol=1e-6,
                                   equal_nan=True)
    assert calls == [2, 3]


def test_frames_lost_before_the_callback_are_counted(session, models, tum):
    """A burst overruns the depth-1 queue: every frame the node did not receive is counted from
    the gap in the publisher's sequence numbers (rclpy passes them from Iron on)."""
    from depth_node import node as node_module

    if not node_module._CALLBACK_WITH_INFO:
        pytest.skip('this rclpy does not pass message info to callbacks')
    node, probe = _start(session, models['relative'])
    first = _send(node, probe, tum, 99, 0)
    assert probe.wait_stamp('depth/relative', first) is not None
    before = node.counters
    burst = 40
    for i in range(1, burst + 1):
        probe.publish('image', image_msg(tum.image, 'rgb8', make_header('cam_optical', 99, i)))
    assert probe.wait_stamp('depth/relative', (99, burst)) is not None
    after = node.counters
    received = after['frames_received'] - before['frames_received']
    lost = (after.get('frames_lost_before_callback', 0) -
            before.get('frames_lost_before_callback', 0))
    assert received + lost == burst, (received, lost)

    # the rule itself: a gap counts, a step back (another publisher, a restart) restarts
    cam = node.core.cameras[0]
    cam.last_sequence = None
    start = node.counters.get('frames_lost_before_callback', 0)
    for seq in (5, 6, 9, 3, 4, None, 0, 7):
        node.core.count_lost(cam, {'publication_sequence_number': seq})
    assert node.counters['frames_lost_before_callback'] - start == 2 + 2
