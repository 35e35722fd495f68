"""Bounded cost for every input, through ROS: decompression bombs, degenerate shapes, long
message strings, camera_info binning and ROI, and why a LiDAR scan gave no fit.

Same method as test_reliability.py (whose helpers and LiDAR node this module reuses): publish
the hostile message to a running node, check the counter and the one log line with its reason,
then a good frame must come out right. The image nodes here run a tiny random Depth Anything
with ``input.max_pixels`` 320 x 240 and ``input.oversize: downscale`` (so that bombs meet the
downscale path, the one that decodes). The memory bound itself is measured in a fresh process
by test_image_codec.py::test_decoding_memory_is_bounded_by_max_pixels.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, PointField

from depth_node.camera_info import intrinsics_to_fields
from depth_node.evaluate import compute_metrics
from depth_node.image_codec import decode_compressed
from depth_node.messages import image_msg, image_to_array, make_header
from hostile_images import jpeg_claiming, png_of_zeros
import test_reliability
from test_reliability import (
    FRAME, Rig, SCALE, T_CAMERA_LIDAR, TIMEOUT, _cloud, compressed, encoded, good_metric_frame,
    held_forward, next_stamp, publish_lidar_frame, raw, served_right)

# test_reliability's fixtures, shared by name: pytest finds fixtures among a test module's
# globals. (Imported with `from ... import`, each reads to flake8 as an unused import that every
# test taking it as an argument redefines.)
session = test_reliability.session
model_dir = test_reliability.model_dir
tum = test_reliability.tum
small = test_reliability.small
lidar_rig = test_reliability.lidar_rig
lidar = test_reliability.lidar

pytestmark = pytest.mark.ros

MAX_PIXELS = 320 * 240
PARAMS = {'model.device': 'cpu', 'model.warmup': False, 'input.max_pixels': MAX_PIXELS,
          'input.oversize': 'downscale', 'diagnostics.period': 0.2}
LONG_LINE = 500  # characters: every log line about one bad message is shorter than this


@pytest.fixture(scope='module')
def image_rig(session, model_dir, small):
    rig = Rig(session, '/cost_image', {'model.name': model_dir, **PARAMS}, ('image',))
    rig.reference['small'] = small[0]
    rig.reference['rgb'] = rig.node.core.estimator.predict(small[0]).depth
    return rig


@pytest.fixture(scope='module')
def compressed_rig(session, model_dir, small):
    rig = Rig(session, '/cost_compressed',
              {'model.name': model_dir, 'input.compressed': True, **PARAMS},
              ('image/compressed',))
    rig.reference['small'] = small[0]
    rig.reference['rgb'] = rig.node.core.estimator.predict(small[0]).depth
    return rig


def refused_once(rig: Rig, topic: str, msg: Any, reason: str) -> str:
    """Publish ``msg``; it must be counted as a bad image and logged once with ``reason``,
    never reach the network; returns the log line."""
    rig.fresh_log()
    counts = {k: rig.count(k) for k in ('bad_image', 'forward_failures', 'frame_errors',
                                        'forward_passes')}
    rig.probe.publish(topic, msg)
    rig.wait_count('bad_image', counts['bad_image'] + 1)
    lines = rig.log.matching('refused')
    assert len(lines) == 1 and reason in lines[0], (reason, lines)
    assert len(lines[0]) < LONG_LINE, len(lines[0])
    for key in ('forward_failures', 'frame_errors', 'forward_passes'):
        assert rig.count(key) == counts[key], key
    return lines[0]


def then_good_frame(rig: Rig, topic: str) -> None:
    """A good frame after the bad one is served right."""
    stamp = next_stamp()
    rgb = rig.reference['small']
    rig.probe.publish(topic, raw(rgb, 'rgb8', stamp) if topic == 'image' else
                      compressed(stamp, 'png', encoded(rgb, 'PNG')))
    served_right(rig, stamp, rig.reference['rgb'])


# ------------------------------------------------------------------- degenerate shapes
DEGENERATE_RAW = {
    # (height, width, encoding): a 1 x N image passed decoding and failed in the forward pass
    '1 x 100000 mono8': ((1, 100_000, 'mono8'),
                         '100000x1 has aspect ratio 100000:1, over the 16:1 the network can take '
                         '(input.max_aspect)'),
    '100 x 2 rgb8': ((100, 2, 'rgb8'), '2x100 has aspect ratio 50:1'),
    '40 x 4000 rgb8, over input.max_pixels': ((40, 4000, 'rgb8'), '4000x40 has aspect ratio '
                                                                  '100:1'),
}


@pytest.mark.parametrize('case', list(DEGENERATE_RAW))
def test_degenerate_shape_is_bad_input_on_arrival_not_a_forward_failure(image_rig, case):
    (height, width, encoding), reason = DEGENERATE_RAW[case]
    channels = 3 if encoding == 'rgb8' else 1
    pixels = np.full((height, width, channels) if channels == 3 else (height, width), 90,
                     np.uint8)
    stamp = next_stamp()
    line = refused_once(image_rig, 'image', raw(pixels, encoding, stamp), reason)
    assert line.startswith('image refused: ')
    then_good_frame(image_rig, 'image')
    assert image_rig.probe.wait_stamp('depth/relative', stamp, timeout=0.01) is None


DEGENERATE_COMPRESSED = {
    'PNG 20000 x 1 (within input.max_pixels)': (lambda: png_of_zeros(20_000, 1),
                                                '20000x1 has aspect ratio 20000:1'),
    'PNG 1 x 49,000,000 (95 KB)': (lambda: png_of_zeros(1, 49_000_000, 1),
                                   'PNG cannot be reduced while decoding'),
}


@pytest.mark.parametrize('case', list(DEGENERATE_COMPRESSED))
def test_degenerate_compressed_shape_refused_from_its_header(compressed_rig, case):
    make, reason = DEGENERATE_COMPRESSED[case]
    msg = compressed(next_stamp(), 'png', make())
    refused_once(compressed_rig, 'image/compressed', msg, reason)
    then_good_frame(compressed_rig, 'image/compressed')


# --------------------------------------------------------------------- decompression bombs
BOMBS = {
    'PNG 7000 x 7000 (143 KB)': (lambda: png_of_zeros(7000, 7000),
                                 'PNG image is 7000x7000 = 49000000 pixels, more than '
                                 f'max_pixels={MAX_PIXELS}, and PNG cannot be reduced'),
    'JPEG claiming 7000 x 7000 (632 bytes)': (lambda: jpeg_claiming(7000, 7000),
                                              'even decoded at 1/8 scale it has 765625 pixels'),
    'progressive JPEG claiming 2000 x 2000': (lambda: jpeg_claiming(2000, 2000, True),
                                              'a progressive or multi-scan JPEG cannot be '
                                              'reduced while decoding'),
}


@pytest.mark.parametrize('case', list(BOMBS))
def test_decompression_bomb_refused_from_its_header(compressed_rig, case):
    make, reason = BOMBS[case]
    msg = compressed(next_stamp(), 'jpeg', make())
    refused_once(compressed_rig, 'image/compressed', msg, reason)
    then_good_frame(compressed_rig, 'image/compressed')


def test_a_bomb_never_displaces_a_waiting_good_frame(compressed_rig):
    """Refused on arrival from its header: frame A in the model, good frame B waiting, then a
    bomb; B is still served and nothing counts as dropped."""
    rig = compressed_rig
    png = encoded(rig.reference['small'], 'PNG')
    entered, release = threading.Event(), threading.Event()
    with held_forward(rig.node.core.estimator, entered, release):
        a, b = next_stamp(), next_stamp()
        received, dropped = rig.count('frames_received'), rig.count('frames_dropped')
        bad = rig.count('bad_image')
        rig.probe.publish('image/compressed', compressed(a, 'png', png))
        assert entered.wait(TIMEOUT)
        rig.probe.publish('image/compressed', compressed(b, 'png', png))
        rig.wait_count('frames_received', received + 2)
        rig.probe.publish('image/compressed',
                          compressed(next_stamp(), 'png', png_of_zeros(7000, 7000)))
        rig.wait_count('bad_image', bad + 1)
        release.set()
        served_right(rig, a, rig.reference['rgb'])
        served_right(rig, b, rig.reference['rgb'])
        assert rig.count('frames_dropped') == dropped


def test_oversize_jpeg_is_decoded_at_reduced_scale_and_served(compressed_rig, tum):
    """640 x 480 JPEG, input.max_pixels 320 x 240: decoded at 1/2 scale (libjpeg never makes
    the full image) and served at 320 x 240, equal to the prediction of that decode."""
    rig = compressed_rig
    blob = encoded(tum.image, 'JPEG', quality=90)
    reduced = decode_compressed('jpeg', blob, MAX_PIXELS, 'downscale')
    assert reduced.shape == (240, 320, 3)
    reference = rig.node.core.estimator.predict(reduced).depth
    stamp = next_stamp()
    bad = rig.count('bad_image')
    rig.probe.publish('image/compressed', compressed(stamp, 'jpeg', blob))
    served_right(rig, stamp, reference)
    assert rig.count('bad_image') == bad


# ------------------------------------------------------------------- long message strings
def test_long_encoding_gives_a_short_log_line(image_rig):
    encoding = '\x1b[31m' + 'e' * 100_000
    msg = raw(image_rig.reference['small'], 'rgb8', next_stamp(), encoding=encoding)
    line = refused_once(image_rig, 'image', msg, "unsupported encoding '\\x1b[31meee")
    assert '(100005 chars)' in line and '\x1b' not in line
    then_good_frame(image_rig, 'image')


def test_long_format_gives_a_short_log_line(compressed_rig):
    fmt = 'jpeg' * 25_000 + '\n'
    line = refused_once(compressed_rig, 'image/compressed',
                        compressed(next_stamp(), fmt, b'garbage'), 'neither JPEG nor PNG')
    assert '(100001 chars)' in line and '\n' not in line
    then_good_frame(compressed_rig, 'image/compressed')


def test_long_distortion_model_gives_a_short_log_line(lidar):
    stamp = next_stamp()
    fields = intrinsics_to_fields(lidar.intr)
    fields['distortion_model'] = 'kannala_brandt' * 7000
    before = lidar.count('bad_camera_info')
    publish_lidar_frame(lidar, stamp, info=CameraInfo(header=make_header(FRAME, *stamp),
                                                      **fields))
    lidar.wait_count('bad_camera_info', before + 1)
    lines = lidar.log.matching('camera_info refused')
    assert len(lines) == 1 and "unknown distortion_model 'kannala_brandt" in lines[0]
    assert '(98000 chars)' in lines[0] and len(lines[0]) < LONG_LINE
    good_metric_frame(lidar)


def test_long_field_names_give_a_short_log_line(lidar):
    stamp = next_stamp()
    cloud = _cloud(lidar.scan(), stamp)
    cloud.fields = [PointField(name=('f%d' % i) * 20_000, offset=0, datatype=7, count=1)
                    for i in range(3)]
    before = lidar.count('bad_lidar')
    publish_lidar_frame(lidar, stamp, scan=cloud)
    assert lidar.count('bad_lidar') == before + 1
    lines = lidar.log.matching('lidar/points refused')
    assert len(lines) == 1 and 'no field x, y, z' in lines[0]
    assert '(40000 chars)' in lines[0] and len(lines[0]) < LONG_LINE
    good_metric_frame(lidar)


def test_long_frame_id_is_kept_on_outputs_but_short_in_diagnostics(lidar):
    """Every output keeps the image's frame_id; /diagnostics values are bounded."""
    stamp = next_stamp()
    header = make_header('cam_' * 25_000, *stamp)
    lidar.probe.publish('relative_depth', image_msg(lidar.reference['prediction'], '32FC1',
                                                    header))
    out = lidar.probe.wait_stamp('depth/relative', stamp, timeout=TIMEOUT)
    assert out is not None and out.header.frame_id == header.frame_id
    status = lidar.probe.wait_stamp('depth/alignment', stamp, timeout=TIMEOUT)
    assert status is not None and len(status.hardware_id) < 100
    assert status.hardware_id.endswith('... (100000 chars)')
    good_metric_frame(lidar)


# ------------------------------------------------------------------- camera_info ROI, binning
ROI = (100, 60, 400, 300)  # x_offset, y_offset, width, height of the TUM frame's crop


def _roi_camera_info(rig: Rig, stamp: tuple[int, int], binned: bool) -> CameraInfo:
    """A camera_info of the full sensor with ``roi`` set, as image_proc's crop publishes it:
    the 640 x 480 TUM camera, or the same seen by a 1280 x 960 sensor binned 2 x 2."""
    fields = intrinsics_to_fields(rig.intr)
    x0, y0, w, h = ROI
    msg = CameraInfo(header=make_header(FRAME, *stamp), **fields)
    if binned:
        k = np.asarray(fields['k']).reshape(3, 3).copy()
        k[:2] *= 2
        p = np.asarray(fields['p']).reshape(3, 4).copy()
        p[:2] *= 2
        msg.width, msg.height = 1280, 960
        msg.k, msg.p = [float(v) for v in k.ravel()], [float(v) for v in p.ravel()]
        msg.binning_x = msg.binning_y = 2
        x0, y0, w, h = 2 * x0, 2 * y0, 2 * w, 2 * h  # the ROI is in unbinned pixels
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = x0, y0, w, h
    return msg


@pytest.mark.parametrize('binned', [False, True], ids=['roi', 'roi and binning 2'])
def test_camera_info_roi_shifts_the_principal_point(lidar, binned):
    """The relative depth is the ROI of the frame; the LiDAR projects into it with K shifted
    by the offset (to 1e-12), and the metric depth is accurate against ground truth. Rescaling
    the full sensor's K to the ROI size instead misplaces every point."""
    rig = lidar
    x0, y0, w, h = ROI
    expected_k = rig.intr.K.copy()
    expected_k[0, 2] -= x0
    expected_k[1, 2] -= y0
    stamp = next_stamp()
    before = rig.count('bad_camera_info')
    rig.probe.publish('camera_info', _roi_camera_info(rig, stamp, binned))
    deadline = time.monotonic() + TIMEOUT
    while True:  # until the node holds the ROI's intrinsics
        intr = rig.node.core.cameras[0].intrinsics
        if intr is not None and (intr.width, intr.height) == (w, h):
            break
        assert time.monotonic() < deadline, 'the ROI camera_info never took effect'
        time.sleep(0.01)
    crop = np.ascontiguousarray(rig.reference['prediction'][y0:y0 + h, x0:x0 + w])
    values = publish_lidar_frame(rig, stamp, info=None, prediction=crop)
    assert values['state'] == 'ok', values
    assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.02)
    info = rig.probe.wait_stamp('depth/camera_info', stamp, timeout=TIMEOUT)
    assert (info.width, info.height) == (w, h)
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), expected_k, rtol=1e-12)
    assert info.binning_x == 0 and info.roi.width == 0  # it describes the published image
    depth = image_to_array(rig.probe.wait_stamp('depth/image', stamp, timeout=TIMEOUT))
    gt = rig.reference['gt'][y0:y0 + h, x0:x0 + w]
    metrics = compute_metrics(depth, gt, max_depth=10.0)
    assert metrics['abs_rel'] < 0.01 and metrics['coverage'] > 0.95, metrics
    assert rig.count('bad_camera_info') == before
    good_metric_frame(rig)


# --------------------------------------------------------------------- LiDAR causes, named
def _camera_points_to_lidar(points_cam: np.ndarray) -> np.ndarray:
    T_inv = np.linalg.inv(T_CAMERA_LIDAR)
    return (points_cam @ T_inv[:3, :3].T + T_inv[:3, 3]).astype(np.float32)


def _scan_in_camera_frame(rig: Rig) -> np.ndarray:
    """The rig's simulated scan back in the camera optical frame (float64)."""
    lidar_pts = rig.scan().astype(np.float64)
    return lidar_pts @ T_CAMERA_LIDAR[:3, :3].T + T_CAMERA_LIDAR[:3, 3]


def _behind(rig: Rig) -> np.ndarray:
    pts = _scan_in_camera_frame(rig)
    pts[:, 2] *= -1
    return _camera_points_to_lidar(pts)


def _on_plane(rig: Rig) -> np.ndarray:
    pts = _scan_in_camera_frame(rig)
    pts[:, 2] = 0.0
    return _camera_points_to_lidar(pts)


def _near_float32_limit(rig: Rig) -> np.ndarray:
    return _camera_points_to_lidar(_scan_in_camera_frame(rig) * 1e37)


LIDAR_CAUSES = {
    'all behind the camera': (_behind, lambda n: f'0 of {n} points in front of the camera '
                              f'({n} behind it): check lidar.T_camera_lidar'),
    'all on the camera plane': (_on_plane, lambda n: f'0 of {n} points in front of the camera '
                                f'({n} within 0.1 m of the camera plane): check '
                                'lidar.T_camera_lidar'),
    'coordinates near the float32 limit': (_near_float32_limit, lambda n: 'farther than '
                                           'max_depth 10 m, nearest at'),
}


@pytest.mark.parametrize('case', list(LIDAR_CAUSES))
def test_lidar_scan_without_a_fit_names_its_cause(lidar, case):
    make, reason = LIDAR_CAUSES[case]
    points = make(lidar)
    assert np.isfinite(points).all()
    stamp = next_stamp()
    values = publish_lidar_frame(lidar, stamp, scan=_cloud(points, stamp))
    assert values['state'] == 'no_fit', values
    expected = reason(len(points))
    assert expected in values['reason'], values['reason']
    lines = lidar.log.wait_matching('no metric depth for this frame')
    assert len(lines) == 1 and expected in lines[0], lines
    assert 'no camera_info or extrinsics' not in lines[0]
    assert lidar.probe.wait_stamp('depth/image', stamp, timeout=0.5) is None
    good_metric_frame(lidar)
