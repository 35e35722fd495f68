"""The per-frame pipeline without ROS: what reaches the sink, in which order, and the problems.

The messages are plain objects with the sensor_msgs field names (as rosbags gives them), so
these tests also show the pipeline needs no rclpy message type.
"""

from __future__ import annotations

import numpy as np
import pytest

from depth_node import config as cfg
from depth_node.frame_pipeline import FramePipeline, nearest_scan
from depth_node.image_codec import ImageDecodeError
import relative_frames as rf


@pytest.fixture(scope='module')
def tum(real_data):
    return rf.relative_tum(real_data)


def _pipeline(**params) -> FramePipeline:
    values = {'input.mode': 'relative_depth', 'lidar.enabled': True,
              'lidar.T_camera_lidar': np.eye(4).ravel().tolist(), 'lidar.smoothing': 0.0,
              'cloud.stride': 4, 'cloud.max_depth': 10.0}
    values.update(params)
    return FramePipeline(cfg.validate_values(values))


def test_outputs_reach_the_sink_in_order_with_the_input_header(tum):
    frame_data, prediction, scan = tum
    pipe = _pipeline()
    state = pipe.new_camera()
    state.intrinsics = frame_data.intrinsics()
    msg = rf.image(prediction, '32FC1', 7)
    pipe.check('relative', msg)
    frame = pipe.decode('relative', msg)
    assert frame.header is msg.header and frame.stamp == pytest.approx(7 + 250e-9)
    seen = []
    out = pipe.finish(frame, state, {'relative', 'depth', 'info', 'points'},
                      lambda key, value: seen.append(key), scan=(frame.stamp, 'cam', scan))
    # depth/relative leaves first, before the fit; then the fit's report, depth, info, cloud
    assert seen == ['relative', 'alignment', 'depth', 'info', 'points'], seen
    assert out.problems == [] and out.metric
    report = out.values['alignment']
    assert report.level == 0 and report.stamp == (7, 250) and report.frame_id == 'cam_optical'
    assert report.values()['state'] == 'ok'
    depth = out.values['depth']
    assert depth.dtype == np.float32 and depth.shape == prediction.shape
    gt = frame_data.depth_gt
    ok = np.isfinite(gt) & np.isfinite(depth) & (gt < 10)
    assert ok.mean() > 0.5
    assert np.median(np.abs(depth[ok] - gt[ok]) / gt[ok]) < 0.01
    cloud = out.values['points']
    assert (cloud.height, cloud.width) == (-(-depth.shape[0] // 4), -(-depth.shape[1] // 4))


def test_without_a_scan_no_metric_depth_and_the_reason(tum):
    frame_data, prediction, _ = tum
    pipe = _pipeline(**{'output.encoding': '16UC1'})
    state = pipe.new_camera()
    state.intrinsics = frame_data.intrinsics()
    frame = pipe.decode('relative', rf.image(prediction, '32FC1', 8))
    seen = {}
    out = pipe.finish(frame, state, {'relative', 'depth', 'info'},
                      lambda key, value: seen.setdefault(key, value))
    assert 'depth' not in out.values and not out.metric
    assert [p.key for p in out.problems] == ['no_fit']
    assert 'no LiDAR scan within lidar.max_time_offset' in out.problems[0].text
    assert out.values['alignment'].level == 2
    # relative depth is still served, never as metres: only on the relative key
    np.testing.assert_array_equal(seen['relative'], prediction)


def test_uint16_depth_and_no_camera_info(tum):
    frame_data, prediction, scan = tum
    pipe = _pipeline(**{'output.encoding': '16UC1'})
    state = pipe.new_camera()
    frame = pipe.decode('relative', rf.image(prediction, '32FC1', 9))
    out = pipe.finish(frame, state, {'depth', 'info'}, lambda key, value: None,
                      scan=(frame.stamp, 'cam', scan))
    keys = [p.key for p in out.problems]
    assert keys[0] == 'no_camera_info' and 'no_fit' in keys  # nothing to project the scan with
    state.intrinsics = frame_data.intrinsics()
    out = pipe.finish(frame, state, {'depth', 'info'}, lambda key, value: None,
                      scan=(frame.stamp, 'cam', scan))
    depth = out.values['depth']
    assert depth.dtype == np.uint16 and (depth > 0).mean() > 0.5  # millimetres, 0 invalid
    assert out.values['info'].width == prediction.shape[1]


def test_a_refused_frame_raises_the_codec_error(tum):
    _, prediction, _ = tum
    pipe = _pipeline()
    bad = rf.image(prediction, '32FC1', 10)
    bad.data = bad.data[:-4]
    with pytest.raises(ImageDecodeError, match='bytes'):
        pipe.check('relative', bad)


def test_nearest_scan_looks_both_ways():
    scans = [(1.0, 'a', None), (2.0, 'b', None), (3.0, 'c', None)]
    assert nearest_scan(scans, 2.4, 0.5)[1] == 'b'
    assert nearest_scan(scans, 2.6, 0.5)[1] == 'c'  # after the frame
    assert nearest_scan(scans, 5.0, 0.5) is None
    assert nearest_scan([], 1.0, 0.5) is None


def test_one_camera_model_for_camera_info_cloud_and_lidar(tum, monkeypatch):
    """A camera_info for twice the image size: depth/camera_info, the cloud and the LiDAR
    projection all get the same fitted camera model (pixel centres to pixel centres), which
    is the image's own calibration again."""
    from depth_node import frame_finish  # where the LiDAR is projected
    from depth_node.cloud import depth_to_points

    frame_data, prediction, scan = tum
    pipe = _pipeline(**{'cloud.stride': 1})
    state = pipe.new_camera()
    state.intrinsics = frame_data.intrinsics().scaled(1280, 960)
    used = []
    original = frame_finish.prepare_points
    monkeypatch.setattr(frame_finish, 'prepare_points',
                        lambda pts, T, camera, *a, **k: used.append(camera) or
                        original(pts, T, camera, *a, **k))
    msg = rf.image(prediction, '32FC1', 8)
    frame = pipe.decode('relative', msg)
    out = pipe.finish(frame, state, {'depth', 'info', 'points'}, lambda key, value: None,
                      scan=(frame.stamp, 'cam', scan))
    info = out.values['info']
    assert used == [info]  # the LiDAR projection's camera is depth/camera_info's
    assert (info.width, info.height) == (640, 480)
    np.testing.assert_allclose(info.K, frame_data.K, rtol=1e-12)
    cloud = out.values['points']
    xyz = np.frombuffer(cloud.data.tobytes(), np.float32).reshape(480, 640, 3)
    np.testing.assert_array_equal(xyz, depth_to_points(out.values['depth'], info.K,
                                                       min_depth=0.1, max_depth=10.0))


def test_run_batch_serves_the_displaced_frame_when_the_newest_is_refused(tum):
    """The one per-frame sequence: a refused message falls back to the frame it displaced
    (frames_dropped given back), the nearest scan within lidar.max_time_offset is paired after
    the forward pass, outputs reach the sink with their job, problems the reporter."""
    from depth_node.frame_pipeline import Job
    from depth_node.problems import Reporter

    frame_data, prediction, scan = tum
    pipe = _pipeline()
    state = pipe.new_camera()
    state.intrinsics = frame_data.intrinsics()
    lines = []
    reporter = Reporter(lambda severity, line: lines.append(line))
    good = rf.image(prediction, '32FC1', 11)
    bad = rf.image(prediction, '32FC1', 12)
    bad.encoding = 'nope'
    scans = [(11.0 + 250e-9, 'cam', scan)]
    seen = []
    job = Job(state, 'relative', bad, fallback=good, wanted=frozenset({'depth'}),
              scans=lambda: scans, tag='mine')
    result = pipe.run_batch([job], lambda j, key, value: seen.append((j.tag, key)), reporter)
    assert seen == [('mine', 'alignment'), ('mine', 'depth')]
    assert job.frame.header is good.header  # the displaced frame was served
    assert reporter.counters.get('bad_image') == 1 and 'relative_depth refused' in lines[0]
    assert reporter.counters.get('frames_dropped') == -1  # given back: it was not dropped
    assert reporter.counters.get('frames_processed') == 1
    assert reporter.counters.get('frames_metric') == 1
    assert [j for j, _ in result.finished] == [job] and result.timings['total'] > 0
    # no scan near the next frame although scans arrive: lidar_unpaired, no metric depth
    late = Job(state, 'relative', rf.image(prediction, '32FC1', 30), scans=lambda: scans)
    result = pipe.run_batch([late], lambda j, key, value: None, reporter)
    assert reporter.counters.get('lidar_unpaired') == 1
    assert not result.finished[0][1].metric


def test_run_batch_reports_an_error_finishing_a_frame_and_goes_on(tum):
    from depth_node.frame_pipeline import Job
    from depth_node.problems import Reporter

    _, prediction, _ = tum
    pipe = _pipeline(**{'lidar.enabled': False})
    state = pipe.new_camera()
    reporter = Reporter(lambda severity, line: None)

    def sink(job, key, value):
        if job.tag == 'broken':
            raise ValueError('injected')

    jobs = [Job(state, 'relative', rf.image(prediction, '32FC1', 40), tag='broken'),
            Job(state, 'relative', rf.image(prediction, '32FC1', 41), tag='fine')]
    result = pipe.run_batch(jobs, sink, reporter)
    assert [j.tag for j, _ in result.finished] == ['fine']
    assert reporter.counters.get('frame_errors') == 1
    # stopping: the same error ends the batch quietly
    jobs = [Job(state, 'relative', rf.image(prediction, '32FC1', 42), tag='broken')]
    pipe.run_batch(jobs, sink, reporter, stopping=lambda: True)
    assert reporter.counters.get('frame_errors') == 1


def test_a_stabilised_metric_cloud_is_the_published_depth_not_the_forwards_points(tum):
    """temporal.enabled rescales a metric model's depth after the forward pass: the cloud built
    with the forward (on the model's device, from the unscaled depth) must not be published."""
    from depth_node.cloud import depth_to_points
    from depth_node.frame_input import Frame

    frame_data, _, _ = tum
    gt = frame_data.depth_gt
    true = np.where(np.isfinite(gt), gt, np.nanmedian(gt)).astype(np.float32)
    pipe = _pipeline(**{'lidar.enabled': False, 'temporal.enabled': True,
                        'filter.edges': False})
    pipe.spec.is_metric, pipe.spec.output_kind = True, 'metric_depth'  # a metric model's
    state = pipe.new_camera()
    state.intrinsics = frame_data.intrinsics()
    for sec, factor in ((1, 1.0), (2, 1.0), (3, 1.1)):  # a 10 % flicker on the third frame
        depth = true * np.float32(factor)
        frame = Frame('image', rf.header(sec), rgb=np.zeros((*depth.shape, 3), np.uint8),
                      src_w=depth.shape[1], src_h=depth.shape[0], prediction=depth,
                      points=depth_to_points(depth, frame_data.K, stride=4, min_depth=0.1,
                                             max_depth=10.0))
        out = pipe.finish(frame, state, {'depth', 'points'}, lambda key, value: None)
    published = out.values['depth']
    assert np.nanmedian(published / true) < 1.05  # the flicker is held
    xyz = np.frombuffer(out.values['points'].data.tobytes(), np.float32).reshape(-1, 3)
    expected = depth_to_points(published, frame_data.K, stride=4, min_depth=0.1, max_depth=10.0)
    np.testing.assert_allclose(xyz, expected.reshape(-1, 3), rtol=1e-6)


def test_no_lidar_fit_leaves_the_lidar_cue_out_of_a_relative_confidence(tum):
    """Without a fit the output is relative: the LiDAR points (metres) are not compared with
    it; the confidence is the other cues' (here none: all ones where the input is valid)."""
    frame_data, prediction, scan = tum
    pipe = _pipeline(**{'lidar.min_points': 10 ** 6, 'confidence.discontinuity': False,
                        'confidence.temporal': False})
    state = pipe.new_camera()
    state.intrinsics = frame_data.intrinsics()
    frame = pipe.decode('relative', rf.image(prediction, '32FC1', 50))
    out = pipe.finish(frame, state, {'relative', 'confidence'}, lambda key, value: None,
                      scan=(frame.stamp, 'cam', scan))
    assert not out.metric and 'no_fit' in [p.key for p in out.problems]
    conf = out.values['confidence']
    assert np.nanmin(conf) == 1.0, np.nanmedian(conf)
