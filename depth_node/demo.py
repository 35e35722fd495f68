"""Run the node on recorded frames through ROS 2 and write what it publishes to disk.

``depth_node-demo --frames sample_data --out out`` starts :class:`depth_node.node.DepthNode`
in-process, publishes each frame's image, camera_info and LiDAR scan with rclpy (real DDS), and
writes, per frame: ``<frame>_depth.png`` (colorized metric depth, or ``<frame>_relative.png``
relative depth when no metric fit exists, each with a colour bar: the range in metres, or
"relative, near = red"), ``<frame>_confidence.png`` (``depth/confidence``, low = red),
``<frame>_cloud.ply`` (the published cloud, with colour) and
``timings.json`` (per-stage times of the node, median over ``--repeat`` runs).

Frames without a LiDAR scan but with dense ground truth (TUM RGB-D) get a simulated 64-beam
LiDAR sampled from the ground truth, so the metric path runs; the summary says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

from depth_node.config import DEFAULT_MODEL

DEMO_HINT = ('Point the demo at a local copy with --model DIR, or run a pipeline smoke test '
             'with --random-init depth-anything-v2-small (RANDOM WEIGHTS: meaningless output).')


def simulated_lidar(depth_gt: np.ndarray, K: np.ndarray, rows: int = 64,
                    col_step: int = 4) -> np.ndarray:
    """A LiDAR-like scan from a dense depth map: ``rows`` scan lines, every ``col_step`` px.

    Returns (N, 3) float32 points in the camera optical frame, metres.
    """
    height, width = depth_gt.shape
    v = np.linspace(height * 0.1, height * 0.9, rows).astype(int)
    u = np.arange(0, width, col_step)
    vv, uu = np.meshgrid(v, u, indexing='ij')
    z = depth_gt[vv, uu]
    ok = np.isfinite(z) & (z > 0)
    x = (uu[ok] - K[0, 2]) * z[ok] / K[0, 0]
    y = (vv[ok] - K[1, 2]) * z[ok] / K[1, 1]
    return np.stack([x, y, z[ok]], axis=1).astype(np.float32)


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog='depth_node-demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--frames', default=None,
                    help='a frame folder, or a folder of frame folders (default: the sample '
                         'frames installed with the package, share/depth_node/sample_data)')
    ap.add_argument('--out', default='out', help='output folder (default: out)')
    ap.add_argument('--model', default=DEFAULT_MODEL,
                    help=f'hub id or local model directory (default: {DEFAULT_MODEL})')
    ap.add_argument('--random-init', default='', metavar='ARCH',
                    help='TEST ONLY: RANDOM WEIGHTS of this architecture '
                         '(depth-anything-v2-small|base); output is meaningless')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--precision', default='auto')
    ap.add_argument('--repeat', type=int, default=3, help='runs per frame (timings: median)')
    ap.add_argument('--stride', type=int, default=2, help='cloud.stride')
    ap.add_argument('--timeout', type=float, default=120.0, help='seconds to wait per frame')
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``depth_node-demo``; returns the exit code."""
    args = _parse_args(argv)
    import rclpy
    from rclpy.parameter import Parameter

    from depth_node.config import ConfigError
    from depth_node.node import DepthNode
    from depth_node.sample_data import frame_folders, load_frame
    from depth_node.share import sample_data_directory

    if args.frames is None:
        shipped = sample_data_directory()
        if shipped is None:
            print('depth_node-demo: the sample frames are not installed with this package '
                  '(share/depth_node/sample_data); pass --frames DIR', file=sys.stderr)
            return 2
        args.frames = str(shipped)
    folders = frame_folders(args.frames)
    if not folders:
        print(f'depth_node-demo: no frame folders (with camera.json) under {args.frames}',
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.random_init:
        print('!' * 78 + '\n!! RANDOM WEIGHTS (--random-init): the depth below is MEANINGLESS; '
              'this run\n!! only exercises the pipeline and its timings.\n' + '!' * 78)
    overrides = [
        Parameter('model.name', value=args.model),
        Parameter('model.random_init', value=args.random_init),
        Parameter('model.device', value=args.device),
        Parameter('model.precision', value=args.precision),
        Parameter('lidar.enabled', value=True),
        Parameter('lidar.T_camera_lidar', value=[float(v) for v in np.eye(4).ravel()]),
        Parameter('lidar.smoothing', value=0.0),
        Parameter('cloud.color', value=True),
        Parameter('cloud.stride', value=args.stride),
    ]
    rclpy.init(args=[])
    node = None
    try:
        try:
            node = DepthNode(parameter_overrides=overrides)
        except ConfigError as exc:
            print(f'depth_node-demo: cannot start the node: {exc}', file=sys.stderr)
            if not args.random_init:
                print(DEMO_HINT, file=sys.stderr)
            return 2
        return _run(node, folders, out, args, load_frame, Parameter)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


class _Collector:
    """Keeps the latest message per (topic, stamp) and lets the caller wait for one."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._msgs: dict[tuple[str, tuple[int, int]], Any] = {}

    def callback(self, topic: str) -> Any:
        def on_msg(msg: Any) -> None:
            key = (topic, (msg.header.stamp.sec, msg.header.stamp.nanosec)) \
                if hasattr(msg, 'header') else (topic, _status_stamp(msg))
            with self._cv:
                self._msgs[key] = msg
                self._cv.notify_all()
        return on_msg

    def wait(self, topic: str, stamp: tuple[int, int], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._cv:
            while (topic, stamp) not in self._msgs:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
            return self._msgs[(topic, stamp)]

    def get(self, topic: str, stamp: tuple[int, int]) -> Any:
        with self._cv:
            return self._msgs.get((topic, stamp))


def _status_stamp(status: Any) -> tuple[int, int]:
    values = {kv.key: kv.value for kv in status.values}
    sec, nsec = values.get('stamp', '0.0').split('.')
    return int(sec), int(nsec)


def _run(node: Any, folders: list[Path], out: Path, args: argparse.Namespace, load_frame: Any,
         Parameter: Any) -> int:
    from diagnostic_msgs.msg import DiagnosticStatus
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from depth_node.cloud import write_ply
    from depth_node.messages import (camera_info_msg, cloud_to_array, image_msg, image_to_array,
                                     make_header, xyz_cloud_msg)
    from depth_node.spin import BackgroundExecutor

    import rclpy

    player = rclpy.create_node('depth_node_demo_player')
    pub_image = player.create_publisher(Image, 'image', 1)
    pub_info = player.create_publisher(CameraInfo, 'camera_info', 1)
    pub_lidar = player.create_publisher(PointCloud2, 'lidar/points', 1)
    collector = _Collector()
    for topic, mtype in (('depth/image', Image), ('depth/relative', Image),
                         ('depth/confidence', Image), ('depth/points', PointCloud2),
                         ('depth/alignment', DiagnosticStatus)):
        player.create_subscription(mtype, topic, collector.callback(topic), 5)
    spinner = BackgroundExecutor(node.context)
    spinner.add(node)
    spinner.add(player)
    time.sleep(1.0)  # discovery

    summary = {'model': args.random_init or args.model, 'random_weights': bool(args.random_init),
               'startup_s': node.core.startup_timings, 'frames': {}}
    evaluate = _optional_evaluate()
    t_sec = 1_700_000_000
    try:
        for folder in folders:
            frame = load_frame(folder)
            name = folder.name
            lidar_kind = 'real'
            if frame.lidar is not None and frame.T_camera_lidar is not None:
                points, T = frame.lidar[:, :3], frame.T_camera_lidar
            elif frame.depth_gt is not None:
                points, T, lidar_kind = simulated_lidar(frame.depth_gt, frame.K), np.eye(4), \
                    'simulated from dense ground truth'
            else:
                points, T, lidar_kind = None, np.eye(4), 'none'
            node.set_parameters([Parameter('lidar.T_camera_lidar',
                                           value=[float(v) for v in T.ravel()])])
            intr = frame.intrinsics()
            runs = []
            last = None
            for _ in range(args.repeat):
                t_sec += 1
                header = make_header('camera_optical_frame', t_sec, 0)
                pub_info.publish(camera_info_msg(intr, header))
                if points is not None:
                    pub_lidar.publish(xyz_cloud_msg(points, make_header('lidar', t_sec, 0)))
                time.sleep(0.2)
                previous = node.last_timings
                pub_image.publish(image_msg(frame.image, 'rgb8', header))
                stamp = (t_sec, 0)
                status = collector.wait('depth/alignment', stamp, args.timeout)
                if status is None:
                    print(f'{name}: no output within {args.timeout} s', file=sys.stderr)
                    return 1
                if status.message != 'no_fit':
                    collector.wait('depth/points', stamp, 10.0)
                deadline = time.monotonic() + 5.0  # stored just after the last publish
                while node.last_timings is previous and time.monotonic() < deadline:
                    time.sleep(0.01)
                runs.append(dict(node.last_timings))
                last = (stamp, status)
            stamp, status = last
            record = _write_frame(out, name, frame, collector, stamp, status, lidar_kind, runs,
                                  write_ply, image_to_array, cloud_to_array, evaluate)
            summary['frames'][name] = record
            _print_frame(name, record)
    finally:
        spinner.close(timeout=1.0, destroy_nodes=False)  # main() destroys the node
        player.destroy_node()
    (out / 'timings.json').write_text(json.dumps(summary, indent=2))
    print(f'wrote {out}/ (PNG, PLY, timings.json)')
    return 0


def _optional_evaluate() -> Any:
    try:
        from depth_node.evaluate import compute_metrics
    except ImportError:  # pragma: no cover
        return None
    return compute_metrics


def _save_picture(path: Path, values: np.ndarray, metric: bool) -> dict[str, Any]:
    """Write the colourized ``(H, W)`` depth (metres) or relative depth with its colour bar;
    return what the picture shows: file, kind, colour range, unit, share of valid pixels."""
    from PIL import Image as PILImage

    from depth_node.colormap import add_colorbar, colorize, robust_range

    valid = float(np.isfinite(values).mean()) if values.size else 0.0
    span = robust_range(values)
    if span is None:  # nothing valid: an all-black picture, no scale
        rgb = colorize(values, invert=not metric)
    else:
        lo, hi = span
        rgb = add_colorbar(colorize(values, lo, hi, invert=not metric), lo, hi, metric=metric)
    PILImage.fromarray(rgb).save(path)
    return {'file': path.name, 'kind': 'metric depth' if metric else 'relative inverse depth',
            'range': None if span is None else [span[0], span[1]],
            'unit': 'm' if metric else None,
            'colors': 'near = red' + (' (range: near to far)' if metric else
                                      ' (range: far to near, relative: no unit)'),
            'valid_fraction': valid}


def _save_confidence(path: Path, confidence: np.ndarray) -> dict[str, Any]:
    """Write ``depth/confidence`` ((H, W) in [0, 1], NaN invalid) as a picture beside the depth
    picture: low (red) to high (blue), with its colour bar; return what it shows."""
    from PIL import Image as PILImage

    from depth_node.colormap import add_colorbar, colorize

    rgb = add_colorbar(colorize(confidence, 0.0, 1.0), 0.0, 1.0, metric=False,
                       labels=('0 (low)', '1 (high)', 'depth/confidence, low = red'))
    PILImage.fromarray(rgb).save(path)
    finite = np.isfinite(confidence)
    return {'file': path.name, 'valid_fraction': float(finite.mean()),
            'median': float(np.median(confidence[finite])) if finite.any() else None,
            'below_0.5': float((confidence[finite] < 0.5).mean()) if finite.any() else None}


def _write_frame(out: Path, name: str, frame: Any, collector: _Collector, stamp: Any,
                 status: Any, lidar_kind: str, runs: list, write_ply: Any,
                 image_to_array: Any, cloud_to_array: Any, evaluate: Any) -> dict:
    values = {kv.key: kv.value for kv in status.values}
    record: dict[str, Any] = {'lidar': lidar_kind, 'alignment_state': status.message,
                              'alignment': values}
    depth_msg = collector.get('depth/image', stamp)
    if depth_msg is not None:
        depth = image_to_array(depth_msg)
        record['picture'] = _save_picture(out / f'{name}_depth.png', depth, metric=True)
        finite = np.isfinite(depth)
        record['depth_m'] = {'valid_fraction': float(finite.mean()),
                             'median': float(np.median(depth[finite])) if finite.any() else None}
        if frame.depth_gt is not None and evaluate is not None:
            record['vs_ground_truth'] = evaluate(depth, frame.depth_gt, max_depth=10.0)
    else:
        rel = collector.get('depth/relative', stamp)
        if rel is not None:
            record['picture'] = _save_picture(out / f'{name}_relative.png',
                                              image_to_array(rel), metric=False)
    conf = collector.get('depth/confidence', stamp)
    if conf is not None:
        record['confidence'] = _save_confidence(out / f'{name}_confidence.png',
                                                image_to_array(conf))
    cloud = collector.get('depth/points', stamp)
    if cloud is not None:
        xyz = cloud_to_array(cloud).reshape(-1, 3)
        rgb = None
        if any(f.name == 'rgb' for f in cloud.fields):
            packed = cloud_to_array(cloud, ('rgb',)).reshape(-1).view(np.uint32)
            rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255],
                           axis=1).astype(np.uint8)
        record['cloud_points'] = int(write_ply(out / f'{name}_cloud.ply', xyz, rgb))
    stages = sorted({k for r in runs for k in r})
    record['timings_ms'] = {k: 1e3 * float(np.median([r.get(k, 0.0) for r in runs]))
                            for k in stages}
    return record


def _print_frame(name: str, record: dict) -> None:
    a = record['alignment']
    print(f'\n== {name}  (LiDAR: {record["lidar"]})')
    print(f'   alignment: {a.get("state")}  scale {a.get("scale")}  shift {a.get("shift")}  '
          f'inliers {a.get("inliers")}/{a.get("points_projected")}')
    if 'depth_m' in record:
        d = record['depth_m']
        print(f'   metric depth: {100 * d["valid_fraction"]:.0f}% valid, median {d["median"]} m')
    if 'picture' in record and record['picture']['range'] is not None:
        p = record['picture']
        lo, hi = p['range']
        print(f'   picture: {p["file"]} ({p["kind"]}, colours {lo:.3g} .. {hi:.3g}'
              f'{" m" if p["unit"] else ""}, {p["colors"]})')
    if 'vs_ground_truth' in record:
        m = record['vs_ground_truth']
        print(f'   vs ground truth: AbsRel {m.get("abs_rel", float("nan")):.3f}  '
              f'delta1 {m.get("delta1", float("nan")):.3f}')
    if 'cloud_points' in record:
        print(f'   cloud: {record["cloud_points"]} points')
    print('   node stage times (ms, median): ' + ', '.join(
        f'{k} {v:.1f}' for k, v in record['timings_ms'].items()))


if __name__ == '__main__':
    sys.exit(main())
