"""What ``depth_node-bag`` says while and after it runs: progress and the summary."""

from __future__ import annotations

from collections import Counter
import math
import statistics
import sys
import time
from typing import Any, Optional, Sequence

from depth_node import prompt as pr
from depth_node.bag.common import Log, PROG
from depth_node.bag.io import ns_to_s
from depth_node.frame_pipeline import AlignmentReport
from depth_node.telemetry import Counters
from depth_node.text import bounded

PROGRESS_PERIOD_S = 10.0
"""Seconds between plain progress lines (when stderr is not a terminal)."""


class Stats:
    """Counts (the :class:`~depth_node.problems.Reporter`'s thread-safe counters) and fit
    statistics for the summary."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.fit_states: Counter = Counter()
        self.no_fit_reasons: Counter = Counter()
        self.scales: list[float] = []
        self.residuals: list[float] = []
        self.inliers: list[int] = []
        self.model_s: list[float] = []
        self.last_bag_time = 0

    def get(self, name: str) -> int:
        return self.counters.get(name)

    def alignment(self, report: AlignmentReport | pr.PromptReport) -> None:
        if isinstance(report, pr.PromptReport):
            self.fit_states[f'prompt {report.check.state}'] += 1
            if report.check.state != 'ok':
                self.no_fit_reasons[bounded(report.check.reason, 120)] += 1
            return
        a = report.alignment
        self.fit_states[a.state] += 1
        if a.state == 'no_fit':
            self.no_fit_reasons[bounded(report.reason, 120)] += 1
        elif math.isfinite(a.scale):
            self.scales.append(float(a.scale))
        if a.fit is not None and a.fit.n_inliers:
            self.inliers.append(int(a.fit.n_inliers))
            if math.isfinite(a.fit.residual):
                self.residuals.append(float(a.fit.residual))


def expected_frames(reader: Any, image_topic: str, options: Any) -> Optional[int]:
    """Frames to process, from the bag's index (None with a time window: not known)."""
    if options.start or options.duration is not None:
        return None
    count = sum(c.msgcount for c in reader.connections if c.topic == image_topic)
    return -(-count // options.every) if count else None


class Progress:
    """A tqdm bar on a terminal (frames, frames per second, time left), else a plain line
    after the first frame and every :data:`PROGRESS_PERIOD_S` seconds."""

    def __init__(self, total: Optional[int], log: Log, bar: Optional[bool]) -> None:
        self.total, self.log = total, log
        self.t0 = self.last = time.monotonic()
        self.bar = None
        self.done = 0
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = log.bar = tqdm(total=total, unit='frame', file=sys.stderr,
                                      dynamic_ncols=True, desc=PROG)

    def update(self, stats: Stats) -> None:
        done = stats.get('frames_processed')
        if self.bar is not None:
            self.bar.update(done - self.done)
            self.done = done
            return
        now = time.monotonic()
        if self.done == 0 and done > 0 or now - self.last >= PROGRESS_PERIOD_S:
            self.done, self.last = done, now
            rate = done / max(now - self.t0, 1e-9)
            of = f'/{self.total}' if self.total else ''
            left = (f', about {_duration((self.total - done) / rate)} left'
                    if self.total and rate > 0 else '')
            self.log(f'{done}{of} frames, {rate:.2f} frames/s{left}')

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.log.bar = None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f'{seconds:.0f} s'
    return f'{seconds / 60:.0f} min' if seconds < 5400 else f'{seconds / 3600:.1f} h'


def _median(values: Sequence[float], fmt: str = '.4g') -> str:
    if not values:
        return '-'
    return (f'{statistics.median(values):{fmt}} (min {min(values):{fmt}}, '
            f'max {max(values):{fmt}})')


def summary(options: Any, topics: Any, stats: Stats, written: Counter, wall: float,
            total_wall: float, expected: Optional[int], stopped_by: Optional[str],
            input_error: Optional[BaseException], write_error: Optional[BaseException],
            reader: Any, extrinsics: str = '') -> str:
    """The end-of-run report: frames, skips and why, bad messages, the fit, speed."""
    g = stats.get
    processed = g('frames_processed')
    skipped = {'bad image': g('bad_image'), 'forward failed': g('forward_failures'),
               'frame error': g('frame_errors'),
               'no camera_info for the focal length': g('frames_without_focal'),
               f'left out by --every {options.every}': g('skipped_every')}
    lines = [f'[{PROG}] summary',
             f'  input: {options.input} ({topics.kind} frames on {topics.image}, camera_info '
             f'{topics.camera_info or "none"}, LiDAR {topics.lidar or "off"})',
             f'  output: {options.output} ({options.storage}), '
             f'{sum(written.values())} messages on {len(written)} topics']
    for topic in sorted(written):
        lines.append(f'    {topic}: {written[topic]}')
    lines.append(f'  frames read: {g("frames_read")}, processed: {processed}, with metric '
                 f'depth: {g("frames_metric")}')
    lines.append(f'  frames skipped: {sum(skipped.values())}' + (
        ' (' + ', '.join(f'{k}: {v}' for k, v in skipped.items() if v) + ')'
        if any(skipped.values()) else ''))
    bad = {k: g(f'bad_{k}') for k in ('image', 'camera_info', 'lidar', 'prompt_depth')}
    lines.append(f'  bad messages: {sum(bad.values())}' + (
        ' (' + ', '.join(f'{k}: {v}' for k, v in bad.items() if v) + ')'
        if any(bad.values()) else ''))
    if g('frames_without_camera_info'):
        lines.append(f'  frames without camera_info: {g("frames_without_camera_info")}')
    if topics.lidar is not None or topics.prompt is not None:
        states = ', '.join(f'{k}: {v}' for k, v in sorted(stats.fit_states.items())) or \
            'none'
        lines.append(f'  LiDAR fit / depth prompt: {states}; frames without a scan within '
                     f'lidar.max_time_offset: {g("lidar_unpaired")}')
        if topics.lidar is not None and extrinsics:
            lines.append(f'    LiDAR extrinsics: {extrinsics}')
        lines.append(f'    scale: {_median(stats.scales)}; residual: '
                     f'{_median(stats.residuals)}; inliers: {_median(stats.inliers, ".0f")}')
        for reason, n in stats.no_fit_reasons.most_common(3):
            lines.append(f'    no fit ({n}x): {reason}')
    if g('non_finite_outputs'):
        lines.append(f'  frames with non-finite network output: {g("non_finite_outputs")}')
    rate = processed / wall if wall > 0 else 0.0
    model = (f'; model alone (median) {statistics.median(stats.model_s) * 1e3:.1f} ms/frame = '
             f'{1.0 / statistics.median(stats.model_s):.2f} frames/s'
             if stats.model_s and statistics.median(stats.model_s) > 0 else '')
    lines.append(f'  speed: {processed} frames in {wall:.2f} s = {rate:.2f} frames/s{model}; '
                 f'{total_wall:.1f} s with the model load')
    if stopped_by is not None:
        where = ns_to_s(reader.start_time, stats.last_bag_time) if stats.last_bag_time else \
            '0 s'
        of = f' of {expected}' if expected else ''
        lines.append(f'  stopped: {stopped_by} after {processed}{of} frames (bag read up to '
                     f'{where}); the output is a valid bag up to there')
    if input_error is not None:
        lines.append(f'  INPUT ERROR: {options.input} could not be read on after bag time '
                     f'{ns_to_s(reader.start_time, stats.last_bag_time)}: '
                     f'{type(input_error).__name__}: {bounded(input_error, 300)}; the output '
                     'holds what was read before, a valid bag')
    if write_error is not None:
        lines.append(f'  OUTPUT ERROR: writing {options.output} failed: '
                     f'{type(write_error).__name__}: {bounded(write_error, 300)}')
    return '\n'.join(lines)
