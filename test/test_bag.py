"""``depth_node-bag``: depth over recorded bags, read back with rosbags topic by topic.

Bags are built here from ``../shared/data/real`` frames (KITTI and nuScenes with their LiDAR,
TUM RGB-D) in both storage formats, raw and compressed. The metric depth is checked against
the LiDAR with the datasets' calibration; the live node and the bag tool give the same bytes
for the same frames.
"""

from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys

import numpy as np
import pytest

from bag_data import (BagFrame, CAMERA_FRAME, IMAGE_TOPIC, INFO_TOPIC, LIDAR_FRAME, LIDAR_TOPIC,
                      Messages, bag_time_of, image_array, read_bag, stamp_of, typestore,
                      write_bag)
from depth_node import bag
from depth_node.sample_data import load_frame

REPO = Path(__file__).resolve().parents[1]
SCALE, SHIFT = 3.0, 0.2  # relative input = SCALE / depth + SHIFT (what the fit must undo)
KITTI = ('kitti_object/000000', 'kitti_object/000001', 'kitti_object/000002')
NUSCENES = 'nuscenes_mini/CAM_FRONT'


# ------------------------------------------------------------------------------- data
def _fill_nearest(depth: np.ndarray) -> np.ndarray:
    """Fill non-finite pixels with the nearest finite one along rows, then columns."""
    out = depth.copy()
    for axis in (1, 0):
        a = np.moveaxis(out, axis, -1)
        ok = np.isfinite(a)
        n = a.shape[-1]
        idx = np.where(ok, np.arange(n), -1)
        fwd = np.maximum.accumulate(idx, axis=-1)
        bwd = np.where(ok, np.arange(n), n)
        bwd = np.flip(np.minimum.accumulate(np.flip(bwd, -1), axis=-1), -1)
        pos = np.arange(n)
        use_fwd = (fwd >= 0) & ((bwd >= n) | (pos - fwd <= bwd - pos))
        pick = np.where(use_fwd, fwd, np.where(bwd < n, bwd, 0))
        filled = np.take_along_axis(a, pick, axis=-1)
        a[...] = np.where(ok, a, np.where((fwd >= 0) | (bwd < n), filled, a))
    return out


def _project(frame, points_lidar: np.ndarray, T: np.ndarray):
    """Pinhole projection (the frames are rectified): pixel rows, columns and depths (m) of
    the points in front of the camera that land in the image, nearest per pixel."""
    cam = points_lidar[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    cam = cam[cam[:, 2] > 1.0]
    K = frame.K
    u = np.rint(K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]).astype(int)
    v = np.rint(K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]).astype(int)
    inside = (u >= 0) & (u < frame.width) & (v >= 0) & (v < frame.height)
    u, v, z = u[inside], v[inside], cam[inside, 2]
    order = np.lexsort((z, v * frame.width + u))  # per pixel, nearest first
    first = np.r_[True, np.diff((v * frame.width + u)[order]) != 0]
    return v[order][first], u[order][first], z[order][first]


@pytest.fixture(scope='module')
def lidar_frames(real_data):
    """KITTI 000000-000002 and nuScenes CAM_FRONT: each a relative map made from its own LiDAR
    (``SCALE / depth + SHIFT``, the scan densified by nearest fill) and its scan in KITTI
    000000's LiDAR frame, so that one ``lidar.T_camera_lidar`` (000000's) serves all four;
    plus the scans' pixels and depths in each camera."""
    frames = [load_frame(real_data / rel) for rel in KITTI + (NUSCENES,)]
    T0 = frames[0].T_camera_lidar
    out = []
    for f in frames:
        v, u, z = _project(f, f.lidar, f.T_camera_lidar)
        depth = np.full((f.height, f.width), np.nan)
        depth[v, u] = z
        relative = (SCALE / _fill_nearest(depth) + SHIFT).astype(np.float32)
        # p_common = T0^-1 T_i p_i: T0 maps the scan into camera i
        M = np.linalg.inv(T0) @ f.T_camera_lidar
        scan = (f.lidar[:, :3].astype(np.float64) @ M[:3, :3].T + M[:3, 3]).astype(np.float32)
        out.append((f, relative, scan, (v, u, z)))
    return T0, out


def _T_param(T: np.ndarray) -> str:
    return 'lidar.T_camera_lidar:=[' + ','.join(repr(float(x)) for x in T.ravel()) + ']'


def _run(capsys, *args) -> tuple[int, str, str]:
    """``depth_node-bag ARGS`` in this process: exit code, stdout (the summary), stderr."""
    code = bag.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _summary_value(summary: str, label: str) -> str:
    for line in summary.splitlines():
        if line.strip().startswith(label + ':'):
            return line.split(':', 1)[1].strip()
    raise AssertionError(f'no {label!r} in the summary:\n{summary}')


def _frames_line(summary: str) -> dict[str, int]:
    """``frames read: 4, processed: 4, with metric depth: 4`` as a dict."""
    line = next(x for x in summary.splitlines() if x.strip().startswith('frames read:'))
    parts = [p.split(':') for p in line.strip().split(', ')]
    return {k.strip(): int(v) for k, v in parts}


# ----------------------------------------------------------- metric depth against the LiDAR
@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_metric_depth_matches_the_lidar_with_the_dataset_calibration(tmp_path, capsys,
                                                                     lidar_frames, storage):
    T0, data = lidar_frames
    frames = [BagFrame(rel, f.intrinsics(), scan) for f, rel, scan, _ in data]
    src = write_bag(tmp_path / 'in', frames, storage, relative=True)
    code, summary, err = _run(capsys, src, tmp_path / 'out', '--storage', storage,
                              '-p', 'input.mode:=relative_depth', '-p', 'lidar.enabled:=true',
                              '-p', _T_param(T0), '-p', 'lidar.smoothing:=0.0', '--points',
                              '-p', 'filter.edges:=false')  # compared with the LiDAR per pixel
    assert code == 0, err
    assert _frames_line(summary) == {'frames read': 4, 'processed': 4,
                                     'with metric depth': 4}, summary
    out = read_bag(tmp_path / 'out')
    depth = out['/depth/image']
    assert len(depth) == len(out['/depth/alignment']) == len(out['/depth/camera_info']) == 4
    for i, ((t, msg), (f, _, _, (v, u, z))) in enumerate(zip(depth, data)):
        assert t == bag_time_of(i), 'not written at the input image receive time'
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp_of(i)
        assert msg.header.frame_id == CAMERA_FRAME
        assert (msg.encoding, msg.height, msg.width) == ('32FC1', f.height, f.width)
        near = z < 75.0  # cloud.max_depth (80 m): farther is NaN, as the node writes it
        d = image_array(msg)[v[near], u[near]]
        rel_err = np.abs(d - z[near]) / z[near]
        # the scan is paired by stamp, looking ahead (it is recorded 30 ms after the image):
        # the previous frame's scan (another street) would miss by far more than this
        assert np.median(rel_err) < 0.01, (f.name, np.median(rel_err))
        assert np.mean(rel_err < 0.05) > 0.9, (f.name, np.mean(rel_err < 0.05))
        status = out['/depth/alignment'][i][1]
        values = {kv.key: kv.value for kv in status.values}
        assert (status.level, values['state']) == (0, 'ok'), values
        assert float(values['scale']) == pytest.approx(1 / SCALE, rel=0.02)
        assert values['stamp'] == f'{stamp_of(i)[0]}.{stamp_of(i)[1]:09d}'
        info = out['/depth/camera_info'][i][1]
        np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), f.K, rtol=1e-9)
        cloud = out['/depth/points'][i][1]
        assert (cloud.height, cloud.width) == (-(-f.height // 2), -(-f.width // 2))
        assert cloud.header.stamp == msg.header.stamp
    # the input topics are copied as they were, at their times
    src_msgs = read_bag(src)
    for topic in (IMAGE_TOPIC, INFO_TOPIC, LIDAR_TOPIC):
        assert [t for t, _ in out[topic]] == [t for t, _ in src_msgs[topic]], topic
    assert set(out) == {IMAGE_TOPIC, INFO_TOPIC, LIDAR_TOPIC, '/depth/image', '/depth/relative',
                        '/depth/camera_info', '/depth/points', '/depth/alignment'}


def test_confidence_is_written_on_request_with_the_input_stamps(tmp_path, capsys, lidar_frames):
    """--confidence writes depth/confidence (the output table's on-request flag): one per frame,
    at the image's receive time, with its header, 32FC1 in [0, 1], NaN where depth/image is;
    flying pixels removed from depth/image by default (filter.edges)."""
    T0, data = lidar_frames
    frames = [BagFrame(rel, f.intrinsics(), scan) for f, rel, scan, _ in data[:2]]
    src = write_bag(tmp_path / 'in', frames, 'mcap', relative=True)
    code, summary, err = _run(capsys, src, tmp_path / 'out', '--confidence', '--no-copy',
                              '-p', 'input.mode:=relative_depth', '-p', 'lidar.enabled:=true',
                              '-p', _T_param(T0))
    assert code == 0, err
    out = read_bag(tmp_path / 'out')
    assert set(out) == {'/depth/image', '/depth/relative', '/depth/camera_info',
                        '/depth/confidence', '/depth/alignment'}
    pairs = zip(out['/depth/confidence'], out['/depth/image'])
    for i, ((t, conf), (_, depth)) in enumerate(pairs):
        assert t == bag_time_of(i)
        assert conf.header.stamp == depth.header.stamp and conf.header.frame_id == CAMERA_FRAME
        assert (conf.encoding, conf.height, conf.width) == ('32FC1', depth.height, depth.width)
        c, d = image_array(conf), image_array(depth)
        assert np.array_equal(np.isfinite(c), np.isfinite(d))
        assert 0 <= np.nanmin(c) and np.nanmax(c) <= 1 and np.nanmin(c) < np.nanmax(c)
    assert len(out['/depth/confidence']) == 2


# ------------------------------------------------------------ images through the network
@pytest.mark.parametrize('storage, compressed', [('mcap', False), ('sqlite3', True)])
def test_camera_images_topic_by_topic(tmp_path, capsys, real_data, models, storage,
                                      compressed):
    tum = [load_frame(p) for p in sorted((real_data / 'tum_rgbd').iterdir())]
    frames = [BagFrame(f.image, f.intrinsics()) for f in tum]
    src = write_bag(tmp_path / 'in', frames, storage, compressed=compressed)
    code, summary, err = _run(
        capsys, src, tmp_path / 'out', '--storage', storage, '--namespace', 'cam',
        '--colored', '-p', f'model.name:={models["metric"]}', '-p', 'model.device:=cpu',
        '-p', 'model.engine:=torch', '-p', 'model.warmup:=false', '-p',
        'model.input_size:=140', '-p', 'output.encoding:=16UC1')
    assert code == 0, err
    n = len(tum)
    assert _frames_line(summary) == {'frames read': n, 'processed': n,
                                     'with metric depth': n}, summary
    out = read_bag(tmp_path / 'out')
    image_topic = IMAGE_TOPIC + ('/compressed' if compressed else '')
    assert set(out) == {image_topic, INFO_TOPIC, '/cam/depth/image', '/cam/depth/camera_info',
                        '/cam/depth/colored'}
    for key, encoding in (('image', '16UC1'), ('colored', 'rgb8')):
        msgs = out[f'/cam/depth/{key}']
        assert [t for t, _ in msgs] == [bag_time_of(i) for i in range(n)], key
        for i, (_, msg) in enumerate(msgs):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp_of(i)
            assert msg.header.frame_id == CAMERA_FRAME
            assert (msg.encoding, msg.width, msg.height) == (encoding, 640, 480)
    mm = image_array(out['/cam/depth/image'][0][1])
    assert mm.dtype == np.uint16 and mm.max() > 0  # millimetres, 0 invalid
    assert [t for t, _ in out[image_topic]] == [bag_time_of(i) for i in range(n)]


def _rigid(T: np.ndarray) -> np.ndarray:
    """``T`` with its rotation made exactly orthonormal (a calibration's is only nearly)."""
    U, _, Vt = np.linalg.svd(T[:3, :3])
    out = T.copy()
    out[:3, :3] = U @ Vt
    return out


def _tf_static(edges) -> tuple[str, str, int, bytes]:
    """A ``/tf_static`` message recorded before the first frame."""
    store = typestore()
    msg = Messages(store).tf_static(edges, *stamp_of(0))
    return ('/tf_static', 'tf2_msgs/msg/TFMessage', bag_time_of(0) - 2_000_000,
            store.serialize_cdr(msg, 'tf2_msgs/msg/TFMessage'))


def test_lidar_extrinsics_from_tf_static(tmp_path, capsys, lidar_frames):
    """Without lidar.T_camera_lidar the tool composes the LiDAR-to-camera transform from the
    bag's /tf_static (LiDAR and camera both below base_link, as a robot's URDF publishes them):
    the same depth as with the parameter; a bag without /tf_static, or without the camera in
    it, is told what to set."""
    T0, data = lidar_frames
    T = _rigid(T0)
    # base_link -> LiDAR: 1.7 m up, yawed 5 degrees; base_link -> camera makes camera <- LiDAR T
    yaw = np.deg2rad(5.0)
    base_lidar = np.eye(4)
    base_lidar[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0],
                          [0, 0, 1]]
    base_lidar[:3, 3] = [0.3, 0.0, 1.7]
    base_camera = base_lidar @ np.linalg.inv(T)
    frames = [BagFrame(rel, f.intrinsics(), scan) for f, rel, scan, _ in data]
    args = ['-p', 'input.mode:=relative_depth', '-p', 'lidar.enabled:=true',
            '-p', 'lidar.smoothing:=0.0']
    src = write_bag(tmp_path / 'in', frames, relative=True, extra=[_tf_static(
        [('base_link', LIDAR_FRAME, base_lidar), ('/base_link', CAMERA_FRAME, base_camera)])])
    code, summary, err = _run(capsys, src, tmp_path / 'tf', *args)
    assert code == 0, err
    assert _frames_line(summary) == {'frames read': 4, 'processed': 4,
                                     'with metric depth': 4}, summary
    assert _summary_value(summary, 'LiDAR extrinsics') == \
        f"/tf_static ({LIDAR_FRAME!r} -> 'base_link' -> {CAMERA_FRAME!r})"
    assert 'LiDAR extrinsics from /tf_static: 2 transforms' in err
    code, summary, err = _run(capsys, src, tmp_path / 'param', *args, '-p', _T_param(T))
    assert code == 0, err
    assert _summary_value(summary, 'LiDAR extrinsics') == 'lidar.T_camera_lidar'
    from_tf, from_param = read_bag(tmp_path / 'tf'), read_bag(tmp_path / 'param')
    for (_, a), (_, b) in zip(from_tf['/depth/image'], from_param['/depth/image'], strict=True):
        np.testing.assert_allclose(image_array(a), image_array(b), rtol=1e-5, equal_nan=True)
    # a /tf_static without the camera: processed, no metric depth, the frames there named
    src = write_bag(tmp_path / 'in2', frames, relative=True,
                    extra=[_tf_static([('base_link', LIDAR_FRAME, base_lidar)])])
    code, summary, err = _run(capsys, src, tmp_path / 'tf2', *args)
    assert code == 0, err
    assert _frames_line(summary) == {'frames read': 4, 'processed': 4,
                                     'with metric depth': 0}, summary
    assert f'no transform {LIDAR_FRAME!r} -> {CAMERA_FRAME!r} in /tf_static (frames there: ' \
        f"'base_link', {LIDAR_FRAME!r})" in err
    assert f'MISSING: {LIDAR_FRAME!r} -> {CAMERA_FRAME!r}' in \
        _summary_value(summary, 'LiDAR extrinsics')
    assert err.count('in /tf_static (frames there') == 1  # said once, not per frame
    # no /tf_static and no parameter: refused before anything is written, with the fix
    src = write_bag(tmp_path / 'in3', frames, relative=True)
    with pytest.raises(bag.BagError, match=r'lidar.T_camera_lidar is unset and the bag has no '
                       r'/tf_static: set lidar.T_camera_lidar .* or record /tf_static'):
        bag.run(bag.parse_args([str(src), str(tmp_path / 'none'), *args]))
    assert not (tmp_path / 'none').exists()
    # refused with --overwrite: the earlier output is left as it was
    with pytest.raises(bag.BagError, match='has no /tf_static'):
        bag.run(bag.parse_args([str(src), str(tmp_path / 'tf'), '--overwrite', *args]))
    assert len(read_bag(tmp_path / 'tf')['/depth/image']) == 4


def test_time_window_and_every_nth_frame(tmp_path, capsys, lidar_frames):
    T0, data = lidar_frames
    frames = [BagFrame(rel, f.intrinsics(), scan) for f, rel, scan, _ in data]
    # the camera sends its camera_info once, with the first frame
    src = write_bag(tmp_path / 'in', frames, relative=True, info_once=True)
    args = ['-p', 'input.mode:=relative_depth', '-p', 'lidar.enabled:=true', '-p', _T_param(T0),
            '-p', 'lidar.smoothing:=0.0']
    # frames are 100 ms apart from the bag's start; each scan is recorded 30 ms after its frame
    code, summary, err = _run(capsys, src, tmp_path / 'w', '--start', 0.15, '--duration', 0.17,
                              *args)
    assert code == 0, err
    # frames 2 and 3: the camera_info from before the window, frame 3's scan after its end
    assert _frames_line(summary) == {'frames read': 2, 'processed': 2,
                                     'with metric depth': 2}, summary
    out = read_bag(tmp_path / 'w')
    assert [t for t, _ in out['/depth/image']] == [bag_time_of(2), bag_time_of(3)]
    assert [t for t, _ in out[LIDAR_TOPIC]] == [bag_time_of(2) + 30_000_000]  # copy: inside
    assert INFO_TOPIC not in out
    # every 2nd frame: 0 and 2 (a camera_info with frame 0 only serves both)
    code, summary, err = _run(capsys, src, tmp_path / 'e', '--every', 2, *args)
    assert code == 0, err
    assert _frames_line(summary) == {'frames read': 4, 'processed': 2,
                                     'with metric depth': 2}, summary
    assert _summary_value(summary, 'frames skipped') == '2 (left out by --every 2: 2)'
    assert [t for t, _ in read_bag(tmp_path / 'e')['/depth/image']] == [bag_time_of(0),
                                                                        bag_time_of(2)]


def test_prompt_depth_anything_from_the_lidar_and_from_a_depth_topic(tmp_path, capsys,
                                                                     real_data, lidar_frames):
    """A tiny Prompt Depth Anything: prompted by the KITTI scan (``prompt.source: lidar``),
    then by TUM's registered depth on its own topic (``depth_image``); no LiDAR fit on top."""
    from tiny_slow_models import make_tiny_prompt_depth_anything

    pda = str(make_tiny_prompt_depth_anything(tmp_path))
    base = ['-p', f'model.name:={pda}', '-p', 'model.device:=cpu', '-p', 'model.warmup:=false',
            '-p', 'model.precision:=fp32', '-p', 'prompt.max_side:=64']
    T0, data = lidar_frames
    kitti = load_frame(real_data / KITTI[0])
    src = write_bag(tmp_path / 'k', [BagFrame(kitti.image, kitti.intrinsics(), data[0][2])])
    code, summary, err = _run(capsys, src, tmp_path / 'ko', *base, '-p', 'prompt.source:=lidar',
                              '-p', 'lidar.enabled:=true', '-p', _T_param(T0))
    assert code == 0, err
    assert _frames_line(summary) == {'frames read': 1, 'processed': 1,
                                     'with metric depth': 1}, summary
    out = read_bag(tmp_path / 'ko')
    status = out['/depth/alignment'][0][1]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == 'depth_node: depth prompt' and values['state'] == 'ok', values
    assert values['prompt_source'] == 'lidar' and int(values['points_projected']) > 1000
    assert float(values['prompt_time_offset']) == pytest.approx(0.02, abs=1e-6)  # looked ahead

    tum = load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])
    store = typestore()
    m = Messages(store)
    mm = np.where(np.isfinite(tum.depth_gt), np.rint(tum.depth_gt * 1000), 0).astype(np.uint16)
    depth = m.image(mm, '16UC1', m.header(*stamp_of(0), CAMERA_FRAME))
    extra = [('/camera/depth/image', 'sensor_msgs/msg/Image', bag_time_of(0) + 2_000_000,
              bytes(store.serialize_cdr(depth, 'sensor_msgs/msg/Image')))]
    src = write_bag(tmp_path / 't', [BagFrame(tum.image, tum.intrinsics())], extra=extra)
    args = [*base, '-p', 'prompt.source:=depth_image', '--image-topic', IMAGE_TOPIC]
    code, _, err = _run(capsys, src, tmp_path / 'to0', *args)
    assert code == 2 and '--prompt-topic' in err and '/camera/depth/image' in err
    code, summary, err = _run(capsys, src, tmp_path / 'to', *args, '--prompt-topic',
                              '/camera/depth/image')
    assert code == 0, err
    assert _frames_line(summary)['with metric depth'] == 1, summary
    out = read_bag(tmp_path / 'to')
    values = {kv.key: kv.value for kv in out['/depth/alignment'][0][1].values}
    assert values['state'] == 'ok' and values['prompt_source'] == 'depth_image', values
    assert image_array(out['/depth/image'][0][1]).shape == (480, 640)


# ---------------------------------------------------------------------------- bad input
def test_bad_messages_are_counted_skipped_and_summarised(tmp_path, capsys, lidar_frames):
    T0, data = lidar_frames
    f, rel, scan, _ = data[0]
    frames = [BagFrame(rel, f.intrinsics(), scan) for _ in range(3)]
    store = typestore()
    m = Messages(store)
    image, info, cloud = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo',
                          'sensor_msgs/msg/PointCloud2')
    header = m.header(*stamp_of(1), CAMERA_FRAME)
    short = m.image(rel, '32FC1', header)
    short.data = short.data[:-7]  # fields that cannot describe the data
    bad_k = m.camera_info(f.intrinsics(), header)
    bad_k.k = np.zeros(9)
    no_xyz = m.cloud(scan, m.header(*stamp_of(1), 'lidar'))
    no_xyz.fields = no_xyz.fields[:2]
    extra = [(IMAGE_TOPIC, image, bag_time_of(1) + 50_000_000, b'\x00\x01\x00\x00garbage'),
             (IMAGE_TOPIC, image, bag_time_of(1) + 60_000_000,
              bytes(store.serialize_cdr(short, image))),
             (INFO_TOPIC, info, bag_time_of(2) - 20_000_000,
              bytes(store.serialize_cdr(bad_k, info))),
             (LIDAR_TOPIC, cloud, bag_time_of(2) - 10_000_000,
              bytes(store.serialize_cdr(no_xyz, cloud)))]
    src = write_bag(tmp_path / 'in', frames, relative=True, extra=extra)
    code, summary, err = _run(capsys, src, tmp_path / 'out', '-p', 'input.mode:=relative_depth',
                              '-p', 'lidar.enabled:=true', '-p', _T_param(T0))
    assert code == 0, err
    assert _frames_line(summary) == {'frames read': 5, 'processed': 3,
                                     'with metric depth': 3}, summary
    assert _summary_value(summary, 'frames skipped') == '2 (bad image: 2)'
    assert _summary_value(summary, 'bad messages') == '4 (image: 2, camera_info: 1, lidar: 1)'
    assert 'data is' in err and 'refused' in err  # the log says why (bounded, throttled)
    out = read_bag(tmp_path / 'out')
    assert len(out['/depth/image']) == 3
    assert len(out[IMAGE_TOPIC]) == 5  # the copy keeps the bad messages as they were


def test_unreadable_and_truncated_input(tmp_path, capsys, lidar_frames):
    T0, data = lidar_frames
    f, rel, scan, _ = data[0]
    args = ['-p', 'input.mode:=relative_depth', '-p', 'lidar.enabled:=true', '-p', _T_param(T0)]
    garbage = tmp_path / 'garbage.mcap'
    garbage.write_bytes(b'not a bag' * 100)
    code, _, err = _run(capsys, garbage, tmp_path / 'out0', *args)
    assert code == 1 and 'cannot be read as a ROS 2 bag' in err
    assert not (tmp_path / 'out0').exists()

    # a recording cut off: the mcap file without its end
    src = write_bag(tmp_path / 'in', [BagFrame(rel, f.intrinsics(), scan)] * 4, relative=True)
    mcap = next(src.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    code, _, err = _run(capsys, src, tmp_path / 'out1', *args)
    assert code == 1 and 'File end magic is invalid' in err, err
    assert not (tmp_path / 'out1').exists()

    # sqlite3 pages broken in the middle: read until there, the output a valid bag
    src = write_bag(tmp_path / 'in3', [BagFrame(rel, f.intrinsics(), scan)] * 6, 'sqlite3',
                    relative=True)
    db = next(src.glob('*.db3'))
    raw = bytearray(db.read_bytes())
    cut = int(len(raw) * 0.6)
    raw[cut:cut + 8192] = b'\xff' * 8192
    db.write_bytes(bytes(raw))
    code, summary, err = _run(capsys, src, tmp_path / 'out3', *args)
    assert code == 1, (summary, err)
    assert 'INPUT ERROR' in summary and 'could not be read on' in summary
    processed = _frames_line(summary)['processed']
    assert 1 <= processed < 6, summary
    out = read_bag(tmp_path / 'out3')
    assert len(out['/depth/image']) == processed


# ------------------------------------------------------------------- interrupt, refusals
@pytest.fixture(scope='module')
def long_bag(tmp_path_factory, real_data):
    """4,000 tiny frames (40x30 relative depth from TUM) with LiDAR: about 10 s of work for
    the tool on the dev VM, so a signal sent after its first frame always lands mid-run."""
    from depth_node.demo import simulated_lidar

    tum = load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])
    gt = np.where(np.isfinite(tum.depth_gt), tum.depth_gt, 2.0)[::16, ::16]
    small = tum.intrinsics().scaled(40, 30)
    frame = BagFrame((SCALE / gt + SHIFT).astype(np.float32), small,
                     simulated_lidar(gt, small.K, rows=16, col_step=2))
    n = 4000
    return write_bag(tmp_path_factory.mktemp('long') / 'in', [frame] * n, relative=True), n


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_interrupted_run_leaves_a_valid_bag_and_says_how_far(tmp_path, long_bag, signum):
    src, n = long_bag
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
        'PYTHONPATH', '')]))
    proc = subprocess.Popen(
        [sys.executable, '-m', 'depth_node.bag', str(src), str(tmp_path / 'out'),
         '-p', 'input.mode:=relative_depth', '-p', 'lidar.enabled:=true',
         '-p', _T_param(np.eye(4))], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # the first progress line: after the first frame
        assert 'frames/s' in first, first
        proc.send_signal(signum)
        summary, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (summary, err)
    processed = _frames_line(summary)['processed']
    assert 1 <= processed < n, summary
    assert f'stopped: {signal.Signals(signum).name} after {processed} of {n} frames' in summary
    out = read_bag(tmp_path / 'out')  # metadata written: a valid bag
    for topic in ('/depth/image', '/depth/relative', '/depth/alignment'):
        assert len(out[topic]) == processed, topic
    assert out['/depth/image'][-1][0] == bag_time_of(processed - 1)
    # the copy stops with the outputs: the recording is consistent up to the last frame
    assert out[IMAGE_TOPIC][-1][0] <= bag_time_of(processed - 1) + 1_200_000_000


def test_existing_output_refused_unless_overwrite(tmp_path, capsys, lidar_frames):
    _, data = lidar_frames
    f, rel, _, _ = data[0]
    src = write_bag(tmp_path / 'in', [BagFrame(rel, f.intrinsics())], relative=True)
    args = ['-p', 'input.mode:=relative_depth', '--no-copy']
    assert _run(capsys, src, tmp_path / 'out', *args)[0] == 0
    code, _, err = _run(capsys, src, tmp_path / 'out', *args)
    assert code == 2 and 'exists: pass --overwrite' in err
    code, _, err = _run(capsys, src, tmp_path / 'out', '--overwrite', '--storage', 'sqlite3',
                        *args)
    assert code == 0, err
    assert list((tmp_path / 'out').glob('*.db3')) and not list((tmp_path / 'out').glob('*.mcap'))
    assert set(read_bag(tmp_path / 'out')) == {'/depth/relative', '/depth/camera_info'}
    keep = tmp_path / 'notes'
    keep.mkdir()
    (keep / 'todo.txt').write_text('mine')
    code, _, err = _run(capsys, src, keep, '--overwrite', *args)
    assert code == 2 and 'not a ROS 2 bag' in err and (keep / 'todo.txt').exists()
    code, _, err = _run(capsys, src, src, '--overwrite', *args)
    assert code == 2 and 'INPUT' in err and (src / 'metadata.yaml').exists()


def test_ambiguous_topics_refused_with_the_candidates(tmp_path, capsys, lidar_frames):
    T0, data = lidar_frames
    f, rel, scan, _ = data[0]
    store = typestore()
    m = Messages(store)
    other = m.image(rel, '32FC1', m.header(*stamp_of(0), 'other'))
    cloud = m.cloud(scan, m.header(*stamp_of(0), 'lidar2'))
    extra = [('/other/image', 'sensor_msgs/msg/Image', bag_time_of(0),
              bytes(store.serialize_cdr(other, 'sensor_msgs/msg/Image'))),
             ('/lidar2/points', 'sensor_msgs/msg/PointCloud2', bag_time_of(0),
              bytes(store.serialize_cdr(cloud, 'sensor_msgs/msg/PointCloud2')))]
    src = write_bag(tmp_path / 'in', [BagFrame(rel, f.intrinsics(), scan)], relative=True,
                    extra=extra)
    args = ['-p', 'input.mode:=relative_depth', '-p', 'lidar.enabled:=true', '-p', _T_param(T0)]
    code, _, err = _run(capsys, src, tmp_path / 'o1', *args)
    assert code == 2, err
    assert '2 Image topics: /camera/image_raw, /other/image; choose one with --image-topic' \
        in err
    code, _, err = _run(capsys, src, tmp_path / 'o2', '--image-topic', IMAGE_TOPIC, *args)
    assert code == 2 and '/lidar/points, /lidar2/points; choose one with --lidar-topic' in err
    code, _, err = _run(capsys, src, tmp_path / 'o3', '--image-topic', '/nope', *args)
    assert code == 2 and 'no such topic' in err and '/other/image' in err
    code, summary, err = _run(capsys, src, tmp_path / 'o4', '--image-topic', IMAGE_TOPIC,
                              '--lidar-topic', LIDAR_TOPIC, *args)
    assert code == 0, err
    assert _frames_line(summary)['with metric depth'] == 1
    assert not (tmp_path / 'o1').exists() and not (tmp_path / 'o2').exists()


# -------------------------------------------------------------------------- parameters
def test_parameters_from_the_node_yaml_and_the_command_line(tmp_path):
    f1 = tmp_path / 'a.yaml'
    f1.write_text('/**:\n  ros__parameters:\n    cloud.stride: 4\n    lidar:\n'
                  '      enabled: false\n      smoothing: 0.25\n'
                  'depth_node:\n  ros__parameters:\n    cloud.stride: 3\n'
                  '    use_sim_time: true\n')
    config = bag.node_config(str(f1), ['lidar.smoothing:=0.5', 'output.encoding:=16UC1'])
    assert config['cloud.stride'] == 3  # the node's own section after /**
    assert config['lidar.smoothing'] == 0.5  # -p after the file
    assert config['output.encoding'] == '16UC1'
    with pytest.raises(bag.BagError, match=r'model\.nmae.*did you mean model\.name'):
        bag.node_config(None, ['model.nmae:=x'])
    with pytest.raises(bag.BagError, match='cloud.stride'):
        bag.node_config(None, ['cloud.stride:=zero'])
    f2 = tmp_path / 'b.yaml'
    f2.write_text('other_node:\n  ros__parameters:\n    x: 1\n')
    with pytest.raises(bag.BagError, match="no 'depth_node:' or '/\\*\\*:' section"):
        bag.node_config(str(f2), [])
    with pytest.raises(bag.BagError, match='name:=value'):
        bag.node_config(None, ['cloud.stride=3'])
    # the node's own parameter file is accepted as it is
    shipped = bag.node_config(str(REPO / 'config' / 'depth.yaml'), [])
    assert shipped['model.name']


def test_topic_defaults():
    from depth_node import config as cfg

    config = cfg.validate_values({})
    types = {'/cam/image_raw': bag.IMAGE, '/cam/image_raw/compressed': bag.COMPRESSED,
             '/cam/camera_info': bag.CAMERA_INFO, '/other/camera_info': bag.CAMERA_INFO,
             '/velodyne_points': bag.POINT_CLOUD}
    assert bag.select_topics(types, config) == bag.Topics('/cam/image_raw', 'image',
                                                          '/cam/camera_info', None)
    compressed = cfg.validate_values({'input.compressed': True})
    assert bag.select_topics(types, compressed).image == '/cam/image_raw/compressed'
    assert bag.select_topics(types, compressed).camera_info == '/cam/camera_info'
    assert bag.select_topics({'/c/image/compressed': bag.COMPRESSED}, config).kind == \
        'compressed'
    with pytest.raises(bag.BagError, match='is a sensor_msgs/msg/CameraInfo, not'):
        bag.select_topics(types, config, image='/cam/camera_info')
    assert bag.output_topic('/', 'depth') == '/depth/image'
    assert bag.output_topic('/front/', 'points') == '/front/depth/points'


# ----------------------------------------------------------- the live node and the tool
@pytest.mark.ros
def test_live_node_and_bag_tool_give_the_same_bytes(tmp_path, capsys, session, models,
                                                    lidar_frames, real_data):
    """The same frames through the node over ROS and through depth_node-bag: depth/image,
    depth/points and depth/camera_info byte for byte, depth/alignment value for value (CPU,
    torch, fp32; the LiDAR fit's temporal smoothing runs over the same sequence)."""
    from depth_node.messages import camera_info_msg, image_msg, make_header, xyz_cloud_msg
    from ros_harness import holds_camera_info, holds_scan, status_values

    T0, data = lidar_frames
    images = [load_frame(real_data / rel).image for rel in KITTI]
    params = {'model.name': models['metric'], 'model.device': 'cpu', 'model.engine': 'torch',
              'model.precision': 'fp32', 'model.warmup': False, 'model.input_size': 140,
              'lidar.enabled': True, 'lidar.T_camera_lidar': [float(x) for x in T0.ravel()],
              'cloud.stride': 4}
    node = session.start_depth_node(params)
    probe = session.probe()
    assert probe.wait_subscribers('image', timeout=30.0)
    assert probe.wait_subscribers('lidar/points', timeout=30.0)
    live = []
    for i, ((f, _, scan, _), rgb) in enumerate(zip(data[:3], images)):
        sec, nanosec = stamp_of(i)
        header = make_header(CAMERA_FRAME, sec, nanosec)
        info = camera_info_msg(f.intrinsics(), header)
        probe.publish_until('camera_info', info, lambda: holds_camera_info(node, info),
                            'the node to take the camera_info')
        ns = sec * 1_000_000_000 + nanosec + 20_000_000
        cloud = xyz_cloud_msg(scan, make_header('lidar', ns // 10**9, ns % 10**9))
        probe.publish_until('lidar/points', cloud, lambda: holds_scan(node, cloud),
                            'the node to store the scan')
        probe.publish('image', image_msg(rgb, 'rgb8', header))
        got = {t: probe.wait_stamp(t, (sec, nanosec)) for t in
               ('depth/image', 'depth/points', 'depth/camera_info', 'depth/alignment')}
        assert all(v is not None for v in got.values()), {k: v is None for k, v in got.items()}
        live.append(got)

    frames = [BagFrame(rgb, f.intrinsics(), scan) for (f, _, scan, _), rgb in
              zip(data[:3], images)]
    src = write_bag(tmp_path / 'in', frames)
    args = [f'{k}:={str(v).lower() if isinstance(v, bool) else v}' for k, v in params.items()]
    code, summary, err = _run(capsys, src, tmp_path / 'out', '--points',
                              *[a for p in args for a in ('-p', p)])
    assert code == 0, err
    out = read_bag(tmp_path / 'out')
    for i, got in enumerate(live):
        depth = out['/depth/image'][i][1]
        assert depth.encoding == got['depth/image'].encoding == '32FC1'
        assert bytes(depth.data) == bytes(got['depth/image'].data), f'frame {i}: depth/image'
        cloud = out['/depth/points'][i][1]
        assert (cloud.height, cloud.width, cloud.point_step) == (
            got['depth/points'].height, got['depth/points'].width,
            got['depth/points'].point_step)
        assert bytes(cloud.data) == bytes(got['depth/points'].data), f'frame {i}: points'
        info = out['/depth/camera_info'][i][1]
        assert list(info.k) == list(got['depth/camera_info'].k)
        assert list(info.p) == list(got['depth/camera_info'].p)
        status = out['/depth/alignment'][i][1]
        assert {kv.key: kv.value for kv in status.values} == status_values(
            got['depth/alignment'])
        assert status.name == got['depth/alignment'].name
    assert _frames_line(summary)['processed'] == 3


def test_help_lists_the_parameters_without_loading_the_model():
    code = subprocess.run(
        [sys.executable, '-c', 'import sys; from depth_node import bag; code = bag.main(sys.argv'
         '[1:]); print(sorted(m for m in ("torch", "rosbags", "rclpy") if m in sys.modules)); '
         'sys.exit(code)', '--help'], cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert code.returncode == 0, code.stderr
    assert 'INPUT OUTPUT' in code.stdout and 'lidar.max_time_offset' in code.stdout
    assert code.stdout.rstrip().endswith('[]'), code.stdout[-200:]  # nothing heavy imported
